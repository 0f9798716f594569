//! Running a delegated plugin (the IPAM plugin): the `Exec` seam, and the
//! real implementation that finds the executable in `CNI_PATH` and runs it.
//!
//! The plugin runs with exactly the environment it is given (the caller's
//! environment with the CNI_* variables of the delegated call) and the
//! configuration on stdin; its stdout is the result or, on a non-zero exit,
//! the spec's error JSON, which is passed on as is. Its stderr is ours, so
//! its logs reach the runtime's log like ours do. Tests implement `Exec`
//! with a fake plugin.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{CniError, code as plugin_code};
use crate::proto::code;
use crate::skel::Env;

pub trait Exec {
    /// Runs plugin `name` with `env` as its whole environment and `stdin`
    /// on its standard input. Ok: its stdout after a zero exit. Err: the
    /// error it printed, or one describing why it could not run.
    fn exec_plugin(&self, name: &str, env: &Env, stdin: &[u8]) -> Result<Vec<u8>, CniError>;
}

/// Runs plugins as processes, found in the directories of `CNI_PATH`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessExec;

impl Exec for ProcessExec {
    fn exec_plugin(&self, name: &str, env: &Env, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
        let cni_path = env.get("CNI_PATH").map(String::as_str).unwrap_or_default();
        let path = find_in_path(name, cni_path).ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("cannot find the plugin {name:?} in CNI_PATH {cni_path:?}"),
            )
        })?;
        let failed = |what: &str, e: std::io::Error| {
            CniError::new(code::IO_FAILURE, format!("{what} {}: {e}", path.display()))
        };
        let mut child = Command::new(&path)
            .env_clear()
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| failed("cannot run", e))?;
        let mut input = child.stdin.take();
        // Write stdin from another thread: a plugin that prints before it
        // has read everything must not deadlock us.
        let output = std::thread::scope(|s| {
            s.spawn(move || {
                if let Some(mut input) = input.take() {
                    // A plugin may exit without reading stdin (VERSION):
                    // a broken pipe here is not an error.
                    let _ = input.write_all(stdin);
                }
            });
            child.wait_with_output()
        })
        .map_err(|e| failed("waiting for", e))?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        Err(
            CniError::from_plugin_output(&output.stdout).unwrap_or_else(|| {
                CniError::new(
                    plugin_code::INTERNAL,
                    format!(
                        "plugin {name:?} failed ({}) without a CNI error",
                        output.status
                    ),
                )
                .with_details(String::from_utf8_lossy(&output.stdout).trim().to_owned())
            }),
        )
    }
}

/// The first executable file `name` in the colon-separated `cni_path`.
pub fn find_in_path(name: &str, cni_path: &str) -> Option<PathBuf> {
    cni_path
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn temp_dir(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("vswitch-cni-exec-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn finds_the_first_executable() {
        let a = temp_dir("find-a");
        let b = temp_dir("find-b");
        fs::write(a.0.join("p"), "not executable").unwrap();
        script(&b.0, "p", "true");
        let path = format!("{}::{}", a.0.display(), b.0.display());
        assert_eq!(find_in_path("p", &path), Some(b.0.join("p")));
        assert_eq!(find_in_path("q", &path), None);
    }

    #[test]
    fn runs_with_the_given_env_and_stdin() {
        let d = temp_dir("run");
        script(
            &d.0,
            "echo-plugin",
            "printf '%s|%s|' \"$CNI_COMMAND\" \"$HOME\"; cat",
        );
        let env: Env = [
            ("CNI_PATH", d.0.display().to_string()),
            ("CNI_COMMAND", "ADD".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let out = ProcessExec
            .exec_plugin("echo-plugin", &env, b"{\"x\":1}")
            .unwrap();
        // HOME is not passed: the environment is exactly `env`.
        assert_eq!(out, b"ADD||{\"x\":1}");
    }

    #[test]
    fn passes_on_the_plugins_error() {
        let d = temp_dir("err");
        script(
            &d.0,
            "fails",
            "echo '{\"code\": 11, \"msg\": \"busy\"}'; exit 1",
        );
        script(&d.0, "crashes", "echo 'panic'; exit 2");
        let env: Env = [("CNI_PATH".to_owned(), d.0.display().to_string())]
            .into_iter()
            .collect();
        let e = ProcessExec.exec_plugin("fails", &env, b"").unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (11, "busy"));
        let e = ProcessExec.exec_plugin("crashes", &env, b"").unwrap_err();
        assert_eq!(e.code, plugin_code::INTERNAL);
        assert_eq!(e.details, "panic");
        let e = ProcessExec.exec_plugin("absent", &env, b"").unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
    }
}
