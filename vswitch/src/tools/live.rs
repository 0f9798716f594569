//! `vswitchctl ports | flows | conntrack | explain`: questions to a running
//! vswitchd over its control socket, and their answers as tables (or JSON
//! with `--json`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use vswitch_cni::client;
use vswitch_cni::proto::{Reply, Request};

/// Why vswitchd gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// vswitchd answered with an error (what it said, and its details).
    #[error("vswitchd refused: {msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
    Refused { msg: String, details: String },
    /// vswitchd could not be reached or its answer not read.
    #[error(transparent)]
    Unreachable(#[from] client::ClientError),
}

/// Asks vswitchd; a refusal or an unreachable daemon is an error line.
pub fn ask(socket: &Path, req: &Request) -> Result<Reply, LiveError> {
    match client::call(socket, req, Duration::from_secs(10))? {
        Reply::Error(e) => Err(LiveError::Refused {
            msg: e.msg,
            details: e.details,
        }),
        r => Ok(r),
    }
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

/// The answer as text: a table per kind.
pub fn render(reply: &Reply) -> String {
    let mut s = String::new();
    match reply {
        Reply::Ports(ports) => {
            let _ = writeln!(
                s,
                "{:>4}  {:<32} {:<5} {:<17} {:<6} {:>10} {:>10}  {:<28} outcomes",
                "port", "name", "kind", "mac", "ready", "rx pkts", "tx pkts", "addresses"
            );
            for p in ports {
                let ips: Vec<String> = p.ips.iter().map(|i| i.to_string()).collect();
                // drops on either side and budget pauses follow the
                // outcomes of what was received
                let extra = [
                    ("tx_error", p.tx_error),
                    ("tx_queue_full", p.tx_queue_full),
                    ("rx_paused", p.rx_paused),
                    ("rx_dropped", p.rx_dropped),
                ];
                let outcomes: Vec<String> = p
                    .outcomes
                    .iter()
                    .map(|(k, v)| (k.as_str(), *v))
                    .chain(extra.into_iter().filter(|(_, v)| *v > 0))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let _ = writeln!(
                    s,
                    "{:>4}  {:<32} {:<5} {:<17} {:<6} {:>10} {:>10}  {:<28} {}",
                    p.id,
                    p.name,
                    p.kind,
                    p.mac,
                    if p.ready { "yes" } else { "no" },
                    p.rx_packets,
                    p.tx_packets,
                    ips.join(","),
                    outcomes.join(" ")
                );
            }
        }
        Reply::Flows { flows, total } => {
            let _ = writeln!(
                s,
                "{:>4}  {:<6} {:<40} {:<40} {:>5}  {:<7} current",
                "in", "proto", "source", "destination", "out", "routed"
            );
            for f in flows {
                let _ = writeln!(
                    s,
                    "{:>4}  {:<6} {:<40} {:<40} {:>5}  {:<7} {}",
                    f.in_port,
                    proto_name(f.protocol),
                    format!("{}:{}", f.src, f.sport),
                    format!("{}:{}", f.dst, f.dport),
                    f.out_port,
                    f.routed,
                    f.current
                );
            }
            let _ = writeln!(s, "{} of {total} flow-cache entries", flows.len());
        }
        Reply::Conntrack { connections, total } => {
            let _ = writeln!(
                s,
                "{:<6} {:<40} {:<40} {:<12} {:>8}",
                "proto", "originator", "responder", "state", "idle ms"
            );
            for c in connections {
                let _ = writeln!(
                    s,
                    "{:<6} {:<40} {:<40} {:<12} {:>8}",
                    proto_name(c.protocol),
                    format!("{}:{}", c.src, c.sport),
                    format!("{}:{}", c.dst, c.dport),
                    c.state,
                    c.idle_ms
                );
            }
            let _ = writeln!(s, "{} of {total} connections", connections.len());
        }
        Reply::Explanation { text, .. } => {
            let _ = writeln!(s, "{text}");
        }
        Reply::Services(services) => {
            for f in services {
                let ip = match f.ip {
                    std::net::IpAddr::V6(a) => format!("[{a}]"),
                    a => a.to_string(),
                };
                let mut notes = Vec::new();
                if let Some(t) = f.affinity_seconds {
                    notes.push(format!("affinity ClientIP {t}s"));
                }
                if f.local_only {
                    notes.push("internal traffic Local".to_string());
                }
                let _ = writeln!(
                    s,
                    "{} {}:{}/{}{}{}",
                    f.service,
                    ip,
                    f.port,
                    f.protocol,
                    f.port_name
                        .as_ref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default(),
                    if notes.is_empty() {
                        String::new()
                    } else {
                        format!("  [{}]", notes.join(", "))
                    }
                );
                if f.endpoints.is_empty() {
                    let _ = writeln!(s, "    no endpoints: new connections are refused");
                }
                for e in &f.endpoints {
                    let mut conditions = Vec::new();
                    for (on, name) in [
                        (e.ready, "ready"),
                        (e.serving, "serving"),
                        (e.terminating, "terminating"),
                        (e.local, "local"),
                    ] {
                        if on {
                            conditions.push(name);
                        }
                    }
                    let addr = match e.ip {
                        std::net::IpAddr::V6(a) => format!("[{a}]:{}", e.port),
                        a => format!("{a}:{}", e.port),
                    };
                    let _ = writeln!(
                        s,
                        "    {} {:<28} {:<34} {} connections",
                        if e.usable { "->" } else { "  " },
                        addr,
                        conditions.join(","),
                        e.connections
                    );
                }
            }
            let _ = writeln!(s, "{} frontends", services.len());
        }
        other => {
            let _ = writeln!(
                s,
                "{}",
                serde_json::to_string_pretty(other).unwrap_or_default()
            );
        }
    }
    s
}
