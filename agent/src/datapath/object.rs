//! Loading the eBPF object into the kernel: the one loader the agent ([`super::Datapath::open`]),
//! the test harness (`palisade_tests::bpf::Datapath`) and `cargo xtask bench datapath` share,
//! so what the tests and the bench run was loaded exactly as the agent loads it:
//! 1. the object is read and parsed, and every map it pins by name is checked against the map
//!    pinned under `maps_dir`, if any, with the capacities `sizes` sets (`layout`: a mismatched
//!    pin is replaced);
//! 2. the object is loaded with its maps pinned by name under `maps_dir` (reused when pinned
//!    already) and sized by `sizes` (`--map-size`);
//! 3. the entries of a replaced map whose kind is copied are copied into the new one;
//! 4. the programs asked for are loaded (verified by the kernel), none attached;
//! 5. the tail-called programs among them are put in the pinned program array
//!    (`maps::TAILS`), where the attached programs find them.
//!
//! Attaching is the caller's: the agent attaches pinned TCX links (`links`); the tier-1 harness
//! attaches nothing and runs the programs on crafted frames (`BPF_PROG_TEST_RUN`); the bench's
//! empty-TC configuration attaches only the `pass` program.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, ProgramArray},
};
use palisade_common::maps;

use super::{DatapathError, Result, layout, program};
use crate::map_sizes::MapSizes;

/// The object loaded by [`load`].
pub struct Loaded {
    /// The object, its maps still in it (take the typed handles with `Ebpf::take_map`).
    pub ebpf: Ebpf,
    /// Names of the maps the object pins by name (each is pinned under `maps_dir`).
    pub pinned: Vec<String>,
    /// Pinned maps whose layout did not match the object's and that were replaced (their
    /// entries already copied where that kind of map is copied): for the status.
    pub replaced: Vec<layout::Replaced>,
    /// The replaced learnt-address map, for the merge once this agent's programs are
    /// attached everywhere (`layout::PreviousLearnt`).
    pub previous_learnt: Option<layout::PreviousLearnt>,
}

/// Loads `object` with its maps pinned under `maps_dir` (which must exist, on a bpffs) and
/// sized by `sizes`, and loads `programs` (see the module doc).
pub fn load(
    object: &Path,
    maps_dir: &Path,
    sizes: &MapSizes,
    programs: &[&'static str],
) -> Result<Loaded> {
    let bytes = std::fs::read(object).map_err(|source| DatapathError::ReadObject {
        path: object.to_path_buf(),
        source,
    })?;
    let parsed = aya_obj::Object::parse(&bytes).map_err(|source| DatapathError::ParseObject {
        path: object.to_path_buf(),
        source: Box::new(source),
    })?;
    // The sizes asked for are the layout expected: a map pinned with another size is
    // replaced by one of that size, its entries copied (`layout`).
    let expected = layout::expected(&parsed, sizes);
    drop(parsed);
    let mut replaced = layout::unpin_mismatched(&expected, maps_dir)?;
    // The previous agent's programs keep their DNS reader, which learns into the map they
    // read: a pod keeps learning and connecting through one map until this agent's programs
    // replace its own (`layout::PreviousLearnt`).
    let old_program_array = if replaced.iter().any(|r| r.name == maps::FQDN_LEARNT) {
        layout::unpin_program_array(maps_dir)?
    } else {
        None
    };
    let mut loader = EbpfLoader::new();
    sizes.apply(&mut loader);
    let mut ebpf = loader
        .default_map_pin_directory(maps_dir)
        .load(&bytes)
        .map_err(|source| DatapathError::Load {
            path: object.to_path_buf(),
            source: Box::new(source),
        })?;
    let old_learnt = layout::copy_entries(&mut replaced, &mut ebpf, super::sweeper::now_ns());
    let previous_learnt = layout::PreviousLearnt::new(old_learnt, old_program_array);
    for &name in programs {
        program(&mut ebpf, name)?
            .load()
            .map_err(|source| DatapathError::LoadProgram { name, source })?;
    }
    if programs.contains(&maps::PROG_DNS_LEARN) {
        set_tail(&mut ebpf, maps::TAIL_DNS_LEARN, maps::PROG_DNS_LEARN)?;
    }
    Ok(Loaded {
        ebpf,
        pinned: expected.into_keys().collect(),
        replaced,
        previous_learnt,
    })
}

/// Puts the loaded program `name` at `index` of the pinned program array (replacing what a
/// previous agent put there: its programs, still attached until this agent's replace them,
/// then tail-call this one, which reads the same scratch layout: the array's version says so).
fn set_tail(ebpf: &mut Ebpf, index: u32, name: &'static str) -> Result<()> {
    let fd = program(ebpf, name)?
        .fd()
        .map_err(|source| DatapathError::LoadProgram { name, source })?
        .try_clone()
        .map_err(|e| DatapathError::Tail {
            name,
            message: e.to_string(),
        })?;
    let map = ebpf
        .map_mut(maps::TAILS)
        .ok_or_else(|| DatapathError::Tail {
            name,
            message: format!("the object has no map {}", maps::TAILS),
        })?;
    let mut tails: ProgramArray<&mut MapData> =
        ProgramArray::try_from(map).map_err(|e| DatapathError::Tail {
            name,
            message: e.to_string(),
        })?;
    tails.set(index, &fd, 0).map_err(|e| DatapathError::Tail {
        name,
        message: e.to_string(),
    })
}
