//! The policy compiler: NetworkPolicy as lookup tables, kept up to date
//! incrementally.
//!
//! # What
//! [`Engine`] holds the cluster (the source of truth) and a compiled form of
//! it that answers "may this new connection pass?" in a handful of hash and
//! array lookups, naming the rule that decided. Every change bumps a
//! generation number, which the datapath uses to invalidate its caches.
//!
//! # How
//! - **Identities.** Pods with the same namespace and the same labels are
//!   indistinguishable to every selector, so they share an *identity* (a dense
//!   `u32`). Policies select identities, never pods.
//! - **Endpoints.** A hash map from IP address to (identity, container ports)
//!   resolves both ends of a flow. Addresses not in it are outside the cluster.
//! - **Tables.** Each identity that some policy selects gets, per direction, a
//!   table: the selecting policies' rules in policy order (namespace/name,
//!   then rule index), each with its ports, and four indexes from a peer to
//!   the set of rules that admit that peer:
//!   `by_identity` (peer selectors expanded to identities), `any_pod` (peers
//!   that select every pod of the cluster), `any_peer` (rules without peers),
//!   and a CIDR interval map per family (ipBlocks with their excepts cut out).
//!   A verdict takes the lowest-numbered rule admitted by any index whose
//!   ports match, so the named rule is the first in policy order, the same one
//!   the reference evaluator names.
//! - **Selector cache.** Every distinct peer selector (namespace scope plus pod
//!   selector) is evaluated once into the set of identities it matches, and
//!   remembers which tables use it.
//!
//! # Incremental updates
//! - A policy change rebuilds the tables of the identities its old and new
//!   versions select (only identities of its own namespace).
//! - A new identity is tested against every cached selector; the tables that
//!   use a matching selector get one `by_identity` entry patched in, and the
//!   identity's own tables are built. A vanished identity is patched out.
//! - A namespace relabel re-tests the namespace-selector entries of the
//!   cache against that namespace's identities and patches what changed.
//! - Pod address or port changes touch the endpoint map only.
//!   The result equals a full compile; tests compare canonical dumps.
//!
//! # Admin tiers
//! ClusterNetworkPolicy and the v1alpha1 admin policies compile into tables
//! shared by the identities they select: see [`tiers`]. Those tables index
//! peers by class (the identities the admin selectors cannot tell apart:
//! see [`classes`]), not by identity. A verdict consults the Admin tier's
//! table, then NetworkPolicy's, then the Baseline tier's.
//!
//! # Threading
//! The engine is single-writer. Tables sit behind `Arc`s, so a snapshot for
//! readers on other threads costs a copy of the pointer vectors, and a patch
//! clones only the tables a reader still holds (`Arc::make_mut`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use rustc_hash::{FxHashMap, FxHashSet};

mod classes;
mod tiers;

use crate::admin::{Action, Tier};
use crate::compact::{self, CPort, PodPorts, PortNames, RulePorts};
use crate::labels::{Labels, Selector};
use crate::model::{Change, Cluster, ModelError, Namespace, Pod, PodKey};
use crate::netpol::{Direction, IpBlock, NamespaceScope, Peer, Policy, PolicyKey};
use crate::verdict::{Decision, Explanation, Flow, PolicyId, Reason, RuleId, Verdict};

/// A set of label-equivalent pods (same namespace, same labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityId(pub u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct SelectorId(u32);

/// A set of rule indexes of one table, ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
/// Sixteen bytes: most tables have fewer than 64 rules.
struct RuleSet {
    bits: u64,
    more: Option<Box<[u16]>>,
}

impl RuleSet {
    fn insert(&mut self, i: u16) {
        if i < 64 {
            self.bits |= 1 << i;
            return;
        }
        let mut v = self.more.take().map(Vec::from).unwrap_or_default();
        if let Err(at) = v.binary_search(&i) {
            v.insert(at, i);
        }
        self.more = Some(v.into_boxed_slice());
    }

    fn more(&self) -> &[u16] {
        self.more.as_deref().unwrap_or_default()
    }

    fn is_empty(&self) -> bool {
        self.bits == 0 && self.more.is_none()
    }

    fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        let mut b = self.bits;
        std::iter::from_fn(move || {
            (b != 0).then(|| {
                let i = b.trailing_zeros() as u16;
                b &= b - 1;
                i
            })
        })
        .chain(self.more().iter().copied())
    }
}

/// Disjoint address intervals of one family, each with the rules whose
/// ipBlocks cover it: `segments[i]` starts at its address and runs to the
/// next one's; the first starts at 0. One allocation, so one lookup touches
/// one or two cache lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CidrMap {
    segments: Vec<(u128, RuleSet)>,
}

fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn net_range(net: &IpNet) -> (u128, u128) {
    (ip_bits(net.network()), ip_bits(net.broadcast()))
}

/// Where the ends of `nets` (all of one family) cut that family's address
/// space: 0, and each net's first address and the one after its last,
/// ascending. Each start begins an interval no net's edge crosses.
fn interval_starts<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Vec<u128> {
    let mut starts: Vec<u128> = vec![0];
    for net in nets {
        let top = match net {
            IpNet::V4(_) => u32::MAX as u128,
            IpNet::V6(_) => u128::MAX,
        };
        let (lo, hi) = net_range(net);
        starts.push(lo);
        if hi < top {
            starts.push(hi + 1);
        }
    }
    starts.sort_unstable();
    starts.dedup();
    starts
}

