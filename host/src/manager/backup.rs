//! Creating a snapshot, step by step (each step is a [`Job`] step, visible in the API,
//! and one method below):
//! 1. `plan`: where the archive goes and its metadata entry (the app was found and its
//!    lock taken before, by `start_backup`: 404 and 409 come back at once);
//!    `start_reading` then starts the read-ahead and the size estimate, so the disk
//!    works while the next steps run;
//! 2. `admit`: with a quota policy bound, the quota decides on the estimated size (and
//!    names what to evict) before anything is stopped;
//! 3. `appsnap.pre-backup` hooks in the running containers (failure: nothing was
//!    touched);
//! 4. In `precopy` mode (the default), [`BackupManager::precopy`]: a first pass archives
//!    with the app running, then `stop`, a second pass reads only what changed, the
//!    containers start again, and the final archive is assembled from both passes
//!    ([`archive::precopy`]). In `stop` mode: `stop` (write a journal naming the running
//!    containers, then stop them, so a crash of appsnap cannot leave an app down, see
//!    [`recover_backup`]), `archive_then_sync` (archive into `.{id}.tar.gz.partial` on a
//!    blocking thread, with progress; returns with the archive's fsync still running),
//!    then `start_again`. In `live` mode nothing stops;
//! 5. whatever happened, the stopped containers are started again and the journal
//!    dropped (`start_again`); the snapshot records the downtime;
//! 6. the `appsnap.post-backup` hooks;
//! 7. `commit`: wait for the fsync, write the sidecar, rename to `{id}.tar.gz`, list it:
//!    only a complete, checksummed archive is ever listed. Then the count rule and the
//!    retention policies, and (after the answer) the offsite copies.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::Utc;

use super::BackupManager;
use super::containers::{Purpose, StartReport};
use super::error::{ManagerError, io_err};
use super::recovery::BackupJournal;
use crate::archive::{self, ArchiveError};
use crate::catalog::{
    ARCHIVE_SUFFIX, ArchiveMeta, Downtime, Facts, Origin, PARTIAL_SUFFIX, Snapshot,
};
use crate::config::BackupMode;
use crate::docker::{App, DockerError, MODE_LABEL, POST_BACKUP_LABEL, PRE_BACKUP_LABEL};
use crate::jobs::Job;

const ARCHIVE_FORMAT: u32 = 1;

impl BackupManager {
    /// The backup itself, in the steps of this module's header; each step is one method
    /// below, and the job names the step it is in. Returns the listed snapshot and the
    /// snapshots the quota policy evicts now that it is complete (the caller applies
    /// them with retention: `after_backup`).
    pub(super) async fn backup(
        &self,
        app: &App,
        origin: Origin,
        note: Option<String>,
        job: &Job,
    ) -> Result<(Snapshot, Vec<String>), ManagerError> {
        let _slot = self.gate.heavy_slot(Some(job)).await;
        tracing::info!(app = %app.id, mounts = app.mounts.len(), "backup started");
        let plan = self.plan(app, origin, note.clone())?;
        let work = self.start_reading(app, job);
        let evict = self.admit(app, job, work.estimating).await?;
        // A cancel asked for while the backup waited for its slot: no hook runs.
        ManagerError::if_cancelled(job)?;

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
        // Only there when `skip_unreadable_mounts` allows it (`plan` refuses otherwise).
        warnings.extend(app.unreadable.iter().map(|(name, what)| {
            format!(
                "not archived: volume {name}: Docker mounts it from {what}, which appsnap \
                 cannot read from the host (skip_unreadable_mounts); a restore leaves it alone"
            )
        }));
        warnings.extend(app.warnings.iter().cloned());
        let mode = mode_of(app, self.config.mode_for(&app.id), &mut warnings);
        let stopped: Vec<String> = match mode {
            BackupMode::Live => Vec::new(),
            BackupMode::Stop | BackupMode::Precopy => {
                running.iter().map(|c| c.id.clone()).collect()
            }
        };
        let archived = if mode == BackupMode::Precopy && !stopped.is_empty() {
            self.precopy(app, &plan, work.archive, &stopped, job, &mut warnings)
                .await
        } else {
            self.stop_and_archive(app, &plan, work.archive, &stopped, mode, job, &mut warnings)
                .await
        };
        // Once the pre-backup hooks ran, the post-backup ones run too, whatever became of
        // the archive (a failure, a cancel): they undo what the first did (a dump file, a
        // paused queue).
        job.step("running post-backup hooks");
        warnings.extend(
            self.containers
                .run_hooks_warning(&running, POST_BACKUP_LABEL, hook_timeout)
                .await,
        );
        let (synced, downtime) = archived?;

        job.step("saving");
        let snapshot = self
            .commit(app, plan, synced, origin, note, warnings, downtime)
            .await?;
        Ok((snapshot, evict))
    }

