//! Endpoint records: what the plugin's ADD wired, for the agent.
//!
//! One JSON file per attachment in `<stateDir>/endpoints/` (0700; files 0600: they hold pod
//! names and addresses), written by [`EndpointRecord::write`] after the veth exists, removed by
//! DEL and GC ([`remove`]), read by the agent at start ([`read_all`]); the agent gets each new
//! record over its socket too.
//!
//! File name: `<containerID>:<ifname>.json` ([`key`]). A container ID holds only letters,
//! digits, `_`, `-` and `.`, and an interface name never holds `:` or `/`, so the first `:`
//! splits every key unambiguously. Releases up to 0.1 wrote `<containerID>_<ifname>.json`,
//! which two attachments could share (`a_b` + `eth0` and `a` + `b_eth0`); such files are still
//! read, but a record counts only under the key its own content names, and [`remove`] deletes a
//! legacy file only when its content is the attachment being removed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::file;

/// Largest record file read (a record is a few hundred bytes).
pub const MAX_RECORD_BYTES: u64 = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub container_id: String,
    /// The pod's network namespace path (`CNI_NETNS`).
    pub netns: String,
    pub ifname: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    /// Pod addresses in CIDR notation with the pod CIDR's prefix length ("10.244.1.5/24").
    pub ips: Vec<String>,
    /// Host-side veth name (where the TC programs attach): [`crate::host_veth_name`].
    pub host_veth: String,
    /// Host-side veth ifindex, in the node's network namespace.
    pub host_ifindex: u32,
    /// Pod-side MAC address ("aa:bb:cc:dd:ee:ff").
    pub mac: String,
    pub created_unix_ms: u64,
}

/// The key of an attachment: `<containerID>:<ifname>` (see the module comment).
pub fn key(container_id: &str, ifname: &str) -> String {
    format!("{container_id}:{ifname}")
}

/// `<state_dir>/endpoints`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("endpoints")
}

/// `<state_dir>/endpoints/<containerID>:<ifname>.json`.
pub fn path(state_dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    dir(state_dir).join(format!("{}.json", key(container_id, ifname)))
}

/// Where releases up to 0.1 wrote the record (ambiguous: see the module comment).
fn legacy_path(state_dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    dir(state_dir).join(format!("{container_id}_{ifname}.json"))
}

/// The CNI spec's rule for a container ID: non-empty, starts with a letter or digit, holds only
/// letters, digits, `_`, `-` and `.`. `Err` carries the reason.
pub fn check_container_id(cid: &str) -> std::result::Result<(), &'static str> {
    if cid.is_empty() {
        return Err("is empty");
    }
    if cid.len() > 1024 {
        return Err("is longer than 1024 bytes");
    }
    let first_ok = cid.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !first_ok
        || !cid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(
            "must start with a letter or digit and hold only letters, digits, '_', '-', '.'",
        );
    }
    Ok(())
}

