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

use super::containers::{Containers, Purpose, StartReport};
use super::error::io_err;
use super::{BackupManager, ManagerError, Started};
use crate::archive::{self, ArchiveError};
use crate::catalog::{ARCHIVE_SUFFIX, ArchiveMeta, Facts, Origin, PARTIAL_SUFFIX, Snapshot};
use crate::config::BackupMode;
use crate::docker::{App, DockerError, POST_BACKUP_LABEL, PRE_BACKUP_LABEL};
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
        let _slot = self.gate.heavy_slot(Some(job)).await;
        tracing::info!(app = %app.id, mounts = app.mounts.len(), "backup started");
        if let Some((name, what)) = app.unreadable.first() {
            // An empty folder archived as the app's data would be a lie with a 200.
            return Err(ManagerError::Docker(DockerError::UnreadableVolume {
                name: name.clone(),
                what: what.clone(),
            }));
        }
        let dir = self.store.app_dir(&app.id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(format!("cannot create {}", dir.display())))?;
        let created_at = Utc::now();
        let snapshot_id = self.store.unique_snapshot_id(&dir, created_at);
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
            skip_dirs: vec![self.store.root().to_path_buf()],
            cancel: Some(self.gate.new_cancel()),
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
        self.containers
            .run_hooks(&running, PRE_BACKUP_LABEL, hook_timeout)
            .await?;

        let mut warnings: Vec<String> = app
            .skipped
            .iter()
            .map(|s| format!("not archived: {s}"))
            .collect();
        let stopped: Vec<String> = match self.config.mode_for(&app.id) {
            BackupMode::Live => Vec::new(),
            BackupMode::Stop => running.iter().map(|c| c.id.clone()).collect(),
        };
        let journal = self.store.journal_path(&app.id, "backup");
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
            let stopping = self.containers.stop_all(&stopped, Purpose::Backup).await;
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
        warnings.extend(
            self.containers
                .run_hooks_warning(&running, POST_BACKUP_LABEL, hook_timeout)
                .await,
        );

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
            size_bytes: summary.compressed_bytes,
            file_path: final_path.to_string_lossy().into_owned(),
            sha256: summary.sha256.clone(),
            mounts: app.mounts.clone(),
            facts: Facts {
                created_at,
                origin,
                note,
                pinned: false,
                warnings,
                tar_bytes: Some(summary.tar_bytes),
                entries: Some(summary.entries),
                tar_sha256: Some(summary.tar_sha256),
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
            },
            locations: Vec::new(),
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
        // On failure the archive stays and is listed again at the next start-up.
        self.store.insert(snapshot.clone())?;
        crash_point("backup.listed");
        self.enforce_count(&app.id);
        job.step("applying policies");
        self.after_backup(&app.id, evict).await;
        Ok(snapshot)
    }

    /// Starts what the backup stopped. The journal goes only once they all run again;
    /// otherwise it stays, the app is marked as needing repair (409 for new backups and
    /// restores) and the start is retried in the background.
    async fn start_again(&self, ids: &[String], journal: &Path, warnings: &mut Vec<String>) {
        // A start refused for real needs a broken engine; the test suite injects one here.
        let report = match crate::failpoint::point("backup.restart") {
            Ok(()) => self.containers.start_all(ids, Purpose::Backup).await,
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
        let doomed: Vec<String> = self.store.read(|catalog| {
            catalog
                .list(Some(app_id))
                .into_iter()
                .filter(|s| !s.facts.pinned)
                .skip(max)
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
pub(super) async fn recover_backup(containers: &Containers, path: &Path) -> Result<(), String> {
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
    let errors = containers.restart_after_crash(&journal.stopped).await;
    let _ = fs::remove_file(&journal.partial);
    if !errors.is_empty() {
        // Keep the journal: the repair is retried until the app runs again.
        return Err(errors.join("; "));
    }
    let _ = fs::remove_file(path);
    Ok(())
}