    /// Stop mode (and live mode, which stops nothing): the stop, journaled, the archive,
    /// the start. Returns the archive under way and the downtime.
    #[allow(clippy::too_many_arguments)]
    async fn stop_and_archive(
        &self,
        app: &App,
        plan: &Plan,
        work: Archiving,
        stopped: &[String],
        mode: BackupMode,
        job: &Job,
        warnings: &mut Vec<String>,
    ) -> Result<(Synced, Downtime), ManagerError> {
        let down = std::time::Instant::now();
        warnings.extend(self.stop(app, plan, stopped, job).await?);
        job.step("archiving");
        let synced = archive_then_sync(plan, work, job).await;
        crash_point("backup.archived");
        if !stopped.is_empty() {
            job.step("starting containers");
            self.start_again(stopped, &plan.journal, warnings).await;
        }
        let downtime = Downtime {
            mode,
            downtime_ms: if stopped.is_empty() {
                0
            } else {
                down.elapsed().as_millis() as u64
            },
            passes: 1,
            stopped_entries: 0,
            stopped_bytes: 0,
        };
        Ok((synced, downtime))
    }

    /// Pre-copy mode ([`archive::precopy`]): the first pass with the app running, then
    /// the stop (journaled as in stop mode), the second pass, the start, and the final
    /// archive assembled with the app running again. Returns the assembly under way (it
    /// syncs the partial archive, as [`archive_then_sync`] does) and the downtime.
    /// The first pass's archive, its records and the delta are `.partial` files of the
    /// app's folder: removed when the assembly ends, whatever its outcome, and by the
    /// start-up cleanup after a crash.
    async fn precopy(
        &self,
        app: &App,
        plan: &Plan,
        work: Archiving,
        stopped: &[String],
        job: &Job,
        warnings: &mut Vec<String>,
    ) -> Result<(Synced, Downtime), ManagerError> {
        let first = plan
            .dir
            .join(format!(".{}.first{PARTIAL_SUFFIX}", plan.snapshot_id));
        let records = plan
            .dir
            .join(format!(".{}.records{PARTIAL_SUFFIX}", plan.snapshot_id));
        let delta = plan
            .dir
            .join(format!(".{}.delta{PARTIAL_SUFFIX}", plan.snapshot_id));
        let scratch = plan
            .dir
            .join(format!(".{}.scratch{PARTIAL_SUFFIX}", plan.snapshot_id));
        let remove_temporaries = {
            let paths = [
                first.clone(),
                delta.clone(),
                records.clone(),
                scratch.clone(),
            ];
            move || {
                for path in &paths {
                    let _ = fs::remove_file(path);
                }
            }
        };

        job.step("archiving while the app runs (first pass)");
        let (opts, sources) = (work.opts.clone(), work.sources.clone());
        let mut work = work;
        work.opts.member_size = Some(archive::precopy::FIRST_PASS_MEMBER);
        let pass1 = write_archive(&first, plan, work, job, Some(records)).await;
        let (first_summary, recorder) = match pass1 {
            Ok((summary, _, Some(recorder))) => (summary, recorder),
            Ok((_, _, None)) => unreachable!("the first pass records"),
            Err(e) => {
                remove_temporaries();
                return Err(e.into());
            }
        };
        crash_point("backup.first-pass");

        let down = std::time::Instant::now();
        match self.stop(app, plan, stopped, job).await {
            Ok(w) => warnings.extend(w),
            Err(e) => {
                remove_temporaries();
                return Err(e);
            }
        }
        job.step("archiving what changed while the app is stopped (second pass)");
        let (path, pass2_opts) = (delta.clone(), opts.clone());
        let window = self.config.precopy_racy_ns();
        let pass2 = tokio::task::spawn_blocking(move || {
            let file = create_partial(&path)?;
            archive::precopy::second_pass(file, recorder, &sources, &pass2_opts, window)
        })
        .await
        .unwrap_or_else(|e| Err(task_failed("second pass", e)));
        crash_point("backup.second-pass");
        job.step("starting containers");
        self.start_again(stopped, &plan.journal, warnings).await;
        let downtime_ms = down.elapsed().as_millis() as u64;
        let second = match pass2 {
            Ok(second) => second,
            Err(e) => {
                remove_temporaries();
                return Err(e.into());
            }
        };
        tracing::info!(
            app = %app.id,
            downtime_ms,
            reread_entries = second.reread_entries,
            reread_bytes = second.reread_bytes,
            "pre-copy: the app runs again; assembling the archive"
        );
        let downtime = Downtime {
            mode: BackupMode::Precopy,
            downtime_ms,
            passes: 2,
            stopped_entries: second.reread_entries,
            stopped_bytes: second.reread_bytes,
        };

        job.step("assembling the archive");
        // The assembly counts the final tar stream from 0 again, against its own total.
        job.count_anew(second.tar_bytes);
        let (progress_job, partial) = (job.clone(), plan.partial.clone());
        let final_path = plan.final_path.clone();
        let assembled = tokio::task::spawn_blocking(move || {
            let result = (|| {
                let summary = if second.unchanged(first_summary.tar_bytes) {
                    // Nothing changed between the passes: the first pass's archive is
                    // the final one, and nothing is written again.
                    fs::rename(&first, &partial).map_err(ArchiveError::Output)?;
                    remove_temporaries();
                    crash_point("backup.assembled");
                    File::open(&partial)
                        .and_then(|f| f.sync_all())
                        .map_err(ArchiveError::Output)?;
                    tracing::info!("nothing changed between the passes: the first is the archive");
                    archive::Summary {
                        entries: second.entries,
                        stored: second.stored,
                        mount_entries: second.mount_entries,
                        warnings: second.warnings,
                        index: Some(second.index),
                        ..first_summary
                    }
                } else {
                    let first_archive = archive::precopy::FirstArchive {
                        path: &first,
                        chunks: &first_summary.chunks,
                        compressed_bytes: first_summary.compressed_bytes,
                        tar_bytes: first_summary.tar_bytes,
                    };
                    let progress = |b| progress_job.progress(b);
                    // In place in the first pass's file where the filesystem can move
                    // extents; otherwise a copy.
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&first)
                        .map_err(ArchiveError::Output)?;
                    let in_place = archive::in_place::assemble(
                        &file,
                        &first_archive,
                        &second.delta,
                        &second.pieces,
                        create_partial(&scratch)?,
                        &opts,
                        &progress,
                    )?;
                    let (written, tar_bytes, file) = match in_place {
                        Some(done) => {
                            fs::rename(&first, &partial).map_err(ArchiveError::Output)?;
                            (done.written, done.tar_bytes, file)
                        }
                        None => {
                            drop(file);
                            let copy = archive::precopy::assemble(
                                create_partial(&partial)?,
                                &first_archive,
                                &second.delta,
                                &second.pieces,
                                &opts,
                                &progress,
                            )?;
                            (copy.written, copy.tar_bytes, copy.file)
                        }
                    };
                    remove_temporaries();
                    crash_point("backup.assembled");
                    let syncing = std::time::Instant::now();
                    file.sync_all().map_err(ArchiveError::Output)?;
                    tracing::info!(
                        secs = syncing.elapsed().as_secs_f64(),
                        "the assembled archive is on disk"
                    );
                    archive::Summary {
                        sha256: archive::hex(&written.sha256),
                        tar_sha256: written.raw_sha256.map(|h| archive::hex(&h)),
                        compressed_bytes: written.compressed_bytes,
                        tar_bytes,
                        entries: second.entries,
                        stored: second.stored,
                        mount_entries: second.mount_entries,
                        chunks: written.chunks,
                        warnings: second.warnings,
                        index: Some(second.index),
                    }
                };
                Ok(with_index_written(summary, &final_path))
            })();
            if result.is_err() {
                remove_temporaries();
            }
            result
        });
        Ok((assembled, downtime))
    }

    /// Where the archive goes and what its metadata entry says. Refuses an app
    /// with a volume appsnap cannot read from the host (an empty folder archived as the
    /// app's data would be a lie with a 200), unless `skip_unreadable_mounts` says to
    /// archive the rest.
    fn plan(&self, app: &App, origin: Origin, note: Option<String>) -> Result<Plan, ManagerError> {
        if let Some((name, what)) = app.unreadable.first()
            && !self.config.skip_unreadable_for(&app.id)
        {
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
            note,
        };
        Ok(Plan {
            meta_json: serde_json::to_vec_pretty(&meta).expect("metadata serializes"),
            journal: self.store.journal_path(&app.id, "backup"),
            dir,
            snapshot_id,
            created_at,
            final_path,
            partial,
        })
    }

    /// Starts the disk reading what the archive needs, and a metadata walk for its size,
    /// while the hooks run and the containers stop: the app is down for less time.
    fn start_reading(&self, app: &App, job: &Job) -> Reading {
        let sources = app.sources();
        let opts = archive::Options {
            level: self.config.compression_level,
            threads: self.config.threads(),
            skip_dirs: vec![self.store.root().to_path_buf()],
            cancel: Some(self.gate.new_cancel(Some(job))),
            // Without a repository, no copy needs the stream's hash: a later copy hashes
            // the snapshot once itself.
            hash_tar: !self.config.repositories.is_empty(),
            ..archive::Options::default()
        };
        let ahead = archive::read_ahead(&sources, &opts);
        let estimate_sources = sources.clone();
        let estimating = tokio::task::spawn_blocking(move || archive::estimate(&estimate_sources));
        Reading {
            estimating,
            archive: Archiving {
                sources,
                opts,
                ahead,
            },
        }
    }

    /// With a quota policy bound, the quota decides on the estimated size
    /// before anything is stopped; returns the snapshots it evicts to make room. Without
    /// one, the estimate only feeds the job's progress, beside the backup.
    async fn admit(
        &self,
        app: &App,
        job: &Job,
        estimating: tokio::task::JoinHandle<u64>,
    ) -> Result<Vec<String>, ManagerError> {
        if self
            .policies
            .effective(&app.id, crate::policy::Kind::Quota)
            .is_none()
        {
            // The metadata walk runs beside the backup (and warms the inodes the
            // archive's walk reads next) instead of before it.
            let job = job.clone();
            tokio::spawn(async move { job.total(estimating.await.unwrap_or(0)) });
            return Ok(Vec::new());
        }
        job.step("estimating size");
        let total = estimating.await.unwrap_or(0);
        job.total(total);
        job.step("asking the quota policy");
        self.rules().quota_admit(&app.id, total).await
    }

    /// In stop mode, journals the containers about to stop, then stops them, so a
    /// crash of appsnap cannot leave the app down (see [`recover_backup`]). A stop that
    /// fails starts again what was stopped and fails the backup. Returns the stops'
    /// warnings.
    async fn stop(
        &self,
        app: &App,
        plan: &Plan,
        stopped: &[String],
        job: &Job,
    ) -> Result<Vec<String>, ManagerError> {
        if stopped.is_empty() {
            return Ok(Vec::new());
        }
        // Stopping the app for a backup that will be thrown away would only cost downtime.
        ManagerError::if_cancelled(job)?;
        job.step("stopping containers");
        let record = BackupJournal {
            app_id: app.id.clone(),
            snapshot_id: plan.snapshot_id.clone(),
            stopped: stopped.to_vec(),
            partial: plan.partial.clone(),
        };
        crate::catalog::write_atomic(
            &plan.journal,
            &serde_json::to_vec(&record).expect("journal"),
        )
        .map_err(io_err("cannot write the backup journal"))?;
        crash_point("backup.journaled");
        let stopping = self.containers.stop_all(stopped, Purpose::Backup).await;
        crash_point("backup.stopped");
        match stopping {
            Ok(warnings) => Ok(warnings),
            Err(e) => {
                let mut ignored = Vec::new();
                self.start_again(stopped, &plan.journal, &mut ignored).await;
                Err(e)
            }
        }
    }

    /// The archive synced, its sidecar written, renamed into place and listed:
    /// only a complete, checksummed archive is ever listed. A failure removes the
    /// partial archive.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        app: &App,
        plan: Plan,
        synced: Synced,
        origin: Origin,
        note: Option<String>,
        mut warnings: Vec<String>,
        downtime: Downtime,
    ) -> Result<Snapshot, ManagerError> {
        let synced = synced.await.unwrap_or_else(|e| {
            Err(ArchiveError::Output(io::Error::other(format!(
                "archive sync task: {e}"
            ))))
        });
        let summary = match synced {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_file(&plan.partial);
                return Err(e.into());
            }
        };
        warnings.extend(summary.warnings);
        let mut downtime = downtime;
        if downtime.passes == 1 && downtime.downtime_ms > 0 {
            // Stop mode: everything was read while the app was down.
            downtime.stopped_entries = summary.entries;
            downtime.stopped_bytes = summary.tar_bytes;
        }
        if summary.entries > self.config.max_archive_entries {
            warnings.push(format!(
                "{} entries: another server importing this snapshot needs \
                 `max_archive_entries` of at least that",
                summary.entries
            ));
        }
        let snapshot = Snapshot {
            snapshot_id: plan.snapshot_id,
            app_id: app.id.clone(),
            size_bytes: summary.compressed_bytes,
            file_path: plan.final_path.to_string_lossy().into_owned(),
            sha256: summary.sha256.clone(),
            mounts: app.mounts.clone(),
            facts: Facts {
                created_at: plan.created_at,
                origin,
                note,
                pinned: false,
                warnings,
                tar_bytes: Some(summary.tar_bytes),
                entries: Some(summary.entries),
                tar_sha256: summary.tar_sha256,
                // Owed from now on: a crash before they run leaves them `pending`, resumed.
                copies: self.repos.owed(),
                // Every entry written here is one the restore's rules accept, as a full
                // verify would find: the first restore need not read the archive twice.
                checked: Some(crate::catalog::Checked {
                    sha256: summary.sha256.clone(),
                    tar_bytes: summary.tar_bytes,
                    entries: summary.entries,
                    stored: summary.stored,
                    mount_entries: summary.mount_entries,
                }),
                downtime: Some(downtime),
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
            fs::rename(&plan.partial, &plan.final_path)?;
            File::open(&plan.dir)?.sync_all()
        };
        if let Err(e) = commit() {
            let _ = fs::remove_file(&plan.partial);
            let _ = fs::remove_file(crate::catalog::sidecar_path(&plan.final_path));
            let _ = fs::remove_file(archive::index::path_for(&plan.final_path));
            return Err(io_err("cannot move the finished archive into place")(e));
        }
        crash_point("backup.renamed");
        // On failure the archive stays and is listed again at the next start-up.
        self.store.insert(snapshot.clone())?;
        crash_point("backup.listed");
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
}

