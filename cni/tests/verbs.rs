//! Every verb through `skel::dispatch`, in process, against the fake
//! vswitchd and the fake IPAM plugin of `common`.

mod common;

use common::*;
use serde_json::{Value, json};
use vswitch_cni::proto::{AttachmentKey, ErrorReply, IpConfig, Reply, Request};

fn key(cid: &str) -> AttachmentKey {
    AttachmentKey {
        container_id: cid.into(),
        ifname: "eth0".into(),
    }
}

fn lease(cid: &str) -> (String, String) {
    (cid.into(), "eth0".into())
}

/// ADD for `cid`; returns the result.
fn add(daemon: &FakeDaemon, ipam: &FakeIpam, version: &str, cid: &str) -> Value {
    let out = dispatch_json(&verb_env("ADD", cid), &conf(version, &daemon.socket), ipam);
    assert_eq!(out.exit, 0, "ADD failed: {}", out.stdout);
    out.json()
}

#[test]
fn version_lists_the_supported_versions() {
    let ipam = FakeIpam::new();
    let out = dispatch(
        &env(&[("CNI_COMMAND", "VERSION")]),
        b"{\"cniVersion\":\"0.4.0\"}",
        &ipam,
    );
    assert_eq!(out.exit, 0);
    assert_eq!(
        out.json(),
        json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    // Without input, in the plugin's own version.
    let out = dispatch(&env(&[("CNI_COMMAND", "VERSION")]), b"", &ipam);
    assert_eq!(out.json()["cniVersion"], "1.1.0");
}

#[test]
fn add_answers_a_1_1_0_result() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    let result = add(&daemon, &ipam, "1.1.0", "c1");
    assert_eq!(
        result,
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [{
                "name": "eth0",
                "mac": "02:00:00:00:00:01",
                "mtu": 1400,
                "sandbox": "/var/run/netns/c1",
            }],
            "ips": [{"interface": 0, "address": "10.22.0.2/24", "gateway": "10.22.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["shop.svc.cluster.local"]},
        })
    );

    // vswitchd was asked for exactly this attachment.
    let Request::Add(req) = &daemon.requests()[0] else {
        panic!("{:?}", daemon.requests())
    };
    assert_eq!(req.key, key("c1"));
    assert_eq!(req.netns, "/var/run/netns/c1");
    assert_eq!(req.pod_namespace.as_deref(), Some("shop"));
    assert_eq!(req.pod_name.as_deref(), Some("cart-1"));
    assert_eq!(req.mtu, Some(1400));
    assert_eq!(
        req.ips,
        [IpConfig {
            address: "10.22.0.2/24".parse().unwrap(),
            gateway: Some("10.22.0.1".parse().unwrap())
        }]
    );

    // The IPAM plugin refused 1.1.0, was asked its versions, then spoken
    // to in 1.0.0 (its highest), with the rest of the configuration as given.
    let calls = ipam.calls();
    assert_eq!(
        calls.iter().map(|c| c.command.as_str()).collect::<Vec<_>>(),
        ["ADD", "VERSION", "ADD"]
    );
    assert_eq!(calls[2].stdin["cniVersion"], "1.0.0");
    assert_eq!(calls[2].stdin["ipam"]["subnet"], "10.22.0.0/24");
    assert_eq!(calls[2].stdin["name"], "pods");
    assert_eq!(calls[2].env["CNI_CONTAINERID"], "c1");
    assert_eq!(
        calls[2].env["CNI_ARGS"],
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1"
    );
    assert_eq!(ipam.leases(), [lease("c1")]);
}

#[test]
fn add_answers_0_4_0_and_0_3_1_results() {
    for version in ["0.4.0", "0.3.1"] {
        let daemon = FakeDaemon::start();
        let ipam = FakeIpam::new();
        let result = add(&daemon, &ipam, version, "c1");
        assert_eq!(
            result,
            json!({
                "cniVersion": version,
                // No mtu: the field is 1.1.0's.
                "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/var/run/netns/c1"}],
                "ips": [{"version": "4", "interface": 0, "address": "10.22.0.2/24", "gateway": "10.22.0.1"}],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dns": {"nameservers": ["10.96.0.10"], "search": ["shop.svc.cluster.local"]},
            }),
            "{version}"
        );
        // The IPAM plugin speaks this version: it is used as is.
        assert_eq!(ipam.verbs()[0].stdin["cniVersion"], version);
    }
}

