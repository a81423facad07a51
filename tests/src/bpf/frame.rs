//! Crafting frames. Checksums are left zero: the datapath never checks them.

use palisade_common::packet::{ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6};

pub const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Ethernet frame around `payload`.
pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&POD_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h
}
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_FIN: u8 = 0x01;

pub fn udp(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; 8 + payload_len];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    h
}

pub fn sctp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 12];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h
}

/// ICMP (`v6 == false`) or ICMPv6 echo request/reply.
pub fn echo(v6: bool, request: bool, id: u16) -> Vec<u8> {
    let ty = match (v6, request) {
        (false, true) => 8,
        (false, false) => 0,
        (true, true) => 128,
        (true, false) => 129,
    };
    let mut h = vec![ty, 0, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&1u16.to_be_bytes());
    h
}

/// ICMP/ICMPv6 message of `ty` whose body is `embedded` (an IP packet for errors).
pub fn icmp(ty: u8, code: u8, embedded: &[u8]) -> Vec<u8> {
    let mut h = vec![ty, code, 0, 0, 0, 0, 0, 0];
    h.extend_from_slice(embedded);
    h
}

/// IPv4 header fields that tests vary.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub id: u16,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    pub more_fragments: bool,
    /// IHL in 32-bit words (5 without options).
    pub ihl: u8,
    /// Overrides the computed total length.
    pub total_len: Option<u16>,
}

impl V4 {
    pub fn new(src: [u8; 4], dst: [u8; 4], proto: u8) -> Self {
        V4 {
            src,
            dst,
            proto,
            id: 0x1234,
            frag_offset: 0,
            more_fragments: false,
            ihl: 5,
            total_len: None,
        }
    }

    /// The IPv4 packet (no Ethernet header) carrying `l4`.
    pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let hlen = (self.ihl.max(5) as usize) * 4;
        let mut h = vec![0u8; hlen];
        h[0] = 0x40 | (self.ihl & 0x0f);
        let total = self.total_len.unwrap_or((hlen + l4.len()) as u16);
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[4..6].copy_from_slice(&self.id.to_be_bytes());
        let frag = (self.frag_offset & 0x1fff) | if self.more_fragments { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = self.proto;
        h[12..16].copy_from_slice(&self.src);
        h[16..20].copy_from_slice(&self.dst);
        h.extend_from_slice(l4);
        h
    }

    /// The Ethernet frame carrying `l4`.
    pub fn frame(&self, l4: &[u8]) -> Vec<u8> {
        eth(ETH_P_IP, &self.packet(l4))
    }
}

/// An IPv6 extension header: `kind` is its protocol number (0 hop-by-hop, 43 routing,
/// 60 destination options, 51 AH); `len8` its length in 8-byte units beyond the first.
#[derive(Clone, Copy, Debug)]
pub struct Ext {
    pub kind: u8,
    pub len8: u8,
}

/// IPv6 fragment header fields.
#[derive(Clone, Copy, Debug)]
pub struct V6Frag {
    pub offset: u16,
    pub more: bool,
    pub id: u32,
}

#[derive(Clone, Debug)]
pub struct V6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    pub ext: Vec<Ext>,
    /// A fragment header after `ext`.
    pub frag: Option<V6Frag>,
    /// Overrides the computed payload length.
    pub payload_len: Option<u16>,
}

impl V6 {
    pub fn new(src: [u8; 16], dst: [u8; 16], proto: u8) -> Self {
        V6 {
            src,
            dst,
            proto,
            ext: Vec::new(),
            frag: None,
            payload_len: None,
        }
    }

    pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
        // Chain: ext..., [fragment], upper layer.
        let mut kinds: Vec<u8> = self.ext.iter().map(|e| e.kind).collect();
        if self.frag.is_some() {
            kinds.push(44);
        }
        kinds.push(self.proto);
        let mut body = Vec::new();
        for (i, e) in self.ext.iter().enumerate() {
            let next = kinds[i + 1];
            let (len_field, total) = if e.kind == 51 {
                // AH: length in 4-byte units minus 2.
                let total = 8 * (e.len8 as usize + 1);
                ((total / 4 - 2) as u8, total)
            } else {
                (e.len8, 8 * (e.len8 as usize + 1))
            };
            let mut h = vec![0u8; total];
            h[0] = next;
            h[1] = len_field;
            body.extend_from_slice(&h);
        }
        if let Some(f) = self.frag {
            let mut h = vec![0u8; 8];
            h[0] = self.proto;
            let fo = (f.offset << 3) | u16::from(f.more);
            h[2..4].copy_from_slice(&fo.to_be_bytes());
            h[4..8].copy_from_slice(&f.id.to_be_bytes());
            body.extend_from_slice(&h);
        }
        body.extend_from_slice(l4);
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        let plen = self.payload_len.unwrap_or(body.len() as u16);
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p[6] = kinds[0];
        p[7] = 64;
        p[8..24].copy_from_slice(&self.src);
        p[24..40].copy_from_slice(&self.dst);
        p.extend_from_slice(&body);
        p
    }

    pub fn frame(&self, l4: &[u8]) -> Vec<u8> {
        eth(ETH_P_IPV6, &self.packet(l4))
    }
}

/// An ARP request from `sender` asking for `target`.
pub fn arp(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    a.extend_from_slice(&POD_MAC);
    a.extend_from_slice(&sender);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target);
    eth(ETH_P_ARP, &a)
}

/// An IPv6 neighbour solicitation (ICMPv6 type 135) from `src`.
pub fn neighbour_solicitation(src: [u8; 16], target: [u8; 16]) -> Vec<u8> {
    let mut body = vec![0u8; 4];
    body.extend_from_slice(&target);
    let l4 = icmp(135, 0, &body);
    let dst = [
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, target[13], target[14], target[15],
    ];
    V6::new(src, dst, IPPROTO_ICMPV6).frame(&l4)
}

/// Shorthand: an IPv4 frame with an ICMP echo request.
pub fn ping4(src: [u8; 4], dst: [u8; 4], id: u16) -> Vec<u8> {
    V4::new(src, dst, IPPROTO_ICMP).frame(&echo(false, true, id))
}