/// The kernel's rule for an interface name (`dev_valid_name`), restricted to printable ASCII
/// (a name is also a file name and a log field here). `Err` carries the reason.
pub fn check_ifname(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.len() > 15 {
        Err("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Err("must not be '.' or '..'")
    } else if !name.chars().all(|c| c.is_ascii_graphic()) {
        Err("must hold only printable ASCII without spaces")
    } else if name.contains(['/', ':']) {
        Err("must not contain '/' or ':'")
    } else {
        Ok(())
    }
}

/// An address of a record: `addr/prefix` with the prefix in range for the family.
fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = s.split_once('/')?;
    let ip: IpAddr = a.parse().ok()?;
    let p: u8 = p.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (p <= max).then_some((ip, p))
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

impl EndpointRecord {
    /// [`key`] of this record.
    pub fn key(&self) -> String {
        key(&self.container_id, &self.ifname)
    }

    pub fn path(&self, state_dir: &Path) -> PathBuf {
        path(state_dir, &self.container_id, &self.ifname)
    }

    /// (namespace, name) of the pod, when the runtime passed them.
    pub fn pod(&self) -> Option<(String, String)> {
        Some((self.pod_namespace.clone()?, self.pod_name.clone()?))
    }

    /// The addresses, without prefix lengths ([`EndpointRecord::validate`] checked them).
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.ips
            .iter()
            .filter_map(|s| parse_cidr(s).map(|(ip, _)| ip))
            .collect()
    }

    /// Checks every field against the contract; the error names the field and value. A record
    /// read from disk or received on the socket is used only after this.
    pub fn validate(&self) -> Result<()> {
        check_container_id(&self.container_id)
            .map_err(|r| Error::invalid("container_id", &self.container_id, r))?;
        check_ifname(&self.ifname).map_err(|r| Error::invalid("ifname", &self.ifname, r))?;
        if !self.netns.starts_with('/') || self.netns.len() > 4096 {
            return Err(Error::invalid(
                "netns",
                &self.netns,
                "must be an absolute path (at most 4096 bytes)",
            ));
        }
        for (field, v) in [
            ("pod_namespace", &self.pod_namespace),
            ("pod_name", &self.pod_name),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.len() > 253 || v.chars().any(char::is_control))
            {
                return Err(Error::invalid(
                    field,
                    v,
                    "must be 1 to 253 bytes without control characters",
                ));
            }
        }
        if self.ips.is_empty() || self.ips.len() > 2 {
            return Err(Error::invalid(
                "ips",
                format!("{:?}", self.ips),
                "must hold one or two addresses (one per family)",
            ));
        }
        for ip in &self.ips {
            if parse_cidr(ip).is_none() {
                return Err(Error::invalid("ips", ip, "is not an address/prefix"));
            }
        }
        let want = crate::host_veth_name(&self.container_id, &self.ifname);
        if self.host_veth != want {
            return Err(Error::invalid(
                "host_veth",
                &self.host_veth,
                format!("is not the plugin's name for this attachment ({want})"),
            ));
        }
        if self.host_ifindex == 0 {
            return Err(Error::invalid(
                "host_ifindex",
                "0",
                "must be an ifindex (> 0)",
            ));
        }
        if !is_mac(&self.mac) {
            return Err(Error::invalid("mac", &self.mac, "is not a MAC address"));
        }
        Ok(())
    }

    /// Writes the record (after [`EndpointRecord::validate`]) atomically and durably, and
    /// removes a legacy-named file of the same attachment.
    pub fn write(&self, state_dir: &Path) -> Result<PathBuf> {
        self.validate()?;
        let d = dir(state_dir);
        file::private_dir(&d)?;
        let body = serde_json::to_vec(self).map_err(|source| Error::Encode {
            what: "endpoint record",
            source,
        })?;
        let dst = self.path(state_dir);
        file::write_atomic(&dst, &body)?;
        remove_legacy(state_dir, &self.container_id, &self.ifname)?;
        Ok(dst)
    }
}

/// Reads and validates one record file; `None` when it does not exist.
pub fn read_path(p: &Path) -> Result<Option<EndpointRecord>> {
    let Some(bytes) = file::read_bounded(p, MAX_RECORD_BYTES)? else {
        return Ok(None);
    };
    let r: EndpointRecord = serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
        what: "endpoint record",
        path: p.to_path_buf(),
        source,
    })?;
    r.validate()?;
    Ok(Some(r))
}

/// The record of one attachment; `None` when there is none. A legacy-named file counts only
/// when its content names this attachment.
pub fn read(state_dir: &Path, container_id: &str, ifname: &str) -> Result<Option<EndpointRecord>> {
    if let Some(r) = read_path(&path(state_dir, container_id, ifname))? {
        return Ok(Some(r));
    }
    Ok(read_legacy(state_dir, container_id, ifname))
}

/// The legacy-named record of this attachment, if one exists whose content names it.
fn read_legacy(state_dir: &Path, container_id: &str, ifname: &str) -> Option<EndpointRecord> {
    read_path(&legacy_path(state_dir, container_id, ifname))
        .ok()
        .flatten()
        .filter(|r| r.container_id == container_id && r.ifname == ifname)
}

fn remove_file(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing endpoint record", p, e)),
    }
}

fn remove_legacy(state_dir: &Path, container_id: &str, ifname: &str) -> Result<()> {
    if read_legacy(state_dir, container_id, ifname).is_some() {
        remove_file(&legacy_path(state_dir, container_id, ifname))?;
    }
    Ok(())
}

/// Removes the record of an attachment; succeeds when it is already gone. Never removes a
/// legacy file that belongs to another attachment.
pub fn remove(state_dir: &Path, container_id: &str, ifname: &str) -> Result<()> {
    remove_file(&path(state_dir, container_id, ifname))?;
    remove_legacy(state_dir, container_id, ifname)
}

