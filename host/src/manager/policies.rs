//! Policies acting on the local snapshots: retention (after each backup, with the
//! quota's evictions, and on demand), dry runs, and the schedules. The decisions, and the
//! host rules no policy can break, are the `rules` component's; this applies them. (A
//! repository's retention forgets copies: it is offsite work, in `offsite`.)
//!
//! Quota is asked before each backup; its evictions happen only after the new snapshot is
//! complete. Retention runs after each successful backup and on demand. Schedules are
//! evaluated by [`BackupManager::scheduler_tick`], which the service calls periodically and
//! tests call with the time they want.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::BackupManager;
use super::error::ManagerError;
use super::rules::RetentionReport;
use crate::policy::engine::Admission;
use crate::policy::{Binding, Bindings, Kind, ScheduleState};

impl BackupManager {
    /// Replaces the bindings of `app` (or the default's, for `None`) as a whole, each one
    /// checked by its policy; nothing is stored unless all are accepted. A binding may
    /// only name configured repositories (`UnknownRepository`, nothing stored).
    pub async fn bind(&self, app: Option<&str>, bindings: Bindings) -> Result<(), ManagerError> {
        if let Some(app) = app {
            crate::ids::validate("app id", app)?;
        }
        for name in bindings.repositories.keys() {
            self.repository(name)?;
        }
        let registry = Arc::clone(&self.policies);
        let app = app.map(str::to_string);
        tokio::task::spawn_blocking(move || registry.bind(app.as_deref(), bindings))
            .await
            .map_err(|e| crate::policy::PolicyError::Failed(e.to_string()))??;
        Ok(())
    }

    /// Runs the app's retention policy on its local snapshots (or `with`, for a dry run
    /// of another binding).
    ///
    /// Without a binding the report names no policy and nothing happens. A policy that
    /// traps, times out or answers nonsense deletes nothing: the report carries the
    /// error and the call still succeeds. `Err` is for a bad app id or a binding that
    /// cannot be used (its policy gone, or of another kind). Each delete is taken under
    /// the catalog lock and skips a snapshot pinned since the policy decided; a delete
    /// that fails is logged and the others go on.
    pub async fn retention(
        &self,
        app_id: &str,
        with: Option<Binding>,
        dry_run: bool,
    ) -> Result<RetentionReport, ManagerError> {
        crate::ids::validate("app id", app_id)?;
        let binding = with.or_else(|| self.policies.effective(app_id, Kind::Retention));
        let rules = self.rules();
        let shown = rules.local_infos(app_id);
        let report = rules.judge(app_id, binding, &shown, dry_run).await?;
        if !dry_run {
            for d in &report.deleted {
                match self.store.delete_unless_pinned(&d.snapshot_id) {
                    Ok(false) => {}
                    Ok(true) => {
                        tracing::info!(app = app_id, snapshot = %d.snapshot_id, reason = %d.reason, "deleted by retention policy")
                    }
                    Err(e) => {
                        tracing::error!(app = app_id, snapshot = %d.snapshot_id, "retention delete failed: {e}")
                    }
                }
            }
        }
        Ok(report)
    }

    /// After a successful backup: the quota's evictions, then retention. Failures here
    /// never fail the backup; they are logged and counted. Evictions come first, so that
    /// retention judges what is left; each skips a snapshot pinned since the quota
    /// answered.
    pub(super) async fn after_backup(&self, app_id: &str, evict: Vec<String>) {
        for id in evict {
            match self.store.delete_unless_pinned(&id) {
                Ok(false) => {}
                Ok(true) => tracing::info!(app = app_id, snapshot = %id, "evicted by quota policy"),
                Err(e) => {
                    tracing::error!(app = app_id, snapshot = %id, "quota eviction failed: {e}")
                }
            }
        }
        if let Err(e) = self.retention(app_id, None, false).await {
            tracing::error!(app = app_id, "retention after backup failed: {e}");
        }
    }

