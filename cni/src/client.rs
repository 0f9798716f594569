//! The client side of the control protocol (`proto`): one request, one
//! reply, one connection to vswitchd's Unix socket.
//!
//! The errors say what the caller needs to decide: `Unreachable` (nothing
//! listens: the socket file is missing or refuses connections, so the
//! daemon is down or not started yet) is distinct from a daemon that
//! accepted the request and then failed to answer in time or answered
//! nonsense, because the first is certainly harmless to retry and the
//! others may have left work half done.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::{Reply, Request};

/// The longest reply line read (a List of many attachments fits).
const MAX_REPLY: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket (missing, or connection refused).
    #[error("vswitchd is not reachable at {}: {source}", socket.display())]
    Unreachable { socket: PathBuf, source: io::Error },
    /// The daemon took the request but did not answer within the timeout.
    #[error("vswitchd at {} did not answer within {timeout:?}", socket.display())]
    Timeout { socket: PathBuf, timeout: Duration },
    /// Any other failure to talk to the socket.
    #[error("talking to vswitchd at {}: {source}", socket.display())]
    Io { socket: PathBuf, source: io::Error },
    /// The daemon answered something that is not a reply.
    #[error("vswitchd at {} sent a bad reply: {detail}", socket.display())]
    Protocol { socket: PathBuf, detail: String },
}

/// Sends `req` to the daemon at `socket` and returns its reply. `timeout`
/// bounds each read and write (connecting to a Unix socket does not wait).
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::Unreachable {
            socket: socket.to_owned(),
            source,
        },
        _ => ClientError::Io {
            socket: socket.to_owned(),
            source,
        },
    })?;
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
            socket: socket.to_owned(),
            timeout,
        },
        _ => ClientError::Io {
            socket: socket.to_owned(),
            source,
        },
    };
    let timeout = Some(timeout).filter(|t| !t.is_zero());
    stream.set_read_timeout(timeout).map_err(io_err)?;
    stream.set_write_timeout(timeout).map_err(io_err)?;

    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol {
        socket: socket.to_owned(),
        detail: format!("cannot encode the request: {e}"),
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    stream.flush().map_err(io_err)?;

    let mut reply = Vec::new();
    BufReader::new((&stream).take(MAX_REPLY))
        .read_until(b'\n', &mut reply)
        .map_err(io_err)?;
    if reply.last() != Some(&b'\n') {
        let detail = if reply.is_empty() {
            "the connection closed without a reply".to_owned()
        } else {
            format!(
                "the reply is not one line ({} bytes, no newline)",
                reply.len()
            )
        };
        return Err(ClientError::Protocol {
            socket: socket.to_owned(),
            detail,
        });
    }
    serde_json::from_slice(&reply).map_err(|e| ClientError::Protocol {
        socket: socket.to_owned(),
        detail: format!("{e}: {}", String::from_utf8_lossy(&reply).trim_end()),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::thread;

    use super::*;

    fn temp_socket(name: &str) -> (PathBuf, impl Drop) {
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir =
            std::env::temp_dir().join(format!("vswitch-cni-client-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        (dir.join("s.sock"), Cleanup(dir))
    }

    /// Serves one connection: reads the request line, answers `answer`.
    fn serve_once(sock: &Path, answer: &'static [u8]) -> thread::JoinHandle<String> {
        let listener = UnixListener::bind(sock).unwrap();
        thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line).unwrap();
            (&conn).write_all(answer).unwrap();
            line
        })
    }

    #[test]
    fn round_trip() {
        let (sock, _g) = temp_socket("rt");
        let server = serve_once(&sock, b"{\"status\":{\"ready\":true,\"message\":\"ok\"}}\n");
        let reply = call(&sock, &Request::Status {}, Duration::from_secs(5)).unwrap();
        assert_eq!(
            reply,
            Reply::Status {
                ready: true,
                message: "ok".into()
            }
        );
        assert_eq!(server.join().unwrap(), "{\"op\":\"status\"}\n");
    }

    #[test]
    fn missing_socket_is_unreachable() {
        let (sock, _g) = temp_socket("missing");
        let err = call(&sock, &Request::Status {}, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    }

    #[test]
    fn refused_socket_is_unreachable() {
        let (sock, _g) = temp_socket("refused");
        // A socket file nobody listens on any more refuses connections.
        drop(UnixListener::bind(&sock).unwrap());
        let err = call(&sock, &Request::Status {}, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    }

    #[test]
    fn silent_daemon_times_out() {
        let (sock, _g) = temp_socket("silent");
        let listener = UnixListener::bind(&sock).unwrap();
        let err = call(&sock, &Request::Status {}, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
        drop(listener);
    }

    #[test]
    fn bad_replies_are_protocol_errors() {
        for answer in [
            &b"not json\n"[..],
            b"{\"status\":{\"ready\":true,\"message\":\"\"}}",
            b"",
        ] {
            let (sock, _g) = temp_socket("bad");
            let answer: &'static [u8] = Box::leak(answer.to_vec().into_boxed_slice());
            let server = serve_once(&sock, answer);
            let err = call(&sock, &Request::List {}, Duration::from_secs(5)).unwrap_err();
            assert!(
                matches!(err, ClientError::Protocol { .. }),
                "{answer:?}: {err:?}"
            );
            server.join().unwrap();
        }
    }
}
