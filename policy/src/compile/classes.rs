//! Peer classes: the peers that the admin tiers cannot tell apart,
//! numbered densely, so an admin tier table indexes its peers by class in
//! short vectors instead of by identity in a hash map and by address in a
//! CIDR map of its own.
//!
//! # Why
//! An admin policy's peers usually name whole namespaces, so a tier
//! table's identity index would hold most identities of the cluster, for
//! every table: memory that grows with tables x identities, and a hash
//! lookup (two cache misses when cold) on every verdict. The selectors
//! that admin rules use are few, and so are the distinct sets of them an
//! identity matches: a cluster with 10,000 identities has tens of classes.
//! Likewise the `networks` and `nodes` addresses of all admin policies are
//! few, and shared by many tables: one address map for all of them stays
//! in cache where a map per table would not.
//!
//! # Peer classes (pods)
//! - An identity's class is the set of *admin selectors* (the cached peer
//!   selectors that some tier table references) that match it. Classes
//!   are interned with a member count; `class_of` (in the snapshot's view)
//!   maps each identity to its class number.
//! - Each tier table's [`TierDir`] has `by_class`: for each class, the
//!   rules whose selectors the class holds, and those that admit every pod
//!   or every peer.
//! - A class appears when its first member does: every tier table gets
//!   its entry. It is freed with its last member: the entries are cleared.
//! - A selector becoming an admin selector (its first tier reference) or
//!   ceasing to be one moves each identity it matches to the class with or
//!   without it. So classes never name a selector that is gone, and a
//!   freed selector number can be reused.
//! - An identity is classed when it appears, unclassed when it vanishes,
//!   and re-classed when its namespace's labels change the selectors it
//!   matches.
//!
//! # Address classes
//! - The address blocks of every admin policy (its `networks`, and the
//!   addresses of the Nodes its `nodes` peers select) cut each family's
//!   address space into intervals; an interval's number is its class.
//! - Each [`TierDir`] has `by_net`: for each address class, the rules
//!   whose blocks cover it (from the table's own blocks).
//! - The intervals change only with admin policies and Nodes; then every
//!   table's `by_net` is refilled.

use super::tiers::TierDir;
use super::*;
use crate::admin::AdminPeer;

/// Sentinel of `class_of`: the identity is not live.
pub(super) const NO_CLASS: u32 = u32::MAX;

/// The interval starts of the admin policies' address blocks, per family;
/// an address's class is its interval's number (IPv6 after IPv4's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct NetClasses {
    v4: Vec<u128>,
    v6: Vec<u128>,
}

impl NetClasses {
    /// Cuts the address space at every block's ends.
    fn build(blocks: &[IpNet]) -> NetClasses {
        let (v4, v6): (Vec<&IpNet>, Vec<&IpNet>) = blocks.iter().partition(|n| n.addr().is_ipv4());
        let starts = |nets: Vec<&IpNet>| {
            if nets.is_empty() {
                Vec::new()
            } else {
                interval_starts(nets)
            }
        };
        NetClasses {
            v4: starts(v4),
            v6: starts(v6),
        }
    }

    /// The class of an address; `None` when no block is of its family.
    #[inline]
    pub(super) fn class_of(&self, ip: IpAddr) -> Option<u32> {
        let (list, base) = match ip {
            IpAddr::V4(_) => (&self.v4, 0),
            IpAddr::V6(_) => (&self.v6, self.v4.len()),
        };
        if list.is_empty() {
            return None;
        }
        let bits = ip_bits(ip);
        Some((base + list.partition_point(|s| *s <= bits) - 1) as u32)
    }

    /// Every class with its first address (as the family's bits).
    fn classes(&self) -> impl Iterator<Item = (bool, u128)> + '_ {
        let v4 = self.v4.iter().map(|s| (true, *s));
        v4.chain(self.v6.iter().map(|s| (false, *s)))
    }
}

/// The admin selectors an identity matches, ascending.
type ClassKey = Vec<SelectorId>;

/// The classes and the admin selectors; `class_of` lives in the view.
#[derive(Debug, Clone, Default)]
pub(super) struct Classes {
    keys: Vec<Option<ClassKey>>,
    members: Vec<u32>,
    by_key: FxHashMap<ClassKey, u32>,
    free: Vec<u32>,
    /// The selectors some tier table references.
    admin: BTreeSet<SelectorId>,
}

