//! Restore: put a snapshot's data back without ever leaving the app worse off.
//!
//! In the order the code follows (the app's lock is already taken by the job starter in
//! `run`, and a copy from a repository already fetched and listed): a heavy slot →
//! verify (the checksum of an archive checked before, else a full read under the
//! extraction's rules) → wait for the cleanup of the app's last restore → read the app's
//! containers again → plan where each mount goes and check the space (nothing touched
//! yet) → journal → extract safely into a staging folder beside each mount, **the app
//! still running** → stop the running containers → per mount, set its current data aside
//! and rename the staged data in → start the containers that were running and wait until
//! they run (and are healthy) → commit. The app is down only from the stop to the start:
//! two renames per mount, whatever the data's size (a mount point, which cannot be staged
//! beside, is extracted after the stop instead). The data set aside is dropped after the
//! answer, by a cleanup job (`start_cleanup`).
//!
//! The file half — stage, swap, commit or roll back, each transition journaled — is
//! the `aside` state machine; the rollback is the `recovery` component's, shared with
//! the repairs. Any failure after the journal exists rolls back: the staged data is
//! removed, the old data renamed back, the containers that were running started again,
//! and the caller gets `RestoreFailed` naming the step. When the data cannot be put
//! back, the containers are left stopped (never started on half-restored data), the
//! journal stays, and the repair is retried in the background; until then a backup or
//! restore of the app answers 409.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

mod paths;
mod preview;

pub use paths::{PathsTarget, Selection};
pub use preview::{FetchPlan, MountPlan, PreviewOf, RestorePreview};

use super::BackupManager;
use super::aside::{self, RestoreJournal, Swap};
use super::containers::{Purpose, Readiness};
use super::error::ManagerError;
use super::gate::AppLock;
use super::recovery::{remove_volumes, rollback};
use crate::archive::{self, extract};
use crate::catalog::Snapshot;
use crate::docker::App;
use crate::failpoint;
use crate::jobs::Job;

impl BackupManager {
    /// Drops the data a restore replaced, after its answer, as a job of kind `cleanup`
    /// (the restore's result names it). Safe to do late: the snapshot is complete, synced
    /// and running, and the journal says Committed, so a crash or a shutdown meanwhile is
    /// finished at the next start. The next backup or restore of the app waits for it
    /// ([`Self::after_cleanup`]); the periodic repair leaves its journal alone.
    pub(super) fn start_cleanup(&self, app_id: &str, swap: Swap) -> Job {
        let job = self.jobs.create("cleanup", app_id);
        job.step("removing the data the restore replaced");
        let running = self.gate.cleanup_started(app_id);
        let (app, job2) = (app_id.to_string(), job.clone());
        // A plain thread, not the runtime's blocking pool: a shutdown does not wait for it
        // (the runtime would), and the next start finishes what it leaves.
        std::thread::spawn(move || {
            let started = Instant::now();
            let outcome = swap.drop_asides();
            let seconds = started.elapsed().as_secs_f64();
            match outcome {
                Ok(left) if left.is_empty() => {
                    tracing::info!(app = %app, seconds, "removed the data the restore replaced");
                    job2.succeed(serde_json::json!({ "seconds": seconds }));
                }
                Ok(left) => job2.fail(Arc::new(ManagerError::CleanupFailed {
                    app_id: app.clone(),
                    details: left.join("; "),
                })),
                Err(e) => {
                    tracing::error!(app = %app, "restore cleanup: {e}");
                    job2.fail(Arc::new(ManagerError::CleanupFailed {
                        app_id: app.clone(),
                        details: e,
                    }));
                }
            }
            drop(running);
        });
        job
    }

