//! Errors, each mapped to a CNI error code and printed in the spec's JSON shape
//! (`{"cniVersion", "code", "msg", "details"}`).
//!
//! Codes 1-99 are the spec's; codes from 100 up are palisade's own (see [`code`]).

use std::path::PathBuf;

/// CNI error codes: the spec's well-known ones and palisade's own (>= 100).
pub mod code {
    /// Incompatible CNI version (also: GC/STATUS asked for by a config older than 1.1.0).
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const CONTAINER_UNKNOWN: u32 = 3;
    /// Invalid necessary environment variables, like CNI_COMMAND or CNI_NETNS.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (malformed JSON).
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later (the agent is unreachable or refused the endpoint; the IPAM lock stayed
    /// held past the bounded wait).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot service ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Palisade: no free address left in a pod CIDR.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// Palisade: a netlink request failed.
    pub const NETLINK: u32 = 101;
    /// Palisade: CHECK found the attachment differs from what ADD made.
    pub const CHECK_FAILED: u32 = 102;
    /// Palisade: entering a network namespace failed.
    pub const NETNS: u32 = 103;
    /// Palisade: a requested address (`ips` capability, `CNI_ARGS` `IP=`) is held by another
    /// attachment.
    pub const ADDRESS_TAKEN: u32 = 104;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to decode {what}")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported cniVersion {version:?} (supported: 0.4.0, 1.0.0, 1.1.0)")]
    IncompatibleVersion { version: String },
    #[error("command {command} does not exist in cniVersion {version} (needs 1.1.0)")]
    VerbNotInVersion {
        command: &'static str,
        version: &'static str,
    },
    #[error("invalid network config: field {field} = {value}: {reason}")]
    InvalidConfig {
        field: String,
        value: String,
        reason: String,
    },
    #[error("invalid environment variable {var}={value:?}: {reason}")]
    InvalidEnv {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pod CIDR {pool} is exhausted: no free address left")]
    PoolExhausted { pool: String },
    #[error("requested address {address} cannot be allocated: {reason}")]
    RequestedAddress {
        address: std::net::IpAddr,
        reason: String,
    },
    #[error(
        "requested address {address} is already allocated to container {container_id} ({ifname})"
    )]
    AddressTaken {
        address: std::net::IpAddr,
        container_id: String,
        ifname: String,
    },
    #[error("netlink: {op} {object}: {message}")]
    Netlink {
        op: &'static str,
        object: String,
        /// errno reported by the kernel, when the failure was a netlink error message.
        errno: Option<i32>,
        message: String,
    },
    #[error("entering network namespace {}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("check failed: {what}")]
    CheckFailed { what: String },
    /// Endpoint records, the pod-CIDR file and the agent socket (the node contract).
    #[error(transparent)]
    Node(#[from] palisade_node_api::Error),
    #[error("plugin not available: {reason}")]
    NotAvailable { reason: String },
    /// A lock another process holds past the bounded wait.
    #[error("{what} {} is held by another process; gave up after {waited:?}", path.display())]
    Busy {
        what: &'static str,
        path: PathBuf,
        waited: std::time::Duration,
    },
}

impl Error {
    /// The CNI error code for this error.
    pub fn code(&self) -> u32 {
        match self {
            Error::Decode { .. } => code::DECODE_FAILURE,
            Error::IncompatibleVersion { .. } | Error::VerbNotInVersion { .. } => {
                code::INCOMPATIBLE_VERSION
            }
            Error::InvalidConfig { .. } | Error::RequestedAddress { .. } => code::INVALID_CONFIG,
            Error::AddressTaken { .. } => code::ADDRESS_TAKEN,
            Error::InvalidEnv { .. } => code::INVALID_ENV,
            Error::Io { .. } => code::IO_FAILURE,
            Error::PoolExhausted { .. } => code::POOL_EXHAUSTED,
            Error::Netlink { .. } => code::NETLINK,
            Error::Netns { .. } => code::NETNS,
            Error::CheckFailed { .. } => code::CHECK_FAILED,
            Error::Node(e) => {
                use palisade_node_api::Error as N;
                match e {
                    N::NotListening { .. }
                    | N::Socket { .. }
                    | N::BadAnswer { .. }
                    | N::Refused { .. } => code::TRY_AGAIN_LATER,
                    N::Invalid { .. } => code::INVALID_CONFIG,
                    N::Io { .. }
                    | N::NotRegularFile { .. }
                    | N::TooLarge { .. }
                    | N::Decode { .. }
                    | N::Encode { .. } => code::IO_FAILURE,
                }
            }
            Error::NotAvailable { .. } => code::NOT_AVAILABLE,
            Error::Busy { .. } => code::TRY_AGAIN_LATER,
        }
    }

    /// The spec's error JSON: `msg` is this error's message, `details` its source chain.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut details = String::new();
        let mut src = std::error::Error::source(self);
        while let Some(s) = src {
            if !details.is_empty() {
                details.push_str(": ");
            }
            details.push_str(&s.to_string());
            src = s.source();
        }
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
        });
        if !details.is_empty() {
            v["details"] = serde_json::Value::String(details);
        }
        v
    }

    pub fn invalid_config(
        field: impl Into<String>,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Error {
        Error::InvalidConfig {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub fn invalid_env(
        var: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Error {
        Error::InvalidEnv {
            var,
            value: value.into(),
            reason: reason.into(),
        }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_spec_shape_with_code_msg_and_details() {
        let e = Error::io(
            "reading",
            "/x/y",
            std::io::Error::from_raw_os_error(libc::ENOENT),
        );
        let j = e.to_json("1.0.0");
        assert_eq!(j["cniVersion"], "1.0.0");
        assert_eq!(j["code"], 5);
        assert_eq!(j["msg"], "reading /x/y");
        assert!(j["details"].as_str().unwrap().contains("No such file"));
    }

    #[test]
    fn codes_follow_the_spec_and_plugin_codes_are_at_least_100() {
        assert_eq!(
            Error::IncompatibleVersion {
                version: "9".into()
            }
            .code(),
            1
        );
        assert_eq!(Error::invalid_env("CNI_NETNS", "/x", "missing").code(), 4);
        assert_eq!(Error::invalid_config("mtu", "x", "not a number").code(), 7);
        let pool = Error::PoolExhausted {
            pool: "10.0.0.0/30".into(),
        };
        assert_eq!(pool.code(), 100);
        assert!(pool.to_json("1.1.0").get("details").is_none());
        let agent = Error::from(palisade_node_api::Error::Refused {
            op: "add",
            socket: "/run/a.sock".into(),
            message: "refused".into(),
        });
        assert_eq!(agent.code(), 11);
    }

    #[test]
    fn messages_name_the_field_and_value() {
        let e = Error::invalid_config("podCIDRs[0]", "\"10.0.0.0/99\"", "not a CIDR");
        assert!(e.to_string().contains("podCIDRs[0]"));
        assert!(e.to_string().contains("10.0.0.0/99"));
        let e = Error::invalid_env("CNI_IFNAME", "a/b", "contains '/'");
        assert!(e.to_string().contains("CNI_IFNAME=\"a/b\""));
    }
}
