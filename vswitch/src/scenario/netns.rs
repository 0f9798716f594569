//! `--mode netns`: every pod is a network namespace whose eth0 is a TAP
//! device served by the switch (vswitchd's switch thread: event loop,
//! worker, datapath), configured as the CNI plugin configures pods (/32 and /128,
//! gateways 169.254.1.1 and fe80::1). Externals share one more namespace
//! behind the switch's node port. Probes are real kernel sockets: a small
//! agent runs in each namespace, serves TCP and UDP, and makes the attempts,
//! all of a probe at once. SCTP attempts are reported as skipped where the
//! kernel has no SCTP. Needs root (namespaces, /dev/net/tun).
//!
//! Plumbing uses `ip` here; the daemon uses netlink.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use policy::{Change, Cluster, Engine, Pod, PodKey, Protocol};

use super::format::External;
use super::run::{Attempt, Observed, Prober};
use crate::daemon::switch::{Answer, Command as SwitchCommand, Query, Switch};
use crate::datapath::parse::mac_text;
use crate::datapath::tap::TapPort;
use crate::datapath::worker::PolicyHandle;
use crate::datapath::{Config, PortId, PortKind};

/// How long a denied attempt is given.
const TIMEOUT_S: &str = "1.0";

const AGENT: &str = r#"
import json, socket, sys, threading
servers = {}
def tcp_server(fam, port):
    s = socket.socket(fam)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
    s.listen(128)
    def run():
        while True:
            c, _ = s.accept()
            c.close()
    threading.Thread(target=run, daemon=True).start()
def udp_server(fam, port):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
    def run():
        while True:
            d, a = s.recvfrom(2048)
            s.sendto(d, a)
    threading.Thread(target=run, daemon=True).start()
def serve(proto, port):
    if (proto, port) in servers:
        return servers[(proto, port)]
    err = None
    try:
        for fam in (socket.AF_INET, socket.AF_INET6):
            if proto == "TCP": tcp_server(fam, port)
            elif proto == "UDP": udp_server(fam, port)
            else: socket.socket(fam, socket.SOCK_STREAM, 132).close(); err = "SCTP sockets open but no SCTP server is implemented"
    except OSError as e:
        err = str(e)
    servers[(proto, port)] = err
    return err
def attempt(src, dst, proto, port, timeout):
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    try:
        if proto == "SCTP":
            try:
                s = socket.socket(fam, socket.SOCK_STREAM, 132)
            except OSError as e:
                return "skip:no SCTP in this kernel (" + str(e) + ")"
            return "skip:SCTP probes are not implemented in netns mode"
        if proto == "TCP":
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.bind((src, 0))
            s.connect((dst, port))
            s.close()
            return "ok"
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.bind((src, 0))
        s.sendto(b"probe", (dst, port))
        s.recvfrom(2048)
        return "ok"
    except OSError as e:
        return "fail:" + str(e)
for line in sys.stdin:
    req = json.loads(line)
    if "serve" in req:
        errs = [serve(p, n) for p, n in req["serve"]]
        print(json.dumps({"errors": errs}), flush=True)
    else:
        out = {}
        def run(i, a):
            out[i] = attempt(a[0], a[1], a[2], a[3], req["timeout"])
        ts = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(req["probe"])]
        for t in ts: t.start()
        for t in ts: t.join()
        print(json.dumps({"results": [out[i] for i in range(len(ts))]}), flush=True)
"#;

struct Agent {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Agent {
    fn start(ns: &str) -> Result<Agent, String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-u", "-c", AGENT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the agent in {ns}: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Agent {
            child,
            stdin,
            stdout,
        })
    }

    fn send(&mut self, req: &str) -> Result<(), String> {
        writeln!(self.stdin, "{req}").map_err(|e| format!("agent: {e}"))
    }

    fn reply(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| format!("agent: {e}"))?;
        if line.is_empty() {
            return Err("the agent exited".into());
        }
        Ok(line)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Result<(), String> {
    let mut a = vec!["netns", "exec", ns];
    a.extend_from_slice(args);
    ip(&a)
}

/// Creates a TAP device and makes it `ns`'s eth0 as the CNI plugin will for
/// a pod: its MAC, each address as a /32 or /128 (no DAD), and the switch's
/// link-local gateways 169.254.1.1 and fe80::1 as default routes.
fn tap_into(ns: &str, tap: &str, mac: [u8; 6], addrs: &[IpAddr]) -> Result<TapPort, String> {
    let dev = TapPort::create(tap, true).map_err(|e| format!("TAP {tap}: {e}"))?;
    let name = dev.name().map_err(|e| e.to_string())?;
    ip(&["link", "set", &name, "netns", ns])?;
    in_ns(
        ns,
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{name}.accept_dad=0"),
        ],
    )?;
    in_ns(ns, &["ip", "link", "set", &name, "address", &mac_text(mac)])?;
    for a in addrs {
        let cidr = if a.is_ipv4() {
            format!("{a}/32")
        } else {
            format!("{a}/128")
        };
        let mut args = vec!["ip", "addr", "add", cidr.as_str(), "dev", name.as_str()];
        if a.is_ipv6() {
            args.push("nodad");
        }
        in_ns(ns, &args)?;
    }
    in_ns(ns, &["ip", "link", "set", &name, "up"])?;
    in_ns(
        ns,
        &[
            "ip",
            "route",
            "add",
            "169.254.1.1",
            "dev",
            &name,
            "scope",
            "link",
        ],
    )?;
    in_ns(
        ns,
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            &name,
        ],
    )?;
    in_ns(
        ns,
        &[
            "ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", &name,
        ],
    )?;
    Ok(dev)
}

