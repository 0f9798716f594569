//! Delegation to the IPAM plugin named in `ipam.type` (spec section 4).
//!
//! A call goes out in the runtime's version first. Only when the plugin
//! refuses it (code 1, incompatible version) is it asked which versions it
//! speaks (VERSION), and the call repeated in the highest version both
//! speak (host-local of containernetworking-plugins 1.1.1 stops at 1.0.0, so
//! a 1.1.0 configuration reaches it as 1.0.0). Asking first would cost one
//! more process per attach, the largest part of the plugin's own time. The
//! plugin is given the network configuration with that cniVersion (and
//! `prevResult` rewritten in that version), the caller's environment with
//! CNI_COMMAND set, and its result is read back whatever its version.
//!
//! GC and STATUS are 1.1.0 verbs: they are delegated only when the plugin
//! speaks 1.1.0; `Delegate::speaks_1_1` tells the caller, which falls back
//! (GC: DEL of each removed attachment; STATUS: nothing to ask).

use serde_json::{Value, json};

use crate::config::{NetConf, VALID_ATTACHMENTS};
use crate::error::{CniError, code as plugin_code};
use crate::exec::Exec;
use crate::proto::code;
use crate::result::CniResult;
use crate::skel::Env;
use crate::version;

/// One IPAM plugin, as this invocation sees it.
pub struct Delegate<'a> {
    exec: &'a dyn Exec,
    plugin: &'a str,
    env: &'a Env,
    conf: &'a NetConf,
    /// The version this plugin was invoked with.
    ours: &'a str,
    /// What the IPAM plugin answered to VERSION, once it was asked.
    theirs: std::cell::OnceCell<Vec<String>>,
}

