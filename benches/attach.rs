//! Pod attach latency: from the start of CNI ADD (the plugin executed as a
//! runtime executes it) until the pod's first packet passes (a UDP echo
//! from the pod to its gateway comes back), for vswitch (vswitch-cni +
//! vswitchd) and, in the same run, the reference `bridge` plugin, both with
//! `host-local` IPAM. 100 sequential ADDs, then 20 concurrent ones; p50 and
//! p99 of each. Needs root; run with `cargo bench --bench attach`.
//!
//! Every node is a network namespace that this benchmark creates; the pods
//! are namespaces too. The probe sends a datagram every 0.5 ms from inside
//! the pod's namespace until one is echoed by a server in the node's.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vswitch::daemon::netns::in_netns;

const CNI_DIR: &str = "/usr/lib/cni";
const SEQUENTIAL: usize = 100;
const CONCURRENT: usize = 20;

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("ip");
    assert!(st.success(), "ip {}", args.join(" "));
}

fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/netns/{ns}"))
}

struct Plugin {
    label: &'static str,
    /// The plugin binary and its network configuration.
    bin: PathBuf,
    conf: String,
    node: String,
    /// Where the pod's probe goes (its gateway), when the result names none.
    gateway: Option<IpAddr>,
}

/// Runs ADD from a thread inside the node's namespace (so that a plugin
/// that works in the node namespace, as `bridge` does, finds it there).
fn add(p: &Plugin, ns: &str, id: &str) -> serde_json::Value {
    let node = netns_path(&p.node);
    let out = in_netns(&node, || {
        let mut c = Command::new(&p.bin)
            .env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns_path(ns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_DIR)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("plugin");
        c.stdin
            .take()
            .unwrap()
            .write_all(p.conf.as_bytes())
            .unwrap();
        c.wait_with_output().unwrap()
    })
    .expect("node namespace");
    assert!(
        out.status.success(),
        "{} ADD: {}{}",
        p.label,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("result")
}

/// Sends from inside `ns` to `dst` every 0.5 ms until an echo comes back.
fn first_packet(ns: &str, dst: SocketAddr, deadline: Instant) -> bool {
    in_netns(&netns_path(ns), || {
        let sock = loop {
            // the address appears with the interface
            match UdpSocket::bind("0.0.0.0:0") {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(500))
                }
                Err(_) => return false,
            }
        };
        sock.set_read_timeout(Some(Duration::from_micros(500)))
            .unwrap();
        let mut buf = [0u8; 16];
        while Instant::now() < deadline {
            let _ = sock.send_to(b"probe", dst);
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && &buf[..n] == b"probe"
            {
                return true;
            }
        }
        false
    })
    .unwrap_or(false)
}

fn one_attach(p: &Plugin, ns: &str, id: &str) -> Duration {
    let t0 = Instant::now();
    let result = add(p, ns, id);
    let gw = p.gateway.unwrap_or_else(|| {
        result["ips"][0]["gateway"]
            .as_str()
            .and_then(|g| g.parse().ok())
            .expect("a gateway in the result")
    });
    assert!(
        first_packet(ns, SocketAddr::new(gw, 7777), t0 + Duration::from_secs(10)),
        "{}: no packet passed for {id}",
        p.label
    );
    t0.elapsed()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Node {
    name: String,
    daemon: Option<Child>,
    echo: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        drop(self.echo.take()); // the thread ends with the process
    }
}

fn node(name: &str) -> Node {
    let _ = Command::new("ip").args(["netns", "del", name]).status();
    ip(&["netns", "add", name]);
    ip(&["-n", name, "link", "set", "lo", "up"]);
    // a UDP echo server on every address of the node
    let sock = in_netns(&netns_path(name), || UdpSocket::bind("0.0.0.0:7777"))
        .unwrap()
        .unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    Node {
        name: name.to_string(),
        daemon: None,
        echo: Some(echo),
    }
}

