//! The rules kube-proxy's iptables mode writes for ClusterIP Services, as
//! its proxier feeds them to `iptables-restore` (`pkg/proxy/iptables/
//! proxier.go`), so that tests put on their simulated node the kernel path a
//! real node has:
//!
//! - nat: `PREROUTING` and `OUTPUT` jump to `KUBE-SERVICES`, which sends a
//!   Service's cluster IP and port to its `KUBE-SVC-*` chain; that chain
//!   picks an endpoint's `KUBE-SEP-*` chain with the statistic module
//!   (probability 1/(n-i) for the i-th of n, the last unconditional); the
//!   SEP chain marks hairpin traffic (from the endpoint itself) for
//!   masquerade and DNATs to the endpoint; `KUBE-POSTROUTING` masquerades
//!   marked packets (mark 0x4000);
//! - filter: a Service port without endpoints is rejected in
//!   `KUBE-SERVICES` (reached from `FORWARD` and `OUTPUT` for new
//!   connections), with the default ICMP port unreachable;
//! - chain names are kube-proxy's: the prefix and the first 16 characters
//!   of the base32 SHA-256 of the service port name and protocol (and the
//!   endpoint, for SEP chains); endpoints sorted by their `ip:port` text.
//!
//! - session affinity (`ClientIP`): a client seen by an endpoint's SEP chain
//!   within the timeout goes back to it (`-m recent --rcheck --seconds T
//!   --reap`, before the random choice; the SEP chain's DNAT `--set`s it).
//!
//! The off-cluster masquerade rule (`! -s <cluster CIDR>`) is written only
//! when a cluster CIDR is given, as kube-proxy's local-traffic detector
//! does.

use std::fmt::Write as _;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// One port of a Service, as kube-proxy syncs it.
#[derive(Debug, Clone)]
pub struct ServicePort {
    /// `namespace/name:port-name` (kube-proxy's ServicePortName).
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: &'static str,
    pub cluster_ip: IpAddr,
    pub port: u16,
    /// Ready endpoints, `(address, port)`.
    pub endpoints: Vec<(IpAddr, u16)>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity_seconds: Option<u32>,
}

/// A kube-proxy chain name: `prefix` and the hash of `text`.
pub fn chain(prefix: &str, text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let b32 = data_encoding::BASE32.encode(&digest);
    format!("{prefix}{}", &b32[..16])
}

