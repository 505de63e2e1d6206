//! The server's counters in Prometheus' text exposition format (version 0.0.4), written by
//! hand: a few counters, gauges and histograms do not need a metrics framework, and the
//! format is small and stable.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Cumulative-bucket histogram (`le` upper bounds, `+Inf` implied).
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative), the last for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// Request latency buckets in seconds: from a fast classification to a slow batch.
const LATENCY_BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const BATCH_BOUNDS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Default)]
struct Inner {
    /// (route, status) -> count.
    requests: BTreeMap<(String, u16), u64>,
    /// route -> seconds from the request's arrival to its answer.
    latency: BTreeMap<String, Histogram>,
    batch_size: Option<Histogram>,
    inference_seconds: Option<Histogram>,
}

/// Everything `/metrics` reports. Routes are the router's patterns (or `unmatched`), so a
/// client cannot grow the label set with made-up paths.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Requests waiting for the model thread to take them into a batch.
    pub queue_depth: AtomicUsize,
    /// Requests admitted and not yet answered (reading, decoding, queued or computing).
    pub in_flight: AtomicUsize,
    /// Requests that reached the router; at shutdown, those not [`Self::answered`] were
    /// dropped unanswered.
    pub started: AtomicU64,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock left counters, not invariants, behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record_request(&self, route: &str, status: u16, seconds: f64) {
        let mut m = self.lock();
        *m.requests.entry((route.to_string(), status)).or_default() += 1;
        m.latency
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(&LATENCY_BOUNDS))
            .observe(seconds);
    }

    pub fn record_batch(&self, size: usize, seconds: f64) {
        let mut m = self.lock();
        m.batch_size
            .get_or_insert_with(|| Histogram::new(&BATCH_BOUNDS))
            .observe(size as f64);
        m.inference_seconds
            .get_or_insert_with(|| Histogram::new(&LATENCY_BOUNDS))
            .observe(seconds);
    }

    /// Requests answered so far, all routes and statuses.
    pub fn answered(&self) -> u64 {
        self.lock().requests.values().sum()
    }

    /// The text `/metrics` answers.
    pub fn render(&self, ready: bool) -> String {
        let m = self.lock();
        let mut out = String::new();
        out.push_str(
            "# HELP candletron_http_requests_total HTTP requests answered, by route and status.\n\
             # TYPE candletron_http_requests_total counter\n",
        );
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "candletron_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP candletron_http_request_duration_seconds Time from a request's arrival to its answer.\n\
             # TYPE candletron_http_request_duration_seconds histogram\n",
        );
        for (route, h) in &m.latency {
            h.write(
                &mut out,
                "candletron_http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        out.push_str(
            "# HELP candletron_batch_size Images per model call (requests of one input size batched together).\n\
             # TYPE candletron_batch_size histogram\n",
        );
        m.batch_size
            .clone()
            .unwrap_or_else(|| Histogram::new(&BATCH_BOUNDS))
            .write(&mut out, "candletron_batch_size", "");
        out.push_str(
            "# HELP candletron_inference_duration_seconds Time of one model call.\n\
             # TYPE candletron_inference_duration_seconds histogram\n",
        );
        m.inference_seconds
            .clone()
            .unwrap_or_else(|| Histogram::new(&LATENCY_BOUNDS))
            .write(&mut out, "candletron_inference_duration_seconds", "");
        let gauges = [
            (
                "candletron_queue_depth",
                "Requests waiting for the model.",
                self.queue_depth.load(Ordering::Relaxed),
            ),
            (
                "candletron_requests_in_flight",
                "Requests admitted and not yet answered.",
                self.in_flight.load(Ordering::Relaxed),
            ),
            (
                "candletron_model_ready",
                "1 once the model is loaded.",
                ready as usize,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_sum_and_count() {
        let mut h = Histogram::new(&[1.0, 2.0, 4.0]);
        for v in [1.0, 1.0, 3.0, 9.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.write(&mut s, "x", "");
        assert_eq!(
            s,
            "x_bucket{le=\"1\"} 2\nx_bucket{le=\"2\"} 2\nx_bucket{le=\"4\"} 3\n\
             x_bucket{le=\"+Inf\"} 4\nx_sum 14\nx_count 4\n"
        );
    }

    #[test]
    fn render_has_one_line_per_route_and_status() {
        let m = Metrics::default();
        m.record_request("/v1/detect", 200, 0.02);
        m.record_request("/v1/detect", 200, 0.03);
        m.record_request("/v1/detect", 400, 0.001);
        m.record_batch(3, 0.01);
        let text = m.render(true);
        assert!(text
            .contains("candletron_http_requests_total{route=\"/v1/detect\",status=\"200\"} 2\n"));
        assert!(text
            .contains("candletron_http_requests_total{route=\"/v1/detect\",status=\"400\"} 1\n"));
        assert!(text.contains("candletron_batch_size_bucket{le=\"2\"} 0\n"));
        assert!(text.contains("candletron_batch_size_bucket{le=\"4\"} 1\n"));
        assert!(text.contains("candletron_model_ready 1\n"));
        assert_eq!(m.answered(), 3);
    }
}