/// Where a backup's archive goes, decided before anything runs.
struct Plan {
    /// The app's folder under the backup root.
    dir: PathBuf,
    snapshot_id: String,
    created_at: chrono::DateTime<Utc>,
    /// `{id}.tar.gz`: appears only complete, by rename.
    final_path: PathBuf,
    /// `.{id}.tar.gz.partial`: written, synced, renamed; removed by any failure or repair.
    partial: PathBuf,
    /// The archive's first entry, `appsnap.json`.
    meta_json: Vec<u8>,
    /// The backup journal's path (written only in stop mode).
    journal: PathBuf,
}

/// The reads a backup starts before its hooks and stops.
struct Reading {
    /// The metadata walk's total bytes (progress, and the quota's estimate).
    estimating: tokio::task::JoinHandle<u64>,
    archive: Archiving,
}

/// What the archive's writer needs: the trees, the options, the read-ahead under way.
struct Archiving {
    sources: Vec<crate::model::Source>,
    opts: archive::Options,
    ahead: archive::prefetch::Prefetch,
}

/// The mode an app is backed up in: its containers' `appsnap.mode` labels over the
/// configured one. Labels that disagree give the most careful of their modes (`stop`,
/// then `precopy`, then `live`); a label that names no mode is ignored with a warning on
/// the snapshot.
fn mode_of(app: &App, configured: BackupMode, warnings: &mut Vec<String>) -> BackupMode {
    let mut labelled = Vec::new();
    for c in &app.containers {
        let Some(value) = c.labels.get(MODE_LABEL) else {
            continue;
        };
        match value.trim() {
            "stop" => labelled.push(BackupMode::Stop),
            "precopy" => labelled.push(BackupMode::Precopy),
            "live" => labelled.push(BackupMode::Live),
            other => warnings.push(format!(
                "container {}: label {MODE_LABEL}={other:?} is not precopy, stop or live; \
                 ignored",
                c.name
            )),
        }
    }
    [BackupMode::Stop, BackupMode::Precopy, BackupMode::Live]
        .into_iter()
        .find(|m| labelled.contains(m))
        .unwrap_or(configured)
}

