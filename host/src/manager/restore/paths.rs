//! Partial restore: chosen paths of a snapshot put back, in place or beside, the app's
//! other data untouched.
//!
//! In place, the guarantees of a whole restore hold for those paths, through the same
//! journaled swap ([`super::aside`]) with one move per chosen path instead of one per
//! mount:
//! 1. each path is found in the snapshot's entry index, and on the host under the app's
//!    mount *now* (the archive never picks a host path; every folder on the way must be a
//!    real folder, never a link);
//! 2. its subtree is read from the archive (only the gzip members from its first entry
//!    to its last, CRC-checked, through the bounded tar reader and the extraction's rules)
//!    into a staging folder beside it, **the app still running**: that read is the
//!    verification, so a snapshot that does not read back fails here, nothing of the app
//!    touched;
//! 3. stop → per path, current data aside and the staged data in → the paths the snapshot
//!    left out (`appsnap.exclude`) carried over → sync → start → wait until running →
//!    commit; any failure rolls back, a crash is finished from the journal.
//!
//! `beside` never stops the app: each staged path is renamed to
//! `<name>.restored-<snapshot id>` next to the path, for the user to pick from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::super::BackupManager;
use super::super::aside::{self, RestoreJournal, Swap};
use super::super::error::ManagerError;
use super::super::gate::AppLock;
use super::{Done, LostVolume, Plan, Target, check_space};
use crate::archive::index::{self, EntryKind, Index, inside};
use crate::archive::{self, extract, subtree};
use crate::catalog::Snapshot;
use crate::docker::App;
use crate::failpoint;
use crate::jobs::Job;

/// Most paths one partial restore takes.
pub const MAX_PATHS: usize = 100;

/// Where a partial restore puts the paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PathsTarget {
    /// In place of the current data at those paths (the app is stopped for the swap).
    #[default]
    InPlace,
    /// Into new folders `<name>.restored-<snapshot id>` next to them, the app running.
    Beside,
}

/// The body of a partial restore.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// Archive paths as the file listing gives them (`volumes/x/uploads/2024`): folders
    /// or regular files of the snapshot, none inside another; 1 to 100.
    pub paths: Vec<String>,
    #[serde(default)]
    pub target: PathsTarget,
}

/// One chosen path, checked against the snapshot.
#[derive(Debug, Clone)]
pub(in crate::manager) struct Chosen {
    entry: index::Entry,
    /// Its mount, by index in the snapshot's mounts.
    mount: usize,
    /// Below the mount's folder (empty: the mount itself).
    rel: String,
}

impl BackupManager {
    /// Checks a selection against `snapshot` before anything is locked: the paths are
    /// valid, distinct, none inside another, and each is a folder or a regular file of
    /// the snapshot under one of its mounts. Errors: `InvalidPath` (400), `PathNotFound`
    /// (404), `NotAFile` (400: a link, a device, …), `Corrupt` when the index cannot be
    /// made.
    pub(in crate::manager) async fn check_selection(
        &self,
        snapshot: &Snapshot,
        selection: &Selection,
    ) -> Result<(Arc<Index>, Vec<Chosen>), ManagerError> {
        if selection.paths.is_empty() || selection.paths.len() > MAX_PATHS {
            return Err(ManagerError::InvalidPath(format!(
                "{} paths (a partial restore takes 1 to {MAX_PATHS})",
                selection.paths.len()
            )));
        }
        let mut paths = Vec::new();
        for p in &selection.paths {
            let path = super::super::check_path(p)?;
            if path.is_empty() {
                return Err(ManagerError::InvalidPath("an empty path".into()));
            }
            if let Some(other) = paths.iter().find(|o: &&String| overlap(o, &path)) {
                return Err(ManagerError::InvalidPath(format!(
                    "`{other}` and `{path}`: one is inside the other"
                )));
            }
            paths.push(path);
        }
        let index = self.index_of(snapshot).await?;
        let mut chosen = Vec::new();
        for path in paths {
            let not_found = || ManagerError::PathNotFound {
                snapshot_id: snapshot.snapshot_id.clone(),
                path: path.clone(),
                what: "path",
            };
            let entry = index
                .get(path.as_bytes())
                .map_err(self.local_index_damaged(snapshot))?
                .ok_or_else(not_found)?;
            if !matches!(entry.kind, EntryKind::Dir | EntryKind::File) {
                return Err(ManagerError::NotAFile(path));
            }
            let (mount, m) = snapshot
                .mounts
                .iter()
                .enumerate()
                .filter(|(_, m)| path == m.archive_dir || overlap(&m.archive_dir, &path))
                .max_by_key(|(_, m)| m.archive_dir.len())
                .ok_or_else(not_found)?;
            let rel = path[m.archive_dir.len()..]
                .trim_start_matches('/')
                .to_string();
            chosen.push(Chosen {
                entry: entry.to_owned(),
                mount,
                rel,
            });
        }
        Ok((index, chosen))
    }

