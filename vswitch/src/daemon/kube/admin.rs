//! The admin policy kinds as the API server serves them: CustomResources
//! of `policy.networking.k8s.io` (ClusterNetworkPolicy v1alpha2,
//! AdminNetworkPolicy and BaselineAdminNetworkPolicy v1alpha1), typed here
//! for kube's watchers with the spec types of `policy::admin_k8s`.
//!
//! A cluster may lack their CRDs: a kind whose list answers 404 is
//! [`Signal::Absent`](super::watch::Signal) and counts as listed and empty,
//! without holding back the other kinds; its watcher keeps retrying, and
//! a CRD installed later is picked up.

use std::borrow::Cow;

use ::kube::Resource;
use ::kube::core::ClusterResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use policy::admin_k8s::{AdminSpec, GROUP};
use serde::{Deserialize, Serialize};

use super::trim::{Trim, meta};

/// What every admin kind offers the cluster build.
pub trait AdminResource {
    /// `apiVersion` and `kind`, as `policy::admin_k8s` checks them.
    const API_VERSION: &'static str;
    const KIND: &'static str;
    fn metadata(&self) -> &ObjectMeta;
    fn spec(&self) -> Option<&AdminSpec>;
}

macro_rules! admin_kind {
    ($name:ident, $version:literal, $plural:literal) => {
        #[doc = concat!("A `", stringify!($name), "` (", $version, ").")]
        #[derive(Debug, Clone, Default, Deserialize, Serialize)]
        pub struct $name {
            #[serde(default)]
            pub metadata: ObjectMeta,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub spec: Option<AdminSpec>,
        }

        impl Resource for $name {
            type DynamicType = ();
            type Scope = ClusterResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                stringify!($name).into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                GROUP.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                $version.into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl AdminResource for $name {
            const API_VERSION: &'static str = concat!("policy.networking.k8s.io/", $version);
            const KIND: &'static str = stringify!($name);
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn spec(&self) -> Option<&AdminSpec> {
                self.spec.as_ref()
            }
        }

        impl Trim for $name {
            fn trim(&mut self) {
                // the spec is the policy; status is the controllers'
                self.metadata = meta(&mut self.metadata);
            }
        }
    };
}

admin_kind!(ClusterNetworkPolicy, "v1alpha2", "clusternetworkpolicies");
admin_kind!(AdminNetworkPolicy, "v1alpha1", "adminnetworkpolicies");
admin_kind!(
    BaselineAdminNetworkPolicy,
    "v1alpha1",
    "baselineadminnetworkpolicies"
);
