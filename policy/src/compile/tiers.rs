//! The admin tiers, compiled: ClusterNetworkPolicy, AdminNetworkPolicy and
//! BaselineAdminNetworkPolicy as tables beside NetworkPolicy's.
//!
//! # How
//! Admin policies select pods across namespaces, and their peers usually
//! name whole namespaces, so a table per identity (as NetworkPolicy has)
//! would cost identities x identities. Instead the identities that the
//! same admin policies select share one [`TierTable`]: its key is the set
//! of selecting policies. A cluster has few such sets (typically one per
//! kind of namespace), so few tables, each built once.
//!
//! A tier table holds, for each direction, a [`TierDir`]: the Admin
//! tier's rules, then the Baseline tier's, each in evaluation order
//! (priority, name, kind; then rule order) with their actions, in
//! NetworkPolicy's table form (every-pod and every-peer indexes) except
//! that peers are indexed by class ([`classes`]): pods by the admin
//! selectors they match, addresses by the admin blocks that cover them,
//! each a short vector instead of a hash map over most identities or a
//! CIDR map per table. A side reads its peer's two index entries once;
//! the Admin tier's first matching rule decides, a Pass rule (or none)
//! hands the side to NetworkPolicy, and when no NetworkPolicy isolates the
//! pod the Baseline tier's first matching rule does, from the same entries.
//!
//! # Incremental updates
//! - An admin policy change rebuilds the tables whose key holds it, then
//!   moves the identities its old or new subject selects to the table of
//!   their new key (made when first needed, dropped with its last user).
//! - A new or vanished identity joins or leaves its peer class (a new
//!   class is patched into every table); it takes the table of its key.
//! - A namespace relabel re-classes the identities whose selector matches
//!   changed and re-keys the namespace's identities (subjects select
//!   namespaces by label).
//! - A node change rebuilds the tables with `nodes` peers.
//!
//! The result equals a full compile; the canonical dump shows it.

use super::*;
use crate::admin::{AdminKey, AdminPeer, AdminPolicy};
use crate::model::NodeInfo;
use crate::verdict::{AdminId, AdminRuleId};

/// No admin policy selects the identity.
const NONE: u32 = u32::MAX;

/// The admin policies selecting an identity, by id, ascending.
type TierKey = Vec<AdminId>;

fn dir_slot(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// One direction of a [`TierTable`]: the Admin tier's rules, then the
/// Baseline tier's from `baseline_from`, in NetworkPolicy's table form for
/// the rules and the every-pod and every-peer indexes, with the selector
/// and address indexes by class ([`classes`]). One table for both tiers,
/// so a side reads its peer's index entries once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct TierDir {
    /// Its identity index and CIDR maps stay empty.
    pub(super) t: DirTable,
    pub(super) baseline_from: u16,
    /// The rules whose selectors admit each peer class.
    pub(super) by_class: Vec<RuleSet>,
    /// The rules whose `networks` or `nodes` admit each address class.
    pub(super) by_net: Vec<RuleSet>,
    /// Those rules' address blocks, to refill `by_net`.
    pub(super) blocks: Vec<(IpNet, u16)>,
}

/// The compiled admin rules of the identities one set of admin policies
/// selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct TierTable {
    /// Ingress, egress.
    pub(super) dirs: [Option<TierDir>; 2],
    /// Every selector reference of the table (to release them).
    selectors: Vec<SelectorId>,
    /// Some rule has a `nodes` peer (node changes rebuild the table).
    has_nodes: bool,
}

/// The tiers of one side of a flow.
pub(super) struct TierSide<'a> {
    d: &'a TierDir,
    sets: [Option<&'a RuleSet>; 2],
    dir: Direction,
}

impl TierSide<'_> {
    /// A tier's decision, `None` when no rule matched or a Pass rule did.
    #[inline]
    pub(super) fn decide(
        &self,
        tier: Tier,
        protocol: u8,
        port: u16,
        dst_ports: Option<&PodPorts>,
    ) -> Option<Decision> {
        let range = match tier {
            Tier::Admin => 0..self.d.baseline_from,
            Tier::Baseline => self.d.baseline_from..u16::MAX,
        };
        let t = &self.d.t;
        let matches = |i: u16| t.rules[i as usize].ports_match(protocol, port, dst_ports);
        let r = &t.rules[t.first(&self.sets, range, matches)? as usize];
        let id = AdminRuleId {
            policy: AdminId(r.id.policy.0),
            direction: self.dir,
            index: r.id.index,
        };
        match r.action {
            Action::Accept => Some(Decision::AdminAccepted(id)),
            Action::Deny => Some(Decision::AdminDenied(id)),
            Action::Pass => None,
        }
    }
}

