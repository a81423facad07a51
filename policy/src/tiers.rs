//! ClusterNetworkPolicy tiers compiled into the same two lookups NetworkPolicy uses: the
//! datapath still meets one answer per (peer, protocol, port) and never walks policies.
//!
//! For one endpoint and direction, with the Admin rules `A` and Baseline rules `B` of the
//! policies selecting it (in evaluation order) and the NetworkPolicy entries `N` (when a
//! NetworkPolicy isolates it):
//!
//! 1. S = the prefixes of `N`, every host prefix a pods/namespaces/nodes peer names, every
//!    networks CIDR, and 0.0.0.0/0 and ::/0. For P in S, the addresses whose longest match in
//!    S is P ("P's region") agree on every peer: a host prefix is matched exactly, a CIDR
//!    contains all of the region or none of it, and `N`'s longest match is `N`'s answer at P.
//! 2. Per P, the ports are painted first match first: the rules of `A` whose peers cover P,
//!    in order, paint the (protocol, port) cells not painted yet with Accept (their rule),
//!    Deny (`RULE_DENY` | their rule) or Pass. Cells still open or passed then take `N`'s
//!    answer when a NetworkPolicy isolates the endpoint (its allowing rule, or 0: denied);
//!    otherwise the rules of `B` paint them (Pass leaves them open), and what is left gets
//!    the default allow (the `DefaultAllow` rule reference).
//! 3. Cells are TCP, UDP and SCTP ports 0..=65535 and "any other protocol" (port 0). Port 0
//!    of a protocol is what the datapath looks up for a later fragment whose ports are
//!    unknown; only "every port" rules paint it.
//! 4. The painting becomes one entry: every cell allowed by one rule is `AllPorts`; else a
//!    port set whose longest match gives each cell (a protocol's `len` 0 entry carries its
//!    port-0 value, ranges that differ from it are split into port prefixes, and a denying
//!    entry shadows a shorter allowing one). An entry equal to the one its region would
//!    otherwise fall back to (the longest shorter entry kept, or "no entry": denied) is
//!    left out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use palisade_common::policy::{RULE_DENY, rule_allows};

use crate::cnp::{Action, CnpPeer, CnpPort, CnpRule, Subject, Tier};
use crate::compile::{Compiler, PeerAllow, PeerPrefix};
use crate::model::{PodInfo, Protocol};
use crate::ports::{PortPrefix, PortSet, split_range};
use crate::prefix::{Prefix, max_len};
use crate::validate::Direction;

/// The protocols with ports, by cell class (`Paint::other` is every other protocol).
const PORTED: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

fn class(proto: Protocol) -> usize {
    match proto {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    }
}

/// Final values per ported protocol: `(first, last, rule_ref)` covering 0..=65535.
type Segments = [Vec<(u32, u32, u32)>; 3];

/// One cell's state while painting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cell {
    Open,
    Pass,
    /// A final `rule_ref` as the datapath reads it (allow, `RULE_DENY` | rule, or 0).
    Final(u32),
}

/// Segments `(first, last, cell)` covering 0..=65535 for each ported protocol, plus the
/// cell of every other protocol.
#[derive(Clone, Debug)]
struct Paint {
    ported: [Vec<(u32, u32, Cell)>; 3],
    other: Cell,
}

impl Paint {
    fn open() -> Self {
        Paint {
            ported: std::array::from_fn(|_| vec![(0, 65535, Cell::Open)]),
            other: Cell::Open,
        }
    }

    /// Cells of `lo..=hi` of protocol class `c` that `from` accepts become `to`.
    fn paint_range(&mut self, c: usize, lo: u32, hi: u32, from: fn(Cell) -> bool, to: Cell) {
        let mut out = Vec::with_capacity(self.ported[c].len() + 2);
        for &(a, b, cell) in &self.ported[c] {
            if b < lo || a > hi || !from(cell) {
                out.push((a, b, cell));
                continue;
            }
            if a < lo {
                out.push((a, lo - 1, cell));
            }
            out.push((a.max(lo), b.min(hi), to));
            if b > hi {
                out.push((hi + 1, b, cell));
            }
        }
        self.ported[c] = out;
    }

