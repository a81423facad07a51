//! The plugin's inputs: the network config on stdin and the `CNI_*` environment.
//!
//! Fields are extracted by hand from a `serde_json::Value` (not derived) so every error names
//! the offending field and value, as the CNI error JSON should.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::version::Version;

pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_STATE_DIR: &str = "/var/lib/palisade";
pub const DEFAULT_POD_CIDR_FILE: &str = palisade_node_api::podcidr::DEFAULT_PATH;

/// A `{containerID, ifname}` pair from `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// Palisade's network config (one plugin entry of a conflist, as the runtime passes it).
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: Version,
    pub name: String,
    pub mtu: u32,
    /// `podCIDRs` from the config; when absent, [`NetConf::pod_cidr_file`] is read.
    pub pod_cidrs: Option<Vec<IpNetwork>>,
    pub pod_cidr_file: PathBuf,
    pub state_dir: PathBuf,
    pub agent_socket: Option<PathBuf>,
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC only).
    pub valid_attachments: Option<Vec<Attachment>>,
    /// `runtimeConfig.ips`: addresses the runtime asks for (the CNI conventions' `ips`
    /// capability, `"capabilities": {"ips": true}` in the conflist). CIDR or plain address;
    /// the prefix is ignored (the pod CIDR's applies).
    pub requested_ips: Vec<IpAddr>,
}

/// Reads the `cniVersion` of a config without validating the rest (for error output).
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf> {
        let v: Value = serde_json::from_slice(stdin).map_err(|source| Error::Decode {
            what: "network config from stdin",
            source,
        })?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::invalid_config("(root)", short(&v), "must be a JSON object"))?;
        let version_str = match obj.get("cniVersion") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(Error::invalid_config(
                    "cniVersion",
                    short(other),
                    "must be a string",
                ));
            }
            None => {
                return Err(Error::invalid_config(
                    "cniVersion",
                    "(missing)",
                    "is required",
                ));
            }
        };
        let cni_version = Version::parse(&version_str).ok_or(Error::IncompatibleVersion {
            version: version_str,
        })?;
        let name = req_str(obj, "name")?;
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => DEFAULT_MTU,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(m) if (68..=65535).contains(&m) => m as u32,
                _ => {
                    return Err(Error::invalid_config(
                        "mtu",
                        n,
                        "must be an integer in 68..=65535",
                    ));
                }
            },
            Some(other) => {
                return Err(Error::invalid_config(
                    "mtu",
                    short(other),
                    "must be a number",
                ));
            }
        };
        let pod_cidrs = match obj.get("podCIDRs") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_cidr_list(v, "podCIDRs")?),
        };
        let pod_cidr_file =
            opt_path(obj, "podCIDRFile")?.unwrap_or_else(|| DEFAULT_POD_CIDR_FILE.into());
        let state_dir = opt_path(obj, "stateDir")?.unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let agent_socket = opt_path(obj, "agentSocket")?;
        let valid_attachments = match obj.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_attachments(v)?),
        };
        Ok(NetConf {
            cni_version,
            name,
            mtu,
            pod_cidrs,
            pod_cidr_file,
            state_dir,
            agent_socket,
            dns: obj.get("dns").cloned(),
            prev_result: obj.get("prevResult").cloned(),
            valid_attachments,
            requested_ips: parse_runtime_ips(obj)?,
        })
    }

    /// The node's pod CIDRs: `podCIDRs` from the config, else the agent-written
    /// `podCIDRFile` (`{"podCIDRs": [...]}`). At most one per family.
    pub fn pod_cidrs(&self) -> Result<Vec<IpNetwork>> {
        let list = match &self.pod_cidrs {
            Some(l) => l.clone(),
            None => read_pod_cidr_file(&self.pod_cidr_file)?,
        };
        validate_pools(
            &list,
            if self.pod_cidrs.is_some() {
                "podCIDRs"
            } else {
                "podCIDRFile"
            },
        )?;
        Ok(list)
    }
}

