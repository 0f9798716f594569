//! vswitch-cni: the CNI plugin that connects new pods to vswitchd, and the
//! control protocol both speak.
//!
//! `skel::dispatch` is the plugin (the binary only hands it the process's
//! environment, stdin and stdout); `plugin` holds the verbs, `client` and
//! `proto` the conversation with vswitchd, `ipam` and `exec` the delegation
//! to the IPAM plugin, `config`, `result`, `version` and `error` the CNI
//! spec's data.

pub mod client;
mod config;
pub mod error;
pub mod exec;
mod ipam;
mod plugin;
pub mod proto;
mod result;
pub mod skel;
pub mod version;
