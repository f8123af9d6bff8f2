//! Restore: put a snapshot's data back without ever leaving the app worse off.
//!
//! verify (checksum + a full dry-run read, before anything is touched) → lock the app →
//! stop its running containers → move each mount's current data aside (a rename next to
//! it; when the mount is itself a mount point and cannot be renamed, its children are
//! renamed into a hidden folder inside it) → extract safely → start the containers that
//! were running and wait until they run (and are healthy) → drop the moved-aside data.
//!
//! Any failure after the stop rolls back: what was extracted is removed, the moved-aside
//! data is renamed back (so it is byte- and metadata-identical: it never moved between
//! filesystems), the containers that were running are started, and the caller gets
//! `RestoreFailed` naming the step. Every transition is written to a journal first, so a
//! crash at any point is repaired at the next start-up: rolled back, or finished when the
//! extraction had completed.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{BackupManager, ManagerError, Started, io_err, short};
use crate::api::error::ErrorBody;
use crate::archive::{self, extract};
use crate::catalog::Snapshot;
use crate::docker::{App, Docker};
use crate::ids;
use crate::jobs::Job;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    /// Moving current data aside: nothing extracted yet.
    Moving,
    /// Extracting: targets may hold partial snapshot data.
    Extracting,
    /// Extraction complete: only starting the app and cleaning up remain.
    Extracted,
}

