//! The tools wing: what is built on the daemon and the datapath, for people
//! rather than for pods. Nothing below `tools` (the daemon, the datapath,
//! `policy`) imports it.
//!
//! - [`demo`]: `vswitchd demo`, the built-in example cluster before and
//!   after its policy, from real connection attempts;
//! - [`simulate`]: `vswitchctl policy simulate`, reachability matrices from
//!   a folder of manifests;
//! - [`scenario`]: NetworkPolicy scenario files and the runners that prove
//!   each layer against them (engine, in-process datapath, network
//!   namespaces);
//! - [`testnet`]: in-process pods (smoltcp TCP/IP stacks) wired to a
//!   datapath through in-memory ports, in simulated time;
//! - [`kube_proxy`]: the iptables rules kube-proxy writes for a set of
//!   Services (netns mode and the end-to-end tests put them on their node);
//! - [`live`]: `vswitchctl`'s questions to a running vswitchd (ports, flows,
//!   conntrack, explain).

pub mod demo;
pub mod kube_proxy;
pub mod live;
pub mod scenario;
pub mod simulate;
pub mod term;
pub mod testnet;
