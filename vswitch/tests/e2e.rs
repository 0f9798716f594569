//! End to end, as a container runtime drives vswitch: a network namespace
//! plays the node and runs `vswitchd`; every pod is a network namespace
//! wired in by the real `vswitch-cni` binary, called exactly as a runtime
//! calls it (CNI_* environment, network configuration on stdin), with IPAM
//! delegated to Debian's `host-local`. Traffic is kernel TCP and UDP.
//!
//! Needs root (or a user namespace) and /usr/lib/cni/host-local. Without
//! them a test prints `SKIPPED: reason`; with `CI=true` a skip is a failure.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod common;
mod pods;
use pods::{AGENT, CNI_DIR, ip, plugin, run, skip_unless_able};
use vswitch::tools::kube_proxy;

static RUN: AtomicU32 = AtomicU32::new(0);

/// One test's world: the node namespace with vswitchd, pods, folders.
struct World {
    tag: String,
    node: String,
    dir: PathBuf,
    daemon: Option<Child>,
    namespaces: Vec<String>,
    servers: Vec<Child>,
    subnet: String,
    /// Where policy comes from: the manifest folder, or these arguments.
    source: Vec<String>,
    /// More arguments for `vswitchd run`.
    args: Vec<String>,
}

struct Pod {
    ns: String,
    container: String,
    v4: String,
    v6: String,
    /// The plugin's ADD result, as printed.
    result: String,
}

impl World {
    fn new() -> World {
        World::with_source(vec![])
    }

    /// A world whose vswitchd takes policy from `source` (arguments; empty:
    /// the manifest folder).
    fn with_source(source: Vec<String>) -> World {
        World::with(source, vec![])
    }

    /// A world whose vswitchd takes policy from the manifest folder and
    /// these more arguments.
    fn with_args(args: &[&str]) -> World {
        World::with(vec![], args.iter().map(|a| a.to_string()).collect())
    }

    fn with(source: Vec<String>, args: Vec<String>) -> World {
        let n = RUN.fetch_add(1, Ordering::Relaxed);
        let tag = format!("e{}x{n}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("vswitch-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("manifests")).unwrap();
        let node = format!("{tag}-node");
        ip(&["netns", "add", &node]);
        ip(&["-n", &node, "link", "set", "lo", "up"]);
        let mut w = World {
            tag,
            node: node.clone(),
            dir,
            daemon: None,
            namespaces: vec![node],
            servers: Vec::new(),
            subnet: format!("10.{}.{}", 100 + n / 250, n % 250),
            source,
            args,
        };
        w.write_manifest(
            "00-namespace.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n",
        );
        w.start_daemon();
        w
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("run/vswitchd.sock")
    }

    fn start_daemon(&mut self) {
        // the log is appended to across restarts: wait for this run's line
        let started = self.log().matches("vswitchd: ready").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("vswitchd.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node])
            .arg(env!("CARGO_BIN_EXE_vswitchd"))
            .arg("run")
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(if self.source.is_empty() {
                vec![
                    "--manifests".to_string(),
                    self.dir.join("manifests").display().to_string(),
                ]
            } else {
                self.source.clone()
            })
            // the node namespace's own loopback: no clash between tests
            .args(["--metrics-addr", "127.0.0.1:9099"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vswitchd");
        self.daemon = Some(child);
        let t0 = Instant::now();
        while !self.socket().exists() || self.log().matches("vswitchd: ready").count() <= started {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "vswitchd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops vswitchd as an orchestrator would (SIGTERM).
    fn stop_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // `ip netns exec` execs vswitchd: the child is the daemon.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vswitchd.log")).unwrap_or_default()
    }

    fn write_manifest(&self, name: &str, text: &str) {
        let p = self.dir.join("manifests").join(name);
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
    }

    /// The generation the daemon logs after a reload; waits for the next.
    fn reloads(&self) -> usize {
        self.log().matches("desired cluster updated").count()
    }

    fn wait_reload(&self, before: usize) {
        let t0 = Instant::now();
        while self.reloads() <= before {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no reload: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn conf(&self) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"vswitch","type":"vswitch-cni","socket":"{}","mtu":1500,
               "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{}.0/24"}}],[{{"subnet":"fd00:{}::/64"}}]]}}}}"#,
            self.socket().display(),
            self.dir.join("ipam").display(),
            self.subnet,
            self.subnet.replace('.', ":"),
        )
    }

    /// Calls the plugin as a runtime does; returns exit status and stdout.
    fn cni(
        &self,
        command: &str,
        container: &str,
        ns: &str,
        args: &str,
        stdin: &str,
    ) -> (i32, String) {
        pods::cni(command, container, ns, args, stdin)
    }

    /// A pod named `name` in namespace default: its netns, CNI ADD.
    fn add_pod(&mut self, name: &str) -> Pod {
        let ns = format!("{}-{name}", self.tag);
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.namespaces.push(ns.clone());
        let container = format!(
            "{}-{name}-{}",
            self.tag,
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        self.cni_add(&ns, &container, name)
    }

    fn cni_add(&mut self, ns: &str, container: &str, name: &str) -> Pod {
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
        let (code, out) = self.cni("ADD", container, ns, &args, &self.conf());
        assert_eq!(code, 0, "ADD {name}: {out}\n{}", self.log());
        let result: serde_json::Value = serde_json::from_str(&out).expect("result JSON");
        let (v4, v6) = pods::result_addresses(&result);
        assert_eq!(
            result["interfaces"][0]["sandbox"],
            format!("/var/run/netns/{ns}")
        );
        Pod {
            ns: ns.to_string(),
            container: container.to_string(),
            v4,
            v6,
            result: out,
        }
    }

    fn serve(&mut self, ns: &str, port: u16) {
        self.servers.push(pods::serve(ns, port));
    }

    /// One TCP (or UDP) exchange from `ns` to `dst`: "ok" or why not.
    fn probe(&self, ns: &str, proto: &str, dst: &str, port: u16) -> String {
        pods::probe(ns, proto, dst, port)
    }

    /// The daemon's Prometheus metrics (served on the node's loopback).
    fn metrics(&self) -> String {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.node,
            "python3",
            "-c",
            "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9099/metrics').read().decode())",
        ]))
    }

    /// vswitchctl against this world's daemon.
    fn ctl(&self, args: &[&str]) -> String {
        let mut c =
            Command::new(Path::new(env!("CARGO_BIN_EXE_vswitchd")).with_file_name("vswitchctl"));
        c.args(args).arg("--socket").arg(self.socket());
        run(&mut c)
    }

    fn lease_exists(&self, ip: &str) -> bool {
        // host-local keeps one file per leased address, under its network name
        self.dir.join("ipam/vswitch").join(ip).exists()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        self.stop_daemon();
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP connection held open from `ns` to `dst`:`port` (the agent's
/// `hold` mode): each line sent is echoed back over the same connection.
struct Held {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Held {
    fn open(ns: &str, dst: &str, port: u16) -> Held {
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", ns, "python3", "-u", "-c", AGENT, "hold", dst,
            ])
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Held {
            child,
            input,
            output,
        }
    }

    /// One line there and back: "ok" or why not.
    fn exchange(&mut self, text: &str) -> String {
        writeln!(self.input, "{text}").unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    fn close(self) {
        let Held {
            mut child, input, ..
        } = self;
        drop(input);
        let _ = child.wait();
    }
}

fn pod_manifest(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: {name}\nspec:\n  containers: [{{name: c, image: x}}]\n"
    )
}

const DENY_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-b\n  namespace: default\nspec:\n  podSelector:\n    matchLabels: {app: b}\n  policyTypes: [Ingress]\n";

const ALLOW_A_TO_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-a\n  namespace: default\nspec:\n  podSelector:\n    matchLabels: {app: b}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: a}\n    ports:\n    - {protocol: TCP, port: 8080}\n";

