//! # vswitch: a userspace switch for Kubernetes pods
//!
//! Each pod gets a TAP device; the switch forwards its frames at L2/L3 and
//! enforces NetworkPolicy through a flow cache. This crate holds the switch,
//! its daemon `vswitchd` and the CLI `vswitchctl`.
//!
//! - [`scenario`]: NetworkPolicy scenario files and the runners that prove
//!   each layer against them;
//! - [`daemon`]: vswitchd (control socket, TAP ports, manifests);
//! - [`demo`]: `vswitchd demo`, the built-in example cluster before and after its policy;
//! - [`live`]: questions to a running vswitchd (ports, flows, conntrack, explain);
//! - [`simulate`]: reachability matrices from a folder of manifests.

pub mod daemon;
pub mod datapath;
pub mod demo;
pub mod live;
pub mod scenario;
pub mod simulate;
pub mod testnet;
