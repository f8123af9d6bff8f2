//! Prometheus metrics, served at `GET /metrics` in the text format.
//!
//! Counters are incremented where an operation ends (backups and restores in `manager`,
//! policy failures where they are recorded); gauges — snapshots, their bytes, the last
//! success, free space — are read from the catalog and the disk at each scrape, so they
//! are right after a restart too. Names follow Prometheus' naming guide and the peers'
//! vocabulary (Velero's `velero_backup_*`). Labels are app ids and policy names, never a
//! snapshot id: one series per snapshot would grow without bound.
//!
//! Each manager has its own recorder (not the process-global one of the `metrics` crate),
//! so two managers in one process — the tests run many — never mix their counts.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Buckets of the backup duration histogram, in seconds: from a small app's few seconds
/// to a large one's hour.
const DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// One manager's metrics. Recording only updates memory: it never blocks on I/O or fails.
pub struct Metrics {
    /// Installed only for the length of a `with` call, never as the global recorder.
    recorder: PrometheusRecorder,
    /// Renders what `recorder` holds, in the Prometheus text format.
    handle: PrometheusHandle,
}

/// How a restore ended, for its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreEnd {
    /// Counted in `appsnap_restore_successes_total`.
    Succeeded,
    /// It failed after touching the app and was rolled back (completely or not).
    RolledBack,
    /// Refused or failed before anything was touched: counted as an attempt only.
    Refused,
}

