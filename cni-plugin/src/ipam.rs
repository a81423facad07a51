//! Built-in IPAM: addresses from the node's pod CIDRs, one per family.
//!
//! Store layout (`<stateDir>/ipam/`), modelled on host-local's disk store:
//! - `<ip>`: one file per allocated address, holding `containerID\nifname\n`;
//! - `last.4`, `last.6`: the address handed out last per family. Allocation goes round-robin
//!   from there, so a freed address is not reused until the pool wraps around;
//! - `lock`: `flock`ed for every read-modify-write, so concurrent ADDs (kubelet runs them in
//!   parallel) serialise here. The kernel drops the lock when a process dies, so kill -9 never
//!   leaves it held; a live holder that never lets go costs a waiter at most [`LOCK_WAIT`].
//!   The directory is 0700 and every file 0600: no other user can read the allocations or
//!   open the lock to hold it;
//! - `.tmp.*`: files being written; an allocation appears by `rename`, so a crash leaves either
//!   no file or a complete one. Leftover tmp files are removed by the next locked operation.
//!
//! Reserved and never handed out: the network address, the first host address (`.1` / `::1`,
//! the conventional node/gateway address), and the IPv4 broadcast address.

use std::collections::HashSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};

use crate::config::Attachment;
use crate::error::{Error, Result};

/// How long an IPAM operation waits for the store's lock (each holder keeps it for a few
/// file writes).
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Who holds an address.
pub type Owner = Attachment;

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v4: bool, n: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// First and last allocatable address of a pool, as integers.
pub fn usable_range(pool: &IpNetwork) -> (u128, u128) {
    let net = to_u128(pool.network());
    let bits = if pool.is_ipv4() { 32 } else { 128 };
    let host_bits = bits - u32::from(pool.prefix());
    let size_minus_1 = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let last = net + size_minus_1;
    // Skip network and .1/::1; IPv4 also skips broadcast.
    let end = if pool.is_ipv4() { last - 1 } else { last };
    (net + 2, end)
}

/// Whether `ip` may never be handed out from `pool` (network, first host, broadcast, outside).
pub fn is_reserved(pool: &IpNetwork, ip: IpAddr) -> bool {
    if ip.is_ipv4() != pool.is_ipv4() || !pool.contains(ip) {
        return true;
    }
    let (lo, hi) = usable_range(pool);
    let n = to_u128(ip);
    n < lo || n > hi
}

/// The next free address after `last` (round-robin), or `None` when the pool is exhausted.
pub fn next_free(
    pool: &IpNetwork,
    taken: &HashSet<IpAddr>,
    last: Option<IpAddr>,
) -> Option<IpAddr> {
    let (lo, hi) = usable_range(pool);
    if hi < lo {
        return None;
    }
    let size = hi - lo + 1;
    let taken_here = taken.iter().filter(|ip| !is_reserved(pool, **ip)).count() as u128;
    if taken_here >= size {
        return None;
    }
    let start = match last {
        Some(l) if !is_reserved(pool, l) => {
            let n = to_u128(l);
            if n >= hi { lo } else { n + 1 }
        }
        _ => lo,
    };
    let v4 = pool.is_ipv4();
    let mut cur = start;
    // A free address exists, and at most `taken_here` candidates are taken: bounded loop.
    for _ in 0..=taken_here {
        let ip = from_u128(v4, cur);
        if !taken.contains(&ip) {
            return Some(ip);
        }
        cur = if cur >= hi { lo } else { cur + 1 };
    }
    None
}

