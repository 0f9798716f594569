//! The `vswitch-cni` executable: the process's environment, stdin and
//! stdout handed to the dispatcher, whose answer is the exit code. Results
//! and errors go to stdout (the runtime reads them); logs go to stderr.

use std::io::{Read, Write};
use std::process::ExitCode;

use vswitch_cni::error::CniError;
use vswitch_cni::exec::ProcessExec;
use vswitch_cni::proto::code;
use vswitch_cni::skel::{self, Env};

fn main() -> ExitCode {
    let mut env = Env::new();
    for (key, value) in std::env::vars_os() {
        match (key.into_string(), value.into_string()) {
            (Ok(k), Ok(v)) => {
                env.insert(k, v);
            }
            (Ok(k), Err(_)) => eprintln!("vswitch-cni: ignoring {k}: its value is not UTF-8"),
            (Err(k), _) => eprintln!("vswitch-cni: ignoring {}: not UTF-8", k.to_string_lossy()),
        }
    }
    let mut stdin = Vec::new();
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let err = CniError::new(code::IO_FAILURE, format!("cannot read stdin: {e}"));
        eprintln!("vswitch-cni: {err}");
        let _ = writeln!(stdout, "{}", err.to_json(vswitch_cni::version::CURRENT));
        return ExitCode::FAILURE;
    }
    let code = skel::dispatch(&env, &stdin, &mut stdout, &ProcessExec);
    let _ = stdout.flush();
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
