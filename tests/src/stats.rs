//! Summaries of benchmark samples, written once for the benchmarks of the
//! suite and `nubo-bench`.

use std::time::Duration;

/// The median of `v`, NaNs left out (the mean of the middle two for an even
/// count); NaN when nothing is left.
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The median of durations (the upper middle one for an even count); zero
/// when empty.
pub fn median_duration(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        assert!(median(&[]).is_nan());
        let d = Duration::from_millis;
        assert_eq!(median_duration(&[d(3), d(1), d(2)]), d(2));
        assert_eq!(median_duration(&[]), Duration::ZERO);
    }
}
