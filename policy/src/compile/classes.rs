//! Peer classes: the identities that the admin tiers' selectors cannot
//! tell apart, numbered densely, so an admin tier table indexes its peers
//! by class in a short vector instead of by identity in a hash map.
//!
//! # Why
//! An admin policy's peers usually name whole namespaces, so a tier
//! table's identity index would hold most identities of the cluster, for
//! every table: memory that grows with tables x identities, and a hash
//! lookup (two cache misses when cold) on every verdict. The selectors
//! that admin rules use are few, and so are the distinct sets of them an
//! identity matches: a cluster with 10,000 identities has tens of classes.
//!
//! # How
//! - An identity's class is the set of *admin selectors* (the cached peer
//!   selectors that some tier table references) that match it. Classes
//!   are interned with a member count; `class_of` (in the snapshot's view)
//!   maps each identity to its class number.
//! - Each tier table's [`DirTable`] has `by_class`: for each class, the
//!   rules whose selectors the class holds.
//! - A class appears when its first member does: every tier table gets
//!   its entry. It is freed with its last member: the entries are cleared.
//! - A selector becoming an admin selector (its first tier reference) or
//!   ceasing to be one moves each identity it matches to the class with or
//!   without it. So classes never name a selector that is gone, and a
//!   freed selector number can be reused.
//! - An identity is classed when it appears, unclassed when it vanishes,
//!   and re-classed when its namespace's labels change the selectors it
//!   matches.

use super::*;

/// Sentinel of `class_of`: the identity is not live.
pub(super) const NO_CLASS: u32 = u32::MAX;

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
        if entry.tier_users > 1 {
            return;
        }
        self.tiers.classes.admin.insert(sid);
        let mut matched: Vec<IdentityId> = entry.matches.iter().copied().collect();
        matched.sort_unstable();
        for x in matched {
            let mut key = self.class_key_of(x);
            if let Err(at) = key.binary_search(&sid) {
                key.insert(at, sid);
            }
            self.set_class(x, key);
        }
    }

    /// Uncounts a tier table's reference to a selector; its last merges
    /// the classes that differed by it. The selector may then be freed.
    pub(super) fn remove_tier_user(&mut self, sid: SelectorId) {
        let entry = self.selectors.slots[sid.0 as usize]
            .as_mut()
            .expect("live selector");
        entry.tier_users -= 1;
        if entry.tier_users > 0 {
            return;
        }
        self.tiers.classes.admin.remove(&sid);
        let mut matched: Vec<IdentityId> = entry.matches.iter().copied().collect();
        matched.sort_unstable();
        for x in matched {
            let mut key = self.class_key_of(x);
            key.retain(|s| *s != sid);
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
    pub(super) fn fill_classes(&self, t: &mut DirTable) {
        t.by_class.clear();
        for (c, key) in self.tiers.classes.keys.iter().enumerate() {
            let Some(key) = key else {
                continue;
            };
            let set = rules_of_class(t, key);
            if !set.is_empty() {
                if t.by_class.len() <= c {
                    t.by_class.resize(c + 1, RuleSet::default());
                }
                t.by_class[c] = set;
            }
        }
    }

    /// The rule set a table holds for an identity (for the canonical dump).
    pub(super) fn class_rules<'t>(&self, t: &'t DirTable, x: IdentityId) -> Option<&'t RuleSet> {
        let c = *self.tiers.view.class_of.get(x.0 as usize)?;
        t.by_class.get(c as usize).filter(|s| !s.is_empty())
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
            for d in 0..4 {
                let Some(t) = table.dirs[d].as_ref() else {
                    continue;
                };
                let set = rules_of_class(t, &key);
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
            for d in 0..4 {
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
fn rules_of_class(t: &DirTable, key: &[SelectorId]) -> RuleSet {
    let mut set = RuleSet::default();
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
        let members: u32 = e.tiers.classes.members.iter().sum();
        assert_eq!(members as usize, identities, "every identity in one class");
        for t in e.tiers.view.tables.iter().flatten() {
            for dt in t.dirs.iter().flatten() {
                assert!(dt.by_identity.is_empty(), "tier tables index by class");
                assert!(dt.by_class.len() <= e.tiers.classes.keys.len());
            }
        }
        for p in &admin {
            e.delete_admin_policy(&p.key);
        }
        assert!(e.tiers.classes.admin.is_empty(), "no admin selector left");
        assert_eq!(live_classes(&e), 1, "one class: matches no admin selector");
    }
}
