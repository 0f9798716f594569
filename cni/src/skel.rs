//! The dispatcher: from the CNI_* environment and the configuration on
//! stdin to one verb of `plugin`, and its result or error on stdout.
//!
//! Everything the process would read from the world is a parameter (the
//! environment as a map, stdin as bytes, stdout as a writer, delegated
//! plugins behind `Exec`), so tests run every verb in process.
//!
//! Order, as the reference skel does it: CNI_COMMAND (missing or unknown:
//! code 4); VERSION answers at once; the variables the verb requires (code
//! 4, naming every missing one), the container ID and interface name (code
//! 4); the configuration (codes 6 and 7); the spec version (code 1: the
//! configuration's `cniVersion` must be one the plugin speaks, as it is the
//! version the runtime reads the answer in; without `cniVersion`, the highest
//! of `cniVersions` the plugin speaks; CHECK needs 0.4.0 and GC and STATUS
//! 1.1.0); then the verb. An error is printed as the spec's error JSON in the
//! configuration's version, and the exit code is 1.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{Value, json};

use crate::config::NetConf;
use crate::error::CniError;
use crate::exec::Exec;
use crate::proto::code;
use crate::{plugin, version};

/// The process environment, as a map.
pub type Env = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The variables the spec requires for the verb.
    fn required_env(self) -> &'static [&'static str] {
        match self {
            Command::Add => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
            Command::Gc => &["CNI_PATH"],
            Command::Status | Command::Version => &[],
        }
    }

    /// The first spec version that has the verb.
    fn since(self) -> &'static str {
        match self {
            Command::Check => "0.4.0",
            Command::Status | Command::Gc => "1.1.0",
            Command::Add | Command::Del | Command::Version => "0.1.0",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// One invocation, checked: what a verb works from.
pub struct Invocation<'a> {
    pub command: Command,
    /// The whole environment (passed on to delegated plugins).
    pub env: &'a Env,
    /// CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME; empty when not given.
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// CNI_ARGS as key/value pairs.
    pub args: Vec<(String, String)>,
    pub conf: NetConf,
    /// The spec version of this invocation (results are written in it).
    pub version: &'static str,
    pub exec: &'a dyn Exec,
}

impl Invocation<'_> {
    /// The value of `key` in CNI_ARGS.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Runs the verb CNI_COMMAND names and returns the process exit code.
pub fn dispatch(env: &Env, stdin: &[u8], stdout: &mut dyn Write, exec: &dyn Exec) -> i32 {
    // The error's cniVersion is the configuration's when it can be read.
    let mut reply_version = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| version::CURRENT.to_owned());
    let outcome = run(env, stdin, exec, &mut reply_version);
    let (text, exit) = match outcome {
        Ok(None) => return 0,
        Ok(Some(result)) => (result, 0),
        Err(e) => {
            eprintln!("vswitch-cni: {e}");
            (e.to_json(&reply_version), 1)
        }
    };
    let mut line = serde_json::to_vec(&text).unwrap_or_default();
    line.push(b'\n');
    if let Err(e) = stdout.write_all(&line).and_then(|()| stdout.flush()) {
        eprintln!("vswitch-cni: cannot write the result: {e}");
        return 1;
    }
    exit
}

fn run(
    env: &Env,
    stdin: &[u8],
    exec: &dyn Exec,
    reply_version: &mut String,
) -> Result<Option<Value>, CniError> {
    let get = |k: &str| env.get(k).map(String::as_str).unwrap_or_default();
    let command = match get("CNI_COMMAND") {
        "" => {
            return Err(CniError::new(
                code::INVALID_ENV,
                "required env variables [CNI_COMMAND] missing",
            ));
        }
        c => Command::parse(c).ok_or_else(|| {
            CniError::new(code::INVALID_ENV, format!("unknown CNI_COMMAND: {c:?}"))
                .with_details("one of ADD, DEL, CHECK, STATUS, GC, VERSION")
        })?,
    };
    if command == Command::Version {
        return Ok(Some(version_info(reply_version)));
    }
    let missing: Vec<&str> = command
        .required_env()
        .iter()
        .copied()
        .filter(|k| get(k).is_empty())
        .collect();
    if !missing.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("required env variables [{}] missing", missing.join(" ")),
        ));
    }
    if matches!(command, Command::Add | Command::Del | Command::Check) {
        validate_container_id(get("CNI_CONTAINERID"))?;
        validate_ifname(get("CNI_IFNAME"))?;
    }
    let args = parse_cni_args(get("CNI_ARGS"))?;
    let conf = NetConf::parse(stdin)?;
    let version = negotiate(&conf)?;
    *reply_version = version.to_owned();
    if !version::at_least(version, command.since()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version does not allow {}", command.name()),
        )
        .with_details(format!(
            "config is {version:?}, {} needs {}",
            command.name(),
            command.since()
        )));
    }
    let inv = Invocation {
        command,
        env,
        container_id: get("CNI_CONTAINERID").to_owned(),
        netns: get("CNI_NETNS").to_owned(),
        ifname: get("CNI_IFNAME").to_owned(),
        args,
        conf,
        version,
        exec,
    };
    match command {
        Command::Add => plugin::add(&inv).map(Some),
        Command::Del => plugin::del(&inv).map(|()| None),
        Command::Check => plugin::check(&inv).map(|()| None),
        Command::Status => plugin::status(&inv).map(|()| None),
        Command::Gc => plugin::gc(&inv).map(|()| None),
        Command::Version => Ok(Some(version_info(version))),
    }
}