#[test]
fn pods_talk_policy_denies_then_allows_and_the_node_always_passes() {
    if skip_unless_able() {
        return;
    }
    let mut w = World::new();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(w.socket()).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the control socket is the owner's only"
    );
    // a client that connects and says nothing holds up nobody (requests are
    // read on threads of their own; the daemon would wait 5 s for it)
    let _silent = std::os::unix::net::UnixStream::connect(w.socket()).unwrap();
    let t0 = Instant::now();
    w.ctl(&["ports"]);
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "answered while a silent client is connected"
    );
    // 64 idle clients fill the readers: the next is told at once to try
    // again (no thread, no wait), and when they leave requests are served
    drop(_silent);
    // (its reader sees the end at once; one that ended between the idle
    // clients' and the next's accept would take the next in)
    std::thread::sleep(Duration::from_secs(1));
    let idle: Vec<_> = (0..64)
        .map(|_| std::os::unix::net::UnixStream::connect(w.socket()).unwrap())
        .collect();
    let busy = std::os::unix::net::UnixStream::connect(w.socket()).unwrap();
    // (generous: the acceptor shares two cores with every other test here)
    busy.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reply = String::new();
    if let Err(e) = std::io::BufRead::read_line(&mut std::io::BufReader::new(&busy), &mut reply) {
        panic!("{e}: {}", w.log());
    }
    assert!(reply.contains("busy"), "{reply}");
    drop(idle);
    let t0 = Instant::now();
    loop {
        use vswitch_cni::proto::{Reply, Request};
        let r =
            vswitch_cni::client::call(&w.socket(), &Request::Status {}, Duration::from_secs(20));
        match r {
            Ok(Reply::Error(e)) if e.msg.contains("busy") => {
                assert!(t0.elapsed() < Duration::from_secs(20), "still busy");
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(Reply::Status { .. }) => break,
            r => panic!("{r:?}"),
        }
    }
    w.write_manifest("a.yaml", &pod_manifest("a"));
    w.write_manifest("b.yaml", &pod_manifest("b"));
    let a = w.add_pod("a");
    let b = w.add_pod("b");
    w.serve(&b.ns, 8080);
    w.serve(&a.ns, 8080);
    for dst in [&b.v4, &b.v6] {
        assert_eq!(w.probe(&a.ns, "tcp", dst, 8080), "ok", "TCP a -> b {dst}");
        assert_eq!(w.probe(&a.ns, "udp", dst, 8080), "ok", "UDP a -> b {dst}");
    }
    // deny-all ingress for b
    let before = w.reloads();
    w.write_manifest("deny-b.yaml", DENY_B);
    w.wait_reload(before);
    for dst in [&b.v4, &b.v6] {
        assert_ne!(
            w.probe(&a.ns, "tcp", dst, 8080),
            "ok",
            "TCP a -> b {dst} denied"
        );
        assert_ne!(
            w.probe(&a.ns, "udp", dst, 8080),
            "ok",
            "UDP a -> b {dst} denied"
        );
    }
    // b's own connections get their replies through its deny-all ingress
    assert_eq!(
        w.probe(&b.ns, "tcp", &a.v4, 8080),
        "ok",
        "b -> a, replies come back"
    );
    assert_eq!(
        w.probe(&b.ns, "udp", &a.v6, 8080),
        "ok",
        "b -> a UDP, replies come back"
    );
    // the node reaches b whatever the policies say (kubelet probes)
    assert_eq!(w.probe(&w.node, "tcp", &b.v4, 8080), "ok", "node -> b");
    // allow a -> b on 8080/TCP only
    let before = w.reloads();
    w.write_manifest("allow-a.yaml", ALLOW_A_TO_B);
    w.wait_reload(before);
    assert_eq!(w.probe(&a.ns, "tcp", &b.v4, 8080), "ok", "allowed again");
    assert_ne!(w.probe(&a.ns, "udp", &b.v4, 8080), "ok", "UDP still denied");
    // a bad policy is rejected by name and field; the rest keeps working
    let before = w.reloads();
    w.write_manifest(
        "bad.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: broken\n  namespace: default\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - {protocol: TCP, port: 99999}\n",
    );
    w.wait_reload(before);
    assert!(
        w.log().contains("broken"),
        "the bad policy is named: {}",
        w.log()
    );
    assert_eq!(w.probe(&a.ns, "tcp", &b.v4, 8080), "ok", "still allowed");
    assert_ne!(w.probe(&a.ns, "udp", &b.v4, 8080), "ok", "still denied");

    // what vswitchctl sees of the live state
    let ports = w.ctl(&["ports"]);
    for name in ["default/a/eth0", "default/b/eth0", "vsw0"] {
        assert!(ports.contains(name), "{ports}");
    }
    assert!(!ports.contains(" no "), "every port is ready: {ports}");
    let tcp = w.ctl(&["explain", "default/a", "default/b", "8080/TCP"]);
    assert!(tcp.contains("allowed") && tcp.contains("allow-a"), "{tcp}");
    let udp = w.ctl(&["explain", "default/a", "default/b", "8080/UDP"]);
    assert!(udp.contains("denied"), "{udp}");
    let ct = w.ctl(&["conntrack"]);
    assert!(ct.contains(&format!("{}:8080", b.v4)), "{ct}");
    let flows = w.ctl(&["flows"]);
    assert!(flows.contains("flow-cache entries"), "{flows}");
    let json: serde_json::Value = serde_json::from_str(&w.ctl(&["ports", "--json"])).unwrap();
    assert!(
        json["ports"].as_array().is_some_and(|p| p.len() == 3),
        "{json}"
    );
    // and the metrics endpoint
    let metrics = w.metrics();
    let value = |line_start: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in {metrics}"))
    };
    assert!(value("vswitch_packets_total{outcome=\"policy_deny\"}") > 0);
    assert!(value("vswitch_port_rx_packets_total{port=\"1\",name=\"default/a/eth0\"}") > 0);
    // send-side drops are exported per port (none here: every port drains)
    assert_eq!(
        value("vswitch_port_tx_queue_full_total{port=\"1\",name=\"default/a/eth0\"}"),
        0
    );
    assert_eq!(
        value("vswitch_port_tx_error_total{port=\"1\",name=\"default/a/eth0\"}"),
        0
    );
    // and so are slow-path budget pauses (none: a and b are far within it)
    assert_eq!(
        value("vswitch_port_rx_paused_total{port=\"1\",name=\"default/a/eth0\"}"),
        0
    );
    // and drops before the switch read a frame (a TAP cannot tell: 0)
    assert_eq!(
        value("vswitch_port_rx_dropped_total{port=\"1\",name=\"default/a/eth0\"}"),
        0
    );
    assert_eq!(value("vswitch_attachments"), 2);
    assert_eq!(value("vswitch_source_in_sync"), 1);
    assert!(value("vswitch_policy_generation") > 1);
    assert!(value("vswitch_control_refused_total") >= 1);
}

