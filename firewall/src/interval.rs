//! Disjoint interval decomposition for nft interval sets.
//!
//! The kernel's concatenated interval sets (`pipapo`) refuse elements whose
//! start or end falls inside another element, so rules that overlap (e.g.
//! `10.0.0.0/8 tcp 22` and `10.1.0.0/16 tcp 20-30`) cannot be inserted as
//! they are. Every element of a set leads to the same verdict, so we may
//! rewrite the elements into an equivalent set of disjoint boxes: the address
//! axis is cut into elementary ranges, each range gets the union of what the
//! rules covering it allow, and neighbouring ranges with the same content are
//! merged again.

use std::collections::BTreeMap;

/// An inclusive range `[lo, hi]` on a `u128` axis (IPv4 addresses use the
/// low 32 bits).
pub type Range = (u128, u128);

/// Merges overlapping or adjacent inclusive ranges; the result is sorted and
/// disjoint.
pub fn merge_ranges<T>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)>
where
    T: Ord + Copy + Successor,
{
    ranges.sort();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        if lo > hi {
            continue;
        }
        if let Some(last) = out.last_mut() {
            if last.1.succ().is_none_or(|next| lo <= next) {
                if hi > last.1 {
                    last.1 = hi;
                }
                continue;
            }
        }
        out.push((lo, hi));
    }
    out
}

/// Integer types with a checked successor.
pub trait Successor: Sized {
    /// `self + 1`, or `None` at the maximum.
    fn succ(self) -> Option<Self>;
}

impl Successor for u16 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Successor for u128 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// Cuts the address axis at every rule boundary and returns, for each
/// elementary range covered by at least one item, `profile(payloads of the
/// items covering it)`. Adjacent ranges with equal profiles are merged, so
/// the result is sorted, disjoint and minimal along the address axis.
pub fn sweep<P, R>(items: &[(Range, P)], profile: impl Fn(&[&P]) -> R) -> Vec<(Range, R)>
where
    P: Ord,
    R: PartialEq,
{
    // Breakpoints: every start, and every end + 1.
    let mut cuts: Vec<u128> = Vec::with_capacity(items.len() * 2);
    for ((lo, hi), _) in items {
        if lo > hi {
            continue;
        }
        cuts.push(*lo);
        if let Some(next) = hi.checked_add(1) {
            cuts.push(next);
        }
    }
    cuts.sort_unstable();
    cuts.dedup();

    let mut by_start: Vec<&(Range, P)> = items.iter().filter(|((lo, hi), _)| lo <= hi).collect();
    by_start.sort_by(|a, b| a.0 .0.cmp(&b.0 .0).then(a.1.cmp(&b.1)));

    // Active items keyed by (end, index) so the ones that end first leave first.
    let mut active: BTreeMap<(u128, usize), &P> = BTreeMap::new();
    let mut next_item = 0;
    let mut out: Vec<(Range, R)> = Vec::new();
    for (i, &start) in cuts.iter().enumerate() {
        let end = match cuts.get(i + 1) {
            Some(next) => next - 1,
            None => u128::MAX,
        };
        while let Some((&(hi, idx), _)) = active.first_key_value() {
            if hi >= start {
                break;
            }
            active.remove(&(hi, idx));
        }
        while let Some(item) = by_start.get(next_item) {
            if item.0 .0 > start {
                break;
            }
            active.insert((item.0 .1, next_item), &item.1);
            next_item += 1;
        }
        if active.is_empty() {
            continue;
        }
        let mut payloads: Vec<&P> = active.values().copied().collect();
        payloads.sort();
        let prof = profile(&payloads);
        match out.last_mut() {
            Some(((_, last_hi), last_prof))
                if last_hi.checked_add(1) == Some(start) && *last_prof == prof =>
            {
                *last_hi = end;
            }
            _ => out.push(((start, end), prof)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_joins_overlaps_and_neighbours() {
        let got = merge_ranges(vec![(20u16, 30), (1, 5), (6, 8), (25, 40), (100, 100)]);
        assert_eq!(got, vec![(1, 8), (20, 40), (100, 100)]);
    }

    #[test]
    fn merge_handles_the_maximum() {
        let got = merge_ranges(vec![(65000u16, u16::MAX), (65535, 65535), (0, 0)]);
        assert_eq!(got, vec![(0, 0), (65000, u16::MAX)]);
    }

    #[test]
    fn sweep_splits_nested_ranges() {
        // 0..=99 allows "a", 10..=19 additionally allows "b".
        let items = vec![((0, 99), "a"), ((10, 19), "b")];
        let got = sweep(&items, |p| {
            p.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        });
        assert_eq!(
            got,
            vec![
                ((0, 9), vec!["a".to_string()]),
                ((10, 19), vec!["a".to_string(), "b".to_string()]),
                ((20, 99), vec!["a".to_string()]),
            ]
        );
    }

    #[test]
    fn sweep_merges_equal_neighbours_and_skips_gaps() {
        let items = vec![((0, 9), 1), ((10, 19), 1), ((30, 39), 1)];
        let got = sweep(&items, |p| p.len());
        assert_eq!(got, vec![((0, 19), 1), ((30, 39), 1)]);
    }

    #[test]
    fn sweep_covers_the_whole_axis() {
        let items = vec![((0, u128::MAX), ()), ((5, 5), ())];
        let got = sweep(&items, |p| p.len());
        assert_eq!(got, vec![((0, 4), 1), ((5, 5), 2), ((6, u128::MAX), 1)]);
    }

    #[test]
    fn sweep_result_is_disjoint_for_many_overlaps() {
        let items: Vec<(Range, u32)> = (0..200u32)
            .map(|i| {
                (
                    (u128::from(i * 7 % 50), u128::from(i * 7 % 50 + i % 13)),
                    i % 3,
                )
            })
            .collect();
        let got = sweep(&items, |p| {
            let mut v: Vec<u32> = p.iter().map(|x| **x).collect();
            v.dedup();
            v
        });
        for pair in got.windows(2) {
            assert!(pair[0].0 .1 < pair[1].0 .0, "overlap in {pair:?}");
        }
        // Every point covered by an item is covered by exactly one output range
        // whose profile contains that item's payload.
        for ((lo, hi), p) in &items {
            for x in *lo..=*hi {
                let hit: Vec<_> = got
                    .iter()
                    .filter(|((a, b), _)| *a <= x && x <= *b)
                    .collect();
                assert_eq!(hit.len(), 1);
                assert!(hit[0].1.contains(p));
            }
        }
    }
}
