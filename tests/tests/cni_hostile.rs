//! Privileged tests of the `palisade` CNI plugin against hostile or broken inputs (issue 9 §4).
//!
//! Threat model: whatever reaches the plugin's inputs (the network config, the `CNI_*`
//! variables, the pod-CIDR file, the state directory it shares) may be wrong or hostile: a
//! value in any UTF-8, a path that is a FIFO or not a network namespace, pod CIDRs that would
//! hand out the node's own or non-unicast addresses, container IDs and interface names that
//! collide once joined, a lock someone else holds. What must hold: the plugin answers, within
//! a bound, with the spec's error JSON naming the field (or variable) and value; it never
//! panics or hangs; it leaves nothing behind; and one attachment's state never lands on
//! another's.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use palisade_tests::netns::{Netns, Node};
use serde_json::json;

#[path = "common/cni.rs"]
mod harness;
use harness::*;

/// A bound no correct answer comes near (an ADD takes ~10 ms); hanging is what fails.
const BOUND: Duration = Duration::from_secs(20);

fn mkfifo(p: &Path) -> Result<()> {
    let c = std::ffi::CString::new(p.to_str().context("path is UTF-8")?)?;
    // SAFETY: a NUL-terminated path.
    ensure!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0,
        "mkfifo {}",
        p.display()
    );
    Ok(())
}

#[test]
fn privileged_values_in_any_utf8_get_an_error_naming_them_not_a_panic() -> Result<()> {
    bad_input_case(
        "privileged_values_in_any_utf8_get_an_error_naming_them_not_a_panic",
        |node, pod| {
            let run =
                |i: &palisade_tests::netns::Invocation<'_>, c: &[u8]| run_bounded(i, c, BOUND);
            // A long value is shortened for the message: never inside a character (0.1 cut
            // this one in the middle of an "é" and panicked).
            let long = format!("a{}", "é".repeat(60));
            let cfg = conf(node, "1.1.0", json!({ "mtu": long }));
            expect_error(
                &run(&inv(node, "ADD", "utf1", Some(&pod.path)), &cfg)?,
                7,
                "mtu",
            )?;
            let cfg = conf(node, "1.1.0", json!({ "podCIDRs": ["１０.244.0.0/16"] }));
            expect_error(
                &run(&inv(node, "ADD", "utf2", Some(&pod.path)), &cfg)?,
                7,
                "podCIDRs[0] = \"１０.244.0.0/16\"",
            )?;
            let cfg = conf(node, "1.1.0", json!({}));
            let mut i = inv(node, "ADD", "utf3", Some(&pod.path));
            i.ifname = "éth0";
            expect_error(&run(&i, &cfg)?, 4, "CNI_IFNAME=\"éth0\"")?;
            let mut i = inv(node, "ADD", "cé", Some(&pod.path));
            i.ifname = "eth0";
            expect_error(&run(&i, &cfg)?, 4, "CNI_CONTAINERID=\"cé\"")?;
            Ok(())
        },
    )
}

#[test]
fn privileged_a_cni_netns_that_is_no_pod_network_namespace_is_code_4_naming_it() -> Result<()> {
    bad_input_case(
        "privileged_a_cni_netns_that_is_no_pod_network_namespace_is_code_4_naming_it",
        |node, _pod| {
            let cfg = conf(node, "1.1.0", json!({}));
            let fifo = node.state_dir().join("netns-fifo");
            mkfifo(&fifo)?;
            let file = node.state_dir().join("netns-file");
            std::fs::write(&file, "not a namespace")?;
            for (path, needle) in [
                // Opening a FIFO for reading waits for a writer: the plugin must not.
                (fifo.as_path(), "is a FIFO"),
                (file.as_path(), "not a namespace file"),
                // Resolved in the plugin's process: its UTS namespace, and the node's own
                // network namespace, where the plugin runs.
                (Path::new("/proc/self/ns/uts"), "not of a network namespace"),
                (
                    Path::new("/proc/self/ns/net"),
                    "node's own network namespace",
                ),
            ] {
                let out = run_bounded(&inv(node, "ADD", "ns1", Some(path)), &cfg, BOUND)?;
                expect_error(&out, 4, &format!("CNI_NETNS=\"{}\"", path.display()))?;
                expect_error(&out, 4, needle)?;
            }
            std::fs::remove_file(&fifo)?;
            std::fs::remove_file(&file)?;
            Ok(())
        },
    )
}