/// Reads the node-local pod CIDR file the agent writes from `Node.spec.podCIDRs`.
pub fn read_pod_cidr_file(path: &Path) -> Result<Vec<IpNetwork>> {
    let list = palisade_node_api::podcidr::read(path).map_err(|e| {
        Error::invalid_config(
            "podCIDRFile",
            path.display(),
            format!(
                "cannot use it ({}); set podCIDRs in the config or let the agent write the file",
                e.chain()
            ),
        )
    })?;
    let list: Vec<Value> = list.into_iter().map(Value::String).collect();
    parse_cidr_list(&Value::Array(list), "podCIDRFile.podCIDRs")
}

fn validate_pools(list: &[IpNetwork], field: &str) -> Result<()> {
    if list.is_empty() {
        return Err(Error::invalid_config(
            field,
            "[]",
            "needs at least one CIDR",
        ));
    }
    let v4 = list.iter().filter(|n| n.is_ipv4()).count();
    let v6 = list.len() - v4;
    if v4 > 1 || v6 > 1 {
        return Err(Error::invalid_config(
            field,
            format!("{list:?}"),
            "at most one IPv4 and one IPv6 CIDR (dual stack)",
        ));
    }
    Ok(())
}

fn parse_cidr_list(v: &Value, field: &str) -> Result<Vec<IpNetwork>> {
    let arr = v
        .as_array()
        .ok_or_else(|| Error::invalid_config(field, short(v), "must be a list of CIDR strings"))?;
    let mut out = Vec::with_capacity(arr.len());
    for (i, item) in arr.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let s = item
            .as_str()
            .ok_or_else(|| Error::invalid_config(&f, short(item), "must be a string"))?;
        out.push(
            parse_pool_cidr(s)
                .map_err(|reason| Error::invalid_config(&f, format!("{s:?}"), reason))?,
        );
    }
    validate_pools(&out, field)?;
    Ok(out)
}

/// Ranges no pod CIDR may overlap: pod addresses there would be the node's own (loopback,
/// "this host"), shadow the pods' link-local gateways (169.254.1.1, fe80::1), or not be
/// unicast at all.
const FORBIDDEN_POOL_RANGES: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this host on this network\""),
    ("127.0.0.0/8", "loopback"),
    (
        "169.254.0.0/16",
        "link-local, holds the pods' gateway 169.254.1.1",
    ),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, holds the broadcast address"),
    ("::/127", "unspecified and loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("fe80::/10", "link-local, holds the pods' gateway fe80::1"),
    ("ff00::/8", "multicast"),
];

/// Parses a pod CIDR and normalises it to its network address. The prefix must leave at least
/// two usable addresses (/30 for IPv4, /126 for IPv6), and the range must not overlap any of
/// [`FORBIDDEN_POOL_RANGES`] (so `0.0.0.0/0` or `::/0` are refused too).
pub fn parse_pool_cidr(s: &str) -> std::result::Result<IpNetwork, String> {
    if !s.contains('/') {
        return Err("not a CIDR (no /prefix)".into());
    }
    let n: IpNetwork = s.parse().map_err(|e| format!("not a CIDR: {e}"))?;
    let max = if n.is_ipv4() { 30 } else { 126 };
    if n.prefix() > max {
        return Err(format!(
            "prefix /{} leaves no room for pods (at most /{max})",
            n.prefix()
        ));
    }
    let n = IpNetwork::new(n.network(), n.prefix()).map_err(|e| format!("not a CIDR: {e}"))?;
    for (range, what) in FORBIDDEN_POOL_RANGES {
        let r: IpNetwork = range.parse().expect("the table holds CIDRs");
        if r.is_ipv4() == n.is_ipv4() && (n.contains(r.network()) || r.contains(n.network())) {
            return Err(format!("overlaps {range} ({what}): not usable for pods"));
        }
    }
    Ok(n)
}

