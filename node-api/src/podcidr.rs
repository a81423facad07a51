//! The node's pod-CIDR file: `{"podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]}`.
//!
//! The agent writes it from its Node object's `spec.podCIDRs` ([`write`]); the plugin reads it
//! when its config has no `podCIDRs` ([`read`]) and validates each entry itself (it names the
//! field and value in its CNI error).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::file;

/// Name of the file under the state directory.
pub const FILE_NAME: &str = "podcidrs.json";
/// Where the plugin looks by default (`podCIDRFile`), and the agent writes by default.
pub const DEFAULT_PATH: &str = "/var/lib/palisade/podcidrs.json";
/// Largest file read: a Node has at most one CIDR per family.
pub const MAX_BYTES: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCidrFile {
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
}

/// `<state_dir>/podcidrs.json`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Writes the file atomically and durably (0600).
pub fn write(path: &Path, cidrs: &[String]) -> Result<()> {
    let body = serde_json::to_vec(&PodCidrFile {
        pod_cidrs: cidrs.to_vec(),
    })
    .map_err(|source| Error::Encode {
        what: "pod-CIDR file",
        source,
    })?;
    file::write_atomic(path, &body)
}

/// Reads the file: its CIDR strings, as written (unvalidated). A missing file is an
/// [`Error::Io`] with `NotFound`; a FIFO, a directory or a file over [`MAX_BYTES`] fails at
/// once, naming the path.
pub fn read(path: &Path) -> Result<Vec<String>> {
    let bytes = file::read_bounded(path, MAX_BYTES)?.ok_or_else(|| {
        Error::io(
            "reading",
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })?;
    serde_json::from_slice::<PodCidrFile>(&bytes)
        .map(|f| f.pod_cidrs)
        .map_err(|source| Error::Decode {
            what: "pod-CIDR file ({\"podCIDRs\": [\"CIDR\", ...]})",
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_released_format_reads_and_writes_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = path(d.path());
        // What the released agent wrote.
        std::fs::write(&p, r#"{"podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"]}"#).unwrap();
        assert_eq!(read(&p).unwrap(), ["10.244.1.0/24", "fd00:10:244:1::/64"]);
        write(&p, &["10.9.0.0/16".into()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            r#"{"podCIDRs":["10.9.0.0/16"]}"#
        );
    }

    #[test]
    fn missing_malformed_and_oversized_files_fail_naming_the_path() {
        let d = tempfile::tempdir().unwrap();
        let p = path(d.path());
        let e = read(&p).unwrap_err();
        assert!(
            matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
        );
        std::fs::write(&p, "{}").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("podcidrs.json"));
        std::fs::write(&p, vec![b' '; MAX_BYTES as usize + 1]).unwrap();
        assert!(matches!(read(&p).unwrap_err(), Error::TooLarge { .. }));
    }
}
