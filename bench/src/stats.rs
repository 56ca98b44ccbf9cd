//! Latency statistics: nearest-rank percentiles over recorded samples.

/// Summary of a set of latency samples, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile of an ascending slice; `p` in 0..=100. `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // Nearest rank: the smallest value such that at least p% of samples are <= it.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.saturating_sub(1).min(sorted.len() - 1)])
}

/// Sorts the samples in place (NaN-free input expected; NaNs sort last) and summarises them.
pub fn summarize(samples: &mut [f64]) -> Option<Summary> {
    samples.sort_by(|a, b| a.total_cmp(b));
    Some(Summary {
        count: samples.len(),
        p50: percentile(samples, 50.0)?,
        p99: percentile(samples, 99.0)?,
        max: *samples.last()?,
    })
}

/// The median of some values (the mean of the middle two for an even count); `None` when
/// empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[9.0, 1.0, 5.0]), Some(5.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn nearest_rank_on_one_to_hundred() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
    }

    #[test]
    fn small_samples_round_up() {
        let v = [10.0, 20.0, 30.0];
        assert_eq!(percentile(&v, 50.0), Some(20.0));
        assert_eq!(percentile(&v, 99.0), Some(30.0));
        assert_eq!(percentile(&v, 1.0), Some(10.0));
    }

    #[test]
    fn empty_has_no_percentile() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(summarize(&mut []), None);
    }

    #[test]
    fn summarize_sorts_first() {
        let mut v = vec![5.0, 1.0, 9.0, 3.0];
        let s = summarize(&mut v).unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.p50, 3.0);
        assert_eq!(s.p99, 9.0);
        assert_eq!(s.max, 9.0);
        assert_eq!(v, vec![1.0, 3.0, 5.0, 9.0]);
    }
}
