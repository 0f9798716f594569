//! The overlay: how pods reach pods on other nodes.
//!
//! # Wire format
//! VXLAN (RFC 7348) over UDP, destination port 4789 (IANA), so that
//! tcpdump, Wireshark and the kernel's own `vxlan` devices understand it:
//!
//! ```text
//! outer IPv4/IPv6 (node -> node) | UDP (any source port -> 4789)
//! | VXLAN: flags 0x08 (I: VNI valid), 24 reserved bits, VNI (24 bits), 8 reserved bits
//! | inner Ethernet frame (pod's IP packet, no VLAN tag, complete checksums)
//! ```
//!
//! The kernel's UDP socket builds the outer IP and UDP headers; vswitch
//! writes and reads the 8-byte VXLAN header and the inner frame, in
//! userspace. Pod addresses travel unchanged (no NAT). The overhead is 50
//! bytes over an IPv4 underlay, 70 over IPv6, which the pods' MTU leaves
//! room for.
//!
//! # Who is who
//! Every other node is a port of the datapath ([`super::PortKind::Remote`])
//! that owns that node's pod CIDRs (and its own addresses, for traffic its
//! host routes to pods). A datagram is accepted only from a known node's
//! address, and its inner packet only with a source that node owns:
//! anything else is forged and dropped, counted. [`Routes`] finds the node
//! for a destination by longest prefix.

use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use super::PortId;
use crate::wire::{eth, ipv4, ipv6, udp, vxlan};

/// The IANA port for VXLAN.
pub const VXLAN_PORT: u16 = vxlan::PORT;
/// The VXLAN header's length.
pub const HLEN: usize = vxlan::HLEN;
/// The VNI vswitch uses unless told otherwise.
pub const DEFAULT_VNI: u32 = 1;

/// Bytes the overlay adds around a pod's IP packet: outer IP, UDP, VXLAN
/// and the inner Ethernet header.
pub fn overhead(underlay_v6: bool) -> u32 {
    let outer_ip = if underlay_v6 {
        ipv6::HLEN
    } else {
        ipv4::MIN_HLEN
    };
    (outer_ip + udp::HLEN + HLEN + eth::HLEN) as u32
}

/// The VXLAN header for `vni`.
pub fn header(vni: u32) -> [u8; HLEN] {
    let mut h = [0; HLEN];
    h[vxlan::FLAGS] = vxlan::FLG_I;
    h[vxlan::VNI].copy_from_slice(&vxlan::vni_bytes(vni));
    h
}

/// Checks a datagram's VXLAN header: the I flag set and the VNI ours.
/// (Reserved bits are ignored on receipt, as RFC 7348 asks.)
pub fn check(datagram: &[u8], vni: u32) -> bool {
    let Some(h) = datagram.first_chunk::<HLEN>() else {
        return false;
    };
    let got = vxlan::vni_from(h[vxlan::VNI].try_into().expect("3 bytes"));
    datagram.len() >= HLEN + eth::HLEN
        && h[vxlan::FLAGS] & vxlan::FLG_I != 0
        && got == vni & 0x00ff_ffff
}

/// The MAC a remote node's port has inside the datapath (never on a pod's
/// link): locally administered, from the node's address.
pub fn node_mac(addr: IpAddr) -> [u8; 6] {
    match addr {
        IpAddr::V4(a) => {
            let [a, b, c, d] = a.octets();
            [0x06, 0x76, a, b, c, d]
        }
        IpAddr::V6(a) => {
            let [.., a, b, c, d] = a.octets();
            [0x0a, 0x76, a, b, c, d]
        }
    }
}

/// Longest-prefix match from destination address to the remote node's
/// port: one hash table per prefix length in use, longest first (nodes'
/// pod CIDRs share one or two lengths, so a lookup is a hash or two).
#[derive(Debug, Default, Clone)]
pub struct Routes {
    /// (IPv6, prefix length, masked address -> port), longest first.
    tables: Vec<(bool, u8, FxHashMap<u128, PortId>)>,
}

fn bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u32::from(a) as u128),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn mask(v6: bool, len: u8, x: u128) -> u128 {
    let width = if v6 { 128 } else { 32 };
    if len == 0 {
        0
    } else {
        x & (u128::MAX << (width - len as u32)) & (u128::MAX >> (128 - width))
    }
}

impl Routes {
    pub fn insert(&mut self, net: IpNet, port: PortId) {
        let (v6, x) = bits(net.network());
        let len = net.prefix_len();
        let i = match self.tables.iter().position(|t| t.0 == v6 && t.1 == len) {
            Some(i) => i,
            None => {
                self.tables.push((v6, len, FxHashMap::default()));
                self.tables.sort_by_key(|t| std::cmp::Reverse(t.1));
                self.tables
                    .iter()
                    .position(|t| t.0 == v6 && t.1 == len)
                    .expect("just added")
            }
        };
        self.tables[i].2.insert(mask(v6, len, x), port);
    }

    /// Forgets every prefix of `port`.
    pub fn remove_port(&mut self, port: PortId) {
        for t in &mut self.tables {
            t.2.retain(|_, p| *p != port);
        }
        self.tables.retain(|t| !t.2.is_empty());
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<PortId> {
        let (v6, x) = bits(ip);
        self.tables
            .iter()
            .filter(|t| t.0 == v6)
            .find_map(|(_, len, m)| m.get(&mask(v6, *len, x)).copied())
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn header_round_trips_and_rejects_others() {
        let mut d = header(0x12_3456).to_vec();
        assert_eq!(d, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        d.extend_from_slice(&[0u8; 14]);
        assert!(check(&d, 0x12_3456));
        assert!(!check(&d, 7), "another VNI");
        let mut no_i = d.clone();
        no_i[0] = 0;
        assert!(!check(&no_i, 0x12_3456), "I flag clear");
        assert!(
            !check(&d[..HLEN + 13], 0x12_3456),
            "no room for an inner frame"
        );
    }

    #[test]
    fn longest_prefix_wins_and_families_stay_apart() {
        let mut r = Routes::default();
        r.insert(net("10.244.0.0/16"), 1);
        r.insert(net("10.244.2.0/24"), 2);
        r.insert(net("fd00:2::/64"), 2);
        r.insert(net("0.0.0.0/0"), 9);
        assert_eq!(r.lookup(ip("10.244.2.77")), Some(2));
        assert_eq!(r.lookup(ip("10.244.3.1")), Some(1));
        assert_eq!(r.lookup(ip("192.0.2.1")), Some(9));
        assert_eq!(r.lookup(ip("fd00:2::5")), Some(2));
        assert_eq!(r.lookup(ip("fd00:3::5")), None);
        r.remove_port(2);
        assert_eq!(r.lookup(ip("10.244.2.77")), Some(1));
        assert_eq!(r.lookup(ip("fd00:2::5")), None);
    }

    #[test]
    fn overhead_is_what_the_headers_take() {
        assert_eq!(overhead(false), 50);
        assert_eq!(overhead(true), 70);
    }
}