fn measure(p: &Plugin, tag: &str) -> [(Duration, Duration); 2] {
    let mut out = [(Duration::ZERO, Duration::ZERO); 2];
    // sequential
    let mut times = Vec::new();
    let mut pods = Vec::new();
    for i in 0..SEQUENTIAL {
        let ns = format!("{tag}s{i}");
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &ns]);
        times.push(one_attach(p, &ns, &format!("{tag}-s{i}")));
        pods.push(ns);
    }
    out[0] = (percentile(&mut times, 0.5), percentile(&mut times, 0.99));
    // concurrent
    let names: Vec<String> = (0..CONCURRENT).map(|i| format!("{tag}c{i}")).collect();
    for ns in &names {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", ns]);
    }
    let mut times: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, ns)| s.spawn(move || one_attach(p, ns, &format!("{tag}-c{i}"))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    out[1] = (percentile(&mut times, 0.5), percentile(&mut times, 0.99));
    for ns in pods.iter().chain(&names) {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    out
}

fn build_binaries() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "vswitch",
            "-p",
            "vswitch-cni",
            "--bins",
        ])
        .status()
        .expect("cargo build");
    assert!(st.success());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    dir.join("release")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo test --benches asks for a list
    }
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0"
        || !Path::new(CNI_DIR).join("bridge").exists()
    {
        println!(
            "SKIPPED: the attach benchmark needs root and /usr/lib/cni (containernetworking-plugins)"
        );
        return;
    }
    let bin = build_binaries();
    let dir = std::env::temp_dir().join(format!("vswitch-attach-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ipam = |subnet: &str, data: &str| {
        serde_json::json!({
            "type": "host-local",
            "dataDir": dir.join(data),
            "ranges": [[{ "subnet": subnet }]],
        })
    };

    // vswitch: vswitchd in its node namespace
    let mut vs_node = node("vsbench-node");
    let socket = dir.join("vswitchd.sock");
    let log = std::fs::File::create(dir.join("vswitchd.log")).unwrap();
    vs_node.daemon = Some(
        Command::new("ip")
            .args(["netns", "exec", "vsbench-node"])
            .arg(bin.join("vswitchd"))
            .args(["run", "--socket"])
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while !socket.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "vswitchd did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    let vswitch = Plugin {
        label: "vswitch (vswitch-cni + vswitchd)",
        bin: bin.join("vswitch-cni"),
        conf: serde_json::json!({
            "cniVersion": "1.0.0", "name": "vsbench", "type": "vswitch-cni",
            "socket": socket, "ipam": ipam("10.201.0.0/16", "ipam-vs"),
        })
        .to_string(),
        node: "vsbench-node".into(),
        gateway: Some("169.254.1.1".parse().unwrap()),
    };
    // the reference bridge plugin in a node namespace of its own
    let br_node = node("brbench-node");
    let bridge = Plugin {
        label: "bridge (reference plugin, veth + Linux bridge)",
        bin: Path::new(CNI_DIR).join("bridge"),
        conf: serde_json::json!({
            "cniVersion": "1.0.0", "name": "brbench", "type": "bridge",
            "bridge": "cnibench0", "isGateway": true, "ipMasq": false,
            "ipam": ipam("10.202.0.0/16", "ipam-br"),
        })
        .to_string(),
        node: "brbench-node".into(),
        gateway: None,
    };
    println!("pod attach latency: CNI ADD until the first packet passes (ms)");
    println!(
        "{:<48} {:>10} {:>10} {:>10} {:>10}",
        "plugin", "seq p50", "seq p99", "conc p50", "conc p99"
    );
    for (p, tag) in [(&vswitch, "vsb"), (&bridge, "brb")] {
        let [(s50, s99), (c50, c99)] = measure(p, tag);
        println!(
            "{:<48} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            p.label,
            ms(s50),
            ms(s99),
            ms(c50),
            ms(c99)
        );
    }
    println!(
        "({SEQUENTIAL} sequential ADDs, then {CONCURRENT} at once; target for vswitch: p50 20 ms, p99 100 ms)"
    );
    drop(vs_node);
    drop(br_node);
    if std::env::var("VSWITCH_BENCH_KEEP").is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
