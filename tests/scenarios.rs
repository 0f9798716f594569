//! Every scenario of the project's corpus (`tests/netpol/`) and of the shared
//! examples (`../shared/netpol/examples/`) passes in engine mode and in
//! dataplane mode (real connection attempts between in-process pods).

use std::path::{Path, PathBuf};

use vswitch::scenario::{self, Mode};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_all(dir: &Path, mode: Mode) -> usize {
    let files = scenario::expand_paths(&[dir.to_path_buf()]);
    let mut failures = String::new();
    for f in &files {
        let report = scenario::run_file(f, mode);
        if !report.passed() {
            failures.push_str(&report.render(&f.display().to_string()));
        }
    }
    assert!(failures.is_empty(), "scenarios failed:\n{failures}");
    files.len()
}

fn corpus(mode: Mode) {
    let n = run_all(&root().join("tests/netpol"), mode);
    assert!(n >= 40, "the corpus has {n} files, fewer than 40");
}

fn shared_examples(mode: Mode) {
    let dir = root().join("../shared/netpol/examples");
    if !dir.is_dir() {
        // shared/ sits beside the clone in CI and on developer machines.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} is missing",
            dir.display()
        );
        println!("SKIPPED: {} not found", dir.display());
        return;
    }
    let n = run_all(&dir, mode);
    assert!(n >= 2, "only {n} shared examples");
}

#[test]
fn corpus_passes_in_engine_mode() {
    corpus(Mode::Engine);
}

#[test]
fn corpus_passes_in_dataplane_mode() {
    corpus(Mode::Dataplane);
}

#[test]
fn shared_examples_pass_in_engine_mode() {
    shared_examples(Mode::Engine);
}

#[test]
fn shared_examples_pass_in_dataplane_mode() {
    shared_examples(Mode::Dataplane);
}
