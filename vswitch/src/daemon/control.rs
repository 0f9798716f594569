//! The control socket: a Unix stream socket (mode 0600, in a folder of mode
//! 0700 that vswitchd creates) where the CNI plugin and vswitchctl send one
//! JSON request per connection and read one JSON reply.
//!
//! Binding refuses a socket that another vswitchd is serving (a connect to
//! it succeeds) and replaces a stale one (a connect is refused).
//!
//! A client cannot take the daemon down: a request line is at most
//! `MAX_REQUEST` bytes and must arrive whole within `REQUEST_DEADLINE` of
//! the accept, and at most `MAX_READERS` connections are read at once
//! (beyond it a connection is told to try again and closed, no thread).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vswitch_cni::proto::{ErrorReply, Reply, Request, code};

/// Why the control socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("control socket folder {}: {source}", dir.display())]
    CreateFolder {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {} is in use (is another vswitchd running?)", .0.display())]
    InUse(PathBuf),
    #[error("removing the stale control socket {}: {source}", path.display())]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The longest request line, newline included. The largest requests are a
/// GC listing every attachment on the node (about 60 bytes and a 64-digit
/// container id each: 2,000 of them fit) and an ADD (a few addresses and
/// routes, a few hundred bytes). A longer line is refused unread.
pub const MAX_REQUEST: usize = 256 << 10;
/// How long a client has, from the accept, to send its whole request line.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How many connections are read at once; beyond it a connection is told
/// "busy" and closed, with no thread. Together with `MAX_REQUEST` this
/// bounds what clients can make the daemon hold (64 × 256 KiB = 16 MiB).
pub const MAX_READERS: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_request: usize,
    deadline: Duration,
    max_readers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request: MAX_REQUEST,
            deadline: REQUEST_DEADLINE,
            max_readers: MAX_READERS,
        }
    }
}

pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    limits: Limits,
    /// Connections being read now.
    readers: Arc<AtomicUsize>,
    /// Connections refused because `max_readers` were being read.
    refused: Arc<AtomicU64>,
}

impl Server {
    pub fn bind(path: &Path) -> Result<Server, BindError> {
        let bind_error = |source| BindError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| BindError::CreateFolder {
                    dir: dir.to_path_buf(),
                    source,
                })?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(|source| BindError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let listener = UnixListener::bind(path).map_err(bind_error)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error)?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            limits: Limits::default(),
            readers: Arc::default(),
            refused: Arc::default(),
        })
    }

    /// Counts the connections refused for want of a reader in `counter`
    /// (the metrics' `vswitch_control_refused_total`).
    pub(super) fn count_refusals_in(&mut self, counter: Arc<AtomicU64>) {
        self.refused = counter;
    }

    /// Accepts connections on a thread of its own and hands them over.
    pub fn spawn_acceptor(&self, tx: std::sync::mpsc::Sender<super::Event>) -> std::io::Result<()> {
        let listener = self.listener.try_clone()?;
        let limits = self.limits;
        let readers = self.readers.clone();
        let refused = self.refused.clone();
        std::thread::Builder::new()
            .name("control-accept".into())
            .spawn(move || {
                for s in listener.incoming() {
                    let s = match s {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!("control socket: {e}");
                            continue;
                        }
                    };
                    let Some(slot) = Slot::take(&readers, limits.max_readers) else {
                        let n = refused.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(
                            refused_total = n,
                            "control socket: {} requests are being read; a connection is told to try again",
                            limits.max_readers
                        );
                        // a fresh socket's buffer takes the line: no wait
                        let _ = s.set_nonblocking(true);
                        send(
                            &s,
                            &Reply::Error(ErrorReply {
                                code: code::TRY_AGAIN_LATER,
                                msg: format!(
                                    "vswitchd is busy ({} requests being read), try again",
                                    limits.max_readers
                                ),
                                details: String::new(),
                            }),
                        );
                        continue;
                    };
                    let tx = tx.clone();
                    // each connection is read on its own thread (the slot
                    // goes back when the thread, or a failed spawn, drops it)
                    let spawned = std::thread::Builder::new()
                        .name("control-read".into())
                        .spawn(move || {
                            let p = read_request(s, &limits);
                            drop(slot);
                            if let Some(p) = p {
                                let _ = tx.send(super::Event::Request(p));
                            }
                        });
                    if let Err(e) = spawned {
                        tracing::warn!("control socket: no thread to read a request: {e}");
                    }
                }
            })?;
        Ok(())
    }
}

