//! Where policy decisions meet the data, and the rules no policy can break:
//! - pinned snapshots and the newest verified snapshot of an app are never deleted;
//! - a policy can only delete snapshots it was shown — an answer naming others (or naming
//!   one twice) is nonsense, and nonsense deletes nothing;
//! - a trap, a timeout or nonsense means "delete nothing" (retention) or "admit"
//!   (quota), with the error logged and counted against the policy (`GET /api/v1/policies`).
//!
//! Quota is asked before each backup; its evictions happen only after the new snapshot is
//! complete. Retention runs after each successful backup and on demand. Schedules are
//! evaluated by [`BackupManager::scheduler_tick`], which the service calls periodically and
//! tests call with the time they want.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{BackupManager, ManagerError, Started};
use crate::catalog::{Origin, Snapshot};
use crate::policy::engine::{Admission, SnapshotInfo, Usage, Verdict};
use crate::policy::{Binding, Kind, PolicyError, ScheduleState, shared};

/// What a retention pass decided (and, unless a dry run, did).
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RetentionReport {
    pub app_id: String,
    pub policy: Option<String>,
    pub dry_run: bool,
    /// Deleted (or, in a dry run, would be), with the policy's reason.
    pub deleted: Vec<Decision>,
    pub kept: Vec<Decision>,
    /// The policy said delete; a host rule kept them.
    pub protected: Vec<Decision>,
    /// Set when the policy failed: then nothing was deleted.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Decision {
    pub snapshot_id: String,
    pub reason: String,
}

fn info(s: &Snapshot) -> SnapshotInfo {
    SnapshotInfo {
        id: s.snapshot_id.clone(),
        app_id: s.app_id.clone(),
        created_at: s.created_at.timestamp(),
        size: s.size_bytes,
        origin: serde_json::to_value(s.origin)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        pinned: s.pinned,
        // Every listed archive was checksummed when written or imported.
        verified: true,
    }
}

/// Snapshots no policy may delete, with why.
fn protected(snapshots: &[Snapshot]) -> HashMap<String, &'static str> {
    let mut out = HashMap::new();
    for s in snapshots.iter().filter(|s| s.pinned) {
        out.insert(s.snapshot_id.clone(), "pinned");
    }
    if let Some(newest) = snapshots.first() {
        out.entry(newest.snapshot_id.clone())
            .or_insert("the newest verified snapshot");
    }
    out
}

/// The ids of an answer must be ones the policy was shown, each at most once.
fn check_ids<'a>(
    shown: &[Snapshot],
    ids: impl IntoIterator<Item = &'a String>,
) -> Result<(), PolicyError> {
    let known: HashSet<&str> = shown.iter().map(|s| s.snapshot_id.as_str()).collect();
    let mut seen = HashSet::new();
    for id in ids {
        if !known.contains(id.as_str()) {
            return Err(PolicyError::Malformed(format!(
                "it named `{id}`, a snapshot it was not shown"
            )));
        }
        if !seen.insert(id.clone()) {
            return Err(PolicyError::Malformed(format!("it named `{id}` twice")));
        }
    }
    Ok(())
}

impl BackupManager {
    /// A policy call that failed: counted in the policy's health, logged and in metrics.
    fn policy_failed(&self, policy: &str, kind: Kind, app: &str, error: &PolicyError) {
        self.policies.record_failure(policy, app, error);
        self.metrics.policy_failed(policy, kind.as_str());
        self.notifier.policy_failed(
            policy,
            app,
            format!("The {kind} policy `{policy}` failed for {app}; it decided nothing"),
            error.to_string(),
        );
    }
}