#[test]
fn privileged_a_fifo_or_oversized_pod_cidr_file_fails_at_once_with_code_7() -> Result<()> {
    bad_input_case(
        "privileged_a_fifo_or_oversized_pod_cidr_file_fails_at_once_with_code_7",
        |node, pod| {
            let fifo = node.state_dir().join("podcidrs-fifo.json");
            mkfifo(&fifo)?;
            let big = node.state_dir().join("podcidrs-big.json");
            let mut text = String::from(r#"{"podCIDRs":["10.244.1.0/24"]}"#);
            text.push_str(&" ".repeat(1 << 20));
            std::fs::write(&big, text)?;
            for (file, needle) in [(&fifo, "is a FIFO"), (&big, "more than the 4096 allowed")] {
                let cfg = conf(
                    node,
                    "1.1.0",
                    json!({ "podCIDRs": null, "podCIDRFile": file }),
                );
                let out = run_bounded(&inv(node, "ADD", "pcf1", Some(&pod.path)), &cfg, BOUND)?;
                expect_error(&out, 7, "podCIDRFile")?;
                expect_error(&out, 7, needle)?;
            }
            std::fs::remove_file(&fifo)?;
            std::fs::remove_file(&big)?;
            Ok(())
        },
    )
}

#[test]
fn privileged_pod_cidrs_that_are_not_pod_addresses_are_refused_naming_field_and_value() -> Result<()>
{
    bad_input_case(
        "privileged_pod_cidrs_that_are_not_pod_addresses_are_refused_naming_field_and_value",
        |node, pod| {
            let file = node.state_dir().join("podcidrs.json");
            for bad in [
                "0.0.0.0/0",
                "127.0.0.0/8",
                "169.254.0.0/16",
                "224.0.0.0/24",
                "::/0",
                "fe80::/64",
                "ff02::/64",
            ] {
                let cfg = conf(node, "1.1.0", json!({ "podCIDRs": [bad] }));
                let out = run_bounded(&inv(node, "ADD", "pool1", Some(&pod.path)), &cfg, BOUND)?;
                expect_error(&out, 7, &format!("podCIDRs[0] = \"{bad}\""))?;
                // The same CIDR from the agent-written file.
                palisade_node_api::podcidr::write(&file, &[bad.to_string()])?;
                let cfg = conf(
                    node,
                    "1.1.0",
                    json!({ "podCIDRs": null, "podCIDRFile": file }),
                );
                let out = run_bounded(&inv(node, "ADD", "pool1", Some(&pod.path)), &cfg, BOUND)?;
                expect_error(&out, 7, &format!("podCIDRFile.podCIDRs[0] = \"{bad}\""))?;
            }
            std::fs::remove_file(&file)?;
            Ok(())
        },
    )
}

#[test]
fn privileged_attachments_whose_old_record_names_collide_keep_their_own_records() -> Result<()> {
    if !setup("privileged_attachments_whose_old_record_names_collide_keep_their_own_records") {
        return Ok(());
    }
    let node = Node::new()?;
    let pods = [Netns::new("c")?, Netns::new("c")?];
    let cfg = conf(&node, "1.1.0", json!({}));
    // `a_b` + `eth0` and `a` + `b_eth0` were both `a_b_eth0.json` in 0.1.
    let atts = [("a_b", "eth0"), ("a", "b_eth0")];
    for ((cid, ifname), pod) in atts.iter().zip(&pods) {
        let mut i = inv(&node, "ADD", cid, Some(&pod.path));
        i.ifname = ifname;
        ok_json(&run_bounded(&i, &cfg, BOUND)?)?;
    }
    let recs = palisade_node_api::endpoint::read_all(node.state_dir())?;
    ensure!(
        recs.bad.is_empty() && recs.records.keys().collect::<Vec<_>>() == ["a:b_eth0", "a_b:eth0"],
        "{recs:?}"
    );
    let mut i = inv(&node, "DEL", "a", Some(&pods[1].path));
    i.ifname = "b_eth0";
    ok_empty(&run_bounded(&i, &cfg, BOUND)?)?;
    let left = palisade_node_api::endpoint::read(node.state_dir(), "a_b", "eth0")?
        .context("DEL of a/b_eth0 removed the record of a_b/eth0")?;
    ensure!(left.ifname == "eth0" && pods[0].has_link("eth0"));
    ok_empty(&run_bounded(
        &inv(&node, "DEL", "a_b", Some(&pods[0].path)),
        &cfg,
        BOUND,
    )?)?;
    assert_clean(&node)
}

#[test]
fn privileged_a_held_ipam_lock_fails_add_with_11_within_the_bound_and_leaves_nothing() -> Result<()>
{
    bad_input_case(
        "privileged_a_held_ipam_lock_fails_add_with_11_within_the_bound_and_leaves_nothing",
        |node, pod| {
            let cfg = conf(node, "1.1.0", json!({}));
            // A process that takes the lock and never lets go (a stuck plugin; other users
            // cannot open the lock at all: tests/cni_local_user.rs).
            let dir = node.state_dir().join("ipam");
            std::fs::create_dir_all(&dir)?;
            let lock = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join("lock"))?;
            let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
                .map_err(|(_, e)| e)?;
            let started = std::time::Instant::now();
            let out = run_bounded(&inv(node, "ADD", "lock1", Some(&pod.path)), &cfg, BOUND)?;
            eprintln!("ADD answered after {:?}", started.elapsed());
            expect_error(&out, 11, "IPAM lock")?;
            drop(held);
            // The store works again once the holder lets go.
            ok_json(&run_bounded(
                &inv(node, "ADD", "lock1", Some(&pod.path)),
                &cfg,
                BOUND,
            )?)?;
            ok_empty(&run_bounded(
                &inv(node, "DEL", "lock1", Some(&pod.path)),
                &cfg,
                BOUND,
            )?)?;
            Ok(())
        },
    )
}