/// `runtimeConfig.ips`: a list of `"10.0.1.11/16"` or `"10.0.1.11"` strings.
fn parse_runtime_ips(obj: &Map<String, Value>) -> Result<Vec<IpAddr>> {
    let Some(rc) = obj.get("runtimeConfig").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(ips) = rc.get("ips").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let arr = ips.as_array().ok_or_else(|| {
        Error::invalid_config("runtimeConfig.ips", short(ips), "must be a list of strings")
    })?;
    arr.iter()
        .enumerate()
        .map(|(i, item)| {
            let f = format!("runtimeConfig.ips[{i}]");
            let s = item
                .as_str()
                .ok_or_else(|| Error::invalid_config(&f, short(item), "must be a string"))?;
            parse_requested_ip(s)
                .map_err(|reason| Error::invalid_config(&f, format!("{s:?}"), reason))
        })
        .collect()
}

/// One requested address: `10.0.1.11`, `10.0.1.11/16`, `fd00::1:11/64`.
pub fn parse_requested_ip(s: &str) -> std::result::Result<IpAddr, String> {
    let addr = s.split_once('/').map_or(s, |(a, _)| a);
    if let Some((_, prefix)) = s.split_once('/') {
        prefix
            .parse::<u8>()
            .map_err(|_| format!("bad prefix length {prefix:?}"))?;
    }
    addr.parse::<IpAddr>()
        .map_err(|e| format!("not an IP address: {e}"))
}

fn parse_attachments(v: &Value) -> Result<Vec<Attachment>> {
    let field = "cni.dev/valid-attachments";
    let arr = v
        .as_array()
        .ok_or_else(|| Error::invalid_config(field, short(v), "must be a list"))?;
    arr.iter()
        .enumerate()
        .map(|(i, a)| {
            let f = format!("{field}[{i}]");
            let get = |k: &str| {
                a.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        Error::invalid_config(&f, short(a), format!("needs string {k:?}"))
                    })
            };
            Ok(Attachment {
                container_id: get("containerID")?,
                ifname: get("ifname")?,
            })
        })
        .collect()
}

fn req_str(obj: &Map<String, Value>, field: &str) -> Result<String> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(other) => Err(Error::invalid_config(
            field,
            short(other),
            "must be a non-empty string",
        )),
        None => Err(Error::invalid_config(field, "(missing)", "is required")),
    }
}

fn opt_path(obj: &Map<String, Value>, field: &str) -> Result<Option<PathBuf>> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(PathBuf::from(s))),
        Some(other) => Err(Error::invalid_config(
            field,
            short(other),
            "must be a non-empty path string",
        )),
    }
}

/// A JSON value shortened for error messages (to 80 characters, never inside one: values
/// may be any UTF-8).
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= 80 {
        return s;
    }
    let mut out: String = s.chars().take(77).collect();
    out.push_str("...");
    out
}

/// The CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// The validated `CNI_*` environment for one invocation.
#[derive(Debug, Clone)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: HashMap<String, String>,
}

impl CniEnv {
    /// Reads the command alone (VERSION needs nothing else).
    pub fn command(get: &dyn Fn(&str) -> Option<String>) -> Result<Command> {
        let raw = get("CNI_COMMAND").unwrap_or_default();
        match raw.as_str() {
            "ADD" => Ok(Command::Add),
            "DEL" => Ok(Command::Del),
            "CHECK" => Ok(Command::Check),
            "VERSION" => Ok(Command::Version),
            "GC" => Ok(Command::Gc),
            "STATUS" => Ok(Command::Status),
            "" => Err(Error::invalid_env("CNI_COMMAND", raw, "is required")),
            _ => Err(Error::invalid_env(
                "CNI_COMMAND",
                raw,
                "must be one of ADD, DEL, CHECK, VERSION, GC, STATUS",
            )),
        }
    }