#[test]
fn add_with_cni_versions_only_picks_the_highest_known() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    let mut c = conf("1.1.0", &daemon.socket);
    c.as_object_mut().unwrap().remove("cniVersion");
    c["cniVersions"] = json!(["0.4.0", "1.1.0", "7.0.0"]);
    let out = dispatch_json(&verb_env("ADD", "c1"), &c, &ipam);
    assert_eq!(out.json()["cniVersion"], "1.1.0");
    // refused in 1.1.0, then spoken to in its own highest version
    let verbs = ipam.verbs();
    assert_eq!(verbs[0].stdin["cniVersion"], "1.1.0");
    let sent = &verbs.last().unwrap().stdin;
    assert_eq!(sent["cniVersion"], "1.0.0");
    assert!(sent.get("cniVersions").is_none(), "{sent}");
}

#[test]
fn malformed_json_is_code_6() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    let out = dispatch(
        &verb_env("ADD", "c1"),
        b"{\"cniVersion\": \"1.1.0\",",
        &ipam,
    );
    let e = out.error(6);
    assert_eq!(e["cniVersion"], "1.1.0");
    assert!(daemon.requests().is_empty());
    assert!(ipam.calls().is_empty());
}

#[test]
fn unknown_field_is_code_7_naming_it() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    let mut c = conf("1.0.0", &daemon.socket);
    c["bridgeName"] = json!("br0");
    let e = dispatch_json(&verb_env("ADD", "c1"), &c, &ipam).error(7);
    assert!(e["msg"].as_str().unwrap().contains("\"bridgeName\""), "{e}");
    assert_eq!(e["cniVersion"], "1.0.0");
    assert!(daemon.requests().is_empty());
}

#[test]
fn wrong_type_is_code_6_naming_the_field() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    let mut c = conf("1.1.0", &daemon.socket);
    c["dns"] = json!({"nameservers": "10.96.0.10"});
    let e = dispatch_json(&verb_env("ADD", "c1"), &c, &ipam).error(6);
    assert!(e["msg"].as_str().unwrap().contains("\"dns\""), "{e}");
}

#[test]
fn unsupported_version_is_code_1() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    for version in ["0.2.0", "2.0.0"] {
        let e = dispatch_json(
            &verb_env("ADD", "c1"),
            &conf(version, &daemon.socket),
            &ipam,
        )
        .error(1);
        assert_eq!(e["msg"], "incompatible CNI versions");
        assert_eq!(
            e["details"],
            format!(
                "config is \"{version}\", plugin supports [\"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]"
            )
        );
    }
    // Verbs newer than the configuration's version.
    dispatch_json(
        &verb_env("CHECK", "c1"),
        &conf("0.3.1", &daemon.socket),
        &ipam,
    )
    .error(1);
    dispatch_json(
        &env(&[("CNI_COMMAND", "STATUS")]),
        &conf("1.0.0", &daemon.socket),
        &ipam,
    )
    .error(1);
    assert!(daemon.requests().is_empty());
}

