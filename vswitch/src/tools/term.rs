//! The terminal: whether to colour output, and writing to stdout and stderr
//! without panicking when the reader has gone away (`vswitchd demo | head`).
//!
//! `println!` panics when stdout is a closed pipe (Rust ignores SIGPIPE, so
//! the write fails with EPIPE instead of killing the process). The commands
//! of both binaries print through [`outln!`](crate::outln) and
//! [`out!`](crate::out) instead: a closed stdout ends the output quietly,
//! [`stdout_closed`] tells long-running commands to stop early, and the
//! command still exits with its own status.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// `--color`: whether to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Color {
    /// When stdout is a terminal and NO_COLOR is not set.
    Auto,
    /// Always colour, also into a file or a pipe.
    Always,
    /// Never colour.
    Never,
}

impl Color {
    /// Whether to colour stdout.
    pub fn enabled(self) -> bool {
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => std::io::stdout().is_terminal() && !no_color(),
        }
    }
}

/// Whether NO_COLOR is set (to anything but the empty string, see
/// no-color.org).
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Whether log lines (on stderr) may carry ANSI colours: only on a terminal,
/// and not with NO_COLOR.
pub fn log_ansi() -> bool {
    std::io::stderr().is_terminal() && !no_color()
}

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether a write to stdout has failed (the reader went away): what is
/// left to print is dropped, and long-running commands may stop.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Writes to stdout (flushed). The first failure marks stdout closed and
/// everything after it is dropped; nothing panics and nothing is reported
/// (a closed pipe is the reader saying it has seen enough).
pub fn write_stdout(args: fmt::Arguments<'_>) {
    if stdout_closed() {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out.write_fmt(args).and_then(|()| out.flush()).is_err() {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Writes to stderr; a closed stderr drops the rest as [`write_stdout`]
/// does for stdout.
pub fn write_stderr(args: fmt::Arguments<'_>) {
    if STDERR_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut err = std::io::stderr().lock();
    if err.write_fmt(args).and_then(|()| err.flush()).is_err() {
        STDERR_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// `print!` that does not panic when stdout is closed (see [`write_stdout`]).
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {
        $crate::tools::term::write_stdout(format_args!($($t)*))
    };
}

/// `println!` that does not panic when stdout is closed (see [`write_stdout`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::tools::term::write_stdout(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::tools::term::write_stdout(format_args!("{}\n", format_args!($($t)*)))
    };
}

/// `eprintln!` that does not panic when stderr is closed (see [`write_stderr`]).
#[macro_export]
macro_rules! errln {
    ($($t:tt)*) => {
        $crate::tools::term::write_stderr(format_args!("{}\n", format_args!($($t)*)))
    };
}