    /// Restores the `chosen` paths of `snapshot` into `app` (see the module header).
    /// Returns what the answer reports and the committed swap, whose data set aside the
    /// cleanup job drops. Errors before the journal exists touch nothing:
    /// `PathNotRestorable` (409), `NoSpaceToRestore`, Docker's; after it, a failure rolls
    /// back (`RestoreFailed`, or `RollbackFailed`).
    pub(in crate::manager) async fn restore_paths(
        &self,
        app: &App,
        snapshot: &Snapshot,
        (index, chosen): (Arc<Index>, Vec<Chosen>),
        target: PathsTarget,
        job: &Job,
        lock: &AppLock,
    ) -> Result<(Done, Swap), ManagerError> {
        let _slot = self.gate.heavy_slot(Some(job)).await;
        ManagerError::if_cancelled(job)?;
        self.after_cleanup(lock, job).await?;
        job.step("preparing");
        let app = &self.docker.find_app(&app.id).await?;
        let docker_root = PathBuf::from(self.docker.root_dir().await?);
        let rid = format!("{:08x}", rand::random::<u32>());
        let mut places = Vec::new();
        let mut plan = Plan::default();
        let mut stored = Vec::new();
        for c in &chosen {
            let m = &snapshot.mounts[c.mount];
            let shown = String::from_utf8_lossy(&c.entry.path).into_owned();
            let refuse = |why: String| ManagerError::PathNotRestorable {
                path: shown.clone(),
                why,
            };
            // Only a mount the app has now: a partial restore never creates one.
            let base = match self
                .target_of(app, m, &docker_root, LostVolume::Skip)
                .await?
            {
                Ok(Target::Current(base)) => base,
                Ok(Target::CreatedAt(..) | Target::Foreseen(_)) => {
                    unreachable!("a lost volume is skipped when asked to")
                }
                Err(why) => return Err(refuse(why)),
            };
            let host = host_path(&base, &c.rel).map_err(refuse)?;
            let staging = aside::staging_path(&host, &rid).ok_or_else(|| {
                refuse("it is a mount point on the host: restore the whole app".into())
            })?;
            let beside = beside_path(&host, &snapshot.snapshot_id);
            if target == PathsTarget::Beside && beside.exists() {
                return Err(refuse(format!("{} exists already", beside.display())));
            }
            plan.targets.push(extract::Target {
                archive_dir: String::new(),
                path: staging.clone(),
                reserved: None,
                discard: false,
                file_root: false,
            });
            // What its files allocate: the path itself when a file, else its tree's.
            let mut bytes = match c.entry.kind {
                EntryKind::File => archive::allocation(c.entry.size, None),
                _ => 0,
            };
            let damaged = || self.local_index_damaged(snapshot);
            for i in index.below(&c.entry.path).map_err(damaged())? {
                let e = index.entry(i).map_err(damaged())?;
                if e.kind == EntryKind::File {
                    bytes += archive::allocation(e.size, None);
                }
            }
            stored.push(bytes);
            places.push(Place {
                host,
                staging,
                beside,
                base,
                rid: rid.clone(),
            });
        }
        check_space(&plan, &stored)?;
        ManagerError::if_cancelled(job)?;
        let running: Vec<String> = app.running().iter().map(|c| c.id.clone()).collect();
        let journal = RestoreJournal::new(&app.id, &snapshot.snapshot_id);
        let mut swap =
            Swap::begin(&self.store.journal_path(&app.id, "restore"), journal).map_err(|e| {
                ManagerError::Io {
                    context: "cannot start the restore".into(),
                    source: std::io::Error::other(e),
                }
            })?;
        let mut done = Done {
            skipped: Vec::new(),
            downtime_ms: 0,
            unstaged: Vec::new(),
            restored_to: Vec::new(),
        };
        let steps = async {
            self.stage_paths(snapshot, &index, &chosen, &places, job, &mut swap)
                .await?;
            // The last moment to stop with nothing moved (see `restore_steps`).
            if !job.no_more_cancels() {
                let cancelled = ManagerError::Cancelled(job.info().kind);
                return Err(("staging".to_string(), cancelled.to_string()));
            }
            match target {
                PathsTarget::Beside => put_beside(&places, &mut done),
                PathsTarget::InPlace => {
                    self.swap_paths(
                        snapshot, &chosen, &places, running, &mut swap, &mut done, job,
                    )
                    .await
                }
            }
        }
        .await;
        self.conclude(&app.id, swap, steps, done, job).await
    }