#[test]
fn a_pod_reaches_an_outside_host_through_the_node() {
    if skip_unless_able() {
        return;
    }
    let mut w = World::new();
    let a = w.add_pod("a");
    // the outside: a namespace joined to the node by a veth pair
    let out = format!("{}-out", w.tag);
    ip(&["netns", "add", &out]);
    w.namespaces.push(out.clone());
    let (n_end, o_end) = (format!("{}n", w.tag), format!("{}o", w.tag));
    ip(&[
        "link", "add", &n_end, "netns", &w.node, "type", "veth", "peer", "name", &o_end, "netns",
        &out,
    ]);
    ip(&["-n", &w.node, "addr", "add", "192.0.2.1/24", "dev", &n_end]);
    ip(&["-n", &w.node, "link", "set", &n_end, "up"]);
    ip(&["-n", &out, "addr", "add", "192.0.2.2/24", "dev", &o_end]);
    ip(&["-n", &out, "link", "set", &o_end, "up"]);
    ip(&["-n", &out, "link", "set", "lo", "up"]);
    ip(&[
        "-n",
        &out,
        "route",
        "add",
        &format!("{}.0/24", w.subnet),
        "via",
        "192.0.2.1",
    ]);
    run(Command::new("ip").args([
        "netns",
        "exec",
        &w.node,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]));
    w.serve(&out, 9000);
    assert_eq!(
        w.probe(&a.ns, "tcp", "192.0.2.2", 9000),
        "ok",
        "pod -> outside"
    );
    assert_eq!(
        w.probe(&a.ns, "udp", "192.0.2.2", 9000),
        "ok",
        "pod -> outside UDP"
    );
}

