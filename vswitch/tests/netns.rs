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
use vswitch::datapath::event_loop::EventLoop;
use vswitch::datapath::tap::TapPort;
use vswitch::datapath::worker::{PolicyHandle, Worker};
use vswitch::datapath::{Config, Datapath, PortKind};

fn skip_unless_root() -> bool {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let why = match uid.as_deref() {
        Ok("0") if std::path::Path::new("/dev/net/tun").exists() => return false,
        Ok("0") => "/dev/net/tun is missing".to_string(),
        _ => "needs root for network namespaces and TAP devices".to_string(),
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "SKIPPED under CI=true: {why}"
    );
    println!("SKIPPED: {why}");
    true
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
s.bind((sys.argv[1], 8080))
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
s = socket.create_connection((sys.argv[1], 8080), timeout=float(sys.argv[2]))
s.sendall(b"x" * int(sys.argv[3]))
s.shutdown(socket.SHUT_WR)
print(s.recv(100).decode())
"#;

fn client(ns: &str, server: &str, timeout: &str, bytes: usize) -> Option<String> {
    let n = bytes.to_string();
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "python3", "-c", CLIENT, server, timeout, &n,
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

    let server = |addr: &str| {
        KillOnDrop(
            Command::new("ip")
                .args(["netns", "exec", &ns_b.0, "python3", "-c", SERVER, addr])
                .stdout(Stdio::null())
                .spawn()
                .expect("server"),
        )
    };
    let _servers = [server(ip_b), server(ip6_b)];
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
        c.get(vswitch::datapath::counters::Outcome::Replied) >= 2,
        "the switch answered ARP: {:?}",
        c.nonzero()
    );
    assert!(
        c.get(vswitch::datapath::counters::Outcome::PolicyDeny) >= 1,
        "{:?}",
        c.nonzero()
    );
    assert_eq!(c.outcome_total(), c.rx_packets);
}
