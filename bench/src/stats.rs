//! Summaries of samples in milliseconds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// min, p50, mean, p90, max and the sample standard deviation of a set of samples (ms).
/// Percentiles interpolate linearly between the two nearest ranks (numpy's default), so
/// p50 of an even count is the mean of the two middle samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub mean: f64,
    pub p90: f64,
    pub max: f64,
    /// Sample standard deviation (n - 1); 0 for fewer than two samples.
    pub stddev: f64,
}

impl Summary {
    /// `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let mean = s.iter().sum::<f64>() / n as f64;
        let stddev = if n > 1 {
            (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Summary {
            n,
            min: s[0],
            p50: percentile(&s, 0.5),
            mean: round_us(mean),
            p90: percentile(&s, 0.9),
            max: s[n - 1],
            stddev: round_us(stddev),
        })
    }

    /// The standard error of the mean.
    pub fn stderr(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        round_us(self.stddev / (self.n as f64).sqrt())
    }
}

/// `q` in 0..=1 of sorted, non-empty samples, interpolated linearly between the two nearest
/// ranks (numpy's default).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    round_us(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Milliseconds, to the microsecond.
pub fn ms(d: Duration) -> f64 {
    round_us(d.as_nanos() as f64 / 1e6)
}

fn round_us(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_like_numpy() {
        let s = Summary::of(&[5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 6.0, 7.0, 9.0, 8.0]).unwrap();
        assert_eq!((s.n, s.min, s.max), (10, 1.0, 10.0));
        assert_eq!(s.p50, 5.5);
        assert_eq!(s.mean, 5.5);
        assert_eq!(s.p90, 9.1);
        assert_eq!(s.stddev, 3.028);
        assert_eq!(s.stderr(), 0.958);
        let one = Summary::of(&[7.0]).unwrap();
        assert_eq!((one.p50, one.p90, one.stddev), (7.0, 7.0, 0.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn tail_percentiles() {
        let s: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.99), 990.01);
        assert_eq!(percentile(&s, 0.999), 999.001);
        assert_eq!(percentile(&s, 1.0), 1000.0);
        assert_eq!(percentile(&s, 0.0), 1.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
    }

    #[test]
    fn milliseconds_to_the_microsecond() {
        assert_eq!(ms(Duration::from_nanos(1_234_567_890)), 1234.568);
    }
}
