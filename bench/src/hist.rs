//! A small log-bucket latency histogram (~1% precision, micros), merged
//! across worker processes as sparse `(bucket, count)` pairs.

const BUCKETS: usize = 2000;

pub struct Hist {
    counts: Vec<u64>,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
        }
    }
}

impl Hist {
    fn bucket(us: u64) -> usize {
        (((us as f64) + 1.0).ln() * 100.0) as usize
    }

    pub fn record(&mut self, us: u64) {
        self.counts[Self::bucket(us).min(BUCKETS - 1)] += 1;
    }

    pub fn sparse(&self) -> Vec<(u32, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i as u32, *c))
            .collect()
    }

    pub fn merge(&mut self, sparse: &[(u32, u64)]) {
        for &(i, c) in sparse {
            self.counts[(i as usize).min(BUCKETS - 1)] += c;
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper edge of the bucket holding quantile `q`, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return f64::NAN;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return (((i + 1) as f64) / 100.0).exp() / 1000.0;
            }
        }
        f64::NAN
    }
}