#[test]
fn missing_or_bad_env_is_code_4() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    let c = conf("1.1.0", &daemon.socket);

    let mut e = verb_env("ADD", "c1");
    e.remove("CNI_NETNS");
    e.remove("CNI_IFNAME");
    let err = dispatch_json(&e, &c, &ipam).error(4);
    assert_eq!(
        err["msg"],
        "required env variables [CNI_NETNS CNI_IFNAME] missing"
    );

    let mut e = verb_env("DEL", "c1");
    e.insert("CNI_CONTAINERID".into(), String::new());
    dispatch_json(&e, &c, &ipam).error(4);

    let mut e = verb_env("CHECK", "c1");
    e.remove("CNI_PATH");
    let err = dispatch_json(&e, &c, &ipam).error(4);
    assert!(err["msg"].as_str().unwrap().contains("CNI_PATH"), "{err}");

    let mut e = verb_env("GC", "c1");
    e.remove("CNI_PATH");
    dispatch_json(&e, &c, &ipam).error(4);

    dispatch_json(&verb_env("FROB", "c1"), &c, &ipam).error(4);
    dispatch_json(&env(&[]), &c, &ipam).error(4);

    let mut e = verb_env("ADD", "c1");
    e.insert("CNI_IFNAME".into(), "a/b".into());
    dispatch_json(&e, &c, &ipam).error(4);
    let mut e = verb_env("ADD", "c1");
    e.insert("CNI_CONTAINERID".into(), "-bad".into());
    dispatch_json(&e, &c, &ipam).error(4);
    let mut e = verb_env("ADD", "c1");
    e.insert("CNI_ARGS".into(), "K8S_POD_NAME".into());
    dispatch_json(&e, &c, &ipam).error(4);

    assert!(daemon.requests().is_empty());
    assert!(ipam.calls().is_empty());
}

#[test]
fn daemon_unreachable_is_11_on_add_and_50_on_status() {
    let dir = TempDir::new("nodaemon");
    let socket = dir.0.join("absent.sock");
    let ipam = FakeIpam::new();

    let e = dispatch_json(&verb_env("ADD", "c1"), &conf("1.1.0", &socket), &ipam).error(11);
    assert!(e["msg"].as_str().unwrap().contains("not reachable"), "{e}");
    // The address was given back.
    // (the first ADD is refused in 1.1.0; the second, in 1.0.0, leases)
    let verbs: Vec<String> = ipam.verbs().into_iter().map(|c| c.command).collect();
    assert_eq!(verbs, ["ADD", "ADD", "DEL"]);
    assert!(ipam.leases().is_empty());

    let status = env(&[("CNI_COMMAND", "STATUS")]);
    dispatch_json(&status, &conf("1.1.0", &socket), &ipam).error(50);

    // CHECK and GC: try again later too.
    let mut check = conf("1.1.0", &socket);
    check["prevResult"] = json!({"cniVersion": "1.1.0"});
    dispatch_json(&verb_env("CHECK", "c1"), &check, &ipam).error(11);
    let mut gc = conf("1.1.0", &socket);
    gc["cni.dev/valid-attachments"] = json!([]);
    dispatch_json(&verb_env("GC", "c1"), &gc, &ipam).error(11);
}

#[test]
fn refused_add_releases_the_address() {
    let daemon = FakeDaemon::start();
    daemon.state.lock().unwrap().refuse_add = Some(ErrorReply {
        code: 100,
        msg: "no free port".into(),
        details: String::new(),
    });
    let ipam = FakeIpam::new();
    let e = dispatch_json(
        &verb_env("ADD", "c1"),
        &conf("1.1.0", &daemon.socket),
        &ipam,
    )
    .error(100);
    assert_eq!(e["msg"], "no free port");
    let verbs = ipam.verbs();
    assert_eq!(
        verbs.iter().map(|c| c.command.as_str()).collect::<Vec<_>>(),
        ["ADD", "ADD", "DEL"]
    );
    assert_eq!(verbs[1].env["CNI_CONTAINERID"], "c1");
    assert_eq!(verbs[1].env["CNI_IFNAME"], "eth0");
    assert!(ipam.leases().is_empty());
    // vswitchd refused: nothing to undo there.
    assert_eq!(daemon.requests().len(), 1);
}

#[test]
fn unexpected_add_reply_undoes_both_sides() {
    let daemon = FakeDaemon::start();
    daemon.state.lock().unwrap().add_reply = Some(Reply::Done);
    let ipam = FakeIpam::new();
    dispatch_json(
        &verb_env("ADD", "c1"),
        &conf("1.1.0", &daemon.socket),
        &ipam,
    )
    .error(5);
    assert!(ipam.leases().is_empty());
    assert!(
        matches!(&daemon.requests()[..], [Request::Add(_), Request::Del(k)] if *k == key("c1"))
    );
}