    /// Every cell `from` accepts becomes `to`.
    fn paint_all(&mut self, from: fn(Cell) -> bool, to: Cell) {
        for c in 0..PORTED.len() {
            self.paint_range(c, 0, 65535, from, to);
        }
        if from(self.other) {
            self.other = to;
        }
    }

    /// Open cells matched by `ports` (resolved: `None` = everything) become `to`.
    fn paint_open(&mut self, ports: &Option<Vec<(Protocol, u32, u32)>>, to: Cell) {
        let open = |c: Cell| c == Cell::Open;
        match ports {
            None => self.paint_all(open, to),
            Some(list) => {
                for &(proto, lo, hi) in list {
                    self.paint_range(class(proto), lo, hi, open, to);
                }
            }
        }
    }

    /// Open cells take `np`'s answer (`None`: no NetworkPolicy entry, denied).
    fn fill_from_network_policy(&mut self, np: Option<&PeerAllow>) {
        let open = |c: Cell| c == Cell::Open;
        match np {
            None => self.paint_all(open, Cell::Final(0)),
            Some(PeerAllow::AllPorts { rule_ref }) => self.paint_all(open, Cell::Final(*rule_ref)),
            Some(PeerAllow::Ports(set)) => {
                let any = set
                    .0
                    .get(&PortPrefix {
                        proto: None,
                        port: 0,
                        len: 0,
                    })
                    .copied()
                    .unwrap_or(0);
                if self.other == Cell::Open {
                    self.other = Cell::Final(any);
                }
                for (c, proto) in PORTED.iter().enumerate() {
                    // The set's longest match per port: shorter prefixes first, longer ones
                    // overwrite them.
                    let mut lpm = vec![(0u32, 65535u32, any)];
                    let mut entries: Vec<(&PortPrefix, &u32)> = set
                        .0
                        .iter()
                        .filter(|(p, _)| p.proto == Some(proto.number()))
                        .collect();
                    entries.sort_by_key(|(p, _)| p.len);
                    for (p, r) in entries {
                        let (lo, hi) = p.range();
                        lpm = overwrite(&lpm, u32::from(lo), u32::from(hi), *r);
                    }
                    for (lo, hi, r) in lpm {
                        self.paint_range(c, lo, hi, open, Cell::Final(r));
                    }
                }
            }
        }
    }

    /// The painted value of every cell (open ones get `default`).
    fn finish(&self, default: u32) -> (Segments, u32) {
        let value = |c: Cell| match c {
            Cell::Final(v) => v,
            Cell::Open | Cell::Pass => default,
        };
        let ported = std::array::from_fn(|c| {
            let mut merged: Vec<(u32, u32, u32)> = Vec::new();
            for &(a, b, cell) in &self.ported[c] {
                let v = value(cell);
                match merged.last_mut() {
                    Some(last) if last.2 == v && last.1 + 1 == a => last.1 = b,
                    _ => merged.push((a, b, v)),
                }
            }
            merged
        });
        (ported, value(self.other))
    }
}

/// `segs` (covering 0..=65535) with `lo..=hi` set to `v`.
fn overwrite(segs: &[(u32, u32, u32)], lo: u32, hi: u32, v: u32) -> Vec<(u32, u32, u32)> {
    let mut out = Vec::with_capacity(segs.len() + 2);
    for &(a, b, w) in segs {
        if b < lo || a > hi {
            out.push((a, b, w));
            continue;
        }
        if a < lo {
            out.push((a, lo - 1, w));
        }
        if b > hi {
            out.push((hi + 1, b, w));
        }
    }
    out.push((lo, hi, v));
    out.sort_unstable();
    out
}