/// What verdicts read: each identity's table and peer class.
#[derive(Debug, Clone, Default)]
pub(super) struct TierView {
    of: Vec<u32>,
    pub(super) tables: Vec<Option<Arc<TierTable>>>,
    /// By identity ([`classes`]).
    pub(super) class_of: Vec<u32>,
    /// The address classes ([`classes`]).
    pub(super) nets: classes::NetClasses,
}

impl TierView {
    #[inline]
    pub(super) fn of(&self, id: IdentityId) -> Option<&TierTable> {
        match self.of.get(id.0 as usize) {
            Some(&i) if i != NONE => self.tables[i as usize].as_deref(),
            _ => None,
        }
    }

    /// The tiers of one side of a flow: `me`'s table for `dir`, with the
    /// peer's entries read once (by its identity's class when it is a pod,
    /// by its address's class when the table has address rules). `None`:
    /// no admin rule of either tier reaches the peer.
    #[inline]
    pub(super) fn side(
        &self,
        me: IdentityId,
        dir: Direction,
        peer: Option<&Endpoint>,
        peer_ip: IpAddr,
    ) -> Option<TierSide<'_>> {
        let d = self.of(me)?.dirs[dir_slot(dir)].as_ref()?;
        // A pod's class entry holds the every-pod and every-peer rules.
        let by_peer = match peer {
            Some(p) => {
                let c = self.class_of.get(p.identity.0 as usize).copied();
                c.and_then(|c| d.by_class.get(c as usize))
            }
            None => Some(&d.t.any_peer),
        };
        let by_net = match d.by_net.is_empty() {
            true => None,
            false => self
                .nets
                .class_of(peer_ip)
                .and_then(|c| d.by_net.get(c as usize)),
        };
        let sets = [by_peer, by_net];
        if sets.iter().flatten().all(|s| s.is_empty()) {
            return None;
        }
        Some(TierSide { d, sets, dir })
    }
}

/// The engine's admin state: the view, the tables' keys and users, and
/// the admin policies' ids.
#[derive(Debug, Clone, Default)]
pub(super) struct Tiers {
    pub(super) view: TierView,
    keys: Vec<Option<TierKey>>,
    users: Vec<u32>,
    by_key: FxHashMap<TierKey, u32>,
    free: Vec<u32>,
    ids: BTreeMap<AdminKey, AdminId>,
    names: Vec<Option<AdminKey>>,
    pub(super) classes: classes::Classes,
}

impl Tiers {
    pub(super) fn name(&self, id: AdminId) -> Option<&AdminKey> {
        self.names.get(id.0 as usize).and_then(Option::as_ref)
    }
}

impl Engine {
    // ----- the admin changes ------------------------------------------

    /// Creates or replaces an admin policy (by kind and name).
    pub fn upsert_admin_policy(&mut self, policy: AdminPolicy) {
        let key = policy.key.clone();
        let id = self.alloc_admin_id(&key);
        let old = self.cluster.admin_policies.insert(key, policy.clone());
        self.rebuild_tier_tables(|k, _| k.contains(&id));
        self.retier_selected(old.as_ref(), Some(&policy));
        self.refresh_nets();
        self.generation += 1;
    }

    pub fn delete_admin_policy(&mut self, key: &AdminKey) -> bool {
        let Some(old) = self.cluster.admin_policies.remove(key) else {
            return false;
        };
        self.retier_selected(Some(&old), None);
        let id = self.tiers.ids.remove(key).expect("admin id");
        self.tiers.names[id.0 as usize] = None;
        self.refresh_nets();
        self.generation += 1;
        true
    }

    /// Adds or replaces a node (its labels and addresses).
    pub fn upsert_node(&mut self, node: NodeInfo) {
        self.cluster.nodes.insert(node.name.clone(), node);
        self.rebuild_tier_tables(|_, t| t.has_nodes);
        self.refresh_nets();
        self.generation += 1;
    }

