//! Egress by domain name: the maps through which the datapath learns, from the cluster DNS
//! service's answers to a pod, which addresses that pod may reach by name. Meaning and limits:
//! `docs/fqdn.md`; what an answer teaches: the `policy` crate's `fqdn::learn`.
//!
//! - `pal_fqep_v1` (hash, ep_id -> `FqdnEndpoint`): the endpoints that have name rules, with
//!   their pattern set, rule count and limit. Each name rule i has a variant policy (the
//!   endpoint's egress compiled as if that rule's `domainNames` peers matched every address)
//!   in `pal_pol_v1` under the endpoint's own `policy_id`, direction `DIR_NAME_VARIANT + i`.
//!   Endpoints without name rules have no entry and pay nothing.
//! - `pal_fqname_v1` (LPM trie, `NameKey` -> rule mask): the patterns of each pattern set,
//!   names encoded by `encode_name` (reversed labels) so that one longest-prefix lookup
//!   answers both exact names and `*.` wildcards, compared byte for byte (never by hash).
//! - `pal_fqaddr_v1` (hash, `LearntKey` -> `LearntValue`): what the datapath learnt: per
//!   endpoint and address, until when, through which name rules. Pinned: an agent restart,
//!   `kill -9` or upgrade loses nothing, and learning goes on without the agent.
//! - `pal_dnssrv_v1` (hash, `HostAddrKey` -> u32): the cluster DNS service's addresses. Only an
//!   answer from one of them, to a query the pod itself sent (a conntrack reply), is read.
//! - `pal_fqcnt_v1` (hash, ep_id -> u64): learnt entries per endpoint, for the per-pod limit
//!   (`FqdnEndpoint::max_learnt`). Incremented by the programs when they add an entry; the
//!   agent's sweep, which deletes expired entries, writes the recount.
//! - `pal_fqst_v1` (per-CPU array of u64): the `FQST_*` counters.

use crate::FAMILY_V4;

/// Rules with `domainNames` peers per endpoint whose learnt addresses the datapath can tell
/// apart (one bit each in a rule mask); the agent reports and fails closed past it.
pub const MAX_NAME_RULES: usize = 8;

/// Bytes of an encoded name in a `NameKey` (the LPM trie's data is at most 256 bytes, 4 of
/// which are the pattern set). A name whose encoding (with its terminator) is longer is
/// never learnt: at most the longest legal names (over 248 octets) are affected.
pub const NAME_BYTES: usize = 252;

/// An encoded label starts with `LABEL_TAG | length` (length 1..=63); the end of a name is
/// `NAME_END`. The tag's top two bits (`10`) say "a label follows", which is what a wildcard
/// entry's prefix ends with: `*.example.com` is the encoding of `example.com` plus those two
/// bits, so it matches `a.example.com` and `a.b.example.com` but not `example.com` itself
/// (whose next byte is `NAME_END`, `00`). No tag is an ASCII letter, so lower-casing a whole
/// encoded name never changes a tag.
pub const LABEL_TAG: u8 = 0x80;
pub const NAME_END: u8 = 0;

/// Key of `pal_fqname_v1` (the LPM `prefixlen` word is added by the map type).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NameKey {
    /// The endpoint's pattern set (`FqdnEndpoint.name_set`), big-endian so that it is the
    /// key's leading bits.
    pub name_set_be: [u8; 4],
    /// `encode_name` of the name; unused bytes are zero.
    pub name: [u8; NAME_BYTES],
}
const _: () = assert!(core::mem::size_of::<NameKey>() == 256);

impl NameKey {
    pub const ZERO: NameKey = NameKey {
        name_set_be: [0; 4],
        name: [0; NAME_BYTES],
    };
}

/// `prefixlen` of an exact name entry (or of a lookup) whose encoding, terminator included,
/// is `len` bytes.
pub const fn exact_prefixlen(len: usize) -> u32 {
    ((4 + len) * 8) as u32
}

/// `prefixlen` of a wildcard entry `*.S`, where `len` is the length of `S`'s encoding without
/// terminator: S, then the top two bits of `LABEL_TAG` (some label follows), which the entry
/// holds as a `LABEL_TAG` byte after S (`encode_pattern`).
pub const fn wildcard_prefixlen(len: usize) -> u32 {
    ((4 + len) * 8 + 2) as u32
}

/// Writes a `pal_fqname_v1` entry's name for a pattern into `out`: for an exact name its
/// encoding with `NAME_END`, for `*.S` the encoding of `S` then `LABEL_TAG`. Returns the
/// entry's `prefixlen` (pattern set included), or `None` when it does not fit.
pub fn encode_pattern<'a, I>(labels: I, wildcard: bool, out: &mut [u8]) -> Option<u32>
where
    I: DoubleEndedIterator<Item = &'a [u8]>,
{
    if !wildcard {
        return encode_name(labels, true, out).map(exact_prefixlen);
    }
    let n = encode_name(labels, false, out)?;
    *out.get_mut(n)? = LABEL_TAG;
    Some(wildcard_prefixlen(n))
}