/// One of the `max_readers` places to read a connection, held while it is
/// read.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(readers: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        readers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(readers.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A request read off a connection, waiting for the daemon's answer.
pub struct Pending {
    stream: UnixStream,
    request: Result<Request, ErrorReply>,
}

/// Reads one request line: at most `max_request` bytes, all of them
/// within `deadline` of the accept (a per-read timeout alone would let a
/// byte every few seconds hold the reader forever). A longer or later line
/// is answered with an error here and the connection closed, unread.
fn read_request(stream: UnixStream, limits: &Limits) -> Option<Pending> {
    let deadline = Instant::now() + limits.deadline;
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let refuse = |msg: String| {
        send(
            &stream,
            &Reply::Error(ErrorReply {
                code: code::IO_FAILURE,
                msg,
                details: String::new(),
            }),
        );
        None
    };
    let late = || {
        refuse(format!(
            "vswitchd did not receive a whole request line within {:?}",
            limits.deadline
        ))
    };
    let mut line = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return late();
        }
        // one byte past the limit tells a line that is too long
        let room = (limits.max_request + 1 - line.len()) as u64;
        let n = match (&stream).take(room).read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return late();
            }
            Err(e) => {
                let e = ErrorReply {
                    code: code::IO_FAILURE,
                    msg: "vswitchd could not read the request".into(),
                    details: e.to_string(),
                };
                return Some(Pending {
                    stream,
                    request: Err(e),
                });
            }
        };
        if n == 0 {
            if line.is_empty() {
                return None;
            }
            break; // the client closed without a newline: take what came
        }
        let from = line.len();
        line.extend_from_slice(&chunk[..n]);
        if let Some(i) = line[from..].iter().position(|&b| b == b'\n') {
            line.truncate(from + i + 1);
        }
        if line.len() > limits.max_request {
            return refuse(format!(
                "the request is longer than {} bytes",
                limits.max_request
            ));
        }
        if line.last() == Some(&b'\n') {
            break;
        }
    }
    let request = parse_request(&line);
    Some(Pending { stream, request })
}

/// One request line (its newline included or not) into a [`Request`], or
/// the error reply that says why not. No I/O: the fuzz target calls it.
pub fn parse_request(line: &[u8]) -> Result<Request, ErrorReply> {
    serde_json::from_slice::<Request>(line).map_err(|e| ErrorReply {
        code: code::DECODING_FAILURE,
        msg: "vswitchd could not decode the request".into(),
        details: e.to_string(),
    })
}

/// Writes `reply` as one line (errors are the client's problem: it left).
fn send(stream: &UnixStream, reply: &Reply) {
    let mut text = serde_json::to_string(reply).unwrap_or_else(|e| {
        format!(
            r#"{{"error":{{"code":{},"msg":"encoding the reply: {e}"}}}}"#,
            code::IO_FAILURE
        )
    });
    text.push('\n');
    let mut w = stream;
    let _ = w.write_all(text.as_bytes());
}

impl Pending {
    /// Lets `handle` answer the request and writes the reply.
    pub fn answer(self, handle: impl FnOnce(Request) -> Reply) {
        let reply = match self.request {
            Ok(req) => handle(req),
            Err(e) => Reply::Error(e),
        };
        send(&self.stream, &reply);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};