/// What a scrape reads from the catalog for one app.
#[derive(Debug, Default, Clone)]
pub struct AppGauges {
    /// The app's snapshots in the catalog, whatever made them.
    pub snapshots: u64,
    /// Bytes of those snapshots' archives.
    pub bytes: u64,
    /// Unix time of the newest snapshot a backup of this server made.
    pub last_success: Option<i64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A recorder of its own, with every metric's help text and unit, the buckets of the
    /// backup duration, and `appsnap_build_info` set to 1 with the version as label.
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("appsnap_backup_duration_seconds".into()),
                &DURATION_BUCKETS,
            )
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let metrics = Metrics { recorder, handle };
        metrics.with(|| {
            describe_counter!("appsnap_backup_attempts_total", "Backups started.");
            describe_counter!(
                "appsnap_backup_successes_total",
                "Backups that made a snapshot."
            );
            describe_counter!("appsnap_backup_failures_total", "Backups that failed.");
            describe_histogram!(
                "appsnap_backup_duration_seconds",
                Unit::Seconds,
                "Time from the start of a backup to its end (stop, archive, start)."
            );
            describe_gauge!(
                "appsnap_backup_last_success_timestamp_seconds",
                Unit::Seconds,
                "Unix time of the app's newest snapshot made by a backup."
            );
            describe_gauge!("appsnap_snapshots", "Snapshots in the catalog.");
            describe_gauge!(
                "appsnap_snapshot_bytes",
                Unit::Bytes,
                "Bytes of the app's archives."
            );
            describe_counter!("appsnap_restore_attempts_total", "Restores started.");
            describe_counter!(
                "appsnap_restore_successes_total",
                "Restores that succeeded."
            );
            describe_counter!(
                "appsnap_restore_rollbacks_total",
                "Restores that failed after touching the app and were rolled back."
            );
            describe_counter!(
                "appsnap_policy_failures_total",
                "Policy calls that trapped, timed out or answered nonsense."
            );
            describe_counter!(
                "appsnap_notification_failures_total",
                "Notifications given up after their retries, or dropped from a full queue."
            );
            describe_counter!(
                "appsnap_offsite_copies_total",
                "Offsite copy attempts, by repository and outcome (done or failed)."
            );
            describe_gauge!(
                "appsnap_backup_root_free_bytes",
                Unit::Bytes,
                "Free space of the backup root's filesystem."
            );
            describe_gauge!("appsnap_build_info", "Always 1; the version is a label.");
            gauge!("appsnap_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        });
        metrics
    }

    /// Runs `f` with this recorder as the current thread's: the `counter!` and `gauge!`
    /// calls inside it land here, not in the process-global recorder.
    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// Counts an attempt in `appsnap_backup_attempts_total{app}`.
    pub fn backup_started(&self, app: &str) {
        self.with(|| {
            counter!("appsnap_backup_attempts_total", "app" => app.to_string()).increment(1)
        });
    }

    /// Counts a success or a failure, and records `took` in the duration histogram for
    /// both: a failed backup's time is observed too.
    pub fn backup_ended(&self, app: &str, ok: bool, took: Duration) {
        let app = app.to_string();
        self.with(|| {
            let outcome = if ok {
                "appsnap_backup_successes_total"
            } else {
                "appsnap_backup_failures_total"
            };
            counter!(outcome, "app" => app.clone()).increment(1);
            metrics::histogram!("appsnap_backup_duration_seconds", "app" => app)
                .record(took.as_secs_f64());
        });
    }

    /// Counts an attempt in `appsnap_restore_attempts_total{app}`.
    pub fn restore_started(&self, app: &str) {
        self.with(|| {
            counter!("appsnap_restore_attempts_total", "app" => app.to_string()).increment(1)
        });
    }

    /// Counts how a restore ended; a rollback counts whether or not it was complete.
    pub fn restore_ended(&self, app: &str, end: RestoreEnd) {
        let name = match end {
            RestoreEnd::Succeeded => "appsnap_restore_successes_total",
            RestoreEnd::RolledBack => "appsnap_restore_rollbacks_total",
            RestoreEnd::Refused => return,
        };
        self.with(|| counter!(name, "app" => app.to_string()).increment(1));
    }

    /// Counts one copy attempt by repository and outcome (`done` or `failed`): a copy
    /// that is retried counts once per attempt.
    pub fn copy_ended(&self, repository: &str, ok: bool) {
        let outcome = if ok { "done" } else { "failed" };
        self.with(|| {
            counter!(
                "appsnap_offsite_copies_total",
                "repository" => repository.to_string(),
                "outcome" => outcome
            )
            .increment(1)
        });
    }

    /// Counts a notice lost for `target`: given up after its retries, or dropped because
    /// the target's queue was full.
    pub fn notification_failed(&self, target: &str) {
        self.with(|| {
            counter!("appsnap_notification_failures_total", "target" => target.to_string())
                .increment(1)
        });
    }

    /// Counts a failed policy call; `kind` is the policy's kind (`retention`, `quota`,
    /// `schedule`).
    pub fn policy_failed(&self, policy: &str, kind: &str) {
        self.with(|| {
            counter!(
                "appsnap_policy_failures_total",
                "policy" => policy.to_string(),
                "kind" => kind.to_string()
            )
            .increment(1)
        });
    }

    /// The text a scrape gets, after setting the gauges from what is true now. An app left
    /// out keeps its last values, so the caller passes every app it has seen (zeros once
    /// it has no snapshot); without `root_free` the free-space gauge keeps its last value.
    pub fn render<'a>(
        &self,
        apps: impl IntoIterator<Item = (&'a str, AppGauges)>,
        root_free: Option<u64>,
    ) -> String {
        self.with(|| {
            for (app, g) in apps {
                gauge!("appsnap_snapshots", "app" => app.to_string()).set(g.snapshots as f64);
                gauge!("appsnap_snapshot_bytes", "app" => app.to_string()).set(g.bytes as f64);
                if let Some(t) = g.last_success {
                    gauge!("appsnap_backup_last_success_timestamp_seconds", "app" => app.to_string())
                        .set(t as f64);
                }
            }
            if let Some(free) = root_free {
                gauge!("appsnap_backup_root_free_bytes").set(free as f64);
            }
        });
        self.handle.render()
    }
}