/// Writes the encoding of the name whose labels are `labels` (in presentation order, e.g.
/// `["api", "example", "com"]`) into `out`: the labels in reverse order, each as
/// `LABEL_TAG | length` then its bytes in ASCII lower case; with `terminated`, `NAME_END`
/// after them (an exact name, or a name looked up). Returns the length, or `None` when a label
/// is empty or longer than 63 bytes or the encoding does not fit in `out`.
pub fn encode_name<'a, I>(labels: I, terminated: bool, out: &mut [u8]) -> Option<usize>
where
    I: DoubleEndedIterator<Item = &'a [u8]>,
{
    let mut p = 0;
    for label in labels.rev() {
        if label.is_empty() || label.len() > 63 || p + 1 + label.len() > out.len() {
            return None;
        }
        out[p] = LABEL_TAG | label.len() as u8;
        p += 1;
        for b in label {
            out[p] = b.to_ascii_lowercase();
            p += 1;
        }
    }
    if terminated {
        if p >= out.len() {
            return None;
        }
        out[p] = NAME_END;
        p += 1;
    }
    Some(p)
}

/// Value of `pal_fqep_v1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FqdnEndpoint {
    /// Pattern set in `pal_fqname_v1` (endpoints with the same patterns and rule order share
    /// one).
    pub name_set: u32,
    /// Name rules in use: rule i's variant policy is the endpoint's `pal_pol_v1` entries with
    /// direction `DIR_NAME_VARIANT + i`. A new flow to an address learnt through rules S is
    /// allowed iff some i in S allows it in variant i.
    pub rules: u32,
    /// The per-pod limit: no new (endpoint, address) entry is learnt while the endpoint has
    /// this many (`FQST_POD_FULL`; the new name fails closed, what was learnt stays).
    pub max_learnt: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FqdnEndpoint>() == 16);

/// Key of `pal_fqaddr_v1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LearntKey {
    pub ep_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    /// Network byte order; IPv4 in the first 4 bytes, the rest zero.
    pub addr_be: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<LearntKey>() == 24);

impl LearntKey {
    pub fn new(ep_id: u32, family: u8, addr_be: [u8; 16]) -> Self {
        LearntKey {
            ep_id,
            family,
            _pad: [0; 3],
            addr_be,
        }
    }

    pub fn is_v4(&self) -> bool {
        self.family == FAMILY_V4
    }
}

/// Value of `pal_fqaddr_v1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LearntValue {
    /// New flows to the address are allowed until then (the coarse monotonic clock of the
    /// conntrack stamps, `ebpf/src/clock.rs`); flows admitted before keep working
    /// `GRACE_NS` longer; the agent's sweep deletes the entry after that.
    pub expires_ns: u64,
    /// Bit i: learnt through name rule i of the endpoint (`FqdnEndpoint`).
    pub rules: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LearntValue>() == 16);

impl LearntValue {
    /// `self` (written later) with what `older` still allows at `now_ns`: an unexpired older
    /// entry keeps its rules and its later expiry, an expired one adds nothing. The rule the
    /// datapath applies when an answer refreshes an entry (`remember` in ebpf/src/fqdn.rs),
    /// and the one by which the agent merges two learnt maps (`datapath::layout`).
    pub fn merged(self, older: LearntValue, now_ns: u64) -> LearntValue {
        if older.expires_ns <= now_ns {
            return self;
        }
        LearntValue {
            expires_ns: if older.expires_ns > self.expires_ns {
                older.expires_ns
            } else {
                self.expires_ns
            },
            rules: self.rules | older.rules,
            _pad: 0,
        }
    }
}

/// TTL bounds (seconds): a TTL of 0 would refuse the very connection the lookup was made
/// for; a huge one would keep an address allowed long after its name moved.
pub const MIN_TTL_SECS: u32 = 5;
pub const MAX_TTL_SECS: u32 = 86_400;
/// After expiry, flows admitted before keep working this long (new ones are refused).
pub const GRACE_SECS: u32 = 60;
pub const GRACE_NS: u64 = GRACE_SECS as u64 * 1_000_000_000;

/// The TTL an answer's addresses are learnt for.
#[inline(always)]
pub const fn clamp_ttl(ttl: u32) -> u32 {
    if ttl < MIN_TTL_SECS {
        MIN_TTL_SECS
    } else if ttl > MAX_TTL_SECS {
        MAX_TTL_SECS
    } else {
        ttl
    }
}

