//! The tables both models keep per context: keyed by the contexts' own hashes, and bounded.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Contexts a table keeps before the least-seen ones are pruned.
pub(crate) const MAX_CONTEXTS: usize = 1 << 20;

/// Keys are already hashes; mixing them once more is enough.
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ *b as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
}

pub type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// A context's fading counts, as far as pruning is concerned.
pub(crate) trait Evidence {
    /// Fades the counts to `now_ms`.
    fn fade_to(&mut self, now_ms: u64, half_life_ms: f64);
    /// How much the context has seen.
    fn evidence(&self) -> f32;
}

/// Once `tables` holds more than `cap` contexts, fades them all to `now_ms` and drops the half
/// that carries least evidence.
pub(crate) fn prune_over<V: Evidence>(
    tables: &mut KeyMap<V>,
    cap: usize,
    now_ms: u64,
    half_life_ms: f64,
) {
    if tables.len() <= cap {
        return;
    }
    for c in tables.values_mut() {
        c.fade_to(now_ms, half_life_ms);
    }
    let mut totals: Vec<f32> = tables.values().map(V::evidence).collect();
    let cut = totals.len() / 2;
    totals.select_nth_unstable_by(cut, |a, b| a.total_cmp(b));
    let floor = totals[cut];
    tables.retain(|_, c| c.evidence() > floor);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Seen(f32);

    impl Evidence for Seen {
        fn fade_to(&mut self, _now_ms: u64, _half_life_ms: f64) {}

        fn evidence(&self) -> f32 {
            self.0
        }
    }

    #[test]
    fn contexts_past_the_cap_are_pruned_to_those_seen_most() {
        let mut t: KeyMap<Seen> = KeyMap::default();
        for key in 0..1_000u64 {
            t.insert(
                key,
                Seen(if key < 10 {
                    100.0
                } else {
                    1.0 + key as f32 / 1e3
                }),
            );
        }
        prune_over(&mut t, 2_000, 0, 1.0);
        assert_eq!(t.len(), 1_000, "pruned below the cap");
        prune_over(&mut t, 999, 0, 1.0);
        assert!(t.len() <= 500, "{} kept", t.len());
        assert!(
            (0..10).all(|k| t.contains_key(&k)),
            "the well-seen ones went"
        );
    }
}
