//! # vswitch: a userspace switch for Kubernetes pods
//!
//! Each pod gets a TAP device; the switch forwards its frames at L2/L3 and
//! enforces NetworkPolicy through a flow cache. The layers, each importing
//! only the ones below it:
//!
//! 1. `policy` (its own crate): the cluster model and NetworkPolicy
//!    semantics, compiled to tables. Pure: no I/O, no clock.
//! 2. `vswitch_datapath` (its own crate, `vswitch/datapath/`): the packet
//!    core (sans-I/O: parse, conntrack, flow cache, overlay) and, in its
//!    `io` module, the ports, workers and event loop that move frames.
//! 3. [`daemon`]: vswitchd: the control socket and the CNI verbs, pods'
//!    devices over netlink, policy sources (a manifest folder or the
//!    Kubernetes API), the overlay's nodes, metrics.
//! 4. [`tools`]: what is built for people on top of the daemon and the
//!    datapath: the demo, `policy simulate`, the scenario runners, the
//!    in-process test pods and `vswitchctl`'s client.
//!
//! The binaries (`src/bin/`) are thin: `vswitchd` (daemon commands and the
//! demo) and `vswitchctl` (the tools).

pub mod daemon;
pub mod tools;
