//! vswitchctl as a user runs it: exit codes, the closing line, and bad
//! input that is reported without stopping the rest.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::{is_root, skip};

fn vswitchctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vswitchctl"))
        .args(args)
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("run vswitchctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vswitchctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn scenario_run_reports_each_file_and_the_totals() {
    let wrong = temp_file(
        "wrong.yaml",
        "name: wrong\nsteps:\n  - expect:\n      - probe: {port: 80, protocol: TCP}\n        default: allow\n        except: [\"x/a -> y/b\"]\n",
    );
    let invalid = temp_file(
        "invalid.yaml",
        "name: invalid\nsteps:\n  - expect:\n      - probe: {port: 80, protocol: TCP}\n        default: perhaps\n",
    );
    let unsupported = temp_file(
        "anp.yaml",
        "name: anp\nsteps:\n  - do:\n      - apply: {apiVersion: policy.networking.k8s.io/v1alpha1, kind: AdminNetworkPolicy, metadata: {name: a}, spec: {}}\n    expect: []\n",
    );
    let (code, out, _) = vswitchctl(&[
        "scenario",
        "run",
        "--mode",
        "engine",
        "tests/netpol/02-deny-all-ingress.yaml",
        wrong.to_str().unwrap(),
        invalid.to_str().unwrap(),
        unsupported.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("PASS tests/netpol/02-deny-all-ingress.yaml"),
        "{out}"
    );
    // the wrong expectation: one pair differs, with the rule that decided
    assert!(
        out.contains("FAIL")
            && out.contains("x/a -> y/b  80/TCP ipv4  expected deny, observed allow"),
        "{out}"
    );
    assert!(out.contains("steps[0].expect[0].default"), "{out}");
    assert!(out.contains("AdminNetworkPolicy is not supported"), "{out}");
    assert_eq!(out.lines().last(), Some("1 passed, 3 failed"), "{out}");
}

#[test]
fn scenario_run_exits_zero_when_all_pass() {
    let (code, out, _) = vswitchctl(&[
        "scenario",
        "run",
        "tests/netpol/01-no-policies-allow-all.yaml",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().last(), Some("1 passed, 0 failed"));
}

#[test]
fn policy_simulate_prints_the_matrix_and_names_rejected_objects() {
    let (code, out, err) = vswitchctl(&[
        "policy",
        "simulate",
        "--manifests",
        "vswitch/tests/fixtures/mixed",
        "--port",
        "80",
        "--color",
        "never",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("NetworkPolicy default/bad-cidr: spec.ingress[0].from[0].ipBlock.cidr"),
        "{err}"
    );
    assert!(
        err.contains("NetworkPolicy other/typo: spec.podSelectr: unknown field"),
        "{err}"
    );
    assert!(
        out.contains("3 namespaces, 5 pods, 1 policies loaded; 2 objects rejected"),
        "{out}"
    );
    // the good policy still works: only default/frontend reaches default/db
    let row = |name: &str| {
        out.lines()
            .find(|l| l.contains(name))
            .unwrap_or_default()
            .to_string()
    };
    let cells = |name: &str| {
        row(name)
            .split_whitespace()
            .skip(2)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // columns: 1 default/backend, 2 default/db, 3 default/frontend, 4 myproject/client, 5 other/frontend
    assert_eq!(cells("default/frontend")[1], ".", "{out}");
    assert_eq!(cells("default/backend")[1], "X", "{out}");
    assert_eq!(cells("other/frontend")[1], "X", "{out}");
    assert_eq!(cells("default/db")[0], ".", "{out}");
}

#[test]
fn policy_simulate_names_a_missing_folder() {
    let (code, _, err) = vswitchctl(&["policy", "simulate", "--manifests", "/nonexistent-folder"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent-folder"), "{err}");
}

#[test]
fn install_cni_puts_the_plugin_and_a_conflist_in_place() {
    let dir = std::env::temp_dir().join(format!("vswitchd-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let plugin = temp_file("fake-plugin", "#!/bin/sh\necho plugin\n");
    let out = Command::new(env!("CARGO_BIN_EXE_vswitchd"))
        .arg("install-cni")
        .arg("--plugin")
        .arg(&plugin)
        .arg("--bin-dir")
        .arg(dir.join("bin"))
        .arg("--conf-dir")
        .arg(dir.join("net.d"))
        .args([
            "--subnet",
            "10.244.3.0/24",
            "--subnet",
            "fd00:10:244:3::/64",
        ])
        .arg("--extra-plugin")
        .arg(temp_file("host-local", "#!/bin/sh\necho ipam\n"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin/vswitch-cni");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(&plugin).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let ipam = dir.join("bin/host-local");
    assert_eq!(
        std::fs::read_to_string(&ipam).unwrap(),
        "#!/bin/sh\necho ipam\n"
    );
    assert_eq!(
        std::fs::metadata(&ipam).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("net.d/10-vswitch.conflist")).unwrap())
            .unwrap();
    assert_eq!(conf["plugins"][0]["type"], "vswitch-cni");
    assert_eq!(conf["plugins"][0]["ipam"]["type"], "host-local");
    assert_eq!(
        conf["plugins"][0]["ipam"]["ranges"],
        serde_json::json!([[{"subnet": "10.244.3.0/24"}], [{"subnet": "fd00:10:244:3::/64"}]])
    );
    // written by rename: nothing half-written is left behind
    for d in ["bin", "net.d"] {
        let names: Vec<String> = std::fs::read_dir(dir.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }
    // without a subnet: one clear line, a failure
    let out = Command::new(env!("CARGO_BIN_EXE_vswitchd"))
        .args([
            "install-cni",
            "--bin-dir",
            "/nonexistent",
            "--conf-dir",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--subnet"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The demo's matrix after the policy, pod rows and columns: it must agree
/// with what `policy simulate` computes for the same folder and port.
fn demo_agrees_with_the_engine(pods: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_vswitchd"))
        .args(["demo", "--pods", pods, "--color", "never"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, simulated, _) = vswitchctl(&[
        "policy",
        "simulate",
        "--manifests",
        "deploy/examples/seed-db",
        "--port",
        "6379",
        "--color",
        "never",
    ]);
    // the rows of a matrix: label and cells, pods only (5 of them)
    let rows = |block: &str| -> Vec<String> {
        block
            .lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric) && l.contains('/'))
            .map(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                format!("{} {}", cells[1], cells[2..7].join(" "))
            })
            .collect()
    };
    let after = text
        .split("with test-network-policy")
        .nth(1)
        .expect("the matrix after the policy");
    let expected = rows(&simulated);
    assert_eq!(expected.len(), 5, "{simulated}");
    assert_eq!(rows(after)[..5], expected[..], "{text}");
    // before the policy everything passes
    let before = text.split("no policy").nth(1).unwrap();
    assert!(
        !rows(before.split("Applying").next().unwrap())
            .iter()
            .any(|r| r.contains('X')),
        "{text}"
    );
    let denied: u64 = text
        .lines()
        .find(|l| l.contains("denied by NetworkPolicy"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the policy_deny counter");
    assert!(denied > 0, "{text}");
}

#[test]
fn demo_in_process_shows_the_policy_at_work() {
    demo_agrees_with_the_engine("in-process");
}

#[test]
fn demo_with_network_namespaces_shows_the_policy_at_work_and_cleans_up() {
    if !is_root() {
        skip("the netns demo needs root");
        return;
    }
    let before = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap()
        .stdout;
    demo_agrees_with_the_engine("netns");
    let after = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap()
        .stdout;
    let count = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .filter(|l| l.starts_with("vs"))
            .count()
    };
    assert!(
        count(&after) <= count(&before),
        "the demo removed its namespaces"
    );
}
