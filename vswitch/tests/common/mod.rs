//! What the privileged tests share: how they skip.

/// Prints `SKIPPED: why` and returns true; under `CI=true` a skip is a
/// failure instead.
pub fn skip(why: &str) -> bool {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "SKIPPED under CI=true: {why}"
    );
    println!("SKIPPED: {why}");
    true
}

/// Whether this process runs as root (or as root in a user namespace).
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