    /// Reads and validates the variables `command` needs.
    pub fn from_env(command: Command, get: &dyn Fn(&str) -> Option<String>) -> Result<CniEnv> {
        let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let mut env = CniEnv {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            args: HashMap::new(),
        };
        if !per_attachment {
            return Ok(env);
        }
        let cid = get("CNI_CONTAINERID").unwrap_or_default();
        validate_container_id(&cid)?;
        env.container_id = cid;
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        validate_ifname(&ifname)?;
        env.ifname = ifname;
        match get("CNI_NETNS").filter(|s| !s.is_empty()) {
            Some(p) => {
                if !p.starts_with('/') {
                    return Err(Error::invalid_env(
                        "CNI_NETNS",
                        p,
                        "must be an absolute path",
                    ));
                }
                env.netns = Some(PathBuf::from(p));
            }
            // DEL may come after the namespace is gone: the spec lets the runtime omit it.
            None if command == Command::Del => {}
            None => {
                return Err(Error::invalid_env(
                    "CNI_NETNS",
                    "",
                    "is required for this command",
                ));
            }
        }
        if let Some(raw) = get("CNI_ARGS") {
            env.args = parse_cni_args(&raw)?;
        }
        Ok(env)
    }

    pub fn pod_namespace(&self) -> Option<String> {
        self.args.get("K8S_POD_NAMESPACE").cloned()
    }

    pub fn pod_name(&self) -> Option<String> {
        self.args.get("K8S_POD_NAME").cloned()
    }

    /// `CNI_ARGS` `IP=10.0.1.11,fd00::1:11` (host-local's convention): requested addresses.
    pub fn requested_ips(&self) -> Result<Vec<IpAddr>> {
        let Some(raw) = self.args.get("IP") else {
            return Ok(Vec::new());
        };
        raw.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                parse_requested_ip(s).map_err(|reason| {
                    Error::invalid_env("CNI_ARGS", format!("IP={raw}"), format!("{s:?}: {reason}"))
                })
            })
            .collect()
    }
}

/// The spec: "alphanumeric characters, underscore, hyphen, period", non-empty, starting with an
/// alphanumeric character (the rule lives with the record key it makes).
pub fn validate_container_id(cid: &str) -> Result<()> {
    palisade_node_api::endpoint::check_container_id(cid)
        .map_err(|reason| Error::invalid_env("CNI_CONTAINERID", cid, reason))
}

/// The kernel's rules for an interface name (dev_valid_name), in printable ASCII.
pub fn validate_ifname(name: &str) -> Result<()> {
    palisade_node_api::endpoint::check_ifname(name)
        .map_err(|reason| Error::invalid_env("CNI_IFNAME", name, reason))
}

/// `CNI_ARGS`: `K=V` pairs separated by `;`.
pub fn parse_cni_args(raw: &str) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            _ => {
                return Err(Error::invalid_env(
                    "CNI_ARGS",
                    raw,
                    format!("pair {pair:?} is not KEY=VALUE"),
                ));
            }
        }
    }
    Ok(out)
}

