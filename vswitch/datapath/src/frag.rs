//! Fragments: non-first IPv4/IPv6 fragments carry no ports, so they cannot
//! be checked against policy by themselves. The first fragment is checked
//! like any packet; its decision is remembered for a short time under
//! the datagram's key (source, destination, identification, and for IPv4
//! the protocol), and later fragments follow it. A fragment whose first fragment is unknown (never seen, denied,
//! expired, or arriving out of order) is dropped: fragments are never a way
//! around policy. The table is bounded; when full, first fragments are
//! still forwarded but their followers will be dropped.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use super::flow_cache::Forward;
use super::parse::{Frag, IpPacket};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub id: u32,
}

impl FragKey {
    /// The datagram a fragment belongs to, as its receiver reassembles it:
    /// IPv4 by addresses, protocol and identification (RFC 791), IPv6 by
    /// addresses and identification (RFC 8200: the next header after the
    /// Fragment header is the upper layer in the first fragment only).
    pub fn of(ip: &IpPacket, f: Frag) -> FragKey {
        FragKey {
            src: ip.src,
            dst: ip.dst,
            proto: if ip.src.is_ipv6() { 0 } else { ip.proto },
            id: f.id,
        }
    }
}

pub struct FragTable {
    map: FxHashMap<FragKey, (Forward, u64)>,
    max: usize,
    ttl_ms: u64,
}

impl FragTable {
    pub fn new(max: usize, ttl_ms: u64) -> FragTable {
        FragTable {
            map: FxHashMap::default(),
            max,
            ttl_ms,
        }
    }

    /// Remembers the decision of a first fragment; false if the table is full.
    pub fn remember(&mut self, key: FragKey, fwd: Forward, now: u64) -> bool {
        if self.map.len() >= self.max {
            self.expire(now);
            if self.map.len() >= self.max {
                return false;
            }
        }
        self.map.insert(key, (fwd, now + self.ttl_ms));
        true
    }

    /// The decision for a later fragment, if its first fragment passed.
    pub fn follow(&mut self, key: &FragKey, now: u64) -> Option<Forward> {
        match self.map.get(key) {
            Some((fwd, until)) if *until >= now => Some(*fwd),
            Some(_) => {
                self.map.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn expire(&mut self, now: u64) {
        self.map.retain(|_, (_, until)| *until >= now);
    }
}
