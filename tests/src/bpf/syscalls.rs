//! Raw `bpf(2)` calls aya has no public call for: creating and pinning a map of any layout
//! (as another build of Palisade could have left it), detaching a pinned link, and reading a
//! value whose type only the programs know.

use std::path::Path;

use anyhow::{Context, Result};

/// `bpf(cmd, attr)` for the few commands aya has no public call for; returns the result
/// (a new descriptor for the commands that make one).
fn sys_bpf<A>(cmd: libc::c_long, attr: &mut A, what: &str) -> Result<i64> {
    // SAFETY: `attr` is a valid, initialised `union bpf_attr` prefix for `cmd`, and every
    // pointer it holds outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_string());
    }
    Ok(rc)
}

/// `union bpf_attr` for BPF_OBJ_GET / BPF_OBJ_PIN.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

fn owned(fd: i64) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: a new descriptor that nothing else owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

/// Creates a map with exactly this layout (`BPF_MAP_CREATE`) and pins it at `path`: a map as
/// another build or version of Palisade could have left it.
pub fn create_pinned_map(
    path: &Path,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    #[repr(C)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    let mut create = CreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: flags,
    };
    let fd = owned(sys_bpf(BPF_MAP_CREATE, &mut create, "BPF_MAP_CREATE")?);
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut pin = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    sys_bpf(
        BPF_OBJ_PIN,
        &mut pin,
        &format!("BPF_OBJ_PIN {}", path.display()),
    )?;
    Ok(())
}

/// Detaches the link pinned at `path` as another root process could (`bpftool link detach`):
/// `BPF_OBJ_GET` then `BPF_LINK_DETACH`. The link object lives on, attached to nothing.
pub fn detach_pinned_link(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    #[repr(C)]
    struct DetachAttr {
        link_fd: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut get = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = owned(sys_bpf(
        BPF_OBJ_GET,
        &mut get,
        &format!("BPF_OBJ_GET {}", path.display()),
    )?);
    let mut detach = DetachAttr {
        link_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
    };
    sys_bpf(
        BPF_LINK_DETACH,
        &mut detach,
        &format!("BPF_LINK_DETACH {}", path.display()),
    )?;
    Ok(())
}

/// `BPF_MAP_LOOKUP_ELEM` of `key` in `map`, into `value_len` bytes (for a per-CPU map, every
/// possible CPU's value, each rounded up to 8 bytes): a value whose type only the programs
/// know, as bytes.
pub fn lookup_bytes(map: &impl std::os::fd::AsFd, key: &[u8], value_len: usize) -> Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct LookupAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    let mut value = vec![0u8; value_len];
    let mut attr = LookupAttr {
        map_fd: map.as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr, "BPF_MAP_LOOKUP_ELEM")?;
    Ok(value)
}