impl Engine {
    /// Counts a tier table's reference to a selector; its first makes it
    /// an admin selector, which splits the classes of what it matches.
    pub(super) fn add_tier_user(&mut self, sid: SelectorId) {
        let entry = self.selectors.slots[sid.0 as usize]
            .as_mut()
            .expect("live selector");
        entry.tier_users += 1;
        if entry.tier_users == 1 {
            self.tiers.classes.admin.insert(sid);
            self.rekey_matches(sid, |key| {
                if let Err(at) = key.binary_search(&sid) {
                    key.insert(at, sid);
                }
            });
        }
    }

    /// Uncounts a tier table's reference to a selector; its last merges
    /// the classes that differed by it. The selector may then be freed.
    pub(super) fn remove_tier_user(&mut self, sid: SelectorId) {
        let entry = self.selectors.slots[sid.0 as usize]
            .as_mut()
            .expect("live selector");
        entry.tier_users -= 1;
        if entry.tier_users == 0 {
            self.tiers.classes.admin.remove(&sid);
            self.rekey_matches(sid, |key| key.retain(|s| *s != sid));
        }
    }

    /// Moves every identity `sid` matches to the class of its key as
    /// `change` leaves it.
    fn rekey_matches(&mut self, sid: SelectorId, change: impl Fn(&mut ClassKey)) {
        let mut matched: Vec<IdentityId> =
            self.selectors.get(sid).matches.iter().copied().collect();
        matched.sort_unstable();
        for x in matched {
            let mut key = self.class_key_of(x);
            change(&mut key);
            self.set_class(x, key);
        }
    }

    /// Gives a new identity (or one whose selector matches changed) the
    /// class of the admin selectors that match it now.
    pub(super) fn reclass(&mut self, x: IdentityId) {
        let key: ClassKey = self
            .tiers
            .classes
            .admin
            .iter()
            .copied()
            .filter(|sid| self.selectors.get(*sid).matches.contains(&x))
            .collect();
        self.set_class(x, key);
    }

    /// A vanishing identity leaves its class.
    pub(super) fn unclass(&mut self, x: IdentityId) {
        let of = &mut self.tiers.view.class_of;
        let Some(&old) = of.get(x.0 as usize) else {
            return;
        };
        of[x.0 as usize] = NO_CLASS;
        if old != NO_CLASS {
            self.leave_class(old);
        }
    }

    /// Fills a tier table's class index for every live class.
    pub(super) fn fill_classes(&self, d: &mut TierDir) {
        d.by_class.clear();
        for (c, key) in self.tiers.classes.keys.iter().enumerate() {
            let Some(key) = key else {
                continue;
            };
            let set = rules_of_class(&d.t, key);
            if !set.is_empty() {
                if d.by_class.len() <= c {
                    d.by_class.resize(c + 1, RuleSet::default());
                }
                d.by_class[c] = set;
            }
        }
    }

    /// Fills a tier table's address index from its blocks.
    pub(super) fn fill_nets(&self, d: &mut TierDir) {
        d.by_net.clear();
        if d.blocks.is_empty() {
            return;
        }
        for (c, (v4, start)) in self.tiers.view.nets.classes().enumerate() {
            let mut set = RuleSet::default();
            for (net, rule) in &d.blocks {
                let (lo, hi) = net_range(net);
                if net.addr().is_ipv4() == v4 && (lo..=hi).contains(&start) {
                    set.insert(*rule);
                }
            }
            if !set.is_empty() {
                d.by_net.resize(c + 1, RuleSet::default());
                d.by_net[c] = set;
            }
        }
    }