/// For each pool, the requested address inside it (if any). Every requested address must
/// fall in exactly one pool, be allocatable there, and be the only request for that pool.
pub fn match_requested(pools: &[IpNetwork], requested: &[IpAddr]) -> Result<Vec<Option<IpAddr>>> {
    let mut out = vec![None; pools.len()];
    for &ip in requested {
        let Some(i) = pools.iter().position(|p| p.contains(ip)) else {
            return Err(Error::RequestedAddress {
                address: ip,
                reason: format!("outside the pod CIDRs {}", pool_list(pools)),
            });
        };
        if is_reserved(&pools[i], ip) {
            return Err(Error::RequestedAddress {
                address: ip,
                reason: format!(
                    "reserved in pod CIDR {} (network, first host or broadcast address)",
                    pools[i]
                ),
            });
        }
        match out[i] {
            Some(other) if other != ip => {
                return Err(Error::RequestedAddress {
                    address: ip,
                    reason: format!(
                        "{other} is requested in the same pod CIDR {} (one address per family)",
                        pools[i]
                    ),
                });
            }
            _ => out[i] = Some(ip),
        }
    }
    Ok(out)
}

fn pool_list(pools: &[IpNetwork]) -> String {
    let v: Vec<String> = pools.iter().map(ToString::to_string).collect();
    v.join(", ")
}

/// The on-disk allocation store.
pub struct Store {
    dir: PathBuf,
}

/// One allocation on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub owner: Owner,
}