impl<'a> Delegate<'a> {
    /// The IPAM plugin `plugin`; `env` is this invocation's.
    pub fn probe(
        exec: &'a dyn Exec,
        plugin: &'a str,
        env: &'a Env,
        conf: &'a NetConf,
        ours: &'a str,
    ) -> Result<Delegate<'a>, CniError> {
        if env.get("CNI_PATH").is_none_or(|p| p.is_empty()) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_PATH is required to run the IPAM plugin {plugin:?}"),
            ));
        }
        Ok(Delegate {
            exec,
            plugin,
            env,
            conf,
            ours,
            theirs: std::cell::OnceCell::new(),
        })
    }

    /// Asks the plugin for its versions (once).
    fn theirs(&self) -> Result<&[String], CniError> {
        if let Some(v) = self.theirs.get() {
            return Ok(v);
        }
        let plugin = self.plugin;
        let stdin = serde_json::to_vec(&json!({ "cniVersion": self.ours })).unwrap_or_default();
        let out = self.run("VERSION", &[], &stdin)?;
        let answer: Value = serde_json::from_slice(&out).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                format!("cannot decode the VERSION answer of the IPAM plugin {plugin:?}: {e}"),
            )
        })?;
        let versions = answer
            .get("supportedVersions")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                CniError::new(
                    code::DECODING_FAILURE,
                    format!(
                        "the IPAM plugin {plugin:?} answered VERSION without supportedVersions"
                    ),
                )
            })?;
        let list = versions
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        Ok(self.theirs.get_or_init(|| list))
    }

    /// The version the IPAM plugin is spoken to in: ours until it refused
    /// it, then the highest both speak.
    fn version(&self) -> Result<&str, CniError> {
        let Some(theirs) = self.theirs.get() else {
            return Ok(self.ours);
        };
        if theirs.iter().any(|v| v == self.ours) {
            return Ok(self.ours);
        }
        version::highest_common(theirs).ok_or_else(|| {
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "the IPAM plugin {:?} speaks no spec version this plugin speaks",
                    self.plugin
                ),
            )
            .with_details(format!(
                "IPAM plugin supports {:?}, vswitch-cni supports {:?}",
                theirs,
                version::SUPPORTED
            ))
        })
    }

    /// Whether the plugin knows the 1.1.0 verbs (GC, STATUS).
    pub fn speaks_1_1(&self) -> bool {
        self.theirs().is_ok() && self.version().is_ok_and(|v| version::at_least(v, "1.1.0"))
    }

    /// IPAM ADD: the addresses, routes and DNS for the new interface.
    pub fn add(&self) -> Result<CniResult, CniError> {
        let out = self.call("ADD", &[])?;
        let what = format!("the IPAM plugin {:?}", self.plugin);
        let value: Value = serde_json::from_slice(&out).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                format!("cannot decode the result of {what}: {e}"),
            )
        })?;
        let (_, mut result) = CniResult::parse(&value, &what)?;
        if result.ips.is_empty() {
            return Err(CniError::new(
                plugin_code::INTERNAL,
                format!("{what} returned no IP address"),
            ));
        }
        // IPAM plugins know nothing of interfaces.
        result.interfaces.clear();
        for ip in &mut result.ips {
            ip.interface = None;
        }
        Ok(result)
    }

    /// IPAM DEL, for this invocation's attachment or, with `attachment`
    /// (container ID, interface name, netns), for another one.
    pub fn del(&self, attachment: Option<(&str, &str, &str)>) -> Result<(), CniError> {
        let overrides = match attachment {
            None => vec![],
            Some((cid, ifname, netns)) => {
                vec![
                    ("CNI_CONTAINERID", cid),
                    ("CNI_IFNAME", ifname),
                    ("CNI_NETNS", netns),
                ]
            }
        };
        self.call("DEL", &overrides).map(drop)
    }

    pub fn check(&self) -> Result<(), CniError> {
        self.call("CHECK", &[]).map(drop)
    }

    /// IPAM GC with this invocation's valid attachments (1.1.0 plugins).
    pub fn gc(&self) -> Result<(), CniError> {
        self.call("GC", &[]).map(drop)
    }

    /// IPAM STATUS (1.1.0 plugins).
    pub fn status(&self) -> Result<(), CniError> {
        self.call("STATUS", &[]).map(drop)
    }

    /// Runs `command` in our version, and again in a version the plugin
    /// speaks if it refused ours.
    fn call(&self, command: &str, overrides: &[(&str, &str)]) -> Result<Vec<u8>, CniError> {
        match self.call_in(command, overrides) {
            Err(e) if e.code == code::INCOMPATIBLE_VERSION && self.theirs.get().is_none() => {
                self.theirs()?;
                self.call_in(command, overrides)
            }
            r => r,
        }
    }

    /// Runs `command` with the configuration rewritten for the plugin.
    fn call_in(&self, command: &str, overrides: &[(&str, &str)]) -> Result<Vec<u8>, CniError> {
        let ipam_version = self.version()?;
        let mut conf = self.conf.raw.clone();
        conf.insert("cniVersion".into(), json!(ipam_version));
        conf.remove("cniVersions");
        if command != "GC" {
            for key in VALID_ATTACHMENTS {
                conf.remove(*key);
            }
        }
        // prevResult in the plugin's version. One this plugin cannot read
        // (ADD and CHECK have refused it already) is passed on as it is, so
        // that DEL still releases the addresses.
        if let Some(prev) = &self.conf.prev_result
            && let Ok((_, prev)) = CniResult::parse(prev, "prevResult")
        {
            conf.insert("prevResult".into(), prev.to_json(ipam_version));
        }
        let stdin = serde_json::to_vec(&Value::Object(conf)).unwrap_or_default();
        self.run(command, overrides, &stdin)
    }

    fn run(
        &self,
        command: &str,
        overrides: &[(&str, &str)],
        stdin: &[u8],
    ) -> Result<Vec<u8>, CniError> {
        let mut env = self.env.clone();
        env.insert("CNI_COMMAND".into(), command.into());
        for (k, v) in overrides {
            env.insert((*k).into(), (*v).into());
        }
        self.exec
            .exec_plugin(self.plugin, &env, stdin)
            .map_err(|mut e| {
                e.msg = format!("IPAM plugin {:?} {command}: {}", self.plugin, e.msg);
                e
            })
    }
}