    pub fn delete_node(&mut self, name: &str) -> bool {
        if self.cluster.nodes.remove(name).is_none() {
            return false;
        }
        self.rebuild_tier_tables(|_, t| t.has_nodes);
        self.refresh_nets();
        self.generation += 1;
        true
    }

    /// The admin policy an id stands for.
    pub fn admin_key(&self, id: AdminId) -> Option<&AdminKey> {
        self.tiers.name(id)
    }

    // ----- identities -------------------------------------------------

    /// Gives an identity the table of the admin policies that select it now.
    pub(super) fn retier(&mut self, id: IdentityId) {
        let key = self.tier_key(id);
        let of = &mut self.tiers.view.of;
        if of.len() <= id.0 as usize {
            of.resize(id.0 as usize + 1, NONE);
        }
        let old = of[id.0 as usize];
        if old != NONE && self.tiers.keys[old as usize].as_ref() == Some(&key) {
            return;
        }
        if old == NONE && key.is_empty() {
            return;
        }
        let new = if key.is_empty() {
            NONE
        } else {
            self.acquire_tier(key)
        };
        self.tiers.view.of[id.0 as usize] = new;
        if old != NONE {
            self.release_tier(old);
        }
    }

    /// An identity about to vanish gives up its table.
    pub(super) fn untier(&mut self, id: IdentityId) {
        let Some(&old) = self.tiers.view.of.get(id.0 as usize) else {
            return;
        };
        self.tiers.view.of[id.0 as usize] = NONE;
        if old != NONE {
            self.release_tier(old);
        }
    }

    /// Re-keys the identities of a namespace whose labels changed.
    pub(super) fn retier_namespace(&mut self, ns: &str) {
        let members: Vec<IdentityId> = self
            .identities
            .by_namespace
            .get(ns)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for id in members {
            self.retier(id);
        }
    }

    /// Re-keys every identity from scratch (a full compile).
    pub(super) fn retier_all(&mut self) {
        let ids: Vec<IdentityId> = self.identities.live().map(|(id, _)| id).collect();
        for id in ids {
            self.retier(id);
        }
    }

    // ----- internals --------------------------------------------------

