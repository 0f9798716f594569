//! The hash of tables whose keys pods choose (conntrack, fragments): fast
//! (foldhash; its quality variant, whose last mix spreads every bit) and keyed with secrets drawn from the operating system when
//! the table is made (through std's `RandomState`), so that no pod can
//! aim many keys at one bucket. foldhash's own random state is seeded from
//! addresses in the process, which is why the secrets come from std's.

use std::collections::hash_map::RandomState as StdRandom;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use foldhash::SharedSeed;
use foldhash::quality::SeedableRandomState;

/// A new keyed state: a secret of its own on a secret the process shares.
pub fn state() -> SeedableRandomState {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    let shared = SHARED.get_or_init(|| SharedSeed::from_u64(StdRandom::new().hash_one(0u64)));
    SeedableRandomState::with_seed(StdRandom::new().hash_one(1u64), shared)
}

/// The keyed state.
pub type State = SeedableRandomState;

/// A map keyed by what pods send.
pub type Map<K, V> = std::collections::HashMap<K, V, SeedableRandomState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_tables_hash_one_key_differently() {
        let (a, b) = (state(), state());
        let key = [10u8, 0, 0, 1, 0, 80];
        assert_ne!(
            a.hash_one(key),
            b.hash_one(key),
            "each table has its own key"
        );
    }
}
