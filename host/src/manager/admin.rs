//! Repository upkeep from another machine (`appsnap repo forget --config admin.toml`): the
//! retention bound to a repository, applied with the admin's full rights, for servers whose
//! own access is append-only. It needs neither a backup root nor Docker: the repository,
//! and the server's policies (a copy of its `{backup_root}/.appsnap/policies` folder).
//!
//! Unlike the server's pass, it judges every copy of an app in the repository, whichever
//! server made it, and forgets all copies of what the policy deletes. The server's pins
//! are those the copies recorded when they were made (a pin set later on the server is not
//! seen here); the newest copy of each app is always kept.

use std::collections::{BTreeSet, HashSet};

use super::error::ManagerError;
use super::rules::{RetentionReport, check_ids, remote_info, sort_verdicts};
use crate::offsite::{self, OffsiteError, RemoteSnapshot, RepositoryConfig};
use crate::policy::engine::SnapshotInfo;
use crate::policy::{Kind, Registry, shared};

/// Runs the retention bound to `cfg`'s repository for each app it holds copies of (or for
/// `app` only) and, unless `dry_run`, forgets the copies it deletes. Returns one report per
/// app with a binding. Blocks (repository calls, policy calls): run it on a blocking
/// thread. An `append_only` entry is refused: the admin's configuration holds full rights.
pub fn forget_by_policies(
    cfg: &RepositoryConfig,
    policies: &Registry,
    app: Option<&str>,
    dry_run: bool,
) -> Result<Vec<RetentionReport>, ManagerError> {
    if cfg.append_only && !dry_run {
        return Err(OffsiteError::AppendOnly(cfg.name.clone()).into());
    }
    let remote = offsite::list(cfg, app)?;
    let apps: BTreeSet<&str> = remote.iter().map(|r| r.app_id.as_str()).collect();
    let now = chrono::Utc::now().timestamp();
    let mut reports = Vec::new();
    for app in apps {
        let Some(binding) = policies.effective_at(app, Kind::Retention, &cfg.name) else {
            continue;
        };
        // Newest first, each snapshot once whichever server copied it.
        let mut copies: Vec<&RemoteSnapshot> = remote.iter().filter(|r| r.app_id == app).collect();
        copies.sort_by_key(|r| std::cmp::Reverse(r.created_at));
        let mut seen = HashSet::new();
        let shown: Vec<SnapshotInfo> = copies
            .iter()
            .filter(|r| seen.insert(r.snapshot_id.as_str()))
            .map(|r| remote_info(r, r.pinned))
            .collect();
        let mut report = RetentionReport {
            app_id: app.to_string(),
            repository: Some(cfg.name.clone()),
            policy: Some(binding.policy.clone()),
            dry_run,
            ..RetentionReport::default()
        };
        let compiled = policies.resolve(&binding.policy)?;
        let verdicts = shared()
            .retention(&compiled, now, &binding.config.to_string(), &shown)
            .and_then(|v| check_ids(&shown, v.iter().map(|x| &x.id)).map(|_| v));
        match verdicts {
            Ok(v) => sort_verdicts(&mut report, &shown, &v),
            // A policy that fails deletes nothing, as on the server.
            Err(e) => report.error = Some(e.to_string()),
        }
        if !dry_run && !report.deleted.is_empty() {
            let doomed: HashSet<&str> = report
                .deleted
                .iter()
                .map(|d| d.snapshot_id.as_str())
                .collect();
            let ids: Vec<String> = copies
                .iter()
                .filter(|r| doomed.contains(r.snapshot_id.as_str()))
                .map(|r| r.repository_snapshot.clone())
                .collect();
            offsite::forget(cfg, &ids)?;
        }
        reports.push(report);
    }
    Ok(reports)
}