/// How a mount's current data was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum How {
    /// `target` renamed to `aside`, a sibling.
    Renamed,
    /// `target` is a mount point: its children renamed into `aside`, a folder inside it.
    Inside,
    /// Nothing was there; the restore creates it.
    Created,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Moved {
    target: PathBuf,
    aside: PathBuf,
    how: How,
    /// For `Inside`: the mount root's own metadata, which extraction overwrites.
    root: Option<RootMeta>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RootMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RestoreJournal {
    app_id: String,
    snapshot_id: String,
    phase: Phase,
    /// Containers that were running and must run again whatever happens.
    stopped: Vec<String>,
    mounts: Vec<Moved>,
    /// Volumes this restore created (removed again on rollback).
    created_volumes: Vec<String>,
}

impl BackupManager {
    /// Validates, checks ownership and takes the app's lock (so 400/404/409 come back at
    /// once), then restores as a job in its own task.
    pub async fn start_restore(
        self: &Arc<Self>,
        app_id: &str,
        snapshot_id: &str,
    ) -> Result<Started, ManagerError> {
        ids::validate("app id", app_id)?;
        let snapshot = self.get(snapshot_id)?;
        let app = self.docker.find_app(app_id).await?;
        if snapshot.app_id != app_id {
            return Err(ManagerError::ForeignSnapshot {
                snapshot_id: snapshot.snapshot_id,
                snapshot_app: snapshot.app_id,
                app_id: app_id.into(),
            });
        }
        let lock = self.lock_app(app_id, "restore")?;
        let job = self.jobs.create("restore", app_id);
        let (this, job2) = (Arc::clone(self), job.clone());
        let done = tokio::spawn(async move {
            let _lock = lock;
            tracing::info!(app = %app.id, snapshot = %snapshot.snapshot_id, "restore started");
            let result = this.restore(&app, &snapshot, &job2).await;
            match &result {
                Ok(_) => {
                    tracing::info!(app = %app.id, snapshot = %snapshot.snapshot_id, "restore finished");
                    job2.succeed(serde_json::to_value(&snapshot).expect("snapshot serializes"));
                }
                Err(e) => {
                    tracing::error!(app = %app.id, snapshot = %snapshot.snapshot_id, "restore failed: {e}");
                    job2.fail(serde_json::to_value(ErrorBody::from(e)).expect("error serializes"));
                }
            }
            result.map(|()| snapshot).map_err(Arc::new)
        });
        Ok(Started { job, done })
    }

    async fn restore(&self, app: &App, snapshot: &Snapshot, job: &Job) -> Result<(), ManagerError> {
        job.step("verifying");
        let verified = self.verify_file(snapshot, job).await?;
        job.total(verified.tar_bytes);
        job.progress(0);

        job.step("preparing");
        let (plan, created_volumes) = self.plan_targets(app, snapshot).await?;
        let stopped: Vec<String> = app.running().iter().map(|c| c.id.clone()).collect();
        let journal_path = self.journal_path(&app.id, "restore");
        let mut journal = RestoreJournal {
            app_id: app.id.clone(),
            snapshot_id: snapshot.snapshot_id.clone(),
            phase: Phase::Moving,
            stopped: stopped.clone(),
            mounts: Vec::new(),
            created_volumes,
        };
        let write = |j: &RestoreJournal| {
            crate::catalog::write_atomic(&journal_path, &serde_json::to_vec(j).expect("journal"))
                .map_err(io_err("cannot write the restore journal"))
        };
        write(&journal)?;

        let result = self
            .restore_steps(snapshot, job, &plan, &mut journal, &write)
            .await;
        let (step, cause) = match result {
            Ok(()) => {
                job.step("removing the previous data");
                for moved in &journal.mounts {
                    drop_aside(moved);
                }
                let _ = fs::remove_file(&journal_path);
                return Ok(());
            }
            Err(failure) => failure,
        };
        job.step("rolling back");
        tracing::warn!(app = %app.id, "restore failed at {step}: {cause}; rolling back");
        match rollback(&self.docker, &journal).await {
            Ok(()) => {
                let _ = fs::remove_file(&journal_path);
                Err(ManagerError::RestoreFailed { step, cause })
            }
            Err(rollback) => Err(ManagerError::RollbackFailed {
                step,
                cause,
                rollback,
            }),
        }
    }

    /// The steps after the journal exists; an error names the step that failed.
    async fn restore_steps(
        &self,
        snapshot: &Snapshot,
        job: &Job,
        plan: &[(String, PathBuf)],
        journal: &mut RestoreJournal,
        write: &impl Fn(&RestoreJournal) -> Result<(), ManagerError>,
    ) -> Result<(), (String, String)> {
        let fail = |step: &str| {
            let step = step.to_string();
            move |e: String| (step, e)
        };
        let stopped = journal.stopped.clone();
        if !stopped.is_empty() {
            job.step("stopping containers");
            self.stop_all(&stopped)
                .await
                .map_err(|e| e.to_string())
                .map_err(fail("stopping containers"))?;
        }

        job.step("moving current data aside");
        let rid = format!("{:08x}", rand::random::<u32>());
        for (_, target) in plan {
            let moved = plan_move(target, &rid)
                .map_err(|e| e.to_string())
                .map_err(fail("moving current data aside"))?;
            // Journal first: a crash between the two lines finds an intent whose aside
            // does not exist yet, and leaves the target alone.
            journal.mounts.push(moved.clone());
            write(journal)
                .map_err(|e| e.to_string())
                .map_err(fail("moving current data aside"))?;
            perform_move(&moved)
                .map_err(|e| format!("{}: {e}", moved.target.display()))
                .map_err(fail("moving current data aside"))?;
        }

        job.step("extracting");
        journal.phase = Phase::Extracting;
        write(journal)
            .map_err(|e| e.to_string())
            .map_err(fail("extracting"))?;
        let targets: Vec<extract::Target> = plan
            .iter()
            .zip(&journal.mounts)
            .map(|((archive_dir, target), moved)| extract::Target {
                archive_dir: archive_dir.clone(),
                path: target.clone(),
                reserved: (moved.how == How::Inside).then(|| {
                    moved
                        .aside
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                }),
            })
            .collect();
        let opts = extract::Options {
            allow_devices: self.config.restore_devices,
            dry_run: false,
        };
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
        .map_err(fail("extracting"))?;
        // The data set aside is deleted soon: the restored data must be on disk first.
        for (_, target) in plan {
            sync_fs(target)
                .map_err(|e| format!("syncing {}: {e}", target.display()))
                .map_err(fail("extracting"))?;
        }
        journal.phase = Phase::Extracted;
        write(journal)
            .map_err(|e| e.to_string())
            .map_err(fail("extracting"))?;

        if !stopped.is_empty() {
            job.step("starting containers");
            let warnings = self.start_all(&stopped).await;
            if !warnings.is_empty() {
                return Err(("starting containers".into(), warnings.join("; ")));
            }
            job.step("waiting for containers to run");
            self.wait_running(&stopped)
                .await
                .map_err(fail("waiting for containers to run"))?;
        }
        Ok(())
    }

    /// Where each of the snapshot's mounts goes in the app as it is now: the same volume
    /// or path when it still exists, else the mount serving the same container path (an
    /// app reinstalled under new volume names), else recreated (volumes are created with
    /// the app's label; paths at their original place).
    async fn plan_targets(
        &self,
        app: &App,
        snapshot: &Snapshot,
    ) -> Result<(Vec<(String, PathBuf)>, Vec<String>), ManagerError> {
        let mut plan = Vec::new();
        let mut created = Vec::new();
        for m in &snapshot.mounts {
            let dests: Vec<&str> = m.destination.split(',').filter(|d| !d.is_empty()).collect();
            let current = app
                .mounts
                .iter()
                .filter(|c| c.kind == m.kind)
                .find(|c| c.name == m.name || m.kind == "project")
                .or_else(|| {
                    app.mounts
                        .iter()
                        .filter(|c| c.kind == m.kind)
                        .find(|c| c.destination.split(',').any(|d| dests.contains(&d)))
                });
            let target = match current {
                Some(c) => PathBuf::from(&c.source),
                None if m.kind == "volume" => {
                    let path = self.docker.create_volume(&m.name, &app.id).await?;
                    tracing::info!(app = %app.id, volume = %m.name, "volume recreated for the restore");
                    created.push(m.name.clone());
                    PathBuf::from(path)
                }
                None => PathBuf::from(self.docker.on_host(&m.name)),
            };
            if plan.iter().any(|(_, t)| *t == target) {
                return Err(ManagerError::Corrupt(format!(
                    "two mounts of the snapshot map to {}",
                    target.display()
                )));
            }
            plan.push((m.archive_dir.clone(), target));
        }
        Ok((plan, created))
    }

    /// Bounded wait until every container runs — healthy when it has a healthcheck,
    /// otherwise still running after `restore_settle_secs` without a restart.
    async fn wait_running(&self, ids: &[String]) -> Result<(), String> {
        let deadline =
            Instant::now() + Duration::from_secs(self.config.restore_timeout_secs.into());
        let settle = Duration::from_secs(self.config.restore_settle_secs.into());
        let mut first: HashMap<&str, (Instant, i64, String)> = HashMap::new();
        let mut pending: Vec<&String> = ids.iter().collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for id in pending {
                let s = self.docker.state(id).await.map_err(|e| e.to_string())?;
                let (seen, restarts, started) = first.entry(id).or_insert((
                    Instant::now(),
                    s.restart_count,
                    s.started_at.clone(),
                ));
                if !s.running
                    || s.restarting
                    || s.restart_count != *restarts
                    || s.started_at != *started
                {
                    return Err(format!(
                        "container {} stopped after the restore (exit code {})",
                        short(id),
                        s.exit_code
                    ));
                }
                match s.health.as_deref() {
                    Some("healthy") => {}
                    Some("unhealthy") => {
                        return Err(format!("container {} is unhealthy", short(id)));
                    }
                    Some(_) => still.push(id),
                    None if seen.elapsed() >= settle => {}
                    None => still.push(id),
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "container {} did not become ready within {} s",
                    short(pending[0]),
                    self.config.restore_timeout_secs
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }
}

/// Decides how `target`'s current data will be set aside.
fn plan_move(target: &Path, rid: &str) -> io::Result<Moved> {
    let name = target
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_else(|| b"root".to_vec());
    let sibling = target.with_file_name(format!(
        ".{}.appsnap-aside-{rid}",
        String::from_utf8_lossy(&name)
    ));
    let meta = match fs::symlink_metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Moved {
                target: target.into(),
                aside: sibling,
                how: How::Created,
                root: None,
            });
        }
        Err(e) => return Err(e),
    };
    if !(meta.is_dir() && is_mount_point(target, &meta)) {
        return Ok(Moved {
            target: target.into(),
            aside: sibling,
            how: How::Renamed,
            root: None,
        });
    }
    Ok(Moved {
        target: target.into(),
        aside: target.join(format!(".appsnap-aside-{rid}")),
        how: How::Inside,
        root: Some(RootMeta {
            mode: meta.permissions().mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            xattrs: xattrs_of(target),
        }),
    })
}

