//! The plugin with a real IPAM plugin: host-local of Debian's
//! containernetworking-plugins (1.1.1, spec versions up to 1.0.0), run as a
//! process through `ProcessExec`, with its leases in a temporary dataDir.
//! vswitchd is the fake of `common`.
//!
//! Without /usr/lib/cni/host-local the test prints that it is skipped, and
//! fails when CI=true (CI must have it).

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};
use vswitch_cni::exec::ProcessExec;
use vswitch_cni::proto::ErrorReply;
use vswitch_cni::skel::Env;

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

fn host_local_present() -> bool {
    if Path::new(HOST_LOCAL).exists() {
        return true;
    }
    println!("SKIPPED: {HOST_LOCAL} missing");
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{HOST_LOCAL} is missing, and CI=true requires it"
    );
    false
}

fn conf(version: &str, socket: &Path, data_dir: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "pods",
        "type": "vswitch-cni",
        "socket": socket,
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": [[{"subnet": "10.77.0.0/24", "gateway": "10.77.0.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    })
}

fn with_path(mut env: Env) -> Env {
    env.insert("CNI_PATH".into(), "/usr/lib/cni".into());
    env
}

/// The container IDs host-local holds leases for, by address.
fn leases(data_dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("pods")) else {
        return vec![];
    };
    let mut out: Vec<(String, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.parse::<std::net::IpAddr>().ok()?;
            let owner = std::fs::read_to_string(e.path()).ok()?;
            Some((
                name,
                owner.lines().next().unwrap_or_default().trim().to_owned(),
            ))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn host_local_add_check_gc_del() {
    if !host_local_present() {
        return;
    }
    let daemon = FakeDaemon::start();
    let data = TempDir::new("host-local");
    let c = conf("1.1.0", &daemon.socket, &data.0);

    // ADD, in 1.1.0, with host-local spoken to in 1.0.0.
    let out = dispatch_json(&with_path(verb_env("ADD", "c1")), &c, &ProcessExec);
    assert_eq!(out.exit, 0, "{}", out.stdout);
    let r1 = out.json();
    assert_eq!(r1["cniVersion"], "1.1.0");
    assert_eq!(
        r1["ips"],
        json!([{"interface": 0, "address": "10.77.0.2/24", "gateway": "10.77.0.1"}])
    );
    assert_eq!(r1["routes"], json!([{"dst": "0.0.0.0/0"}]));
    assert!(
        r1.get("dns").is_none(),
        "host-local's empty dns is left out: {r1}"
    );
    let out = dispatch_json(&with_path(verb_env("ADD", "c2")), &c, &ProcessExec);
    assert_eq!(out.exit, 0, "{}", out.stdout);
    assert_eq!(out.json()["ips"][0]["address"], "10.77.0.3/24");
    assert_eq!(
        leases(&data.0),
        [
            ("10.77.0.2".into(), "c1".into()),
            ("10.77.0.3".into(), "c2".into())
        ]
    );

    // CHECK, host-local included (it checks its lease).
    let mut check = c.clone();
    check["prevResult"] = r1;
    dispatch_json(&with_path(verb_env("CHECK", "c1")), &check, &ProcessExec).ok_empty();

    // GC keeping c2: c1's attachment and lease go (by DEL: host-local has
    // no GC).
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c2", "ifname": "eth0"}]);
    let gc_env = with_path(env(&[("CNI_COMMAND", "GC")]));
    dispatch_json(&gc_env, &gc, &ProcessExec).ok_empty();
    assert_eq!(leases(&data.0), [("10.77.0.3".into(), "c2".into())]);
    assert_eq!(daemon.keys().len(), 1);

    // CHECK of c1 now fails: vswitchd does not know it.
    dispatch_json(&with_path(verb_env("CHECK", "c1")), &check, &ProcessExec).error(3);

    // DEL, twice.
    for _ in 0..2 {
        dispatch_json(&with_path(verb_env("DEL", "c2")), &c, &ProcessExec).ok_empty();
        assert!(leases(&data.0).is_empty());
        assert!(daemon.keys().is_empty());
    }
}

#[test]
fn host_local_old_version_and_rollback() {
    if !host_local_present() {
        return;
    }
    let daemon = FakeDaemon::start();
    let data = TempDir::new("host-local-old");
    let c = conf("0.3.1", &daemon.socket, &data.0);
    let out = dispatch_json(&with_path(verb_env("ADD", "c1")), &c, &ProcessExec);
    assert_eq!(out.exit, 0, "{}", out.stdout);
    let r = out.json();
    assert_eq!(r["cniVersion"], "0.3.1");
    assert_eq!(r["ips"][0]["version"], "4");

    // vswitchd refuses the next one: its lease is given back.
    daemon.state.lock().unwrap().refuse_add = Some(ErrorReply {
        code: 100,
        msg: "no".into(),
        details: String::new(),
    });
    dispatch_json(&with_path(verb_env("ADD", "c2")), &c, &ProcessExec).error(100);
    assert_eq!(leases(&data.0), [("10.77.0.2".into(), "c1".into())]);

    // host-local's own errors come through: a 1.1.0 verb it does not have
    // is not sent to it, but a bad range is its error.
    let mut bad = c.clone();
    bad["ipam"]["ranges"] = json!([[{"subnet": "not-a-subnet"}]]);
    daemon.state.lock().unwrap().refuse_add = None;
    let out = dispatch_json(&with_path(verb_env("ADD", "c3")), &bad, &ProcessExec);
    assert_eq!(out.exit, 1, "{}", out.stdout);
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap()
            .starts_with("IPAM plugin \"host-local\" ADD"),
        "{}",
        out.stdout
    );
}