#[test]
fn del_is_idempotent() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    add(&daemon, &ipam, "1.1.0", "c1");
    add(&daemon, &ipam, "1.1.0", "c2");
    for _ in 0..2 {
        dispatch_json(
            &verb_env("DEL", "c1"),
            &conf("1.1.0", &daemon.socket),
            &ipam,
        )
        .ok_empty();
        assert_eq!(daemon.keys(), [key("c2")]);
        assert_eq!(ipam.leases(), [lease("c2")]);
    }
    // A container never added.
    dispatch_json(
        &verb_env("DEL", "never"),
        &conf("1.1.0", &daemon.socket),
        &ipam,
    )
    .ok_empty();
    // DEL needs no netns.
    let mut e = verb_env("DEL", "c2");
    e.remove("CNI_NETNS");
    dispatch_json(&e, &conf("1.1.0", &daemon.socket), &ipam).ok_empty();
    assert!(daemon.keys().is_empty());
    assert!(ipam.leases().is_empty());
}

#[test]
fn del_with_daemon_down_releases_the_address_and_asks_to_retry() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    add(&daemon, &ipam, "1.1.0", "c1");
    let socket = daemon.socket.clone();
    drop(daemon);
    dispatch_json(&verb_env("DEL", "c1"), &conf("1.1.0", &socket), &ipam).error(11);
    assert!(ipam.leases().is_empty());
}

#[test]
fn check_passes_on_the_add_result() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    for version in ["1.1.0", "0.4.0"] {
        let cid = format!("c-{version}");
        let result = add(&daemon, &ipam, version, &cid);
        let mut c = conf(version, &daemon.socket);
        c["prevResult"] = result;
        dispatch_json(&verb_env("CHECK", &cid), &c, &ipam).ok_empty();
        let last = ipam.verbs().pop().unwrap();
        assert_eq!(last.command, "CHECK");
        // The IPAM plugin gets prevResult in the version it is spoken to.
        assert_eq!(
            last.stdin["prevResult"]["cniVersion"],
            last.stdin["cniVersion"]
        );
    }
}

#[test]
fn check_reports_a_mismatch() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    let result = add(&daemon, &ipam, "1.1.0", "c1");
    let mut c = conf("1.1.0", &daemon.socket);
    c["prevResult"] = result;

    // vswitchd now has another address on the interface.
    daemon
        .state
        .lock()
        .unwrap()
        .attachments
        .get_mut(&key("c1"))
        .unwrap()
        .ips[0]
        .address = "10.22.0.99/24".parse().unwrap();
    let e = dispatch_json(&verb_env("CHECK", "c1"), &c, &ipam).error(101);
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.contains("10.22.0.99/24") && msg.contains("10.22.0.2/24"),
        "{msg}"
    );

    // ... or another MAC.
    {
        let mut s = daemon.state.lock().unwrap();
        let a = s.attachments.get_mut(&key("c1")).unwrap();
        a.ips[0].address = "10.22.0.2/24".parse().unwrap();
        a.mac = "02:00:00:00:00:42".into();
    }
    let e = dispatch_json(&verb_env("CHECK", "c1"), &c, &ipam).error(101);
    assert!(e["msg"].as_str().unwrap().contains("MAC"), "{e}");

    // prevResult without our interface.
    c["prevResult"]["interfaces"][0]["name"] = json!("eth1");
    c["prevResult"]["ips"][0]
        .as_object_mut()
        .unwrap()
        .remove("interface");
    dispatch_json(&verb_env("CHECK", "c1"), &c, &ipam).error(101);
}

#[test]
fn check_of_an_unknown_container_is_code_3() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    let result = add(&daemon, &ipam, "1.1.0", "c1");
    let mut c = conf("1.1.0", &daemon.socket);
    c["prevResult"] = result;
    dispatch_json(&verb_env("CHECK", "other"), &c, &ipam).error(3);
}

