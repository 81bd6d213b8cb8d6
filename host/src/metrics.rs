//! Counters and a latency histogram, rendered as Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the command latency buckets, in seconds.
const LATENCY_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The host's metrics.
#[derive(Default)]
pub struct Metrics {
    commands: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// Count one command by outcome (`ok` or an error code) and its latency.
    pub fn record_command(&self, outcome: &'static str, elapsed: Duration) {
        *self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(outcome)
            .or_default() += 1;
        let s = elapsed.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
            if s <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, head_position: u64, plugins: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP kiln_commands_total Commands handled, by outcome."
        );
        let _ = writeln!(out, "# TYPE kiln_commands_total counter");
        for (outcome, n) in self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "kiln_commands_total{{outcome=\"{outcome}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP kiln_command_duration_seconds Command latency.");
        let _ = writeln!(out, "# TYPE kiln_command_duration_seconds histogram");
        for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
            let n = self.latency_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "kiln_command_duration_seconds_bucket{{le=\"{bound}\"}} {n}"
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "kiln_command_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "kiln_command_duration_seconds_sum {sum}");
        let _ = writeln!(out, "kiln_command_duration_seconds_count {count}");
        let _ = writeln!(
            out,
            "# HELP kiln_head_position The last committed global position."
        );
        let _ = writeln!(out, "# TYPE kiln_head_position gauge");
        let _ = writeln!(out, "kiln_head_position {head_position}");
        let _ = writeln!(out, "# HELP kiln_plugins_loaded Plugins loaded.");
        let _ = writeln!(out, "# TYPE kiln_plugins_loaded gauge");
        let _ = writeln!(out, "kiln_plugins_loaded {plugins}");
        out
    }
}

/// Per-projection gauges and counters, appended to the exposition.
/// Commands decided again after a conflict with another writer.
pub fn render_conflict_retries(out: &mut String, retries: u64) {
    let _ = writeln!(
        out,
        "# HELP kiln_command_conflict_retries_total Commands decided again because another writer appended to their stream first."
    );
    let _ = writeln!(out, "# TYPE kiln_command_conflict_retries_total counter");
    let _ = writeln!(out, "kiln_command_conflict_retries_total {retries}");
}

pub fn render_projections(out: &mut String, statuses: &[crate::projection::ProjectionStatus]) {
    let families: [(&str, &str, &str); 6] = [
        (
            "kiln_projection_position",
            "gauge",
            "The last global position the serving generation processed.",
        ),
        (
            "kiln_projection_lag",
            "gauge",
            "Events between the head and the projection's position.",
        ),
        (
            "kiln_projection_events_total",
            "counter",
            "Events processed by the serving generation since start.",
        ),
        (
            "kiln_projection_last_batch_seconds",
            "gauge",
            "Duration of the last batch.",
        ),
        (
            "kiln_projection_state",
            "gauge",
            "1 for the projection's current state.",
        ),
        (
            "kiln_projection_rebuild_progress",
            "gauge",
            "Progress of the generation being built, 0 to 1.",
        ),
    ];
    for (name, kind, help) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for s in statuses {
            let p = &s.name;
            match name {
                "kiln_projection_position" => {
                    let _ = writeln!(out, "{name}{{projection=\"{p}\"}} {}", s.position);
                }
                "kiln_projection_lag" => {
                    let _ = writeln!(out, "{name}{{projection=\"{p}\"}} {}", s.lag);
                }
                "kiln_projection_events_total" => {
                    let _ = writeln!(out, "{name}{{projection=\"{p}\"}} {}", s.events_processed);
                }
                "kiln_projection_last_batch_seconds" => {
                    let _ = writeln!(
                        out,
                        "{name}{{projection=\"{p}\"}} {}",
                        s.last_batch_ms / 1000.0
                    );
                }
                "kiln_projection_state" => {
                    for state in ["running", "rebuilding", "paused", "failed"] {
                        let v = u8::from(s.state == state);
                        let _ = writeln!(out, "{name}{{projection=\"{p}\",state=\"{state}\"}} {v}");
                    }
                }
                _ => {
                    if let Some(r) = &s.rebuild {
                        let _ = writeln!(
                            out,
                            "{name}{{projection=\"{p}\",generation=\"{}\"}} {}",
                            r.generation, r.progress
                        );
                    }
                }
            }
        }
    }
}

/// How one saga gauge reads its value.
type SagaGauge = fn(&crate::saga::SagaInfo) -> u64;

/// Per saga: instances by status, outbox depth, dead letters, lag, and
/// whether it waits for an operator.
pub fn render_sagas(out: &mut String, sagas: &[crate::saga::SagaInfo]) {
    let _ = writeln!(out, "# HELP kiln_saga_instances Saga instances, by status.");
    let _ = writeln!(out, "# TYPE kiln_saga_instances gauge");
    for s in sagas {
        let c = &s.instances;
        for (status, n) in [
            ("running", c.running),
            ("compensating", c.compensating),
            ("completed", c.completed),
            ("failed", c.failed),
        ] {
            let _ = writeln!(
                out,
                "kiln_saga_instances{{saga=\"{}\",status=\"{status}\"}} {n}",
                s.name
            );
        }
    }
    let gauges: [(&str, &str, SagaGauge); 4] = [
        (
            "kiln_saga_outbox_depth",
            "Commands decided and not applied yet.",
            |s| s.instances.outbox,
        ),
        (
            "kiln_saga_dead_letters",
            "Commands that exhausted their attempts.",
            |s| s.instances.dead_letters,
        ),
        (
            "kiln_saga_lag",
            "Events between the head and the saga's checkpoint.",
            |s| s.lag,
        ),
        (
            "kiln_saga_failed",
            "1 when the saga's plugin failed and it waits for an operator.",
            |s| u64::from(s.error.is_some()),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for s in sagas {
            let _ = writeln!(out, "{name}{{saga=\"{}\"}} {}", s.name, value(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_buckets() {
        let m = Metrics::default();
        m.record_command("ok", Duration::from_micros(700));
        m.record_command("rejected", Duration::from_millis(30));
        let text = m.render(7, 2);
        assert!(
            text.contains("kiln_commands_total{outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("kiln_commands_total{outcome=\"rejected\"} 1"));
        assert!(text.contains("kiln_command_duration_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("kiln_command_duration_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("kiln_head_position 7"));
    }
}