impl CidrMap {
    fn build(blocks: &[(IpBlock, u16)]) -> CidrMap {
        if blocks.is_empty() {
            return CidrMap::default();
        }
        let nets = blocks
            .iter()
            .flat_map(|(b, _)| std::iter::once(&b.cidr).chain(&b.except));
        let bounds = interval_starts(nets);
        let mut map = CidrMap::default();
        for start in bounds {
            let mut set = RuleSet::default();
            for (b, rule) in blocks {
                let inside = |net: &IpNet| {
                    let (lo, hi) = net_range(net);
                    (lo..=hi).contains(&start)
                };
                if inside(&b.cidr) && !b.except.iter().any(inside) {
                    set.insert(*rule);
                }
            }
            if map.segments.last().map(|(_, s)| s) != Some(&set) {
                map.segments.push((start, set));
            }
        }
        map
    }

    fn get(&self, ip: IpAddr) -> Option<&RuleSet> {
        if self.segments.is_empty() {
            return None;
        }
        let bits = ip_bits(ip);
        let i = self.segments.partition_point(|(s, _)| *s <= bits) - 1;
        Some(&self.segments[i].1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct CompiledRule {
    /// For an admin policy's rule, `policy` holds its [`AdminId`]'s number.
    id: RuleId,
    /// NetworkPolicy rules accept; admin rules say what they do.
    action: Action,
    /// Empty: every port of every protocol.
    ports: RulePorts,
}

impl CompiledRule {
    #[inline]
    fn ports_match(&self, protocol: u8, port: u16, dst_ports: Option<&PodPorts>) -> bool {
        let ports = self.ports.as_slice();
        ports.is_empty() || ports.iter().any(|p| p.matches(protocol, port, dst_ports))
    }
}

/// The compiled rules of one identity for one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DirTable {
    /// In policy order; a rule's index here is its priority.
    rules: Vec<CompiledRule>,
    /// The policies that isolate this identity in this direction, in order.
    isolated_by: Vec<PolicyId>,
    /// Peer selectors used by the rules, to patch `by_identity`.
    refs: Vec<(SelectorId, u16)>,
    by_identity: FxHashMap<IdentityId, RuleSet>,
    any_pod: RuleSet,
    any_peer: RuleSet,
    v4: CidrMap,
    v6: CidrMap,
}

impl DirTable {
    /// Builds the CIDR maps from the rules' address blocks.
    fn set_blocks(&mut self, blocks: Vec<(IpBlock, u16)>) {
        let (v4, v6): (Vec<_>, Vec<_>) = blocks
            .into_iter()
            .partition(|(b, _)| b.cidr.addr().is_ipv4());
        self.v4 = CidrMap::build(&v4);
        self.v6 = CidrMap::build(&v6);
    }

    /// Sets the identity index's entry for `x` (none when `set` is empty).
    fn set_peer(&mut self, x: IdentityId, set: RuleSet) {
        if set.is_empty() {
            self.by_identity.remove(&x);
        } else {
            self.by_identity.insert(x, set);
        }
    }

    /// The decision of a NetworkPolicy table: the first rule that admits
    /// the flow allows it, and none denies it.
    #[inline]
    fn decide(
        &self,
        peer: Option<&Endpoint>,
        peer_ip: IpAddr,
        protocol: u8,
        port: u16,
        dst_ports: Option<&PodPorts>,
    ) -> Decision {
        let sets = [
            peer.and_then(|p| self.by_identity.get(&p.identity)),
            peer.map(|_| &self.any_pod),
            Some(&self.any_peer),
            match peer_ip {
                IpAddr::V4(_) => self.v4.get(peer_ip),
                IpAddr::V6(_) => self.v6.get(peer_ip),
            },
        ];
        let matches = |i: u16| self.rules[i as usize].ports_match(protocol, port, dst_ports);
        match self.first(&sets, 0..u16::MAX, matches) {
            Some(i) => Decision::Allowed(self.rules[i as usize].id),
            None => Decision::Denied,
        }
    }

    /// The first rule in `range`, in policy order, in any of the peer's
    /// index entries `sets` (read first: independent loads) that `matches`
    /// (its ports). Their union is scanned lowest rule first, and ports are
    /// checked only for candidates.
    #[inline]
    fn first(
        &self,
        sets: &[Option<&RuleSet>],
        range: std::ops::Range<u16>,
        matches: impl Fn(u16) -> bool,
    ) -> Option<u16> {
        let below = |n: u16| 1u64.checked_shl(n as u32).map_or(u64::MAX, |b| b - 1);
        let mask = below(range.end) & !below(range.start);
        let mut bits = sets.iter().flatten().fold(0u64, |acc, s| acc | s.bits) & mask;
        while bits != 0 {
            let i = bits.trailing_zeros() as u16;
            if matches(i) {
                return Some(i);
            }
            bits &= bits - 1;
        }
        // Rules 64 and up (rare: over 64 rules select one identity).
        if range.end <= 64 {
            return None;
        }
        sets.iter()
            .flatten()
            .filter_map(|s| {
                let more = s.more().iter().copied();
                more.filter(|i| range.contains(i)).find(|&i| matches(i))
            })
            .min()
    }
}

/// The tables of one identity; `None`: not isolated in that direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct EndpointTables {
    ingress: Option<DirTable>,
    egress: Option<DirTable>,
}

impl EndpointTables {
    fn dir_mut(&mut self, dir: Direction) -> Option<&mut DirTable> {
        match dir {
            Direction::Ingress => self.ingress.as_mut(),
            Direction::Egress => self.egress.as_mut(),
        }
    }
}

/// A hash map keyed by IP address, one integer-keyed map per family (an
/// integer hashes in one multiply; `IpAddr` hashes byte by byte).
#[derive(Debug, Clone)]
struct AddrMap<V> {
    v4: FxHashMap<u32, V>,
    v6: FxHashMap<u128, V>,
}

impl<V> Default for AddrMap<V> {
    fn default() -> Self {
        AddrMap {
            v4: FxHashMap::default(),
            v6: FxHashMap::default(),
        }
    }
}

impl<V> AddrMap<V> {
    #[inline]
    fn get(&self, ip: &IpAddr) -> Option<&V> {
        match ip {
            IpAddr::V4(a) => self.v4.get(&u32::from(*a)),
            IpAddr::V6(a) => self.v6.get(&u128::from(*a)),
        }
    }

