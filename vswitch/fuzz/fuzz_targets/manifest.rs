//! Arbitrary text as two successive versions of one manifest file (split at
//! the first line `#---next`; without it the second version is empty),
//! read by the manifest folder's loader (`Folder::take`, no I/O) as a
//! reload does. It must never panic, and:
//!
//! - every valid document names the object it gives (`parse_with_ids`);
//! - a NetworkPolicy of the first version stays in force when the second
//!   version does not parse as YAML or holds a rejected document naming it
//!   (a broken edit keeps the last valid version);
//! - a second version without any rejected document applies as written:
//!   nothing is kept from the first;
//! - the resulting cluster compiles or is refused, without panicking.
//!
//! Run: `cd vswitch/fuzz && python3 make_seeds.py && cargo fuzz run -s none manifest` (see README).

#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use policy::manifest::{ManifestError, parse_with_ids};
use policy::{Engine, PolicyKey};
use vswitch::daemon::manifests::Folder;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, second) = text.split_once("\n#---next\n").unwrap_or((text, ""));

    let parsed = parse_with_ids(second);
    for (id, r) in &parsed {
        if let Ok(o) = r {
            assert_eq!(
                id.as_ref(),
                Some(&o.id()),
                "a valid document names its object"
            );
        }
    }
    let unreadable = parsed
        .iter()
        .any(|(_, r)| matches!(r, Err(ManifestError::Yaml { .. })));
    let rejected_names: Vec<PolicyKey> = parsed
        .iter()
        .filter(|(_, r)| r.is_err())
        .filter_map(|(id, _)| id.as_ref())
        .filter(|id| id.kind == "NetworkPolicy")
        .map(|id| PolicyKey::new(id.namespace.clone().unwrap_or_default(), id.name.clone()))
        .collect();
    let any_rejected = parsed.iter().any(|(_, r)| r.is_err());

    let file = PathBuf::from("f.yaml");
    let mut folder = Folder::default();
    let before = folder.take(vec![(file.clone(), first.to_string())]);
    let after = folder.take(vec![(file, second.to_string())]);
    for key in before.cluster.policies.keys() {
        if unreadable || rejected_names.contains(key) {
            assert!(
                after.cluster.policies.contains_key(key),
                "{key} was dropped by a broken edit: {:?}",
                after.notes
            );
        }
    }
    if !any_rejected {
        assert_eq!(
            after.stale, 0,
            "a valid version keeps nothing: {:?}",
            after.notes
        );
    }
    let _ = Engine::from_cluster(after.cluster);
});
