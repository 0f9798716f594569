//! Real pods: two network namespaces, each with a TAP device whose other end
//! is the switch (event loop, worker, datapath), configured as the CNI plugin
//! will configure pods (/32 and /128 addresses, link-local gateways
//! 169.254.1.1 and fe80::1), and real kernel TCP between them over IPv4 and
//! IPv6, small and bulk, allowed and then denied by a policy.
//!
//! Needs root (network namespaces, /dev/net/tun). Without it the test prints
//! `SKIPPED: reason`; with `CI=true` a skip is a failure.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use policy::{Cluster, Engine, Namespace, Pod, PodKey, manifest};
use vswitch_datapath::io::event_loop::EventLoop;
use vswitch_datapath::io::tap::TapPort;
use vswitch_datapath::io::worker::{PolicyHandle, Worker};
use vswitch_datapath::{Config, Datapath, PortKind};

mod common;
use common::{is_root, skip};

fn skip_unless_root() -> bool {
    if !is_root() {
        return skip("needs root for network namespaces and TAP devices");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return skip("/dev/net/tun is missing");
    }
    false
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {}", args.join(" "));
}

/// A network namespace that is deleted when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Moves the TAP into the namespace and configures it as a pod's eth0: a
/// /32 and a /128, and the gateways 169.254.1.1 and fe80::1 on the link.
fn plumb(ns: &str, tap: &str, mac: &str, v4: &str, v6: &str) {
    ip(&["link", "set", tap, "netns", ns]);
    let x = |args: &[&str]| {
        let mut a = vec!["netns", "exec", ns, "ip"];
        a.extend_from_slice(args);
        ip(&a);
    };
    let sysctl = format!("net.ipv6.conf.{tap}.accept_dad=0");
    let st = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw", &sysctl])
        .status()
        .expect("sysctl");
    assert!(st.success(), "{sysctl}");
    x(&["link", "set", "lo", "up"]);
    x(&["link", "set", tap, "address", mac]);
    x(&["addr", "add", &format!("{v4}/32"), "dev", tap]);
    x(&[
        "-6",
        "addr",
        "add",
        &format!("{v6}/128"),
        "dev",
        tap,
        "nodad",
    ]);
    x(&["link", "set", tap, "up"]);
    x(&["route", "add", "169.254.1.1", "dev", tap, "scope", "link"]);
    x(&["route", "add", "default", "via", "169.254.1.1", "dev", tap]);
    x(&[
        "-6", "route", "add", "default", "via", "fe80::1", "dev", tap,
    ]);
}

/// Counts what each connection sends until it closes its side, and answers
/// with the count.
const SERVER: &str = r#"
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8080))
s.listen(8)
while True:
    c, _ = s.accept()
    n = 0
    while True:
        d = c.recv(65536)
        if not d:
            break
        n += len(d)
    c.sendall(str(n).encode())
    c.close()
"#;

/// Sends `argv[3]` bytes, closes its side, prints the server's count.
const CLIENT: &str = r#"
import socket, sys
port = int(sys.argv[4]) if len(sys.argv) > 4 else 8080
s = socket.create_connection((sys.argv[1], port), timeout=float(sys.argv[2]))
s.sendall(b"x" * int(sys.argv[3]))
s.shutdown(socket.SHUT_WR)
print(s.recv(100).decode())
"#;

fn client(ns: &str, server: &str, timeout: &str, bytes: usize) -> Option<String> {
    client_port(ns, server, timeout, bytes, 8080)
}

