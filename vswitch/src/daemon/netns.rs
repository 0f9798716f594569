//! Running code inside another network namespace.
//!
//! A namespace is entered per thread (`setns(CLONE_NEWNET)` affects only the
//! calling thread), so [`in_netns`] runs the closure on a short-lived thread
//! of its own and the daemon's threads never leave the host namespace.
//! Sockets and TAP devices opened there stay bound to that namespace after
//! the thread ends, which is what netlink and TAP re-attachment need.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

/// Runs `f` on a thread inside the network namespace at `path` (a file
/// such as /var/run/netns/NAME or /proc/PID/ns/net).
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("a thread inside a network namespace panicked"))?
    })
}

/// Whether `path` names a network namespace that still exists.
pub fn exists(path: &Path) -> bool {
    File::open(path).is_ok()
}
