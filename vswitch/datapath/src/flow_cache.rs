//! The flow cache: an exact-match table per worker that lets the packets of
//! an established connection skip the slow path.
//!
//! # What
//! Key: the port a frame came in on, its addresses, protocol and ports
//! ([`FlowKey`], read at fixed offsets by [`super::parse::fast_key`]).
//! Value: what the slow path decided for that flow: the output port and the
//! MAC/TTL rewrite, the epoch it was computed under, and when the flow's
//! connection was last refreshed. Key and value fill one cache line
//! ([`Slot`]); the conntrack handle lives in a side array that hits seldom
//! read.
//!
//! # How
//! A hash picks a bucket: one cache line of eight 32-bit signatures and the
//! slot index of each. The hash is keyed (foldhash's quality variant, whose
//! last mix spreads the low bits that pick the bucket, with a key drawn from
//! the OS's randomness when the cache is made): pods choose the flows, and
//! must not be able to pick flows that share a bucket and evict each
//! other's entries, or other pods'. A hit reads that line and the slot's. A batch of
//! frames (the worker's way) asks for all its bucket lines with prefetches,
//! then reads the buckets and asks for all its slot lines, then takes the
//! hits, so that up to 64 frames' memory fetches overlap: a lone frame waits
//! for two random reads from memory once the tables outgrow the caches, a
//! batched one for a share of them ([`super::mem_hints`]).
//!
//! A hit needs the current epoch; then the frame is rewritten and sent
//! without parsing beyond the key, without conntrack lookup and without
//! policy. A flow the service proxy translates carries its translation
//! beside the slots (one more cache line, read by those hits only): new
//! addresses and ports, and checksum adjustments computed once. TCP packets with SYN, FIN or RST never take the fast path, since
//! they change connection state. The connection is refreshed (and checked
//! to be the same, live, unexpired one) through its handle at most once a
//! second per flow ([`REFRESH_MS`]), not on every hit: a hit reads two cache
//! lines (the bucket and the slot), where a refresh would read a third at
//! a random place. Conntrack therefore sees a busy flow at most a second
//! late, which its timeouts (ten seconds at the least) absorb: a
//! connection cannot expire while its flow hits, and one that has not been
//! refreshed for a second is checked before the next hit is taken.
//!
//! # Invalidation
//! The datapath's epoch changes with every policy generation and every port
//! change; an entry from an older epoch is a miss, the slow path re-checks
//! the flow (policy, conntrack) and overwrites the entry. A closed or expired
//! connection makes its entries misses too. `sweep` removes dead entries.
//!
//! # Insertion and bounds
//! Only flows whose connection is established (both sides have spoken) are
//! inserted, so a port scan, whose probes never get answers, cannot thrash
//! the cache. The cache never grows past its size; when full, new flows
//! simply stay on the slow path until a sweep frees room.
//!
//! # Threading
//! One cache per worker, owned, never shared: no locks, no atomics.

use std::hash::{BuildHasher, Hasher};

use foldhash::SharedSeed;
use foldhash::quality::FoldHasher;

use super::conntrack::CtRef;
use super::nat::Compiled;
use super::parse::{FlowKey, Mac};

/// How often a hit refreshes its connection in conntrack (milliseconds).
pub const REFRESH_MS: u32 = 1000;

/// What the slow path decided about a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub port: u16,
    /// Routed by the gateway: rewrite MACs and decrement TTL/hop limit.
    pub routed: bool,
    pub src_mac: Mac,
    pub dst_mac: Mac,
    /// The largest IP packet the output takes unsegmented (the overlay's,
    /// a local port's MTU); 0: no limit.
    pub mtu: u16,
}

#[derive(Debug, Clone, Copy)]
pub struct CacheEntry {
    pub fwd: Forward,
    pub ct: CtRef,
    pub epoch: u64,
    /// A translated connection's rewrite (Services), if any.
    pub nat: Option<Compiled>,
}

/// Slots per bucket: one bucket is one cache line of signatures and indexes.
const WAYS: usize = 8;

/// Eight 32-bit signatures (0: empty) and the entry index of each.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bucket {
    sigs: [u32; WAYS],
    idx: [u32; WAYS],
}

