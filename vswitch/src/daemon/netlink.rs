//! Interface plumbing over rtnetlink: everything the daemon does to links,
//! addresses and routes (and no `ip` commands).
//!
//! rtnetlink is asynchronous; each operation here builds a current-thread
//! tokio runtime, opens a netlink socket in the calling thread's network
//! namespace and runs to completion. Pod-side operations run inside the
//! pod's namespace through [`super::netns::in_netns`].

use std::io;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// How a pod's (or the node's) interface is to be configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addrs: Vec<IpNet>,
    /// Routes: destination and gateway (`None`: directly on the link).
    pub routes: Vec<(IpNet, Option<IpAddr>)>,
}

fn err(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// Runs one netlink conversation in the current namespace.
fn run<T>(f: impl AsyncFnOnce(Handle) -> io::Result<T>) -> io::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        let task = tokio::spawn(conn);
        let r = f(handle).await;
        task.abort();
        r
    })
}

async fn index_of(h: &Handle, name: &str) -> io::Result<Option<LinkMessage>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        // ENODEV: no such link
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -(nix::errno::Errno::ENODEV as i32) =>
        {
            Ok(None)
        }
        Err(e) => Err(err(&format!("looking up {name}"), e)),
    }
}

/// Renames `current` to `cfg.name` (when they differ) and configures it:
/// MAC, MTU, addresses (IPv6 without duplicate address detection), up,
/// routes. Idempotent for addresses and routes that already exist.
pub fn configure(current: &str, cfg: &LinkConfig) -> io::Result<()> {
    run(async |h| {
        let link = index_of(&h, current)
            .await?
            .ok_or_else(|| err(current, "no such link"))?;
        let index = link.header.index;
        let mut msg = LinkUnspec::new_with_index(index)
            .mtu(cfg.mtu)
            .address(cfg.mac.to_vec());
        if current != cfg.name {
            msg = msg.name(cfg.name.clone());
        }
        h.link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|e| err(&format!("configuring {}", cfg.name), e))?;
        // No DAD: the switch answers for nobody else, and a tentative
        // address would delay the pod's first IPv6 packets by a second.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/accept_dad", cfg.name),
            "0",
        );
        for a in &cfg.addrs {
            let mut req = h.address().add(index, a.addr(), a.prefix_len());
            if a.addr().is_ipv6() {
                let m = req.message_mut();
                m.header.flags |= AddressHeaderFlags::Nodad;
                m.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            match req.replace().execute().await {
                Ok(()) => {}
                Err(e) => return Err(err(&format!("address {a} on {}", cfg.name), e)),
            }
        }
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| err(&format!("bringing {} up", cfg.name), e))?;
        for (dst, gw) in &cfg.routes {
            let mut b = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(dst.addr(), dst.prefix_len())
                .map_err(|e| err("route", e))?
                .output_interface(index);
            match gw {
                Some(gw) => b = b.gateway(*gw).map_err(|e| err("route", e))?,
                None => b = b.scope(RouteScope::Link),
            }
            h.route()
                .add(b.build())
                .replace()
                .execute()
                .await
                .map_err(|e| {
                    let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
                    err(&format!("route {dst}{via} on {}", cfg.name), e)
                })?;
        }
        Ok(())
    })
}

/// Adds (or replaces) routes to `dsts` through the link `name`.
pub fn add_routes(name: &str, dsts: &[IpNet]) -> io::Result<()> {
    route_op(name, dsts, true, None)
}

/// Adds (or replaces) routes to `dsts` through the link `name`, with `src`
/// as the preferred source address for the destinations of its family.
pub fn add_routes_from(name: &str, dsts: &[IpNet], src: IpAddr) -> io::Result<()> {
    route_op(name, dsts, true, Some(src))
}

/// Removes routes to `dsts` through the link `name` (missing ones are fine).
pub fn del_routes(name: &str, dsts: &[IpNet]) -> io::Result<()> {
    route_op(name, dsts, false, None)
}

fn route_op(name: &str, dsts: &[IpNet], add: bool, src: Option<IpAddr>) -> io::Result<()> {
    run(async |h| {
        let Some(link) = index_of(&h, name).await? else {
            return if add {
                Err(err(name, "no such link"))
            } else {
                Ok(())
            };
        };
        for dst in dsts {
            let mut b = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(dst.addr(), dst.prefix_len())
                .map_err(|e| err("route", e))?
                .output_interface(link.header.index)
                .scope(RouteScope::Link);
            if let Some(src) = src.filter(|s| s.is_ipv4() == dst.addr().is_ipv4()) {
                b = b.pref_source(src).map_err(|e| err("route", e))?;
            }
            let msg = b.build();
            let r = if add {
                h.route().add(msg).replace().execute().await
            } else {
                h.route().del(msg).execute().await
            };
            if let Err(e) = r
                && add
            {
                return Err(err(&format!("route {dst} via {name}"), e));
            }
        }
        Ok(())
    })
}

/// Deletes the link `name`; a link that does not exist is not an error.
pub fn delete_link(name: &str) -> io::Result<()> {
    run(async |h| {
        let Some(link) = index_of(&h, name).await? else {
            return Ok(());
        };
        h.link()
            .del(link.header.index)
            .execute()
            .await
            .map_err(|e| err(&format!("deleting {name}"), e))
    })
}

/// What a link looks like now: MAC, whether it is up, its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub mac: Option<[u8; 6]>,
    pub addrs: Vec<IpNet>,
}

/// The state of the link `name`, or `None` when there is no such link.
pub fn link_state(name: &str) -> io::Result<Option<LinkState>> {
    run(async |h| {
        let Some(link) = index_of(&h, name).await? else {
            return Ok(None);
        };
        let mac = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(m) if m.len() == 6 => Some([m[0], m[1], m[2], m[3], m[4], m[5]]),
            _ => None,
        });
        let mut addrs = Vec::new();
        let mut list = h
            .address()
            .get()
            .set_link_index_filter(link.header.index)
            .execute();
        while let Some(a) = list.try_next().await.map_err(|e| err("addresses", e))? {
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = ip
                && let Ok(net) = IpNet::new(ip, a.header.prefix_len)
            {
                addrs.push(net);
            }
        }
        Ok(Some(LinkState { mac, addrs }))
    })
}

/// Every address of every link in the current namespace (the node's own
/// addresses, which always reach local pods).
pub fn all_addresses() -> io::Result<Vec<IpAddr>> {
    run(async |h| {
        let mut out = Vec::new();
        let mut list = h.address().get().execute();
        while let Some(a) = list.try_next().await.map_err(|e| err("addresses", e))? {
            for x in &a.attributes {
                if let AddressAttribute::Address(ip) = x
                    && !out.contains(ip)
                {
                    out.push(*ip);
                }
            }
        }
        Ok(out)
    })
}