/// Address family helper.
pub fn is_v4(ip: &IpAddr) -> bool {
    ip.is_ipv4()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    fn conf(extra: &str) -> Result<NetConf> {
        NetConf::parse(
            format!(r#"{{"cniVersion":"1.1.0","name":"n","type":"palisade"{extra}}}"#).as_bytes(),
        )
    }

    #[test]
    fn defaults_apply_when_optional_fields_are_absent() {
        let c = conf("").unwrap();
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/palisade"));
        assert_eq!(
            c.pod_cidr_file,
            PathBuf::from("/var/lib/palisade/podcidrs.json")
        );
        assert!(c.pod_cidrs.is_none() && c.agent_socket.is_none());
    }

    #[test]
    fn dual_stack_pod_cidrs_parse_and_normalise_to_the_network() {
        let c = conf(r#","mtu":1400,"podCIDRs":["10.244.1.7/24","fd00:10:244:1::/64"]"#).unwrap();
        assert_eq!(c.mtu, 1400);
        let p = c.pod_cidrs().unwrap();
        assert_eq!(p[0].to_string(), "10.244.1.0/24");
        assert_eq!(p[1].to_string(), "fd00:10:244:1::/64");
    }

    #[test]
    fn bad_cidr_is_invalid_config_naming_field_and_value() {
        let e = conf(r#","podCIDRs":["10.244.1.0/24","10.0.0.300/8"]"#).unwrap_err();
        assert_eq!(e.code(), code::INVALID_CONFIG);
        assert!(e.to_string().contains("podCIDRs[1]"), "{e}");
        assert!(e.to_string().contains("10.0.0.300/8"), "{e}");
        let e = conf(r#","podCIDRs":["10.244.1.0/31"]"#).unwrap_err();
        assert!(e.to_string().contains("no room"), "{e}");
        let e = conf(r#","podCIDRs":["10.1.0.0/16","10.2.0.0/16"]"#).unwrap_err();
        assert!(e.to_string().contains("at most one IPv4"), "{e}");
    }

    #[test]
    fn pod_cidrs_that_are_not_pod_addresses_are_refused_naming_the_range() {
        for (bad, range) in [
            ("0.0.0.0/0", "0.0.0.0/8"),
            ("127.0.0.0/8", "127.0.0.0/8"),
            ("127.5.0.0/24", "127.0.0.0/8"),
            ("169.254.0.0/16", "169.254.0.0/16"),
            ("169.254.1.0/24", "169.254.0.0/16"),
            ("224.0.0.0/24", "224.0.0.0/4"),
            ("255.255.255.0/24", "240.0.0.0/4"),
            ("::/0", "::/127"),
            ("fe80::/64", "fe80::/10"),
            ("ff02::/64", "ff00::/8"),
            ("::ffff:10.0.0.0/120", "::ffff:0:0/96"),
        ] {
            let e = parse_pool_cidr(bad).unwrap_err();
            assert!(e.contains(range), "{bad}: {e}");
            let e = conf(&format!(r#","podCIDRs":["{bad}"]"#)).unwrap_err();
            assert_eq!(e.code(), code::INVALID_CONFIG);
            assert!(
                e.to_string().contains("podCIDRs[0]") && e.to_string().contains(bad),
                "{e}"
            );
        }
        for good in [
            "10.244.0.0/16",
            "100.64.0.0/10",
            "fd00:10:244::/64",
            "2001:db8::/64",
        ] {
            assert!(parse_pool_cidr(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn values_of_any_utf8_are_shortened_without_cutting_a_character() {
        let long = "é".repeat(100);
        let e = conf(&format!(r#","mtu":"{long}""#)).unwrap_err();
        assert!(
            e.to_string().contains("...") && e.to_string().contains("mtu"),
            "{e}"
        );
    }

    #[test]
    fn malformed_json_is_decode_error_and_unknown_version_is_code_1() {
        assert_eq!(
            NetConf::parse(b"{not json").unwrap_err().code(),
            code::DECODE_FAILURE
        );
        let e = NetConf::parse(br#"{"cniVersion":"0.3.1","name":"n"}"#).unwrap_err();
        assert_eq!(e.code(), code::INCOMPATIBLE_VERSION);
        assert!(e.to_string().contains("0.3.1"));
        assert_eq!(
            conf(r#","mtu":"big""#).unwrap_err().code(),
            code::INVALID_CONFIG
        );
        assert_eq!(
            conf(r#","mtu":10"#).unwrap_err().code(),
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn pod_cidr_file_is_used_when_pod_cidrs_absent() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("podcidrs.json");
        std::fs::write(&f, r#"{"podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"]}"#).unwrap();
        let c = conf(&format!(r#","podCIDRFile":"{}""#, f.display())).unwrap();
        assert_eq!(c.pod_cidrs().unwrap().len(), 2);
        let missing = conf(r#","podCIDRFile":"/nonexistent/p.json""#).unwrap();
        let e = missing.pod_cidrs().unwrap_err();
        assert!(e.to_string().contains("podCIDRFile"), "{e}");
    }

    #[test]
    fn valid_attachments_parse_for_gc() {
        let c =
            conf(r#","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]"#).unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn env_validation_names_the_variable() {
        let get = env_of(&[("CNI_COMMAND", "FROB")]);
        assert_eq!(CniEnv::command(&get).unwrap_err().code(), code::INVALID_ENV);
        let base = [
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
        ];
        let ok = CniEnv::from_env(Command::Add, &env_of(&base)).unwrap();
        assert_eq!(ok.netns, Some(PathBuf::from("/run/netns/x")));
        for (var, val) in [
            ("CNI_CONTAINERID", ""),
            ("CNI_CONTAINERID", "-bad id"),
            ("CNI_IFNAME", "this-name-is-too-long"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_NETNS", "relative/path"),
            ("CNI_ARGS", "K8S_POD_NAME"),
        ] {
            let mut vars: Vec<(&str, &str)> =
                base.iter().copied().filter(|(k, _)| *k != var).collect();
            vars.push((var, val));
            let e = CniEnv::from_env(Command::Add, &env_of(&vars)).unwrap_err();
            assert_eq!(e.code(), code::INVALID_ENV, "{var}={val}");
            assert!(e.to_string().contains(var), "{e}");
        }
        // DEL without CNI_NETNS is fine (the namespace may be gone).
        let del = [("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")];
        assert!(CniEnv::from_env(Command::Del, &env_of(&del)).is_ok());
    }

    #[test]
    fn runtime_config_ips_parse_with_or_without_prefix() {
        let c = conf(r#","runtimeConfig":{"ips":["10.0.1.11/16","fd00::1:11"]}"#).unwrap();
        assert_eq!(
            c.requested_ips,
            vec![
                "10.0.1.11".parse::<IpAddr>().unwrap(),
                "fd00::1:11".parse::<IpAddr>().unwrap()
            ]
        );
        assert!(
            conf(r#","runtimeConfig":{"portMappings":[]}"#)
                .unwrap()
                .requested_ips
                .is_empty()
        );
        let e = conf(r#","runtimeConfig":{"ips":["10.0.1.300/16"]}"#).unwrap_err();
        assert_eq!(e.code(), code::INVALID_CONFIG);
        assert!(e.to_string().contains("runtimeConfig.ips[0]"), "{e}");
        assert!(e.to_string().contains("10.0.1.300"), "{e}");
        let e = conf(r#","runtimeConfig":{"ips":"10.0.1.1"}"#).unwrap_err();
        assert!(e.to_string().contains("runtimeConfig.ips"), "{e}");
    }

    #[test]
    fn cni_args_ip_gives_requested_addresses() {
        let base = [
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_ARGS", "IgnoreUnknown=1;IP=10.0.0.10,fd00::10"),
        ];
        let env = CniEnv::from_env(Command::Add, &env_of(&base)).unwrap();
        assert_eq!(env.requested_ips().unwrap().len(), 2);
        let bad = [
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_ARGS", "IP=10.0.0.x"),
        ];
        let e = CniEnv::from_env(Command::Add, &env_of(&bad))
            .unwrap()
            .requested_ips()
            .unwrap_err();
        assert_eq!(e.code(), code::INVALID_ENV);
        assert!(e.to_string().contains("10.0.0.x"), "{e}");
    }

    #[test]
    fn cni_args_give_pod_namespace_and_name() {
        let a =
            parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0").unwrap();
        assert_eq!(a["K8S_POD_NAMESPACE"], "default");
        assert_eq!(a["K8S_POD_NAME"], "web-0");
    }
}