fn client_port(ns: &str, server: &str, timeout: &str, bytes: usize, port: u16) -> Option<String> {
    let (n, p) = (bytes.to_string(), port.to_string());
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "python3", "-c", CLIENT, server, timeout, &n, &p,
        ])
        .output()
        .expect("run the client");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kernel_tcp_between_pods_in_namespaces_through_the_switch() {
    if skip_unless_root() {
        return;
    }
    let id = std::process::id() % 100_000;
    let (ns_a, ns_b) = (Netns(format!("vswt-a-{id}")), Netns(format!("vswt-b-{id}")));
    ip(&["netns", "add", &ns_a.0]);
    ip(&["netns", "add", &ns_b.0]);
    let (tap_a, tap_b) = (format!("vswta{id}"), format!("vswtb{id}"));
    let port_a = TapPort::create(&tap_a, true).expect("TAP a");
    let port_b = TapPort::create(&tap_b, true).expect("TAP b");
    assert!(
        port_a.has_vnet_hdr(),
        "the kernel should offer IFF_VNET_HDR"
    );
    let (mac_a, mac_b) = ([0x02, 0xa0, 0, 0, 0, 1], [0x02, 0xa0, 0, 0, 0, 2]);
    let (ip_a, ip_b) = ("10.250.0.1", "10.250.0.2");
    let (ip6_a, ip6_b) = ("fd00:250::1", "fd00:250::2");
    plumb(&ns_a.0, &tap_a, "02:a0:00:00:00:01", ip_a, ip6_a);
    plumb(&ns_b.0, &tap_b, "02:a0:00:00:00:02", ip_b, ip6_b);

    // the cluster: two pods, no policy yet
    let mut c = Cluster::default();
    c.namespaces
        .insert("x".into(), Namespace::new("x", Default::default()));
    for (name, addr, addr6) in [("a", ip_a, ip6_a), ("b", ip_b, ip6_b)] {
        let p = Pod {
            key: PodKey::new("x", name),
            labels: [("pod".to_string(), name.to_string())].into(),
            ips: vec![addr.parse().unwrap(), addr6.parse().unwrap()],
            ports: vec![],
        };
        c.pods.insert(p.key.clone(), p);
    }
    let mut engine = Engine::from_cluster(c).unwrap();
    let handle = PolicyHandle::default();
    handle.publish(engine.snapshot());
    let mut dp = Datapath::new(Config::default(), Instant::now());
    for (port, mac, addr, addr6) in [(1u16, mac_a, ip_a, ip6_a), (2, mac_b, ip_b, ip6_b)] {
        let ips: Vec<IpAddr> = vec![addr.parse().unwrap(), addr6.parse().unwrap()];
        dp.add_port(
            port,
            "pod",
            mac,
            PortKind::Pod {
                ips,
                ready_generation: engine.generation(),
            },
        );
    }
    let mut worker = Worker::new(dp, handle.clone());
    worker.attach(1, Box::new(port_a));
    worker.attach(2, Box::new(port_b));
    let mut el = EventLoop::new(worker).unwrap();
    el.register(1).unwrap();
    el.register(2).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let switch = std::thread::spawn(move || {
        el.run(|_| s.load(Ordering::Relaxed)).unwrap();
        el
    });

    let _servers = [serve(&ns_b.0, ip_b), serve(&ns_b.0, ip6_b)];
    // the servers need a moment to listen; the first attempts may be refused
    for addr in [ip_b, ip6_b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut answer = None;
        while answer.is_none() && Instant::now() < deadline {
            answer = client(&ns_a.0, addr, "2", 5);
            if answer.is_none() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        assert_eq!(
            answer.as_deref(),
            Some("5"),
            "a reaches b at {addr} over kernel TCP"
        );
    }
    // 4 MB to each address: segmentation and checksum offload (virtio-net
    // headers) carried across the switch
    for addr in [ip_b, ip6_b] {
        assert_eq!(
            client(&ns_a.0, addr, "10", 4_000_000).as_deref(),
            Some("4000000"),
            "bulk to {addr}"
        );
    }

    // isolate b for ingress: new connections from a are dropped
    for o in manifest::parse(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {pod: b}}}\n",
    ) {
        let manifest::Object::NetworkPolicy(p) = o.unwrap() else {
            panic!()
        };
        engine.upsert_policy(p).unwrap();
    }
    handle.publish(engine.snapshot());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        client(&ns_a.0, ip_b, "2", 5),
        None,
        "denied by the policy (IPv4)"
    );
    assert_eq!(
        client(&ns_a.0, ip6_b, "2", 5),
        None,
        "denied by the policy (IPv6)"
    );

    stop.store(true, Ordering::Relaxed);
    let el = switch.join().unwrap();
    let c = &el.worker.datapath.counters;
    assert!(
        c.get(vswitch_datapath::counters::Outcome::Replied) >= 2,
        "the switch answered ARP: {:?}",
        c.nonzero()
    );
    assert!(
        c.get(vswitch_datapath::counters::Outcome::PolicyDeny) >= 1,
        "{:?}",
        c.nonzero()
    );
    assert_eq!(c.outcome_total(), c.rx_packets);
}