    /// Step 2 of the module header: journals the staging folders, then extracts each
    /// chosen subtree into its own, the app running, and syncs them.
    async fn stage_paths(
        &self,
        snapshot: &Snapshot,
        index: &Arc<Index>,
        chosen: &[Chosen],
        places: &[Place],
        job: &Job,
        swap: &mut Swap,
    ) -> Result<(), (String, String)> {
        let step = "extracting the chosen paths into staging folders";
        let fail = |e: String| (step.to_string(), e);
        swap.stage(places.iter().map(|p| p.staging.clone()).collect())
            .map_err(fail)?;
        job.step(&format!("{step} (the app keeps running)"));
        let opts = self
            .verify
            .extract_options(Some(snapshot), self.gate.new_cancel(Some(job)));
        let archive = PathBuf::from(&snapshot.file_path);
        let work: Vec<(index::Entry, PathBuf)> = chosen
            .iter()
            .zip(places)
            .map(|(c, p)| (c.entry.clone(), p.staging.clone()))
            .collect();
        let (index, progress_job) = (Arc::clone(index), job.clone());
        let tar: Arc<dyn index::TarAt> = Arc::new(index::Local {
            archive: archive.clone(),
            index: Arc::clone(&index),
        });
        tokio::task::spawn_blocking(move || {
            let mut read = 0;
            for (entry, staging) in work {
                let tree = subtree::open(Arc::clone(&tar), Arc::clone(&index), &entry)
                    .map_err(|e| format!("reading {}: {e}", archive.display()))?;
                let name = String::from_utf8_lossy(entry.split().1).into_owned();
                let target = extract::Target {
                    archive_dir: name,
                    path: staging,
                    reserved: None,
                    discard: false,
                    file_root: entry.kind == EntryKind::File,
                };
                let summary =
                    extract::extract(tree, &[target], &opts, &|b| progress_job.progress(read + b))
                        .map_err(|e| e.to_string())?;
                read += summary.tar_bytes;
            }
            Ok::<_, String>(())
        })
        .await
        .map_err(|e| format!("extraction task: {e}"))
        .and_then(|r| r)
        .map_err(fail)?;
        swap.staged().map_err(fail)
    }

    /// Step 3 of the module header, in place: stop, one journaled move per path, the
    /// excluded paths carried over, sync, start and wait.
    #[allow(clippy::too_many_arguments)]
    async fn swap_paths(
        &self,
        snapshot: &Snapshot,
        chosen: &[Chosen],
        places: &[Place],
        running: Vec<String>,
        swap: &mut Swap,
        done: &mut Done,
        job: &Job,
    ) -> Result<(), (String, String)> {
        let fail = |step: &str| {
            let step = step.to_string();
            move |e: String| (step, e)
        };
        let down = self.stop_for_restore(&running, swap, job).await?;
        job.step("swapping in the restored paths");
        for (c, p) in chosen.iter().zip(places) {
            // Again now that the app is stopped: what it did meanwhile cannot have put a
            // link on the way.
            host_path(&p.base, &c.rel).map_err(fail("swapping in the restored paths"))?;
            swap.move_aside(&p.host, &p.rid, Some(&p.staging))
                .map_err(fail("swapping in the restored paths"))?;
        }
        for (i, c) in chosen.iter().enumerate() {
            let m = &snapshot.mounts[c.mount];
            if c.entry.kind != EntryKind::Dir {
                continue;
            }
            if let Some(exclude) = crate::exclude::Exclude::new(&m.exclude) {
                job.step("carrying the paths the snapshot left out over from the current data");
                swap.carry_over(i, &exclude.below(c.rel.as_bytes()))
                    .map_err(fail("carrying excluded paths over"))?;
            }
        }
        swap.extracted()
            .map_err(fail("swapping in the restored paths"))?;
        if !running.is_empty() {
            self.start_and_wait(&running, job).await?;
        }
        done.downtime_ms = down.elapsed().as_millis() as u64;
        Ok(())
    }
}

