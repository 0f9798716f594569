//! What the tests with real pods share: commands, the CNI plugin as a
//! runtime calls it, and a kernel-socket agent run inside pod namespaces.
#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const CNI_DIR: &str = "/usr/lib/cni";

/// Prints `SKIPPED: why` and returns true without root (or a user
/// namespace) or without host-local.
pub fn skip_unless_able() -> bool {
    use crate::common::{is_root, skip};
    if !is_root() {
        return skip("needs root (or a user namespace) for network namespaces and TAP devices");
    }
    if !Path::new(CNI_DIR).join("host-local").exists() {
        return skip(
            "/usr/lib/cni/host-local is missing (apt-get install containernetworking-plugins)",
        );
    }
    false
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args))
}

/// The plugin binary, next to vswitchd in the target folder (built by
/// `cargo test --workspace`; built here when this test runs alone).
pub fn plugin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_vswitchd")).with_file_name("vswitch-cni");
    if !p.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo).args(["build", "-p", "vswitch-cni", "--bin", "vswitch-cni"]));
    }
    assert!(p.exists(), "{} is missing", p.display());
    p
}

/// A kernel-socket agent inside a namespace: TCP and UDP echo servers, one
/// shot connects, and a held TCP connection driven by stdin.
pub const AGENT: &str = r#"
import socket, sys, threading, time
mode = sys.argv[1]
def fam(a): return socket.AF_INET6 if ":" in a else socket.AF_INET
if mode == "serve":
    port = int(sys.argv[2])
    def tcp(f, addr):
        s = socket.socket(f); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if f == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port)); s.listen(64)
        def conn(c):
            while True:
                d = c.recv(65536)
                if not d: break
                c.sendall(d)
            c.close()
        while True:
            c, _ = s.accept(); threading.Thread(target=conn, args=(c,), daemon=True).start()
    def udp(f, addr):
        s = socket.socket(f, socket.SOCK_DGRAM)
        if f == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port))
        while True:
            d, a = s.recvfrom(2048); s.sendto(d, a)
    for f, a in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        threading.Thread(target=tcp, args=(f, a), daemon=True).start()
        threading.Thread(target=udp, args=(f, a), daemon=True).start()
    print("ready", flush=True)
    time.sleep(3600)
elif mode == "tcp":
    s = socket.socket(fam(sys.argv[2])); s.settimeout(float(sys.argv[4]))
    t0 = time.monotonic()
    try:
        s.connect((sys.argv[2], int(sys.argv[3]))); s.sendall(b"ping")
        print("ok" if s.recv(16) == b"ping" else "fail: bad echo")
    except OSError as e: print("fail:", e, "after %.1f ms" % ((time.monotonic() - t0) * 1000))
elif mode == "udp":
    s = socket.socket(fam(sys.argv[2]), socket.SOCK_DGRAM); s.settimeout(float(sys.argv[4]))
    t0 = time.monotonic()
    try:
        # connected: only a reply from the address and port asked counts
        s.connect((sys.argv[2], int(sys.argv[3]))); s.send(b"ping")
        print("ok" if s.recv(16) == b"ping" else "fail: bad echo")
    except OSError as e: print("fail:", e, "after %.1f ms" % ((time.monotonic() - t0) * 1000))
elif mode == "hold":
    s = socket.socket(fam(sys.argv[2])); s.settimeout(20)
    s.connect((sys.argv[2], int(sys.argv[3])))
    for line in sys.stdin:
        try:
            s.sendall(line.encode()); got = s.recv(4096).decode()
            print("ok" if got == line else "fail: bad echo", flush=True)
        except OSError as e: print("fail:", e, flush=True)
"#;

/// Calls the plugin as a runtime does (the pod's namespace is
/// /var/run/netns/`ns`); returns exit status and stdout.
pub fn cni(command: &str, container: &str, ns: &str, args: &str, stdin: &str) -> (i32, String) {
    let mut child = Command::new(plugin())
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/var/run/netns/{ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", args)
        .env("CNI_PATH", CNI_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A CNI result's IPv4 and IPv6 addresses (without prefix lengths).
pub fn result_addresses(result: &serde_json::Value) -> (String, String) {
    let ips: Vec<String> = result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    (
        ips.iter().find(|i| !i.contains(':')).expect("v4").clone(),
        ips.iter().find(|i| i.contains(':')).expect("v6").clone(),
    )
}

/// Starts the agent's TCP and UDP echo servers on `port` in `ns`.
pub fn serve(ns: &str, port: u16) -> Child {
    let mut c = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "python3",
            "-u",
            "-c",
            AGENT,
            "serve",
            &port.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    c
}

/// One TCP (or UDP) exchange from `ns` to `dst`: "ok" or why not.
pub fn probe(ns: &str, proto: &str, dst: &str, port: u16) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "python3",
            "-c",
            AGENT,
            proto,
            dst,
            &port.to_string(),
            "1.5",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