    /// Restores `snapshot` into `app`; returns what the answer reports and the committed
    /// swap whose data set aside is still to be dropped.
    ///
    /// Holds a heavy slot throughout. The archive is checked first (only its checksum
    /// when a full check of the same file is recorded), then the cleanup of the app's last
    /// restore is waited for: verification only reads, so the two overlap. Up to the
    /// journal's creation a failure leaves the app's data and containers as they were
    /// (`Corrupt`, `NoSpaceToRestore`, `RepairPending`, Docker errors). After it, every
    /// failure rolls back and is `RestoreFailed`, or `RollbackFailed` when the data cannot
    /// be put back. Only the containers running at the time of the plan are stopped and
    /// started again; stopped ones stay stopped.
    pub(super) async fn restore(
        &self,
        app: &App,
        snapshot: &Snapshot,
        job: &Job,
        lock: &AppLock,
    ) -> Result<(Done, Swap), ManagerError> {
        let _slot = self.gate.heavy_slot(Some(job)).await;
        // A cancel asked for while it waited for its slot: nothing is read.
        ManagerError::if_cancelled(job)?;
        let verified = match snapshot.checked() {
            Some(checked) => {
                job.step("verifying the checksum");
                self.verify.checksum(snapshot, checked).await?
            }
            None => {
                job.step("verifying");
                let (verified, new) = self
                    .verify
                    .file(snapshot, job, self.gate.new_cancel(Some(job)))
                    .await?;
                self.store.record_check(&snapshot.snapshot_id, new);
                verified
            }
        };
        job.total(verified.tar_bytes);
        job.progress(0);

        self.after_cleanup(lock, job).await?;
        job.step("preparing");
        // The app as it is now, after the waits above: a container started meanwhile
        // must be stopped before its data moves.
        let app = &self.docker.find_app(&app.id).await?;
        let mut plan = self
            .plan_targets(app, snapshot, &verified.mount_entries)
            .await?;
        if let Err(e) = check_space(&plan, &verified.stored).and(ManagerError::if_cancelled(job)) {
            remove_volumes(&self.docker, &plan.created).await;
            return Err(e);
        }
        let running: Vec<String> = app.running().iter().map(|c| c.id.clone()).collect();
        let mut journal = RestoreJournal::new(&app.id, &snapshot.snapshot_id);
        journal.created_volumes = std::mem::take(&mut plan.created);
        let created = journal.created_volumes.clone();
        let mut swap = match Swap::begin(&self.store.journal_path(&app.id, "restore"), journal) {
            Ok(swap) => swap,
            Err(e) => {
                // No journal names them: they are removed now or never.
                remove_volumes(&self.docker, &created).await;
                return Err(ManagerError::Io {
                    context: "cannot start the restore".into(),
                    source: std::io::Error::other(e),
                });
            }
        };

        let mut done = Done {
            skipped: std::mem::take(&mut plan.skipped),
            downtime_ms: 0,
            unstaged: Vec::new(),
            restored_to: Vec::new(),
        };
        let steps = self
            .restore_steps(snapshot, job, &plan, running, &mut swap, &mut done)
            .await;
        self.conclude(&app.id, swap, steps, done, job).await
    }

    /// The end of a restore whose journal exists: when `steps` succeeded, journals the
    /// commit and returns the swap (its data set aside is dropped by the cleanup job);
    /// otherwise rolls back (`RestoreFailed` naming the step, or `RollbackFailed`).
    async fn conclude(
        &self,
        app_id: &str,
        mut swap: Swap,
        steps: Result<(), (String, String)>,
        done: Done,
        job: &Job,
    ) -> Result<(Done, Swap), ManagerError> {
        let (step, cause) = match steps {
            Ok(()) => {
                if let Err(e) = swap.committed() {
                    // The journal still says Extracted, which recovery finishes too.
                    tracing::error!(app = %app_id, "restore done, its journal not updated: {e}");
                }
                tracing::info!(app = %app_id, downtime_ms = done.downtime_ms, "restored");
                return Ok((done, swap));
            }
            Err(failure) => failure,
        };
        job.step("rolling back");
        tracing::warn!(app = %app_id, "restore failed at {step}: {cause}; rolling back");
        match rollback(&self.containers, swap).await {
            // Whatever stopped the steps after a cancel, the cancel is why they stopped.
            Ok(()) if job.cancel_requested() => Err(ManagerError::Cancelled(job.info().kind)),
            Ok(()) => Err(ManagerError::RestoreFailed { step, cause }),
            Err(rollback) => Err(ManagerError::RollbackFailed {
                step,
                cause,
                rollback,
            }),
        }
    }

