//! CNI spec versions: which configs we accept and what each version changes in the output.

/// Versions whose configs the plugin accepts, oldest first. The result is always shaped for
/// the version the config asked for.
pub const SUPPORTED: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The newest version this plugin implements.
pub const LATEST: &str = "1.1.0";

/// A supported CNI spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    /// Parses a `cniVersion` string; `None` when the plugin does not support it.
    pub fn parse(s: &str) -> Option<Version> {
        match s {
            "0.4.0" => Some(Version::V0_4_0),
            "1.0.0" => Some(Version::V1_0_0),
            "1.1.0" => Some(Version::V1_1_0),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn has_gc_and_status(self) -> bool {
        self >= Version::V1_1_0
    }

    /// 0.x results carry `"version": "4"|"6"` on each IP config.
    pub fn ips_carry_version(self) -> bool {
        self < Version::V1_0_0
    }
}

/// The answer to VERSION: the requested version when we support it, else our latest.
pub fn version_info(requested: Option<&str>) -> serde_json::Value {
    let v = requested
        .and_then(Version::parse)
        .map(Version::as_str)
        .unwrap_or(LATEST);
    serde_json::json!({ "cniVersion": v, "supportedVersions": SUPPORTED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_spec_versions_are_accepted() {
        for v in SUPPORTED {
            assert_eq!(Version::parse(v).map(Version::as_str), Some(*v));
        }
        for bad in ["0.3.1", "0.2.0", "2.0.0", "1.1", "", "latest"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn gc_and_status_only_from_1_1_0_and_ip_version_field_only_before_1_0_0() {
        assert!(!Version::V0_4_0.has_gc_and_status());
        assert!(!Version::V1_0_0.has_gc_and_status());
        assert!(Version::V1_1_0.has_gc_and_status());
        assert!(Version::V0_4_0.ips_carry_version());
        assert!(!Version::V1_0_0.ips_carry_version());
    }

    #[test]
    fn version_answers_in_the_version_asked_and_lists_all_supported() {
        let v = version_info(Some("1.0.0"));
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.4.0", "1.0.0", "1.1.0"])
        );
        assert_eq!(version_info(Some("9.9.9"))["cniVersion"], "1.1.0");
        assert_eq!(version_info(None)["cniVersion"], "1.1.0");
    }
}
