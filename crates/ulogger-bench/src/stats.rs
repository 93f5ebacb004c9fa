//! Medians and percentiles of measured samples.

use std::cmp::Ordering;
use std::time::Duration;

/// A measured value that can be put in order (`f64` by `total_cmp`).
pub trait Sample: Copy {
    /// The order in which samples are sorted.
    fn order(&self, other: &Self) -> Ordering;
}

impl Sample for f64 {
    fn order(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

impl Sample for Duration {
    fn order(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
}

impl Sample for u64 {
    fn order(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
}

/// Sorts `values` in place.
pub fn sort<T: Sample>(values: &mut [T]) {
    values.sort_by(T::order);
}

/// The median of `values` (sorted in place): the middle one, the upper of
/// the two middle ones for an even count. Panics when `values` is empty.
pub fn median<T: Sample>(values: &mut [T]) -> T {
    sort(values);
    values[values.len() / 2]
}

/// [`median`] of what `values` yields.
pub fn median_of<T: Sample>(values: impl IntoIterator<Item = T>) -> T {
    median(&mut values.into_iter().collect::<Vec<_>>())
}

/// The `q` quantile (0 < q <= 1) of `values` by nearest rank: the smallest
/// value with at least `q` of the values at or below it. `values` need not
/// be sorted. Panics when `values` is empty.
pub fn percentile<T: Sample>(values: &[T], q: f64) -> T {
    let mut sorted = values.to_vec();
    sort(&mut sorted);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_middle_or_the_upper_middle() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(
            median_of([Duration::from_millis(5), Duration::from_millis(1)]),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let values: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&values, 0.5), 50);
        assert_eq!(percentile(&values, 0.99), 99);
        assert_eq!(percentile(&values, 1.0), 100);
        assert_eq!(percentile(&[7u64], 0.01), 7);
    }
}
