//! The verbs: what ADD, DEL, CHECK, STATUS and GC do with vswitchd and the
//! IPAM plugin.
//!
//! ADD: addresses come from the IPAM plugin (`ipam`), or, when chained
//! after a plugin that already chose them (no `ipam`, a prevResult with
//! IPs), from prevResult; vswitchd creates the interface and attaches it.
//! When vswitchd fails the addresses are released again (IPAM DEL); when
//! its failure leaves unknown whether it attached (timeout, broken reply),
//! a DEL is sent to it first. The result keeps prevResult's interfaces and
//! IPs and appends ours (IPs taken from prevResult move to our interface).
//!
//! DEL releases everything it can and reports the first failure: vswitchd
//! DEL (success when already gone), then IPAM DEL. When vswitchd is
//! unreachable the addresses are released anyway and the answer is code 11:
//! the runtime retries DEL, which then finds the addresses already free and
//! detaches the interface; answering success would leave a TAP attached to
//! the switch until GC.
//!
//! CHECK compares vswitchd's attachment with prevResult (the interface by
//! name and sandbox, its MAC, MTU when recorded, and its set of addresses;
//! routes are not compared, as later plugins may change them) and delegates
//! CHECK to the IPAM plugin. A difference is code 101; vswitchd answers code
//! 3 for an attachment it does not know.
//!
//! STATUS: vswitchd's readiness, then the IPAM plugin's when it speaks
//! 1.1.0. Any failure is code 50 (51 when vswitchd says so).
//!
//! GC: if vswitchd holds attachments the runtime does not list as valid,
//! one GC request removes them all and names them; their addresses are
//! released by IPAM DEL with each one's container ID and interface name
//! (host-local 1.1.1 has no GC), or, when the IPAM plugin speaks 1.1.0, by
//! delegating GC to it. GC removes what it can and reports the first
//! failure.
//!
//! vswitchd unreachable is code 11 (try again later) for every verb but
//! STATUS, where it is code 50 (not ready).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use crate::client::{self, ClientError};
use crate::error::{CniError, code as plugin_code};
use crate::ipam::Delegate;
use crate::proto::{
    AddRequest, Attachment, AttachmentKey, IpConfig, Reply, Request, RouteConfig, code,
};
use crate::result::{CniResult, Interface, IpEntry, Route};
use crate::skel::Invocation;

/// How long vswitchd may take to answer one request.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);

pub fn add(inv: &Invocation) -> Result<Value, CniError> {
    let prev = prev_result(inv)?;
    let key = attachment_key(inv);

    let (ipam, allocated) = match &inv.conf.ipam {
        Some(ipam) => {
            let d = Delegate::probe(inv.exec, &ipam.plugin, inv.env, &inv.conf, inv.version)?;
            let allocated = d.add()?;
            (Some(d), allocated)
        }
        None => match &prev {
            Some(prev) if !prev.ips.is_empty() => (None, prev.clone()),
            _ => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "no addresses: the configuration has no \"ipam\" and no prevResult with IPs",
                ));
            }
        },
    };

    let req = Request::Add(AddRequest {
        key: key.clone(),
        netns: inv.netns.clone(),
        pod_namespace: inv.arg("K8S_POD_NAMESPACE").map(str::to_owned),
        pod_name: inv.arg("K8S_POD_NAME").map(str::to_owned),
        ips: allocated
            .ips
            .iter()
            .map(|ip| IpConfig {
                address: ip.address,
                gateway: ip.gateway,
            })
            .collect(),
        routes: allocated
            .routes
            .iter()
            .map(|r| RouteConfig {
                dst: r.dst,
                gw: r.gw,
            })
            .collect(),
        mtu: inv.conf.mtu,
    });
    let attachment = match call(inv, &req) {
        Ok(Reply::Attachment(a)) => a,
        outcome => {
            // Did vswitchd perhaps attach? Only if it took the request and
            // did not answer, or answered something unexpected.
            let maybe_attached = matches!(
                outcome,
                Err(ClientError::Timeout { .. }
                    | ClientError::Io { .. }
                    | ClientError::Protocol { .. })
            ) || matches!(&outcome, Ok(r) if !matches!(r, Reply::Error(_)));
            let mut err = reply_error(outcome, "add");
            if maybe_attached && let Err(e) = call(inv, &Request::Del(key.clone())) {
                eprintln!("vswitch-cni: undoing the attachment after a failed ADD: {e}");
            }
            if let Some(d) = &ipam
                && let Err(e) = d.del(None)
            {
                eprintln!("vswitch-cni: releasing the addresses after a failed ADD: {e}");
                err.details = join(
                    &err.details,
                    &format!("and releasing the addresses failed: {e}"),
                );
            }
            return Err(err);
        }
    };

    let mut result = prev.unwrap_or_default();
    if ipam.is_none() {
        // Chained: prevResult's addresses and routes are now on our
        // interface; the attachment lists them.
        result.ips.clear();
        result.routes.clear();
    }
    let index = result.interfaces.len();
    result.interfaces.push(Interface {
        name: inv.ifname.clone(),
        mac: Some(attachment.mac.clone()),
        mtu: Some(attachment.mtu),
        sandbox: Some(inv.netns.clone()),
        ..Default::default()
    });
    result.ips.extend(attachment.ips.iter().map(|ip| IpEntry {
        interface: Some(index),
        address: ip.address,
        gateway: ip.gateway,
    }));
    result
        .routes
        .extend(attachment.routes.iter().map(|r| Route::new(r.dst, r.gw)));
    if !inv.conf.dns.is_empty() {
        result.dns = inv.conf.dns.clone();
    } else if !allocated.dns.is_empty() {
        result.dns = allocated.dns;
    }
    Ok(result.to_json(inv.version))
}