impl BackupManager {
    /// Runs the app's retention policy (or `with`, for a dry run of another binding).
    pub async fn retention(
        &self,
        app_id: &str,
        with: Option<Binding>,
        dry_run: bool,
    ) -> Result<RetentionReport, ManagerError> {
        crate::ids::validate("app id", app_id)?;
        let binding = with.or_else(|| self.policies.effective(app_id, Kind::Retention));
        let mut report = RetentionReport {
            app_id: app_id.into(),
            dry_run,
            ..RetentionReport::default()
        };
        let Some(binding) = binding else {
            return Ok(report);
        };
        report.policy = Some(binding.policy.clone());
        let snapshots = self.list(Some(app_id))?;
        let verdicts = self.decide_retention(&binding, &snapshots).await;
        let verdicts = match verdicts {
            Ok(v) => v,
            Err(e @ (PolicyError::Failed(_) | PolicyError::Malformed(_))) => {
                self.policy_failed(&binding.policy, Kind::Retention, app_id, &e);
                report.error = Some(e.to_string());
                return Ok(report);
            }
            Err(e) => return Err(ManagerError::Policy(e)),
        };
        let guard = protected(&snapshots);
        let by_id: HashMap<&str, &Verdict> = verdicts.iter().map(|v| (v.id.as_str(), v)).collect();
        for s in &snapshots {
            let id = s.snapshot_id.clone();
            match by_id.get(id.as_str()) {
                Some(v) if !v.keep => match guard.get(&id) {
                    Some(why) => report.protected.push(Decision {
                        snapshot_id: id,
                        reason: format!("{} (kept: {why})", v.reason),
                    }),
                    None => report.deleted.push(Decision {
                        snapshot_id: id,
                        reason: v.reason.clone(),
                    }),
                },
                Some(v) => report.kept.push(Decision {
                    snapshot_id: id,
                    reason: v.reason.clone(),
                }),
                None => report.kept.push(Decision {
                    snapshot_id: id,
                    reason: "no verdict: kept".into(),
                }),
            }
        }
        if !dry_run {
            for d in &report.deleted {
                match self.delete_unless_pinned(&d.snapshot_id) {
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

    async fn decide_retention(
        &self,
        binding: &Binding,
        snapshots: &[Snapshot],
    ) -> Result<Vec<Verdict>, PolicyError> {
        let compiled = self.resolve_blocking(&binding.policy).await?;
        let infos: Vec<SnapshotInfo> = snapshots.iter().map(info).collect();
        let config = binding.config.to_string();
        let now = Utc::now().timestamp();
        let verdicts = tokio::task::spawn_blocking(move || {
            shared().retention(&compiled, now, &config, &infos)
        })
        .await
        .map_err(|e| PolicyError::Failed(e.to_string()))??;
        check_ids(snapshots, verdicts.iter().map(|v| &v.id))?;
        Ok(verdicts)
    }

    pub(super) async fn resolve_blocking(
        &self,
        name: &str,
    ) -> Result<Arc<crate::policy::Compiled>, PolicyError> {
        let (registry, name) = (Arc::clone(&self.policies), name.to_string());
        tokio::task::spawn_blocking(move || registry.resolve(&name))
            .await
            .map_err(|e| PolicyError::Failed(e.to_string()))?
    }

    /// Asks the app's quota policy about a backup of about `incoming` bytes. Returns the
    /// snapshots to evict once the new one is complete; a denial is `QuotaDenied`.
    pub(super) async fn quota_admit(
        &self,
        app_id: &str,
        incoming: u64,
    ) -> Result<Vec<String>, ManagerError> {
        let Some(binding) = self.policies.effective(app_id, Kind::Quota) else {
            return Ok(Vec::new());
        };
        let snapshots = self.list(Some(app_id))?;
        let decided = self.ask_quota(&binding, app_id, incoming, &snapshots).await;
        match decided {
            Ok(Admission::Admit) => Ok(Vec::new()),
            Ok(Admission::AdmitAfterEvicting(ids)) => {
                let guard = protected(&snapshots);
                Ok(ids
                    .into_iter()
                    .filter(|id| !guard.contains_key(id))
                    .collect())
            }
            Ok(Admission::Deny(reason)) => Err(ManagerError::QuotaDenied {
                policy: binding.policy,
                reason,
            }),
            Err(e @ (PolicyError::Failed(_) | PolicyError::Malformed(_))) => {
                self.policy_failed(&binding.policy, Kind::Quota, app_id, &e);
                Ok(Vec::new())
            }
            Err(e) => {
                // A binding whose policy vanished must not block backups either.
                self.policy_failed(&binding.policy, Kind::Quota, app_id, &e);
                Ok(Vec::new())
            }
        }
    }

    /// Calls the quota policy of `binding` for `app_id`, checking the ids it answers.
    async fn ask_quota(
        &self,
        binding: &Binding,
        app_id: &str,
        incoming: u64,
        snapshots: &[Snapshot],
    ) -> Result<Admission, PolicyError> {
        let stats = self
            .stats()
            .map_err(|e| PolicyError::Failed(e.to_string()))?;
        let usage = Usage {
            app_bytes: stats.apps.get(app_id).map_or(0, |a| a.bytes),
            total_bytes: stats.total_bytes,
            disk_free: stats.disk_free_bytes,
            disk_size: stats.disk_total_bytes,
        };
        let compiled = self.resolve_blocking(&binding.policy).await?;
        let infos: Vec<SnapshotInfo> = snapshots.iter().map(info).collect();
        let config = binding.config.to_string();
        let now = Utc::now().timestamp();
        let admission = tokio::task::spawn_blocking(move || {
            shared().quota(&compiled, now, &config, usage, incoming, &infos)
        })
        .await
        .map_err(|e| PolicyError::Failed(e.to_string()))??;
        if let Admission::AdmitAfterEvicting(ids) = &admission {
            check_ids(snapshots, ids)?;
        }
        Ok(admission)
    }

    /// After a successful backup: the quota's evictions, then retention. Failures here
    /// never fail the backup; they are logged and counted.
    pub(super) async fn after_backup(&self, app_id: &str, evict: Vec<String>) {
        for id in evict {
            match self.delete_unless_pinned(&id) {
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
                .next_run(&binding, now, state.last_run.or(Some(now)))
                .await;
            let next = match next {
                Ok(n) => n,
                Err(e) => {
                    self.policy_failed(&binding.policy, Kind::Schedule, &app, &e);
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
                        state.next_run =
                            self.next_run(&binding, now, Some(now)).await.ok().flatten();
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

    async fn next_run(
        &self,
        binding: &Binding,
        now: DateTime<Utc>,
        last: Option<DateTime<Utc>>,
    ) -> Result<Option<DateTime<Utc>>, PolicyError> {
        let compiled = self.resolve_blocking(&binding.policy).await?;
        let config = binding.config.to_string();
        let (now_s, last_s) = (now.timestamp(), last.map(|t| t.timestamp()));
        let next = tokio::task::spawn_blocking(move || {
            shared().next_run(&compiled, now_s, &config, last_s)
        })
        .await
        .map_err(|e| PolicyError::Failed(e.to_string()))??;
        match next {
            Some(t) if last_s.is_some_and(|l| t <= l) => Err(PolicyError::Malformed(format!(
                "next run {t} is not after the last run"
            ))),
            Some(t) => Ok(DateTime::from_timestamp(t, 0)),
            None => Ok(None),
        }
    }

    /// What `policy` would decide for `app_id` with `config` (default: the app's bound
    /// config when it uses this policy), changing nothing.
    pub async fn dry_run(
        &self,
        policy: &str,
        app_id: &str,
        config: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ManagerError> {
        crate::ids::validate("app id", app_id)?;
        let compiled = self.resolve_blocking(policy).await?;
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
                let snapshots = self.list(Some(app_id))?;
                let incoming = snapshots.first().map_or(0, |s| s.size_bytes);
                let a = self
                    .ask_quota(&binding, app_id, incoming, &snapshots)
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
                    .next_run(&binding, now, state.last_run.or(Some(now)))
                    .await
                    .map_err(ManagerError::Policy)?;
                Ok(
                    serde_json::json!({"app_id": app_id, "policy": policy, "last_run": state.last_run, "next_run": next}),
                )
            }
        }
    }

    /// Sets `pinned` and/or `note` of a snapshot.
    pub fn patch(
        &self,
        snapshot_id: &str,
        pinned: Option<bool>,
        note: Option<String>,
    ) -> Result<Snapshot, ManagerError> {
        crate::ids::validate("snapshot id", snapshot_id)?;
        let mut catalog = self.catalog.lock().expect("catalog lock");
        let s = catalog
            .get_mut(snapshot_id)
            .ok_or_else(|| ManagerError::SnapshotNotFound(snapshot_id.into()))?;
        if let Some(p) = pinned {
            s.pinned = p;
        }
        if let Some(n) = note {
            s.note = (!n.is_empty()).then_some(n);
        }
        let out = s.clone();
        // The sidecar first: it is what survives a rebuild of the catalog.
        crate::catalog::write_sidecar(&out).map_err(super::io_err(format!(
            "cannot save the pin and note of {snapshot_id}"
        )))?;
        catalog.save()?;
        Ok(out)
    }

    pub fn schedules(&self) -> std::collections::BTreeMap<String, ScheduleState> {
        self.policies.schedules()
    }
}