static RUN: AtomicU32 = AtomicU32::new(0);

/// The agent of the namespace that holds every external.
const OUTSIDE: &str = "(outside)";

pub struct NetnsProber {
    prefix: String,
    /// Interface names are at most 15 characters.
    tap_prefix: String,
    engine: Engine,
    handle: PolicyHandle,
    /// The switch's thread, as vswitchd runs it.
    switch: Option<Switch>,
    namespaces: Vec<String>,
    agents: BTreeMap<String, Agent>,
    ports: BTreeMap<PodKey, (PortId, String, Vec<IpAddr>)>,
    next_port: PortId,
}

impl Default for NetnsProber {
    fn default() -> Self {
        let run = RUN.fetch_add(1, Ordering::Relaxed);
        NetnsProber {
            prefix: format!("vs{}-{run}", std::process::id() % 100_000),
            tap_prefix: format!("v{}x{}", std::process::id() % 100_000, run % 1000),
            engine: Engine::new(),
            handle: PolicyHandle::default(),
            switch: None,
            namespaces: Vec::new(),
            agents: BTreeMap::new(),
            ports: BTreeMap::new(),
            next_port: 1,
        }
    }
}

impl Drop for NetnsProber {
    fn drop(&mut self) {
        self.agents.clear();
        drop(self.switch.take());
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn mac_of(port: PortId) -> [u8; 6] {
    [0x02, 0x5e, 0, 0, (port >> 8) as u8, port as u8]
}

impl NetnsProber {
    fn new_ns(&mut self, tag: &str) -> Result<String, String> {
        let ns = format!("{}-{tag}", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A pod: its namespace, its TAP as eth0, its port on the switch.
    fn add_pod(&mut self, pod: &Pod) -> Result<(), String> {
        let port = self.next_port;
        self.next_port += 1;
        let ns = self.new_ns(&format!("p{port}"))?;
        let tap = format!("{}p{port}", self.tap_prefix);
        let mac = mac_of(port);
        let dev = tap_into(&ns, &tap, mac, &pod.ips)?;
        let kind = PortKind::Pod {
            ips: pod.ips.clone(),
            ready_generation: self.engine.generation(),
        };
        self.attach(port, pod.key.to_string(), mac, kind, dev);
        self.agents.insert(pod.key.to_string(), Agent::start(&ns)?);
        self.ports
            .insert(pod.key.clone(), (port, ns, pod.ips.clone()));
        Ok(())
    }

    fn remove_pod(&mut self, key: &PodKey) {
        if let Some((port, ns, _)) = self.ports.remove(key) {
            self.agents.remove(&key.to_string());
            if let Some(s) = &self.switch {
                s.detach(port);
            }
            let _ = ip(&["netns", "del", &ns]);
            self.namespaces.retain(|n| *n != ns);
        }
    }

    /// The outside: one namespace behind the node port with every external's
    /// addresses, and routes to the pods through the switch.
    fn add_outside(&mut self, externals: &[External]) -> Result<(), String> {
        let ns = self.new_ns("out")?;
        let tap = format!("{}o", self.tap_prefix);
        let mac = mac_of(0);
        let addrs: Vec<IpAddr> = externals
            .iter()
            .flat_map(|e| {
                e.ipv4
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(e.ipv6.map(IpAddr::V6))
            })
            .collect();
        let dev = tap_into(&ns, &tap, mac, &addrs)?;
        self.attach(0, "node".into(), mac, PortKind::Node { ips: vec![] }, dev);
        self.agents.insert(OUTSIDE.into(), Agent::start(&ns)?);
        Ok(())
    }

    fn start_switch(&mut self) -> Result<(), String> {
        let switch = Switch::start(Config::default(), self.handle.clone())
            .map_err(|e| format!("switch: {e}"))?;
        self.switch = Some(switch);
        Ok(())
    }

    fn attach(&self, id: PortId, name: String, mac: [u8; 6], kind: PortKind, dev: TapPort) {
        self.switch
            .as_ref()
            .expect("started")
            .send(SwitchCommand::Attach {
                id,
                name,
                mac,
                kind,
                port: Box::new(dev),
            });
    }

    /// The agent that speaks for an endpoint: its pod's, or the outside's.
    fn agent_name(&self, endpoint: &str) -> String {
        if self.agents.contains_key(endpoint) {
            endpoint.to_string()
        } else {
            OUTSIDE.to_string()
        }
    }
}

/// Whether this process may make pods of network namespaces and TAP
/// devices (root, or root in a user namespace), and if not, why.
pub fn can_make_namespaces() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root (nor in a user namespace)".into());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e}"))?;
    Command::new("ip")
        .arg("-V")
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    Ok(())
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        _ => "SCTP",
    }
}