pub fn del(inv: &Invocation) -> Result<(), CniError> {
    let mut first: Option<CniError> = None;
    match call(inv, &Request::Del(attachment_key(inv))) {
        Ok(Reply::Done) => {}
        outcome => {
            let e = reply_error(outcome, "del");
            eprintln!("vswitch-cni: DEL: {e}");
            first.get_or_insert(e);
        }
    }
    if let Some(ipam) = &inv.conf.ipam {
        let released = Delegate::probe(inv.exec, &ipam.plugin, inv.env, &inv.conf, inv.version)
            .and_then(|d| d.del(None));
        if let Err(e) = released {
            eprintln!("vswitch-cni: DEL: {e}");
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

pub fn check(inv: &Invocation) -> Result<(), CniError> {
    let Some(prev) = prev_result(inv)? else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult in the configuration",
        ));
    };
    let attachment = match call(inv, &Request::Check(attachment_key(inv))) {
        Ok(Reply::Attachment(a)) => a,
        outcome => return Err(reply_error(outcome, "check")),
    };
    compare(inv, &prev, &attachment)?;
    if let Some(ipam) = &inv.conf.ipam {
        Delegate::probe(inv.exec, &ipam.plugin, inv.env, &inv.conf, inv.version)?.check()?;
    }
    Ok(())
}

/// Whether vswitchd's attachment is what prevResult recorded for us.
fn compare(inv: &Invocation, prev: &CniResult, att: &Attachment) -> Result<(), CniError> {
    let mismatch = |what: String| {
        CniError::new(
            plugin_code::CHECK_MISMATCH,
            format!("{} in {}: {what}", inv.ifname, inv.netns),
        )
    };
    let index = prev
        .interfaces
        .iter()
        .position(|i| i.name == inv.ifname && i.sandbox.as_deref().is_none_or(|s| s == inv.netns))
        .ok_or_else(|| mismatch("prevResult has no such interface".into()))?;
    let recorded = &prev.interfaces[index];
    if att.netns != inv.netns {
        return Err(mismatch(format!("vswitchd has it in {}", att.netns)));
    }
    match &recorded.mac {
        Some(mac) if mac.eq_ignore_ascii_case(&att.mac) => {}
        Some(mac) => {
            return Err(mismatch(format!(
                "MAC is {}, prevResult has {mac}",
                att.mac
            )));
        }
        None => return Err(mismatch("prevResult has no MAC for it".into())),
    }
    if let Some(mtu) = recorded.mtu
        && mtu != att.mtu
    {
        return Err(mismatch(format!(
            "MTU is {}, prevResult has {mtu}",
            att.mtu
        )));
    }
    let expected: HashSet<_> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(index))
        .map(|ip| ip.address)
        .collect();
    let actual: HashSet<_> = att.ips.iter().map(|ip| ip.address).collect();
    if expected != actual {
        let list = |s: &HashSet<ipnet::IpNet>| {
            let mut v: Vec<String> = s.iter().map(ToString::to_string).collect();
            v.sort();
            v.join(", ")
        };
        return Err(mismatch(format!(
            "addresses are [{}], prevResult has [{}]",
            list(&actual),
            list(&expected)
        )));
    }
    Ok(())
}

