//! vswitch-cni: the CNI plugin that connects new pods to vswitchd.
//!
//! Not built yet: it arrives with the TAP ports and the daemon (issue 4).
//! The crate exists so that the workspace has its final shape.
