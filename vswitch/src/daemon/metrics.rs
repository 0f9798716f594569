//! Prometheus metrics over HTTP (`--metrics-addr`, off by default).
//!
//! A thread of its own accepts a connection, reads the request line, and
//! answers `GET /metrics` with the text exposition format: counters read
//! from the switch thread (through its command queue, so the packet path
//! takes no lock) and gauges the control thread keeps in atomics.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vswitch_cni::proto::{PortInfo, ServiceInfo};

use super::switch::{Answer, Query, SwitchHandle, Totals};
use vswitch_datapath::counters::Outcome;

/// What the control thread publishes for the metrics thread.
#[derive(Default)]
pub struct Gauges {
    pub policy_generation: AtomicU64,
    /// The last model sync (compile) in microseconds.
    pub compile_micros: AtomicU64,
    pub attachments: AtomicU64,
    /// Other nodes reachable through the overlay.
    pub remote_nodes: AtomicU64,
    /// 1 while the policy source is in sync with its origin.
    pub source_in_sync: AtomicU64,
    pub source_updates: AtomicU64,
    /// Control connections told "busy" (the control socket counts them).
    pub control_refused: Arc<AtomicU64>,
    /// New versions of objects the source rejected (each rejection counted
    /// once, when first seen).
    pub objects_rejected: AtomicU64,
    /// Objects served from their last valid version now.
    pub objects_stale: AtomicU64,
    /// Service frontends (cluster IP, protocol, port) the switch translates.
    pub frontends: AtomicU64,
}

impl Gauges {
    /// Records what a cluster from the source says of its objects.
    pub fn source_objects(&self, rejected: usize, stale: usize) {
        self.objects_rejected
            .fetch_add(rejected as u64, Ordering::Relaxed);
        self.objects_stale.store(stale as u64, Ordering::Relaxed);
    }
}

/// Why the metrics endpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--metrics-addr {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    SpawnThread(#[source] std::io::Error),
}

pub fn serve(
    addr: SocketAddr,
    switch: SwitchHandle,
    gauges: Arc<Gauges>,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(addr).map_err(|source| ServeError::Bind { addr, source })?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = answer(conn, &switch, &gauges);
            }
        })
        .map_err(ServeError::SpawnThread)?;
    Ok(())
}

fn answer(conn: TcpStream, switch: &SwitchHandle, gauges: &Gauges) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(&conn);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // the headers, up to the empty line
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if request.starts_with("GET ") && (path == "/metrics" || path == "/") {
        ("200 OK", render(switch, gauges))
    } else {
        (
            "404 Not Found",
            "not found; metrics are at /metrics\n".to_string(),
        )
    };
    let mut w = &conn;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
}