pub fn status(inv: &Invocation) -> Result<(), CniError> {
    let not_ready = |msg: String| CniError::new(code::NOT_READY, msg);
    match client::call(&inv.conf.socket, &Request::Status {}, DAEMON_TIMEOUT) {
        Ok(Reply::Status { ready: true, .. }) => {}
        Ok(Reply::Status {
            ready: false,
            message,
        }) => {
            return Err(not_ready(format!("vswitchd is not ready: {message}")));
        }
        Ok(Reply::Error(e)) if e.code == 51 => return Err(e.into()),
        Ok(Reply::Error(e)) => {
            return Err(not_ready(format!("vswitchd: {}", e.msg)).with_details(e.details));
        }
        Ok(other) => return Err(not_ready(format!("vswitchd answered {other:?} to status"))),
        Err(e) => return Err(not_ready(e.to_string())),
    }
    if let Some(ipam) = &inv.conf.ipam {
        // CNI_PATH is optional for STATUS; without it the IPAM plugin
        // cannot be asked.
        if inv.env.get("CNI_PATH").is_some_and(|p| !p.is_empty()) {
            let d = Delegate::probe(inv.exec, &ipam.plugin, inv.env, &inv.conf, inv.version)
                .map_err(|e| not_ready(e.msg).with_details(e.details))?;
            if d.speaks_1_1() {
                d.status().map_err(|e| match e.code {
                    50 | 51 => e,
                    _ => not_ready(e.msg).with_details(e.details),
                })?;
            }
        }
    }
    Ok(())
}

pub fn gc(inv: &Invocation) -> Result<(), CniError> {
    let valid = inv.conf.valid_attachments()?;
    // Ask the IPAM plugin first: without it, removed attachments would
    // keep their addresses for ever.
    let ipam = match &inv.conf.ipam {
        Some(ipam) => Some(Delegate::probe(
            inv.exec,
            &ipam.plugin,
            inv.env,
            &inv.conf,
            inv.version,
        )?),
        None => None,
    };
    let attachments = match call(inv, &Request::List {}) {
        Ok(Reply::Attachments(list)) => list,
        outcome => return Err(reply_error(outcome, "list")),
    };
    let keep: HashSet<&AttachmentKey> = valid.iter().collect();
    let stale = attachments
        .iter()
        .filter(|a| !keep.contains(&a.key))
        .count();

    let mut first: Option<CniError> = None;
    let mut removed = Vec::new();
    if stale > 0 {
        match call(
            inv,
            &Request::Gc {
                valid: valid.clone(),
            },
        ) {
            Ok(Reply::Attachments(list)) => removed = list,
            outcome => return Err(reply_error(outcome, "gc")),
        }
    }
    for a in &removed {
        eprintln!(
            "vswitch-cni: GC removed {} {} ({})",
            a.key.container_id, a.key.ifname, a.pod
        );
    }
    if let Some(d) = &ipam {
        if d.speaks_1_1() {
            if let Err(e) = d.gc() {
                first.get_or_insert(e);
            }
        } else {
            for a in &removed {
                if let Err(e) = d.del(Some((&a.key.container_id, &a.key.ifname, &a.netns))) {
                    eprintln!(
                        "vswitch-cni: GC: releasing the addresses of {}: {e}",
                        a.key.container_id
                    );
                    first.get_or_insert(e);
                }
            }
        }
    }
    first.map_or(Ok(()), Err)
}

fn call(inv: &Invocation, req: &Request) -> Result<Reply, ClientError> {
    client::call(&inv.conf.socket, req, DAEMON_TIMEOUT)
}

fn attachment_key(inv: &Invocation) -> AttachmentKey {
    AttachmentKey {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
    }
}

fn prev_result(inv: &Invocation) -> Result<Option<CniResult>, CniError> {
    inv.conf
        .prev_result
        .as_ref()
        .map(|v| CniResult::parse(v, "prevResult").map(|(_, r)| r))
        .transpose()
}

/// The error for a request that did not get the reply it needed.
fn reply_error(outcome: Result<Reply, ClientError>, op: &str) -> CniError {
    match outcome {
        Ok(Reply::Error(e)) => e.into(),
        Ok(other) => CniError::new(
            code::IO_FAILURE,
            format!("vswitchd answered {op} with an unexpected reply"),
        )
        .with_details(format!("{other:?}")),
        Err(e @ (ClientError::Unreachable { .. } | ClientError::Timeout { .. })) => {
            CniError::new(code::TRY_AGAIN_LATER, e.to_string())
        }
        Err(e @ (ClientError::Io { .. } | ClientError::Protocol { .. })) => {
            CniError::new(code::IO_FAILURE, e.to_string())
        }
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_owned()
    } else {
        format!("{a}; {b}")
    }
}