    /// Journals the containers about to be stopped, then stops them: the downtime
    /// starts, and its start is returned.
    async fn stop_for_restore(
        &self,
        running: &[String],
        swap: &mut Swap,
        job: &Job,
    ) -> Result<Instant, (String, String)> {
        let fail = |e: String| ("stopping containers".to_string(), e);
        swap.stopping(running.to_vec()).map_err(fail)?;
        let down = Instant::now();
        if !running.is_empty() {
            job.step("stopping containers");
            self.containers
                .stop_all(running, Purpose::Restore)
                .await
                .map_err(|e| fail(e.to_string()))?;
            failpoint::point("restore.stopped").map_err(fail)?;
        }
        Ok(down)
    }

    /// Starts the containers a restore stopped and waits until they run (and are
    /// healthy): `restore_timeout_secs`, settled `restore_settle_secs`. Any start
    /// warning, a container that does not keep running, or a shutdown during the wait is
    /// the step's failure: nothing is committed until the app runs on the restored data.
    async fn start_and_wait(&self, running: &[String], job: &Job) -> Result<(), (String, String)> {
        let fail = |step: &str| {
            let step = step.to_string();
            move |e: String| (step, e)
        };
        job.step("starting containers");
        let started = self.containers.start_all(running, Purpose::Restore).await;
        if !started.warnings.is_empty() {
            return Err(("starting containers".into(), started.warnings.join("; ")));
        }
        failpoint::point("restore.started").map_err(fail("starting containers"))?;
        job.step("waiting for containers to run");
        let readiness = Readiness {
            timeout: Duration::from_secs(self.config.restore_timeout_secs.into()),
            settle: Duration::from_secs(self.config.restore_settle_secs.into()),
        };
        self.containers
            .wait_running(running, readiness, || self.gate.is_shutting_down())
            .await
            .map_err(fail("waiting for containers to run"))
    }

