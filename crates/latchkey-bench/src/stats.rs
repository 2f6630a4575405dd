//! Latency summaries: exact percentiles over every recorded sample (nearest rank), no
//! histogram bucketing.

use std::time::Duration;

use serde_json::{Value, json};

/// The summary of a set of latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// Largest sample, in milliseconds.
    pub max_ms: f64,
    /// Mean, in milliseconds.
    pub mean_ms: f64,
}

impl Summary {
    /// As a JSON object.
    pub fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "max_ms": round3(self.max_ms),
            "mean_ms": round3(self.mean_ms),
        })
    }
}

/// Rounds to three decimals (for the JSON report).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q`-quantile (0 < q ≤ 1) of sorted samples, by nearest rank.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises `samples`.
pub fn summarize(mut samples: Vec<Duration>) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    samples.sort_unstable();
    let total: Duration = samples.iter().sum();
    #[allow(clippy::cast_precision_loss)]
    let mean = ms(total) / samples.len() as f64;
    Summary {
        count: samples.len(),
        p50_ms: ms(quantile(&samples, 0.50)),
        p99_ms: ms(quantile(&samples, 0.99)),
        max_ms: ms(samples[samples.len() - 1]),
        mean_ms: mean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = summarize(samples);
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(s.mean_ms, 50.5);
        let one = summarize(vec![Duration::from_millis(7)]);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
        assert_eq!(summarize(Vec::new()), Summary::default());
    }
}
