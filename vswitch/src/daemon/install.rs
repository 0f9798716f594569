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

/// Why `install-cni` failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("--subnet: at least one pod subnet is needed for IPAM")]
    NoSubnet,
    #[error("plugin {}: {source}", path.display())]
    ReadPlugin {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--extra-plugin {}: not a file", .0.display())]
    ExtraNotAFile(PathBuf),
    #[error("{}: {source}", path.display())]
    ReadExtra {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    CreateFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no folder", .0.display())]
    NoFolder(PathBuf),
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path
        .parent()
        .ok_or_else(|| InstallError::NoFolder(path.to_path_buf()))?;
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
    r.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        InstallError::Write {
            path: path.to_path_buf(),
            source,
        }
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

pub fn install(o: &InstallOptions) -> Result<Vec<PathBuf>, InstallError> {
    if o.subnets.is_empty() {
        return Err(InstallError::NoSubnet);
    }
    let bin = fs::read(&o.plugin).map_err(|source| InstallError::ReadPlugin {
        path: o.plugin.clone(),
        source,
    })?;
    for dir in [&o.bin_dir, &o.conf_dir] {
        fs::create_dir_all(dir).map_err(|source| InstallError::CreateFolder {
            path: dir.clone(),
            source,
        })?;
    }
    let bin_path = o.bin_dir.join("vswitch-cni");
    atomic_write(&bin_path, &bin, 0o755)?;
    let mut written = vec![bin_path];
    for extra in &o.extra_plugins {
        let name = extra
            .file_name()
            .ok_or_else(|| InstallError::ExtraNotAFile(extra.clone()))?;
        let bytes = fs::read(extra).map_err(|source| InstallError::ReadExtra {
            path: extra.clone(),
            source,
        })?;
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