    /// The steps after the journal exists; an error names the step that failed.
    ///
    /// 1. With the app still running, extract into a staging folder beside each written
    ///    target ([`aside::staging_path`]), then sync: the long part of a restore costs
    ///    no downtime. A target that is a mount point cannot be staged; it waits for 4.
    /// 2. Journal the running containers, then stop them (the downtime starts).
    /// 3. Per target, one journaled move: its current data aside, the staged data in.
    /// 4. Only if some target could not be staged: extract those, now, into the mounts
    ///    (the aside folder kept inside a mount point is passed to the extraction as a
    ///    reserved name: an archive entry of that name is refused, never written over
    ///    the old data).
    /// 5. If the snapshot left paths out (`appsnap.exclude`), carry the current data's
    ///    matches over from the aside into the restored tree ([`Swap::carry_over`]).
    /// 6. Sync and journal `Extracted`, then start the stopped containers and wait until
    ///    they run (`restore_timeout_secs`, settled `restore_settle_secs`): the downtime
    ///    ends. Any start warning, a container that does not keep running, or a shutdown
    ///    during the wait fails the restore: nothing is committed until the app runs on
    ///    the restored data.
    async fn restore_steps(
        &self,
        snapshot: &Snapshot,
        job: &Job,
        plan: &Plan,
        running: Vec<String>,
        swap: &mut Swap,
        done: &mut Done,
    ) -> Result<(), (String, String)> {
        let fail = |step: &str| {
            let step = step.to_string();
            move |e: String| (step, e)
        };
        let rid = format!("{:08x}", rand::random::<u32>());
        // One per target, in plan order: where it is staged (None: discarded, or
        // extracted after the stop).
        let staging: Vec<Option<PathBuf>> = plan
            .targets
            .iter()
            .map(|t| {
                (!t.discard)
                    .then(|| aside::staging_path(&t.path, &rid))
                    .flatten()
            })
            .collect();
        done.unstaged = plan
            .targets
            .iter()
            .zip(&staging)
            .filter(|(t, s)| !t.discard && s.is_none())
            .map(|(t, _)| t.path.display().to_string())
            .collect();
        swap.stage(staging.iter().flatten().cloned().collect())
            .map_err(fail("extracting into staging folders"))?;
        if staging.iter().any(Option::is_some) {
            job.step("extracting into staging folders (the app keeps running)");
            let targets = plan
                .targets
                .iter()
                .zip(&staging)
                .map(|(t, s)| match s {
                    Some(dir) => extract::Target {
                        path: dir.clone(),
                        ..t.clone()
                    },
                    None => discarded(t),
                })
                .collect();
            self.extract_into(snapshot, job, targets)
                .await
                .map_err(fail("extracting into staging folders"))?;
        }
        swap.staged()
            .map_err(fail("extracting into staging folders"))?;
        // The last moment to stop with the app untouched (the rollback only removes the
        // staging folders); from the stop on, finishing is shorter than undoing.
        if !job.no_more_cancels() {
            let cancelled = ManagerError::Cancelled(job.info().kind);
            return Err(fail("extracting into staging folders")(
                cancelled.to_string(),
            ));
        }

        let down = self.stop_for_restore(&running, swap, job).await?;

        job.step("swapping in the restored data");
        let written = plan
            .targets
            .iter()
            .zip(&staging)
            .filter(|(t, _)| !t.discard);
        for (t, staged) in written {
            swap.move_aside(&t.path, &rid, staged.as_deref())
                .map_err(fail("swapping in the restored data"))?;
        }

        if !done.unstaged.is_empty() {
            job.step(&format!(
                "extracting into {} with the app stopped (a mount point cannot be staged \
                 beside)",
                done.unstaged.join(", ")
            ));
            swap.begin_extraction().map_err(fail("extracting"))?;
            // The name of an aside folder inside a mount is reserved in that mount.
            let mut moved = swap.journal.mounts.iter();
            let targets = plan
                .targets
                .iter()
                .map(|t| {
                    if t.discard {
                        return t.clone();
                    }
                    let m = moved.next().expect("one journaled move per written target");
                    if m.staged.is_some() {
                        return discarded(t);
                    }
                    let mut t = t.clone();
                    t.reserved = (m.how == aside::How::Inside).then(|| {
                        m.aside
                            .file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned()
                    });
                    t
                })
                .collect();
            self.extract_into(snapshot, job, targets)
                .await
                .map_err(fail("extracting"))?;
        }
        // What the snapshot left out (`appsnap.exclude`) comes over from the current
        // data, before the restore can commit: never dropped with the old data.
        let excludes: Vec<_> = snapshot
            .mounts
            .iter()
            .zip(&plan.targets)
            .filter(|(_, t)| !t.discard)
            .map(|(m, _)| crate::exclude::Exclude::new(&m.exclude))
            .collect();
        if excludes.iter().any(Option::is_some) {
            job.step("carrying the paths the snapshot left out over from the current data");
            for (i, exclude) in excludes.iter().enumerate() {
                if let Some(exclude) = exclude {
                    swap.carry_over(i, exclude)
                        .map_err(fail("carrying excluded paths over"))?;
                }
            }
        }
        swap.extracted().map_err(fail("extracting"))?;

        if !running.is_empty() {
            self.start_and_wait(&running, job).await?;
        }
        done.downtime_ms = down.elapsed().as_millis() as u64;
        Ok(())
    }