    /// Recomputes the address classes from the admin policies and Nodes,
    /// and, when they changed, every tier table's address index.
    pub(super) fn refresh_nets(&mut self) {
        let mut blocks: Vec<IpNet> = Vec::new();
        for p in self.cluster.admin_policies.values() {
            for rule in p.ingress.iter().chain(&p.egress) {
                for peer in &rule.peers {
                    match peer {
                        AdminPeer::Networks(nets) => blocks.extend(nets),
                        AdminPeer::Nodes(sel) => {
                            let nodes = self.cluster.nodes.values();
                            for n in nodes.filter(|n| sel.matches(&n.labels)) {
                                blocks.extend(n.addresses.iter().map(|a| IpNet::from(*a)));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let nets = NetClasses::build(&blocks);
        if nets == self.tiers.view.nets {
            return;
        }
        self.tiers.view.nets = nets;
        let mut tables = std::mem::take(&mut self.tiers.view.tables);
        for table in tables.iter_mut().flatten() {
            if table.dirs.iter().flatten().all(|d| d.blocks.is_empty()) {
                continue;
            }
            for d in Arc::make_mut(table).dirs.iter_mut().flatten() {
                self.fill_nets(d);
            }
        }
        self.tiers.view.tables = tables;
    }

    /// The rule set a table holds for an identity (for the canonical dump).
    pub(super) fn class_rules<'t>(&self, d: &'t TierDir, x: IdentityId) -> Option<&'t RuleSet> {
        let c = *self.tiers.view.class_of.get(x.0 as usize)?;
        d.by_class.get(c as usize).filter(|s| !s.is_empty())
    }

    /// The canonical dump of a tier table's address blocks: each block
    /// with the rules its address class holds (class numbers left out).
    pub(super) fn dump_nets(
        &self,
        out: &mut String,
        d: &TierDir,
        rule_name: &dyn Fn(&RuleId) -> String,
    ) {
        let mut lines: Vec<String> = d
            .blocks
            .iter()
            .map(|(net, _)| {
                let rules: Vec<String> = self
                    .tiers
                    .view
                    .nets
                    .class_of(net.network())
                    .and_then(|c| d.by_net.get(c as usize))
                    .map(|s| {
                        s.iter()
                            .map(|i| rule_name(&d.t.rules[i as usize].id))
                            .collect()
                    })
                    .unwrap_or_default();
                format!("    block {net} -> {rules:?}")
            })
            .collect();
        lines.sort();
        lines.dedup();
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
    }

    // ----- internals --------------------------------------------------

    fn class_key_of(&self, x: IdentityId) -> ClassKey {
        match self.tiers.view.class_of.get(x.0 as usize) {
            Some(&c) if c != NO_CLASS => self.tiers.classes.keys[c as usize]
                .clone()
                .expect("live class"),
            _ => ClassKey::new(),
        }
    }

    fn set_class(&mut self, x: IdentityId, key: ClassKey) {
        let of = &mut self.tiers.view.class_of;
        if of.len() <= x.0 as usize {
            of.resize(x.0 as usize + 1, NO_CLASS);
        }
        let old = of[x.0 as usize];
        if old != NO_CLASS && self.tiers.classes.keys[old as usize].as_ref() == Some(&key) {
            return;
        }
        let new = self.join_class(key);
        self.tiers.view.class_of[x.0 as usize] = new;
        if old != NO_CLASS {
            self.leave_class(old);
        }
    }

    fn join_class(&mut self, key: ClassKey) -> u32 {
        let cl = &mut self.tiers.classes;
        if let Some(&c) = cl.by_key.get(&key) {
            cl.members[c as usize] += 1;
            return c;
        }
        let c = match cl.free.pop() {
            Some(c) => c,
            None => {
                cl.keys.push(None);
                cl.members.push(0);
                cl.keys.len() as u32 - 1
            }
        };
        cl.members[c as usize] = 1;
        cl.by_key.insert(key.clone(), c);
        // Every tier table learns what the new class admits.
        for table in self.tiers.view.tables.iter_mut().flatten() {
            for d in 0..table.dirs.len() {
                let Some(t) = table.dirs[d].as_ref() else {
                    continue;
                };
                let set = rules_of_class(&t.t, &key);
                let now = t.by_class.get(c as usize);
                if now.unwrap_or(&RuleSet::default()) == &set {
                    continue;
                }
                let t = Arc::make_mut(table).dirs[d].as_mut().expect("present");
                if t.by_class.len() <= c as usize {
                    t.by_class.resize(c as usize + 1, RuleSet::default());
                }
                t.by_class[c as usize] = set;
            }
        }
        cl.keys[c as usize] = Some(key);
        c
    }

    fn leave_class(&mut self, c: u32) {
        let cl = &mut self.tiers.classes;
        cl.members[c as usize] -= 1;
        if cl.members[c as usize] > 0 {
            return;
        }
        let key = cl.keys[c as usize].take().expect("live class");
        cl.by_key.remove(&key);
        cl.free.push(c);
        for table in self.tiers.view.tables.iter_mut().flatten() {
            for d in 0..table.dirs.len() {
                let stale = table.dirs[d]
                    .as_ref()
                    .and_then(|t| t.by_class.get(c as usize))
                    .is_some_and(|s| !s.is_empty());
                if stale {
                    Arc::make_mut(table).dirs[d]
                        .as_mut()
                        .expect("present")
                        .by_class[c as usize] = RuleSet::default();
                }
            }
        }
    }
}

/// The rules of `t` whose selectors are in the class `key`.
/// The rules of `t` a pod of the class `key` reaches: those whose
/// selectors are in the class, and those of every pod or every peer (so
/// a verdict reads one entry, not three).
fn rules_of_class(t: &DirTable, key: &[SelectorId]) -> RuleSet {
    let mut set = RuleSet::default();
    for i in t.any_pod.iter().chain(t.any_peer.iter()) {
        set.insert(i);
    }
    for (sid, rule) in &t.refs {
        if key.binary_search(sid).is_ok() {
            set.insert(*rule);
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{self, Scale};

    fn live_classes(e: &Engine) -> usize {
        e.tiers.classes.by_key.len()
    }

    /// The point of classes: few of them for many identities, each table's
    /// index as long as the classes, and none left once the admin
    /// policies are gone.
    #[test]
    fn identities_share_few_classes_and_classes_go_with_the_policies() {
        let scale = Scale::new(2_000, 200);
        let mut cluster = synth::scale_cluster(scale, 3);
        let admin = synth::scale_admin_policies(scale, 20, 4);
        for p in &admin {
            cluster.admin_policies.insert(p.key.clone(), p.clone());
        }
        let mut e = Engine::from_cluster(cluster).expect("valid");
        let identities = e.identity_count();
        let classes = live_classes(&e);
        assert!(
            classes > 1 && classes * 10 < identities,
            "{classes} classes for {identities} identities"
        );
        let nets = e.tiers.view.nets.classes().count();
        assert!(nets > 2, "the policies' networks cut the address space");
        let members: u32 = e.tiers.classes.members.iter().sum();
        assert_eq!(members as usize, identities, "every identity in one class");
        for t in e.tiers.view.tables.iter().flatten() {
            for d in t.dirs.iter().flatten() {
                assert!(d.t.by_identity.is_empty(), "tier tables index by class");
                assert!(d.by_class.len() <= e.tiers.classes.keys.len());
                assert!(d.by_net.len() <= nets);
            }
        }
        for p in &admin {
            e.delete_admin_policy(&p.key);
        }
        assert!(e.tiers.classes.admin.is_empty(), "no admin selector left");
        assert_eq!(e.tiers.view.nets.classes().count(), 0, "no block left");
        assert_eq!(live_classes(&e), 1, "one class: matches no admin selector");
    }
    /// Tier tables of more than two words of rules (as large admin
    /// policy sets make) decide as the reference evaluator does.
    #[test]
    fn tables_of_many_rules_equal_the_reference() {
        let scale = Scale::new(1_000, 100);
        let mut cluster = synth::scale_cluster(scale, 5);
        for p in synth::scale_admin_policies(scale, 100, 6) {
            cluster.admin_policies.insert(p.key.clone(), p);
        }
        let e = Engine::from_cluster(cluster.clone()).expect("valid");
        let most = e.tiers.view.tables.iter().flatten();
        let most = most.flat_map(|t| t.dirs.iter().flatten());
        let most = most.map(|d| d.t.rules.len()).max().unwrap_or(0);
        assert!(most > 128, "the largest table has {most} rules");
        let mut rng = synth::Rng::new(9);
        let mut decided_late = 0;
        for _ in 0..20_000 {
            let flow = synth::random_flow(&mut rng, &cluster);
            let want = crate::reference::evaluate(&cluster, &flow);
            assert_eq!(e.explain(&flow), want, "flow {flow:?}");
            let late = |r: &Reason| matches!(r, Reason::Admin { rule, .. } if *rule > 0);
            decided_late += (late(&want.egress) || late(&want.ingress)) as usize;
        }
        assert!(
            decided_late > 100,
            "{decided_late} flows decided by later rules"
        );
    }
}