/// A record file that could not be used, and why.
#[derive(Debug)]
pub struct BadRecord {
    pub path: PathBuf,
    pub error: Error,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chain = self.error.chain();
        let path = self.path.display().to_string();
        if chain.contains(&path) {
            f.write_str(&chain)
        } else {
            write!(f, "{path}: {chain}")
        }
    }
}

/// Every record of a state directory, by [`key`], and the files that could not be used.
#[derive(Debug, Default)]
pub struct Records {
    pub records: BTreeMap<String, EndpointRecord>,
    pub bad: Vec<BadRecord>,
}

/// Reads every record (the agent at start, the plugin's GC). A missing directory means no
/// records; temporary files of interrupted writes are skipped; a file that does not read,
/// parse or validate, or whose name is not that of the attachment it names, is listed in
/// [`Records::bad`] and the others are still read. Where a current and a legacy file name
/// one attachment, the current one wins.
pub fn read_all(state_dir: &Path) -> Result<Records> {
    let d = dir(state_dir);
    let rd = match std::fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Records::default()),
        Err(e) => return Err(Error::io("listing endpoint records", &d, e)),
    };
    let mut out = Records::default();
    let mut legacy = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::io("listing endpoint records", &d, e))?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let p = ent.path();
        let r = match read_path(&p) {
            Ok(Some(r)) => r,
            Ok(None) => continue, // removed meanwhile
            Err(error) => {
                out.bad.push(BadRecord { path: p, error });
                continue;
            }
        };
        if p == r.path(state_dir) {
            out.records.insert(r.key(), r);
        } else if p == legacy_path(state_dir, &r.container_id, &r.ifname) {
            legacy.push(r);
        } else {
            out.bad.push(BadRecord {
                error: Error::invalid(
                    "file name",
                    name.into_owned(),
                    format!("is not that of the attachment it holds ({})", r.key()),
                ),
                path: p,
            });
        }
    }
    for r in legacy {
        out.records.entry(r.key()).or_insert(r);
    }
    Ok(out)
}

