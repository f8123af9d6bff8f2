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
    /// The app whose snapshots (or copies) were shown to the policy.
    pub app_id: String,
    /// The repository whose copies were judged; absent: the local snapshots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The policy that judged. Absent when no retention applies: then no policy was
    /// asked, and every list is empty.
    pub policy: Option<String>,
    /// Nothing was deleted: the lists say what a real pass would have done.
    pub dry_run: bool,
    /// Deleted (or, in a dry run, would be), with the policy's reason. This is the
    /// decision: one pinned in the meantime is kept all the same, and a local delete
    /// that fails is only logged.
    pub deleted: Vec<Decision>,
    /// Kept by the policy's verdict, or because its answer did not name them.
    pub kept: Vec<Decision>,
    /// The policy said delete; a host rule kept them.
    pub protected: Vec<Decision>,
    /// Set when the policy failed: then nothing was deleted.
    pub error: Option<String>,
}

/// One snapshot in a `RetentionReport`, and why it is in that list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Decision {
    /// The appsnap snapshot id; for a repository, the id its copies were made of, never
    /// the repository's own snapshot id.
    pub snapshot_id: String,
    /// The policy's own words (or `no verdict: kept`); in `protected`, followed by the
    /// host rule that kept it.
    pub reason: String,
}

/// An origin as the policy interface spells it: its JSON name (`manual`, `scheduled`,
/// `pre-restore`, `imported`), or empty should it ever have none.
fn origin_name(origin: Origin) -> String {
    serde_json::to_value(origin)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// A local snapshot as a policy sees it: `created_at` in seconds since the epoch, `size`
/// the archive's bytes on disk (compressed; copies in a repository count their tar bytes).
fn info(s: &Snapshot) -> SnapshotInfo {
    SnapshotInfo {
        id: s.snapshot_id.clone(),
        app_id: s.app_id.clone(),
        created_at: s.facts.created_at.timestamp(),
        size: s.size_bytes,
        origin: origin_name(s.facts.origin),
        pinned: s.facts.pinned,
        // Every listed archive was checksummed when written or imported.
        verified: true,
    }
}

/// Snapshots no policy may delete, with why. `snapshots` is newest first.
/// The newest is protected even when unpinned, so that no answer can leave an app
/// without a snapshot; a pinned one gives `pinned` as its reason.
fn protected(snapshots: &[SnapshotInfo]) -> HashMap<String, &'static str> {
    let mut out = HashMap::new();
    for s in snapshots.iter().filter(|s| s.pinned) {
        out.insert(s.id.clone(), "pinned");
    }
    if let Some(newest) = snapshots.first() {
        out.entry(newest.id.clone())
            .or_insert("the newest verified snapshot");
    }
    out
}

