//! The tier-1 harness's access to the name maps (`palisade_common::fqdn`): what the agent
//! writes (endpoints with name rules, patterns, the DNS service's addresses) and what the
//! datapath learns.

use anyhow::{Context, Result};
use aya::maps::{
    HashMap, MapData, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use palisade_common::{
    fqdn::{FqdnEndpoint, LearntKey, LearntValue, NAME_BYTES, NameKey, encode_pattern},
    maps,
    stats::HostAddrKey,
};

use crate::bpf::Datapath;

impl Datapath {
    pub fn set_fqdn_endpoint(&mut self, ep_id: u32, fe: FqdnEndpoint) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, FqdnEndpoint> =
            HashMap::try_from(self.map_mut(maps::FQDN_ENDPOINTS)?)?;
        m.insert(ep_id, fe, 0).context("writing pal_fqep_v1")
    }

    /// Adds `pattern` (`api.example.com` or `*.example.com`) to pattern set `set` with rule
    /// mask `rules`.
    pub fn add_fqdn_pattern(&mut self, set: u32, pattern: &str, rules: u32) -> Result<()> {
        let (wildcard, name) = match pattern.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let mut key = NameKey {
            name_set_be: set.to_be_bytes(),
            name: [0; NAME_BYTES],
        };
        let labels: Vec<&[u8]> = name.split('.').map(str::as_bytes).collect();
        let prefixlen = encode_pattern(labels.into_iter(), wildcard, &mut key.name)
            .with_context(|| format!("encoding {pattern:?}"))?;
        let mut m: LpmTrie<&mut MapData, NameKey, u32> =
            LpmTrie::try_from(self.map_mut(maps::FQDN_NAMES)?)?;
        m.insert(&Key::new(prefixlen, key), rules, 0)
            .context("writing pal_fqname_v1")
    }

    /// The endpoint's learnt-entry count (`pal_fqcnt_v1`).
    pub fn fqdn_count(&self, ep_id: u32) -> Result<Option<u64>> {
        let m: HashMap<&MapData, u32, u64> = HashMap::try_from(self.map(maps::FQDN_COUNTS)?)?;
        match m.get(&ep_id, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading pal_fqcnt_v1"),
        }
    }

    pub fn add_dns_server(&mut self, key: HostAddrKey) -> Result<()> {
        let mut m: HashMap<&mut MapData, HostAddrKey, u32> =
            HashMap::try_from(self.map_mut(maps::DNS_SERVERS)?)?;
        m.insert(key, 1, 0).context("writing pal_dnssrv_v1")
    }

    /// Everything the datapath learnt.
    pub fn learnt(&self) -> Result<Vec<(LearntKey, LearntValue)>> {
        let m: HashMap<&MapData, LearntKey, LearntValue> =
            HashMap::try_from(self.map(maps::FQDN_LEARNT)?)?;
        m.iter()
            .collect::<Result<Vec<_>, _>>()
            .context("reading pal_fqaddr_v1")
    }

    pub fn set_learnt(&mut self, key: LearntKey, value: LearntValue) -> Result<()> {
        let mut m: HashMap<&mut MapData, LearntKey, LearntValue> =
            HashMap::try_from(self.map_mut(maps::FQDN_LEARNT)?)?;
        m.insert(key, value, 0).context("writing pal_fqaddr_v1")
    }

    pub fn remove_learnt(&mut self, key: &LearntKey) -> Result<()> {
        let mut m: HashMap<&mut MapData, LearntKey, LearntValue> =
            HashMap::try_from(self.map_mut(maps::FQDN_LEARNT)?)?;
        m.remove(key).context("deleting from pal_fqaddr_v1")
    }

    /// Counter `slot` (`FQST_*`) summed over CPUs.
    pub fn fqdn_stat(&self, slot: u32) -> Result<u64> {
        let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(maps::FQDN_STATS)?)?;
        Ok(m.get(&slot, 0).context("reading pal_fqst_v1")?.iter().sum())
    }
}