    fn insert(&mut self, ip: IpAddr, v: V) {
        match ip {
            IpAddr::V4(a) => self.v4.insert(u32::from(a), v),
            IpAddr::V6(a) => self.v6.insert(u128::from(a), v),
        };
    }

    fn remove(&mut self, ip: &IpAddr) {
        match ip {
            IpAddr::V4(a) => self.v4.remove(&u32::from(*a)),
            IpAddr::V6(a) => self.v6.remove(&u128::from(*a)),
        };
    }

    fn iter(&self) -> impl Iterator<Item = (IpAddr, &V)> {
        let v4 = self.v4.iter().map(|(k, v)| (IpAddr::V4((*k).into()), v));
        let v6 = self.v6.iter().map(|(k, v)| (IpAddr::V6((*k).into()), v));
        v4.chain(v6)
    }
}

/// What the address map knows about a pod address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    identity: IdentityId,
    ports: PodPorts,
}

#[derive(Debug, Clone)]
struct Identity {
    namespace: String,
    labels: Labels,
    pods: usize,
}

/// A peer selector that does not match every pod (those go to `any_pod`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct PeerSelector {
    namespaces: NamespaceScope,
    pods: Selector,
}

#[derive(Debug, Clone)]
struct SelectorEntry {
    key: PeerSelector,
    matches: FxHashSet<IdentityId>,
    /// Identities whose tables reference this selector, with a count.
    users: FxHashMap<IdentityId, u32>,
    /// References from admin tier tables ([`tiers`]).
    tier_users: u32,
}

#[derive(Debug, Default, Clone)]
struct Identities {
    slots: Vec<Option<Identity>>,
    free: Vec<u32>,
    by_key: FxHashMap<(String, Labels), IdentityId>,
    by_namespace: BTreeMap<String, BTreeSet<IdentityId>>,
}

impl Identities {
    fn get(&self, id: IdentityId) -> &Identity {
        self.slots[id.0 as usize].as_ref().expect("live identity")
    }

    fn live(&self) -> impl Iterator<Item = (IdentityId, &Identity)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (IdentityId(i as u32), s)))
    }
}

#[derive(Debug, Default, Clone)]
struct Selectors {
    slots: Vec<Option<SelectorEntry>>,
    free: Vec<u32>,
    by_key: FxHashMap<PeerSelector, SelectorId>,
}

impl Selectors {
    fn get(&self, id: SelectorId) -> &SelectorEntry {
        self.slots[id.0 as usize].as_ref().expect("live selector")
    }

    /// The rules of `t` whose selectors match identity `x`.
    fn rules_matching(&self, t: &DirTable, x: IdentityId) -> RuleSet {
        let mut set = RuleSet::default();
        for (sid, rule) in &t.refs {
            if self.get(*sid).matches.contains(&x) {
                set.insert(*rule);
            }
        }
        set
    }

    /// Completes a table whose rules, selector references and CIDR blocks
    /// are in: the CIDR maps and the identity index.
    fn finish(&self, t: &mut DirTable, blocks: Vec<(IpBlock, u16)>) {
        t.set_blocks(blocks);
        for (sid, rule) in &t.refs {
            for m in &self.get(*sid).matches {
                t.by_identity.entry(*m).or_default().insert(*rule);
            }
        }
    }
}

fn selector_matches(cluster: &Cluster, key: &PeerSelector, ident: &Identity) -> bool {
    let ns_ok = match &key.namespaces {
        NamespaceScope::Own(ns) => *ns == ident.namespace,
        NamespaceScope::Selector(sel) => cluster
            .namespace_labels(&ident.namespace)
            .is_some_and(|l| sel.matches(l)),
    };
    ns_ok && key.pods.matches(&ident.labels)
}