#[test]
fn check_needs_prev_result() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    add(&daemon, &ipam, "1.1.0", "c1");
    let e = dispatch_json(
        &verb_env("CHECK", "c1"),
        &conf("1.1.0", &daemon.socket),
        &ipam,
    )
    .error(7);
    assert!(e["msg"].as_str().unwrap().contains("prevResult"), "{e}");
}

#[test]
fn status_follows_the_daemon() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    let status = env(&[("CNI_COMMAND", "STATUS")]);
    dispatch_json(&status, &conf("1.1.0", &daemon.socket), &ipam).ok_empty();
    assert_eq!(daemon.requests(), [Request::Status {}]);
    // host-local-like IPAM: asked its version, not STATUS.
    assert!(ipam.verbs().is_empty());

    daemon.state.lock().unwrap().not_ready = Some("syncing pods".into());
    let e = dispatch_json(&status, &conf("1.1.0", &daemon.socket), &ipam).error(50);
    assert!(e["msg"].as_str().unwrap().contains("syncing pods"), "{e}");
}

#[test]
fn status_asks_a_1_1_0_ipam_plugin() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::speaking(&["1.0.0", "1.1.0"]);
    let status = env(&[("CNI_COMMAND", "STATUS")]);
    dispatch_json(&status, &conf("1.1.0", &daemon.socket), &ipam).ok_empty();
    assert_eq!(ipam.verbs()[0].command, "STATUS");
    ipam.state.lock().unwrap().status_error =
        Some(vswitch_cni::error::CniError::new(50, "pool exhausted"));
    let e = dispatch_json(&status, &conf("1.1.0", &daemon.socket), &ipam).error(50);
    assert!(e["msg"].as_str().unwrap().contains("pool exhausted"), "{e}");
}

fn gc_conf(socket: &std::path::Path, valid: &[&str]) -> Value {
    let mut c = conf("1.1.0", socket);
    c["cni.dev/valid-attachments"] = valid
        .iter()
        .map(|cid| json!({"containerID": cid, "ifname": "eth0"}))
        .collect();
    c
}

#[test]
fn gc_removes_only_stale_attachments_and_their_leases() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    for cid in ["c1", "c2", "c3"] {
        add(&daemon, &ipam, "1.1.0", cid);
    }
    let before = ipam.verbs().len();
    let mut e = env(&[("CNI_COMMAND", "GC")]);
    e.insert("CNI_PATH".into(), "/opt/cni/bin".into());
    dispatch_json(&e, &gc_conf(&daemon.socket, &["c2"]), &ipam).ok_empty();

    assert_eq!(daemon.keys(), [key("c2")]);
    assert_eq!(ipam.leases(), [lease("c2")]);
    // One DEL per removed attachment, with its IDs, and without the GC key.
    let dels = &ipam.verbs()[before..];
    let mut freed: Vec<&str> = dels
        .iter()
        .map(|c| c.env["CNI_CONTAINERID"].as_str())
        .collect();
    freed.sort();
    assert_eq!(freed, ["c1", "c3"]);
    for d in dels {
        assert_eq!(d.command, "DEL");
        assert_eq!(d.env["CNI_IFNAME"], "eth0");
        assert_eq!(
            d.env["CNI_NETNS"],
            format!("/var/run/netns/{}", d.env["CNI_CONTAINERID"])
        );
        assert!(d.stdin.get("cni.dev/valid-attachments").is_none());
    }
    let sent = daemon.requests();
    let gc_requests: Vec<_> = sent
        .iter()
        .filter(|r| matches!(r, Request::Gc { .. }))
        .collect();
    assert_eq!(
        gc_requests,
        [&Request::Gc {
            valid: vec![key("c2")]
        }]
    );

    // Nothing stale: no GC request, no DEL.
    let n = daemon.requests().len();
    let m = ipam.verbs().len();
    dispatch_json(&e, &gc_conf(&daemon.socket, &["c2"]), &ipam).ok_empty();
    assert_eq!(&daemon.requests()[n..], [Request::List {}]);
    assert_eq!(ipam.verbs().len(), m);
}