fn endpoint_text(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The `iptables-restore` input for `ports` of one family (`v6`: for
/// `ip6tables-restore`).
pub fn rules(ports: &[ServicePort], cluster_cidr: Option<&str>, v6: bool) -> String {
    let mut chains = vec![
        ":KUBE-SERVICES - [0:0]".to_string(),
        ":KUBE-POSTROUTING - [0:0]".into(),
        ":KUBE-MARK-MASQ - [0:0]".into(),
        ":KUBE-NODEPORTS - [0:0]".into(),
    ];
    let mut nat = vec![
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
            .to_string(),
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
            .into(),
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000".into(),
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".into(),
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000".into(),
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into(),
    ];
    let mut filter = vec![
        ":KUBE-SERVICES - [0:0]".to_string(),
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
    ];
    for s in ports.iter().filter(|s| s.cluster_ip.is_ipv6() == v6) {
        let (name, p) = (&s.name, s.protocol);
        let dst = format!("-m {p} -p {p} -d {} --dport {}", s.cluster_ip, s.port);
        let mut endpoints: Vec<(String, IpAddr)> = s
            .endpoints
            .iter()
            .filter(|(ip, _)| ip.is_ipv6() == v6)
            .map(|(ip, port)| (endpoint_text(*ip, *port), *ip))
            .collect();
        endpoints.sort();
        endpoints.dedup();
        if endpoints.is_empty() {
            filter.push(format!(
                "-A KUBE-SERVICES -m comment --comment \"{name} has no endpoints\" {dst} -j REJECT"
            ));
            continue;
        }
        let svc = chain("KUBE-SVC-", &format!("{name}{p}"));
        chains.push(format!(":{svc} - [0:0]"));
        nat.push(format!(
            "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" {dst} -j {svc}"
        ));
        if let Some(cidr) = cluster_cidr {
            nat.push(format!(
                "-A {svc} -m comment --comment \"{name} cluster IP\" {dst} ! -s {cidr} -j KUBE-MARK-MASQ"
            ));
        }
        let n = endpoints.len();
        let sep_of = |ep: &str| chain("KUBE-SEP-", &format!("{name}{p}{ep}"));
        if let Some(t) = s.affinity_seconds {
            for (ep, _) in &endpoints {
                let sep = sep_of(ep);
                nat.push(format!(
                    "-A {svc} -m comment --comment \"{name} -> {ep}\" -m recent --name {sep} --rcheck --seconds {t} --reap -j {sep}"
                ));
            }
        }
        for (i, (ep, ip)) in endpoints.iter().enumerate() {
            let sep = sep_of(ep);
            chains.push(format!(":{sep} - [0:0]"));
            let mut pick = String::new();
            if i + 1 < n {
                let _ = write!(
                    pick,
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / (n - i) as f64
                );
            }
            nat.push(format!(
                "-A {svc} -m comment --comment \"{name} -> {ep}\" {pick}-j {sep}"
            ));
            nat.push(format!(
                "-A {sep} -m comment --comment {name} -s {ip} -j KUBE-MARK-MASQ"
            ));
            let remember = match s.affinity_seconds {
                Some(_) => format!("-m recent --name {sep} --set "),
                None => String::new(),
            };
            nat.push(format!(
                "-A {sep} -m comment --comment {name} {remember}-m {p} -p {p} -j DNAT --to-destination {ep}"
            ));
        }
    }
    nat.push("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".into());
    format!(
        "*nat\n{}\n{}\nCOMMIT\n*filter\n{}\nCOMMIT\n",
        chains.join("\n"),
        nat.join("\n"),
        filter.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_are_kube_proxys() {
        // from kube-proxy's own test (TestOverallIPTablesRules): the chain
        // of ns1/svc1:p80 over TCP
        assert_eq!(
            chain("KUBE-SVC-", "ns1/svc1:p80tcp"),
            "KUBE-SVC-XPGD46QRK7WJZT7O"
        );
        assert_eq!(
            chain("KUBE-SEP-", "ns1/svc1:p80tcp10.180.0.1:80"),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
    }

    #[test]
    fn two_endpoints_split_by_the_statistic_module_and_none_is_rejected() {
        let port = |endpoints| ServicePort {
            name: "ns4/svc4:p80".into(),
            protocol: "tcp",
            cluster_ip: "172.30.0.44".parse().unwrap(),
            port: 80,
            endpoints,
            affinity_seconds: None,
        };
        let two = rules(
            &[port(vec![
                ("10.180.0.5".parse().unwrap(), 80),
                ("10.180.0.4".parse().unwrap(), 80),
            ])],
            None,
            false,
        );
        let picks: Vec<&str> = two.lines().filter(|l| l.contains("-> 10.180")).collect();
        assert_eq!(picks.len(), 2, "{two}");
        assert!(
            picks[0].contains("10.180.0.4:80") && picks[0].contains("--probability 0.5000000000")
        );
        assert!(picks[1].contains("10.180.0.5:80") && !picks[1].contains("statistic"));
        let none = rules(&[port(vec![])], None, false);
        assert!(
            none.contains("has no endpoints\" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j REJECT"),
            "{none}"
        );
        assert!(!none.contains("KUBE-SVC-"), "{none}");
    }

    #[test]
    fn affinity_checks_each_endpoint_before_the_random_choice_and_remembers_the_client() {
        // kube-proxy's TestOverallIPTablesRules, ns5/svc5 (ClientIP, 10800 s)
        let r = rules(
            &[ServicePort {
                name: "ns5/svc5:p80".into(),
                protocol: "tcp",
                cluster_ip: "172.30.0.45".parse().unwrap(),
                port: 80,
                endpoints: vec![("10.180.0.3".parse().unwrap(), 80)],
                affinity_seconds: Some(10800),
            }],
            None,
            false,
        );
        assert!(r.contains("-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment \"ns5/svc5:p80 -> 10.180.0.3:80\" -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --rcheck --seconds 10800 --reap -j KUBE-SEP-I77PXRDZVX7PMWMN\n-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment \"ns5/svc5:p80 -> 10.180.0.3:80\" -j KUBE-SEP-I77PXRDZVX7PMWMN"), "{r}");
        assert!(r.contains("-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80"), "{r}");
    }
}
