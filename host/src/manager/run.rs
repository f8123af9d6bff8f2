//! The façade's job starters: each takes what must be refused at once (bad ids, an
//! unknown app, a busy app: 400/404/409 before any job exists), creates the job, and runs
//! the operations in a task of its own, so a client that disconnects never aborts them
//! halfway. This is where one operation follows another — a backup's retention and its
//! offsite copies, a restore's fetch, the scheduler's backups — so that the operations
//! themselves never call each other.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{BackupManager, ManagerError, PathsTarget, Restored, Selection, Started};
use crate::catalog::{Origin, Snapshot};
use crate::ids;
use crate::policy::Kind;

/// Where a restore takes its snapshot from.
enum Source {
    /// A snapshot the catalog lists: its archive is used as it is.
    Local(Snapshot),
    /// A repository's copy (see `Repos::find`): fetched into the backup root and listed,
    /// inside the restore's task and under the app's lock, before the app is touched.
    Remote(crate::offsite::RemoteSnapshot),
}

impl BackupManager {
    /// Validates, finds the app and takes its lock (so 400/404/409 come back at once),
    /// then runs the backup as a job in its own task: a client that disconnects does not
    /// abort it halfway.
    pub async fn start_backup(
        self: &Arc<Self>,
        app_id: &str,
        origin: Origin,
        note: Option<String>,
    ) -> Result<Started, ManagerError> {
        ids::validate("app id", app_id)?;
        let app = self.docker.find_app(app_id).await?;
        let lock = self.lock_app(app_id, "backup")?;
        let job = self.jobs.create("backup", app_id);
        let (this, job2) = (Arc::clone(self), job.clone());
        let done = tokio::spawn(async move {
            let started = std::time::Instant::now();
            this.metrics.backup_started(&app.id);
            let result = async {
                this.after_cleanup(&lock, &job2).await?;
                let (snapshot, evict) = this.backup(&app, origin, note, &job2).await?;
                job2.step("applying policies");
                this.enforce_count(&app.id);
                this.after_backup(&app.id, evict).await;
                Ok::<_, ManagerError>(snapshot)
            }
            .await
            .map_err(|e| Arc::new(e.or_cancelled(&job2)));
            drop(lock);
            this.metrics
                .backup_ended(&app.id, result.is_ok(), started.elapsed());
            // A backup its user cancelled is no failure to alert about.
            if !matches!(
                result.as_ref().map_err(|e| e.as_ref()),
                Err(ManagerError::Cancelled(_))
            ) {
                this.notifier.backup_ended(
                    &app.id,
                    match &result {
                        Ok(s) => Ok(s.snapshot_id.as_str()),
                        Err(e) => Err(e.alert_text()),
                    },
                );
            }
            match &result {
                Ok(s) => {
                    tracing::info!(app = %app.id, snapshot = %s.snapshot_id, bytes = s.size_bytes, "backup finished");
                    job2.succeed(serde_json::to_value(s).expect("snapshot serializes"));
                    // After the answer, and with the app running again: copies never
                    // lengthen a backup or its downtime.
                    this.spawn_copies(s);
                }
                Err(e) => {
                    tracing::error!(app = %app.id, "backup failed: {e}");
                    job2.fail(e.clone());
                }
            }
            result
        });
        Ok(Started { job, done })
    }

    /// Validates, checks ownership and takes the app's lock (so 400/404/409 come back at
    /// once), then restores as a job in its own task.
    ///
    /// Refused at once with `InvalidId`, `SnapshotNotFound`, `AppNotFound` (no container
    /// of the app exists), `ForeignSnapshot` (the snapshot is another app's), `Busy`, or
    /// `RepairPending` while an interrupted backup or restore of the app is not repaired.
    /// Everything later ends in the job and in `Started::done`: `Restored`, or the error
    /// (`RestoreFailed` and `RollbackFailed` also raise an alert).
    pub async fn start_restore(
        self: &Arc<Self>,
        app_id: &str,
        snapshot_id: &str,
    ) -> Result<Started<Restored>, ManagerError> {
        self.start_restore_from(app_id, snapshot_id, None).await
    }

