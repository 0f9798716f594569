//! CNI spec versions: which ones the plugin speaks and how to choose one.
//!
//! A version is the "major.minor.patch" string of the spec. The plugin
//! speaks 0.3.0 to 1.1.0 (the versions with the rich result type); it
//! answers in the version the runtime chose (the configuration's
//! `cniVersion`), and with a delegated plugin it speaks the highest version
//! both sides know when the runtime's version is not one of them.

use std::cmp::Ordering;

/// What this plugin prefers: the newest spec it implements.
pub const CURRENT: &str = "1.1.0";

/// Every version the plugin accepts, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// "1.1.0" as (1, 1, 0); `None` when the text is not three numbers.
pub fn parse(version: &str) -> Option<(u64, u64, u64)> {
    let mut parts = version.split('.').map(|p| {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            p.parse::<u64>().ok()
        }
    });
    let triple = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(triple)
}

/// Compares two versions; an unparsable one sorts before every valid one.
pub fn compare(a: &str, b: &str) -> Ordering {
    parse(a).cmp(&parse(b))
}

/// Whether `version` is at least `min` (both as the spec writes them).
pub fn at_least(version: &str, min: &str) -> bool {
    compare(version, min) != Ordering::Less
}

pub fn is_supported(version: &str) -> bool {
    SUPPORTED.contains(&version)
}

/// The highest version in `theirs` that this plugin also supports.
pub fn highest_common<S: AsRef<str>>(theirs: &[S]) -> Option<&'static str> {
    SUPPORTED
        .iter()
        .rev()
        .find(|ours| theirs.iter().any(|t| t.as_ref() == **ours))
        .copied()
}

/// Whether a result of this version carries "version" in each IP entry
/// (the 0.3.x/0.4.0 result type; 1.0.0 removed it).
pub fn has_ip_version_field(version: &str) -> bool {
    compare(version, "1.0.0") == Ordering::Less
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        assert_eq!(parse("1.10.2"), Some((1, 10, 2)));
        assert_eq!(parse("1.0"), None);
        assert_eq!(parse("1.0.0.0"), None);
        assert_eq!(parse("1.x.0"), None);
        assert_eq!(parse(""), None);
        assert_eq!(compare("0.4.0", "1.0.0"), Ordering::Less);
        assert_eq!(compare("1.10.0", "1.9.0"), Ordering::Greater);
        assert!(at_least("1.1.0", "1.1.0"));
        assert!(!at_least("1.0.0", "1.1.0"));
        assert!(!at_least("junk", "0.1.0"));
    }

    #[test]
    fn highest_common_picks_the_newest_shared_version() {
        let host_local = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
        assert_eq!(highest_common(&host_local), Some("1.0.0"));
        assert_eq!(highest_common(&["1.1.0", "2.0.0"]), Some("1.1.0"));
        assert_eq!(highest_common(&["0.1.0", "0.2.0"]), None);
        assert_eq!(highest_common::<&str>(&[]), None);
    }

    #[test]
    fn ip_version_field_only_before_1_0() {
        assert!(has_ip_version_field("0.3.1"));
        assert!(has_ip_version_field("0.4.0"));
        assert!(!has_ip_version_field("1.0.0"));
        assert!(!has_ip_version_field("1.1.0"));
    }
}
