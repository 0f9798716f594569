//! The daemon's port state on disk: one JSON file per attachment under
//! `STATE_DIR/attachments/`, written atomically (temporary file, rename),
//! so that a restarted vswitchd finds every pod it had attached and
//! re-attaches to their (persistent) TAP devices.
//!
//! No fsync: the state has to outlive the process, not the machine. After
//! a reboot the pods' network namespaces and devices are gone too, and a
//! stale file is forgotten at start (its namespace no longer exists).
//! Syncing cost 0.7 ms per attach, a tenth of it.
//!
//! One vswitchd per folder: [`Lock`] holds an exclusive `flock` on
//! `STATE_DIR/lock` for the daemon's life (the kernel drops it when the
//! process ends, however it ends), and the file names the holder's pid.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use vswitch_cni::proto::{Attachment, AttachmentKey};

/// The state folder's lock, held while this value lives.
#[derive(Debug)]
pub(crate) struct Lock {
    _file: Flock<fs::File>,
}

/// Why the state folder could not be locked.
#[derive(Debug)]
pub(crate) enum LockError {
    /// Another process holds it; the pid it wrote, when readable.
    Held(Option<u32>),
    Io(io::Error),
}

impl Lock {
    /// Locks `state_dir` (creating it), without waiting.
    pub(crate) fn take(state_dir: &Path) -> Result<Lock, LockError> {
        fs::create_dir_all(state_dir).map_err(LockError::Io)?;
        let path = state_dir.join("lock");
        // Not truncated before the lock is ours: the holder's pid is in it.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(LockError::Io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((_, Errno::EWOULDBLOCK)) => {
                let pid = fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
                return Err(LockError::Held(pid));
            }
            Err((_, e)) => return Err(LockError::Io(e.into())),
        };
        file.set_len(0).map_err(LockError::Io)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(LockError::Io)?;
        Ok(Lock { _file: file })
    }
}

/// Attachments as files; what ADD needs of it is [`Saver`].
pub struct Store {
    dir: PathBuf,
}

/// A file name for a key: container ids and interface names are safe
/// characters in practice, but anything else is hex-escaped.
fn file_name(key: &AttachmentKey) -> String {
    let clean = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    };
    format!("{}@{}.json", clean(&key.container_id), clean(&key.ifname))
}

impl Store {
    pub fn open(state_dir: &Path) -> io::Result<Store> {
        let dir = state_dir.join("attachments");
        fs::create_dir_all(&dir)?;
        Ok(Store { dir })
    }

    pub fn save(&self, a: &Attachment) -> io::Result<()> {
        let path = self.dir.join(file_name(&a.key));
        let tmp = path.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(a)?.as_bytes())?;
        fs::rename(&tmp, &path)
    }

    pub fn remove(&self, key: &AttachmentKey) -> io::Result<()> {
        match fs::remove_file(self.dir.join(file_name(key))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every stored attachment; unreadable files are reported, not fatal.
    pub fn load(&self) -> io::Result<(Vec<Attachment>, Vec<String>)> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        let mut entries: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        entries.sort();
        for p in entries {
            match fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<Attachment>(&t).map_err(|e| e.to_string()))
            {
                Ok(a) => out.push(a),
                Err(e) => problems.push(format!("{}: {e}", p.display())),
            }
        }
        Ok((out, problems))
    }
}

/// Saving one attachment: what ADD writes to disk (a fake in the tests
/// of ADD).
pub(crate) trait Saver {
    fn save(&self, a: &Attachment) -> io::Result<()>;
}

impl Saver for Store {
    fn save(&self, a: &Attachment) -> io::Result<()> {
        Store::save(self, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second lock on one folder fails and names the holder; once the
    /// first is dropped the folder can be locked again.
    #[test]
    fn one_lock_per_state_folder() {
        let dir = std::env::temp_dir().join(format!("vsw-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = Lock::take(&dir).unwrap();
        match Lock::take(&dir) {
            Err(LockError::Held(pid)) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("a second lock: {other:?}"),
        }
        drop(first);
        let again = Lock::take(&dir).unwrap();
        drop(again);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn saves_loads_and_removes_atomically() {
        let dir = std::env::temp_dir().join(format!("vsw-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let a = Attachment {
            key: AttachmentKey {
                container_id: "abc/../x".into(),
                ifname: "eth0".into(),
            },
            netns: "/var/run/netns/p".into(),
            pod: "default/p".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
            ips: vec![],
            routes: vec![],
            port: 3,
        };
        store.save(&a).unwrap();
        fs::write(dir.join("attachments/broken.json"), "{").unwrap();
        let (loaded, problems) = store.load().unwrap();
        assert_eq!(loaded, vec![a.clone()]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        // the key cannot escape the folder
        assert!(
            fs::read_dir(dir.join("attachments")).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains('/'))
        );
        store.remove(&a.key).unwrap();
        store.remove(&a.key).unwrap();
        assert!(store.load().unwrap().0.is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