/// The exposition text.
pub fn render(switch: &SwitchHandle, g: &Gauges) -> String {
    let stats = match switch.query(Query::Totals) {
        Some(Answer::Totals(t)) => *t,
        _ => Totals::default(),
    };
    let ports = match switch.query(Query::Ports) {
        Some(Answer::Ports(p)) => p,
        _ => Vec::new(),
    };
    let services = match switch.query(Query::Services) {
        Some(Answer::Services(s)) => s,
        _ => Vec::new(),
    };
    let mut s = String::new();
    type Field = fn(&PortInfo) -> u64;
    let per_port: [(&str, &str, Field); 8] = [
        (
            "vswitch_port_rx_packets_total",
            "Frames received from the port.",
            |c| c.rx_packets,
        ),
        (
            "vswitch_port_rx_bytes_total",
            "Bytes received from the port.",
            |c| c.rx_bytes,
        ),
        (
            "vswitch_port_tx_packets_total",
            "Frames sent to the port.",
            |c| c.tx_packets,
        ),
        (
            "vswitch_port_tx_bytes_total",
            "Bytes sent to the port.",
            |c| c.tx_bytes,
        ),
        (
            "vswitch_port_tx_error_total",
            "Frames for the port dropped because sending failed.",
            |c| c.tx_error,
        ),
        (
            "vswitch_port_tx_queue_full_total",
            "Frames for the port dropped because its send queue was full.",
            |c| c.tx_queue_full,
        ),
        (
            "vswitch_port_rx_paused_total",
            "Times the port was not read for a while because its pod spent its slow-path budget.",
            |c| c.rx_paused,
        ),
        (
            "vswitch_port_rx_dropped_total",
            "Frames for the switch that the port's socket dropped before the switch read them (the overlay's socket, its receive buffer full).",
            |c| c.rx_dropped,
        ),
    ];
    for (name, help, get) in per_port {
        metric(&mut s, name, "counter", help);
        for p in &ports {
            s.push_str(&format!(
                "{name}{{port=\"{}\",name=\"{}\"}} {}\n",
                p.id,
                escape(&p.name),
                get(p)
            ));
        }
    }
    metric(
        &mut s,
        "vswitch_port_packets_total",
        "counter",
        "Frames received from the port, by what happened to them.",
    );
    for p in &ports {
        for (o, n) in &p.outcomes {
            s.push_str(&format!(
                "vswitch_port_packets_total{{port=\"{}\",name=\"{}\",outcome=\"{o}\"}} {n}\n",
                p.id,
                escape(&p.name)
            ));
        }
    }
    type PerService = fn(&ServiceInfo) -> u64;
    let per_service: [(&str, &str, PerService); 2] = [
        (
            "vswitch_service_frontend_connections_total",
            "New connections the switch translated through the Service frontend (cluster IP, port, protocol).",
            |f| f.connections_total,
        ),
        (
            "vswitch_service_frontend_refused_total",
            "New connections to the Service frontend refused for want of a usable endpoint.",
            |f| f.refused_total,
        ),
    ];
    for (name, help, get) in per_service {
        metric(&mut s, name, "counter", help);
        for f in &services {
            s.push_str(&format!(
                "{name}{{service=\"{}\",frontend=\"{}\"}} {}\n",
                escape(&f.service),
                match f.ip {
                    std::net::IpAddr::V6(a) => format!("[{a}]:{}/{}", f.port, f.protocol),
                    a => format!("{a}:{}/{}", f.port, f.protocol),
                },
                get(f)
            ));
        }
    }
    metric(
        &mut s,
        "vswitch_packets_total",
        "counter",
        "Frames received by the datapath, by outcome (each frame counts once).",
    );
    for o in Outcome::ALL {
        s.push_str(&format!(
            "vswitch_packets_total{{outcome=\"{o}\"}} {}\n",
            stats.datapath.get(o)
        ));
    }
    let hits = stats.datapath.get(Outcome::FastForward);
    let gauges: [(&str, &str, &str, u64); 17] = [
        (
            "vswitch_service_frontends",
            "gauge",
            "Service frontends (cluster IP, protocol, port) the switch translates.",
            g.frontends.load(Ordering::Relaxed),
        ),
        (
            "vswitch_service_connections_total",
            "counter",
            "New connections to Services the switch translated to an endpoint.",
            stats.services.translated,
        ),
        (
            "vswitch_service_refused_total",
            "counter",
            "New connections to Services refused for want of a usable endpoint.",
            stats.services.refused,
        ),
        (
            "vswitch_flow_cache_hits_total",
            "counter",
            "Frames forwarded by a flow-cache hit.",
            hits,
        ),
        (
            "vswitch_flow_cache_misses_total",
            "counter",
            "Frames that took the slow path.",
            stats.datapath.outcome_total() - hits,
        ),
        (
            "vswitch_flow_cache_entries",
            "gauge",
            "Flow-cache entries.",
            stats.flow_cache as u64,
        ),
        (
            "vswitch_conntrack_entries",
            "gauge",
            "Tracked connections.",
            stats.conntrack as u64,
        ),
        (
            "vswitch_conntrack_evicted_total",
            "counter",
            "Unanswered connections evicted to make room (a full table or a pod at its share).",
            stats.conntrack_evicted,
        ),
        (
            "vswitch_policy_generation",
            "gauge",
            "The policy generation the control plane published.",
            g.policy_generation.load(Ordering::Relaxed),
        ),
        (
            "vswitch_datapath_policy_generation",
            "gauge",
            "The policy generation the switch has installed.",
            stats.policy_generation,
        ),
        (
            "vswitch_attachments",
            "gauge",
            "Pods attached on this node.",
            g.attachments.load(Ordering::Relaxed),
        ),
        (
            "vswitch_remote_nodes",
            "gauge",
            "Other nodes attached through the overlay.",
            g.remote_nodes.load(Ordering::Relaxed),
        ),
        (
            "vswitch_source_in_sync",
            "gauge",
            "1 while the policy source (API server or manifest folder) is in sync; 0 while the last policy is kept.",
            g.source_in_sync.load(Ordering::Relaxed),
        ),
        (
            "vswitch_source_updates_total",
            "counter",
            "Complete clusters received from the policy source.",
            g.source_updates.load(Ordering::Relaxed),
        ),
        (
            "vswitch_control_refused_total",
            "counter",
            "Control socket connections told to try again because too many requests were being read.",
            g.control_refused.load(Ordering::Relaxed),
        ),
        (
            "vswitch_objects_rejected_total",
            "counter",
            "New versions of objects the policy source rejected (the log names each: kind, namespace/name, field).",
            g.objects_rejected.load(Ordering::Relaxed),
        ),
        (
            "vswitch_objects_stale",
            "gauge",
            "Objects served from their last valid version because their new version was rejected.",
            g.objects_stale.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, v) in gauges {
        metric(&mut s, name, kind, help);
        s.push_str(&format!("{name} {v}\n"));
    }
    metric(
        &mut s,
        "vswitch_policy_compile_seconds",
        "gauge",
        "How long the last policy update took to compile.",
    );
    s.push_str(&format!(
        "vswitch_policy_compile_seconds {}\n",
        g.compile_micros.load(Ordering::Relaxed) as f64 / 1e6
    ));
    s
}