fn in_ns(ns: &str, args: &[&str]) {
    let mut a = vec!["netns", "exec", ns];
    a.extend_from_slice(args);
    let st = Command::new("ip")
        .args(&a)
        .status()
        .expect("run in namespace");
    assert!(st.success(), "in {ns}: {}", args.join(" "));
}

fn serve(ns: &str, addr: &str) -> KillOnDrop {
    serve_port(ns, addr, 8080)
}

fn serve_port(ns: &str, addr: &str, port: u16) -> KillOnDrop {
    let p = port.to_string();
    KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", SERVER, addr, &p])
            .stdout(Stdio::null())
            .spawn()
            .expect("server"),
    )
}

/// Connects until the server listens (or 10 s pass).
fn client_retrying(ns: &str, addr: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = client(ns, addr, "2", 5);
        if answer.is_some() || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The node's port: the node (a namespace playing the host) reaches a pod
/// that a deny-all ingress isolates, as Kubernetes requires for kubelet
/// probes; the pod reaches a host outside the cluster (another namespace
/// behind the node, which routes) through the node port, and an egress
/// policy on the pod applies to that traffic and to its node's address.
#[test]
fn the_node_port_carries_probes_and_outside_traffic() {
    if skip_unless_root() {
        return;
    }
    let id = std::process::id() % 100_000;
    let pod = Netns(format!("vswn-p-{id}"));
    let node = Netns(format!("vswn-n-{id}"));
    let outside = Netns(format!("vswn-o-{id}"));
    for ns in [&pod, &node, &outside] {
        ip(&["netns", "add", &ns.0]);
    }
    let (tap_pod, tap_node) = (format!("vswnp{id}"), format!("vswnn{id}"));
    let port_pod = TapPort::create(&tap_pod, true).expect("TAP pod");
    let port_node = TapPort::create(&tap_node, true).expect("TAP node");
    let (pod_ip, node_ip, out_ip) = ("10.251.0.1", "10.251.255.1", "192.0.2.10");
    plumb(&pod.0, &tap_pod, "02:b0:00:00:00:01", pod_ip, "fd00:251::1");
    // The node: its TAP (the switch's node port) carries its address and the
    // routes to local pods; a veth leads to the outside host, and it forwards.
    ip(&["link", "set", &tap_node, "netns", &node.0]);
    in_ns(&node.0, &["ip", "link", "set", "lo", "up"]);
    in_ns(
        &node.0,
        &[
            "ip",
            "link",
            "set",
            &tap_node,
            "address",
            "02:b0:00:00:00:fe",
        ],
    );
    in_ns(
        &node.0,
        &[
            "ip",
            "addr",
            "add",
            &format!("{node_ip}/32"),
            "dev",
            &tap_node,
        ],
    );
    in_ns(&node.0, &["ip", "link", "set", &tap_node, "up"]);
    in_ns(
        &node.0,
        &[
            "ip",
            "route",
            "add",
            "169.254.1.1",
            "dev",
            &tap_node,
            "scope",
            "link",
        ],
    );
    in_ns(
        &node.0,
        &[
            "ip",
            "route",
            "add",
            &format!("{pod_ip}/32"),
            "via",
            "169.254.1.1",
            "dev",
            &tap_node,
        ],
    );
    in_ns(&node.0, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let (veth_n, veth_o) = (format!("vswnvn{id}"), format!("vswnvo{id}"));
    ip(&[
        "link", "add", &veth_n, "netns", &node.0, "type", "veth", "peer", "name", &veth_o, "netns",
        &outside.0,
    ]);
    in_ns(
        &node.0,
        &["ip", "addr", "add", "192.0.2.1/24", "dev", &veth_n],
    );
    in_ns(&node.0, &["ip", "link", "set", &veth_n, "up"]);
    in_ns(&outside.0, &["ip", "link", "set", "lo", "up"]);
    in_ns(
        &outside.0,
        &["ip", "addr", "add", &format!("{out_ip}/24"), "dev", &veth_o],
    );
    in_ns(&outside.0, &["ip", "link", "set", &veth_o, "up"]);
    in_ns(
        &outside.0,
        &["ip", "route", "add", "default", "via", "192.0.2.1"],
    );

    let mut c = Cluster::default();
    c.namespaces
        .insert("x".into(), Namespace::new("x", Default::default()));
    let p = Pod {
        key: PodKey::new("x", "a"),
        labels: [("pod".to_string(), "a".to_string())].into(),
        ips: vec![pod_ip.parse().unwrap()],
        ports: vec![],
    };
    c.pods.insert(p.key.clone(), p);
    let mut engine = Engine::from_cluster(c).unwrap();
    // isolated for ingress from the start; egress only to 192.0.2.0/24:8080
    for o in manifest::parse(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n\
         spec: {podSelector: {}, policyTypes: [Ingress, Egress], egress: [{to: [{ipBlock: {cidr: 192.0.2.0/24}}], ports: [{port: 8080}]}]}\n",
    ) {
        let manifest::Object::NetworkPolicy(p) = o.unwrap() else {
            panic!()
        };
        engine.upsert_policy(p).unwrap();
    }
    let handle = PolicyHandle::default();
    handle.publish(engine.snapshot());
    let mut dp = Datapath::new(Config::default(), Instant::now());
    dp.add_port(
        0,
        "node",
        [0x02, 0xb0, 0, 0, 0, 0xfe],
        PortKind::Node {
            ips: vec![node_ip.parse().unwrap()],
        },
    );
    let ips: Vec<IpAddr> = vec![pod_ip.parse().unwrap(), "fd00:251::1".parse().unwrap()];
    dp.add_port(
        1,
        "x/a",
        [0x02, 0xb0, 0, 0, 0, 1],
        PortKind::Pod {
            ips,
            ready_generation: engine.generation(),
        },
    );
    let mut worker = Worker::new(dp, handle.clone());
    worker.attach(0, Box::new(port_node));
    worker.attach(1, Box::new(port_pod));
    let mut el = EventLoop::new(worker).unwrap();
    el.register(0).unwrap();
    el.register(1).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let switch = std::thread::spawn(move || {
        el.run(|_| s.load(Ordering::Relaxed)).unwrap();
        el
    });

    let _pod_server = serve(&pod.0, pod_ip);
    let _out_server = serve(&outside.0, out_ip);
    // a kubelet probe: the node's own address reaches the isolated pod
    assert_eq!(
        client_retrying(&node.0, pod_ip).as_deref(),
        Some("5"),
        "node to pod"
    );
    // the outside host, one hop beyond the node, is subject to the pod's ingress
    assert_eq!(
        client(&outside.0, pod_ip, "2", 5),
        None,
        "outside to the isolated pod"
    );
    // the pod reaches the outside host through the node port (egress allowed)
    assert_eq!(
        client_retrying(&pod.0, out_ip).as_deref(),
        Some("5"),
        "pod to outside"
    );
    // the egress rule names port 8080 only: the same host on 9090 is denied
    // (and a refused connection would not look like a drop: the server there
    // answers when the pod may reach it, as the last step shows)
    let _out_9090 = serve_port(&outside.0, out_ip, 9090);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        client_port(&pod.0, out_ip, "2", 5, 9090),
        None,
        "egress is limited to 8080"
    );
    // the pod's egress to its own node is egress like any other: a listener
    // on the node's address, which the rule does not name, is out of reach,
    // while the node still reaches the pod
    let _node_server = serve(&node.0, node_ip);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        client(&pod.0, node_ip, "2", 5),
        None,
        "the pod's egress policy applies to its node"
    );
    assert_eq!(
        client(&node.0, pod_ip, "2", 5).as_deref(),
        Some("5"),
        "the node still reaches the pod"
    );
    let mut open = engine.cluster().policies.values().next().unwrap().clone();
    open.egress = Some(vec![policy::netpol::Rule {
        peers: vec![],
        ports: vec![],
    }]);
    engine.upsert_policy(open).unwrap();
    handle.publish(engine.snapshot());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        client_port(&pod.0, out_ip, "2", 5, 9090).as_deref(),
        Some("5"),
        "allowed once egress is open"
    );
    assert_eq!(
        client(&pod.0, node_ip, "2", 5).as_deref(),
        Some("5"),
        "the node's listener, once egress is open"
    );

    stop.store(true, Ordering::Relaxed);
    let el = switch.join().unwrap();
    let c = &el.worker.datapath.counters;
    assert!(
        c.get(vswitch_datapath::counters::Outcome::PolicyDeny) >= 1,
        "{:?}",
        c.nonzero()
    );
    assert_eq!(c.outcome_total(), c.rx_packets);
}