    /// Like [`Self::start_restore`], from a repository's copy when `from` names one, or
    /// when the snapshot has no local archive (the configured repositories are searched
    /// in order). The copy is fetched and checked as a local snapshot first; the app is
    /// only touched once that is done.
    ///
    /// With `from`, the repository is asked even when the snapshot is listed here; the
    /// fetch then keeps a local archive that still checks out and restores from it. The
    /// repositories are searched before the lock is taken, so that a copy none holds is
    /// refused at once (a repository that cannot be read: its `Offsite` error); the fetch
    /// runs after it. The lock is held until the job's outcome is recorded, and the
    /// cleanup of the replaced data is registered before it goes, so the next operation
    /// on the app waits for that cleanup.
    pub async fn start_restore_from(
        self: &Arc<Self>,
        app_id: &str,
        snapshot_id: &str,
        from: Option<&str>,
    ) -> Result<Started<Restored>, ManagerError> {
        ids::validate("app id", app_id)?;
        ids::validate("snapshot id", snapshot_id)?;
        let source = match (from, self.get(snapshot_id)) {
            (None, Ok(local)) => Source::Local(local),
            (None, Err(ManagerError::SnapshotNotFound(_))) if !self.repos.all().is_empty() => {
                Source::Remote(self.repos.find(&self.store, None, snapshot_id).await?)
            }
            (None, Err(e)) => return Err(e),
            (Some(name), _) => Source::Remote(
                self.repos
                    .find(&self.store, Some(name), snapshot_id)
                    .await?,
            ),
        };
        let snapshot_app = match &source {
            Source::Local(s) => s.app_id.clone(),
            Source::Remote(r) => r.app_id.clone(),
        };
        let app = self.docker.find_app(app_id).await?;
        if snapshot_app != app_id {
            return Err(ManagerError::ForeignSnapshot {
                snapshot_id: snapshot_id.into(),
                snapshot_app,
                app_id: app_id.into(),
            });
        }
        let lock = self.lock_app(app_id, "restore")?;
        let job = self.jobs.create("restore", app_id);
        let (this, job2, snapshot_id) = (Arc::clone(self), job.clone(), snapshot_id.to_string());
        let done = tokio::spawn(async move {
            tracing::info!(app = %app.id, snapshot = %snapshot_id, "restore started");
            this.metrics.restore_started(&app.id);
            let result = async {
                let snapshot = match source {
                    Source::Local(s) => s,
                    Source::Remote(remote) => this.fetch(&remote, &job2).await?,
                };
                let (done, swap) = this.restore(&app, &snapshot, &job2, &lock).await?;
                // Started before the lock goes, so that the next operation waits for it.
                let cleanup = this.start_cleanup(&app.id, swap);
                Ok::<_, ManagerError>(done.answer(
                    "Snapshot restored successfully",
                    &snapshot,
                    &cleanup,
                ))
            }
            .await
            .map_err(|e| Arc::new(e.or_cancelled(&job2)));
            this.restore_ended(&app.id, &snapshot_id, &result, &job2);
            drop(lock);
            result
        });
        Ok(Started { job, done })
    }

    /// Starts a partial restore of `selection.paths` of the local snapshot `snapshot_id`
    /// into `app_id` (see `restore::paths`): in place, with the whole restore's
    /// guarantees for those paths, or beside them with the app running. The selection
    /// is checked against the snapshot's index before the lock is taken (400/404 at
    /// once); the lock and the cleanup wait are as for [`Self::start_restore_from`].
    pub async fn start_restore_paths(
        self: &Arc<Self>,
        app_id: &str,
        snapshot_id: &str,
        selection: &Selection,
    ) -> Result<Started<Restored>, ManagerError> {
        ids::validate("app id", app_id)?;
        ids::validate("snapshot id", snapshot_id)?;
        let snapshot = self.get(snapshot_id)?;
        let app = self.docker.find_app(app_id).await?;
        if snapshot.app_id != app_id {
            return Err(ManagerError::ForeignSnapshot {
                snapshot_id: snapshot_id.into(),
                snapshot_app: snapshot.app_id.clone(),
                app_id: app_id.into(),
            });
        }
        let checked = self.check_selection(&snapshot, selection).await?;
        let lock = self.lock_app(app_id, "restore")?;
        let job = self.jobs.create("restore", app_id);
        let (this, job2, target) = (Arc::clone(self), job.clone(), selection.target);
        let done = tokio::spawn(async move {
            let id = snapshot.snapshot_id.clone();
            tracing::info!(app = %app.id, snapshot = %id, ?target, "partial restore started");
            this.metrics.restore_started(&app.id);
            let result = async {
                let (done, swap) = this
                    .restore_paths(&app, &snapshot, checked, target, &job2, &lock)
                    .await?;
                let cleanup = this.start_cleanup(&app.id, swap);
                let message = match target {
                    PathsTarget::InPlace => "Paths restored successfully",
                    PathsTarget::Beside => "Paths restored beside the app's data",
                };
                Ok::<_, ManagerError>(done.answer(message, &snapshot, &cleanup))
            }
            .await
            .map_err(|e| Arc::new(e.or_cancelled(&job2)));
            this.restore_ended(&app.id, &id, &result, &job2);
            drop(lock);
            result
        });
        Ok(Started { job, done })
    }

    /// Records how a restore ended: the counters, an alert when it rolled back (or could
    /// not), the log, and the job's outcome.
    fn restore_ended(
        &self,
        app_id: &str,
        snapshot_id: &str,
        result: &Result<Restored, Arc<ManagerError>>,
        job: &crate::jobs::Job,
    ) {
        // One reading of how it ended, for the counters and the alert.
        use crate::metrics::RestoreEnd;
        use crate::notify::Event;
        let (end, alert) = match result.as_ref().map_err(|e| e.as_ref()) {
            Ok(_) => (RestoreEnd::Succeeded, None),
            Err(ManagerError::RestoreFailed { .. }) => (
                RestoreEnd::RolledBack,
                Some((Event::RestoreRolledBack, "failed and was rolled back")),
            ),
            Err(ManagerError::RollbackFailed { .. }) => (
                RestoreEnd::RolledBack,
                Some((
                    Event::RollbackIncomplete,
                    "failed and its rollback is incomplete: the app is stopped",
                )),
            ),
            Err(_) => (RestoreEnd::Refused, None),
        };
        self.metrics.restore_ended(app_id, end);
        if let (Some((event, what)), Err(e)) = (alert, result) {
            let mut notice = crate::notify::Notice::new(
                event,
                Some(app_id),
                format!("Restore of {app_id} {what}"),
                e.to_string(),
            );
            notice.snapshot = Some(snapshot_id.to_string());
            self.notifier.send(notice);
        }
        match result {
            Ok(restored) => {
                tracing::info!(app = %app_id, snapshot = %snapshot_id, "restore finished");
                job.succeed(serde_json::to_value(restored).expect("outcome serializes"));
            }
            Err(e) => {
                tracing::error!(app = %app_id, snapshot = %snapshot_id, "restore failed: {e}");
                job.fail(e.clone());
            }
        }
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
}
