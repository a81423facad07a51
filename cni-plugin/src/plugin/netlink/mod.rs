//! rtnetlink plumbing, one file per object kind. Every function takes a [`Nl`] connection
//! opened in the namespace it acts on (a netlink socket is bound to the namespace of the
//! thread that created it).

pub mod addr;
pub mod link;
pub mod neigh;
pub mod route;

use std::future::Future;

use rtnetlink::Handle;

use crate::error::{Error, Result};

/// A netlink connection with its own current-thread runtime.
pub struct Nl {
    rt: tokio::runtime::Runtime,
    pub handle: Handle,
}

impl Nl {
    /// Opens a connection in the calling thread's network namespace.
    pub fn open() -> Result<Nl> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| Error::io("building the netlink runtime", "(tokio)", e))?;
        let handle = {
            let _g = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection()
                .map_err(|e| Error::io("opening a netlink socket", "(NETLINK_ROUTE)", e))?;
            rt.spawn(conn);
            handle
        };
        Ok(Nl { rt, handle })
    }

    pub fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.block_on(f)
    }
}

/// The errno of a kernel netlink error, if that is what failed.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Builds [`Error::Netlink`] for operation `op` on `object`.
pub fn err(op: &'static str, object: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let object = object.into();
    move |e| Error::Netlink {
        op,
        errno: errno(&e),
        message: match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
            other => other.to_string(),
        },
        object,
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