/// The canonical entry for a painting (step 4 of the module doc).
fn encode(ported: Segments, other: u32) -> PeerAllow {
    let uniform = ported
        .iter()
        .all(|segs| segs.len() == 1 && segs[0].2 == other);
    if uniform {
        return if rule_allows(other) {
            PeerAllow::AllPorts { rule_ref: other }
        } else if other == 0 {
            PeerAllow::Ports(PortSet::default())
        } else {
            PeerAllow::Ports(PortSet(BTreeMap::from([(
                PortPrefix {
                    proto: None,
                    port: 0,
                    len: 0,
                },
                other,
            )])))
        };
    }
    let mut set = BTreeMap::new();
    // A missing entry answers 0 (denied), so a 0 needs an entry only to shadow a shorter one.
    if other != 0 {
        set.insert(
            PortPrefix {
                proto: None,
                port: 0,
                len: 0,
            },
            other,
        );
    }
    for (c, segs) in ported.iter().enumerate() {
        let proto = PORTED[c].number();
        let base = segs[0].2;
        if base != other {
            set.insert(
                PortPrefix {
                    proto: Some(proto),
                    port: 0,
                    len: 0,
                },
                base,
            );
        }
        for &(lo, hi, v) in segs {
            if v == base {
                continue;
            }
            for (port, len) in split_range(lo, hi) {
                set.insert(
                    PortPrefix {
                        proto: Some(proto),
                        port,
                        len,
                    },
                    v,
                );
            }
        }
    }
    PeerAllow::Ports(PortSet(set))
}

/// A rule of the tiers as one endpoint sees it.
struct TierRule<'r> {
    tier: Tier,
    rule: &'r CnpRule,
    /// The cell a match paints.
    paint: Cell,
    /// Host prefixes its pods/namespaces/nodes peers name.
    hosts: Vec<Arc<Vec<Prefix>>>,
    /// Its networks CIDRs; 0.0.0.0/0 and ::/0 for an `Everything` peer.
    networks: Vec<Prefix>,
}

impl TierRule<'_> {
    fn covers(&self, p: &Prefix) -> bool {
        self.networks.iter().any(|n| n.contains(p))
            || self
                .hosts
                .iter()
                .any(|h| h.binary_search_by_key(&sort_key(p), sort_key).is_ok())
    }
}

impl<'a> Compiler<'a> {
    /// Indices (in evaluation order) of the ClusterNetworkPolicies whose subject selects
    /// `pod` ("host-networked pods are not included in subject selection").
    pub(crate) fn cnps_selecting(&self, pod: &PodInfo) -> Vec<usize> {
        if pod.host_network || self.cnps.is_empty() {
            return Vec::new();
        }
        static NO_LABELS: crate::model::Labels = crate::model::Labels::new();
        let ns = self
            .namespaces
            .get(pod.namespace.as_str())
            .copied()
            .unwrap_or(&NO_LABELS);
        (0..self.cnps.len())
            .filter(|&i| match &self.cnps[i].subject {
                Subject::Namespaces(s) => s.matches(ns),
                Subject::Pods { namespaces, pods } => {
                    namespaces.matches(ns) && pods.matches(&pod.labels)
                }
            })
            .collect()
    }

    pub(crate) fn has_admin(&self, cnps: &[usize]) -> bool {
        cnps.iter().any(|i| self.cnps[*i].tier == Tier::Admin)
    }

    /// Sorted host prefixes named by peer `k` of rule `ri` of policy `ci` (memoised).
    fn cnp_hosts(&mut self, ci: usize, dir: Direction, ri: usize, k: usize) -> Arc<Vec<Prefix>> {
        if let Some(v) = self.cnp_peer_hosts.get(&(ci, dir, ri, k)) {
            return v.clone();
        }
        let peer = &self.cnps[ci].rules(dir)[ri].peers[k];
        let mut hosts: Vec<Prefix> = match peer {
            CnpPeer::Namespaces(s) => {
                let ns = self.namespaces_matching(s);
                self.pod_hosts(&self.select_in(&ns, &crate::selector::Selector::default()))
            }
            CnpPeer::Pods { namespaces, pods } => {
                let ns = self.namespaces_matching(namespaces);
                self.pod_hosts(&self.select_in(&ns, pods))
            }
            CnpPeer::Nodes(s) => self
                .cluster
                .nodes
                .iter()
                .filter(|n| s.matches(&n.labels))
                .flat_map(|n| n.addrs.iter().map(|a| Prefix::host(*a)))
                .collect(),
            CnpPeer::Networks(_) | CnpPeer::DomainNames(_) | CnpPeer::Everything => Vec::new(),
        };
        hosts.sort_unstable_by_key(sort_key);
        hosts.dedup();
        // Interned by content: peers naming the same pods share one list, which the
        // compile then walks once.
        let v = match self.cnp_host_lists.get(&hosts) {
            Some(v) => v.clone(),
            None => {
                let v = Arc::new(hosts);
                self.cnp_host_lists.insert(v.clone());
                v
            }
        };
        self.cnp_peer_hosts.insert((ci, dir, ri, k), v.clone());
        v
    }