/// Where one chosen path goes on the host.
struct Place {
    /// The path in the app's current data.
    host: PathBuf,
    /// The hidden sibling it is extracted into first.
    staging: PathBuf,
    /// Where `beside` puts it.
    beside: PathBuf,
    /// Its mount's root on the host.
    base: PathBuf,
    /// This restore's random id, which its staging and aside folders' names carry.
    rid: String,
}

/// `beside`: each staged path renamed to its `beside` name. A failure removes the ones
/// renamed already (the staging folders left go with the rollback): nothing is kept of
/// a restore that failed.
fn put_beside(places: &[Place], done: &mut Done) -> Result<(), (String, String)> {
    for (k, p) in places.iter().enumerate() {
        let renamed = failpoint::point("restore.beside")
            .and_then(|()| std::fs::rename(&p.staging, &p.beside).map_err(|e| e.to_string()));
        if let Err(e) = renamed {
            for q in &places[..k] {
                let _ =
                    std::fs::remove_dir_all(&q.beside).or_else(|_| std::fs::remove_file(&q.beside));
            }
            return Err((
                "putting the restored paths beside".into(),
                format!("{}: {e}", p.beside.display()),
            ));
        }
        done.restored_to.push(p.beside.display().to_string());
    }
    Ok(())
}

/// `<host>`'s `beside` name: `<name>.restored-<snapshot id>`.
fn beside_path(host: &Path, snapshot_id: &str) -> PathBuf {
    let name = host.file_name().unwrap_or_default().to_string_lossy();
    host.with_file_name(format!("{name}.restored-{snapshot_id}"))
}

/// The host path of `rel` below the mount root `base`, when every folder on its way
/// (the root included) is a real folder, never a link: the rename of what is at the path
/// itself (whatever it is, or nothing) then stays inside the mount.
fn host_path(base: &Path, rel: &str) -> Result<PathBuf, String> {
    let mut at = base.to_path_buf();
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let way =
        std::iter::once(None).chain(parts.iter().take(parts.len().saturating_sub(1)).map(Some));
    for part in way {
        if let Some(part) = part {
            at.push(part);
        }
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "{} is not a folder in the app's current data (a link is never followed)",
                    at.display()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "{}: {e} (restore the folder above it instead)",
                    at.display()
                ));
            }
        }
    }
    if let Some(last) = parts.last() {
        at.push(last);
    }
    Ok(at)
}

/// Whether one of two archive paths is inside the other (or they are the same).
fn overlap(a: &str, b: &str) -> bool {
    inside(a.as_bytes(), b.as_bytes()) || inside(b.as_bytes(), a.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_on_the_way_is_refused_and_a_missing_last_part_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("m");
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", base.join("l")).unwrap();
        assert_eq!(host_path(&base, "a/b").unwrap(), base.join("a/b"));
        assert_eq!(host_path(&base, "a/gone").unwrap(), base.join("a/gone"));
        assert_eq!(host_path(&base, "").unwrap(), base);
        assert!(host_path(&base, "l/passwd").is_err(), "through a link");
        assert!(
            host_path(&base, "gone/x").is_err(),
            "a missing folder on the way"
        );
        assert_eq!(
            host_path(&base, "l").unwrap(),
            base.join("l"),
            "the link itself moves"
        );
    }

    #[test]
    fn paths_overlap_only_along_whole_names() {
        assert!(overlap("v/a", "v/a/b"));
        assert!(overlap("v/a", "v/a"));
        assert!(!overlap("v/a", "v/ab"));
    }
}
