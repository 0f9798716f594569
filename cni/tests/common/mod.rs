//! Test doubles for the plugin's two collaborators: a fake vswitchd (a
//! thread serving the control protocol on a Unix socket in a temporary
//! directory, keeping attachments in memory) and a fake IPAM plugin (an
//! `Exec` that hands out addresses from 10.22.0.0/24 and records every
//! call). Plus running `dispatch` with a given environment and stdin.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{Value, json};
use vswitch_cni::error::CniError;
use vswitch_cni::exec::Exec;
use vswitch_cni::proto::{Attachment, AttachmentKey, ErrorReply, Reply, Request};
use vswitch_cni::skel::{self, Env};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("vswitch-cni-t{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the fake vswitchd holds and was asked.
#[derive(Default)]
pub struct DaemonState {
    pub attachments: BTreeMap<AttachmentKey, Attachment>,
    pub requests: Vec<Request>,
    /// Refuse every Add with this error.
    pub refuse_add: Option<ErrorReply>,
    /// Answer Add with this (wrong) reply instead.
    pub add_reply: Option<Reply>,
    pub not_ready: Option<String>,
    next_port: u16,
}

pub struct FakeDaemon {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub state: Arc<Mutex<DaemonState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeDaemon {
    pub fn start() -> FakeDaemon {
        let dir = TempDir::new("daemon");
        let socket = dir.0.join("vswitchd.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let state = Arc::new(Mutex::new(DaemonState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    serve(&conn, &state);
                }
            })
        };
        FakeDaemon {
            dir,
            socket,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn keys(&self) -> Vec<AttachmentKey> {
        self.state
            .lock()
            .unwrap()
            .attachments
            .keys()
            .cloned()
            .collect()
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: &UnixStream, state: &Mutex<DaemonState>) {
    let mut line = String::new();
    if BufReader::new(conn).read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handle(&mut state.lock().unwrap(), req),
        Err(e) => Reply::Error(ErrorReply {
            code: 6,
            msg: e.to_string(),
            details: String::new(),
        }),
    };
    let mut out = serde_json::to_vec(&reply).unwrap();
    out.push(b'\n');
    let _ = (&*conn).write_all(&out);
}

fn handle(s: &mut DaemonState, req: Request) -> Reply {
    s.requests.push(req.clone());
    match req {
        Request::Add(add) => {
            if let Some(e) = &s.refuse_add {
                return Reply::Error(e.clone());
            }
            if let Some(r) = &s.add_reply {
                return r.clone();
            }
            s.next_port += 1;
            let port = s.next_port;
            let ns = add
                .pod_namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = add
                .pod_name
                .clone()
                .unwrap_or_else(|| add.key.container_id.clone());
            let att = Attachment {
                key: add.key.clone(),
                netns: add.netns,
                pod: format!("{ns}/{name}"),
                mac: format!("02:00:00:00:00:{port:02x}"),
                mtu: add.mtu.unwrap_or(1500),
                ips: add.ips,
                routes: add.routes,
                port,
            };
            s.attachments.insert(add.key, att.clone());
            Reply::Attachment(att)
        }
        Request::Del(key) => {
            s.attachments.remove(&key);
            Reply::Done
        }
        Request::Check(key) => match s.attachments.get(&key) {
            Some(a) => Reply::Attachment(a.clone()),
            None => Reply::Error(ErrorReply {
                code: 3,
                msg: format!("no attachment {} {}", key.container_id, key.ifname),
                details: String::new(),
            }),
        },
        Request::Status {} => match &s.not_ready {
            None => Reply::Status {
                ready: true,
                message: String::new(),
            },
            Some(m) => Reply::Status {
                ready: false,
                message: m.clone(),
            },
        },
        Request::List {} => Reply::Attachments(s.attachments.values().cloned().collect()),
        Request::Gc { valid } => {
            let gone: Vec<AttachmentKey> = s
                .attachments
                .keys()
                .filter(|k| !valid.contains(k))
                .cloned()
                .collect();
            Reply::Attachments(
                gone.iter()
                    .filter_map(|k| s.attachments.remove(k))
                    .collect(),
            )
        }
        // vswitchctl's questions: the plugin never asks them
        Request::Ports {}
        | Request::Flows { .. }
        | Request::Conntrack { .. }
        | Request::Services {}
        | Request::Explain { .. } => Reply::Error(ErrorReply {
            code: 100,
            msg: "the fake daemon does not answer vswitchctl".into(),
            details: String::new(),
        }),
    }
}

/// One call the fake IPAM plugin received.
#[derive(Debug, Clone)]
pub struct IpamCall {
    pub plugin: String,
    pub command: String,
    pub env: Env,
    pub stdin: Value,
}

#[derive(Default)]
pub struct IpamState {
    /// (container ID, ifname) -> host number in 10.22.0.0/24.
    pub leases: BTreeMap<(String, String), u8>,
    pub calls: Vec<IpamCall>,
    pub status_error: Option<CniError>,
    next: u8,
}

/// An IPAM plugin named "fake-ipam" speaking `versions`.
pub struct FakeIpam {
    pub versions: Vec<&'static str>,
    pub state: Mutex<IpamState>,
}

impl FakeIpam {
    /// Like host-local 1.1.1: up to 1.0.0, no GC or STATUS.
    pub fn new() -> FakeIpam {
        FakeIpam::speaking(&["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"])
    }

    pub fn speaking(versions: &[&'static str]) -> FakeIpam {
        FakeIpam {
            versions: versions.to_vec(),
            state: Mutex::new(IpamState::default()),
        }
    }

    pub fn calls(&self) -> Vec<IpamCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The calls other than VERSION.
    pub fn verbs(&self) -> Vec<IpamCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.command != "VERSION")
            .collect()
    }

    pub fn leases(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().leases.keys().cloned().collect()
    }
}

