//! Keeps `to_uplink` attached to the node's uplinks (`--uplink`, or the interfaces holding the
//! node's InternalIP or a default route), re-attaching when an interface was re-created and
//! detaching from the rest.

use crate::datapath::Datapath;
use crate::source::Snapshot;

pub struct Uplinks {
    /// `--uplink`; empty: discovered at every refresh.
    configured: Vec<String>,
    /// (name, ifindex) pairs `to_uplink` is attached to.
    attached: Vec<(String, u32)>,
}

impl Uplinks {
    pub fn new(configured: Vec<String>) -> Self {
        Uplinks {
            configured,
            attached: Vec::new(),
        }
    }

    pub fn refresh(&mut self, dp: &mut Datapath, snap: &Snapshot, node: &str) {
        let names = if self.configured.is_empty() {
            let own = super::addrs::internal_ips(snap, node);
            let mut n = super::addrs::interfaces_holding(&own);
            n.extend(super::addrs::default_route_interfaces());
            n.sort();
            n.dedup();
            n
        } else {
            self.configured.clone()
        };
        let mut want = Vec::new();
        for n in names {
            let Ok(c) = std::ffi::CString::new(n.as_str()) else {
                continue;
            };
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if ifindex == 0 {
                continue;
            }
            want.push((n, ifindex));
        }
        if want == self.attached {
            return;
        }
        let mut attached = Vec::new();
        for (n, ifindex) in &want {
            match dp.attach_uplink(*ifindex) {
                Ok(()) => {
                    tracing::info!("to_uplink attached to {n} (ifindex {ifindex})");
                    attached.push((n.clone(), *ifindex));
                }
                Err(e) => tracing::error!("uplink {n}: {:#}", anyhow::Error::from(e)),
            }
        }
        let keep: Vec<u32> = attached.iter().map(|a| a.1).collect();
        dp.detach_uplinks_except(&keep);
        self.attached = attached;
    }
}
