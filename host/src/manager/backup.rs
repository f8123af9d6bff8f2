//! Creating a snapshot, step by step (each step is a [`Job`] step, visible in the API):
//! 1. find the app (404) and take its per-app lock (409 while another backup or restore runs);
//! 2. run `appsnap.pre-backup` hooks in running containers (failure: nothing was touched);
//! 3. in `stop` mode (the default): write a journal naming the running containers, then
//!    stop them, so a crash of appsnap cannot leave an app down (see [`recover_backup`]);
//! 4. archive into `.{id}.tar.gz.partial` on a blocking thread, with progress (its
//!    read-ahead starts before step 2, so the disk works while hooks run and containers
//!    stop);
//! 5. start the stopped containers again, whatever step 4 did, and drop the journal;
//!    the archive's fsync runs meanwhile (all the data is read by then);
//! 6. run `appsnap.post-backup` hooks;
//! 7. wait for that fsync, rename to `{id}.tar.gz`, add to the catalog: only a complete,
//!    checksummed archive is ever listed.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::{BackupManager, ManagerError, Started, io_err, short};
use crate::archive::{self, ArchiveError};
use crate::catalog::{ARCHIVE_SUFFIX, ArchiveMeta, Origin, PARTIAL_SUFFIX, Snapshot};
use crate::config::BackupMode;
use crate::docker::{App, Docker, DockerError, POST_BACKUP_LABEL, PRE_BACKUP_LABEL, Stopped};
use crate::ids;
use crate::jobs::Job;

const ARCHIVE_FORMAT: u32 = 1;

