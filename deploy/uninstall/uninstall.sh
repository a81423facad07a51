#!/bin/sh
# Removes Palisade from this node: the CNI config (no new pod is wired by palisade), the plugin
# binary, the pinned programs, links and maps, the agent's socket directory and its state (IPAM
# store, endpoint records, podcidrs.json), the masquerade table and the routes to other nodes'
# pods.
#
# Removing a link's pin drops the last reference to the tcx link once no agent holds it, and
# the kernel detaches the program from the veth; removing the map pins frees the maps when no
# program uses them any more. So run it after the agent is gone (`kubectl delete -f deploy/`):
# a running agent would attach its programs again. It refuses to run while an agent answers.
#
# Run on every node by uninstall-daemonset.yaml (the image carries it as
# /usr/lib/palisade/uninstall.sh). PALISADE_HOST_ROOT prefixes every path (tests).
set -eu
root="${PALISADE_HOST_ROOT:-}"

if command -v palisadectl >/dev/null 2>&1; then
  if [ -n "$(palisadectl --socket="$root/run/palisade/agent.sock" status 2>/dev/null || true)" ]; then
    echo "palisade-agent still answers on $root/run/palisade/agent.sock: delete its DaemonSet first (kubectl delete -f deploy/)" >&2
    exit 1
  fi
fi

for f in \
  "$root/etc/cni/net.d/10-palisade.conflist" \
  "$root/etc/cni/net.d/.10-palisade.conflist.tmp" \
  "$root/opt/cni/bin/palisade" \
  "$root/opt/cni/bin/.palisade.tmp"; do
  if [ -e "$f" ]; then
    rm -f "$f"
    echo "removed $f"
  fi
done

for d in "$root/sys/fs/bpf/palisade" "$root/run/palisade" "$root/var/lib/palisade"; do
  if [ -e "$d" ]; then
    rm -rf "$d"
    echo "removed $d"
  fi
done
# The node's network state the agent wrote: the masquerade table (nftables `inet palisade`) and
# the routes to other nodes' pod CIDRs (rtm_protocol 80). Both live in the node's network
# namespace (the uninstall DaemonSet runs on the host network). Skipped when
# PALISADE_HOST_ROOT points at a fake node, unless PALISADE_NETWORK_CLEANUP=1 (tests, with
# stand-in nft and ip commands).
if [ -z "$root" ] || [ "${PALISADE_NETWORK_CLEANUP:-0}" = 1 ]; then
  if command -v nft >/dev/null 2>&1; then
    if nft list table inet palisade >/dev/null 2>&1; then
      nft delete table inet palisade
      echo "removed nftables table inet palisade"
    fi
  else
    echo "nft not found: cannot check for the nftables table inet palisade" >&2
  fi
  if command -v ip >/dev/null 2>&1; then
    for fam in -4 -6; do
      if [ -n "$(ip "$fam" route show proto 80)" ]; then
        ip "$fam" route flush proto 80
        echo "removed Palisade's routes (ip $fam route ... proto 80)"
      fi
    done
  else
    echo "ip not found: cannot remove Palisade's routes (proto 80)" >&2
  fi
fi
echo "palisade removed from this node"
