//! A real container runtime: podman (with its CNI backend and runc) starts
//! containers on a vswitch network through the vswitch-cni plugin. Two
//! containers talk, a NetworkPolicy from vswitchd's manifest folder blocks
//! them, and removing a container frees its port and its address.
//!
//! Needs root and podman, runc, busybox-static and containernetworking-plugins
//! (`.ci/run` installs them); otherwise `SKIPPED: reason` (a failure under
//! `CI=true`). Podman keeps its state under this test's temporary folder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{is_root, skip};

fn missing_prerequisite() -> Option<String> {
    if !is_root() {
        return Some("podman with CNI networks needs root".into());
    }
    for p in [
        "/usr/bin/podman",
        "/usr/sbin/runc",
        "/bin/busybox",
        "/usr/lib/cni/host-local",
    ] {
        if !Path::new(p).exists() {
            return Some(format!(
                "{p} is missing (apt-get install podman runc busybox-static containernetworking-plugins)"
            ));
        }
    }
    None
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Setup {
    dir: PathBuf,
    node: String,
    daemon: Child,
    names: Vec<String>,
}

impl Setup {
    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--cgroup-manager=cgroupfs", "--runtime", "/usr/sbin/runc"]);
        c
    }

    fn run_args(&self, name: &str) -> Vec<String> {
        [
            "run",
            "--name",
            name,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--network",
            "vsw",
            "--rootfs",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([self.dir.join("rootfs").display().to_string()])
        .collect()
    }

    /// A client container that fetches from `ip`:8080 (2 s at most).
    fn fetch(&mut self, name: &str, ip: &str) -> Output {
        self.names.push(name.to_string());
        let mut args = self.run_args(name);
        args.insert(1, "--rm".into());
        self.podman()
            .args(&args)
            .args(["/bin/nc", "-w", "2", ip, "8080"])
            .output()
            .expect("podman run")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vswitchd.log")).unwrap_or_default()
    }

    fn wait_log(&self, what: &str, count: usize) {
        let t0 = Instant::now();
        while self.log().matches(what).count() < count {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no {what:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = self
                .podman()
                .args(["rm", "-f", "-t", "0", n])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.node])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn podman_containers_talk_until_a_policy_blocks_them_and_removal_frees_the_port() {
    if let Some(why) = missing_prerequisite() {
        skip(&why);
        return;
    }
    let tag = format!("pm{}", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("vswitch-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    for d in [
        "rootfs/bin",
        "rootfs/proc",
        "rootfs/sys",
        "rootfs/dev",
        "rootfs/etc",
        "rootfs/tmp",
        "net",
        "manifests",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("rootfs/bin/busybox")).unwrap();
    for c in ["sh", "nc", "echo", "sleep", "ip"] {
        std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(c)).unwrap();
    }
    let plugin_dir = Path::new(env!("CARGO_BIN_EXE_vswitchd")).parent().unwrap();
    assert!(
        plugin_dir.join("vswitch-cni").exists(),
        "build the plugin first (cargo test --workspace builds it)"
    );
    std::fs::write(
        dir.join("containers.conf"),
        format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{}\"\n",
            plugin_dir.display(),
            dir.join("net").display()
        ),
    )
    .unwrap();
    let socket = dir.join("vswitchd.sock");
    std::fs::write(
        dir.join("net/vsw.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "vsw",
            "plugins": [{
                "type": "vswitch-cni",
                "socket": socket,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.join("ipam"),
                    "ranges": [[{ "subnet": "10.87.0.0/24" }]],
                },
            }],
        })
        .to_string(),
    )
    .unwrap();
    let web = format!("web-{tag}");
    std::fs::write(
        dir.join("manifests/cluster.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {web}\n  namespace: default\n  labels: {{app: web}}\nspec:\n  containers: [{{name: c, image: x}}]\n"
        ),
    )
    .unwrap();
    // vswitchd in a namespace of its own playing the node
    let node = format!("{tag}-node");
    ok(Command::new("ip").args(["netns", "add", &node]));
    let log = std::fs::File::create(dir.join("vswitchd.log")).unwrap();
    let daemon = Command::new("ip")
        .args(["netns", "exec", &node])
        .arg(env!("CARGO_BIN_EXE_vswitchd"))
        .arg("run")
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--manifests")
        .arg(dir.join("manifests"))
        .stderr(log)
        .spawn()
        .unwrap();
    let mut s = Setup {
        dir: dir.clone(),
        node,
        daemon,
        names: vec![web.clone()],
    };
    s.wait_log("ready", 1);

    // the server container, detached
    let mut args = s.run_args(&web);
    args.insert(1, "-d".into());
    ok(s.podman().args(&args).args([
        "/bin/sh",
        "-c",
        "while true; do echo hello | nc -l -p 8080; done",
    ]));
    let ip = ok(s.podman().args([
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.vsw.IPAddress}}",
        &web,
    ]));
    assert!(
        ip.starts_with("10.87.0."),
        "the container's address: {ip:?}"
    );
    assert!(
        s.log().contains(&format!("attached default/{web}")),
        "{}",
        s.log()
    );
    let state_files = || std::fs::read_dir(dir.join("state/attachments")).map_or(0, |d| d.count());
    assert_eq!(state_files(), 1);
    // a client container reaches it
    let out = s.fetch(&format!("client1-{tag}"), &ip);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello",
        "client -> web: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // a policy isolates web's ingress
    std::fs::write(
        dir.join("manifests/deny.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-web\n  namespace: default\nspec:\n  podSelector:\n    matchLabels: {app: web}\n  policyTypes: [Ingress]\n",
    )
    .unwrap();
    s.wait_log("desired cluster updated", 1);
    let out = s.fetch(&format!("client2-{tag}"), &ip);
    assert_ne!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello",
        "the policy blocks client -> web"
    );
    // without the policy it answers again: the denial was the policy's
    std::fs::remove_file(dir.join("manifests/deny.yaml")).unwrap();
    s.wait_log("desired cluster updated", 2);
    let out = s.fetch(&format!("client3-{tag}"), &ip);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
    // removing the container frees its port and its address
    ok(s.podman().args(["rm", "-f", "-t", "0", &web]));
    assert!(
        !dir.join("ipam/vsw").join(&ip).exists(),
        "host-local's lease on {ip} is freed"
    );
    assert_eq!(state_files(), 0, "no attachment is left");
    s.wait_log(&format!("detached default/{web}"), 1);
}
