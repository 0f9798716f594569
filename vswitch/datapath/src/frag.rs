//! Fragments: non-first IPv4/IPv6 fragments carry no ports, so they cannot
//! be checked against policy by themselves. The first fragment is checked
//! like any packet; its decision is remembered for a short time under
//! (source, destination, protocol, identification), and later fragments
//! follow it. A fragment whose first fragment is unknown (never seen, denied,
//! expired, or arriving out of order) is dropped: fragments are never a way
//! around policy. The table is bounded; when full, first fragments are
//! still forwarded but their followers will be dropped.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use super::flow_cache::Forward;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub id: u32,
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