/// `pal_fqst_v1` slots (per-CPU u64, summed by the agent).
/// DNS answers read (from the cluster DNS service, to a pod with name rules).
pub const FQST_ANSWERS: u32 = 0;
/// (endpoint, address) entries written.
pub const FQST_LEARNT: u32 = 1;
/// Answers whose question matched no pattern of the pod (nothing learnt).
pub const FQST_NOT_ALLOWED: u32 = 2;
/// Answers that could not be read (malformed, truncated, too long, compression the reader
/// refuses, an error RCODE): nothing learnt.
pub const FQST_UNREAD: u32 = 3;
/// Addresses not learnt because the node's table is full (fails closed for that name).
pub const FQST_FULL: u32 = 4;
/// Answers from a server that is not the cluster DNS service (nothing learnt).
pub const FQST_OTHER_SERVER: u32 = 5;
/// Addresses not learnt because the pod has `FqdnEndpoint::max_learnt` entries.
pub const FQST_POD_FULL: u32 = 6;
/// Default per-pod limit (`palisade-agent --fqdn-max-per-pod`).
pub const DEFAULT_MAX_LEARNT_PER_POD: u32 = 1_024;
pub const FQST_SLOTS: u32 = 8;

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn enc(name: &str, terminated: bool) -> Option<Vec<u8>> {
        let mut out = [0u8; NAME_BYTES];
        let labels: Vec<&[u8]> = name.split('.').map(str::as_bytes).collect();
        encode_name(labels.into_iter(), terminated, &mut out).map(|n| out[..n].to_vec())
    }

    #[test]
    fn a_merge_keeps_what_the_older_entry_still_allows_and_nothing_expired() {
        let v = |expires_ns, rules| LearntValue {
            expires_ns,
            rules,
            _pad: 0,
        };
        // Unexpired older entry: rules joined, the later expiry kept (either side).
        assert_eq!(v(100, 0b01).merged(v(200, 0b10), 50), v(200, 0b11));
        assert_eq!(v(300, 0b01).merged(v(200, 0b10), 50), v(300, 0b11));
        // Expired (at or before now): the newer entry as it is.
        assert_eq!(v(100, 0b01).merged(v(50, 0b10), 50), v(100, 0b01));
    }

    #[test]
    fn names_encode_as_reversed_tagged_lowercase_labels() {
        assert_eq!(
            enc("Api.example.COM", true).unwrap(),
            b"\x83com\x87example\x83api\x00".to_vec()
        );
        assert_eq!(
            enc("example.com", false).unwrap(),
            b"\x83com\x87example".to_vec()
        );
        assert_eq!(enc("a..b", true), None);
        assert_eq!(enc(&"a".repeat(64), true), None);
    }

    /// Bit-prefix match, as the LPM trie compares.
    fn prefix_matches(entry: &[u8], bits: u32, key: &[u8]) -> bool {
        (0..bits as usize).all(|i| {
            let (byte, bit) = (i / 8, 7 - i % 8);
            let e = entry.get(byte).copied().unwrap_or(0) >> bit & 1;
            let k = key.get(byte).copied().unwrap_or(0) >> bit & 1;
            e == k
        })
    }

    #[test]
    fn wildcard_entries_match_one_or_more_labels_and_never_the_suffix_itself() {
        let mut suffix = [0u8; NAME_BYTES];
        let labels: Vec<&[u8]> = ["example", "com"].iter().map(|l| l.as_bytes()).collect();
        let bits = encode_pattern(labels.into_iter(), true, &mut suffix).unwrap() - 32;
        for (name, want) in [
            ("a.example.com", true),
            ("A.B.Example.com", true),
            ("example.com", false),
            ("badexample.com", false),
            ("example.com.evil", false),
            ("a.example.org", false),
        ] {
            let key = enc(name, true).unwrap();
            assert_eq!(prefix_matches(&suffix, bits, &key), want, "{name}");
        }
        let mut exact = [0u8; NAME_BYTES];
        let labels: Vec<&[u8]> = ["api", "example", "com"]
            .iter()
            .map(|l| l.as_bytes())
            .collect();
        let bits = encode_pattern(labels.into_iter(), false, &mut exact).unwrap() - 32;
        assert!(prefix_matches(
            &exact,
            bits,
            &enc("API.example.com", true).unwrap()
        ));
        assert!(!prefix_matches(
            &exact,
            bits,
            &enc("x.api.example.com", true).unwrap()
        ));
    }

    #[test]
    fn ttls_are_clamped() {
        assert_eq!(clamp_ttl(0), MIN_TTL_SECS);
        assert_eq!(clamp_ttl(300), 300);
        assert_eq!(clamp_ttl(u32::MAX), MAX_TTL_SECS);
    }
}