/// One cached flow, in one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Slot {
    pub key: FlowKey,
    /// When the connection was last refreshed (the datapath's milliseconds,
    /// truncated).
    pub refreshed: u32,
    /// The epoch the decision was made under (truncated).
    pub epoch: u32,
    pub dst_mac: Mac,
    pub port: u16,
    pub mtu: u16,
    /// Routed (the source MAC becomes the gateway's, TTL decremented), or
    /// delivered at L2 (the source MAC stays the input port's).
    pub routed: bool,
    /// The flow is translated (a Service's): its rewrite is beside the
    /// slots ([`FlowCache::nat`]).
    pub nat: bool,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

impl Slot {
    /// The forwarding decision, with the source MAC it implies.
    #[inline(always)]
    pub fn forward(&self, gateway: Mac, port_mac: Mac) -> Forward {
        Forward {
            port: self.port,
            routed: self.routed,
            src_mac: if self.routed { gateway } else { port_mac },
            dst_mac: self.dst_mac,
            mtu: self.mtu,
        }
    }
}

/// A batch frame's lookup in progress ([`FlowCache::lookup_batch`]): its
/// key and hash, and the slot its bucket pointed at.
#[derive(Clone, Copy)]
pub struct Lookup {
    key: FlowKey,
    hash: u64,
    idx: Option<u32>,
}

/// A signature table: a bucket (one cache line) per hash, eight ways, and
/// the entries beside it. A lookup reads one bucket line and one entry, and
/// a batch asks for all its lines ahead ([`FlowCache::lookup_batch`]). There are four times as many ways as entries, so
/// buckets rarely fill; when one does, a way chosen by the hash is replaced
/// (that flow just takes the slow path again).
pub struct FlowCache {
    buckets: Vec<Bucket>,
    slots: Vec<Slot>,
    /// Each slot's connection, beside the slots (read once a second per
    /// flow, and by sweeps).
    cts: Vec<CtRef>,
    /// Each slot's translation, beside the slots (read by hits of
    /// translated flows only).
    nats: Vec<Compiled>,
    free: Vec<u32>,
    len: usize,
    max: usize,
    mask: u64,
    /// The hash's key: random, chosen when the cache is made.
    seed: u64,
    shared: SharedSeed,
}

/// A random 64-bit number from the OS (std seeds its hash maps' keys from
/// it; hashing a constant under them reads one).
fn random_u64(x: u64) -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(x)
}

impl FlowCache {
    pub fn new(max: usize) -> FlowCache {
        FlowCache::with_key(max, random_u64(1))
    }

    /// A cache whose hash key is given (tests that compare two caches).
    pub fn with_key(max: usize, key: u64) -> FlowCache {
        let n = (max.max(WAYS) * 4 / WAYS).next_power_of_two();
        // huge pages asked for before the first touch
        let mut buckets = Vec::with_capacity(n);
        super::mem_hints::advise_huge(buckets.as_ptr() as *const u8, n * size_of::<Bucket>());
        buckets.resize(n, Bucket::default());
        let slots: Vec<Slot> = Vec::with_capacity(max);
        super::mem_hints::advise_huge(slots.as_ptr() as *const u8, max * size_of::<Slot>());
        FlowCache {
            buckets,
            slots,
            cts: Vec::with_capacity(max),
            nats: Vec::new(),
            free: Vec::new(),
            len: 0,
            max,
            mask: n as u64 - 1,
            seed: key,
            shared: SharedSeed::from_u64(key.rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15),
        }
    }

    /// The key's hash under the cache's key: the low bits pick the
    /// bucket, the high bits sign it.
    #[inline(always)]
    pub fn hash(&self, k: &FlowKey) -> u64 {
        let rest = k.sport as u64
            | (k.dport as u64) << 16
            | (k.in_port as u64) << 32
            | (k.proto as u64) << 48
            | (k.v6 as u64) << 56;
        let mut h = FoldHasher::with_seed(self.seed, &self.shared);
        h.write_u128(k.src);
        h.write_u128(k.dst);
        h.write_u64(rest);
        h.finish()
    }

    #[inline(always)]
    fn sig(h: u64) -> u32 {
        (h >> 32) as u32 | 1
    }

