//! Per-namespace sysctls under /proc/sys/net. The kernel resolves these files against the
//! network namespace of the thread that opens them, so call these from the thread that is in
//! the right namespace.

use crate::error::{Error, Result};

/// Writes `value` to `/proc/sys/<key>` (key with `/` separators).
pub fn set(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(|e| Error::io("writing sysctl", path, e))
}

/// Writes only when the current value differs (avoids needless writes on every ADD).
pub fn ensure(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    match std::fs::read_to_string(&path) {
        Ok(cur) if cur.trim() == value => Ok(()),
        _ => set(key, value),
    }
}