    /// Extracts the snapshot's archive into `targets` on a blocking thread, with
    /// progress in `job`, under the extraction's rules.
    async fn extract_into(
        &self,
        snapshot: &Snapshot,
        job: &Job,
        targets: Vec<extract::Target>,
    ) -> Result<(), String> {
        let opts = self
            .verify
            .extract_options(Some(snapshot), self.gate.new_cancel(Some(job)));
        let (path, threads, progress_job) = (
            PathBuf::from(&snapshot.file_path),
            self.config.threads(),
            job.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let stream = archive::read::open_tar_stream(&path, threads).map_err(|e| {
                archive::ArchiveError::Read {
                    path: path.clone(),
                    source: e,
                }
            })?;
            extract::extract(stream, &targets, &opts, &|b| progress_job.progress(b))
        })
        .await
        .map_err(|e| format!("extraction task: {e}"))
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map(|_| ())
    }

    /// Where each of the snapshot's mounts goes. **The archive never picks a host path**:
    /// a target is one of the app's mounts as Docker reports them *now* (the same volume
    /// or path, else the mount serving the same container path — an app reinstalled under
    /// new names), or a named volume that does not exist at all, created with the app's
    /// label. Anything else — a path the app no longer mounts, a volume of another app,
    /// a path inside the backup root, appsnap's state or Docker's own directory — is not
    /// restored: its entries are checked and discarded, and it is listed as skipped.
    /// A mount the archive holds no entry for (nothing could be read at backup time, a
    /// bind of a socket, an archive that leaves it out) is not touched either: restoring
    /// it would only empty it. A volume created for a plan that then fails is removed
    /// again.
    async fn plan_targets(
        &self,
        app: &App,
        snapshot: &Snapshot,
        mount_entries: &[u64],
    ) -> Result<Plan, ManagerError> {
        let mut plan = Plan::default();
        match self
            .fill_plan(app, snapshot, mount_entries, &mut plan)
            .await
        {
            Ok(()) => Ok(plan),
            Err(e) => {
                remove_volumes(&self.docker, &plan.created).await;
                Err(e)
            }
        }
    }

    /// Fills `plan` in the snapshot's mount order, so that `plan.targets` lines up by
    /// index with the mounts, `mount_entries` and the verified sizes (`check_space`).
    /// `Err` refuses the whole restore: Docker failed, or two written targets overlap
    /// (`Corrupt`: the extraction of one would land inside the other). Volumes created so
    /// far are in `plan.created` for the caller to remove.
    async fn fill_plan(
        &self,
        app: &App,
        snapshot: &Snapshot,
        mount_entries: &[u64],
        plan: &mut Plan,
    ) -> Result<(), ManagerError> {
        let docker_root = PathBuf::from(self.docker.root_dir().await?);
        for (i, m) in snapshot.mounts.iter().enumerate() {
            let target = if mount_entries.get(i) == Some(&0) {
                Err(HOLDS_NOTHING.to_string())
            } else {
                self.target_of(app, m, &docker_root, LostVolume::Create)
                    .await?
            };
            let target = match target {
                Ok(t) => t,
                Err(why) => {
                    tracing::warn!(app = %app.id, mount = %m.name, "not restored: {why}");
                    plan.skipped.push(format!("{} {}: {why}", m.kind, m.name));
                    plan.targets.push(extract::Target {
                        archive_dir: m.archive_dir.clone(),
                        path: PathBuf::new(),
                        reserved: None,
                        discard: true,
                        file_root: false,
                    });
                    continue;
                }
            };
            if let Target::CreatedAt(name, _) = &target {
                plan.created.push(name.clone());
            }
            let path = target.path();
            if plan
                .targets
                .iter()
                .any(|t| !t.discard && (t.path.starts_with(&path) || path.starts_with(&t.path)))
            {
                return Err(ManagerError::Corrupt(format!(
                    "two mounts of the snapshot map to {} (or inside it)",
                    path.display()
                )));
            }
            plan.targets.push(extract::Target {
                archive_dir: m.archive_dir.clone(),
                path,
                reserved: None,
                discard: false,
                file_root: false,
            });
        }
        Ok(())
    }

    /// The target of one snapshot mount, or why it has none.
    ///
    /// The outer `Err` is Docker failing (the restore is refused); the inner one is why
    /// this mount alone is skipped. A current mount matches when it is of the same kind
    /// and has the same name (any `project` mount matches the snapshot's), else when it
    /// serves one of the same container paths (`destination` is a comma-separated list).
    /// A missing named volume is created here, labelled as the app's, when `create`
    /// says so (a partial restore never creates one: the mount is then skipped).
    async fn target_of(
        &self,
        app: &App,
        m: &crate::model::Mount,
        docker_root: &Path,
        lost: LostVolume,
    ) -> Result<Result<Target, String>, ManagerError> {
        let dests: Vec<&str> = m.destination.split(',').filter(|d| !d.is_empty()).collect();
        let same_kind = || app.mounts.iter().filter(|c| c.kind == m.kind);
        let current = same_kind()
            .find(|c| c.name == m.name || m.kind == "project")
            .or_else(|| same_kind().find(|c| c.destination.split(',').any(|d| dests.contains(&d))));
        // The volume the target is, if it is one: today's (possibly renamed) volume
        // serving the same container path, or the snapshot's, recreated.
        let volume = match current {
            Some(c) => (c.kind == "volume").then(|| c.name.clone()),
            None => (m.kind == "volume").then(|| m.name.clone()),
        };
        let target = match current {
            Some(c) => Target::Current(PathBuf::from(&c.source)),
            None if m.kind == "volume" && lost == LostVolume::Skip => {
                return Ok(Err("the app does not have this volume now".into()));
            }
            None if m.kind == "volume" => match self.docker.volume_owner(&m.name).await? {
                None if lost == LostVolume::Foresee => {
                    Target::Foreseen(docker_root.join("volumes").join(&m.name).join("_data"))
                }
                None => {
                    let path = self.docker.create_volume(&m.name, &app.id).await?;
                    tracing::info!(app = %app.id, volume = %m.name, "volume recreated for the restore");
                    Target::CreatedAt(m.name.clone(), PathBuf::from(path))
                }
                Some(owner) => {
                    return Ok(Err(format!(
                        "the volume exists and belongs to {}, not to this app",
                        owner.map_or("no compose project".into(), |o| format!("app `{o}`"))
                    )));
                }
            },
            None => {
                return Ok(Err(
                    "the app does not mount it any more (the archive's path is not trusted)".into(),
                ));
            }
        };
        let path = target.path();
        let config = &self.config;
        let inside = |root: &Path| path.starts_with(root) || root.starts_with(&path);
        if inside(&config.backup_root) || inside(&config.state_dir) {
            return Ok(Err(format!(
                "{} overlaps appsnap's backup root or state",
                path.display()
            )));
        }
        let own_volume = volume
            .as_ref()
            .map(|v| docker_root.join("volumes").join(v).join("_data"));
        if inside(docker_root) && own_volume.as_ref() != Some(&path) {
            return Ok(Err(format!(
                "{} is inside Docker's own directory",
                path.display()
            )));
        }
        // A volume that another app's running containers also use is not this app's to
        // move: its data would be renamed under them, and dropped after the restore.
        if let (Some(v), Target::Current(_)) = (&volume, &target) {
            let others = self.docker.other_users_of_volume(v, &app.id).await?;
            if !others.is_empty() {
                let names: Vec<String> = others
                    .iter()
                    .map(|(name, project)| match project {
                        Some(p) => format!("{name} (app `{p}`)"),
                        None => name.clone(),
                    })
                    .collect();
                return Ok(Err(format!(
                    "the volume is also used by running container(s) of other apps: {}; \
                     stop them to restore it",
                    names.join(", ")
                )));
            }
        }
        Ok(Ok(target))
    }
}