    fn pod_hosts(&self, pods: &[usize]) -> Vec<Prefix> {
        pods.iter()
            .flat_map(|&i| self.cluster.pods[i].ips.iter().map(|a| Prefix::host(*a)))
            .collect()
    }

    /// The selectable pod whose address is the host prefix `p`.
    fn pod_at(&mut self, p: &Prefix) -> Option<&'a PodInfo> {
        let cluster = self.cluster;
        let index = self.pod_at.get_or_insert_with(|| {
            let mut m = HashMap::new();
            for (i, pod) in cluster.pods.iter().enumerate() {
                if pod.is_selectable_peer() {
                    for a in &pod.ips {
                        m.insert(Prefix::host(*a), i);
                    }
                }
            }
            m
        });
        index.get(p).map(|i| &cluster.pods[*i])
    }

    /// The entries of one direction of an endpoint that ClusterNetworkPolicies `tiered`
    /// (indices in evaluation order, each with rules in `dir`) select; `np` holds the
    /// NetworkPolicy entries when a NetworkPolicy isolates the endpoint. See the module doc.
    pub(crate) fn tiered_direction(
        &mut self,
        tiered: &[usize],
        np: Option<&BTreeMap<PeerPrefix, PeerAllow>>,
        target: &PodInfo,
        dir: Direction,
        entries: &mut BTreeMap<PeerPrefix, PeerAllow>,
    ) {
        let di = match dir {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        };
        let cnps = self.cnps;
        let mut rules: Vec<TierRule> = Vec::new();
        for &ci in tiered {
            let cnp = cnps[ci];
            // The Baseline tier is never reached when a NetworkPolicy isolates the endpoint.
            if cnp.tier == Tier::Baseline && np.is_some() {
                continue;
            }
            for (ri, rule) in cnp.rules(dir).iter().enumerate() {
                let r = self.cnp_refs[ci][di][ri];
                debug_assert!(r & RULE_DENY == 0, "rule reference {r} reaches RULE_DENY");
                let mut tr = TierRule {
                    tier: cnp.tier,
                    rule,
                    paint: match rule.action {
                        Action::Accept => Cell::Final(r),
                        Action::Deny => Cell::Final(RULE_DENY | r),
                        Action::Pass => Cell::Pass,
                    },
                    hosts: Vec::new(),
                    networks: Vec::new(),
                };
                for (k, peer) in rule.peers.iter().enumerate() {
                    match peer {
                        CnpPeer::Networks(cidrs) => tr.networks.extend(cidrs.iter().copied()),
                        CnpPeer::Everything => tr.networks.extend(every_address()),
                        // No address, except in the variant compile of this very rule
                        // (`fqdn::names`): there, every address.
                        CnpPeer::DomainNames(_) => {
                            if dir == Direction::Egress && self.name_variant == Some((ci, ri)) {
                                tr.networks.extend(every_address());
                            }
                        }
                        _ => tr.hosts.push(self.cnp_hosts(ci, dir, ri, k)),
                    }
                }
                rules.push(tr);
            }
        }
        // 1. The boundaries: host prefixes (with the rules naming each, from the sorted
        // (host, rule) pairs: no map per host) and every other prefix.
        // The distinct host lists (interned by `cnp_hosts`), each with the rules naming it.
        let mut lists: Vec<(Arc<Vec<Prefix>>, Vec<usize>)> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            for h in &r.hosts {
                match lists.iter_mut().find(|(l, _)| Arc::ptr_eq(l, h)) {
                    Some((_, rs)) => {
                        if rs.last() != Some(&i) {
                            rs.push(i);
                        }
                    }
                    None => lists.push((h.clone(), vec![i])),
                }
            }
        }
        // (host, list) pairs in host order: the lists naming each host are contiguous.
        let mut pairs: Vec<(Prefix, u32)> = lists
            .iter()
            .enumerate()
            .flat_map(|(li, (l, _))| l.iter().map(move |h| (*h, li as u32)))
            .collect();
        // Integer keys: comparing `IpAddr`s is what sorting spent its time on.
        pairs.sort_unstable_by_key(|(h, li)| (sort_key(h), *li));
        let mut others: Vec<Prefix> = every_address().to_vec();
        if let Some(np) = np {
            others.extend(
                np.keys()
                    .filter(|k| k.dir == dir.to_dir())
                    .map(|k| k.prefix()),
            );
        }
        for r in &rules {
            others.extend(r.networks.iter().copied());
        }
        // Each region once, with the range of `pairs` naming its host (empty if none), shortest
        // first so an entry can be compared with what its region falls back to.
        let mut order: Vec<(Prefix, usize, usize)> =
            others.into_iter().map(|p| (p, 0, 0)).collect();
        let mut i = 0;
        while i < pairs.len() {
            let j = i + pairs[i..]
                .iter()
                .take_while(|(h, _)| *h == pairs[i].0)
                .count();
            order.push((pairs[i].0, i, j));
            i = j;
        }
        order.sort_unstable_by_key(|(p, i, j)| (p.len, sort_key(p), std::cmp::Reverse(j - i)));
        order.dedup_by_key(|(p, _, _)| *p);
        let named_rules = rules.iter().any(|r| r.rule.has_named_ports());
        let address_rules: Vec<u32> = (0..rules.len() as u32)
            .filter(|i| !rules[*i as usize].networks.is_empty())
            .collect();
        // Entries by index into `allows` (interned: equal entries have one index).
        let mut allows: Vec<PeerAllow> = vec![PeerAllow::Ports(PortSet::default())];
        let mut interned: HashMap<PeerAllow, usize> = HashMap::from([(allows[0].clone(), 0)]);
        // Kept entries shorter than a host prefix (the fallbacks), with the lengths present.
        let mut kept: HashMap<Prefix, usize> = HashMap::new();
        let mut kept_lens: [Vec<u8>; 2] = Default::default();
        let default = self.default_refs[di];
        // The NetworkPolicy entries by prefix, with the lengths present per family: the
        // longest match of P probes only those lengths.
        // Each answer with an id by content, so equal answers share memo entries.
        type NpIndex<'n> = (HashMap<Prefix, (&'n PeerAllow, usize)>, [Vec<u8>; 2]);
        let np_index: Option<NpIndex> = np.map(|np| {
            let mut by: HashMap<Prefix, (&PeerAllow, usize)> = HashMap::new();
            let mut ids: HashMap<&PeerAllow, usize> = HashMap::new();
            let mut lens: [BTreeSet<u8>; 2] = Default::default();
            for (k, a) in np.iter().filter(|(k, _)| k.dir == dir.to_dir()) {
                lens[usize::from(!k.prefix().is_v4())].insert(k.len);
                let next = ids.len() + 1;
                let id = *ids.entry(a).or_insert(next);
                by.insert(k.prefix(), (a, id));
            }
            (by, lens.map(|l| l.into_iter().rev().collect()))
        });
        // Regions with the same covering rules, NetworkPolicy answer and (for egress named
        // ports) destination pod get the same entry: computed once.
        let mut memo: HashMap<Box<[usize]>, usize> = HashMap::new();
        let mut key: Vec<usize> = Vec::new();
        for (p, from, to) in order {
            let fam = usize::from(!p.is_v4());
            // 2. The rules covering P, in evaluation order.
            // Key: the host lists naming P, then the rules whose CIDRs contain it (both
            // sorted), then the NetworkPolicy answer and the named-port destination.
            key.clear();
            key.extend(pairs[from..to].iter().map(|(_, li)| *li as usize));
            key.push(usize::MAX);
            key.extend(
                address_rules
                    .iter()
                    .filter(|i| rules[**i as usize].networks.iter().any(|n| n.contains(&p)))
                    .map(|i| *i as usize),
            );
            let covered = |key: &[usize]| -> Vec<usize> {
                let sep = key
                    .iter()
                    .position(|k| *k == usize::MAX)
                    .unwrap_or(key.len());
                let mut c: Vec<usize> = key[..sep]
                    .iter()
                    .flat_map(|li| lists[*li].1.iter().copied())
                    .chain(key[sep + 1..].iter().copied())
                    .collect();
                c.sort_unstable();
                c.dedup();
                c
            };
            let key_len = key.len();
            let np_answer: Option<(&PeerAllow, usize)> =
                np_index.as_ref().and_then(|(by, lens)| {
                    lens[fam]
                        .iter()
                        .filter(|l| **l <= p.len)
                        .find_map(|&l| by.get(&Prefix::new(p.addr, l)).copied())
                });
            let named_dest = if dir == Direction::Egress
                && named_rules
                && covered(&key)
                    .iter()
                    .any(|i| rules[*i].rule.has_named_ports())
            {
                self.pod_at(&p)
                    .map_or(usize::MAX - 1, |d| d as *const PodInfo as usize)
            } else {
                usize::MAX
            };
            key.push(np_answer.map_or(0, |(_, id)| id));
            key.push(named_dest);
            let allow = match memo.get(key.as_slice()) {
                Some(a) => *a,
                None => {
                    let covering = covered(&key[..key_len]);
                    debug_assert!(covering.iter().all(|i| rules[*i].covers(&p)));
                    let mut paint = Paint::open();
                    let mut crossed = false;
                    for &i in &covering {
                        let r = &rules[i];
                        if r.tier == Tier::Baseline && !crossed {
                            // Admin Pass goes on to the next tier.
                            paint.paint_all(|c| c == Cell::Pass, Cell::Open);
                            crossed = true;
                        }
                        let ports = self.resolve_ports(r.rule, dir, target, &p);
                        paint.paint_open(&ports, r.paint);
                    }
                    paint.paint_all(|c| c == Cell::Pass, Cell::Open);
                    if np.is_some() {
                        paint.fill_from_network_policy(np_answer.map(|(a, _)| a));
                    }
                    let (ported, other) = paint.finish(default);
                    let allow = encode(ported, other);
                    let index = match interned.get(&allow) {
                        Some(i) => *i,
                        None => {
                            interned.insert(allow.clone(), allows.len());
                            allows.push(allow);
                            allows.len() - 1
                        }
                    };
                    memo.insert(key.clone().into_boxed_slice(), index);
                    index
                }
            };
            // 4. Left out when equal to the fallback (no entry: index 0, denied).
            let fallback = kept_lens[fam]
                .iter()
                .rev()
                .filter(|l| **l < p.len)
                .find_map(|&l| kept.get(&Prefix::new(p.addr, l)).copied())
                .unwrap_or(0);
            if allow == fallback {
                continue;
            }
            // A host prefix is nobody's fallback.
            if p.len < max_len(&p.addr) {
                if kept_lens[fam].last() != Some(&p.len) {
                    kept_lens[fam].push(p.len);
                }
                kept.insert(p, allow);
            }
            entries.insert(
                PeerPrefix {
                    dir: dir.to_dir(),
                    addr: p.addr,
                    len: p.len,
                },
                allows[allow].clone(),
            );
        }
    }

    /// The (protocol, first port, last port) cells `rule` names for peers in P's region;
    /// `None`: every protocol and port. Named ports resolve against the destination: the
    /// endpoint at ingress, the pod at P at egress (none for an address region).
    fn resolve_ports(
        &mut self,
        rule: &CnpRule,
        dir: Direction,
        target: &PodInfo,
        p: &Prefix,
    ) -> Option<Vec<(Protocol, u32, u32)>> {
        let ports = rule.ports.as_ref()?;
        let destination: Option<&PodInfo> = if rule.has_named_ports() {
            match dir {
                Direction::Ingress => Some(target),
                Direction::Egress => {
                    let host = Prefix::host(p.addr);
                    if host == *p { self.pod_at(p) } else { None }
                }
            }
        } else {
            None
        };
        let mut out = Vec::new();
        for port in ports {
            match port {
                CnpPort::Range { proto, lo, hi } => {
                    out.push((*proto, u32::from(*lo), u32::from(*hi)))
                }
                CnpPort::Named(name) => {
                    for np in destination.iter().flat_map(|d| d.ports.iter()) {
                        if &np.name == name {
                            out.push((np.protocol, u32::from(np.port), u32::from(np.port)));
                        }
                    }
                }
            }
        }
        Some(out)
    }
}

