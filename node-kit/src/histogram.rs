//! Histograms kept in a state machine's counters (plain numbers, no registry on the
//! media path) and rendered as Prometheus text at scrape time.

use std::fmt::Write;

#[derive(Clone, Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, ascending (`+Inf` is implied).
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative), then above the last.
    counts: Vec<u64>,
    sum: f64,
}

/// Bounds for time spent inside a node, seconds (100 µs to 50 ms).
pub const IN_NODE_BOUNDS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05];

/// Time media spends inside a node, from its read off a socket or link to its last send.
#[derive(Clone, Debug)]
pub struct InNode(pub Histogram);

impl Default for InNode {
    fn default() -> Self {
        InNode(Histogram::new(IN_NODE_BOUNDS))
    }
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0 }
    }

    pub fn observe(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
    }

    /// Adds another histogram's observations (the same bounds; others are ignored).
    pub fn absorb(&mut self, other: &Histogram) {
        if self.bounds != other.bounds {
            return;
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Appends `name` as a Prometheus histogram with `labels` (`k="v"` pairs, escaped).
    pub fn render(&self, name: &str, help: &str, labels: &[(&str, String)], out: &mut String) {
        let base: String = labels.iter().map(|(k, v)| format!("{k}=\"{}\",", escape(v))).collect();
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{base}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{base}le=\"+Inf\"}} {count}");
        let labels = base.trim_end_matches(',');
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_in_the_text() {
        let mut h = Histogram::new(&[0.01, 0.1]);
        for v in [0.0, 0.005, 0.05, 0.5, f64::NAN] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render("sfu_x", "An x.", &[("node", "e\"1".into())], &mut out);
        assert!(out.contains("# TYPE sfu_x histogram"));
        assert!(out.contains("sfu_x_bucket{node=\"e\\\"1\",le=\"0.01\"} 2"), "{out}");
        assert!(out.contains("sfu_x_bucket{node=\"e\\\"1\",le=\"0.1\"} 3"), "{out}");
        assert!(out.contains("sfu_x_bucket{node=\"e\\\"1\",le=\"+Inf\"} 4"), "{out}");
        assert!(out.contains("sfu_x_count{node=\"e\\\"1\"} 4"), "{out}");
        assert!(out.contains("sfu_x_sum{node=\"e\\\"1\"} 0.555"), "{out}");
    }

    #[test]
    fn absorbing_adds_counts_and_sums_of_the_same_bounds_only() {
        let mut a = Histogram::new(&[0.01, 0.1]);
        let mut b = Histogram::new(&[0.01, 0.1]);
        a.observe(0.005);
        b.observe(0.05);
        b.observe(0.5);
        a.absorb(&b);
        assert_eq!(a.counts, vec![1, 1, 1]);
        assert_eq!(a.count(), 3);
        assert!((a.sum - 0.555).abs() < 1e-9);
        let other = Histogram::new(&[1.0]);
        a.absorb(&other);
        assert_eq!(a.count(), 3);
    }
}