/// A mount point cannot be renamed (EBUSY). Another filesystem shows in `st_dev`; a bind
/// mount of the same filesystem only in the mount table.
fn is_mount_point(path: &Path, meta: &fs::Metadata) -> bool {
    let parent_dev = path
        .parent()
        .and_then(|p| fs::metadata(p).ok())
        .map(|m| m.dev());
    if parent_dev.is_some_and(|d| d != meta.dev()) {
        return true;
    }
    let Ok(canonical) = fs::canonicalize(path) else {
        return false;
    };
    let Ok(table) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mount_point| Path::new(&unescape_mountinfo(mount_point)) == canonical)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn perform_move(m: &Moved) -> io::Result<()> {
    match m.how {
        How::Created => {
            if let Some(parent) = m.target.parent() {
                fs::create_dir_all(parent)?;
            }
            Ok(())
        }
        How::Renamed => fs::rename(&m.target, &m.aside),
        How::Inside => {
            fs::DirBuilder::new().mode(0o700).create(&m.aside)?;
            for child in fs::read_dir(&m.target)? {
                let child = child?;
                if child.path() != m.aside {
                    fs::rename(child.path(), m.aside.join(child.file_name()))?;
                }
            }
            Ok(())
        }
    }
}

/// Flushes the filesystem holding `path` (syncfs: one call for a whole tree).
fn sync_fs(path: &Path) -> io::Result<()> {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("/"))
    };
    let f = fs::File::open(dir)?;
    nix::unistd::syncfs(&f)?;
    Ok(())
}