/// Written before containers are stopped, removed once they run again. Found at start-up,
/// it means appsnap died mid-backup: the containers are started and the partial archive
/// removed.
#[derive(Debug, Serialize, Deserialize)]
struct BackupJournal {
    app_id: String,
    snapshot_id: String,
    stopped: Vec<String>,
    partial: PathBuf,
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
                this.backup(&app, origin, note, &job2).await
            }
            .await
            .map_err(Arc::new);
            drop(lock);
            this.metrics
                .backup_ended(&app.id, result.is_ok(), started.elapsed());
            this.notifier.backup_ended(
                &app.id,
                match &result {
                    Ok(s) => Ok(s.snapshot_id.as_str()),
                    Err(e) => Err(e.alert_text()),
                },
            );
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

    async fn backup(
        &self,
        app: &App,
        origin: Origin,
        note: Option<String>,
        job: &Job,
    ) -> Result<Snapshot, ManagerError> {
        let _slot = self.heavy_slot(Some(job)).await;
        tracing::info!(app = %app.id, mounts = app.mounts.len(), "backup started");
        if let Some((name, what)) = app.unreadable.first() {
            // An empty folder archived as the app's data would be a lie with a 200.
            return Err(ManagerError::Docker(DockerError::UnreadableVolume {
                name: name.clone(),
                what: what.clone(),
            }));
        }
        let dir = self.config.backup_root.join(&app.id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(format!("cannot create {}", dir.display())))?;
        let created_at = Utc::now();
        let snapshot_id = self.unique_snapshot_id(&dir, created_at);
        let final_path = dir.join(format!("{snapshot_id}{ARCHIVE_SUFFIX}"));
        let partial = dir.join(format!(".{snapshot_id}{ARCHIVE_SUFFIX}{PARTIAL_SUFFIX}"));
        let meta = ArchiveMeta {
            format: ARCHIVE_FORMAT,
            appsnap_version: env!("CARGO_PKG_VERSION").into(),
            snapshot_id: snapshot_id.clone(),
            app_id: app.id.clone(),
            created_at,
            mounts: app.mounts.clone(),
            origin,
            note: note.clone(),
        };
        let meta_json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");

        let sources = app.sources();
        let opts = archive::Options {
            level: self.config.compression_level,
            threads: self.config.threads(),
            skip_dirs: vec![self.config.backup_root.clone()],
            cancel: Some(self.new_cancel()),
            ..archive::Options::default()
        };
        // From here on the disk reads what the archive needs, while the hooks run and the
        // containers stop: the app is down for less time.
        let ahead = archive::read_ahead(&sources, &opts);
        let estimate_sources = sources.clone();
        let estimating = tokio::task::spawn_blocking(move || archive::estimate(&estimate_sources));
        let evict = if self
            .policies
            .effective(&app.id, crate::policy::Kind::Quota)
            .is_some()
        {
            // The quota decides on the size before anything is stopped.
            job.step("estimating size");
            let total = estimating.await.unwrap_or(0);
            job.total(total);
            job.step("asking the quota policy");
            self.quota_admit(&app.id, total).await?
        } else {
            // Only progress needs it: the metadata walk runs beside the backup (and warms
            // the inodes the archive's walk reads next) instead of before it.
            let job = job.clone();
            tokio::spawn(async move { job.total(estimating.await.unwrap_or(0)) });
            Vec::new()
        };

        let running = app.running();
        job.step("running pre-backup hooks");
        let hook_timeout = self.config.hook_timeout_for(&app.id);
        for c in &running {
            self.docker
                .run_hook(c, PRE_BACKUP_LABEL, hook_timeout)
                .await?;
        }

        let mut warnings: Vec<String> = app
            .skipped
            .iter()
            .map(|s| format!("not archived: {s}"))
            .collect();
        let stopped: Vec<String> = match self.config.mode_for(&app.id) {
            BackupMode::Live => Vec::new(),
            BackupMode::Stop => running.iter().map(|c| c.id.clone()).collect(),
        };
        let journal = self.journal_path(&app.id, "backup");
        if !stopped.is_empty() {
            job.step("stopping containers");
            let record = BackupJournal {
                app_id: app.id.clone(),
                snapshot_id: snapshot_id.clone(),
                stopped: stopped.clone(),
                partial: partial.clone(),
            };
            crate::catalog::write_atomic(&journal, &serde_json::to_vec(&record).expect("journal"))
                .map_err(io_err("cannot write the backup journal"))?;
            crash_point("backup.journaled");
            let stopping = self.stop_all(&stopped).await;
            crash_point("backup.stopped");
            if let Err(e) = stopping {
                self.start_again(&stopped, &journal, &mut warnings).await;
                return Err(e);
            }
            warnings.extend(stopping.unwrap_or_default());
        }

        job.step("archiving");
        let (progress_job, partial2) = (job.clone(), partial.clone());
        let archived = tokio::task::spawn_blocking(move || {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial2)
                .map_err(ArchiveError::Output)?;
            let written = archive::write_reading_ahead(
                file,
                &meta_json,
                &sources,
                &opts,
                &|b| progress_job.progress(b),
                &ahead,
            );
            drop(ahead);
            written
        })
        .await
        .unwrap_or_else(|e| {
            Err(ArchiveError::Output(io::Error::other(format!(
                "archive task: {e}"
            ))))
        });
        // Everything is read: the app may run again while the archive reaches the disk.
        let synced = tokio::task::spawn_blocking(move || {
            let (summary, file) = archived?;
            file.sync_all().map_err(ArchiveError::Output)?;
            Ok::<_, ArchiveError>(summary)
        });

        crash_point("backup.archived");
        if !stopped.is_empty() {
            job.step("starting containers");
            self.start_again(&stopped, &journal, &mut warnings).await;
        }
        job.step("running post-backup hooks");
        for c in &running {
            if let Err(e) = self
                .docker
                .run_hook(c, POST_BACKUP_LABEL, hook_timeout)
                .await
            {
                warnings.push(e.to_string());
            }
        }

        job.step("saving");
        let synced = synced.await.unwrap_or_else(|e| {
            Err(ArchiveError::Output(io::Error::other(format!(
                "archive sync task: {e}"
            ))))
        });
        let summary = match synced {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_file(&partial);
                return Err(e.into());
            }
        };
        warnings.extend(summary.warnings);
        if summary.entries > self.config.max_archive_entries {
            warnings.push(format!(
                "{} entries: another server importing this snapshot needs \
                 `max_archive_entries` of at least that",
                summary.entries
            ));
        }
        let snapshot = Snapshot {
            snapshot_id,
            app_id: app.id.clone(),
            created_at,
            size_bytes: summary.compressed_bytes,
            file_path: final_path.to_string_lossy().into_owned(),
            sha256: summary.sha256.clone(),
            mounts: app.mounts.clone(),
            origin,
            note,
            pinned: false,
            warnings,
            tar_bytes: Some(summary.tar_bytes),
            entries: Some(summary.entries),
            tar_sha256: Some(summary.tar_sha256),
            locations: Vec::new(),
            // Owed from now on: a crash before they run leaves them `pending`, resumed.
            copies: self.copies_owed(),
            // Every entry written here is one the restore's rules accept, as a full
            // verify would find: the first restore need not read the archive twice.
            checked: Some(crate::catalog::Checked {
                sha256: summary.sha256.clone(),
                tar_bytes: summary.tar_bytes,
                entries: summary.entries,
                stored: summary.stored,
                mount_entries: summary.mount_entries,
            }),
        };
        // The sidecar before the archive is in place: a crash between the two must not
        // leave an own snapshot that a rebuild lists as an import (origin is the
        // server's fact, never read from the archive). One left without its archive is
        // removed at the next start.
        if let Err(e) = crate::catalog::write_sidecar(&snapshot) {
            // The snapshot is good; a rebuild would list it as imported, without warnings.
            tracing::warn!(snapshot = %snapshot.snapshot_id, "cannot write its sidecar: {e}");
        }
        crash_point("backup.sidecar-written");
        let commit = || -> io::Result<()> {
            fs::rename(&partial, &final_path)?;
            File::open(&dir)?.sync_all()
        };
        if let Err(e) = commit() {
            let _ = fs::remove_file(&partial);
            let _ = fs::remove_file(crate::catalog::sidecar_path(&final_path));
            return Err(io_err("cannot move the finished archive into place")(e));
        }
        crash_point("backup.renamed");
        {
            let mut catalog = self.catalog.lock().expect("catalog lock");
            catalog.insert(snapshot.clone());
            // On failure the archive stays and is listed again at the next start-up.
            catalog.save()?;
        }
        crash_point("backup.listed");
        self.enforce_count(&app.id);
        job.step("applying policies");
        self.after_backup(&app.id, evict).await;
        Ok(snapshot)
    }

    fn unique_snapshot_id(&self, dir: &Path, now: chrono::DateTime<Utc>) -> String {
        let catalog = self.catalog.lock().expect("catalog lock");
        loop {
            let id = ids::new_snapshot_id(now);
            if !catalog.contains(&id) && !dir.join(format!("{id}{ARCHIVE_SUFFIX}")).exists() {
                return id;
            }
        }
    }

    /// Stops every container in `ids`, each with its own stop timeout when it has one.
    /// One that no longer exists, or that had to be killed, is a warning (the first cannot
    /// write to the data any more; the second's files may be inconsistent); any other
    /// failure aborts the backup.
    pub(super) async fn stop_all(&self, ids: &[String]) -> Result<Vec<String>, ManagerError> {
        let timeout = self.config.stop_timeout_secs;
        let results =
            futures_util::future::join_all(ids.iter().map(|id| self.docker.stop(id, timeout)))
                .await;
        let mut warnings = Vec::new();
        for (id, result) in ids.iter().zip(results) {
            match result {
                Ok(Stopped::Clean) => {}
                Ok(Stopped::Killed { timeout }) => warnings.push(format!(
                    "container {} did not stop within {timeout} s and was killed: its files \
                     may not be consistent (raise its stop_grace_period)",
                    short(id)
                )),
                Err(e) if e.is_not_found() => {
                    warnings.push(format!(
                        "container {} disappeared during the backup",
                        short(id)
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(warnings)
    }

    /// Starts every container in `ids`. A container removed meanwhile is a warning (the
    /// snapshot is still good); one that could not be started makes `failed` true.
    pub(super) async fn start_all(&self, ids: &[String]) -> StartReport {
        let mut report = StartReport::default();
        for id in ids {
            let started = match self.docker.start(id).await {
                // We stopped it, so "already running" is a stop still in flight (or a
                // start by someone else): wait for any stop, then start it for real.
                Ok(crate::docker::Started::AlreadyRunning) => {
                    tracing::warn!(container = %short(id),
                        "Docker says it runs already: waiting for any stop in flight, then starting it");
                    match self.docker.stop(id, self.config.stop_timeout_secs).await {
                        Ok(_) => self.docker.start(id).await,
                        Err(e) => Err(e),
                    }
                }
                other => other,
            };
            match started {
                Ok(_) => {}
                Err(e) if e.is_not_found() => report.warnings.push(format!(
                    "container {} disappeared during the backup",
                    short(id)
                )),
                Err(e) => {
                    tracing::error!(container = %id, "could not start container again: {e}");
                    report.failed = true;
                    report.warnings.push(format!(
                        "container {} could not be started again: {e}",
                        short(id)
                    ));
                }
            }
        }
        report
    }

    /// Starts what the backup stopped. The journal goes only once they all run again;
    /// otherwise it stays, the app is marked as needing repair (409 for new backups and
    /// restores) and the start is retried in the background.
    async fn start_again(&self, ids: &[String], journal: &Path, warnings: &mut Vec<String>) {
        // A start refused for real needs a broken engine; the test suite injects one here.
        let report = match crate::failpoint::point("backup.restart") {
            Ok(()) => self.start_all(ids).await,
            Err(injected) => StartReport {
                warnings: vec![injected],
                failed: true,
            },
        };
        warnings.extend(report.warnings);
        if report.failed {
            tracing::error!(
                "the app's containers could not all be started again; {} is kept and the \
                 start is retried in the background",
                journal.display()
            );
        } else {
            let _ = fs::remove_file(journal);
            crash_point("backup.restarted");
        }
    }

    /// The simple count rule of `max_snapshots_per_app`: oldest unpinned go first.
    fn enforce_count(&self, app_id: &str) {
        let max = self.config.max_snapshots_per_app;
        if max == 0 {
            return;
        }
        let doomed: Vec<String> = {
            let catalog = self.catalog.lock().expect("catalog lock");
            catalog
                .list(Some(app_id))
                .into_iter()
                .filter(|s| !s.pinned)
                .skip(max)
                .map(|s| s.snapshot_id.clone())
                .collect()
        };
        for id in doomed {
            match self.delete_unless_pinned(&id) {
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
}

/// What starting an app's containers again gave.
#[derive(Debug, Default)]
pub(super) struct StartReport {
    pub warnings: Vec<String>,
    /// A container exists but could not be started.
    pub failed: bool,
}

/// Only a crash is of interest at these points of a backup (see [`crate::failpoint`]).
fn crash_point(name: &str) {
    let _ = crate::failpoint::point(name);
}

/// Repair of a backup that was interrupted (a crash, or containers that would not start
/// again). A container's stop may still be in flight when appsnap died, and starting it
/// then answers "already running" just before the stop completes: so each container is
/// first stopped (which waits for any stop in progress), then started, then checked.
/// `Err` keeps the journal for another try.
pub(super) async fn recover_backup(
    docker: &Docker,
    path: &Path,
    stop_timeout: u32,
) -> Result<(), String> {
    let journal: BackupJournal = match fs::read(path).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(j)) => j,
        other => {
            tracing::error!(
                "unreadable backup journal {} ({other:?}); removed",
                path.display()
            );
            let _ = fs::remove_file(path);
            return Ok(());
        }
    };
    tracing::warn!(
        app = %journal.app_id,
        snapshot = %journal.snapshot_id,
        "a backup was interrupted: starting the {} container(s) it had stopped",
        journal.stopped.len()
    );
    let mut errors = Vec::new();
    for id in &journal.stopped {
        let result = async {
            docker.stop(id, stop_timeout).await?;
            docker.start(id).await?;
            docker.state(id).await
        }
        .await;
        match result {
            Ok(state) if state.running => tracing::info!(container = %short(id), "started again"),
            // Started, then ended by itself: the app's own doing, not a failed repair.
            Ok(state) => tracing::error!(container = %short(id),
                "started again, but it exited at once (exit code {})", state.exit_code),
            Err(e) if e.is_not_found() => {
                tracing::warn!(container = %short(id), "container no longer exists")
            }
            Err(e) => errors.push(format!("container {} could not be started: {e}", short(id))),
        }
    }
    let _ = fs::remove_file(&journal.partial);
    if !errors.is_empty() {
        // Keep the journal: the repair is retried until the app runs again.
        return Err(errors.join("; "));
    }
    let _ = fs::remove_file(path);
    Ok(())
}