/// `p` as one integer that sorts like `Prefix` among prefixes of one length: family, then
/// address.
fn sort_key(p: &Prefix) -> (bool, u128) {
    match p.addr {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn every_address() -> [Prefix; 2] {
    [
        Prefix::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        Prefix::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(allow: &PeerAllow, proto: u8, port: u16) -> u32 {
        match allow {
            PeerAllow::AllPorts { rule_ref } => *rule_ref,
            PeerAllow::Ports(set) => set.lookup(proto, port).unwrap_or(0),
        }
    }

    /// Every cell of a random painting reads back through the port set's longest match.
    #[test]
    fn encoding_answers_every_cell_as_painted() {
        let mut seed = 0x1234_5678u64;
        let mut next = move |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % u64::from(n)) as u32
        };
        let values = [0, 3, 7, RULE_DENY | 5];
        for _ in 0..300 {
            let mut paint = Paint::open();
            for _ in 0..next(6) {
                let lo = next(3) * 40;
                let hi = lo + next(90);
                let v = values[next(4) as usize];
                paint.paint_range(
                    next(3) as usize,
                    lo,
                    hi,
                    |c| c == Cell::Open,
                    Cell::Final(v),
                );
            }
            if next(2) == 0 {
                paint.other = Cell::Final(values[next(4) as usize]);
            }
            let default = values[next(4) as usize];
            let (ported, other) = paint.finish(default);
            let allow = encode(ported.clone(), other);
            for (c, segs) in ported.iter().enumerate() {
                for &(lo, hi, v) in segs {
                    for port in [lo, hi, (lo + hi) / 2] {
                        let got = lookup(&allow, PORTED[c].number(), port as u16);
                        assert_eq!(got, v, "{allow:?} class {c} port {port}");
                    }
                }
            }
            for proto in [1u8, 47, 58] {
                assert_eq!(lookup(&allow, proto, 0), other, "{allow:?}");
            }
        }
    }

    #[test]
    fn deny_rule_carves_ports_out_of_an_allow() {
        let mut paint = Paint::open();
        paint.paint_range(0, 80, 80, |c| c == Cell::Open, Cell::Final(RULE_DENY | 2));
        let (ported, other) = paint.finish(9);
        let allow = encode(ported, other);
        assert_eq!(lookup(&allow, 6, 80), RULE_DENY | 2);
        assert_eq!(lookup(&allow, 6, 81), 9);
        assert_eq!(lookup(&allow, 17, 80), 9);
        assert_eq!(lookup(&allow, 1, 0), 9);
    }

    #[test]
    fn uniform_paintings_are_one_value() {
        let (p, o) = Paint::open().finish(4);
        assert_eq!(encode(p, o), PeerAllow::AllPorts { rule_ref: 4 });
        let (p, o) = Paint::open().finish(0);
        assert_eq!(encode(p, o), PeerAllow::Ports(PortSet::default()));
    }

    #[test]
    fn overwrite_keeps_the_rest() {
        let segs = vec![(0, 65535, 1)];
        assert_eq!(
            overwrite(&segs, 10, 20, 2),
            vec![(0, 9, 1), (10, 20, 2), (21, 65535, 1)]
        );
    }
}
