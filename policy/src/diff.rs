//! The changes between two clusters: what a daemon applies to its
//! [`Engine`](crate::Engine) when a new desired cluster arrives, so that
//! only what changed is recompiled.

use crate::model::{Change, Cluster};

/// The changes that turn `from` into `to`: namespaces first, then pods,
/// policies, admin policies and nodes, deletions of namespaces last.
pub fn diff(from: &Cluster, to: &Cluster) -> Vec<Change> {
    let mut out = Vec::new();
    for (name, ns) in &to.namespaces {
        if from.namespaces.get(name) != Some(ns) {
            out.push(Change::UpsertNamespace(ns.clone()));
        }
    }
    // Deleting pods before upserting frees addresses a moved pod reuses.
    for key in from.pods.keys() {
        if !to.pods.contains_key(key) {
            out.push(Change::DeletePod(key.clone()));
        }
    }
    for (key, pod) in &to.pods {
        if from.pods.get(key) != Some(pod) {
            out.push(Change::UpsertPod(pod.clone()));
        }
    }
    for key in from.policies.keys() {
        if !to.policies.contains_key(key) {
            out.push(Change::DeletePolicy(key.clone()));
        }
    }
    for (key, p) in &to.policies {
        if from.policies.get(key) != Some(p) {
            out.push(Change::UpsertPolicy(p.clone()));
        }
    }
    for key in from.admin_policies.keys() {
        if !to.admin_policies.contains_key(key) {
            out.push(Change::DeleteAdminPolicy(key.clone()));
        }
    }
    for (key, p) in &to.admin_policies {
        if from.admin_policies.get(key) != Some(p) {
            out.push(Change::UpsertAdminPolicy(p.clone()));
        }
    }
    for name in from.nodes.keys() {
        if !to.nodes.contains_key(name) {
            out.push(Change::DeleteNode(name.clone()));
        }
    }
    for (name, n) in &to.nodes {
        if from.nodes.get(name) != Some(n) {
            out.push(Change::UpsertNode(n.clone()));
        }
    }
    for name in from.namespaces.keys() {
        if !to.namespaces.contains_key(name) {
            out.push(Change::DeleteNamespace(name.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Engine;
    use crate::synth::{Rng, random_change, random_cluster};

    /// Applying the diff of two clusters to an engine holding the first
    /// gives the engine a full compile of the second gives.
    #[test]
    fn diff_turns_one_cluster_into_another() {
        let mut rng = Rng::new(7);
        for _ in 0..60 {
            let a = random_cluster(&mut rng);
            let mut b = a.clone();
            for _ in 0..8 {
                b.apply(&random_change(&mut rng, &b));
            }
            if Engine::from_cluster(b.clone()).is_err() {
                continue;
            }
            let mut e = Engine::from_cluster(a.clone()).expect("valid");
            for c in diff(&a, &b) {
                e.apply(c).expect("diff applies");
            }
            let full = Engine::from_cluster(b).expect("valid");
            assert_eq!(e.canonical(), full.canonical());
        }
    }

    #[test]
    fn the_same_cluster_needs_no_change() {
        let mut rng = Rng::new(11);
        for _ in 0..20 {
            let a = random_cluster(&mut rng);
            assert!(diff(&a, &a).is_empty());
        }
    }

    /// A namespace goes in before anything in it, and out after: the
    /// engine refuses a pod in a namespace it does not know.
    #[test]
    fn namespaces_come_first_and_leave_last() {
        let mut rng = Rng::new(3);
        let a = random_cluster(&mut rng);
        let empty = Cluster::default();
        let up = diff(&empty, &a);
        let first_other = up
            .iter()
            .position(|c| !matches!(c, Change::UpsertNamespace(_)))
            .unwrap_or(up.len());
        assert!(
            up[first_other..]
                .iter()
                .all(|c| !matches!(c, Change::UpsertNamespace(_)))
        );
        let down = diff(&a, &empty);
        let first_ns = down
            .iter()
            .position(|c| matches!(c, Change::DeleteNamespace(_)))
            .unwrap_or(down.len());
        assert!(
            down[first_ns..]
                .iter()
                .all(|c| matches!(c, Change::DeleteNamespace(_)))
        );
        assert_eq!(
            down.len(),
            a.namespaces.len()
                + a.pods.len()
                + a.policies.len()
                + a.admin_policies.len()
                + a.nodes.len()
        );
    }
}