/// The VERSION answer: the input's version (when the plugin speaks it) and
/// every version the plugin speaks.
fn version_info(input_version: &str) -> Value {
    let v = if version::is_supported(input_version) {
        input_version
    } else {
        version::CURRENT
    };
    json!({ "cniVersion": v, "supportedVersions": version::SUPPORTED })
}

/// The spec version of the invocation (see the module comment).
pub fn negotiate(conf: &NetConf) -> Result<&'static str, CniError> {
    let incompatible = |details: String| {
        CniError::new(code::INCOMPATIBLE_VERSION, "incompatible CNI versions").with_details(details)
    };
    match (&conf.cni_version, &conf.cni_versions) {
        (Some(v), _) => version::SUPPORTED
            .iter()
            .find(|s| **s == v)
            .copied()
            .ok_or_else(|| {
                incompatible(format!(
                    "config is {v:?}, plugin supports {:?}",
                    version::SUPPORTED
                ))
            }),
        (None, Some(list)) => version::highest_common(list).ok_or_else(|| {
            incompatible(format!(
                "config lists {list:?}, plugin supports {:?}",
                version::SUPPORTED
            ))
        }),
        (None, None) => Err(incompatible(format!(
            "config has no cniVersion, plugin supports {:?}",
            version::SUPPORTED
        ))),
    }
}

/// CNI_ARGS: "K=V;K=V" (empty: none).
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_ARGS: invalid pair {pair:?}"),
            )
            .with_details("CNI_ARGS is KEY=VALUE pairs separated by ';'")),
        })
        .collect()
}

/// The spec: not empty, an alphanumeric first, then alphanumerics, '_',
/// '.' or '-'.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(
            CniError::new(code::INVALID_ENV, "invalid characters in CNI_CONTAINERID")
                .with_details(id),
        )
    }
}

/// The spec: the kernel's rules for interface names.
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.len() >= 16 {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("not a name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(CniError::new(
            code::INVALID_ENV,
            format!("invalid CNI_IFNAME {name:?}: {why}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args() {
        let a = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p=1").unwrap();
        assert_eq!(a[1], ("K8S_POD_NAMESPACE".into(), "ns".into()));
        assert_eq!(a[2], ("K8S_POD_NAME".into(), "p=1".into()));
        assert!(parse_cni_args("").unwrap().is_empty());
        assert_eq!(
            parse_cni_args("A=1;junk").unwrap_err().code,
            code::INVALID_ENV
        );
        assert_eq!(parse_cni_args("=1").unwrap_err().code, code::INVALID_ENV);
    }

    #[test]
    fn container_ids_and_ifnames() {
        assert!(validate_container_id("3f69_ab.c-d").is_ok());
        assert!(validate_container_id("-x").is_err());
        assert!(validate_container_id("a b").is_err());
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("0123456789abcdef").is_err());
        assert!(validate_ifname("..").is_err());
        assert!(validate_ifname("a:b").is_err());
    }

    #[test]
    fn negotiation() {
        let conf = |s: &str| NetConf::parse(s.as_bytes()).unwrap();
        let n = |s: &str| negotiate(&conf(s));
        assert_eq!(
            n(r#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#),
            Ok("0.4.0")
        );
        assert_eq!(
            n(r#"{"cniVersions":["0.4.0","1.1.0","9.0.0"],"name":"n","type":"t"}"#),
            Ok("1.1.0")
        );
        // The runtime's choice wins: it reads the result in that version.
        assert_eq!(
            n(r#"{"cniVersion":"1.0.0","cniVersions":["1.0.0","1.1.0"],"name":"n","type":"t"}"#),
            Ok("1.0.0")
        );
        let e = n(r#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert_eq!(e.msg, "incompatible CNI versions");
        assert!(
            e.details
                .starts_with("config is \"0.2.0\", plugin supports"),
            "{}",
            e.details
        );
        assert!(n(r#"{"name":"n","type":"t"}"#).is_err());
        assert!(n(r#"{"cniVersions":["2.0.0"],"name":"n","type":"t"}"#).is_err());
    }
}