/// After a successful restore the moved-aside data goes.
fn drop_aside(m: &Moved) {
    let result = match m.how {
        How::Created => Ok(()),
        How::Renamed | How::Inside => remove_any(&m.aside),
    };
    if let Err(e) = result {
        tracing::error!(
            "could not remove the previous data at {}: {e}",
            m.aside.display()
        );
    }
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Puts every mount back as the journal says it was, then starts the containers.
/// Idempotent, so a crash during a rollback is repaired by running it again.
async fn rollback(docker: &Docker, journal: &RestoreJournal) -> Result<(), String> {
    let mut errors = Vec::new();
    for id in &journal.stopped {
        // It may have been started already; a stopped one answers 304, which is fine.
        if let Err(e) = docker.stop(id, 10).await
            && !e.is_not_found()
        {
            tracing::warn!(container = %short(id), "stop before rollback: {e}");
        }
    }
    for moved in journal.mounts.iter().rev() {
        if let Err(e) = undo(moved, journal.phase) {
            tracing::error!("rollback of {}: {e}", moved.target.display());
            errors.push(format!("{}: {e}", moved.target.display()));
        }
    }
    if errors.is_empty() {
        for name in &journal.created_volumes {
            if let Err(e) = docker.remove_volume(name).await {
                tracing::warn!(volume = %name, "could not remove the volume created for the restore: {e}");
            }
        }
    }
    for id in &journal.stopped {
        if let Err(e) = docker.start(id).await {
            errors.push(format!("container {} could not be started: {e}", short(id)));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn undo(m: &Moved, phase: Phase) -> io::Result<()> {
    let extracted = phase != Phase::Moving;
    match m.how {
        How::Created => {
            if extracted {
                remove_any(&m.target)?;
            }
        }
        How::Renamed => {
            if fs::symlink_metadata(&m.aside).is_err() {
                return Ok(()); // never moved
            }
            if fs::symlink_metadata(&m.target).is_ok() {
                if !extracted {
                    return Err(io::Error::other(format!(
                        "both {} and its aside copy exist before extraction; keeping both",
                        m.target.display()
                    )));
                }
                remove_any(&m.target)?;
            }
            fs::rename(&m.aside, &m.target)?;
        }
        How::Inside => {
            if fs::symlink_metadata(&m.aside).is_err() {
                return Ok(());
            }
            if extracted {
                for child in fs::read_dir(&m.target)? {
                    let child = child?;
                    if child.path() != m.aside {
                        remove_any(&child.path())?;
                    }
                }
            }
            for child in fs::read_dir(&m.aside)? {
                let child = child?;
                fs::rename(child.path(), m.target.join(child.file_name()))?;
            }
            fs::remove_dir(&m.aside)?;
            if let Some(root) = &m.root {
                restore_root_meta(&m.target, root)?;
            }
        }
    }
    Ok(())
}

fn xattrs_of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    names
        .filter_map(|n| Some((n.as_bytes().to_vec(), xattr::get(path, &n).ok()??)))
        .collect()
}

fn restore_root_meta(path: &Path, root: &RootMeta) -> io::Result<()> {
    use std::ffi::OsStr;
    nix::unistd::chown(path, Some(root.uid.into()), Some(root.gid.into()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(root.mode))?;
    for name in xattr::list(path)? {
        if !root
            .xattrs
            .iter()
            .any(|(k, _)| k.as_slice() == name.as_bytes())
        {
            xattr::remove(path, &name)?;
        }
    }
    for (k, v) in &root.xattrs {
        xattr::set(path, OsStr::from_bytes(k), v)?;
    }
    let t = nix::sys::time::TimeSpec::new(root.mtime, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// Start-up repair of a restore interrupted by a crash: finished when the extraction had
/// completed (the data on disk is the verified snapshot), rolled back otherwise.
pub(super) async fn recover_restore(docker: &Docker, path: &Path) {
    let journal: RestoreJournal = match fs::read(path).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(j)) => j,
        other => {
            // Keep it: it may describe data set aside that a person must look at.
            tracing::error!(
                "unreadable restore journal {} ({other:?}); left in place",
                path.display()
            );
            return;
        }
    };
    if journal.phase == Phase::Extracted {
        tracing::warn!(app = %journal.app_id, snapshot = %journal.snapshot_id,
            "a restore was interrupted after its extraction completed: finishing it");
        for moved in &journal.mounts {
            drop_aside(moved);
        }
        for id in &journal.stopped {
            if let Err(e) = docker.start(id).await {
                tracing::error!(container = %short(id), "could not start: {e}");
            }
        }
        let _ = fs::remove_file(path);
        return;
    }
    tracing::warn!(app = %journal.app_id, snapshot = %journal.snapshot_id, phase = ?journal.phase,
        "a restore was interrupted: rolling back to the data from before it");
    match rollback(docker, &journal).await {
        Ok(()) => {
            tracing::info!(app = %journal.app_id, "interrupted restore rolled back");
            let _ = fs::remove_file(path);
        }
        Err(e) => {
            tracing::error!(app = %journal.app_id, "rollback incomplete, will retry at next start: {e}")
        }
    }
}