/// The verdict: each side through the Admin tier, NetworkPolicy, the
/// Baseline tier and the default, in that order.
fn verdict_in(
    endpoints: &AddrMap<Endpoint>,
    tables: &[Option<Arc<EndpointTables>>],
    tiers: &tiers::TierView,
    flow: &Flow,
) -> Verdict {
    let src = endpoints.get(&flow.src);
    let dst = endpoints.get(&flow.dst);
    let dst_ports = dst.map(|d| &d.ports);
    let protocol = flow.protocol.number();
    let side = |me: Option<&Endpoint>, dir: Direction, peer: Option<&Endpoint>, peer_ip: IpAddr| {
        let Some(me) = me else {
            return Decision::NotAPod;
        };
        let tier = tiers.side(me.identity, dir, peer, peer_ip);
        let decide_tier = |t: Tier| tier.as_ref()?.decide(t, protocol, flow.dst_port, dst_ports);
        if let Some(d) = decide_tier(Tier::Admin) {
            return d;
        }
        let table = tables[me.identity.0 as usize]
            .as_deref()
            .and_then(|t| match dir {
                Direction::Ingress => t.ingress.as_ref(),
                Direction::Egress => t.egress.as_ref(),
            });
        match table {
            Some(t) => t.decide(peer, peer_ip, protocol, flow.dst_port, dst_ports),
            None => decide_tier(Tier::Baseline).unwrap_or(Decision::NotIsolated),
        }
    };
    Verdict {
        egress: side(src, Direction::Egress, dst, flow.dst),
        ingress: side(dst, Direction::Ingress, src, flow.src),
    }
}

/// What verdicts need, frozen at one generation: immutable, `Send + Sync`,
/// published to datapath workers (which read it without locks).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    generation: u64,
    endpoints: AddrMap<Endpoint>,
    tables: Vec<Option<Arc<EndpointTables>>>,
    tiers: tiers::TierView,
}

impl Snapshot {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the snapshot knows this address as a pod's.
    pub fn knows(&self, ip: IpAddr) -> bool {
        self.endpoints.get(&ip).is_some()
    }

    pub fn verdict(&self, flow: &Flow) -> Verdict {
        verdict_in(&self.endpoints, &self.tables, &self.tiers, flow)
    }
}

