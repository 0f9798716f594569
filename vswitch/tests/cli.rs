//! vswitchctl as a user runs it: exit codes, the closing line, and bad
//! input that is reported without stopping the rest.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
        "ingress.yaml",
        "name: ingress\nsteps:\n  - do:\n      - apply: {apiVersion: networking.k8s.io/v1, kind: Ingress, metadata: {name: a, namespace: x}, spec: {}}\n    expect: []\n",
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
    // a file that cannot be run: one line, the file once, the field and
    // what is wrong, no name or pair count it does not have
    let invalid_name = invalid.to_str().unwrap();
    let line = out
        .lines()
        .find(|l| l.contains(invalid_name))
        .unwrap_or_default();
    assert!(
        line.starts_with(&format!(
            "FAIL {invalid_name}: steps[0].expect[0].default: unknown variant"
        )),
        "{out}"
    );
    assert_eq!(out.matches(invalid_name).count(), 1, "{out}");
    assert!(
        !out.contains("(?:") && !out.contains(": 0 pairs probed"),
        "{out}"
    );
    assert!(
        out.contains("networking.k8s.io/v1 Ingress is not supported"),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("1 passed, 3 failed"), "{out}");
}

/// Files run at once report exactly what files run one by one report, in
/// the files' order (one failing file among them).
#[test]
fn scenario_run_with_jobs_prints_the_same_reports_in_order() {
    let wrong = temp_file(
        "wrong-jobs.yaml",
        "name: wrong\nsteps:\n  - expect:\n      - probe: {port: 80, protocol: TCP}\n        default: allow\n        except: [\"x/a -> y/b\"]\n",
    );
    let run = |jobs: &str| {
        vswitchctl(&[
            "scenario",
            "run",
            "--mode",
            "dataplane",
            "--jobs",
            jobs,
            "tests/netpol",
            wrong.to_str().unwrap(),
        ])
    };
    let (one, many) = (run("1"), run("4"));
    assert_eq!(one.0, 1, "{}", one.1);
    assert_eq!(many, one);
    // the folder's files in name order, then the file given after it
    let files: Vec<&str> = many
        .1
        .lines()
        .filter(|l| l.starts_with("PASS ") || l.starts_with("FAIL "))
        .filter_map(|l| l.split([' ', ':']).nth(1))
        .collect();
    let (last, folder) = files.split_last().unwrap();
    assert_eq!(*last, wrong.to_str().unwrap(), "{}", many.1);
    assert!(folder.len() > 40, "{}", many.1);
    assert!(
        folder.is_sorted(),
        "reports in the files' order:\n{}",
        many.1
    );
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
    // rejected objects: the matrix of the rest, then a failure that says so
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.lines().last(),
        Some(
            "vswitchctl: 2 objects rejected and left out of the simulation (see above); \
             fix them for a matrix of every object"
        ),
        "{err}"
    );
    assert!(
        err.contains("NetworkPolicy default/bad-cidr: spec.ingress[0].from[0].ipBlock.cidr"),
        "{err}"
    );
    assert!(
        err.contains("NetworkPolicy other/typo: spec.podSelectr: unknown field"),
        "{err}"
    );
    assert!(
        out.contains(
            "3 namespaces, 5 pods, 1 policies, 0 admin policies loaded; 2 objects rejected"
        ),
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

#[test]
fn policy_simulate_exits_zero_when_every_object_loads() {
    let (code, out, err) = vswitchctl(&[
        "policy",
        "simulate",
        "--manifests",
        "deploy/examples/seed-db",
        "--color",
        "never",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 objects rejected"), "{out}");
    assert!(!err.contains("rejected"), "{err}");
}

#[test]
fn policy_simulate_refuses_ports_that_are_not_ports() {
    for port in ["70000", "0", "65536"] {
        let (code, out, err) = vswitchctl(&[
            "policy",
            "simulate",
            "--manifests",
            "deploy/examples/seed-db",
            "--port",
            port,
        ]);
        assert_eq!(code, 2, "--port {port}: {out}{err}");
        assert_eq!(
            err.trim(),
            format!(
                "vswitchctl: --port {port}: must be a number between 1 and 65535, or a container port's name"
            ),
            "{err}"
        );
        assert!(out.is_empty(), "{out}");
    }
    // a name no pod has: said so, with the names there are
    let (code, out, err) = vswitchctl(&[
        "policy",
        "simulate",
        "--manifests",
        "deploy/examples/seed-db",
        "--port",
        "redi",
    ]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("--port redi: no container port of any pod is named \"redi\" for TCP")
            && err.contains("redis (TCP)"),
        "{err}"
    );
    assert!(!out.contains("Reachability"), "{out}");
    // a name that exists still works
    let (code, out, err) = vswitchctl(&[
        "policy",
        "simulate",
        "--manifests",
        "deploy/examples/seed-db",
        "--port",
        "redis",
        "--color",
        "never",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Reachability redis/TCP"), "{out}");
}

#[test]
fn explain_refuses_a_port_or_protocol_that_is_not_one() {
    for port in ["70000/TCP", "0/TCP", "80/TCPX", "http/TCP", "80/"] {
        let (code, _, err) = vswitchctl(&[
            "explain",
            "--socket",
            "/nonexistent/vswitch.sock",
            "default/a",
            "default/b",
            port,
        ]);
        assert_eq!(code, 2, "{port}: {err}");
        assert_eq!(
            err.trim(),
            format!(
                "vswitchctl: explain: {port:?}: expected PORT/PROTOCOL, for example 80/TCP (PORT 1-65535; TCP, UDP or SCTP)"
            ),
            "{err}"
        );
    }
}

#[test]
fn scenario_run_refuses_a_probe_port_out_of_range() {
    let f = temp_file(
        "port-range.yaml",
        "name: range\nsteps:\n  - expect:\n      - probe: {port: 70000, protocol: TCP}\n        default: allow\n",
    );
    let (code, out, _) = vswitchctl(&["scenario", "run", f.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("steps[0].expect[0].probe.port: 70000: must be a number between 1 and 65535"),
        "{out}"
    );
}

/// Runs a command with stdout a pipe whose reader is closed at once: no
/// panic (status 101, "Broken pipe"), the command's own status.
fn with_stdout_closed(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(bin)
        .args(args)
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_command_panics_when_stdout_is_closed() {
    let d = env!("CARGO_BIN_EXE_vswitchd");
    let c = env!("CARGO_BIN_EXE_vswitchctl");
    let seed = ["--manifests", "deploy/examples/seed-db"];
    let cases: Vec<(&str, Vec<&str>, i32)> = vec![
        (
            d,
            vec!["demo", "--pods", "in-process", "--color", "never"],
            0,
        ),
        (d, vec!["--help"], 0),
        (c, vec!["--help"], 0),
        (c, [&["policy", "simulate"][..], &seed].concat(), 0),
        (c, vec!["scenario", "run", "tests/netpol"], 0),
        (
            c,
            vec![
                "scenario",
                "run",
                "tests/netpol/01-no-policies-allow-all.yaml",
                "/nonexistent.yaml",
            ],
            1,
        ),
    ];
    for (bin, args, status) in cases {
        let (code, err) = with_stdout_closed(bin, &args);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        assert_eq!(code, Some(status), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: nothing on stderr: {err}");
    }
}

#[test]
fn the_daemon_does_not_panic_when_its_log_pipe_is_closed() {
    // `vswitchd run 2>&1 | head -0`: every log line fails to be written
    let dir = std::env::temp_dir().join(format!("vswitchd-closed-{}", std::process::id()));
    let socket = dir.join("vswitch.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vswitchd"))
        .args(["run", "--no-node-port", "--manifests"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/seed-db"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    let start = Instant::now();
    while !socket.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // "ready" is logged just after the socket appears
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// `vswitchd demo`, interrupted by SIGINT once it has said how it makes
/// its pods (its signal handlers are in place by then) and `delay` later:
/// the status, stdout and stderr, and how long it took to stop.
fn interrupted_demo(
    pods: &str,
    extra: &[&str],
    delay: Duration,
) -> (Option<i32>, String, String, u32, Duration) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vswitchd"))
        .args(["demo", "--pods", pods, "--color", "never"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    stdout.read_line(&mut text).unwrap();
    assert!(text.starts_with("pods:"), "{text}");
    std::thread::sleep(delay);
    let sent = Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    text.push_str(&rest);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        text,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        pid,
        sent.elapsed(),
    )
}

#[test]
fn ctrl_c_stops_the_in_process_demo_and_says_so() {
    // paused after each step, so that SIGINT arrives mid-run
    let (code, out, err, _, took) = interrupted_demo(
        "in-process",
        &["--pause-ms", "3000"],
        Duration::from_millis(100),
    );
    assert_eq!(code, Some(130), "{out}{err}");
    assert_eq!(
        err.trim(),
        "vswitchd demo: interrupted; stopped the in-process pods (nothing on the host to remove)",
        "{err}"
    );
    assert!(!out.contains("with test-network-policy"), "{out}");
    assert!(took < Duration::from_secs(2), "stopped at once: {took:?}");
}

#[test]
fn ctrl_c_stops_the_netns_demo_and_removes_its_namespaces_and_taps() {
    if !is_root() {
        skip("the netns demo needs root");
        return;
    }
    let (code, out, err, pid, took) = interrupted_demo("netns", &[], Duration::from_millis(300));
    assert_eq!(code, Some(130), "{out}{err}");
    assert_eq!(
        err.trim(),
        "vswitchd demo: interrupted; removed the demo's network namespaces and TAP devices",
        "{err}"
    );
    assert!(!out.contains("with test-network-policy"), "{out}");
    assert!(took < Duration::from_secs(4), "stopped soon: {took:?}");
    // the demo's names carry its process id: vs<pid>-<run>, v<pid>x<run>
    let listing = |args: &[&str]| {
        String::from_utf8_lossy(&Command::new("ip").args(args).output().unwrap().stdout)
            .into_owned()
    };
    let ns = listing(&["netns", "list"]);
    let netns_prefix = format!("vs{}-", pid % 100_000);
    assert!(
        !ns.lines().any(|l| l.starts_with(&netns_prefix)),
        "namespaces left: {ns}"
    );
    let links = listing(&["-o", "link"]);
    let tap_prefix = format!(" v{}x", pid % 100_000);
    assert!(!links.contains(&tap_prefix), "TAP devices left: {links}");
}

#[test]
fn the_demo_names_every_counted_outcome_and_explains_its_matrices() {
    let out = Command::new(env!("CARGO_BIN_EXE_vswitchd"))
        .args(["demo", "--pods", "in-process", "--color", "never"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("other outcomes"), "{text}");
    // one legend under each matrix, with the symbol of the diagonal
    let legend = "  . allowed   X denied   - not probed (a pod to itself, or between two hosts outside the cluster)";
    assert_eq!(text.lines().filter(|l| *l == legend).count(), 2, "{text}");
    // every counter line but the total names its outcome
    let counters = text.split("Datapath counters").nth(1).expect("counters");
    for l in counters
        .lines()
        .skip(1)
        .filter(|l| !l.contains("frames in all"))
    {
        let words: Vec<&str> = l.split_whitespace().collect();
        assert!(words.len() > 2, "{l}");
        assert!(
            words[1].chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{l}"
        );
    }
}

#[test]
fn logs_into_a_pipe_carry_no_colour_codes() {
    // a daemon without node port: it logs "ready" on stderr (a pipe), then
    // stops at SIGINT and logs that too
    let dir = std::env::temp_dir().join(format!("vswitchd-log-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_vswitchd"))
        .args(["run", "--no-node-port", "--manifests"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/seed-db"))
        .arg("--socket")
        .arg(dir.join("vswitch.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    while !log.contains("ready") {
        if stderr.read_line(&mut log).unwrap() == 0 {
            break;
        }
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(log.contains("INFO") && log.contains("ready"), "{log}");
    assert!(!log.contains("\x1b["), "{log:?}");
}

/// Every option, argument and subcommand listed by `bin ... -h`, and
/// whether each has a help line, walking the subcommands.
fn undocumented(bin: &str, path: &mut Vec<String>, missing: &mut Vec<String>) {
    let out = Command::new(bin).args(&*path).arg("-h").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{bin} {path:?} -h: {text}");
    let mut section = "";
    let mut subcommands = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line.trim_end_matches(':');
            continue;
        }
        if !matches!(section, "Options" | "Arguments" | "Commands") || !line.starts_with("  ") {
            continue;
        }
        let body = line.trim_start();
        let indent = line.len() - body.len();
        if indent > 6 {
            continue; // a continuation line
        }
        let (name, help) = body.split_once("  ").unwrap_or((body, ""));
        // the help may wrap onto lines indented further
        let mut help = help.to_string();
        for next in &lines[i + 1..] {
            let b = next.trim_start();
            if b.is_empty() || next.len() - b.len() <= 6 {
                break;
            }
            help.push(' ');
            help.push_str(b);
        }
        // what clap adds by itself is no help: [default: ..], [possible values: ..]
        let mut said = String::new();
        let mut depth = 0;
        for c in help.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                c if depth == 0 => said.push(c),
                _ => {}
            }
        }
        if said.trim().is_empty() {
            missing.push(format!("{bin} {} {name}", path.join(" ")));
        }
        if section == "Commands" && name != "help" {
            subcommands.push(name.to_string());
        }
    }
    for sub in subcommands {
        path.push(sub);
        undocumented(bin, path, missing);
        path.pop();
    }
}

#[test]
fn every_option_of_both_binaries_has_help() {
    let mut missing = Vec::new();
    for bin in [
        env!("CARGO_BIN_EXE_vswitchd"),
        env!("CARGO_BIN_EXE_vswitchctl"),
    ] {
        undocumented(bin, &mut Vec::new(), &mut missing);
    }
    assert!(missing.is_empty(), "no help: {missing:#?}");
    // the walk reaches the leaves
    let out = Command::new(env!("CARGO_BIN_EXE_vswitchd"))
        .args(["install-cni", "-h"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--bin-dir"));
}