impl Prober for NetnsProber {
    fn counters(&mut self) -> Option<crate::datapath::counters::Counters> {
        match self.switch.as_ref()?.handle().query(Query::Totals)? {
            Answer::Totals(t) => Some(t.datapath),
            _ => None,
        }
    }

    fn start(&mut self, cluster: &Cluster, externals: &[External]) -> Result<(), String> {
        can_make_namespaces().map_err(|why| {
            format!("netns mode needs root (network namespaces, /dev/net/tun): {why}")
        })?;
        self.engine = Engine::from_cluster(cluster.clone()).map_err(|e| e.to_string())?;
        self.handle.publish(self.engine.snapshot());
        self.start_switch()?;
        self.add_outside(externals)?;
        for pod in cluster.pods.values() {
            self.add_pod(pod)?;
        }
        Ok(())
    }

    fn change(&mut self, change: &Change) -> Result<(), String> {
        self.engine
            .apply(change.clone())
            .map_err(|e| e.to_string())?;
        self.handle.publish(self.engine.snapshot());
        let (detach, attach) = super::run::port_changes(change, &self.ports, |(_, _, ips)| ips);
        for k in detach {
            self.remove_pod(&k);
        }
        if let Some(p) = attach {
            self.add_pod(p)?;
        }
        // let the switch thread pick up the generation
        std::thread::sleep(Duration::from_millis(30));
        Ok(())
    }

    fn probe(&mut self, attempts: &[Attempt<'_>]) -> Vec<Observed> {
        // servers first, on every target
        let mut serve: BTreeMap<String, Vec<(String, u16)>> = BTreeMap::new();
        for a in attempts {
            let v = serve.entry(a.to.name.clone()).or_default();
            let s = (proto_name(a.protocol).to_string(), a.port);
            if !v.contains(&s) {
                v.push(s);
            }
        }
        for (target, list) in &serve {
            let req = format!(
                "{{\"serve\": [{}]}}",
                list.iter()
                    .map(|(p, n)| format!("[\"{p}\", {n}]"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let Some(agent) = self.agents.get_mut(&self.agent_name(target)) {
                let _ = agent.send(&req).and_then(|_| agent.reply());
            }
        }
        // then every attempt of each source at once, all sources in parallel
        let mut by_source: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, a) in attempts.iter().enumerate() {
            let key = self.agent_name(&a.from.name);
            by_source.entry(key).or_default().push(i);
        }
        let mut results: Vec<Observed> = vec![Observed::Skipped("not run".into()); attempts.len()];
        for (source, idx) in &by_source {
            let list = idx
                .iter()
                .map(|&i| {
                    let a = &attempts[i];
                    format!(
                        "[\"{}\", \"{}\", \"{}\", {}]",
                        a.src,
                        a.dst,
                        proto_name(a.protocol),
                        a.port
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let req = format!("{{\"probe\": [{list}], \"timeout\": {TIMEOUT_S}}}");
            if let Some(agent) = self.agents.get_mut(source)
                && let Err(e) = agent.send(&req)
            {
                for &i in idx {
                    results[i] = Observed::Skipped(e.clone());
                }
            }
        }
        for (source, idx) in &by_source {
            let Some(agent) = self.agents.get_mut(source) else {
                continue;
            };
            let line = match agent.reply() {
                Ok(l) => l,
                Err(e) => {
                    for &i in idx {
                        results[i] = Observed::Skipped(e.clone());
                    }
                    continue;
                }
            };
            let parsed: serde_norway::Value = serde_norway::from_str(&line).unwrap_or_default();
            let list = parsed
                .get("results")
                .and_then(|r| r.as_sequence())
                .cloned()
                .unwrap_or_default();
            for (k, &i) in idx.iter().enumerate() {
                let r = list
                    .get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("fail:no answer from the agent");
                results[i] = if r == "ok" {
                    Observed::Verdict {
                        allowed: true,
                        detail: "connected".into(),
                    }
                } else if let Some(why) = r.strip_prefix("skip:") {
                    Observed::Skipped(why.to_string())
                } else {
                    Observed::Verdict {
                        allowed: false,
                        detail: r.trim_start_matches("fail:").to_string(),
                    }
                };
            }
        }
        results
    }
}