impl Store {
    /// Opens (creating) `<state_dir>/ipam`.
    pub fn open(state_dir: &Path) -> Result<Store> {
        let dir = palisade_node_api::ipam::dir(state_dir);
        palisade_node_api::file::private_dir(&dir)?;
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the store's lock, waiting at most [`LOCK_WAIT`]: a holder that never lets go
    /// (a stuck process; no other user can open the 0600 file in the 0700 directory) makes
    /// the call fail with "try again later" instead of hanging the runtime's CNI call.
    fn lock(&self) -> Result<Flock<File>> {
        let path = self.dir.join("lock");
        let mut f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(palisade_node_api::file::PRIVATE_FILE_MODE)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| Error::io("opening IPAM lock", &path, e))?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(l) => return Ok(l),
                Err((back, nix::errno::Errno::EWOULDBLOCK)) => f = back,
                Err((_, errno)) => {
                    return Err(Error::io("locking IPAM store", &path, errno.into()));
                }
            }
            let waited = started.elapsed();
            if waited >= LOCK_WAIT {
                return Err(Error::Busy {
                    what: "IPAM lock",
                    path,
                    waited,
                });
            }
            std::thread::sleep(pause.min(LOCK_WAIT - waited));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Lists allocations and removes leftover tmp files (caller holds the lock).
    fn scan(&self) -> Result<Vec<Allocation>> {
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io("listing IPAM store", &self.dir, e))?;
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| Error::io("listing IPAM store", &self.dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp.") {
                // Only a crashed writer leaves these: we hold the lock.
                let p = ent.path();
                std::fs::remove_file(&p)
                    .map_err(|e| Error::io("removing leftover tmp file", &p, e))?;
                continue;
            }
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            let p = ent.path();
            let Some(content) = palisade_node_api::file::read_bounded(&p, 4096)? else {
                continue;
            };
            let content = String::from_utf8_lossy(&content);
            let (container_id, ifname) = palisade_node_api::ipam::parse_owner(&content);
            let owner = Owner {
                container_id,
                ifname,
            };
            out.push(Allocation { ip, owner });
        }
        Ok(out)
    }

    fn write_atomic(&self, name: &str, content: &str) -> Result<()> {
        Ok(palisade_node_api::file::write_atomic(
            &self.dir.join(name),
            content.as_bytes(),
        )?)
    }

    fn last(&self, v4: bool) -> Option<IpAddr> {
        let p = self.dir.join(if v4 { "last.4" } else { "last.6" });
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    }

    /// Allocates one address per pool for `owner`. Idempotent: addresses `owner` already holds
    /// in a pool are returned again.
    pub fn allocate(&self, owner: &Owner, pools: &[IpNetwork]) -> Result<Vec<IpNetwork>> {
        self.allocate_requested(owner, pools, &[])
    }

    /// [`Store::allocate`], except that in a pool holding one of the `requested` addresses
    /// (the CNI `ips` capability, or `CNI_ARGS` `IP=`) exactly that address is allocated, as
    /// host-local does. Pools without a requested address get one round-robin.
    ///
    /// Errors, each naming the address: [`Error::RequestedAddress`] when it lies in no pool, is
    /// reserved (network, first host, broadcast), or two requested addresses fall in one pool;
    /// [`Error::AddressTaken`] when another attachment holds it. Idempotent for the same
    /// owner; an owner that held another address of that pool gives it up.
    pub fn allocate_requested(
        &self,
        owner: &Owner,
        pools: &[IpNetwork],
        requested: &[IpAddr],
    ) -> Result<Vec<IpNetwork>> {
        let per_pool = match_requested(pools, requested)?;
        let _lock = self.lock()?;
        let allocs = self.scan()?;
        let taken: HashSet<IpAddr> = allocs.iter().map(|a| a.ip).collect();
        let mut out = Vec::with_capacity(pools.len());
        for (pool, want) in pools.iter().zip(per_pool) {
            let mine = allocs
                .iter()
                .find(|a| &a.owner == owner && !is_reserved(pool, a.ip));
            let ip = match (mine, want) {
                (Some(a), None) => a.ip,
                (Some(a), Some(w)) if a.ip == w => a.ip,
                (mine, Some(w)) => {
                    if let Some(holder) = allocs.iter().find(|a| a.ip == w) {
                        return Err(Error::AddressTaken {
                            address: w,
                            container_id: holder.owner.container_id.clone(),
                            ifname: holder.owner.ifname.clone(),
                        });
                    }
                    self.write_atomic(
                        &w.to_string(),
                        &format!("{}\n{}\n", owner.container_id, owner.ifname),
                    )?;
                    if let Some(old) = mine {
                        self.remove(old.ip)?;
                    }
                    w
                }
                (None, None) => {
                    let ip =
                        next_free(pool, &taken, self.last(pool.is_ipv4())).ok_or_else(|| {
                            Error::PoolExhausted {
                                pool: pool.to_string(),
                            }
                        })?;
                    self.write_atomic(
                        &ip.to_string(),
                        &format!("{}\n{}\n", owner.container_id, owner.ifname),
                    )?;
                    self.write_atomic(
                        if ip.is_ipv4() { "last.4" } else { "last.6" },
                        &ip.to_string(),
                    )?;
                    ip
                }
            };
            out.push(
                IpNetwork::new(ip, pool.prefix())
                    .map_err(|e| Error::invalid_config("podCIDRs", pool, format!("prefix: {e}")))?,
            );
        }
        Ok(out)
    }

    /// Releases every address `owner` holds; returns them. Idempotent.
    pub fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>> {
        let _lock = self.lock()?;
        let mut freed = Vec::new();
        for a in self.scan()? {
            if &a.owner == owner {
                self.remove(a.ip)?;
                freed.push(a.ip);
            }
        }
        Ok(freed)
    }

    fn remove(&self, ip: IpAddr) -> Result<()> {
        let p = self.dir.join(ip.to_string());
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing allocation", &p, e)),
        }
    }

    /// All allocations.
    pub fn list(&self) -> Result<Vec<Allocation>> {
        let _lock = self.lock()?;
        self.scan()
    }

    /// Releases every allocation whose owner is not in `valid`; returns what it released.
    pub fn gc(&self, valid: &HashSet<Owner>) -> Result<Vec<Allocation>> {
        let _lock = self.lock()?;
        let mut released = Vec::new();
        for a in self.scan()? {
            if !valid.contains(&a.owner) {
                self.remove(a.ip)?;
                released.push(a);
            }
        }
        Ok(released)
    }

    /// Whether every pool still has a free address (STATUS).
    pub fn has_free(&self, pools: &[IpNetwork]) -> Result<bool> {
        let allocs = self.list()?;
        let taken: HashSet<IpAddr> = allocs.iter().map(|a| a.ip).collect();
        Ok(pools.iter().all(|p| next_free(p, &taken, None).is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn owner(c: &str) -> Owner {
        Owner {
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn network_first_host_and_broadcast_are_reserved() {
        let p = net("10.0.0.0/24");
        for r in ["10.0.0.0", "10.0.0.1", "10.0.0.255", "10.0.1.0", "fd00::2"] {
            assert!(is_reserved(&p, ip(r)), "{r}");
        }
        assert!(!is_reserved(&p, ip("10.0.0.2")));
        assert!(!is_reserved(&p, ip("10.0.0.254")));
        let p6 = net("fd00::/120");
        assert!(is_reserved(&p6, ip("fd00::")) && is_reserved(&p6, ip("fd00::1")));
        assert!(!is_reserved(&p6, ip("fd00::ff")));
    }

    #[test]
    fn allocation_is_round_robin_and_skips_taken() {
        let p = net("10.0.0.0/29"); // usable .2 ..= .6
        let mut taken = HashSet::new();
        assert_eq!(next_free(&p, &taken, None), Some(ip("10.0.0.2")));
        taken.insert(ip("10.0.0.3"));
        assert_eq!(
            next_free(&p, &taken, Some(ip("10.0.0.2"))),
            Some(ip("10.0.0.4"))
        );
        assert_eq!(
            next_free(&p, &taken, Some(ip("10.0.0.6"))),
            Some(ip("10.0.0.2"))
        );
        for i in 2..=6 {
            taken.insert(ip(&format!("10.0.0.{i}")));
        }
        assert_eq!(next_free(&p, &taken, Some(ip("10.0.0.4"))), None);
    }

    #[test]
    fn large_ipv6_pool_allocates_without_scanning_the_pool() {
        let p = net("fd00:10:244:1::/64");
        let taken = HashSet::new();
        assert_eq!(next_free(&p, &taken, None), Some(ip("fd00:10:244:1::2")));
        let last = ip("fd00:10:244:1:ffff:ffff:ffff:ffff");
        assert_eq!(
            next_free(&p, &taken, Some(last)),
            Some(ip("fd00:10:244:1::2"))
        );
    }

    #[test]
    fn store_allocates_one_per_family_idempotently_and_releases() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let pools = [net("10.0.0.0/24"), net("fd00::/64")];
        let a = s.allocate(&owner("a"), &pools).unwrap();
        assert_eq!(a[0].to_string(), "10.0.0.2/24");
        assert_eq!(a[1].to_string(), "fd00::2/64");
        assert_eq!(
            s.allocate(&owner("a"), &pools).unwrap(),
            a,
            "same owner twice"
        );
        let b = s.allocate(&owner("b"), &pools).unwrap();
        assert_ne!(a, b);
        assert_eq!(s.release(&owner("a")).unwrap().len(), 2);
        assert!(
            s.release(&owner("a")).unwrap().is_empty(),
            "release is idempotent"
        );
        assert_eq!(s.list().unwrap().len(), 2);
    }

    #[test]
    fn requested_addresses_are_allocated_exactly_and_idempotently() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let pools = [net("10.0.0.0/16"), net("fd00::/64")];
        let want = [ip("10.0.1.11"), ip("fd00::1:11")];
        let a = s.allocate_requested(&owner("a"), &pools, &want).unwrap();
        assert_eq!(a[0].to_string(), "10.0.1.11/16");
        assert_eq!(a[1].to_string(), "fd00::1:11/64");
        assert_eq!(
            s.allocate_requested(&owner("a"), &pools, &want).unwrap(),
            a,
            "same owner twice"
        );
        // Only the v4 address requested: v6 comes round-robin.
        let b = s
            .allocate_requested(&owner("b"), &pools, &[ip("10.0.2.12")])
            .unwrap();
        assert_eq!(b[0].to_string(), "10.0.2.12/16");
        assert_eq!(b[1].to_string(), "fd00::2/64");
        // The owner asks again for another address of the pool: it moves.
        let b2 = s
            .allocate_requested(&owner("b"), &pools, &[ip("10.0.2.13")])
            .unwrap();
        assert_eq!(b2[0].to_string(), "10.0.2.13/16");
        let held: Vec<IpAddr> = s.list().unwrap().iter().map(|a| a.ip).collect();
        assert!(!held.contains(&ip("10.0.2.12")), "{held:?}");
    }

    #[test]
    fn requested_address_taken_outside_or_reserved_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let pools = [net("10.0.0.0/16"), net("fd00::/64")];
        s.allocate_requested(&owner("a"), &pools, &[ip("10.0.1.11")])
            .unwrap();
        let e = s
            .allocate_requested(&owner("b"), &pools, &[ip("10.0.1.11")])
            .unwrap_err();
        assert_eq!(e.code(), crate::error::code::ADDRESS_TAKEN);
        assert!(e.to_string().contains("10.0.1.11"), "{e}");
        assert!(e.to_string().contains("container a"), "{e}");
        for (bad, needle) in [
            ("192.168.1.1", "outside the pod CIDRs"),
            ("10.0.0.1", "reserved"),
            ("10.0.0.0", "reserved"),
            ("10.0.255.255", "reserved"),
            ("fd00::1", "reserved"),
            ("fd01::5", "outside"),
        ] {
            let e = s
                .allocate_requested(&owner("c"), &pools, &[ip(bad)])
                .unwrap_err();
            assert_eq!(e.code(), crate::error::code::INVALID_CONFIG, "{bad}");
            assert!(e.to_string().contains(bad), "{e}");
            assert!(e.to_string().contains(needle), "{e}");
        }
        let e = s
            .allocate_requested(&owner("c"), &pools, &[ip("10.0.3.3"), ip("10.0.3.4")])
            .unwrap_err();
        assert!(e.to_string().contains("same pod CIDR"), "{e}");
        // Nothing of c's failed attempts is left.
        assert_eq!(s.list().unwrap().len(), 2);
    }

    #[test]
    fn recently_freed_address_is_not_handed_out_again_at_once() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let pools = [net("10.0.0.0/24")];
        let a = s.allocate(&owner("a"), &pools).unwrap();
        s.release(&owner("a")).unwrap();
        let b = s.allocate(&owner("b"), &pools).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn exhausted_pool_is_error_100_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let pools = [net("10.0.0.0/30")]; // only .2 usable
        s.allocate(&owner("a"), &pools).unwrap();
        let e = s.allocate(&owner("b"), &pools).unwrap_err();
        assert_eq!(e.code(), 100);
        assert!(e.to_string().contains("10.0.0.0/30"));
        assert_eq!(s.list().unwrap().len(), 1);
    }

    #[test]
    fn gc_releases_everything_not_valid_and_crash_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let pools = [net("10.0.0.0/24")];
        for c in ["a", "b", "c"] {
            s.allocate(&owner(c), &pools).unwrap();
        }
        std::fs::write(s.dir().join(".tmp.999.10.0.0.9"), "x\n").unwrap();
        let valid: HashSet<Owner> = [owner("b")].into_iter().collect();
        let released = s.gc(&valid).unwrap();
        assert_eq!(released.len(), 2);
        let left = s.list().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].owner, owner("b"));
        assert!(!s.dir().join(".tmp.999.10.0.0.9").exists());
    }

    #[test]
    fn concurrent_allocations_never_duplicate() {
        let d = tempfile::tempdir().unwrap();
        let pools = [net("10.0.0.0/24"), net("fd00::/64")];
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let dir = d.path().to_path_buf();
                std::thread::spawn(move || {
                    let s = Store::open(&dir).unwrap();
                    s.allocate(&owner(&format!("c{i}")), &pools).unwrap()
                })
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for n in h.join().unwrap() {
                assert!(all.insert(n.ip()), "duplicate {n}");
            }
        }
        assert_eq!(all.len(), 32);
    }
}