#[test]
fn delete_is_idempotent_and_frees_the_address_then_the_pod_comes_back() {
    if skip_unless_able() {
        return;
    }
    let mut w = World::new();
    let a = w.add_pod("a");
    let b = w.add_pod("b");
    w.serve(&b.ns, 8080);
    assert_eq!(w.probe(&a.ns, "tcp", &b.v4, 8080), "ok");
    assert!(w.lease_exists(&a.v4), "host-local leased {}", a.v4);
    for _ in 0..2 {
        let (code, out) = w.cni("DEL", &a.container, &a.ns, "", &w.conf());
        assert_eq!(code, 0, "DEL: {out}");
    }
    assert!(!w.lease_exists(&a.v4), "the lease of {} is freed", a.v4);
    let links = ip(&["-n", &a.ns, "link"]);
    assert!(!links.contains("eth0"), "eth0 is gone: {links}");
    // the same pod again, in the same namespace, under a new container
    let again = w.cni_add(&a.ns, &format!("{}-again", a.container), "a");
    assert_eq!(
        w.probe(&again.ns, "tcp", &b.v4, 8080),
        "ok",
        "re-added pod talks"
    );
    // CHECK agrees with what ADD returned
    let mut conf: serde_json::Value = serde_json::from_str(&w.conf()).unwrap();
    conf["prevResult"] = serde_json::from_str(&again.result).unwrap();
    let (code, out) = w.cni(
        "CHECK",
        &format!("{}-again", a.container),
        &a.ns,
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a",
        &conf.to_string(),
    );
    assert_eq!(code, 0, "CHECK: {out}");
}

#[test]
fn a_tcp_connection_survives_a_daemon_restart() {
    if skip_unless_able() {
        return;
    }
    let mut w = World::new();
    let a = w.add_pod("a");
    let b = w.add_pod("b");
    w.serve(&b.ns, 8080);
    let mut held = Held::open(&a.ns, &b.v4, 8080);
    assert_eq!(held.exchange("before"), "ok");
    w.stop_daemon();
    assert!(!w.socket().exists(), "the socket goes with the daemon");
    // the pods keep their interfaces while vswitchd is away
    assert!(ip(&["-n", &a.ns, "link"]).contains("eth0"));
    w.start_daemon();
    assert!(w.log().contains("re-attached"), "{}", w.log());
    assert_eq!(
        held.exchange("after the restart"),
        "ok",
        "the open connection survives"
    );
    assert_eq!(
        w.probe(&a.ns, "tcp", &b.v4, 8080),
        "ok",
        "new connections too"
    );
    held.close();
}

#[test]
fn gc_removes_attachments_that_are_no_longer_valid() {
    if skip_unless_able() {
        return;
    }
    let mut w = World::new();
    let a = w.add_pod("a");
    let b = w.add_pod("b");
    let mut conf: serde_json::Value = serde_json::from_str(&w.conf()).unwrap();
    conf["cniVersion"] = "1.1.0".into();
    conf["cni.dev/valid-attachments"] =
        serde_json::json!([{ "containerID": a.container, "ifname": "eth0" }]);
    let mut gc = Command::new(plugin())
        .env_clear()
        .env("CNI_COMMAND", "GC")
        .env("CNI_PATH", CNI_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    gc.stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = gc.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "GC: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !ip(&["-n", &b.ns, "link"]).contains("eth0"),
        "b's interface is gone"
    );
    assert!(!w.lease_exists(&b.v4), "b's lease is freed");
    assert!(w.lease_exists(&a.v4), "a keeps its lease");
    assert!(
        ip(&["-n", &a.ns, "link"]).contains("eth0"),
        "a keeps its interface"
    );
}

