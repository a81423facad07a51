//! `GET /metrics` of a lab node's agent, parsed with a Prometheus text-format parser (as
//! Prometheus reads it), for the tests that check what the metrics say.

use std::io::{Read, Write};
use std::time::Duration;

use palisade_tests::lab::Lab;

/// The agent's default metrics port (`--metrics-address`).
const METRICS_ADDR: &str = "127.0.0.1:9963";

/// `GET /metrics` in the first node's namespace.
pub fn scrape(lab: &Lab) -> prometheus_parse::Scrape {
    let node = lab.node_netns()[0].to_string();
    let body = palisade_tests::lab::netns::in_netns(&node, || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(METRICS_ADDR)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .expect("entering the node")
    .expect("scraping /metrics");
    let (head, body) = body.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

/// The sum of the samples of `name` whose labels include `labels`.
pub fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
