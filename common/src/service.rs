//! Services under egress policy: `pal_svc_v1` and the service mark.
//!
//! kube-proxy (iptables or nftables mode) translates a Service address to a backend pod's
//! address in the node's PREROUTING hook, which runs *after* the TC ingress hook of the pod's
//! host-side veth where `from_pod` judges egress. At that point the packet still carries the
//! Service address, which says nothing about the pod it will reach. NetworkPolicy is about pods
//! and ports, so Palisade judges such a packet's egress *after* the translation:
//!
//! 1. `from_pod`: the destination is in `pal_svc_v1` (every ClusterIP, external IP and load
//!    balancer address of every Service, written by the agent). The packet is not judged here:
//!    its flow is tracked with `CT_SERVICE` (so the translated replies, which come back from the
//!    Service address, match it), the skb gets `SVC_MARK`, and it passes with
//!    `Reason::SERVICE_DEFERRED`.
//! 2. The kernel translates (DNAT) and routes the packet. The mark stays on the skb: it does
//!    not leave the node's network namespace before step 3.
//! 3. At the first TC egress hook the packet meets, which is either `to_pod` of a local
//!    backend's veth or `to_uplink` on the node's uplink (remote backends, or anything that
//!    leaves the node), a marked packet is judged as egress of the pod it came from (the
//!    endpoint of `skb->ingress_ifindex`, the pod's host veth) against its *translated*
//!    destination and port, with its own conntrack entry. Only then does `to_pod` judge the
//!    backend's ingress as usual. The mark is cleared.
//!
//! So a connection to ClusterIP:port reaches a backend only if the client's egress policy
//! allows that backend pod on its target port, whatever the Service port, whether the target
//! port is named, and whichever backend kube-proxy picked: a forbidden backend of a partly
//! allowed Service is dropped (the kernel's conntrack then keeps sending that connection to
//! the same backend, so it never connects). Pods cannot set the mark: the kernel clears
//! `skb->mark` when a packet crosses from the pod's network namespace into the node's.

/// `pal_svc_v1` (hash): key = `SvcAddrKey` (family + address), value `u32` (1).
pub type SvcAddrKey = crate::stats::HostAddrKey;

/// The skb mark bit that says "egress of the source pod still to be judged after translation".
/// `from_pod` sets it on packets to a Service address (above) and on packets to an address of
/// the node itself: the node may translate those to a pod too (kube-proxy NodePorts, portmap
/// hostPorts, both matching every local address), and a packet it delivers to itself meets no
/// TC egress hook, so node traffic still passes. Chosen clear of kube-proxy's bits (0x4000
/// masquerade, 0x8000 drop) and portmap's (0x2000 masquerade).
pub const SVC_MARK: u32 = 0x0020_0000;