    #[inline(always)]
    fn bucket(&self, h: u64) -> &Bucket {
        &self.buckets[(h & self.mask) as usize]
    }

    /// Starts the lookups of a batch of frames, one per frame into `out`
    /// (`None`: the frame has no key, by `key`), with their memory fetches
    /// overlapped: every key and hash first, asking for every bucket line;
    /// then every bucket, asking for the slot line of the first way that
    /// bears the hash's signature. [`FlowCache::resolve`] finishes each.
    /// Never inlined: these loops get registers of their own.
    #[inline(never)]
    pub fn lookup_batch(
        &self,
        frames: &[&mut [u8]],
        key: impl Fn(&[u8]) -> Option<FlowKey>,
        out: &mut Vec<Option<Lookup>>,
    ) {
        out.clear();
        for f in frames {
            out.push(key(f).map(|key| {
                let hash = self.hash(&key);
                super::mem_hints::prefetch(self.bucket(hash));
                Lookup {
                    key,
                    hash,
                    idx: None,
                }
            }));
        }
        for l in out.iter_mut().flatten() {
            let b = self.bucket(l.hash);
            let sig = Self::sig(l.hash);
            if let Some(w) = (0..WAYS).find(|&w| b.sigs[w] == sig) {
                let i = b.idx[w];
                super::mem_hints::prefetch(&self.slots[i as usize]);
                // a translated flow's translation too (the array reaches
                // only as far as the highest translated slot)
                if let Some(n) = self.nats.get(i as usize) {
                    super::mem_hints::prefetch(n);
                }
                l.idx = Some(i);
            }
        }
    }

    /// The entry index of a key looked up by [`FlowCache::lookup_batch`]:
    /// the probed slot if it holds the key (nearly always: signatures have
    /// 31 bits), else a full lookup (a signature shared in the bucket, or an
    /// insert since the probe that reused the slot).
    #[inline(always)]
    pub fn resolve(&self, l: &Lookup) -> Option<u32> {
        match l.idx {
            Some(i) if self.slot_for(i, &l.key).is_some() => Some(i),
            Some(_) => self.find(l.hash, &l.key),
            None => None,
        }
    }

    /// The entry index of a key.
    #[inline(always)]
    pub fn find(&self, h: u64, key: &FlowKey) -> Option<u32> {
        let b = self.bucket(h);
        let sig = Self::sig(h);
        (0..WAYS)
            .filter(|&w| b.sigs[w] == sig)
            .map(|w| b.idx[w])
            .find(|&i| self.slots[i as usize].key == *key)
    }

    #[inline(always)]
    pub fn slot(&self, idx: u32) -> &Slot {
        &self.slots[idx as usize]
    }

    /// The slot at `idx` if it still holds `key` (an insert between a
    /// `find` and its use may have reused it).
    #[inline(always)]
    pub fn slot_for(&self, idx: u32, key: &FlowKey) -> Option<&Slot> {
        let s = self.slots.get(idx as usize)?;
        (s.key == *key).then_some(s)
    }

    /// The connection of the slot at `idx`.
    #[inline(always)]
    pub fn ct(&self, idx: u32) -> CtRef {
        self.cts[idx as usize]
    }

    /// The translation of the slot at `idx` (when its `nat` says so).
    #[inline(always)]
    pub fn nat(&self, idx: u32) -> &Compiled {
        &self.nats[idx as usize]
    }

    /// Records that the slot's connection was refreshed at `now`.
    #[inline(always)]
    pub fn refreshed(&mut self, idx: u32, now: u32) {
        self.slots[idx as usize].refreshed = now;
    }

    #[inline(always)]
    pub fn get(&self, key: &FlowKey) -> Option<&Slot> {
        self.find(self.hash(key), key).map(|i| self.slot(i))
    }

