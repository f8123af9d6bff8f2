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

use super::rules::RetentionReport;
use super::{BackupManager, ManagerError, Started};
use crate::catalog::Origin;
use crate::policy::engine::Admission;
use crate::policy::{Binding, Kind, ScheduleState};

impl BackupManager {
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

    /// The staleness watch: each app's newest snapshot made by a backup of this server,
    /// against its `stale_after_hours`. Runs with the scheduler, and alerts also when the
    /// schedules themselves stopped starting backups.
    pub fn watch_staleness(&self, now: DateTime<Utc>) {
        let apps: Vec<(String, DateTime<Utc>, u64)> = self
            .store
            .last_backups()
            .into_iter()
            .map(|(app, at)| {
                let hours = self
                    .config
                    .apps
                    .get(&app)
                    .and_then(|a| a.stale_after_hours)
                    .unwrap_or(self.config.stale_after_hours);
                (app, at, hours)
            })
            .collect();
        self.notifier.staleness(now, &apps);
    }

    /// One pass of the scheduler at time `now`: starts the backups that are due (at most
    /// one per app: a busy app is tried again at the next tick). A schedule seen for the
    /// first time starts counting from `now`; after downtime, a missed run is caught up
    /// once, not once per missed slot.
    ///
    /// Returns each backup started, with its app, for the caller to await. A schedule
    /// policy that fails records its error in the app's state and is counted; a backup
    /// that cannot start for another reason than `Busy` raises a "backup missed" alert
    /// and counts as the run (no retry until the next slot). Each app's state is saved
    /// after its turn; a save that fails is logged.
    pub async fn scheduler_tick(self: &Arc<Self>, now: DateTime<Utc>) -> Vec<(String, Started)> {
        self.watch_staleness(now);
        // A default schedule covers every app: those with snapshots, and those Docker
        // runs that have none yet (a new app is protected from its first day).
        let known: Vec<String> = {
            let mut apps: Vec<String> = self
                .list(None)
                .unwrap_or_default()
                .into_iter()
                .map(|s| s.app_id)
                .collect();
            match self.docker.list_apps().await {
                Ok(running) => apps.extend(running),
                Err(e) => tracing::warn!("cannot list Docker's apps for the schedules: {e}"),
            }
            apps
        };
        let mut started = Vec::new();
        for app in self.policies.scheduled_apps(known) {
            let Some(binding) = self.policies.effective(&app, Kind::Schedule) else {
                continue;
            };
            let mut state = self.policies.schedule_state(&app);
            let next = self
                .rules()
                .next_run(&binding, now, state.last_run.or(Some(now)))
                .await;
            let next = match next {
                Ok(n) => n,
                Err(e) => {
                    self.rules()
                        .policy_failed(&binding.policy, Kind::Schedule, &app, &e);
                    state.last_error = Some(e.to_string());
                    let _ = self.policies.set_schedule_state(&app, state);
                    continue;
                }
            };
            if state.last_run.is_none() {
                state.last_run = Some(now);
            }
            state.next_run = next;
            if next.is_some_and(|t| t <= now) {
                match self
                    .start_backup(&app, Origin::Scheduled, Some("scheduled".into()))
                    .await
                {
                    Ok(s) => {
                        tracing::info!(app = %app, "scheduled backup started");
                        state.last_run = Some(now);
                        state.last_error = None;
                        state.next_run = self
                            .rules()
                            .next_run(&binding, now, Some(now))
                            .await
                            .ok()
                            .flatten();
                        started.push((app.clone(), s));
                    }
                    Err(ManagerError::Busy { .. }) => {} // next tick
                    Err(e) => {
                        tracing::error!(app = %app, "scheduled backup could not start: {e}");
                        self.notifier.send(crate::notify::Notice::new(
                            crate::notify::Event::BackupMissed,
                            Some(&app),
                            format!("The scheduled backup of {app} could not start"),
                            e.to_string(),
                        ));
                        state.last_error = Some(e.to_string());
                        state.last_run = Some(now);
                    }
                }
            }
            if let Err(e) = self.policies.set_schedule_state(&app, state) {
                tracing::error!(app = %app, "cannot save schedule state: {e}");
            }
        }
        started
    }

    /// What `policy` would decide for `app_id` with `config` (default: the app's bound
    /// config when it uses this policy), changing nothing.
    ///
    /// Retention: the report of a dry pass over the local snapshots (a failing policy is
    /// still counted against its health). Quota: the policy's raw answer for a backup
    /// the size of the newest snapshot (`incoming_estimate`), before the host rules
    /// spare protected snapshots. Schedule: the next run after the app's last one (or
    /// after now, for an app never run). A quota or schedule call that fails is the
    /// error (`Policy`).
    pub async fn dry_run(
        &self,
        policy: &str,
        app_id: &str,
        config: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ManagerError> {
        crate::ids::validate("app id", app_id)?;
        let compiled = self.rules().resolve(policy).await?;
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
                let next = self
                    .rules()
                    .next_run(&binding, now, state.last_run.or(Some(now)))
                    .await
                    .map_err(ManagerError::Policy)?;
                Ok(
                    serde_json::json!({"app_id": app_id, "policy": policy, "last_run": state.last_run, "next_run": next}),
                )
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