#[test]
fn chained_with_the_reference_tuning_plugin() {
    if skip_unless_able() {
        return;
    }
    let mut w = World::new();
    let a = w.add_pod("a");
    // what a runtime does for the second plugin of a conflist: the same
    // network, the plugin's own config, the previous result
    let first = &a.result;
    let tuning = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "vswitch",
        "type": "tuning",
        "sysctl": { "net.ipv4.conf.eth0.accept_local": "1" },
        "prevResult": serde_json::from_str::<serde_json::Value>(first).unwrap(),
    });
    let out = Command::new(Path::new(CNI_DIR).join("tuning"))
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", &a.container)
        .env("CNI_NETNS", format!("/var/run/netns/{}", a.ns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(tuning.to_string().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "tuning: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let chained: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(chained["interfaces"][0]["name"], "eth0", "{chained}");
    let v = run(Command::new("ip").args([
        "netns",
        "exec",
        &a.ns,
        "cat",
        "/proc/sys/net/ipv4/conf/eth0/accept_local",
    ]));
    assert_eq!(v.trim(), "1", "tuning applied its sysctl in the pod");
}

#[test]
fn startup_errors_end_with_one_line_and_a_failure() {
    if skip_unless_able() {
        return;
    }
    let w = World::new();
    // a second daemon on the same socket
    let out = Command::new("ip")
        .args(["netns", "exec", &w.node])
        .arg(env!("CARGO_BIN_EXE_vswitchd"))
        .args(["run", "--no-node-port", "--socket"])
        .arg(w.socket())
        .arg("--state-dir")
        .arg(w.dir.join("state2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("vswitchd: control socket") && last.contains("in use"),
        "{err}"
    );
    // a manifests folder that does not exist
    let out = Command::new(env!("CARGO_BIN_EXE_vswitchd"))
        .args([
            "run",
            "--no-node-port",
            "--manifests",
            "/nonexistent/vswitch",
            "--socket",
        ])
        .arg(w.dir.join("other.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .last()
            .unwrap_or_default()
            .contains("not a folder"),
        "{err}"
    );
    // no privilege for TAP devices (as an ordinary user; only where this
    // test runs as the real root, which can switch to one)
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    if uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_vswitchd"))
            .args([
                "run",
                "--socket",
                "/tmp/vswitch-nobody.sock",
                "--state-dir",
                "/tmp/vswitch-nobody",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.contains("/dev/net/tun") || last.contains("CAP_NET_ADMIN"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all("/tmp/vswitch-nobody");
    }
}

/// Runs a second vswitchd in `w`'s node namespace with `args`; it has to
/// fail within a few seconds (one still running is stopped and reported).
fn second_vswitchd(w: &World, args: &[&str]) -> String {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &w.node])
        .arg(env!("CARGO_BIN_EXE_vswitchd"))
        .arg("run")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t0.elapsed() > Duration::from_secs(5) {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a second vswitchd started ({args:?}): {err}"
    );
    err
}

/// A second vswitchd next to a running one fails with one line that says
/// so: on the node TAP (naming the options that avoid it) and on the
/// state folder (locked for the first daemon's life).
#[test]
fn a_second_vswitchd_is_refused_with_one_line() {
    if skip_unless_able() {
        return;
    }
    let w = World::new();
    let socket2 = w.dir.join("run2/vswitchd.sock");
    let state2 = w.dir.join("state2");
    // the same node TAP (vsw0), another socket and state folder
    let err = second_vswitchd(
        &w,
        &[
            "--socket",
            &socket2.display().to_string(),
            "--state-dir",
            &state2.display().to_string(),
        ],
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("vswitchd: node TAP vsw0")
            && last.contains("another vswitchd")
            && last.contains("--node-tap")
            && last.contains("--no-node-port"),
        "{err}"
    );
    assert_eq!(err.matches("vswitchd:").count(), 1, "{err}");
    // the same state folder, no node port, another socket
    let state = w.dir.join("state");
    let err = second_vswitchd(
        &w,
        &[
            "--no-node-port",
            "--socket",
            &socket2.display().to_string(),
            "--state-dir",
            &state.display().to_string(),
        ],
    );
    let last = err.lines().last().unwrap_or_default();
    let pid = w.daemon.as_ref().unwrap().id();
    assert_eq!(
        last,
        format!(
            "vswitchd: state folder {} is in use by another vswitchd (pid {pid})",
            state.display()
        ),
        "{err}"
    );
    // the first daemon is untouched: it still answers (`run` fails the
    // test on an error)
    w.ctl(&["ports"]);
}

/// With the API server as its source, vswitchd attaches pods but passes
/// none of their traffic until the first complete cluster arrives: here
/// the API server never answers, so the pods stay closed, vswitchctl says
/// they are not ready, and the metrics say the source is out of sync.
#[test]
fn before_the_api_server_answers_pods_get_no_traffic() {
    if skip_unless_able() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vswitch-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}\nusers:\n- name: u\n  user: {token: x}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    )
    .unwrap();
    let mut w = World::with_source(vec![
        "--kube".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
    ]);
    let a = w.add_pod("a");
    let b = w.add_pod("b");
    w.serve(&b.ns, 8080);
    assert_ne!(
        w.probe(&a.ns, "tcp", &b.v4, 8080),
        "ok",
        "closed before the first cluster"
    );
    let ports = w.ctl(&["ports"]);
    let pod_lines: Vec<&str> = ports.lines().filter(|l| l.contains("default/")).collect();
    assert_eq!(pod_lines.len(), 2, "{ports}");
    assert!(
        pod_lines.iter().all(|l| l.contains(" no ")),
        "not ready: {ports}"
    );
    assert!(
        ports.contains("not_ready="),
        "frames were dropped as not ready: {ports}"
    );
    let metrics = w.metrics();
    assert!(metrics.contains("vswitch_source_in_sync 0"), "{metrics}");
    assert!(w.log().contains("out of sync"), "{}", w.log());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_kube_proxy_on_the_node_pods_reach_services_whose_endpoints_share_the_node() {
    if skip_unless_able() {
        return;
    }
    let mut w = World::with_args(&["--service-proxy", "kube-proxy"]);
    for name in ["a", "b", "c"] {
        w.write_manifest(&format!("{name}.yaml"), &pod_manifest(name));
    }
    let a = w.add_pod("a");
    let b = w.add_pod("b");
    let c = w.add_pod("c");
    for p in [&b, &c] {
        w.serve(&p.ns, 8080);
        w.serve(&p.ns, 5353);
        w.serve(&p.ns, 9090);
    }
    // the node forwards, as every Kubernetes node does, and kube-proxy's
    // rules are in place for four Services in the default 10.96.0.0/12
    run(Command::new("ip").args([
        "netns",
        "exec",
        &w.node,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]));
    // and has a default route, to an outside namespace (a REJECT in
    // FORWARD needs a route first)
    let out = format!("{}-out", w.tag);
    ip(&["netns", "add", &out]);
    w.namespaces.push(out.clone());
    let (n_end, o_end) = (format!("{}n", w.tag), format!("{}o", w.tag));
    ip(&[
        "link", "add", &n_end, "netns", &w.node, "type", "veth", "peer", "name", &o_end, "netns",
        &out,
    ]);
    ip(&["-n", &w.node, "addr", "add", "192.0.2.1/24", "dev", &n_end]);
    ip(&["-n", &w.node, "link", "set", &n_end, "up"]);
    ip(&["-n", &w.node, "route", "add", "default", "via", "192.0.2.2"]);
    let v4 = |p: &Pod| p.v4.parse::<std::net::IpAddr>().unwrap();
    let port = |name: &str, proto, vip: &str, port, endpoints| kube_proxy::ServicePort {
        name: name.to_string(),
        protocol: proto,
        cluster_ip: vip.parse().unwrap(),
        port,
        endpoints,
        affinity_seconds: None,
    };
    let sticky = kube_proxy::ServicePort {
        affinity_seconds: Some(10800),
        ..port(
            "default/sticky:http",
            "tcp",
            "10.96.0.82",
            80,
            vec![(v4(&b), 9090), (v4(&c), 9090)],
        )
    };
    // kube-proxy's sync: the whole ruleset at once, only-b's endpoints given
    let sync = |only_b: Vec<(std::net::IpAddr, u16)>| {
        let rules = kube_proxy::rules(
            &[
                port(
                    "default/web:http",
                    "tcp",
                    "10.96.0.80",
                    80,
                    vec![(v4(&b), 8080), (v4(&c), 8080)],
                ),
                port(
                    "default/dns:dns",
                    "udp",
                    "10.96.0.10",
                    53,
                    vec![(v4(&b), 5353)],
                ),
                port("default/only-b:http", "tcp", "10.96.0.81", 80, only_b),
                port("default/none:http", "tcp", "10.96.0.99", 80, vec![]),
                sticky.clone(),
            ],
            Some(&format!("{}.0/24", w.subnet)),
            false,
        );
        let mut restore = Command::new("ip")
            .args(["netns", "exec", &w.node, "iptables-restore"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("iptables-restore (apt-get install iptables)");
        restore
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        let out = restore.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "iptables-restore: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sync(vec![(v4(&b), 8080)]);
    // what the node port dropped as spoofed (the bug: kube-proxy's
    // translations carry a local pod's source)
    let node_spoofed = |w: &World| -> u64 {
        let json: serde_json::Value = serde_json::from_str(&w.ctl(&["ports", "--json"])).unwrap();
        json["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "vsw0")
            .and_then(|p| p["outcomes"]["spoofed"].as_u64())
            .unwrap_or(0)
    };

    // TCP to a Service with two endpoints on this node, many times: every
    // connection is established, and both endpoints serve some
    for i in 0..16 {
        assert_eq!(
            w.probe(&a.ns, "tcp", "10.96.0.80", 80),
            "ok",
            "a -> web, connection {i}\n{}",
            w.log()
        );
    }
    let ct = w.ctl(&["conntrack"]);
    for p in [&b, &c] {
        assert!(
            ct.contains(&format!("{}:8080", p.v4)),
            "a connection to {} through the Service: {ct}",
            p.v4
        );
    }
    // ClientIP affinity: every connection of a's lands on one endpoint
    for i in 0..12 {
        assert_eq!(
            w.probe(&a.ns, "tcp", "10.96.0.82", 80),
            "ok",
            "a -> sticky, connection {i}"
        );
    }
    let ct = w.ctl(&["conntrack"]);
    let landed: Vec<&Pod> = [&b, &c]
        .into_iter()
        .filter(|p| ct.contains(&format!("{}:9090", p.v4)))
        .collect();
    assert_eq!(
        landed.len(),
        1,
        "one endpoint for all of a's connections: {ct}"
    );
    // UDP, as a pod asks cluster DNS
    assert_eq!(w.probe(&a.ns, "udp", "10.96.0.10", 53), "ok", "a -> dns");
    // hairpin: b through a Service whose only endpoint is b (kube-proxy
    // masquerades it to the node's address on vsw0)
    assert_eq!(
        w.probe(&b.ns, "tcp", "10.96.0.81", 80),
        "ok",
        "b -> its own Service"
    );
    // no endpoints: kube-proxy's REJECT answers at once
    let t0 = Instant::now();
    let refused = w.probe(&a.ns, "tcp", "10.96.0.99", 80);
    assert!(
        refused.contains("refused"),
        "{refused}\n{}",
        w.ctl(&["ports"])
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "refused, not timed out"
    );
    assert_eq!(
        node_spoofed(&w),
        0,
        "nothing kube-proxy sent back was taken for spoofing: {}",
        w.ctl(&["ports"])
    );

    // an endpoint removed (kube-proxy syncs the Service without it): new
    // connections are refused, an established one goes on (the node's
    // conntrack keeps its DNAT, the switch its tracked translation)
    let mut held = Held::open(&a.ns, "10.96.0.81", 80);
    assert_eq!(held.exchange("before"), "ok");
    sync(vec![]);
    let refused = w.probe(&a.ns, "tcp", "10.96.0.81", 80);
    assert!(refused.contains("refused"), "a new connection: {refused}");
    assert_eq!(
        held.exchange("after its endpoint left the Service"),
        "ok",
        "the established connection goes on"
    );
    held.close();
    sync(vec![(v4(&b), 8080)]);

    // policy judges the translated connection: b denies all ingress
    let before = w.reloads();
    w.write_manifest("deny-b.yaml", DENY_B);
    w.wait_reload(before);
    assert_ne!(
        w.probe(&a.ns, "tcp", "10.96.0.81", 80),
        "ok",
        "b is isolated"
    );
    assert_ne!(
        w.probe(&a.ns, "udp", "10.96.0.10", 53),
        "ok",
        "b is isolated"
    );
    // and a -> b on 8080/TCP allowed: through the Service too, though the
    // policy names neither the cluster IP nor its port
    let before = w.reloads();
    w.write_manifest("allow-a.yaml", ALLOW_A_TO_B);
    w.wait_reload(before);
    assert_eq!(w.probe(&a.ns, "tcp", "10.96.0.81", 80), "ok", "allowed");
    assert_ne!(
        w.probe(&a.ns, "udp", "10.96.0.10", 53),
        "ok",
        "UDP still not"
    );
    assert_ne!(w.probe(&c.ns, "tcp", "10.96.0.81", 80), "ok", "c is not a");
}

/// A ClusterIP Service of the manifest folder: `ports` as YAML flow.
fn service_manifest(name: &str, ip: &str, ports: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{clusterIP: {ip}, ports: {ports}{extra}}}\n"
    )
}

/// An EndpointSlice of `service` with ready IPv4 endpoints on `port`.
fn slice_manifest(
    service: &str,
    port_name: &str,
    proto: &str,
    port: u16,
    addrs: &[&str],
) -> String {
    let eps: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{addresses: [{a}], conditions: {{ready: true}}}}"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {service}-1, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nports: [{{name: {port_name}, port: {port}, protocol: {proto}}}]\n\
         endpoints: [{}]\n",
        eps.join(", ")
    )
}

#[test]
fn with_the_switch_as_service_proxy_pods_reach_services_of_the_manifest_folder() {
    if skip_unless_able() {
        return;
    }
    // the default: --service-proxy switch, nothing on the node translates
    let mut w = World::new();
    for name in ["a", "b", "c"] {
        w.write_manifest(&format!("{name}.yaml"), &pod_manifest(name));
    }
    let a = w.add_pod("a");
    let b = w.add_pod("b");
    let c = w.add_pod("c");
    for p in [&b, &c] {
        w.serve(&p.ns, 8080);
        w.serve(&p.ns, 5353);
        w.serve(&p.ns, 9090);
    }
    let before = w.reloads();
    let services = [
        service_manifest(
            "web",
            "10.96.0.80",
            "[{name: http, port: 80, targetPort: 8080}]",
            "",
        ),
        slice_manifest("web", "http", "TCP", 8080, &[&b.v4, &c.v4]),
        service_manifest(
            "dns",
            "10.96.0.10",
            "[{name: dns, port: 53, protocol: UDP, targetPort: 5353}]",
            "",
        ),
        slice_manifest("dns", "dns", "UDP", 5353, &[&b.v4]),
        service_manifest(
            "only-b",
            "10.96.0.81",
            "[{name: http, port: 80, targetPort: 8080}]",
            "",
        ),
        slice_manifest("only-b", "http", "TCP", 8080, &[&b.v4]),
        service_manifest(
            "none",
            "10.96.0.99",
            "[{name: http, port: 80}, {name: udp, port: 80, protocol: UDP}]",
            "",
        ),
        service_manifest(
            "sticky",
            "10.96.0.82",
            "[{name: http, port: 80, targetPort: 9090}]",
            ", sessionAffinity: ClientIP",
        ),
        slice_manifest("sticky", "http", "TCP", 9090, &[&b.v4, &c.v4]),
    ];
    w.write_manifest("services.yaml", &services.join("---\n"));
    w.wait_reload(before);
    let metrics = w.metrics();
    assert!(metrics.contains("vswitch_service_frontends 6"), "{metrics}");

    // TCP through a Service with two endpoints: every connection is
    // established, both endpoints serve some
    for i in 0..16 {
        assert_eq!(
            w.probe(&a.ns, "tcp", "10.96.0.80", 80),
            "ok",
            "a -> web, connection {i}\n{}",
            w.log()
        );
    }
    let ct = w.ctl(&["conntrack"]);
    for p in [&b, &c] {
        assert!(
            ct.contains(&format!("{}:8080", p.v4)),
            "a connection to {} through the Service: {ct}",
            p.v4
        );
    }
    // ClientIP affinity: every connection of a's lands on one endpoint
    for i in 0..12 {
        assert_eq!(
            w.probe(&a.ns, "tcp", "10.96.0.82", 80),
            "ok",
            "a -> sticky, connection {i}"
        );
    }
    let ct = w.ctl(&["conntrack"]);
    let landed = [&b, &c]
        .into_iter()
        .filter(|p| ct.contains(&format!("{}:9090", p.v4)))
        .count();
    assert_eq!(landed, 1, "one endpoint for all of a's connections: {ct}");
    // what vswitchctl shows: the frontends, their endpoints and the
    // connections through them
    let listed = w.ctl(&["services"]);
    println!("{listed}");
    assert!(
        listed.contains("default/web 10.96.0.80:80/TCP (http)"),
        "{listed}"
    );
    assert!(
        listed.contains("default/sticky 10.96.0.82:80/TCP (http)  [affinity ClientIP 10800s]"),
        "{listed}"
    );
    assert!(
        listed.contains("no endpoints: new connections are refused"),
        "{listed}"
    );
    let web_connections: u64 = listed
        .lines()
        .skip_while(|l| !l.starts_with("default/web "))
        .skip(1)
        .take(2)
        .map(|l| {
            l.split_whitespace()
                .rev()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{l}"))
        })
        .sum();
    assert!(web_connections >= 16, "web's connections: {listed}");
    let explained = w.ctl(&["explain", "default/a", "svc:default/web", "80/TCP"]);
    println!("{explained}");
    for p in [&b, &c] {
        assert!(
            explained.contains(&format!("-> {}:8080/TCP: allowed", p.v4)),
            "{explained}"
        );
    }
    // UDP, as a pod asks cluster DNS: the answer comes from the Service
    assert_eq!(w.probe(&a.ns, "udp", "10.96.0.10", 53), "ok", "a -> dns");
    // hairpin: b through a Service whose only endpoint is b
    assert_eq!(
        w.probe(&b.ns, "tcp", "10.96.0.81", 80),
        "ok",
        "b -> its own Service"
    );
    // no endpoints: refused at once by the switch (TCP RST; ICMP port
    // unreachable for UDP), as the client's socket measures it
    for proto in ["tcp", "udp"] {
        let refused = w.probe(&a.ns, proto, "10.96.0.99", 80);
        assert!(refused.contains("refused"), "{proto}: {refused}");
        let ms: f64 = refused
            .rsplit_once("after ")
            .and_then(|(_, t)| t.trim_end_matches(" ms").parse().ok())
            .unwrap_or_else(|| panic!("no time in {refused:?}"));
        println!("{proto}: refused after {ms} ms");
        assert!(ms < 100.0, "{proto}: refused after {ms} ms");
    }
    let metrics = w.metrics();
    assert!(
        metrics.contains("vswitch_service_refused_total 2"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("vswitch_service_connections_total 0"),
        "{metrics}"
    );
    // per Service: web's 16 connections, none's two refusals
    assert!(
        metrics.contains(
            "vswitch_service_frontend_connections_total{service=\"default/web\",frontend=\"10.96.0.80:80/TCP\"} 16"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "vswitch_service_frontend_refused_total{service=\"default/none\",frontend=\"10.96.0.99:80/UDP\"} 1"
        ),
        "{metrics}"
    );

    // only-b's endpoint removed: new connections are refused, an
    // established one goes on (its translation lives with its connection)
    let mut held = Held::open(&a.ns, "10.96.0.81", 80);
    assert_eq!(held.exchange("before"), "ok");
    let before = w.reloads();
    w.write_manifest(
        "services.yaml",
        &services.join("---\n").replace(
            &slice_manifest("only-b", "http", "TCP", 8080, &[&b.v4]),
            &slice_manifest("only-b", "http", "TCP", 8080, &[]),
        ),
    );
    w.wait_reload(before);
    let refused = w.probe(&a.ns, "tcp", "10.96.0.81", 80);
    assert!(refused.contains("refused"), "a new connection: {refused}");
    assert_eq!(
        held.exchange("after its endpoint left the Service"),
        "ok",
        "the established connection goes on"
    );
    held.close();
    let before = w.reloads();
    w.write_manifest("services.yaml", &services.join("---\n"));
    w.wait_reload(before);

    // policy judges the translated connection: b denies all ingress
    let before = w.reloads();
    w.write_manifest("deny-b.yaml", DENY_B);
    w.wait_reload(before);
    assert_ne!(
        w.probe(&a.ns, "tcp", "10.96.0.81", 80),
        "ok",
        "b is isolated"
    );
    let explained = w.ctl(&["explain", "default/a", "svc:default/only-b", "80/TCP"]);
    assert!(
        explained.contains(&format!("-> {}:8080/TCP: denied", b.v4)),
        "{explained}"
    );
    assert_ne!(
        w.probe(&a.ns, "udp", "10.96.0.10", 53),
        "ok",
        "b is isolated"
    );
    // a -> b on 8080/TCP allowed: through the Service too, though the
    // policy names neither the cluster IP nor its port
    let before = w.reloads();
    w.write_manifest("allow-a.yaml", ALLOW_A_TO_B);
    w.wait_reload(before);
    assert_eq!(w.probe(&a.ns, "tcp", "10.96.0.81", 80), "ok", "allowed");
    assert_ne!(
        w.probe(&a.ns, "udp", "10.96.0.10", 53),
        "ok",
        "UDP still not"
    );
    assert_ne!(w.probe(&c.ns, "tcp", "10.96.0.81", 80), "ok", "c is not a");
}
