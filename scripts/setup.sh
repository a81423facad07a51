#!/usr/bin/env bash
# Installs everything Palisade needs on a fresh Debian 12 machine, idempotently.
# Fast when everything is already present: each step checks before it installs.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "[setup] must run as root (apt-get, bpffs, network namespaces)" >&2
    exit 1
  fi
}

APT_PKGS=(
  llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev   # bpf-linker
  iproute2 iptables ipset conntrack nftables           # lab, tests, benchmark cleanup
  containernetworking-plugins                          # reference CNI plugins (ptp, host-local, portmap)
  golang-go golang-github-appc-cni-dev                 # libcni runtime-side test client
  sockperf iperf3 socat                                # traffic tools
  dnsmasq-base                                         # a real DNS server for the lab
)

apt_install() {
  local missing=()
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "apt packages present"
  fi
}

rust_src() {
  local tc
  for tc in nightly stable; do
    if rustup toolchain list | grep -q "^$tc"; then
      if ! rustup component list --toolchain "$tc" --installed 2>/dev/null | grep -q '^rust-src'; then
        log "rustup component add rust-src --toolchain $tc"
        rustup component add rust-src --toolchain "$tc" >/dev/null
      fi
    fi
  done
}

bpf_linker() {
  if command -v bpf-linker >/dev/null 2>&1 && bpf-linker --version >/dev/null 2>&1; then
    log "bpf-linker present: $(bpf-linker --version)"
    return
  fi
  log "cargo install bpf-linker (about a minute)"
  # bpf-linker >= 0.13 finds LLVM via LLVM_PREFIX (or the first llvm-config on PATH, which may be
  # another LLVM); llvm-sys reads LLVM_SYS_221_PREFIX. Set both.
  LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
    PATH="/usr/lib/llvm-22/bin:$PATH" cargo install --locked bpf-linker \
    --no-default-features --features llvm-22 >/dev/null
}


need_root
apt_install
rust_src
export PATH="$HOME/.cargo/bin:$PATH"
bpf_linker
log "done"