/// The policy engine: cluster state plus its compiled tables.
#[derive(Debug, Default, Clone)]
pub struct Engine {
    cluster: Cluster,
    generation: u64,
    identities: Identities,
    selectors: Selectors,
    endpoints: AddrMap<Endpoint>,
    /// Indexed by identity.
    tables: Vec<Option<Arc<EndpointTables>>>,
    policy_ids: BTreeMap<PolicyKey, PolicyId>,
    policy_keys: Vec<Option<PolicyKey>>,
    /// Grows with every distinct port name ever seen (names are few).
    port_names: PortNames,
    /// The admin tiers' compiled tables ([`tiers`]).
    tiers: tiers::Tiers,
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    /// Compiles a whole cluster at once (the batch path).
    pub fn from_cluster(cluster: Cluster) -> Result<Engine, ModelError> {
        let mut e = Engine::new();
        for ns in cluster.namespaces.values() {
            e.cluster.namespaces.insert(ns.name.clone(), ns.clone());
        }
        for pod in cluster.pods.values() {
            e.insert_pod(pod.clone())?;
        }
        for (key, policy) in cluster.policies {
            if !e.cluster.namespaces.contains_key(&key.namespace) {
                return Err(ModelError::PolicyNamespace { policy: key });
            }
            e.alloc_policy_id(&key);
            e.cluster.policies.insert(key, policy);
        }
        let ids: Vec<IdentityId> = e.identities.live().map(|(id, _)| id).collect();
        for id in ids {
            e.rebuild(id);
        }
        e.cluster.nodes = cluster.nodes;
        e.cluster.admin_policies = cluster.admin_policies;
        e.alloc_admin_ids();
        e.refresh_nets();
        e.retier_all();
        e.generation = 1;
        Ok(e)
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Bumped by every change; a cache entry computed under an older
    /// generation must not be trusted.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn policy_key(&self, id: PolicyId) -> Option<&PolicyKey> {
        self.policy_keys.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// Number of live identities (for metrics and benchmarks).
    pub fn identity_count(&self) -> usize {
        self.identities.by_key.len()
    }

    // ----- the questions -------------------------------------------------

    /// The verdict for a new connection: a few hash and array lookups.
    pub fn verdict(&self, flow: &Flow) -> Verdict {
        verdict_in(&self.endpoints, &self.tables, &self.tiers.view, flow)
    }

    /// A read-only copy of what verdicts need, for the datapath's threads.
    /// Costs a copy of the address map and of the table pointers; the tables
    /// themselves are shared.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            generation: self.generation,
            endpoints: self.endpoints.clone(),
            tables: self.tables.clone(),
            tiers: self.tiers.view.clone(),
        }
    }

    /// The verdict with policy names, and the isolating policies of a denial.
    pub fn explain(&self, flow: &Flow) -> Explanation {
        let v = self.verdict(flow);
        let reason = |d: Decision, ip: IpAddr, dir: Direction| match d {
            Decision::NotAPod => Reason::NotAPod,
            Decision::NotIsolated => Reason::NotIsolated,
            Decision::Allowed(r) => Reason::Allowed {
                policy: self.policy_key(r.policy).cloned().expect("live policy"),
                rule: r.index as usize,
            },
            Decision::AdminAccepted(r) => self.admin_reason(r, Action::Accept),
            Decision::AdminDenied(r) => self.admin_reason(r, Action::Deny),
            Decision::Denied => {
                let id = self.endpoints.get(&ip).expect("isolated pod").identity;
                let t = self.tables[id.0 as usize].as_deref().expect("isolated");
                let dt = match dir {
                    Direction::Ingress => t.ingress.as_ref(),
                    Direction::Egress => t.egress.as_ref(),
                };
                Reason::Denied {
                    isolated_by: dt
                        .map(|dt| {
                            dt.isolated_by
                                .iter()
                                .filter_map(|p| self.policy_key(*p).cloned())
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            }
        };
        Explanation {
            egress: reason(v.egress, flow.src, Direction::Egress),
            ingress: reason(v.ingress, flow.dst, Direction::Ingress),
        }
    }

    // ----- changes -------------------------------------------------------

    /// Applies one change. Deleting what does not exist is not an error.
    pub fn apply(&mut self, change: Change) -> Result<(), ModelError> {
        match change {
            Change::UpsertNamespace(ns) => self.upsert_namespace(ns),
            Change::DeleteNamespace(n) => {
                self.delete_namespace(&n);
            }
            Change::UpsertPod(p) => self.upsert_pod(p)?,
            Change::DeletePod(k) => {
                self.delete_pod(&k);
            }
            Change::UpsertPolicy(p) => self.upsert_policy(p)?,
            Change::DeletePolicy(k) => {
                self.delete_policy(&k);
            }
            Change::UpsertAdminPolicy(p) => self.upsert_admin_policy(p),
            Change::DeleteAdminPolicy(k) => {
                self.delete_admin_policy(&k);
            }
            Change::UpsertNode(n) => self.upsert_node(n),
            Change::DeleteNode(n) => {
                self.delete_node(&n);
            }
        }
        Ok(())
    }

    /// Creates a namespace or replaces its labels.
    pub fn upsert_namespace(&mut self, ns: Namespace) {
        let name = ns.name.clone();
        let old = self.cluster.namespaces.insert(name.clone(), ns);
        self.generation += 1;
        if old.is_none() {
            return; // no identities live in a new namespace yet
        }
        // Re-test namespace-selector entries against this namespace's identities.
        let members: Vec<IdentityId> = self
            .identities
            .by_namespace
            .get(&name)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let mut patches: BTreeSet<(IdentityId, IdentityId)> = BTreeSet::new();
        let mut tier_patches: BTreeSet<IdentityId> = BTreeSet::new();
        for entry in self.selectors.slots.iter_mut().flatten() {
            if !matches!(entry.key.namespaces, NamespaceScope::Selector(_)) {
                continue;
            }
            for &x in &members {
                let now = selector_matches(&self.cluster, &entry.key, self.identities.get(x));
                let changed = if now {
                    entry.matches.insert(x)
                } else {
                    entry.matches.remove(&x)
                };
                if changed {
                    patches.extend(entry.users.keys().map(|&u| (u, x)));
                    if entry.tier_users > 0 {
                        tier_patches.insert(x);
                    }
                }
            }
        }
        for (user, x) in patches {
            self.patch(user, x);
        }
        for x in tier_patches {
            self.reclass(x);
        }
        if !self.cluster.admin_policies.is_empty() {
            self.retier_namespace(&name);
        }
    }

    /// Deletes a namespace with its pods and policies.
    pub fn delete_namespace(&mut self, name: &str) -> bool {
        if !self.cluster.namespaces.contains_key(name) {
            return false;
        }
        let pods: Vec<PodKey> = self
            .cluster
            .pods
            .keys()
            .filter(|k| k.namespace == name)
            .cloned()
            .collect();
        for p in pods {
            self.delete_pod(&p);
        }
        let policies: Vec<PolicyKey> = self
            .namespace_policies(name)
            .map(|(k, _)| k.clone())
            .collect();
        for p in policies {
            self.delete_policy(&p);
        }
        self.cluster.namespaces.remove(name);
        self.generation += 1;
        true
    }

    /// Adds a pod or replaces it (labels, addresses, ports).
    pub fn upsert_pod(&mut self, pod: Pod) -> Result<(), ModelError> {
        if !self.cluster.namespaces.contains_key(&pod.key.namespace) {
            return Err(ModelError::NoNamespace {
                pod: pod.key.clone(),
                namespace: pod.key.namespace.clone(),
            });
        }
        for ip in &pod.ips {
            if let Some(ep) = self.endpoints.get(ip) {
                let owner = self.owner_of(*ip, ep.identity);
                if owner.as_ref() != Some(&pod.key) {
                    return Err(ModelError::AddressInUse {
                        pod: pod.key.clone(),
                        ip: *ip,
                        owner: owner.unwrap_or_else(|| PodKey::new("?", "?")),
                    });
                }
            }
        }
        let old = self.cluster.pods.get(&pod.key).cloned();
        // Take the new identity first so that an unchanged one never dies.
        let new_id = self.acquire_identity(&pod.key.namespace, &pod.labels);
        if let Some(old) = &old {
            self.remove_endpoints(old);
            let old_id = self.identities.by_key[&(old.key.namespace.clone(), old.labels.clone())];
            self.release_identity(old_id);
        }
        self.add_endpoints(&pod, new_id);
        self.cluster.pods.insert(pod.key.clone(), pod);
        self.generation += 1;
        Ok(())
    }

    pub fn delete_pod(&mut self, key: &PodKey) -> bool {
        let Some(old) = self.cluster.pods.remove(key) else {
            return false;
        };
        self.remove_endpoints(&old);
        let id = self.identities.by_key[&(old.key.namespace.clone(), old.labels.clone())];
        self.release_identity(id);
        self.generation += 1;
        true
    }

    /// Creates or replaces a policy (by namespace/name).
    pub fn upsert_policy(&mut self, policy: Policy) -> Result<(), ModelError> {
        let key = policy.key.clone();
        if !self.cluster.namespaces.contains_key(&key.namespace) {
            return Err(ModelError::PolicyNamespace { policy: key });
        }
        let mut affected = self.selected_identities(&policy);
        if let Some(old) = self.cluster.policies.get(&key) {
            affected.extend(self.selected_identities(old));
        }
        self.alloc_policy_id(&key);
        self.cluster.policies.insert(key, policy);
        for id in affected {
            self.rebuild(id);
        }
        self.generation += 1;
        Ok(())
    }

    pub fn delete_policy(&mut self, key: &PolicyKey) -> bool {
        let Some(old) = self.cluster.policies.remove(key) else {
            return false;
        };
        for id in self.selected_identities(&old) {
            self.rebuild(id);
        }
        let pid = self.policy_ids.remove(key).expect("policy id");
        self.policy_keys[pid.0 as usize] = None;
        self.generation += 1;
        true
    }

    // ----- internals -----------------------------------------------------

    fn owner_of(&self, ip: IpAddr, identity: IdentityId) -> Option<PodKey> {
        let ns = &self.identities.get(identity).namespace;
        self.cluster
            .pods
            .range(PodKey::new(ns.clone(), "")..)
            .take_while(|(k, _)| &k.namespace == ns)
            .find(|(_, p)| p.ips.contains(&ip))
            .map(|(k, _)| k.clone())
    }

    fn namespace_policies<'a>(
        &'a self,
        ns: &str,
    ) -> impl Iterator<Item = (&'a PolicyKey, &'a Policy)> + 'a {
        let ns = ns.to_string();
        self.cluster
            .policies
            .range(PolicyKey::new(ns.clone(), "")..)
            .take_while(move |(k, _)| k.namespace == ns)
    }

    fn selected_identities(&self, policy: &Policy) -> BTreeSet<IdentityId> {
        self.identities
            .by_namespace
            .get(&policy.key.namespace)
            .into_iter()
            .flatten()
            .copied()
            .filter(|&id| policy.pod_selector.matches(&self.identities.get(id).labels))
            .collect()
    }

    fn alloc_policy_id(&mut self, key: &PolicyKey) -> PolicyId {
        if let Some(id) = self.policy_ids.get(key) {
            return *id;
        }
        let id = match self.policy_keys.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.policy_keys.push(None);
                self.policy_keys.len() - 1
            }
        };
        self.policy_keys[id] = Some(key.clone());
        let id = PolicyId(id as u32);
        self.policy_ids.insert(key.clone(), id);
        id
    }

    fn insert_pod(&mut self, pod: Pod) -> Result<(), ModelError> {
        self.cluster.check_pod_namespace(&pod)?;
        for ip in &pod.ips {
            if self.endpoints.get(ip).is_some() {
                return Err(ModelError::AddressInUse {
                    pod: pod.key.clone(),
                    ip: *ip,
                    owner: self
                        .owner_of(*ip, self.endpoints.get(ip).expect("present").identity)
                        .unwrap_or_else(|| PodKey::new("?", "?")),
                });
            }
        }
        let id = self.acquire_identity(&pod.key.namespace, &pod.labels);
        self.add_endpoints(&pod, id);
        self.cluster.pods.insert(pod.key.clone(), pod);
        Ok(())
    }

    fn add_endpoints(&mut self, pod: &Pod, identity: IdentityId) {
        let ports = compact::pod_ports(&mut self.port_names, &pod.ports);
        for ip in &pod.ips {
            self.endpoints.insert(
                *ip,
                Endpoint {
                    identity,
                    ports: ports.clone(),
                },
            );
        }
    }

    fn remove_endpoints(&mut self, pod: &Pod) {
        for ip in &pod.ips {
            self.endpoints.remove(ip);
        }
    }

    /// Finds or creates the identity of (namespace, labels) and counts a pod.
    fn acquire_identity(&mut self, namespace: &str, labels: &Labels) -> IdentityId {
        let key = (namespace.to_string(), labels.clone());
        if let Some(&id) = self.identities.by_key.get(&key) {
            self.identities.slots[id.0 as usize]
                .as_mut()
                .expect("live")
                .pods += 1;
            return id;
        }
        let ident = Identity {
            namespace: namespace.to_string(),
            labels: labels.clone(),
            pods: 1,
        };
        let id = match self.identities.free.pop() {
            Some(i) => {
                self.identities.slots[i as usize] = Some(ident);
                IdentityId(i)
            }
            None => {
                self.identities.slots.push(Some(ident));
                IdentityId(self.identities.slots.len() as u32 - 1)
            }
        };
        if self.tables.len() < self.identities.slots.len() {
            self.tables.resize(self.identities.slots.len(), None);
        }
        self.identities.by_key.insert(key, id);
        self.identities
            .by_namespace
            .entry(namespace.to_string())
            .or_default()
            .insert(id);
        // Patch it into every table whose selectors match it.
        let mut users: BTreeSet<IdentityId> = BTreeSet::new();
        let ident = self.identities.get(id);
        for entry in self.selectors.slots.iter_mut().flatten() {
            if selector_matches(&self.cluster, &entry.key, ident) {
                entry.matches.insert(id);
                users.extend(entry.users.keys());
            }
        }
        for u in users {
            self.patch(u, id);
        }
        self.reclass(id);
        self.rebuild(id);
        self.retier(id);
        id
    }

    /// Uncounts a pod; the last one takes the identity with it.
    fn release_identity(&mut self, id: IdentityId) {
        let ident = self.identities.slots[id.0 as usize].as_mut().expect("live");
        ident.pods -= 1;
        if ident.pods > 0 {
            return;
        }
        self.set_tables(id, None);
        self.untier(id);
        let mut users: BTreeSet<IdentityId> = BTreeSet::new();
        for entry in self.selectors.slots.iter_mut().flatten() {
            if entry.matches.remove(&id) {
                users.extend(entry.users.keys());
            }
        }
        for u in users {
            self.patch(u, id);
        }
        self.unclass(id);
        let ident = self.identities.slots[id.0 as usize].take().expect("live");
        self.identities
            .by_key
            .remove(&(ident.namespace.clone(), ident.labels));
        if let Some(set) = self.identities.by_namespace.get_mut(&ident.namespace) {
            set.remove(&id);
            if set.is_empty() {
                self.identities.by_namespace.remove(&ident.namespace);
            }
        }
        self.identities.free.push(id.0);
    }

    /// Recomputes `by_identity[x]` in every table of `user`.
    fn patch(&mut self, user: IdentityId, x: IdentityId) {
        let Some(tables) = self.tables[user.0 as usize].as_mut() else {
            return;
        };
        let tables = Arc::make_mut(tables);
        for dir in [Direction::Ingress, Direction::Egress] {
            let Some(t) = tables.dir_mut(dir) else {
                continue;
            };
            let set = self.selectors.rules_matching(t, x);
            t.set_peer(x, set);
        }
    }

    /// Builds the tables of one identity from the policies that select it.
    fn rebuild(&mut self, id: IdentityId) {
        let ident = self.identities.get(id).clone();
        let mut tables = EndpointTables::default();
        let selecting: Vec<(PolicyId, Policy)> = self
            .namespace_policies(&ident.namespace)
            .filter(|(_, p)| p.pod_selector.matches(&ident.labels))
            .map(|(k, p)| (self.policy_ids[k], p.clone()))
            .collect();
        for dir in [Direction::Ingress, Direction::Egress] {
            let mut table: Option<DirTable> = None;
            let mut blocks: Vec<(IpBlock, u16)> = Vec::new();
            for (pid, policy) in &selecting {
                let Some(rules) = policy.rules(dir) else {
                    continue;
                };
                let t = table.get_or_insert_with(DirTable::default);
                t.isolated_by.push(*pid);
                for (i, rule) in rules.iter().enumerate() {
                    let idx = u16::try_from(t.rules.len())
                        .expect("at most 65535 rules select one identity");
                    t.rules.push(CompiledRule {
                        id: RuleId {
                            policy: *pid,
                            direction: dir,
                            index: i as u16,
                        },
                        action: Action::Accept,
                        ports: RulePorts::from_iter(
                            rule.ports
                                .iter()
                                .map(|p| CPort::new(&mut self.port_names, p)),
                        ),
                    });
                    if rule.peers.is_empty() {
                        t.any_peer.insert(idx);
                    }
                    for peer in &rule.peers {
                        match peer {
                            Peer::IpBlock(b) => blocks.push((b.clone(), idx)),
                            Peer::Pods { namespaces, pods } => {
                                let every_ns = matches!(namespaces, NamespaceScope::Selector(s) if s.is_empty());
                                if every_ns && pods.is_empty() {
                                    t.any_pod.insert(idx);
                                } else {
                                    let key = PeerSelector {
                                        namespaces: namespaces.clone(),
                                        pods: pods.clone(),
                                    };
                                    let sid = self.selector_for(key);
                                    t.refs.push((sid, idx));
                                }
                            }
                        }
                    }
                }
            }
            if let Some(t) = table.as_mut() {
                self.selectors.finish(t, blocks);
            }
            match dir {
                Direction::Ingress => tables.ingress = table,
                Direction::Egress => tables.egress = table,
            }
        }
        let new = (tables.ingress.is_some() || tables.egress.is_some()).then(|| Arc::new(tables));
        self.set_tables(id, new);
    }

    /// Installs an identity's tables, moving selector references.
    fn set_tables(&mut self, id: IdentityId, new: Option<Arc<EndpointTables>>) {
        let refs = |t: &Option<Arc<EndpointTables>>| -> Vec<SelectorId> {
            t.iter()
                .flat_map(|t| t.ingress.iter().chain(t.egress.iter()))
                .flat_map(|d| d.refs.iter().map(|(s, _)| *s))
                .collect()
        };
        for sid in refs(&new) {
            let e = self.selectors.slots[sid.0 as usize].as_mut().expect("live");
            *e.users.entry(id).or_default() += 1;
        }
        let old = std::mem::replace(&mut self.tables[id.0 as usize], new);
        for sid in refs(&old) {
            let e = self.selectors.slots[sid.0 as usize].as_mut().expect("live");
            let n = e.users.get_mut(&id).expect("counted");
            *n -= 1;
            if *n == 0 {
                e.users.remove(&id);
            }
            self.collect_selector(sid);
        }
    }

    /// Frees a selector nothing references any more.
    fn collect_selector(&mut self, sid: SelectorId) {
        let e = self.selectors.slots[sid.0 as usize].as_ref().expect("live");
        if e.users.is_empty() && e.tier_users == 0 {
            let e = self.selectors.slots[sid.0 as usize].take().expect("live");
            self.selectors.by_key.remove(&e.key);
            self.selectors.free.push(sid.0);
        }
    }

    /// The cached selector for a key, evaluated on first use. A new entry has
    /// no users until `set_tables` counts them.
    fn selector_for(&mut self, key: PeerSelector) -> SelectorId {
        if let Some(&sid) = self.selectors.by_key.get(&key) {
            return sid;
        }
        let namespaces: Vec<&str> = match &key.namespaces {
            NamespaceScope::Own(ns) => vec![ns.as_str()],
            NamespaceScope::Selector(sel) => self
                .cluster
                .namespaces
                .values()
                .filter(|n| sel.matches(&n.labels))
                .map(|n| n.name.as_str())
                .collect(),
        };
        let mut matches = FxHashSet::default();
        for ns in namespaces {
            for &id in self.identities.by_namespace.get(ns).into_iter().flatten() {
                if key.pods.matches(&self.identities.get(id).labels) {
                    matches.insert(id);
                }
            }
        }
        let entry = SelectorEntry {
            key: key.clone(),
            matches,
            users: FxHashMap::default(),
            tier_users: 0,
        };
        let sid = match self.selectors.free.pop() {
            Some(i) => {
                self.selectors.slots[i as usize] = Some(entry);
                SelectorId(i)
            }
            None => {
                self.selectors.slots.push(Some(entry));
                SelectorId(self.selectors.slots.len() as u32 - 1)
            }
        };
        self.selectors.by_key.insert(key, sid);
        sid
    }

    /// One direction table in the canonical dump.
    fn dump_dir(
        &self,
        out: &mut String,
        dir: &str,
        dt: &DirTable,
        peers: Vec<(IdentityId, &RuleSet)>,
        rule_name: &dyn Fn(&RuleId) -> String,
        ident_name: &dyn Fn(&IdentityId) -> String,
    ) {
        let names = |s: &RuleSet| {
            s.iter()
                .map(|i| rule_name(&dt.rules[i as usize].id))
                .collect::<Vec<_>>()
        };
        let _ = writeln!(
            out,
            "  {dir} isolated_by={:?}",
            dt.isolated_by
                .iter()
                .map(|p| self.policy_key(*p).expect("live").to_string())
                .collect::<Vec<_>>()
        );
        for r in &dt.rules {
            let ports: Vec<String> = r
                .ports
                .as_slice()
                .iter()
                .map(|p| p.describe(&self.port_names))
                .collect();
            let _ = writeln!(
                out,
                "    rule {} {} ports={ports:?}",
                rule_name(&r.id),
                r.action
            );
        }
        let mut by: Vec<String> = peers
            .iter()
            .map(|(k, s)| format!("{} -> {:?}", ident_name(k), names(s)))
            .collect();
        by.sort();
        for line in by {
            let _ = writeln!(out, "    peer {line}");
        }
        let _ = writeln!(
            out,
            "    any_pod {:?} any_peer {:?}",
            names(&dt.any_pod),
            names(&dt.any_peer)
        );
        for (fam, map) in [("v4", &dt.v4), ("v6", &dt.v6)] {
            for (s, set) in &map.segments {
                let _ = writeln!(out, "    {fam} from {s:#x} {:?}", names(set));
            }
        }
    }

    /// A dump of the compiled state with every id replaced by the names it
    /// stands for, sorted: two engines that compiled the same cluster, by any
    /// path, produce the same text.
    pub fn canonical(&self) -> String {
        let ident_name = |id: &IdentityId| {
            let i = self.identities.get(*id);
            format!("{}{:?}", i.namespace, i.labels)
        };
        let rule_name = |r: &RuleId| {
            format!(
                "{}:{}[{}]",
                self.policy_key(r.policy).expect("live"),
                r.direction,
                r.index
            )
        };
        let mut out = String::new();
        let mut idents: Vec<(String, IdentityId)> = self
            .identities
            .live()
            .map(|(id, _)| (ident_name(&id), id))
            .collect();
        idents.sort();
        for (name, id) in &idents {
            let _ = writeln!(
                out,
                "identity {name} pods={}",
                self.identities.get(*id).pods
            );
            let Some(t) = self.tables[id.0 as usize].as_deref() else {
                continue;
            };
            for (dir, dt) in [("ingress", &t.ingress), ("egress", &t.egress)] {
                let Some(dt) = dt else { continue };
                let peers = dt.by_identity.iter().map(|(k, s)| (*k, s)).collect();
                self.dump_dir(&mut out, dir, dt, peers, &rule_name, &ident_name);
            }
        }
        self.canonical_tiers(&mut out, &ident_name);
        let mut sels: Vec<String> = self
            .selectors
            .slots
            .iter()
            .flatten()
            .map(|e| {
                let mut m: Vec<String> = e.matches.iter().map(ident_name).collect();
                m.sort();
                let mut u: Vec<String> = e
                    .users
                    .iter()
                    .map(|(k, n)| format!("{}x{n}", ident_name(k)))
                    .collect();
                u.sort();
                format!("selector {:?} matches={m:?} users={u:?}", e.key)
            })
            .collect();
        sels.sort();
        for s in sels {
            let _ = writeln!(out, "{s}");
        }
        let mut eps: Vec<String> = self
            .endpoints
            .iter()
            .map(|(ip, e)| {
                let ports: Vec<String> = e
                    .ports
                    .as_slice()
                    .iter()
                    .map(|p| format!("{}={}/{}", self.port_names.name(p.name), p.port, p.protocol))
                    .collect();
                format!("endpoint {ip} {} {ports:?}", ident_name(&e.identity))
            })
            .collect();
        eps.sort();
        for e in eps {
            let _ = writeln!(out, "{e}");
        }
        out
    }
}
