//! The control socket: a Unix stream socket (mode 0600, in a folder of mode
//! 0700 that vswitchd creates) where the CNI plugin and vswitchctl send one
//! JSON request per connection and read one JSON reply.
//!
//! Binding refuses a socket that another vswitchd is serving (a connect to
//! it succeeds) and replaces a stale one (a connect is refused).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

pub struct Server {
    listener: UnixListener,
    path: PathBuf,
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
        })
    }

    /// Accepts connections on a thread of its own and hands them over.
    pub fn spawn_acceptor(&self, tx: std::sync::mpsc::Sender<super::Event>) -> std::io::Result<()> {
        let listener = self.listener.try_clone()?;
        std::thread::Builder::new()
            .name("control-accept".into())
            .spawn(move || {
                for s in listener.incoming() {
                    match s {
                        Ok(s) => {
                            let tx = tx.clone();
                            // each connection is read on its own thread
                            let _ = std::thread::Builder::new()
                                .name("control-read".into())
                                .spawn(move || {
                                    if let Some(p) = read_request(s) {
                                        let _ = tx.send(super::Event::Request(p));
                                    }
                                });
                        }
                        Err(e) => tracing::warn!("control socket: {e}"),
                    }
                }
            })?;
        Ok(())
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

/// Reads one request (5 s at most). Runs on a thread of its own per
/// connection, so that a slow or silent client holds up nobody.
fn read_request(stream: UnixStream) -> Option<Pending> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let request = match BufReader::new(&stream).read_line(&mut line) {
        Ok(0) => return None,
        Ok(_) => serde_json::from_str::<Request>(&line).map_err(|e| ErrorReply {
            code: code::DECODING_FAILURE,
            msg: "vswitchd could not decode the request".into(),
            details: e.to_string(),
        }),
        Err(e) => Err(ErrorReply {
            code: code::IO_FAILURE,
            msg: "vswitchd could not read the request".into(),
            details: e.to_string(),
        }),
    };
    Some(Pending { stream, request })
}

impl Pending {
    /// Lets `handle` answer the request and writes the reply.
    pub fn answer(self, handle: impl FnOnce(Request) -> Reply) {
        let reply = match self.request {
            Ok(req) => handle(req),
            Err(e) => Reply::Error(e),
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_else(|e| {
            format!(
                r#"{{"error":{{"code":{},"msg":"encoding the reply: {e}"}}}}"#,
                code::IO_FAILURE
            )
        });
        text.push('\n');
        let mut w = &self.stream;
        let _ = w.write_all(text.as_bytes());
    }
}