/// Removes temporary files of record writers that died (GC).
pub fn remove_tmp_leftovers(state_dir: &Path) -> Result<Vec<PathBuf>> {
    file::remove_tmp_leftovers(&dir(state_dir))
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(cid: &str, ifname: &str) -> EndpointRecord {
        EndpointRecord {
            container_id: cid.into(),
            netns: "/run/netns/p".into(),
            ifname: ifname.into(),
            pod_namespace: Some("default".into()),
            pod_name: Some("web-0".into()),
            ips: vec!["10.244.1.5/24".into()],
            host_veth: crate::host_veth_name(cid, ifname),
            host_ifindex: 7,
            mac: "02:00:00:00:00:02".into(),
            created_unix_ms: 1,
        }
    }

    #[test]
    fn records_round_trip_and_read_all_lists_them() {
        let d = tempfile::tempdir().unwrap();
        assert!(read_all(d.path()).unwrap().records.is_empty());
        let p = sample("b", "eth0").write(d.path()).unwrap();
        assert!(p.ends_with("endpoints/b:eth0.json"));
        sample("a", "eth0").write(d.path()).unwrap();
        std::fs::write(dir(d.path()).join(".tmp.1.0.x:eth0.json"), "{").unwrap();
        let all = read_all(d.path()).unwrap();
        assert!(all.bad.is_empty(), "{:?}", all.bad);
        assert_eq!(all.records.keys().collect::<Vec<_>>(), ["a:eth0", "b:eth0"]);
        assert_eq!(
            read(d.path(), "a", "eth0").unwrap(),
            Some(sample("a", "eth0"))
        );
        remove(d.path(), "a", "eth0").unwrap();
        remove(d.path(), "a", "eth0").unwrap();
        assert_eq!(read(d.path(), "a", "eth0").unwrap(), None);
    }

    /// Byte for byte what the released plugin (0.1) wrote for an attachment.
    const RELEASED_RECORD: &str = r#"{"container_id":"a_b","netns":"/var/run/netns/p","ifname":"eth0","pod_namespace":"x","pod_name":"a","ips":["10.244.0.5/24","fd00:10:244::5/64"],"host_veth":"HOSTVETH","host_ifindex":7,"mac":"02:00:00:00:00:01","created_unix_ms":1700000000000}"#;

    fn released(cid: &str, ifname: &str) -> String {
        RELEASED_RECORD
            .replace("\"a_b\"", &format!("{cid:?}"))
            .replace("\"eth0\"", &format!("{ifname:?}"))
            .replace("HOSTVETH", &crate::host_veth_name(cid, ifname))
    }

    #[test]
    fn records_of_the_released_format_still_read_and_go_away_with_their_attachment() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir(d.path())).unwrap();
        std::fs::write(dir(d.path()).join("a_b_eth0.json"), released("a_b", "eth0")).unwrap();
        let all = read_all(d.path()).unwrap();
        assert!(all.bad.is_empty(), "{:?}", all.bad);
        let r = &all.records["a_b:eth0"];
        assert_eq!(r.pod(), Some(("x".into(), "a".into())));
        assert_eq!(r.addrs().len(), 2);
        assert!(read(d.path(), "a_b", "eth0").unwrap().is_some());
        // The name a_b_eth0.json also reads as container "a" + interface "b_eth0": that
        // attachment has no record, and removing it leaves a_b's alone.
        assert_eq!(read(d.path(), "a", "b_eth0").unwrap(), None);
        remove(d.path(), "a", "b_eth0").unwrap();
        assert!(read(d.path(), "a_b", "eth0").unwrap().is_some());
        remove(d.path(), "a_b", "eth0").unwrap();
        assert!(read_all(d.path()).unwrap().records.is_empty());
    }

    #[test]
    fn attachments_whose_old_names_collide_keep_separate_records() {
        let d = tempfile::tempdir().unwrap();
        let one = sample("a_b", "eth0");
        let two = sample("a", "b_eth0");
        one.write(d.path()).unwrap();
        two.write(d.path()).unwrap();
        let all = read_all(d.path()).unwrap();
        assert_eq!(all.records.len(), 2);
        remove(d.path(), "a", "b_eth0").unwrap();
        assert_eq!(read(d.path(), "a_b", "eth0").unwrap(), Some(one));
    }

    #[test]
    fn a_bad_record_is_listed_by_path_and_the_others_still_read() {
        let d = tempfile::tempdir().unwrap();
        sample("good", "eth0").write(d.path()).unwrap();
        let dd = dir(d.path());
        std::fs::write(dd.join("torn:eth0.json"), "{\"container_id\":").unwrap();
        let mut wrong_veth = sample("w", "eth0");
        wrong_veth.host_veth = "eth9".into();
        std::fs::write(
            dd.join("w:eth0.json"),
            serde_json::to_vec(&wrong_veth).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dd.join("elsewhere.json"),
            serde_json::to_vec(&sample("z", "eth0")).unwrap(),
        )
        .unwrap();
        let all = read_all(d.path()).unwrap();
        assert_eq!(all.records.keys().collect::<Vec<_>>(), ["good:eth0"]);
        let mut bad: Vec<String> = all.bad.iter().map(|b| b.to_string()).collect();
        bad.sort();
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(
            bad[0].contains("elsewhere.json") && bad[0].contains("z:eth0"),
            "{bad:?}"
        );
        assert!(bad[1].contains("torn:eth0.json"), "{bad:?}");
        assert!(
            bad[2].contains("w:eth0.json: host_veth \"eth9\""),
            "{bad:?}"
        );
    }

    #[test]
    fn validation_names_the_field_and_value() {
        for (field, edit) in [
            (
                "container_id",
                Box::new(|r: &mut EndpointRecord| r.container_id = "-x".into())
                    as Box<dyn Fn(&mut EndpointRecord)>,
            ),
            ("ifname", Box::new(|r| r.ifname = "é".into())),
            ("ifname", Box::new(|r| r.ifname = "a:b".into())),
            ("ips", Box::new(|r| r.ips = vec!["10.0.0.1/33".into()])),
            ("host_veth", Box::new(|r| r.host_veth = "eth0".into())),
            ("mac", Box::new(|r| r.mac = "zz".into())),
            ("netns", Box::new(|r| r.netns = "rel".into())),
            ("host_ifindex", Box::new(|r| r.host_ifindex = 0)),
        ] {
            let mut r = sample("c", "eth0");
            edit(&mut r);
            let e = r.validate().unwrap_err().to_string();
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }

    #[test]
    fn record_files_and_their_directory_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = sample("a", "eth0").write(d.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&dir(d.path())), 0o700);
    }
}