    /// Inserts or overwrites (the connection was refreshed at `now`);
    /// returns false when the cache is full.
    pub fn insert(&mut self, key: FlowKey, entry: CacheEntry, now: u32) -> bool {
        let h = self.hash(&key);
        let slot = Slot {
            key,
            refreshed: now,
            epoch: entry.epoch as u32,
            dst_mac: entry.fwd.dst_mac,
            port: entry.fwd.port,
            mtu: entry.fwd.mtu,
            routed: entry.fwd.routed,
            nat: entry.nat.is_some(),
        };
        let nat = entry.nat.unwrap_or_default();
        if let Some(i) = self.find(h, &key) {
            self.slots[i as usize] = slot;
            self.cts[i as usize] = entry.ct;
            self.set_nat(i, nat);
            return true;
        }
        let sig = Self::sig(h);
        let bi = (h & self.mask) as usize;
        match self.buckets[bi].sigs.iter().position(|s| *s == 0) {
            Some(w) => {
                if self.len >= self.max {
                    return false;
                }
                let i = match self.free.pop() {
                    Some(i) => {
                        self.slots[i as usize] = slot;
                        self.cts[i as usize] = entry.ct;
                        i
                    }
                    None => {
                        self.slots.push(slot);
                        self.cts.push(entry.ct);
                        self.slots.len() as u32 - 1
                    }
                };
                self.set_nat(i, nat);
                self.buckets[bi].sigs[w] = sig;
                self.buckets[bi].idx[w] = i;
                self.len += 1;
            }
            None => {
                // A full bucket: replace one way, chosen by the hash.
                let w = ((h >> 40) as usize) % WAYS;
                let i = self.buckets[bi].idx[w];
                self.slots[i as usize] = slot;
                self.cts[i as usize] = entry.ct;
                self.set_nat(i, nat);
                self.buckets[bi].sigs[w] = sig;
            }
        }
        true
    }