/// The archive's writing or assembly under way, ending once the partial file is synced.
type Synced = tokio::task::JoinHandle<Result<archive::Summary, ArchiveError>>;

/// A new partial file, readable by root only; an existing one is never written over.
fn create_partial(path: &Path) -> Result<File, ArchiveError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(ArchiveError::Output)
}

/// A blocking task that panicked, as the archive error it ends the backup with.
fn task_failed(what: &str, e: tokio::task::JoinError) -> ArchiveError {
    ArchiveError::Output(io::Error::other(format!("{what} task: {e}")))
}

/// Archives into the partial file on a blocking thread (with progress in
/// `job`), then returns at once with the fsync still running: all the data is read by
/// then, so the app may run again while the archive reaches the disk.
async fn archive_then_sync(plan: &Plan, work: Archiving, job: &Job) -> Synced {
    let archived = write_archive(&plan.partial, plan, work, job, None).await;
    let final_path = plan.final_path.clone();
    tokio::task::spawn_blocking(move || {
        let (summary, file, _) = archived?;
        file.sync_all().map_err(ArchiveError::Output)?;
        Ok::<_, ArchiveError>(with_index_written(summary, &final_path))
    })
}

/// Writes the entry index the archive's writer made beside the archive that will be
/// `final_path`, before the archive is moved there (an index left without its archive
/// is removed at start-up). Browsing then starts at once, without reading the archive.
/// An index that cannot be written is only logged: the first listing makes it again.
fn with_index_written(mut summary: archive::Summary, final_path: &Path) -> archive::Summary {
    if let Some(index) = summary.index.take() {
        let at = archive::index::path_for(final_path);
        if let Err(e) = index.write(&at, &summary.sha256, &summary.chunks) {
            tracing::warn!("cannot write the entry index {}: {e}", at.display());
        }
    }
    summary
}

