//! Order statistics over latency samples.

use std::time::Duration;

/// The `q`-quantile (0 ≤ q ≤ 1) of `sorted`, nearest-rank; `None` when empty.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Median of durations (the lower middle for an even count); `None` when empty.
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort();
    if v.is_empty() {
        None
    } else {
        Some(v[(v.len() - 1) / 2])
    }
}

/// Median of plain numbers; `None` when empty.
pub fn median_u64(values: &[u64]) -> Option<u64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        None
    } else {
        Some(v[(v.len() - 1) / 2])
    }
}

/// Median of floating-point figures (the lower middle for an even count); `None` when empty.
pub fn median_f64(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len().checked_sub(1)? / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&[7], 0.99), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median_u64(&[3, 1, 2]), Some(2));
        assert_eq!(median_u64(&[4, 1, 3, 2]), Some(2));
        assert_eq!(median(&[]), None);
    }
}