/// The ids of an answer must be ones the policy was shown, each at most once.
/// Otherwise `Malformed`, which the callers treat as a failed call: nothing is deleted.
fn check_ids<'a>(
    shown: &[SnapshotInfo],
    ids: impl IntoIterator<Item = &'a String>,
) -> Result<(), PolicyError> {
    let known: HashSet<&str> = shown.iter().map(|s| s.id.as_str()).collect();
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
    /// The alert it raises is sent at most once an hour per policy and app, so that a
    /// policy failing on every call does not flood the alerts.
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
        let shown: Vec<SnapshotInfo> = self.list(Some(app_id))?.iter().map(info).collect();
        let report = self.judge(app_id, binding, &shown, dry_run).await?;
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

    /// Runs the retention policy bound to the app's copies in `repository` (after each
    /// copy there, and on demand). The policy is shown what the repository holds of the
    /// app, also copies other servers made; pins of local snapshots count there too. What
    /// it deletes is forgotten in the repository, and a prune follows.
    ///
    /// Errors: `InvalidId`, an unknown repository, a binding that cannot be used, a
    /// repository that cannot be listed, or a forget that fails (then no prune starts).
    /// The prune is a job of its own: this returns before it ends.
    pub async fn retention_at(
        self: &Arc<Self>,
        app_id: &str,
        repository: &str,
        dry_run: bool,
    ) -> Result<RetentionReport, ManagerError> {
        crate::ids::validate("app id", app_id)?;
        let repo = self.repos.get(repository)?;
        let binding = self
            .policies
            .effective_at(app_id, Kind::Retention, repository);
        let shown = match &binding {
            // No policy: the repository is not even read.
            None => Vec::new(),
            Some(_) => self.remote_infos(app_id, repository).await?,
        };
        let mut report = self.judge(app_id, binding, &shown, dry_run).await?;
        report.repository = Some(repo.name.clone());
        if dry_run || report.deleted.is_empty() {
            return Ok(report);
        }
        // A pin set since the policy decided still protects.
        let pinned = self.store.pinned_ids();
        let ids: Vec<String> = report
            .deleted
            .iter()
            .map(|d| d.snapshot_id.clone())
            .filter(|id| !pinned.contains(id))
            .collect();
        self.forget_at(&repo, ids).await?;
        Ok(report)
    }

    /// The app's copies in `repository` as a policy sees them, newest first, one per
    /// appsnap snapshot (a snapshot copied twice is one). Only this server's copies: the
    /// copies of another server sharing the repository are its own policies' business.
    /// A copy counts as pinned when the local snapshot of the same id is; of a snapshot
    /// copied twice, one copy stands for both (its tar bytes are its size).
    pub(super) async fn remote_infos(
        &self,
        app_id: &str,
        repository: &str,
    ) -> Result<Vec<SnapshotInfo>, ManagerError> {
        let (remote, _) = self
            .repos
            .copies_of(&self.store, repository, Some(app_id))
            .await?;
        let pinned = self.store.pinned_ids();
        let mut seen = HashSet::new();
        Ok(remote
            .iter()
            .rev()
            .filter(|r| seen.insert(r.snapshot_id.clone()))
            .map(|r| SnapshotInfo {
                id: r.snapshot_id.clone(),
                app_id: r.app_id.clone(),
                created_at: r.created_at.timestamp(),
                size: r.tar_bytes,
                origin: origin_name(r.origin),
                pinned: pinned.contains(&r.snapshot_id),
                // Every listed copy was checked against the tar stream's sha256 when made.
                verified: true,
            })
            .collect())
    }

    /// Asks `binding`'s retention policy about `shown` (newest first) and sorts its
    /// verdicts into the report, after the host's rules. Deletes nothing.
    /// A call that fails (`Failed`, `Malformed`) is counted against the policy and ends
    /// in `report.error` with every list empty; other policy errors are returned.
    async fn judge(
        &self,
        app_id: &str,
        binding: Option<Binding>,
        shown: &[SnapshotInfo],
        dry_run: bool,
    ) -> Result<RetentionReport, ManagerError> {
        let mut report = RetentionReport {
            app_id: app_id.into(),
            dry_run,
            ..RetentionReport::default()
        };
        let Some(binding) = binding else {
            return Ok(report);
        };
        report.policy = Some(binding.policy.clone());
        let verdicts = match self.decide_retention(&binding, shown).await {
            Ok(v) => v,
            Err(e @ (PolicyError::Failed(_) | PolicyError::Malformed(_))) => {
                self.policy_failed(&binding.policy, Kind::Retention, app_id, &e);
                report.error = Some(e.to_string());
                return Ok(report);
            }
            Err(e) => return Err(ManagerError::Policy(e)),
        };
        let guard = protected(shown);
        let by_id: HashMap<&str, &Verdict> = verdicts.iter().map(|v| (v.id.as_str(), v)).collect();
        for s in shown {
            let id = s.id.clone();
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
        Ok(report)
    }

    /// One call of the retention policy, on a blocking thread (the sandbox runs
    /// synchronously, for up to its time limit). The policy gets `now` in seconds and
    /// the binding's config as JSON text; the ids it answers are checked.
    async fn decide_retention(
        &self,
        binding: &Binding,
        shown: &[SnapshotInfo],
    ) -> Result<Vec<Verdict>, PolicyError> {
        let compiled = self.resolve_blocking(&binding.policy).await?;
        let infos = shown.to_vec();
        let config = binding.config.to_string();
        let now = Utc::now().timestamp();
        let verdicts = tokio::task::spawn_blocking(move || {
            shared().retention(&compiled, now, &config, &infos)
        })
        .await
        .map_err(|e| PolicyError::Failed(e.to_string()))??;
        check_ids(shown, verdicts.iter().map(|v| &v.id))?;
        Ok(verdicts)
    }

    /// The compiled current version of policy `name`, looked up on a blocking thread:
    /// the first use of a version compiles it, which can take a while. A panic there is
    /// `Failed`; an unknown name is `NotFound`.
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
    /// `incoming` is the file data the backup will read (a metadata walk's estimate,
    /// uncompressed).
    /// Without a binding, or when the policy fails, the backup is admitted and nothing
    /// is evicted: a broken policy must never stop backups. Protected snapshots are
    /// dropped from the evictions; `after_backup` rechecks pins before each delete.
    pub(super) async fn quota_admit(
        &self,
        app_id: &str,
        incoming: u64,
    ) -> Result<Vec<String>, ManagerError> {
        let Some(binding) = self.policies.effective(app_id, Kind::Quota) else {
            return Ok(Vec::new());
        };
        let shown: Vec<SnapshotInfo> = self.list(Some(app_id))?.iter().map(info).collect();
        let usage = self.local_usage(app_id)?;
        let decided = self.ask_quota(&binding, usage, incoming, &shown).await;
        self.admission(&binding, app_id, decided, &shown)
    }

    /// What the copy of `incoming` tar bytes to `repository` may do, by the quota bound
    /// to the app's copies there: the copies to forget once it is done, or `QuotaDenied`.
    /// The policy sees the copies' tar stream sizes (`app_bytes` is their sum) and the
    /// repository's stored bytes as `total_bytes`; `disk_free` and `disk_size` are 0
    /// (unknown for a bucket).
    pub(super) async fn quota_admit_at(
        &self,
        app_id: &str,
        repository: &str,
        incoming: u64,
    ) -> Result<Vec<String>, ManagerError> {
        let Some(binding) = self.policies.effective_at(app_id, Kind::Quota, repository) else {
            return Ok(Vec::new());
        };
        let shown = self.remote_infos(app_id, repository).await?;
        let usage = Usage {
            app_bytes: shown.iter().map(|s| s.size).sum(),
            total_bytes: self.repos.bytes(repository).await?,
            disk_free: 0,
            disk_size: 0,
        };
        let decided = self.ask_quota(&binding, usage, incoming, &shown).await;
        self.admission(&binding, app_id, decided, &shown)
    }

    /// A quota's answer, after the host's rules: protected snapshots are never evicted,
    /// and a policy that fails admits (it must not block backups).
    fn admission(
        &self,
        binding: &Binding,
        app_id: &str,
        decided: Result<Admission, PolicyError>,
        shown: &[SnapshotInfo],
    ) -> Result<Vec<String>, ManagerError> {
        match decided {
            Ok(Admission::Admit) => Ok(Vec::new()),
            Ok(Admission::AdmitAfterEvicting(ids)) => {
                let guard = protected(shown);
                Ok(ids
                    .into_iter()
                    .filter(|id| !guard.contains_key(id))
                    .collect())
            }
            Ok(Admission::Deny(reason)) => Err(ManagerError::QuotaDenied {
                policy: binding.policy.clone(),
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

    /// The usage a quota policy sees for the local snapshots: the app's and all apps'
    /// archive bytes, and the backup filesystem's free and total bytes. Fails only when
    /// the filesystem cannot be measured (`statvfs`).
    fn local_usage(&self, app_id: &str) -> Result<Usage, ManagerError> {
        let stats = self.stats()?;
        Ok(Usage {
            app_bytes: stats.apps.get(app_id).map_or(0, |a| a.bytes),
            total_bytes: stats.total_bytes,
            disk_free: stats.disk_free_bytes,
            disk_size: stats.disk_total_bytes,
        })
    }

    /// Calls the quota policy of `binding`, checking the ids it answers. Like retention,
    /// the call runs on a blocking thread; the host rules are applied by the caller.
    async fn ask_quota(
        &self,
        binding: &Binding,
        usage: Usage,
        incoming: u64,
        shown: &[SnapshotInfo],
    ) -> Result<Admission, PolicyError> {
        let compiled = self.resolve_blocking(&binding.policy).await?;
        let infos = shown.to_vec();
        let config = binding.config.to_string();
        let now = Utc::now().timestamp();
        let admission = tokio::task::spawn_blocking(move || {
            shared().quota(&compiled, now, &config, usage, incoming, &infos)
        })
        .await
        .map_err(|e| PolicyError::Failed(e.to_string()))??;
        if let Admission::AdmitAfterEvicting(ids) = &admission {
            check_ids(shown, ids)?;
        }
        Ok(admission)
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

    /// The schedule policy's next run after `last`, asked on a blocking thread (the
    /// policy works in seconds since the epoch); `None`: never. An answer that is not
    /// after `last` is `Malformed`: it would start a backup on every tick.
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
                let shown: Vec<SnapshotInfo> = self.list(Some(app_id))?.iter().map(info).collect();
                let incoming = shown.first().map_or(0, |s| s.size);
                let a = self
                    .ask_quota(&binding, self.local_usage(app_id)?, incoming, &shown)
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

    /// The state of every app's schedule (last run, next run, last error) as the
    /// scheduler last saved it, by app id. An app whose schedule was unbound since keeps
    /// its last entry.
    pub fn schedules(&self) -> std::collections::BTreeMap<String, ScheduleState> {
        self.policies.schedules()
    }
}