/// Writes the archive of `work` into a new partial file at `path` on a blocking thread,
/// with progress in `job` (stop mode's archive, or a pre-copy's first pass, which
/// records into a new spill file at `records`). Nothing is synced here.
async fn write_archive(
    path: &Path,
    plan: &Plan,
    work: Archiving,
    job: &Job,
    records: Option<PathBuf>,
) -> Result<(archive::Summary, File, Option<archive::precopy::Recorder>), ArchiveError> {
    let (progress_job, path, meta_json) = (job.clone(), path.to_path_buf(), plan.meta_json.clone());
    tokio::task::spawn_blocking(move || {
        let file = create_partial(&path)?;
        let spill = records.as_deref().map(create_partial).transpose()?;
        let written = archive::write_recording(
            file,
            &meta_json,
            &work.sources,
            &work.opts,
            &|b| progress_job.progress(b),
            &work.ahead,
            spill,
        );
        drop(work.ahead);
        written
    })
    .await
    .unwrap_or_else(|e| Err(task_failed("archive", e)))
}

/// Only a crash is of interest at these points of a backup (see [`crate::failpoint`]).
fn crash_point(name: &str) {
    let _ = crate::failpoint::point(name);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_labelled(modes: &[&str]) -> App {
        App {
            id: "a".into(),
            containers: modes
                .iter()
                .enumerate()
                .map(|(i, m)| crate::docker::Container {
                    id: format!("c{i}"),
                    name: format!("c{i}"),
                    running: true,
                    labels: [(MODE_LABEL.to_string(), m.to_string())].into(),
                })
                .collect(),
            mounts: Vec::new(),
            skipped: Vec::new(),
            unreadable: Vec::new(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn a_label_overrides_the_config_and_the_most_careful_one_wins() {
        let mut warnings = Vec::new();
        let mode = |labels: &[&str], w: &mut Vec<String>| {
            mode_of(&app_labelled(labels), BackupMode::Precopy, w)
        };
        assert_eq!(mode(&[], &mut warnings), BackupMode::Precopy);
        assert_eq!(mode(&["live"], &mut warnings), BackupMode::Live);
        assert_eq!(mode(&["live", "stop"], &mut warnings), BackupMode::Stop);
        assert_eq!(
            mode(&["precopy", "live"], &mut warnings),
            BackupMode::Precopy
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(mode(&["cold"], &mut warnings), BackupMode::Precopy);
        assert!(
            warnings.len() == 1 && warnings[0].contains("\"cold\""),
            "{warnings:?}"
        );
    }
}
