//! `vswitchd install-cni`: puts the plugin binary and a network
//! configuration list where the container runtime looks for them (run by the
//! DaemonSet's init container on every node). Both are written to a
//! temporary file in the destination folder and renamed into place, so a
//! runtime never reads half a file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub struct InstallOptions {
    pub plugin: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub network: String,
    pub socket: PathBuf,
    /// The pods' MTU; `None`: left to vswitchd (its `--mtu`, which knows
    /// the overlay's overhead).
    pub mtu: Option<u32>,
    /// The pod subnet(s) for host-local IPAM (the node's pod CIDRs).
    pub subnets: Vec<ipnet::IpNet>,
    pub conf_name: String,
    /// Other plugins to copy beside vswitch-cni (IPAM, chained plugins).
    pub extra_plugins: Vec<PathBuf>,
}

fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let dir = path.parent().ok_or("no folder")?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    let r = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    r.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}

/// The conflist: vswitch with host-local IPAM over the node's pod subnets,
/// then the reference `portmap` plugin for hostPort support.
pub fn conflist(o: &InstallOptions) -> serde_json::Value {
    let ranges: Vec<serde_json::Value> = o
        .subnets
        .iter()
        .map(|s| serde_json::json!([{ "subnet": s.trunc().to_string() }]))
        .collect();
    let mut plugin = serde_json::json!({
        "type": "vswitch-cni",
        "socket": o.socket,
        "ipam": {
            "type": "host-local",
            "ranges": ranges,
            "dataDir": "/var/lib/cni/vswitch-ipam",
        }
    });
    if let Some(mtu) = o.mtu {
        plugin["mtu"] = mtu.into();
    }
    serde_json::json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": o.network,
        "plugins": [
            plugin,
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
}

pub fn install(o: &InstallOptions) -> Result<Vec<PathBuf>, String> {
    if o.subnets.is_empty() {
        return Err("--subnet: at least one pod subnet is needed for IPAM".into());
    }
    let bin = fs::read(&o.plugin).map_err(|e| format!("plugin {}: {e}", o.plugin.display()))?;
    fs::create_dir_all(&o.bin_dir).map_err(|e| format!("{}: {e}", o.bin_dir.display()))?;
    fs::create_dir_all(&o.conf_dir).map_err(|e| format!("{}: {e}", o.conf_dir.display()))?;
    let bin_path = o.bin_dir.join("vswitch-cni");
    atomic_write(&bin_path, &bin, 0o755)?;
    let mut written = vec![bin_path];
    for extra in &o.extra_plugins {
        let name = extra
            .file_name()
            .ok_or_else(|| format!("--extra-plugin {}: not a file", extra.display()))?;
        let bytes = fs::read(extra).map_err(|e| format!("{}: {e}", extra.display()))?;
        let to = o.bin_dir.join(name);
        atomic_write(&to, &bytes, 0o755)?;
        written.push(to);
    }
    let conf_path = o.conf_dir.join(&o.conf_name);
    let text = serde_json::to_string_pretty(&conflist(o)).expect("json");
    atomic_write(&conf_path, text.as_bytes(), 0o644)?;
    written.push(conf_path);
    Ok(written)
}