    fn alloc_admin_id(&mut self, key: &AdminKey) -> AdminId {
        if let Some(id) = self.tiers.ids.get(key) {
            return *id;
        }
        let names = &mut self.tiers.names;
        let i = match names.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                names.push(None);
                names.len() - 1
            }
        };
        names[i] = Some(key.clone());
        let id = AdminId(i as u32);
        self.tiers.ids.insert(key.clone(), id);
        id
    }

    /// Registers the admin policies of a whole cluster (a full compile).
    pub(super) fn alloc_admin_ids(&mut self) {
        let keys: Vec<AdminKey> = self.cluster.admin_policies.keys().cloned().collect();
        for k in keys {
            self.alloc_admin_id(&k);
        }
    }

    fn tier_key(&self, id: IdentityId) -> TierKey {
        let ident = self.identities.get(id);
        let none = Labels::new();
        let ns = self
            .cluster
            .namespace_labels(&ident.namespace)
            .unwrap_or(&none);
        let mut key: TierKey = self
            .cluster
            .admin_policies
            .values()
            .filter(|p| p.subject.selects(ns, &ident.labels))
            .map(|p| self.tiers.ids[&p.key])
            .collect();
        key.sort_unstable();
        key
    }

    /// Moves the identities that `old` or `new` selects to their new key.
    fn retier_selected(&mut self, old: Option<&AdminPolicy>, new: Option<&AdminPolicy>) {
        let none = Labels::new();
        let affected: Vec<IdentityId> = self
            .identities
            .live()
            .filter(|(_, ident)| {
                let ns = self
                    .cluster
                    .namespace_labels(&ident.namespace)
                    .unwrap_or(&none);
                [old, new]
                    .into_iter()
                    .flatten()
                    .any(|p| p.subject.selects(ns, &ident.labels))
            })
            .map(|(id, _)| id)
            .collect();
        for id in affected {
            self.retier(id);
        }
    }

    fn acquire_tier(&mut self, key: TierKey) -> u32 {
        if let Some(&i) = self.tiers.by_key.get(&key) {
            self.tiers.users[i as usize] += 1;
            return i;
        }
        let table = self.build_tier_table(&key);
        let t = &mut self.tiers;
        let i = match t.free.pop() {
            Some(i) => i,
            None => {
                t.view.tables.push(None);
                t.keys.push(None);
                t.users.push(0);
                t.view.tables.len() as u32 - 1
            }
        };
        t.view.tables[i as usize] = Some(Arc::new(table));
        t.keys[i as usize] = Some(key.clone());
        t.users[i as usize] = 1;
        t.by_key.insert(key, i);
        i
    }

    fn release_tier(&mut self, i: u32) {
        let t = &mut self.tiers;
        t.users[i as usize] -= 1;
        if t.users[i as usize] > 0 {
            return;
        }
        let key = t.keys[i as usize].take().expect("live table");
        t.by_key.remove(&key);
        let table = t.view.tables[i as usize].take().expect("live table");
        t.free.push(i);
        self.release_tier_selectors(&table.selectors);
    }

    fn release_tier_selectors(&mut self, sids: &[SelectorId]) {
        for &sid in sids {
            self.remove_tier_user(sid);
            self.collect_selector(sid);
        }
    }

    /// Rebuilds the live tables `which` picks (by key and content).
    fn rebuild_tier_tables(&mut self, which: impl Fn(&TierKey, &TierTable) -> bool) {
        for i in 0..self.tiers.keys.len() {
            let (Some(key), Some(table)) = (&self.tiers.keys[i], &self.tiers.view.tables[i]) else {
                continue;
            };
            if !which(key, table) {
                continue;
            }
            let key = key.clone();
            let new = self.build_tier_table(&key);
            let old = self.tiers.view.tables[i].replace(Arc::new(new));
            self.release_tier_selectors(&old.expect("live").selectors);
        }
    }

    /// Compiles the rules of the admin policies in `key`, in evaluation
    /// order, for each tier and direction.
    fn build_tier_table(&mut self, key: &TierKey) -> TierTable {
        let mut policies: Vec<(AdminId, AdminPolicy)> = key
            .iter()
            .filter_map(|id| {
                let name = self.tiers.name(*id)?;
                Some((*id, self.cluster.admin_policies.get(name)?.clone()))
            })
            .collect();
        policies.sort_by(|(_, a), (_, b)| a.order().cmp(&b.order()));
        let mut table = TierTable::default();
        for dir in [Direction::Ingress, Direction::Egress] {
            let mut t = DirTable::default();
            let mut blocks: Vec<(IpNet, u16)> = Vec::new();
            let mut baseline_from = 0;
            for tier in [Tier::Admin, Tier::Baseline] {
                if tier == Tier::Baseline {
                    baseline_from = t.rules.len() as u16;
                }
                for (id, p) in policies.iter().filter(|(_, p)| p.tier == tier) {
                    for (i, rule) in p.rules(dir).iter().enumerate() {
                        let idx = u16::try_from(t.rules.len())
                            .expect("at most 65535 admin rules select one identity");
                        let id = RuleId {
                            policy: PolicyId(id.0),
                            direction: dir,
                            index: i as u16,
                        };
                        if rule.matches_nothing() {
                            // fails closed: a rule no peer reaches
                            t.rules.push(CompiledRule {
                                id,
                                action: rule.action,
                                ports: RulePorts::from_iter([CPort::nothing()]),
                            });
                            continue;
                        }
                        if rule.denies_all() {
                            // fails closed: every peer, every port
                            t.rules.push(CompiledRule {
                                id,
                                action: Action::Deny,
                                ports: RulePorts::from_iter([]),
                            });
                            t.any_peer.insert(idx);
                            continue;
                        }
                        let ports: Vec<CPort> = match &rule.ports {
                            None => vec![],
                            Some(ports) if ports.is_empty() => vec![CPort::nothing()],
                            Some(ports) => ports
                                .iter()
                                .map(|p| CPort::new(&mut self.port_names, p))
                                .collect(),
                        };
                        t.rules.push(CompiledRule {
                            id,
                            action: rule.action,
                            ports: RulePorts::from_iter(ports),
                        });
                        for peer in &rule.peers {
                            let (namespaces, pods) = match peer {
                                AdminPeer::Namespaces(ns) => (ns, Selector::everything()),
                                AdminPeer::Pods { namespaces, pods } => (namespaces, pods.clone()),
                                AdminPeer::Networks(nets) => {
                                    blocks.extend(nets.iter().map(|n| (*n, idx)));
                                    continue;
                                }
                                AdminPeer::Nodes(sel) => {
                                    table.has_nodes = true;
                                    for n in self.cluster.nodes.values() {
                                        if !sel.matches(&n.labels) {
                                            continue;
                                        }
                                        for a in &n.addresses {
                                            blocks.push((IpNet::from(*a), idx));
                                        }
                                    }
                                    continue;
                                }
                            };
                            if namespaces.is_empty() && pods.is_empty() {
                                t.any_pod.insert(idx);
                                continue;
                            }
                            let sid = self.selector_for(PeerSelector {
                                namespaces: NamespaceScope::Selector(namespaces.clone()),
                                pods,
                            });
                            self.add_tier_user(sid);
                            table.selectors.push(sid);
                            t.refs.push((sid, idx));
                        }
                    }
                }
            }
            if t.rules.is_empty() {
                continue;
            }
            table.dirs[dir_slot(dir)] = Some(TierDir {
                t,
                baseline_from,
                blocks,
                ..TierDir::default()
            });
        }
        // Last, once every selector of the table has split the classes.
        for d in table.dirs.iter_mut().flatten() {
            self.fill_classes(d);
            self.fill_nets(d);
        }
        table
    }

    /// The explanation of an admin rule's decision.
    pub(super) fn admin_reason(&self, r: AdminRuleId, action: Action) -> Reason {
        let key = self
            .tiers
            .name(r.policy)
            .cloned()
            .expect("live admin policy");
        let p = &self.cluster.admin_policies[&key];
        Reason::Admin {
            tier: p.tier,
            name: p
                .rules(r.direction)
                .get(r.index as usize)
                .and_then(|rule| rule.name.clone()),
            policy: key,
            rule: r.index as usize,
            action,
        }
    }

    /// The canonical dump of the tiers: each identity's policies, then each
    /// table under the names of its policies.
    pub(super) fn canonical_tiers(
        &self,
        out: &mut String,
        ident_name: &dyn Fn(&IdentityId) -> String,
    ) {
        let names = |key: &TierKey| -> Vec<String> {
            let mut v: Vec<String> = key
                .iter()
                .map(|id| self.tiers.name(*id).expect("live").to_string())
                .collect();
            v.sort();
            v
        };
        let mut lines: Vec<String> = self
            .identities
            .live()
            .filter_map(|(id, _)| {
                let t = *self.tiers.view.of.get(id.0 as usize)?;
                (t != NONE).then(|| {
                    let key = self.tiers.keys[t as usize].as_ref().expect("live");
                    format!("tier {} -> {:?}", ident_name(&id), names(key))
                })
            })
            .collect();
        lines.sort();
        let mut tables: Vec<(Vec<String>, usize)> = self
            .tiers
            .keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| Some((names(k.as_ref()?), i)))
            .collect();
        tables.sort();
        for (name, i) in tables {
            let t = self.tiers.view.tables[i].as_ref().expect("live");
            let _ = writeln!(
                out,
                "tier table {name:?} users={} nodes={}",
                self.tiers.users[i], t.has_nodes
            );
            for dir in [Direction::Ingress, Direction::Egress] {
                let Some(d) = &t.dirs[dir_slot(dir)] else {
                    continue;
                };
                let rule_name = |r: &RuleId| {
                    let k = self.tiers.name(AdminId(r.policy.0)).expect("live");
                    format!("{k}:{}[{}]", r.direction, r.index)
                };
                let peers = self
                    .identities
                    .live()
                    .filter_map(|(x, _)| Some((x, self.class_rules(d, x)?)))
                    .collect();
                let what = format!("{dir} baseline_from={}", d.baseline_from);
                self.dump_dir(out, &what, &d.t, peers, &rule_name, ident_name);
                self.dump_nets(out, d, &rule_name);
            }
        }
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
    }
}