    /// The simple count rule of `max_snapshots_per_app`: oldest unpinned go first. A
    /// snapshot whose copy to a repository is still owed (pending or running) stays until
    /// it is made: with the history kept in a repository and few archives locally, the
    /// count must not delete the only source of a copy that waits to retry.
    pub(super) fn enforce_count(&self, app_id: &str) {
        let max = self.config.max_snapshots_per_app;
        if max == 0 {
            return;
        }
        use crate::catalog::CopyState;
        let owed = |s: &crate::catalog::Snapshot| {
            s.facts
                .copies
                .values()
                .any(|c| matches!(c.state, CopyState::Pending | CopyState::Copying))
        };
        let doomed: Vec<String> = self.store.read(|catalog| {
            catalog
                .list(Some(app_id))
                .into_iter()
                .filter(|s| !s.facts.pinned)
                .skip(max)
                .filter(|s| !owed(s))
                .map(|s| s.snapshot_id.clone())
                .collect()
        });
        for id in doomed {
            match self.store.delete_unless_pinned(&id) {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(app = app_id, snapshot = %id, "deleted by max_snapshots_per_app")
                }
                Err(e) => {
                    tracing::error!(app = app_id, snapshot = %id, "retention delete failed: {e}")
                }
            }
        }
    }

    /// The staleness watch: each app's newest snapshot made by a backup of this server,
    /// against its `stale_after_hours`. Runs with the scheduler, and alerts also when the
    /// schedules themselves stopped starting backups.
    pub fn watch_staleness(&self, now: DateTime<Utc>) {
        let apps: Vec<(String, DateTime<Utc>, u64)> = self
            .store
            .last_backups()
            .into_iter()
            .map(|(app, at)| {
                let hours = self.config.stale_after_hours_for(&app);
                (app, at, hours)
            })
            .collect();
        self.notifier.staleness(now, &apps);
    }

    /// What `policy` would decide for `app_id` with `config` (default: the app's bound
    /// config when it uses this policy), changing nothing.
    ///
    /// Retention: the report of a dry pass over the local snapshots (a failing policy is
    /// still counted against its health). Quota: the policy's raw answer for a backup
    /// the size of the newest snapshot (`incoming_estimate`), before the host rules
    /// spare protected snapshots. Schedule: the next run after the app's last one (or
    /// after now, for an app never run), and `next_runs`, the five from it. A quota or
    /// schedule call that fails is the error (`Policy`).
    pub async fn dry_run(
        &self,
        policy: &str,
        app_id: &str,
        config: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ManagerError> {
        crate::ids::validate("app id", app_id)?;
        if config.as_ref().is_some_and(|c| !c.is_object()) {
            return Err(crate::policy::PolicyError::Config {
                policy: policy.into(),
                reason: "a policy's config is a JSON object".into(),
            }
            .into());
        }
        let compiled = self.rules().resolve(policy).await?;
        // Settings given here are checked as a binding's would be: a retention pass over
        // settings the policy refuses would decide nothing and say nothing, so its report
        // says the refusal instead (its `error`; nothing would be deleted).
        let refused = match &config {
            Some(c) if compiled.kind == Kind::Retention => {
                let (checked, text) = (Arc::clone(&compiled), c.to_string());
                tokio::task::spawn_blocking(move || {
                    crate::policy::engine::shared().validate_config(&checked, &text)
                })
                .await
                .map_err(|e| crate::policy::PolicyError::Failed(e.to_string()))??
                .err()
            }
            _ => None,
        };
        if let Some(reason) = refused {
            let report = RetentionReport {
                app_id: app_id.into(),
                policy: Some(policy.into()),
                dry_run: true,
                error: Some(format!("the policy refuses these settings: {reason}")),
                ..Default::default()
            };
            return Ok(serde_json::to_value(report).expect("report"));
        }
        let config = config
            .or_else(|| {
                self.policies
                    .effective(app_id, compiled.kind)
                    .filter(|b| b.policy == policy)
                    .map(|b| b.config)
            })
            .unwrap_or(serde_json::Value::Object(Default::default()));
        let binding = Binding {
            policy: policy.into(),
            config,
        };
        match compiled.kind {
            Kind::Retention => {
                let report = self.retention(app_id, Some(binding), true).await?;
                Ok(serde_json::to_value(report).expect("report"))
            }
            Kind::Quota => {
                let rules = self.rules();
                let shown = rules.local_infos(app_id);
                let incoming = shown.first().map_or(0, |s| s.size);
                let a = rules
                    .ask_quota(&binding, rules.local_usage(app_id)?, incoming, &shown)
                    .await
                    .map_err(ManagerError::Policy)?;
                let decision = match a {
                    Admission::Admit => serde_json::json!({"decision": "admit"}),
                    Admission::AdmitAfterEvicting(ids) => {
                        serde_json::json!({"decision": "admit-after-evicting", "evict": ids})
                    }
                    Admission::Deny(reason) => {
                        serde_json::json!({"decision": "deny", "reason": reason})
                    }
                };
                Ok(
                    serde_json::json!({"app_id": app_id, "policy": policy, "incoming_estimate": incoming, "result": decision}),
                )
            }
            Kind::Schedule => {
                let state = self.policies.schedule_state(app_id);
                let now = Utc::now();
                let rules = self.rules();
                let next = rules
                    .next_run(&binding, now, state.last_run.or(Some(now)))
                    .await
                    .map_err(ManagerError::Policy)?;
                // And the four after it, each asked as if the one before had run.
                let mut next_runs: Vec<DateTime<Utc>> = next.into_iter().collect();
                while let Some(&last) = next_runs.last().filter(|_| next_runs.len() < 5) {
                    match rules.next_run(&binding, last, Some(last)).await {
                        Ok(Some(t)) => next_runs.push(t),
                        Ok(None) => break,
                        Err(e) => return Err(ManagerError::Policy(e)),
                    }
                }
                Ok(serde_json::json!({"app_id": app_id, "policy": policy,
                    "last_run": state.last_run, "next_run": next, "next_runs": next_runs}))
            }
        }
    }

    /// The state of every app's schedule (last run, next run, last error) as the
    /// scheduler last saved it, by app id. An app whose schedule was unbound since keeps
    /// its last entry.
    pub fn schedules(&self) -> std::collections::BTreeMap<String, ScheduleState> {
        self.policies.schedules()
    }
}