#[test]
fn gc_delegates_to_a_1_1_0_ipam_plugin() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::speaking(&["1.0.0", "1.1.0"]);
    for cid in ["c1", "c2"] {
        add(&daemon, &ipam, "1.1.0", cid);
    }
    let before = ipam.verbs().len();
    let e = env(&[("CNI_COMMAND", "GC")]);
    dispatch_json(&e, &gc_conf(&daemon.socket, &["c1"]), &ipam).ok_empty();
    assert_eq!(daemon.keys(), [key("c1")]);
    assert_eq!(ipam.leases(), [lease("c1")]);
    let after = &ipam.verbs()[before..];
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].command, "GC");
    assert_eq!(after[0].stdin["cniVersion"], "1.1.0");
}

#[test]
fn gc_without_the_valid_list_removes_nothing() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    add(&daemon, &ipam, "1.1.0", "c1");
    let e = env(&[("CNI_COMMAND", "GC")]);
    dispatch_json(&e, &conf("1.1.0", &daemon.socket), &ipam).error(7);
    assert_eq!(daemon.keys(), [key("c1")]);
    assert_eq!(ipam.leases(), [lease("c1")]);
}

#[test]
fn chained_after_a_plugin_that_chose_the_addresses() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    let mut c = conf("1.1.0", &daemon.socket);
    c.as_object_mut().unwrap().remove("ipam");
    c.as_object_mut().unwrap().remove("dns");
    c["prevResult"] = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "host-side0", "mac": "02:aa:00:00:00:01"}],
        "ips": [{"address": "10.50.0.7/24", "gateway": "10.50.0.1"}],
        "routes": [{"dst": "10.0.0.0/8", "gw": "10.50.0.1"}],
        "dns": {"nameservers": ["10.50.0.53"]},
    });
    let out = dispatch_json(&verb_env("ADD", "c1"), &c, &ipam);
    assert_eq!(out.exit, 0, "{}", out.stdout);
    assert_eq!(
        out.json(),
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "host-side0", "mac": "02:aa:00:00:00:01"},
                {"name": "eth0", "mac": "02:00:00:00:00:01", "mtu": 1400, "sandbox": "/var/run/netns/c1"},
            ],
            "ips": [{"interface": 1, "address": "10.50.0.7/24", "gateway": "10.50.0.1"}],
            "routes": [{"dst": "10.0.0.0/8", "gw": "10.50.0.1"}],
            "dns": {"nameservers": ["10.50.0.53"]},
        })
    );
    let Request::Add(req) = &daemon.requests()[0] else {
        panic!()
    };
    assert_eq!(
        req.ips[0].address,
        "10.50.0.7/24".parse::<ipnet::IpNet>().unwrap()
    );
    assert_eq!(req.routes[0].gw, Some("10.50.0.1".parse().unwrap()));
    assert!(ipam.calls().is_empty());

    // Without IPAM and without addresses in prevResult there is nothing to
    // give the pod.
    c["prevResult"] = json!({"cniVersion": "1.1.0"});
    dispatch_json(&verb_env("ADD", "c2"), &c, &ipam).error(7);
}

#[test]
fn chained_with_ipam_appends_to_prev_result() {
    let daemon = FakeDaemon::start();
    let ipam = FakeIpam::new();
    let mut c = conf("0.4.0", &daemon.socket);
    c["prevResult"] = json!({
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "net0", "sandbox": "/var/run/netns/c1"}],
        "ips": [{"version": "6", "interface": 0, "address": "fd00::5/64"}],
    });
    let out = dispatch_json(&verb_env("ADD", "c1"), &c, &ipam);
    assert_eq!(out.exit, 0, "{}", out.stdout);
    let r = out.json();
    assert_eq!(r["interfaces"][0]["name"], "net0");
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(
        r["ips"],
        json!([
            {"version": "6", "interface": 0, "address": "fd00::5/64"},
            {"version": "4", "interface": 1, "address": "10.22.0.2/24", "gateway": "10.22.0.1"},
        ])
    );
    // The IPAM plugin saw prevResult in its own (here: the same) version.
    assert_eq!(
        ipam.verbs()[0].stdin["prevResult"]["ips"][0]["version"],
        "6"
    );
}