    /// Stores a slot's translation (the array grows to the highest
    /// translated slot only: untranslated flows cost it nothing).
    fn set_nat(&mut self, i: u32, nat: Compiled) {
        let i = i as usize;
        if nat == Compiled::default() && i >= self.nats.len() {
            return;
        }
        if i >= self.nats.len() {
            self.nats.resize(i + 1, Compiled::default());
        }
        self.nats[i] = nat;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes the slots for which `dead` holds (given each slot and its
    /// connection).
    pub fn sweep(&mut self, mut dead: impl FnMut(&Slot, CtRef) -> bool) -> usize {
        let mut removed = 0;
        for b in &mut self.buckets {
            for w in 0..WAYS {
                let i = b.idx[w] as usize;
                if b.sigs[w] != 0 && dead(&self.slots[i], self.cts[i]) {
                    b.sigs[w] = 0;
                    self.free.push(b.idx[w]);
                    removed += 1;
                }
            }
        }
        self.len -= removed;
        removed
    }

    pub fn entries(&self) -> impl Iterator<Item = &Slot> {
        self.buckets.iter().flat_map(move |b| {
            (0..WAYS)
                .filter(move |&w| b.sigs[w] != 0)
                .map(move |w| &self.slots[b.idx[w] as usize])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> FlowKey {
        FlowKey {
            src: i as u128,
            dst: 7,
            sport: (i % 60_000) as u16,
            dport: 80,
            in_port: 1,
            proto: 6,
            v6: false,
        }
    }

    fn entry(port: u16) -> CacheEntry {
        CacheEntry {
            fwd: Forward {
                port,
                routed: false,
                src_mac: [0; 6],
                dst_mac: [0; 6],
                mtu: 0,
            },
            ct: CtRef::default(),
            epoch: 1,
            nat: None,
        }
    }

    #[test]
    fn batch_lookups_agree_with_single_ones_even_after_slots_are_reused() {
        // 64 flows in a cache sized for 1,024 (512 buckets of eight ways):
        // no bucket fills, whatever the cache's random key, so every flow
        // inserted is held (in a cache of 64, one key in about 200 left a
        // bucket with nine flows, and one flow was replaced)
        let mut c = FlowCache::new(1024);
        for i in 0..64 {
            c.insert(key(i), entry(i as u16), 0);
        }
        // a "frame" is the number of its key; every seventh has none
        let mut bufs: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let frames: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        let key_of = |f: &[u8]| {
            let i = u32::from_le_bytes(f.try_into().unwrap());
            (i % 7 != 0).then(|| key(i))
        };
        let mut out = Vec::new();
        c.lookup_batch(&frames, key_of, &mut out);
        assert_eq!(out.len(), 100);
        let agree = |c: &FlowCache, out: &[Option<Lookup>]| {
            for (i, l) in out.iter().enumerate() {
                let k = key(i as u32);
                let single = (i % 7 != 0).then(|| c.find(c.hash(&k), &k)).flatten();
                assert_eq!(l.as_ref().and_then(|l| c.resolve(l)), single, "frame {i}");
            }
        };
        agree(&c, &out);
        assert_eq!(
            out.iter()
                .flatten()
                .filter(|l| c.resolve(l).is_some())
                .count(),
            (0..64).filter(|i| i % 7 != 0).count()
        );
        // between the probes and their use, flows leave and others take
        // their slots: the probed slots no longer hold the keys
        c.sweep(|s, _| s.port % 3 == 0);
        for i in 1000..1030 {
            c.insert(key(i), entry(1), 0);
        }
        agree(&c, &out);
    }

    /// Whatever its random key, a cache spreads ordinary flows (one pair of
    /// pods, many ports, both directions) over its buckets: at 200,000 flows
    /// in a cache of that size, full buckets cost under 1 % of them.
    #[test]
    fn every_key_spreads_many_ports_between_two_pods() {
        let n = 100_000u32;
        let flow = |i: u32, back: bool| {
            let (sport, dport) = (1024 + (i % 50_000) as u16, 1 + (i / 50_000) as u16);
            let (a, b) = (0x0a00_0001u128, 0x0a00_0002u128);
            if back {
                FlowKey {
                    src: b,
                    dst: a,
                    sport: dport,
                    dport: sport,
                    in_port: 2,
                    proto: 17,
                    v6: false,
                }
            } else {
                FlowKey {
                    src: a,
                    dst: b,
                    sport,
                    dport,
                    in_port: 1,
                    proto: 17,
                    v6: false,
                }
            }
        };
        for attempt in 0..30 {
            let max = 2 * n as usize + 16;
            let mut c = FlowCache::new(max);
            for i in 0..n {
                c.insert(flow(i, false), entry(1), 0);
                c.insert(flow(i, true), entry(2), 0);
            }
            assert!(
                c.len() >= 2 * n as usize * 99 / 100,
                "cache {attempt}: {} of {} flows kept",
                c.len(),
                2 * n
            );
        }
    }

    /// Flows a pod crafts to share one bucket (found with one cache's hash,
    /// as if it knew that hash) spread over the buckets of another cache:
    /// each cache's hash has a key of its own.
    #[test]
    fn flows_crafted_to_collide_in_one_cache_do_not_in_another() {
        let probe = FlowCache::new(1024);
        let bucket = |k: &FlowKey| probe.hash(k) & probe.mask;
        let target = bucket(&key(0));
        let crafted: Vec<FlowKey> = (1..)
            .map(key)
            .filter(|k| bucket(k) == target)
            .take(32)
            .collect();
        let mut c = FlowCache::new(1024);
        for (i, k) in crafted.iter().enumerate() {
            assert!(c.insert(*k, entry(i as u16), 0));
        }
        let kept = crafted.iter().filter(|k| c.get(k).is_some()).count();
        assert_eq!(kept, crafted.len(), "crafted flows evicted each other");
    }

    #[test]
    fn finds_what_it_holds_and_stays_bounded() {
        let mut c = FlowCache::new(1000);
        for i in 0..1000 {
            assert!(c.insert(key(i), entry(i as u16), 0));
        }
        assert!(c.len() >= 990, "{}", c.len());
        let found = (0..1000)
            .filter(|&i| c.get(&key(i)).is_some_and(|e| e.port == i as u16))
            .count();
        // a full bucket replaces a way, so a few may be gone, never wrong
        assert!(found >= 990, "{found}");
        c.insert(key(5000), entry(1), 0);
        assert!(c.len() <= 1000, "never beyond its size");
        assert!(c.get(&key(99_999)).is_none());
        let before = c.len();
        let removed = c.sweep(|e, _| e.port % 2 == 0);
        assert_eq!(c.len(), before - removed);
        assert!(c.entries().all(|e| e.port % 2 == 1));
        assert_eq!(c.entries().count(), c.len());
    }
}
