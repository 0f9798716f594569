//! Real pods: two network namespaces, each with a TAP device whose other end
//! is the switch (event loop, worker, datapath), configured as the CNI plugin
//! will configure pods (/32 address, link-local gateway 169.254.1.1), and
//! real kernel TCP between them, allowed and then denied by a policy.
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

/// Moves the TAP into the namespace and configures it as a pod's eth0.
fn plumb(ns: &str, tap: &str, mac: &str, addr: &str) {
    ip(&["link", "set", tap, "netns", ns]);
    let x = |args: &[&str]| {
        let mut a = vec!["netns", "exec", ns, "ip"];
        a.extend_from_slice(args);
        ip(&a);
    };
    x(&["link", "set", "lo", "up"]);
    x(&["link", "set", tap, "address", mac]);
    x(&["addr", "add", &format!("{addr}/32"), "dev", tap]);
    x(&["link", "set", tap, "up"]);
    x(&["route", "add", "169.254.1.1", "dev", tap, "scope", "link"]);
    x(&["route", "add", "default", "via", "169.254.1.1", "dev", tap]);
}

const SERVER: &str = "import socket,sys\n\
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind((sys.argv[1], 8080)); s.listen(8)\n\
while True:\n  c,_=s.accept(); d=c.recv(100); c.sendall(d.upper()); c.close()\n";

const CLIENT: &str = "import socket,sys\n\
s=socket.create_connection((sys.argv[1], 8080), timeout=float(sys.argv[2]))\n\
s.sendall(b'hello'); print(s.recv(100).decode())\n";

fn client(ns: &str, server: &str, timeout: &str) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "python3", "-c", CLIENT, server, timeout,
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
    plumb(&ns_a.0, &tap_a, "02:a0:00:00:00:01", ip_a);
    plumb(&ns_b.0, &tap_b, "02:a0:00:00:00:02", ip_b);

    // the cluster: two pods, no policy yet
    let mut c = Cluster::default();
    c.namespaces
        .insert("x".into(), Namespace::new("x", Default::default()));
    for (name, addr) in [("a", ip_a), ("b", ip_b)] {
        let p = Pod {
            key: PodKey::new("x", name),
            labels: [("pod".to_string(), name.to_string())].into(),
            ips: vec![addr.parse().unwrap()],
            ports: vec![],
        };
        c.pods.insert(p.key.clone(), p);
    }
    let mut engine = Engine::from_cluster(c).unwrap();
    let handle = PolicyHandle::default();
    handle.publish(engine.snapshot());
    let mut dp = Datapath::new(Config::default(), Instant::now());
    for (port, mac, addr) in [(1u16, mac_a, ip_a), (2, mac_b, ip_b)] {
        let ips: Vec<IpAddr> = vec![addr.parse().unwrap()];
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

    let _server = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &ns_b.0, "python3", "-c", SERVER, ip_b])
            .stdout(Stdio::null())
            .spawn()
            .expect("server"),
    );
    // the server needs a moment to listen; the first attempts may be refused
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answer = None;
    while answer.is_none() && Instant::now() < deadline {
        answer = client(&ns_a.0, ip_b, "2");
        if answer.is_none() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(
        answer.as_deref(),
        Some("HELLO"),
        "a reaches b over kernel TCP"
    );

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
    assert_eq!(client(&ns_a.0, ip_b, "2"), None, "denied by the policy");

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