    use vswitch_cni::proto::AttachmentKey;

    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A control socket in a temp folder, served by a loop that answers
    /// every request `Done` (Status: ready).
    fn serve(name: &str, limits: Limits) -> (Server, PathBuf, Dir) {
        let dir =
            std::env::temp_dir().join(format!("vswitch-control-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sock = dir.join("s.sock");
        let mut server = Server::bind(&sock).unwrap();
        server.limits = limits;
        let (tx, rx) = std::sync::mpsc::channel();
        server.spawn_acceptor(tx).unwrap();
        std::thread::spawn(move || {
            for ev in rx {
                if let crate::daemon::Event::Request(p) = ev {
                    p.answer(|r| match r {
                        Request::Status {} => Reply::Status {
                            ready: true,
                            message: "ok".into(),
                        },
                        _ => Reply::Done,
                    });
                }
            }
        });
        (server, sock, Dir(dir))
    }

    fn reply_of(s: &UnixStream) -> Reply {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn request(sock: &Path, line: &str) -> Reply {
        let mut s = UnixStream::connect(sock).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
        reply_of(&s)
    }

    fn status_is_served(sock: &Path) {
        let r = request(sock, r#"{"op":"status"}"#);
        assert!(matches!(r, Reply::Status { ready: true, .. }), "{r:?}");
    }

    /// Whether the daemon has closed `s` (a read sees the end, or an error
    /// other than the timeout).
    fn closed(s: &UnixStream, wait: Duration) -> bool {
        s.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 4096];
        loop {
            match (&*s).read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(5), "waited for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn an_over_long_request_is_refused_unread() {
        let (_server, sock, _d) = serve("long", Limits::default());
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        // 16 MiB without a newline: the daemon must stop reading at the
        // limit, so the writes fail once the socket's buffer is full
        let chunk = vec![b' '; 64 << 10];
        let mut written = 0;
        while written < 16 << 20 {
            match s.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        assert!(
            written < MAX_REQUEST + (1 << 20),
            "the daemon read {written} bytes of a request longer than {MAX_REQUEST}"
        );
        match reply_of(&s) {
            Reply::Error(e) => assert!(
                e.msg.contains(&MAX_REQUEST.to_string()),
                "the reply does not say the limit: {e:?}"
            ),
            r => panic!("{r:?}"),
        }
        assert!(closed(&s, Duration::from_secs(1)));
        status_is_served(&sock);
    }

    #[test]
    fn the_largest_requests_fit() {
        let (_server, sock, _d) = serve("large", Limits::default());
        let valid = (0..2000)
            .map(|i| AttachmentKey {
                container_id: format!("{i:064x}"),
                ifname: "eth0".into(),
            })
            .collect();
        let line = serde_json::to_string(&Request::Gc { valid }).unwrap();
        assert!(line.len() < MAX_REQUEST, "{}", line.len());
        assert_eq!(request(&sock, &line), Reply::Done);
    }

    #[test]
    fn a_slow_client_is_cut_at_the_deadline_while_others_are_served() {
        let deadline = Duration::from_secs(1);
        let limits = Limits {
            deadline,
            ..Limits::default()
        };
        let (_server, sock, _d) = serve("slow", limits);
        let slow = UnixStream::connect(&sock).unwrap();
        let start = Instant::now();
        // a byte every 100 ms (each read is quick; the whole line is not)
        let mut w = slow.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(b"{");
            while start.elapsed() < Duration::from_secs(6) {
                std::thread::sleep(Duration::from_millis(100));
                if w.write_all(b" ").is_err() {
                    break;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        status_is_served(&sock);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert!(
            closed(&slow, Duration::from_secs(4)),
            "the slow client still holds its reader after {:?}",
            start.elapsed()
        );
        let cut = start.elapsed();
        assert!(cut >= deadline && cut < deadline * 3, "cut after {cut:?}");
        writer.join().unwrap();
    }

    #[test]
    fn beyond_max_readers_new_connections_are_told_busy() {
        let limits = Limits {
            max_readers: 4,
            deadline: Duration::from_secs(30),
            ..Limits::default()
        };
        let (server, sock, _d) = serve("busy", limits);
        let idle: Vec<_> = (0..4)
            .map(|_| UnixStream::connect(&sock).unwrap())
            .collect();
        wait_for("4 readers", || server.readers.load(Ordering::Relaxed) == 4);
        let fifth = UnixStream::connect(&sock).unwrap();
        match reply_of(&fifth) {
            Reply::Error(e) => {
                assert_eq!(e.code, code::TRY_AGAIN_LATER, "{e:?}");
                assert!(e.msg.contains("busy"), "{e:?}");
            }
            r => panic!("{r:?}"),
        }
        assert!(closed(&fifth, Duration::from_secs(1)));
        assert_eq!(server.refused.load(Ordering::Relaxed), 1);
        for s in &idle {
            assert!(
                !closed(s, Duration::from_millis(50)),
                "an idle client was cut"
            );
        }
        drop(idle);
        wait_for("no readers", || server.readers.load(Ordering::Relaxed) == 0);
        status_is_served(&sock);
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let (_server, sock, _d) = serve("unknown", Limits::default());
        match request(&sock, r#"{"op":"status","bogus":1}"#) {
            Reply::Error(e) => {
                assert_eq!(e.code, code::DECODING_FAILURE, "{e:?}");
                assert!(e.details.contains("`bogus`"), "{e:?}");
            }
            r => panic!("{r:?}"),
        }
        status_is_served(&sock);
    }
}