/// Refuses, before anything is touched, a restore whose data cannot fit: the old data stays
/// on each filesystem (set aside) until the new data is complete, so what the snapshot's
/// files will allocate (see [`archive::allocation`]) must fit in what is free now, summed
/// per filesystem ([`space`]). `stored` lines up with `plan.targets`, and discarded
/// targets need nothing.
fn check_space(plan: &Plan, stored: &[u64]) -> Result<(), ManagerError> {
    let written = plan
        .targets
        .iter()
        .zip(stored)
        .filter(|(t, _)| !t.discard)
        .map(|(t, &bytes)| (t.path.clone(), bytes));
    for s in space(written)? {
        if s.need > s.free {
            return Err(ManagerError::NoSpaceToRestore(format!(
                "the snapshot needs {} bytes on the filesystem of {}, which has {} \
                 free (the current data stays there until the restore is complete; every \
                 data segment of a file takes whole blocks); nothing was touched",
                s.need,
                s.path.display(),
                s.free
            )));
        }
    }
    Ok(())
}

/// Why a mount of the snapshot is left alone: it has no entry.
const HOLDS_NOTHING: &str = "the snapshot holds nothing for it (it could not be read at \
     backup time, or the archive leaves it out); left as it is";

/// What [`BackupManager::target_of`] does with a volume of the snapshot that the app no
/// longer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LostVolume {
    /// Creates it, labelled as the app's (a whole restore).
    Create,
    /// Leaves the mount out (a partial restore).
    Skip,
    /// Says where it would be created, creating nothing (the preview).
    Foresee,
}

