//! Rules: what the policies decide, after the host's rules no policy can break. Decides
//! only: nothing here deletes, forgets or starts anything (the operations act on the
//! answers).
//! - pinned snapshots and the newest verified snapshot of an app are never deleted;
//! - a policy can only delete snapshots it was shown — an answer naming others (or naming
//!   one twice) is nonsense, and nonsense deletes nothing;
//! - a trap, a timeout or nonsense means "delete nothing" (retention) or "admit"
//!   (quota), with the error logged, counted against the policy (`GET /api/v1/policies`)
//!   and alerted at most once an hour per policy and app.
//!
//! Every policy call runs on a blocking thread: the sandbox is synchronous, for up to its
//! time limit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::ManagerError;
use super::repos::Repos;
use super::store::Store;
use crate::catalog::{Origin, Snapshot};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::policy::engine::{Admission, SnapshotInfo, Usage, Verdict};
use crate::policy::{Binding, Kind, PolicyError, Registry, shared};

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
pub fn origin_name(origin: Origin) -> String {
    serde_json::to_value(origin)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// A local snapshot as a policy sees it: `created_at` in seconds since the epoch, `size`
/// the archive's bytes on disk (compressed; copies in a repository count their tar bytes).
pub fn info(s: &Snapshot) -> SnapshotInfo {
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

/// A copy in a repository as a policy sees it: sized by its tar stream; `pinned` as the
/// caller knows the pins.
pub fn remote_info(r: &crate::offsite::RemoteSnapshot, pinned: bool) -> SnapshotInfo {
    SnapshotInfo {
        id: r.snapshot_id.clone(),
        app_id: r.app_id.clone(),
        created_at: r.created_at.timestamp(),
        size: r.tar_bytes,
        origin: origin_name(r.origin),
        pinned,
        // Every listed copy was checked against the tar stream's sha256 when made.
        verified: true,
    }
}

/// Snapshots no policy may delete, with why. `snapshots` is newest first.
/// The newest is protected even when unpinned, so that no answer can leave an app
/// without a snapshot; a pinned one gives `pinned` as its reason.
pub fn protected(snapshots: &[SnapshotInfo]) -> HashMap<String, &'static str> {
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

/// Sorts a retention policy's verdicts on `shown` (newest first) into `report`, after the
/// host's rules: what it would delete but a rule protects is `protected`, with why.
pub fn sort_verdicts(report: &mut RetentionReport, shown: &[SnapshotInfo], verdicts: &[Verdict]) {
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
}

/// The ids of an answer must be ones the policy was shown, each at most once.
/// Otherwise `Malformed`, which the callers treat as a failed call: nothing is deleted.
pub(super) fn check_ids<'a>(
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

/// The policies' decisions over the store's snapshots and the repositories' copies: a
/// view the façade lends for one operation.
pub struct Rules<'a> {
    pub policies: &'a Arc<Registry>,
    pub metrics: &'a Metrics,
    pub notifier: &'a Notifier,
    pub store: &'a Store,
    pub repos: &'a Repos,
}

impl Rules<'_> {
    /// The app's local snapshots as a policy sees them, newest first.
    pub fn local_infos(&self, app_id: &str) -> Vec<SnapshotInfo> {
        self.store.list(Some(app_id)).iter().map(info).collect()
    }

    /// A policy call that failed: counted in the policy's health, logged and in metrics.
    /// The alert it raises is sent at most once an hour per policy and app, so that a
    /// policy failing on every call does not flood the alerts.
    pub fn policy_failed(&self, policy: &str, kind: Kind, app: &str, error: &PolicyError) {
        self.policies.record_failure(policy, app, error);
        self.metrics.policy_failed(policy, kind.as_str());
        self.notifier.policy_failed(
            policy,
            app,
            format!("The {kind} policy `{policy}` failed for {app}; it decided nothing"),
            error.to_string(),
        );
    }
    /// The app's copies in `repository` as a policy sees them, newest first, one per
    /// appsnap snapshot (a snapshot copied twice is one). Only this server's copies: the
    /// copies of another server sharing the repository are its own policies' business.
    /// A copy counts as pinned when the local snapshot of the same id is; of a snapshot
    /// copied twice, one copy stands for both (its tar bytes are its size).
    pub async fn remote_infos(
        &self,
        app_id: &str,
        repository: &str,
    ) -> Result<Vec<SnapshotInfo>, ManagerError> {
        let (remote, _) = self
            .repos
            .copies_of(self.store, repository, Some(app_id))
            .await?;
        let pinned = self.store.pinned_ids();
        let mut seen = HashSet::new();
        Ok(remote
            .iter()
            .rev()
            .filter(|r| seen.insert(r.snapshot_id.clone()))
            .map(|r| remote_info(r, pinned.contains(&r.snapshot_id)))
            .collect())
    }

    /// Asks `binding`'s retention policy about `shown` (newest first) and sorts its
    /// verdicts into the report, after the host's rules. Deletes nothing.
    /// A call that fails (`Failed`, `Malformed`) is counted against the policy and ends
    /// in `report.error` with every list empty; other policy errors are returned.
    pub async fn judge(
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
        sort_verdicts(&mut report, shown, &verdicts);
        Ok(report)
    }

    /// One call of the retention policy, on a blocking thread (the sandbox runs
    /// synchronously, for up to its time limit). The policy gets `now` in seconds and
    /// the binding's config as JSON text; the ids it answers are checked.
    pub async fn decide_retention(
        &self,
        binding: &Binding,
        shown: &[SnapshotInfo],
    ) -> Result<Vec<Verdict>, PolicyError> {
        let compiled = self.resolve(&binding.policy).await?;
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
    pub async fn resolve(&self, name: &str) -> Result<Arc<crate::policy::Compiled>, PolicyError> {
        let (registry, name) = (Arc::clone(self.policies), name.to_string());
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
    pub async fn quota_admit(
        &self,
        app_id: &str,
        incoming: u64,
    ) -> Result<Vec<String>, ManagerError> {
        let Some(binding) = self.policies.effective(app_id, Kind::Quota) else {
            return Ok(Vec::new());
        };
        let shown = self.local_infos(app_id);
        let usage = self.local_usage(app_id)?;
        let decided = self.ask_quota(&binding, usage, incoming, &shown).await;
        self.admission(&binding, app_id, decided, &shown)
    }

    /// What the copy of `incoming` tar bytes to `repository` may do, by the quota bound
    /// to the app's copies there: the copies to forget once it is done, or `QuotaDenied`.
    /// The policy sees the copies' tar stream sizes (`app_bytes` is their sum) and the
    /// repository's stored bytes as `total_bytes`; `disk_free` and `disk_size` are 0
    /// (unknown for a bucket).
    pub async fn quota_admit_at(
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
    pub fn admission(
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
    pub fn local_usage(&self, app_id: &str) -> Result<Usage, ManagerError> {
        let (disk_free, disk_size) = self.store.disk()?;
        let usage = self.store.usage();
        Ok(Usage {
            app_bytes: usage.get(app_id).map_or(0, |a| a.bytes),
            total_bytes: usage.values().map(|a| a.bytes).sum(),
            disk_free,
            disk_size,
        })
    }

    /// Calls the quota policy of `binding`, checking the ids it answers. Like retention,
    /// the call runs on a blocking thread; the host rules are applied by the caller.
    pub async fn ask_quota(
        &self,
        binding: &Binding,
        usage: Usage,
        incoming: u64,
        shown: &[SnapshotInfo],
    ) -> Result<Admission, PolicyError> {
        let compiled = self.resolve(&binding.policy).await?;
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

    /// The schedule policy's next run after `last`, asked on a blocking thread (the
    /// policy works in seconds since the epoch); `None`: never. An answer that is not
    /// after `last` is `Malformed`: it would start a backup on every tick.
    pub async fn next_run(
        &self,
        binding: &Binding,
        now: DateTime<Utc>,
        last: Option<DateTime<Utc>>,
    ) -> Result<Option<DateTime<Utc>>, PolicyError> {
        let compiled = self.resolve(&binding.policy).await?;
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
}
