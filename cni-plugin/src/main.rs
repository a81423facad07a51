//! `palisade`: the CNI plugin binary. Exec'd by the container runtime once per operation.
fn main() {
    std::process::exit(palisade_cni::plugin::main());
}
