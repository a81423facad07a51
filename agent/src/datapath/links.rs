//! TCX links kept alive twice: pinned (so they outlive the agent) and held open by the agent
//! (so they outlive their pins while the agent runs).
//!
//! A pinned link is released, and its program detached, when its pin is removed or its bpffs
//! unmounted, unless something still holds a file descriptor of it. The agent holds one for
//! every link it attached or adopted, so a lost pin or bpffs leaves enforcement running until
//! the agent has pinned the link again (see `integrity`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use std::os::unix::ffi::OsStrExt;

use aya::programs::TcAttachType;

/// A link the agent holds.
pub struct Held {
    /// The agent's own descriptor of the link (opened by id: aya does not lend out the fd of
    /// an `FdLink`, and this one is needed for `tcx_info` and `pin`).
    pub fd: OwnedFd,
    pub ifindex: u32,
    pub program: &'static str,
    pub attach_type: TcAttachType,
    /// (device, inode) of the pin when the agent last saw it to be this link's.
    pub pin_inode: Option<(u64, u64)>,
}

/// (device, inode) of a pin, `None` when there is none.
pub fn inode_of(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// What the kernel says about a TCX link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcxInfo {
    pub id: u32,
    pub prog_id: u32,
    /// 0 once the link is detached (by `BPF_LINK_DETACH`, or its interface went away).
    pub ifindex: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link. aya's `LinkInfo` has the link and program ids but not
/// the TCX part (the interface), which tells whether the link is still attached; so this one
/// call is made directly. The structs follow `union bpf_attr` (the `info` member) and
/// `struct bpf_link_info` (its `tcx` member starts at offset 16: the union is 8-aligned).
pub fn tcx_info(fd: &OwnedFd) -> std::io::Result<TcxInfo> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    #[repr(C, align(8))]
    struct LinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        tcx_ifindex: u32,
        tcx_attach_type: u32,
        _rest: [u64; 8],
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let fd = fd.as_raw_fd();
    let mut info = LinkInfo {
        link_type: 0,
        id: 0,
        prog_id: 0,
        _pad: 0,
        tcx_ifindex: 0,
        tcx_attach_type: 0,
        _rest: [0; 8],
    };
    let mut attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: std::mem::size_of::<LinkInfo>() as u32,
        info: &mut info as *mut LinkInfo as u64,
    };
    // SAFETY: attr and info are valid for the duration of the call, with the sizes given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TcxInfo {
        id: info.id,
        prog_id: info.prog_id,
        ifindex: info.tcx_ifindex,
    })
}

/// A new descriptor of the link with this id (`BPF_LINK_GET_FD_BY_ID`).
pub fn open_by_id(id: u32) -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct IdAttr {
        link_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    let mut attr = IdAttr {
        link_id: id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: attr is valid for the duration of the call; a non-negative result is a new fd
    // that nothing else owns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_GET_FD_BY_ID,
            &mut attr as *mut IdAttr,
            std::mem::size_of::<IdAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// Pins the link behind `fd` at `path` (`BPF_OBJ_PIN`; aya pins only an `FdLink`, which
/// the agent does not keep).
pub fn pin(fd: &OwnedFd, path: &Path) -> std::io::Result<()> {
    #[repr(C)]
    struct PinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    const BPF_OBJ_PIN: libc::c_long = 6;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut attr = PinAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: attr and the path it points to are valid for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &mut attr as *mut PinAttr,
            std::mem::size_of::<PinAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes a pin; a pin that is already gone is fine.
pub fn remove_pin(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("removing link pin {}: {e}", path.display());
    }
}
