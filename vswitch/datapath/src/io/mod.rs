//! The I/O side of the datapath: ports (in-memory, TAP, the overlay's UDP
//! socket), the worker that moves frames between ports and the sans-I/O
//! core, and the event loop that waits on descriptors. The core
//! (everything outside this folder) never imports it.

pub mod budget;
pub mod event_loop;
pub mod port;
pub mod tap;
pub mod udp;
pub mod worker;