/// What a restore needs on one filesystem, and what it has free.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Space {
    /// A path on that filesystem: the nearest existing folder of one of its targets.
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Bytes the restored files will allocate there.
    pub need: u64,
    /// Bytes free there now (for an unprivileged writer).
    pub free: u64,
}

/// The bytes `targets` (host path, bytes it will allocate) need, summed per filesystem,
/// and what each filesystem has free. A filesystem is told by the device of each
/// target's nearest existing ancestor (a target may not exist yet).
pub(super) fn space(
    targets: impl Iterator<Item = (PathBuf, u64)>,
) -> Result<Vec<Space>, ManagerError> {
    use std::os::unix::fs::MetadataExt;
    let mut need: Vec<(u64, Space)> = Vec::new();
    for (path, bytes) in targets {
        let existing = path
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        let dev = std::fs::metadata(existing).map(|m| m.dev()).unwrap_or(0);
        match need.iter_mut().find(|(d, _)| *d == dev) {
            Some((_, s)) => s.need += bytes,
            None => need.push((
                dev,
                Space {
                    path: existing.to_path_buf(),
                    need: bytes,
                    free: 0,
                },
            )),
        }
    }
    need.into_iter()
        .map(|(_, mut s)| {
            let vfs = nix::sys::statvfs::statvfs(&s.path).map_err(|e| ManagerError::Io {
                context: format!("statvfs {}", s.path.display()),
                source: e.into(),
            })?;
            s.free = vfs.blocks_available() as u64 * vfs.fragment_size() as u64;
            Ok(s)
        })
        .collect()
}

/// `t` with its entries checked but not written (it is written by the other pass).
fn discarded(t: &extract::Target) -> extract::Target {
    extract::Target {
        path: PathBuf::new(),
        reserved: None,
        discard: true,
        file_root: false,
        ..t.clone()
    }
}

/// What a restore that succeeded reports (beside the committed swap, whose data set aside
/// the cleanup job drops).
pub(super) struct Done {
    /// Snapshot mounts not restored, with why.
    pub skipped: Vec<String>,
    /// From the stop of the containers to their running again (or to the swap, with
    /// none running).
    pub downtime_ms: u64,
    /// Targets extracted with the app stopped: mount points, which cannot be staged.
    pub unstaged: Vec<String>,
    /// Where a partial restore `beside` put the paths (host paths).
    pub restored_to: Vec<String>,
}

impl Done {
    /// The answer of a restore of `snapshot` that succeeded, whose data set aside the
    /// job `cleanup` drops.
    pub(super) fn answer(
        self,
        message: &str,
        snapshot: &Snapshot,
        cleanup: &Job,
    ) -> super::Restored {
        super::Restored {
            message: message.into(),
            app_id: snapshot.app_id.clone(),
            snapshot_id: snapshot.snapshot_id.clone(),
            skipped: self.skipped,
            cleanup_job: Some(cleanup.id()),
            downtime_ms: self.downtime_ms,
            extracted_while_stopped: self.unstaged,
            restored_to: self.restored_to,
        }
    }
}

/// Where a restore writes, and what it leaves out.
#[derive(Debug, Default)]
struct Plan {
    /// One per snapshot mount, in order; skipped ones are `discard`.
    targets: Vec<extract::Target>,
    /// Volumes created for this restore (removed again by a rollback).
    created: Vec<String>,
    /// Snapshot mounts not restored, with why.
    skipped: Vec<String>,
}

/// The host path one snapshot mount is extracted to, and how it came to exist.
enum Target {
    /// One of the app's mounts as Docker reports it now.
    Current(PathBuf),
    /// A volume that did not exist, created for the restore: its name (a failed plan or
    /// a rollback removes it again) and its mount point on the host.
    CreatedAt(String, PathBuf),
    /// A volume that does not exist and a restore would create (`LostVolume::Foresee`),
    /// at the mount point Docker gives a local volume.
    Foreseen(PathBuf),
}

impl Target {
    fn path(&self) -> PathBuf {
        match self {
            Target::Current(p) | Target::CreatedAt(_, p) | Target::Foreseen(p) => p.clone(),
        }
    }
}
