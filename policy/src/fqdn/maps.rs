//! An endpoint's names as the agent's applier writes them (the `common::fqdn` map layouts):
//! its pattern set for `pal_fqname_v1`, and its variant policies as `pal_pol_v1` entries of
//! its own policy, directions `DIR_NAME_VARIANT + i`.

use std::collections::BTreeSet;
use std::sync::Arc;

use palisade_common::fqdn::{NAME_BYTES, encode_pattern};
use palisade_common::{DIR_EGRESS, DIR_NAME_VARIANT};

use super::EndpointNames;
use crate::output::{Entries, PortContents, endpoint_entries};

/// One `pal_fqname_v1` entry with the pattern set zeroed: (LPM prefixlen, encoded name, rule
/// mask).
pub type NameEntry = (u32, [u8; NAME_BYTES], u32);

/// The entries of one pattern set. Shared by content between endpoints: the applier writes
/// each distinct content once, under a pattern set id of its own.
pub type NamePatterns = BTreeSet<NameEntry>;

/// What an endpoint with name rules needs in the name maps besides its policy entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredNames {
    /// Name rules (`FqdnEndpoint::rules`).
    pub rules: u32,
    pub patterns: Arc<NamePatterns>,
}

/// The pattern set of `names` (a pattern whose encoding does not fit in a key is left out: a
/// name that long is never learnt, see `common::fqdn::NAME_BYTES`).
pub fn name_patterns(names: &EndpointNames) -> NamePatterns {
    names
        .patterns
        .iter()
        .filter_map(|(p, mask)| {
            let mut name = [0u8; NAME_BYTES];
            let labels = p.suffix().split('.').map(str::as_bytes);
            let len = encode_pattern(labels, p.is_wildcard(), &mut name)?;
            Some((len, name, u32::from(*mask)))
        })
        .collect()
}

/// The variant policies of `names` as entries of the endpoint's own policy: the egress
/// entries of variant i under direction `DIR_NAME_VARIANT + i`.
pub fn variant_entries(names: &EndpointNames, contents: &mut PortContents) -> Entries {
    let mut out = Entries::new();
    for (i, variant) in names.variants.iter().enumerate() {
        let dir = DIR_NAME_VARIANT + i as u8;
        for ((len, mut key), allow) in endpoint_entries(variant, contents) {
            if key.dir == DIR_EGRESS {
                key.dir = dir;
                out.insert((len, key), allow);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fqdn::DomainPattern;

    #[test]
    fn patterns_encode_as_the_datapath_looks_them_up() {
        let names = EndpointNames {
            name_rules: Vec::new(),
            patterns: vec![
                (DomainPattern::parse("API.example.com").unwrap(), 0b1),
                (DomainPattern::parse("*.cdn.example.com").unwrap(), 0b11),
            ],
            variants: Vec::new(),
            overflow: Vec::new(),
        };
        let got: Vec<(u32, Vec<u8>, u32)> = name_patterns(&names)
            .into_iter()
            .map(|(l, n, m)| (l, n[..20].to_vec(), m))
            .collect();
        let exact = b"\x83com\x87example\x83api\x00";
        let wild = b"\x83com\x87example\x83cdn\x80";
        let pad = |b: &[u8]| {
            let mut v = b.to_vec();
            v.resize(20, 0);
            v
        };
        assert!(got.contains(&((4 + 17) * 8, pad(exact), 1)), "{got:?}");
        assert!(got.contains(&((4 + 16) * 8 + 2, pad(wild), 3)), "{got:?}");
    }
}
