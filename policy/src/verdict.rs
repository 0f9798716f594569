//! Flows and verdicts.
//!
//! A verdict is about a *new* connection: replies of an allowed connection are
//! allowed whatever the policies say, and that is the datapath's conntrack's
//! job. A verdict always says which side decided and how: the egress side of
//! the source pod and the ingress side of the destination pod each either do
//! not isolate, allow by a named rule, or deny because the pod is isolated in
//! that direction and no rule allowed the flow. With admin policies, a rule
//! of the Admin tier (before NetworkPolicy) or of the Baseline tier (after
//! it) may decide a side instead: the verdict then names the tier, the
//! policy and the rule.

use std::fmt;
use std::net::IpAddr;

use crate::admin::{Action, AdminKey, Tier};
use crate::model::Protocol;
use crate::netpol::{Direction, PolicyKey};

/// A new connection attempt, as the first packet of it shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    /// Destination port; 0 for protocols without ports.
    pub dst_port: u16,
}

/// Identifies a policy inside an [`crate::Engine`]; stable while it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId(pub u32);

/// One rule of one policy, in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId {
    pub policy: PolicyId,
    pub direction: Direction,
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub index: u16,
}

/// Identifies an admin policy inside an [`crate::Engine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdminId(pub u32);

/// One rule of one admin policy, in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AdminRuleId {
    pub policy: AdminId,
    pub direction: Direction,
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub index: u16,
}

/// How one side (the source's egress or the destination's ingress) decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The endpoint is not a pod of the cluster: no policy applies.
    NotAPod,
    /// No policy selects the pod for this direction: not isolated.
    NotIsolated,
    /// The pod is isolated and this rule (the first in policy order) allows it.
    Allowed(RuleId),
    /// The pod is isolated and no rule allows the flow.
    Denied,
    /// An admin policy's rule (Admin or Baseline tier) accepted the flow.
    AdminAccepted(AdminRuleId),
    /// An admin policy's rule (Admin or Baseline tier) denied the flow.
    AdminDenied(AdminRuleId),
}

impl Decision {
    pub fn allows(self) -> bool {
        !matches!(self, Decision::Denied | Decision::AdminDenied(_))
    }
}

/// The fast verdict: `Copy`, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verdict {
    pub egress: Decision,
    pub ingress: Decision,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

/// A decision with names instead of ids, for people and for comparing the
/// compiled engine with the reference evaluator.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    NotAPod,
    NotIsolated,
    Allowed {
        policy: PolicyKey,
        rule: usize,
    },
    /// Isolated by these policies (sorted), and none of their rules allow it.
    Denied {
        isolated_by: Vec<PolicyKey>,
    },
    /// A rule of an admin policy decided: `action` is Accept or Deny.
    Admin {
        tier: Tier,
        policy: AdminKey,
        rule: usize,
        /// The rule's `name`, if it has one.
        name: Option<String>,
        action: Action,
    },
}

impl Reason {
    pub fn allows(&self) -> bool {
        match self {
            Reason::Denied { .. } => false,
            Reason::Admin { action, .. } => *action == Action::Accept,
            _ => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Explanation {
    pub egress: Reason,
    pub ingress: Reason,
}

impl Explanation {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }

    /// The side that decided: a denying side, else the rules that allowed.
    pub fn summary(&self) -> String {
        let side = |dir: Direction, r: &Reason| match r {
            Reason::NotAPod => format!("{dir}: not a pod"),
            Reason::NotIsolated => format!("{dir}: not isolated"),
            Reason::Allowed { policy, rule } => format!("{dir}: allowed by {policy} {dir}[{rule}]"),
            Reason::Denied { isolated_by } => format!(
                "{dir}: denied, isolated by {} and no rule allows it",
                isolated_by
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Reason::Admin {
                tier,
                policy,
                rule,
                name,
                action,
            } => {
                let verb = if *action == Action::Accept {
                    "accepted"
                } else {
                    "denied"
                };
                let name = name
                    .as_ref()
                    .map(|n| format!(" \"{n}\""))
                    .unwrap_or_default();
                format!("{dir}: {verb} by {tier} tier {policy} {dir}[{rule}]{name}")
            }
        };
        format!(
            "{}; {}",
            side(Direction::Egress, &self.egress),
            side(Direction::Ingress, &self.ingress)
        )
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}
