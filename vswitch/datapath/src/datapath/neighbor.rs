//! Neighbour resolution, answered by the switch itself (never flooded):
//! ARP requests and IPv6 neighbour solicitations get the MAC of a local pod
//! sharing the asker's link, or the gateway's.

use std::net::{IpAddr, Ipv6Addr};

use super::Datapath;
use crate::Action;
use crate::counters::Outcome;
use crate::parse::{self, IpPacket, Mac};
use crate::ports::{PortId, PortKind};
use crate::reply;
use crate::wire::{eth, icmp, ip_proto, ipv6};

impl Datapath {
    /// ARP: the switch answers for every address (local pods with their MAC
    /// when the asker shares their link, anything else with the gateway's).
    pub(super) fn arp(&self, in_port: PortId, arp: &parse::Arp) -> (Action, Outcome) {
        let drop = |o: Outcome| (Action::Drop(o), o);
        let port = self.ports[in_port as usize].as_ref().expect("port");
        if arp.sender_mac != port.mac {
            return drop(Outcome::Spoofed);
        }
        if !arp.request {
            return drop(Outcome::Unsupported); // gratuitous replies teach us nothing
        }
        if arp.sender_ip.is_unspecified() || arp.sender_ip == arp.target_ip {
            return drop(Outcome::Unsupported); // address probes and announcements
        }
        let sender = IpAddr::V4(arp.sender_ip);
        // A pod may ask from its own address or a link-local one (the
        // switch learns nothing from ARP, so this poisons nothing).
        let legit = match &port.kind {
            PortKind::Pod { .. } => port.owns(sender) || arp.sender_ip.is_link_local(),
            PortKind::Node { .. } => !self.by_ip.contains_key(&sender),
            // nothing to resolve across the overlay
            PortKind::Remote { .. } | PortKind::Overlay => {
                return drop(Outcome::Unsupported);
            }
        };
        if !legit {
            return drop(Outcome::Spoofed);
        }
        let answer = self.neighbor_mac(in_port, IpAddr::V4(arp.target_ip));
        let r = reply::arp_reply(answer, arp.target_ip, arp.sender_mac, arp.sender_ip);
        (Action::Reply(in_port, r), Outcome::Replied)
    }

    /// The MAC the switch gives for `target` to the host on `in_port`: a
    /// local pod's own MAC to another pod (so that pods sharing a subnet talk
    /// at L2), the gateway's otherwise.
    fn neighbor_mac(&self, in_port: PortId, target: IpAddr) -> Mac {
        let from_pod = self.node_port != Some(in_port);
        match self.by_ip.get(&target) {
            Some(&p) if from_pod && p != in_port => self.ports[p as usize].as_ref().map(|p| p.mac),
            _ => None,
        }
        .unwrap_or(self.cfg.gateway_mac)
    }

    /// advertisements and redirects from pods are not for the switch to take.
    pub(super) fn ndp(
        &self,
        in_port: PortId,
        ty: u8,
        ip: &IpPacket,
        frame: &[u8],
    ) -> Result<(Action, Outcome), Outcome> {
        let port = self.ports[in_port as usize].as_ref().expect("port");
        if ty != icmp::V6_NEIGHBOR_SOLICIT {
            return Err(Outcome::Unsupported);
        }
        let IpAddr::V6(src) = ip.src else {
            return Err(Outcome::Malformed);
        };
        if src.is_unspecified() {
            return Err(Outcome::Unsupported); // duplicate address detection: stay silent
        }
        let link_local = src.is_unicast_link_local(); // fe80::/10
        let legit = match &port.kind {
            PortKind::Pod { .. } => link_local || port.owns(ip.src),
            PortKind::Node { .. } => !self.by_ip.contains_key(&ip.src),
            PortKind::Remote { .. } | PortKind::Overlay => return Err(Outcome::Unsupported),
        };
        if !legit {
            return Err(Outcome::Spoofed);
        }
        if ip.ttl != 255 {
            return Err(Outcome::Malformed); // RFC 4861: NDP arrives with hop limit 255
        }
        // The target address follows the ICMPv6 header's 8 bytes (NDP packets
        // carry no extension headers).
        if frame.get(eth::HLEN + ipv6::NXT_HDR) != Some(&ip_proto::ICMPV6) {
            return Err(Outcome::Unsupported);
        }
        let l4 = eth::HLEN + ipv6::HLEN;
        let target: [u8; 16] = frame
            .get(l4 + icmp::NS_TARGET.start..l4 + icmp::NS_TARGET.end)
            .ok_or(Outcome::Malformed)?
            .try_into()
            .expect("16");
        let target = Ipv6Addr::from(target);
        let answer = self.neighbor_mac(in_port, IpAddr::V6(target));
        let src_mac: Mac = frame[eth::SRC].try_into().expect("6");
        let router = answer == self.cfg.gateway_mac;
        let r = reply::neighbor_advert(answer, target, router, src_mac, src);
        Ok((Action::Reply(in_port, r), Outcome::Replied))
    }
}