impl Exec for FakeIpam {
    fn exec_plugin(&self, name: &str, env: &Env, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
        let command = env.get("CNI_COMMAND").cloned().unwrap_or_default();
        let stdin: Value = serde_json::from_slice(stdin).unwrap_or(Value::Null);
        let mut s = self.state.lock().unwrap();
        s.calls.push(IpamCall {
            plugin: name.into(),
            command: command.clone(),
            env: env.clone(),
            stdin: stdin.clone(),
        });
        if name != "fake-ipam" {
            return Err(CniError::new(7, format!("cannot find the plugin {name:?}")));
        }
        if command == "VERSION" {
            return Ok(serde_json::to_vec(
                &json!({"cniVersion": "1.0.0", "supportedVersions": self.versions}),
            )
            .unwrap());
        }
        let version = stdin["cniVersion"].as_str().unwrap_or_default().to_owned();
        if !self.versions.contains(&version.as_str()) {
            return Err(CniError::new(1, "incompatible CNI versions").with_details(version));
        }
        let get = |k: &str| env.get(k).cloned().unwrap_or_default();
        let key = (get("CNI_CONTAINERID"), get("CNI_IFNAME"));
        match command.as_str() {
            "ADD" => {
                s.next += 1;
                let n = s.next + 1;
                s.leases.insert(key, n);
                let mut ip = json!({"address": format!("10.22.0.{n}/24"), "gateway": "10.22.0.1"});
                if version.as_str() < "1.0.0" {
                    ip["version"] = json!("4");
                }
                let out = json!({
                    "cniVersion": version,
                    "ips": [ip],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dns": {},
                });
                Ok(serde_json::to_vec(&out).unwrap())
            }
            "DEL" => {
                s.leases.remove(&key);
                Ok(Vec::new())
            }
            "CHECK" => match s.leases.contains_key(&key) {
                true => Ok(Vec::new()),
                false => Err(CniError::new(3, "no lease")),
            },
            "GC" if self.versions.contains(&"1.1.0") => {
                let valid: Vec<(String, String)> = stdin["cni.dev/valid-attachments"]
                    .as_array()
                    .expect("GC without valid attachments")
                    .iter()
                    .map(|a| {
                        (
                            a["containerID"].as_str().unwrap().into(),
                            a["ifname"].as_str().unwrap().into(),
                        )
                    })
                    .collect();
                s.leases.retain(|k, _| valid.contains(k));
                Ok(Vec::new())
            }
            "STATUS" if self.versions.contains(&"1.1.0") => match &s.status_error {
                None => Ok(Vec::new()),
                Some(e) => Err(e.clone()),
            },
            other => Err(CniError::new(4, format!("unknown command {other}"))),
        }
    }
}

/// The environment of a call: `vars` plus CNI_PATH.
pub fn env(vars: &[(&str, &str)]) -> Env {
    let mut env: Env = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.entry("CNI_PATH".into())
        .or_insert_with(|| "/opt/cni/bin".into());
    env
}

/// The usual environment of a verb on container `cid`, interface eth0.
pub fn verb_env(command: &str, cid: &str) -> Env {
    env(&[
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", &format!("/var/run/netns/{cid}")),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1",
        ),
    ])
}

/// A network configuration for the daemon at `socket` with the fake IPAM.
pub fn conf(version: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "pods",
        "type": "vswitch-cni",
        "socket": socket,
        "mtu": 1400,
        "ipam": {"type": "fake-ipam", "subnet": "10.22.0.0/24"},
        "dns": {"nameservers": ["10.96.0.10"], "search": ["shop.svc.cluster.local"]},
    })
}

/// What one dispatch did: the exit code and stdout (parsed when not empty).
#[derive(Debug)]
pub struct Outcome {
    pub exit: i32,
    pub stdout: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts a failure with `code`, and returns the error JSON.
    pub fn error(&self, code: u32) -> Value {
        assert_eq!(self.exit, 1, "expected a failure, got {self:?}");
        let e = self.json();
        assert_eq!(e["code"], code, "wrong code: {e}");
        assert!(
            e["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "no msg: {e}"
        );
        assert!(e["cniVersion"].is_string(), "no cniVersion: {e}");
        e
    }

    pub fn ok_empty(&self) {
        assert_eq!(
            (self.exit, self.stdout.as_str()),
            (0, ""),
            "expected silent success"
        );
    }
}

pub fn dispatch(env: &Env, stdin: &[u8], exec: &dyn Exec) -> Outcome {
    let mut out = Vec::new();
    let exit = skel::dispatch(env, stdin, &mut out, exec);
    Outcome {
        exit,
        stdout: String::from_utf8(out).unwrap(),
    }
}

pub fn dispatch_json(env: &Env, conf: &Value, exec: &dyn Exec) -> Outcome {
    dispatch(env, &serde_json::to_vec(conf).unwrap(), exec)
}
