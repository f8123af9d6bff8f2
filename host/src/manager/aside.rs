//! The file half of a restore as a journaled state machine: extract the snapshot into a
//! staging folder beside each mount while the app still runs, then (the app stopped) set
//! each mount's current data aside and rename the staged data into its place, then either
//! **commit** (drop what was set aside) or **roll back** (put it back). No Docker here, so
//! it is tested on real directories by itself; `restore.rs` orchestrates it with the
//! containers.
//!
//! ```text
//! Staging ──▶ Moving ──▶ Extracting ──▶ Extracted ──▶ Committed ──▶ (journal removed)
//!    │           │            │             │
//!    └───────────┴────────────┴─────────────┴──▶ RollingBack ──▶ (journal removed)
//! ```
//!
//! Staging is why a restore's downtime does not grow with the data: the extraction, the
//! long part, happens before the stop, into `.<name>.appsnap-staged-<rid>` beside the mount
//! (same filesystem, so the swap is two renames; invisible to the containers, which see
//! only the mount itself). A mount that is itself a mount point cannot be staged beside
//! (a rename cannot cross filesystems): it is extracted after the stop, into the mount,
//! as before staging existed (`Extracting`). A journal still `Staging` is rolled back by
//! removing the staging folders alone: the app was never stopped, its data never touched.
//!
//! The journal is written *before* the step it announces and again after each mount's
//! move, undo or drop, so a crash at any instant leaves a journal that says exactly what
//! to finish. The rule recovery follows: **Extracted or Committed → commit, anything else
//! → roll back**, and a rollback, once decided, is never turned into a commit (the journal
//! says `RollingBack` before any side effect of the rollback: before its containers'
//! stop, long before the first undo). Every step is idempotent, so recovery can be
//! interrupted and run again. The result is the old data or the snapshot in every mount,
//! never a mix.
//!
//! Setting aside is a rename next to the mount (instant, never a copy, same filesystem,
//! so undo gives back the very same inodes). A mount that is itself a mount point cannot be
//! renamed (EBUSY): its children are renamed into a hidden folder inside it, and its own
//! owner, mode, times and xattrs are kept in the journal.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::time::TimeSpec;
use serde::{Deserialize, Serialize};

use crate::exclude::Exclude;
use crate::failpoint;

/// Where a restore stands, as its journal says; recovery decides by it alone
/// (`RestoreJournal::commits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Extracting into the staging folders, app running: nothing of the app touched.
    Staging,
    /// Setting current data aside (and renaming staged data in): the app is stopped.
    Moving,
    /// Extracting: targets may hold partial snapshot data.
    Extracting,
    /// Extraction complete and synced: the snapshot is whole on disk.
    Extracted,
    /// The restore succeeded: only dropping the data set aside remains.
    Committed,
    /// Putting the old data back; never turns into a commit.
    RollingBack,
}

/// How a mount's current data was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    /// `target` renamed to `aside`, a sibling.
    Renamed,
    /// `target` is a mount point: its children renamed into `aside`, a folder inside it.
    Inside,
    /// Nothing was there; the restore creates it.
    Created,
}

/// One mount's move, journaled before it is made: recovery may find a `Moved` whose
/// aside does not exist yet, and its undo then leaves the target alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Moved {
    /// The mount's path on the host, where the snapshot is extracted.
    pub target: PathBuf,
    /// Where the current data goes: the sibling `.<name>.appsnap-aside-<rid>` (also
    /// named, though never made, for `Created`), or `<target>/.appsnap-aside-<rid>` for
    /// `Inside`. `rid` is random per restore, so a leftover of an earlier one is not hit.
    pub aside: PathBuf,
    pub how: How,
    /// For `Inside`: the mount root's own metadata, which extraction overwrites.
    pub root: Option<RootMeta>,
    /// The staging folder renamed into `target` once its data is aside: whatever is at
    /// `target` after that is the restore's (an undo renames it back here).
    #[serde(default)]
    pub staged: Option<PathBuf>,
    /// Rolled back already (a resumed rollback skips it).
    #[serde(default)]
    pub undone: bool,
    /// Paths the snapshot left out (`appsnap.exclude`) carried from the aside into the
    /// restored tree, journaled before the first is moved; an undo moves them back first.
    #[serde(default)]
    pub carried: Option<Carried>,
}

/// What [`Swap::carry_over`] moves out of one mount's aside, and what it changes there.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Carried {
    /// Relative to the mount, in the order they are moved; none inside another.
    pub paths: Vec<PathBuf>,
    /// The aside's folders those paths leave (relative; empty for the root) and their
    /// mtime as seconds and nanoseconds: moving a child out and back changes it, and an
    /// undo gives back the old data as it was.
    pub folders: Vec<(PathBuf, i64, i64)>,
}

/// What a mount root looked like before the restore: the extraction writes the
/// archive's metadata onto the root itself, and a rollback puts this back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootMeta {
    /// Permission bits, setuid, setgid and sticky included.
    mode: u32,
    uid: u32,
    gid: u32,
    /// Whole seconds; restored as both the access and the modification time.
    mtime: i64,
    /// Every extended attribute that could be read, as (name, value) bytes.
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The journal of one restore (JSON in `.appsnap/<app>.restore.journal`): everything
/// recovery needs to finish or undo it without the process that began it. Fields added
/// later default when read, so a journal left by an older appsnap is still repaired.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreJournal {
    pub app_id: String,
    /// For the log and a person reading the journal: recovery never reads the archive.
    pub snapshot_id: String,
    pub phase: Phase,
    /// Extraction has begun: a rollback must clear what it wrote.
    #[serde(default)]
    pub extraction_began: bool,
    /// Containers that were running and must run again whatever happens. Empty while
    /// `Staging` (nothing is stopped yet): [`Swap::stopping`] journals them before the stop.
    pub stopped: Vec<String>,
    /// Staging folders this restore may have created: removed by a rollback, and by a
    /// commit if one is still there (each is renamed into its mount by then).
    #[serde(default)]
    pub staging: Vec<PathBuf>,
    /// One per target written, in the order of the moves; a rollback undoes them newest
    /// first.
    pub mounts: Vec<Moved>,
    /// Volumes this restore created (removed again on rollback).
    pub created_volumes: Vec<String>,
}

impl RestoreJournal {
    /// A journal in phase `Staging`, with nothing stopped, staged or moved yet. Nothing is
    /// on disk until `Swap::begin` writes it, and nothing is touched before that.
    pub fn new(app_id: &str, snapshot_id: &str) -> RestoreJournal {
        RestoreJournal {
            app_id: app_id.into(),
            snapshot_id: snapshot_id.into(),
            phase: Phase::Staging,
            extraction_began: false,
            stopped: Vec::new(),
            staging: Vec::new(),
            mounts: Vec::new(),
            created_volumes: Vec::new(),
        }
    }

    /// Whether recovery finishes this restore (else it rolls it back).
    pub fn commits(&self) -> bool {
        matches!(self.phase, Phase::Extracted | Phase::Committed)
    }

    /// Journals written before `extraction_began` existed say it by their phase.
    fn extraction_began(&self) -> bool {
        self.extraction_began || matches!(self.phase, Phase::Extracting | Phase::Extracted)
    }
}

/// A restore's journal on disk and the steps that move it forward.
pub struct Swap {
    /// Read by the caller (containers to start, moves made); changed only by the steps
    /// below, each of which saves it.
    pub journal: RestoreJournal,
    /// The journal's file (the store's `journal_path` of the app).
    path: PathBuf,
}

impl Swap {
    /// Writes a new journal. An outstanding one is never overwritten: it may describe
    /// data set aside by an earlier restore that still has to be put back.
    pub fn begin(path: &Path, journal: RestoreJournal) -> Result<Swap, String> {
        if path.exists() {
            return Err(format!(
                "{} exists: an earlier restore is not repaired yet",
                path.display()
            ));
        }
        let swap = Swap {
            journal,
            path: path.to_path_buf(),
        };
        swap.save()?;
        failpoint::point("restore.journaled")?;
        Ok(swap)
    }

    /// Reads the journal of an interrupted restore, for recovery. `Err` when it cannot be
    /// read or parsed; the file is never removed then: it may describe data set aside.
    pub fn load(path: &Path) -> Result<Swap, String> {
        let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let journal = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is unreadable: {e}", path.display()))?;
        Ok(Swap {
            journal,
            path: path.to_path_buf(),
        })
    }

    /// The journal's file, for the messages that send a person to it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the journal atomically (temporary file, fsync, rename, fsync of the folder):
    /// a crash leaves the previous version or this one, never a torn file.
    fn save(&self) -> Result<(), String> {
        let bytes = serde_json::to_vec(&self.journal).expect("journal serializes");
        crate::catalog::write_atomic(&self.path, &bytes)
            .map_err(|e| format!("cannot write the restore journal: {e}"))
    }

    /// Journals the staging folders before the first is made (`staging_path` of each
    /// target staged), so that a rollback knows what to remove.
    pub fn stage(&mut self, folders: Vec<PathBuf>) -> Result<(), String> {
        self.journal.staging = folders;
        self.save()?;
        failpoint::point("restore.staging")
    }

    /// After a complete extraction into the staging folders: syncs their filesystems, so
    /// that the data renamed into the mounts later is on disk before anything is dropped.
    pub fn staged(&mut self) -> Result<(), String> {
        for dir in &self.journal.staging {
            if fs::symlink_metadata(dir).is_ok() {
                sync_fs(dir).map_err(|e| format!("syncing {}: {e}", dir.display()))?;
            }
        }
        failpoint::point("restore.staged")
    }

    /// Journals the containers about to be stopped, before the stop: from here a rollback
    /// stops and starts them again.
    pub fn stopping(&mut self, stopped: Vec<String>) -> Result<(), String> {
        self.journal.phase = Phase::Moving;
        self.journal.stopped = stopped;
        self.save()
    }

    /// Sets `target`'s current data aside, then renames `staged` (if given) into its
    /// place. The intent is journaled first: a crash between finds an aside that does not
    /// exist yet, or a staged folder not yet renamed, and the undo copes with both.
    pub fn move_aside(
        &mut self,
        target: &Path,
        rid: &str,
        staged: Option<&Path>,
    ) -> Result<(), String> {
        let i = self.journal.mounts.len();
        let mut moved = plan_move(target, rid).map_err(|e| format!("{}: {e}", target.display()))?;
        if staged.is_some() && moved.how == How::Inside {
            return Err(format!(
                "{} became a mount point after its data was staged",
                target.display()
            ));
        }
        moved.staged = staged.map(Path::to_path_buf);
        self.journal.mounts.push(moved.clone());
        self.save()?;
        failpoint::point(&format!("restore.move-{i}.journaled"))?;
        perform_move(&moved).map_err(|e| format!("{}: {e}", target.display()))?;
        failpoint::point(&format!("restore.move-{i}.done"))
    }

    /// Carries what the snapshot left out of mount `i` (its `exclude` patterns) over from
    /// the current data, set aside, into the restored tree: each match is renamed (never
    /// copied), its missing parent folders made like the aside's, and the restored
    /// folders' times kept. Everything is checked before anything moves: a restored
    /// entry in the way (a file where a carried path needs a folder, or at the path
    /// itself) fails the restore, which then rolls back: excluded data is never dropped.
    /// The paths are journaled before the first rename, for the undo.
    pub fn carry_over(&mut self, i: usize, exclude: &Exclude) -> Result<(), String> {
        let m = &self.journal.mounts[i];
        if m.how == How::Created || m.carried.is_some() {
            return Ok(());
        }
        let paths = excluded_paths(&m.aside, exclude)
            .map_err(|e| format!("listing {}: {e}", m.aside.display()))?;
        if paths.is_empty() {
            return Ok(());
        }
        let mut folders: Vec<(PathBuf, i64, i64)> = Vec::new();
        for rel in &paths {
            check_carry(&m.target, rel)?;
            let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            if !folders.iter().any(|(f, ..)| *f == parent) {
                let meta = fs::symlink_metadata(m.aside.join(&parent))
                    .map_err(|e| format!("{}: {e}", m.aside.join(&parent).display()))?;
                folders.push((parent, meta.mtime(), meta.mtime_nsec()));
            }
        }
        self.journal.mounts[i].carried = Some(Carried { paths, folders });
        self.save()?;
        failpoint::point(&format!("restore.carry-{i}.journaled"))?;
        let m = &self.journal.mounts[i];
        carry(m)
            .map_err(|e| format!("carrying excluded paths into {}: {e}", m.target.display()))?;
        failpoint::point(&format!("restore.carry-{i}.done"))
    }

    /// Removes the staging folders that are still there (after a rollback put the staged
    /// data back into them, or one that was never renamed in). Idempotent.
    pub fn drop_staging(&self) -> Result<(), String> {
        for dir in &self.journal.staging {
            remove_any(dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// Journals that the extraction begins, before its first write: from here a
    /// rollback clears each target before it puts the old data back.
    pub fn begin_extraction(&mut self) -> Result<(), String> {
        self.journal.phase = Phase::Extracting;
        self.journal.extraction_began = true;
        self.save()?;
        failpoint::point("restore.extracting")
    }

    /// After a complete extraction: syncs every target's filesystem (the data set aside
    /// is deleted soon, the restored data must be on disk first), then says so.
    pub fn extracted(&mut self) -> Result<(), String> {
        for m in &self.journal.mounts {
            sync_fs(&m.target).map_err(|e| format!("syncing {}: {e}", m.target.display()))?;
        }
        self.journal.phase = Phase::Extracted;
        self.save()?;
        failpoint::point("restore.extracted")
    }

    /// The restore succeeded: drops the data set aside and the journal. A drop that
    /// fails is logged (the restore stands; the folder is left for a person to remove).
    pub fn commit(mut self) -> Result<(), String> {
        self.committed()?;
        self.drop_asides().map(|_| ())
    }

    /// Says the restore succeeded, before its answer: from here recovery only finishes
    /// it, so dropping the data set aside can come after the answer.
    pub fn committed(&mut self) -> Result<(), String> {
        if self.journal.phase != Phase::Committed {
            self.journal.phase = Phase::Committed;
            self.save()?;
        }
        crash_only("restore.committed");
        Ok(())
    }

    /// Drops the data set aside, then the journal. Returns the folders that could not be
    /// removed, with why: the restore stands, and they are left for a person to remove
    /// (the journal goes anyway, or every later operation on the app would wait on them).
    pub fn drop_asides(self) -> Result<Vec<String>, String> {
        debug_assert_eq!(self.journal.phase, Phase::Committed);
        let mut left = Vec::new();
        if let Err(e) = self.drop_staging() {
            left.push(e);
        }
        for (i, m) in self.journal.mounts.iter().enumerate() {
            if let Err(e) = drop_aside(m) {
                tracing::error!(
                    "could not remove the previous data at {}: {e}",
                    m.aside.display()
                );
                left.push(format!("{}: {e}", m.aside.display()));
            }
            crash_only(&format!("restore.drop-{i}"));
        }
        self.finish()?;
        Ok(left)
    }

    /// Journals the decision to roll back, before any side effect of it (the rollback
    /// stops the containers first, and that stop may fail or be cut by a crash): from
    /// here recovery only ever rolls back, even if the extraction had completed.
    /// Idempotent, so a resumed rollback calls it again.
    pub fn begin_rollback(&mut self) -> Result<(), String> {
        if self.journal.phase != Phase::RollingBack {
            // Said explicitly before the phase stops saying it (older journals).
            self.journal.extraction_began = self.journal.extraction_began();
            self.journal.phase = Phase::RollingBack;
            self.save()?;
        }
        failpoint::point("rollback.begun")
    }

    /// Puts every mount back as it was, newest move first, journaling each undo. Stops
    /// at the first mount that cannot be put back: the caller must then leave the app
    /// stopped, and the journal stays for a later retry. [`Self::begin_rollback`] must
    /// have journaled the decision (it is called here again if not).
    pub fn rollback_files(&mut self) -> Result<(), String> {
        self.begin_rollback()?;
        let extracted = self.journal.extraction_began();
        for i in (0..self.journal.mounts.len()).rev() {
            if self.journal.mounts[i].undone {
                continue;
            }
            let m = &self.journal.mounts[i];
            undo(m, extracted).map_err(|e| format!("{}: {e}", m.target.display()))?;
            self.journal.mounts[i].undone = true;
            self.save()?;
            failpoint::point(&format!("rollback.undo-{i}"))?;
        }
        Ok(())
    }

    /// The journal is done with: removed, and the removal made durable.
    pub fn finish(self) -> Result<(), String> {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", self.path.display())),
        }
        if let Some(dir) = self.path.parent() {
            let _ = fs::File::open(dir).and_then(|d| d.sync_all());
        }
        crash_only("restore.journal-removed");
        Ok(())
    }
}

/// A point where only a crash is of interest: the step after it cannot fail any more.
fn crash_only(name: &str) {
    let _ = failpoint::point(name);
}

/// Decides how `target`'s current data will be set aside. Touches nothing: the result
/// is journaled before `perform_move` acts on it. A symbolic link at the target is
/// renamed like a file, never followed; a missing target is `Created`.
fn plan_move(target: &Path, rid: &str) -> io::Result<Moved> {
    let name = target
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_else(|| b"root".to_vec());
    let sibling = target.with_file_name(format!(
        ".{}.appsnap-aside-{rid}",
        String::from_utf8_lossy(&name)
    ));
    let moved = |aside, how, root| Moved {
        target: target.into(),
        aside,
        how,
        root,
        staged: None,
        undone: false,
        carried: None,
    };
    let meta = match fs::symlink_metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(moved(sibling, How::Created, None));
        }
        Err(e) => return Err(e),
    };
    if !(meta.is_dir() && is_mount_point(target, &meta)) {
        return Ok(moved(sibling, How::Renamed, None));
    }
    let root = RootMeta {
        mode: meta.permissions().mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
        xattrs: xattrs_of(target),
    };
    Ok(moved(
        target.join(format!(".appsnap-aside-{rid}")),
        How::Inside,
        Some(root),
    ))
}

/// A mount point cannot be renamed (EBUSY). The kernel says whether a path is the root of
/// a mount (`statx`'s `STATX_ATTR_MOUNT_ROOT`, Linux 5.8+), which also catches a bind mount
/// of the same filesystem; older kernels fall back to `st_dev` and the mount table.
fn is_mount_point(path: &Path, meta: &fs::Metadata) -> bool {
    if let Some(answer) = statx_mount_root(path) {
        return answer;
    }
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

/// `Some(is the root of a mount)` when the kernel can tell.
fn statx_mount_root(path: &Path) -> Option<bool> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statx is a valid out-buffer; the path is NUL-terminated and lives
    // across the call.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            0,
            &mut buf,
        )
    };
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    (rc == 0 && buf.stx_attributes_mask & bit != 0).then_some(buf.stx_attributes & bit != 0)
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

/// Carries out a journaled move. `Created` only makes the target's parent, for the
/// extraction (or the staged data) to create the target in. Recovery does not call it: a
/// journal still in `Moving` is rolled back, and `undo` copes with a move cut short.
fn perform_move(m: &Moved) -> io::Result<()> {
    match m.how {
        How::Created => {
            if let Some(parent) = m.target.parent() {
                fs::create_dir_all(parent)?;
            }
        }
        How::Renamed => fs::rename(&m.target, &m.aside)?,
        How::Inside => {
            match fs::DirBuilder::new().mode(0o700).create(&m.aside) {
                // Resumed after a crash between the two steps: the folder is ours.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                other => other?,
            }
            for child in fs::read_dir(&m.target)? {
                let child = child?;
                if child.path() != m.aside {
                    fs::rename(child.path(), m.aside.join(child.file_name()))?;
                }
            }
        }
    }
    if let Some(staged) = &m.staged {
        fs::rename(staged, &m.target)?;
    }
    Ok(())
}

/// Where the snapshot's data for `target` is staged: a hidden sibling, so on the same
/// filesystem (a rename away) and outside what the containers see (they mount `target`
/// itself: for a volume, `_data`, and the staging folder sits beside it, never inside).
/// `None` when `target` cannot be staged beside: it is a mount point (a rename cannot
/// leave it), so it is extracted into after the stop.
pub fn staging_path(target: &Path, rid: &str) -> Option<PathBuf> {
    if let Ok(meta) = fs::symlink_metadata(target)
        && meta.is_dir()
        && is_mount_point(target, &meta)
    {
        return None;
    }
    let name = target.file_name()?.to_string_lossy().into_owned();
    Some(target.with_file_name(format!(".{name}.appsnap-staged-{rid}")))
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

/// After a successful restore the moved-aside data goes. An aside folder inside a mount
/// point is a child of the restored root: removing it moves the root's times, which are
/// the snapshot's, so they are put back after.
fn drop_aside(m: &Moved) -> io::Result<()> {
    match m.how {
        How::Created => Ok(()),
        How::Renamed => remove_any(&m.aside),
        How::Inside => {
            let before = fs::symlink_metadata(&m.target)?;
            remove_any(&m.aside)?;
            set_times_of(&m.target, &before)
        }
    }
}

/// Removes whatever is at `path` — a file, a link (never followed) or a whole tree. A
/// path already gone is fine, so a repeated drop or undo succeeds.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => remove_tree(path, REMOVE_WORKERS),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Unlinks in flight while a tree is removed. The work waits on the disk, not the CPU.
const REMOVE_WORKERS: usize = 16;

/// Removes the directory tree at `root` (links are removed, never followed) with
/// `workers` threads, one directory at a time each. Cold, every unlink first waits for
/// its inode to be read: one after another (`remove_dir_all`) a tree of 100,000 files
/// took minutes, during which the next backup or restore of the app waits; many in flight
/// let the disk serve them together. Directories go last, deepest first, once empty.
fn remove_tree(root: &Path, workers: usize) -> io::Result<()> {
    use std::sync::{Condvar, Mutex};
    #[derive(Default)]
    struct Shared {
        /// Directories still to empty, with their depth.
        queue: Vec<(PathBuf, usize)>,
        /// Workers emptying one now (the walk ends when none is and the queue is empty).
        busy: usize,
        /// Every directory seen, to remove once all are empty.
        seen: Vec<(usize, PathBuf)>,
        error: Option<io::Error>,
    }
    let shared = Mutex::new(Shared {
        queue: vec![(root.to_path_buf(), 0)],
        ..Shared::default()
    });
    let wake = Condvar::new();
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            scope.spawn(|| {
                loop {
                    let (dir, depth) = {
                        let mut s = shared.lock().expect("remove lock");
                        loop {
                            if s.error.is_some() || (s.queue.is_empty() && s.busy == 0) {
                                wake.notify_all();
                                return;
                            }
                            if let Some(next) = s.queue.pop() {
                                s.busy += 1;
                                break next;
                            }
                            s = wake.wait(s).expect("remove lock");
                        }
                    };
                    let mut subdirs = Vec::new();
                    let emptied = empty_files_of(&dir, &mut subdirs);
                    let mut s = shared.lock().expect("remove lock");
                    s.busy -= 1;
                    s.queue.extend(subdirs.into_iter().map(|d| (d, depth + 1)));
                    s.seen.push((depth, dir));
                    if let Err(e) = emptied {
                        s.error.get_or_insert(e);
                    }
                    wake.notify_all();
                }
            });
        }
    });
    let mut shared = shared.into_inner().expect("remove lock");
    if let Some(e) = shared.error {
        return Err(e);
    }
    shared
        .seen
        .sort_by_key(|(depth, _)| std::cmp::Reverse(*depth));
    for (_, dir) in shared.seen {
        match fs::remove_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Unlinks everything in `dir` that is not a directory; its subdirectories go to `subdirs`.
fn empty_files_of(dir: &Path, subdirs: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        // The entry's own type (d_type, or lstat): a link to a directory is a link.
        if entry.file_type()?.is_dir() {
            subdirs.push(entry.path());
            continue;
        }
        match fs::remove_file(entry.path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Puts one mount back. Idempotent: run again after a crash, it finishes the job.
/// Staged data renamed into the target goes back into its staging folder (a rename,
/// whatever its size; the folder is dropped after the app runs again). With `extracted`,
/// what the extraction wrote into an unstaged target is removed first. A target found
/// beside its aside that is neither is not the restore's: both are kept and the undo
/// fails, for a person to look.
fn undo(m: &Moved, extracted: bool) -> io::Result<()> {
    let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
    if let Some(carried) = &m.carried {
        carry_back(m, carried)?;
    }
    // The restore's data at the target out of the way; `Err` when it is not the restore's.
    let clear_target = || -> io::Result<()> {
        match &m.staged {
            Some(staged) if !exists(staged) => fs::rename(&m.target, staged),
            None if extracted => remove_any(&m.target),
            _ => Err(io::Error::other(format!(
                "both {} and its aside copy exist, and the target is not the restore's; \
                 keeping both",
                m.target.display()
            ))),
        }
    };
    match m.how {
        How::Created => {
            if exists(&m.target) && (m.staged.is_some() || extracted) {
                clear_target()?;
            }
        }
        How::Renamed => {
            if !exists(&m.aside) {
                return Ok(()); // never moved, or already put back
            }
            if exists(&m.target) {
                clear_target()?;
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
            // The root's owner, mode and xattrs come back while the aside folder still
            // exists: if that fails, a retried undo finds the aside and tries again
            // (without it, the retry would take the root as done). Removing the aside
            // moves the root's times, so they are set once more after it.
            if let Some(root) = &m.root {
                restore_root_meta(&m.target, root)?;
            }
            fs::remove_dir(&m.aside)?;
            if let Some(root) = &m.root {
                restore_root_meta(&m.target, root)?;
            }
        }
    }
    Ok(())
}

/// The paths below `root` (relative) that `exclude` matches, a matched folder once (not
/// its contents), in walk order. Links are never followed.
fn excluded_paths(root: &Path, exclude: &Exclude) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    if !fs::symlink_metadata(root)?.is_dir() {
        return Ok(found);
    }
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut children: Vec<_> = fs::read_dir(root.join(&rel))?.collect::<Result<_, _>>()?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let path = rel.join(child.file_name());
            if exclude.matches(path.as_os_str().as_bytes()) {
                found.push(path);
            } else if child.file_type()?.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(found)
}

/// Whether `rel` can be carried into the restored tree at `target`: every folder on its
/// way is a real folder or missing (a link is never followed: the restored tree came
/// from an archive), and nothing is at `rel` itself.
fn check_carry(target: &Path, rel: &Path) -> Result<(), String> {
    let mut at = target.to_path_buf();
    for (n, part) in rel.iter().enumerate() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", at.display())),
            Ok(meta) if n + 1 < rel.iter().count() && meta.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "the snapshot has {} where the current data has {}, which the \
                     snapshot's exclude patterns left out; restoring would drop it",
                    at.display(),
                    target.join(rel).display()
                ));
            }
        }
    }
    Ok(())
}

/// Moves a journaled [`Carried`] from the aside into the target (`carry_over`).
fn carry(m: &Moved) -> io::Result<()> {
    let Some(carried) = &m.carried else {
        return Ok(());
    };
    // The restored folders' times as the snapshot set them (or, for a folder made
    // here, as the aside's), put back once everything is in.
    let mut times: Vec<(PathBuf, fs::Metadata)> = Vec::new();
    for rel in &carried.paths {
        let mut at = m.target.clone();
        let mut from = m.aside.clone();
        let parents: Vec<_> = rel.parent().into_iter().flat_map(Path::iter).collect();
        for part in parents {
            if !times.iter().any(|(p, _)| *p == at) {
                times.push((at.clone(), fs::symlink_metadata(&at)?));
            }
            at.push(part);
            from.push(part);
            if fs::symlink_metadata(&at).is_err() {
                let like = fs::symlink_metadata(&from)?;
                fs::DirBuilder::new()
                    .mode(like.mode() & 0o7777)
                    .create(&at)?;
                nix::unistd::chown(&at, Some(like.uid().into()), Some(like.gid().into()))?;
                fs::set_permissions(&at, fs::Permissions::from_mode(like.mode() & 0o7777))?;
                times.push((at.clone(), like));
            }
        }
        if !times.iter().any(|(p, _)| *p == at) {
            times.push((at.clone(), fs::symlink_metadata(&at)?));
        }
        fs::rename(m.aside.join(rel), m.target.join(rel))?;
    }
    for (dir, meta) in &times {
        set_times_of(dir, meta)?;
    }
    Ok(())
}

/// Undoes [`carry`], newest first, then gives the aside's folders their times back.
/// Idempotent: a path already back (or never moved) is left alone.
fn carry_back(m: &Moved, carried: &Carried) -> io::Result<()> {
    for rel in carried.paths.iter().rev() {
        let (at, back) = (m.target.join(rel), m.aside.join(rel));
        if fs::symlink_metadata(&back).is_err() && fs::symlink_metadata(&at).is_ok() {
            fs::rename(&at, &back)?;
        }
    }
    for (dir, sec, nsec) in &carried.folders {
        let mtime = TimeSpec::new(*sec, *nsec);
        set_times(&m.aside.join(dir), TimeSpec::UTIME_OMIT, mtime)?;
    }
    Ok(())
}

/// Sets a path's access and modification times (a link's own, never its target's);
/// `TimeSpec::UTIME_OMIT` leaves one as it is.
fn set_times(path: &Path, atime: TimeSpec, mtime: TimeSpec) -> io::Result<()> {
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &atime,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// Gives `path` the access and modification times `meta` recorded.
fn set_times_of(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    set_times(
        path,
        TimeSpec::new(meta.atime(), meta.atime_nsec()),
        TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
    )
}

/// The extended attributes of `path`. Best effort: none when they cannot be listed, and
/// one that cannot be read is left out.
fn xattrs_of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    names
        .filter_map(|n| Some((n.as_bytes().to_vec(), xattr::get(path, &n).ok()??)))
        .collect()
}

/// Gives a mount root back its recorded owner, mode, extended attributes (removing any
/// the extraction added) and times. The first change that fails is the undo's error.
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
    let t = TimeSpec::new(root.mtime, 0);
    set_times(path, t, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three mounts with distinct content; returns their paths.
    fn mounts(dir: &Path) -> Vec<PathBuf> {
        (0..3)
            .map(|i| {
                let m = dir.join(format!("m{i}"));
                fs::create_dir_all(m.join("sub")).unwrap();
                fs::write(m.join("sub/file"), format!("old {i}")).unwrap();
                m
            })
            .collect()
    }

    fn content(m: &Path) -> Option<String> {
        fs::read_to_string(m.join("sub/file")).ok()
    }

    /// Sets every mount aside and "extracts" new content, as a restore does.
    fn swap_and_extract(dir: &Path, ms: &[PathBuf]) -> Swap {
        let journal = RestoreJournal::new("app", "snap");
        let mut swap = Swap::begin(&dir.join("j"), journal).unwrap();
        swap.stopping(Vec::new()).unwrap();
        for m in ms {
            swap.move_aside(m, "00000001", None).unwrap();
        }
        swap.begin_extraction().unwrap();
        for (i, m) in ms.iter().enumerate() {
            fs::create_dir_all(m.join("sub")).unwrap();
            fs::write(m.join("sub/file"), format!("new {i}")).unwrap();
        }
        swap.extracted().unwrap();
        swap
    }

    #[test]
    fn commit_keeps_the_snapshot_and_drops_the_old_data() {
        let dir = tempfile::tempdir().unwrap();
        let ms = mounts(dir.path());
        let swap = swap_and_extract(dir.path(), &ms);
        swap.commit().unwrap();
        for (i, m) in ms.iter().enumerate() {
            assert_eq!(content(m).unwrap(), format!("new {i}"));
        }
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(
            left.len(),
            3,
            "no aside folder and no journal left: {left:?}"
        );
    }

    /// The bug this module exists for: a rollback interrupted half way must be resumed
    /// as a rollback, never "finished" as a restore (which deleted the old data of the
    /// mounts not yet undone).
    #[test]
    fn an_interrupted_rollback_resumes_as_a_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let ms = mounts(dir.path());
        let mut swap = swap_and_extract(dir.path(), &ms);
        // Roll back the last mount only, as if killed right after its undo.
        swap.journal.phase = Phase::RollingBack;
        let last = swap.journal.mounts.len() - 1;
        undo(&swap.journal.mounts[last], true).unwrap();
        swap.journal.mounts[last].undone = true;
        swap.save().unwrap();
        drop(swap);

        let mut again = Swap::load(&dir.path().join("j")).unwrap();
        assert!(!again.journal.commits(), "a rollback is never committed");
        again.rollback_files().unwrap();
        again.finish().unwrap();
        for (i, m) in ms.iter().enumerate() {
            assert_eq!(content(m).unwrap(), format!("old {i}"), "mount {i}");
        }
        assert!(!dir.path().join("j").exists());
    }

    /// The decision to roll back is on disk before any of its side effects (the caller
    /// stops the containers next): a crash then, after a complete extraction, is repaired
    /// as a rollback, not finished as a restore.
    #[test]
    fn a_rollback_decided_after_the_extraction_is_never_committed() {
        let dir = tempfile::tempdir().unwrap();
        let ms = mounts(dir.path());
        let mut swap = swap_and_extract(dir.path(), &ms);
        assert!(
            swap.journal.commits(),
            "extracted: recovery would finish it"
        );
        swap.begin_rollback().unwrap();
        drop(swap); // killed while the containers stop

        let mut again = Swap::load(&dir.path().join("j")).unwrap();
        assert!(!again.journal.commits());
        again.rollback_files().unwrap();
        again.finish().unwrap();
        for (i, m) in ms.iter().enumerate() {
            assert_eq!(content(m).unwrap(), format!("old {i}"), "mount {i}");
        }
    }

    #[test]
    fn a_tree_is_removed_whole_and_its_links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "not ours").unwrap();
        let tree = dir.path().join("tree");
        for d in 0..20 {
            let sub = tree.join(format!("d{d}/e{}/f", d % 3));
            fs::create_dir_all(&sub).unwrap();
            for f in 0..30 {
                fs::write(sub.join(format!("{f}")), "x").unwrap();
            }
            std::os::unix::fs::symlink(&outside, sub.join("link-to-dir")).unwrap();
            std::os::unix::fs::symlink(outside.join("keep"), sub.join("link-to-file")).unwrap();
            nix::unistd::mkfifo(&sub.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        }
        fs::create_dir_all(tree.join("empty/deeper/still")).unwrap();
        remove_tree(&tree, 4).unwrap();
        assert!(!tree.exists());
        assert_eq!(
            fs::read_to_string(outside.join("keep")).unwrap(),
            "not ours"
        );
    }

    /// A file that cannot be unlinked (immutable: not even root may) is an error, and the
    /// walk ends instead of hanging; once it can, the tree goes.
    #[test]
    fn a_file_that_cannot_be_removed_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let stuck = dir.path().join("stuck");
        fs::create_dir_all(stuck.join("a/b")).unwrap();
        fs::write(stuck.join("a/b/file"), "x").unwrap();
        let chattr = |flag: &str| {
            let ok = std::process::Command::new("chattr")
                .arg(flag)
                .arg(stuck.join("a/b/file"))
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chattr {flag} (e2fsprogs; the tests run as root)");
        };
        chattr("+i");
        let result = remove_tree(&stuck, 4);
        chattr("-i");
        let e = result.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        remove_tree(&stuck, 4).unwrap();
        assert!(!stuck.exists());
    }

    #[test]
    fn every_undo_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let ms = mounts(dir.path());
        let mut swap = swap_and_extract(dir.path(), &ms);
        for m in &swap.journal.mounts {
            undo(m, true).unwrap();
            undo(m, true).unwrap(); // a crash before `undone` was journaled
        }
        swap.rollback_files().unwrap();
        for (i, m) in ms.iter().enumerate() {
            assert_eq!(content(m).unwrap(), format!("old {i}"));
        }
    }

    #[test]
    fn an_outstanding_journal_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ms = mounts(dir.path());
        let _first = swap_and_extract(dir.path(), &ms);
        let err = Swap::begin(&dir.path().join("j"), RestoreJournal::new("app", "other"))
            .err()
            .unwrap();
        assert!(err.contains("not repaired yet"), "{err}");
        let kept = Swap::load(&dir.path().join("j")).unwrap();
        assert_eq!(kept.journal.snapshot_id, "snap");
    }

    #[test]
    fn a_journal_from_before_extraction_began_existed_is_read_by_its_phase() {
        let j: RestoreJournal = serde_json::from_str(
            r#"{"app_id":"a","snapshot_id":"s","phase":"extracting","stopped":[],
                "mounts":[],"created_volumes":[]}"#,
        )
        .unwrap();
        assert!(j.extraction_began() && !j.commits());
    }

    /// The staged flow, cut after each of its steps as a crash would cut it, then
    /// repaired as recovery does (by the journal alone): every mount holds the old data
    /// or the new, all of them the same one, and no staging or aside folder is left.
    #[test]
    fn a_staged_restore_cut_at_any_step_ends_old_or_new() {
        let steps = 3 + 3 * 3 + 1; // stage, staged, stopping, three per mount, extracted
        for cut in 0..=steps {
            let dir = tempfile::tempdir().unwrap();
            let ms = mounts(dir.path());
            let journal_path = dir.path().join("j");
            let mut swap = Swap::begin(&journal_path, RestoreJournal::new("app", "snap")).unwrap();
            let staging: Vec<PathBuf> = ms
                .iter()
                .map(|m| staging_path(m, "00000002").unwrap())
                .collect();
            let mut done = 0;
            let mut step = |f: &mut dyn FnMut()| {
                if done < cut {
                    f();
                }
                done += 1;
            };
            step(&mut || swap.stage(staging.clone()).unwrap());
            step(&mut || {
                for (i, s) in staging.iter().enumerate() {
                    fs::create_dir_all(s.join("sub")).unwrap();
                    fs::write(s.join("sub/file"), format!("new {i}")).unwrap();
                }
                swap.staged().unwrap();
            });
            step(&mut || swap.stopping(vec!["c1".into()]).unwrap());
            for (m, s) in ms.iter().zip(&staging) {
                // The journaled intent, then the two renames: three cuts.
                let i = swap.journal.mounts.len();
                step(&mut || {
                    let mut moved = plan_move(m, "00000002").unwrap();
                    moved.staged = Some(s.clone());
                    swap.journal.mounts.push(moved);
                    swap.save().unwrap();
                });
                step(&mut || fs::rename(m, &swap.journal.mounts[i].aside).unwrap());
                step(&mut || fs::rename(s, m).unwrap());
            }
            step(&mut || swap.extracted().unwrap());
            drop(swap);

            let mut again = Swap::load(&journal_path).unwrap();
            let want = if again.journal.commits() {
                again.commit().unwrap();
                "new"
            } else {
                again.rollback_files().unwrap();
                again.drop_staging().unwrap();
                again.finish().unwrap();
                "old"
            };
            for (i, m) in ms.iter().enumerate() {
                assert_eq!(content(m).unwrap(), format!("{want} {i}"), "cut {cut}");
            }
            let left: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
            assert_eq!(left.len(), 3, "cut {cut}: nothing but the mounts: {left:?}");
        }
    }

    /// A tree as `(relative path, content or "dir", mtime ns)`, sorted: what a carry
    /// must leave exactly as it was (or as the snapshot had it).
    fn tree(root: &Path) -> Vec<(String, String, i64)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap().flatten() {
                let meta = fs::symlink_metadata(e.path()).unwrap();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                let what = if meta.is_dir() {
                    stack.push(e.path());
                    "dir".to_string()
                } else {
                    fs::read_to_string(e.path()).unwrap()
                };
                out.push((rel, what, meta.mtime() * 1_000_000_000 + meta.mtime_nsec()));
            }
        }
        out.sort();
        out
    }

    fn set_mtime(path: &Path, secs: i64) {
        let t = TimeSpec::new(secs, 0);
        set_times(path, t, t).unwrap();
    }

    /// `appsnap.exclude` at restore: the current data's excluded paths end up in the
    /// restored tree (a folder the snapshot lacks is made like the old one) with every
    /// folder's time kept; cut at each step, recovery gives the old tree back exactly or
    /// the snapshot plus those paths, never a loss.
    #[test]
    fn excluded_paths_are_carried_over_or_back_at_any_cut() {
        let exclude = Exclude::new(&["cache/**".into(), "*.tmp".into()]).unwrap();
        for cut in 0..=6 {
            let dir = tempfile::tempdir().unwrap();
            let m = dir.path().join("m");
            for (path, content) in [
                ("keep", "old"),
                ("cache/a", "cache a"),
                ("cache/b/c", "cache c"),
                ("x.tmp", "x"),
                ("newdir/y.tmp", "y"),
            ] {
                fs::create_dir_all(m.join(path).parent().unwrap()).unwrap();
                fs::write(m.join(path), content).unwrap();
            }
            for d in ["cache/b", "cache", "newdir", ""] {
                set_mtime(&m.join(d), 1_000_000);
            }
            let old = tree(&m);
            let staged = staging_path(&m, "00000003").unwrap();
            let extract = |into: &Path| {
                fs::create_dir_all(into.join("cache")).unwrap();
                fs::write(into.join("keep"), "new").unwrap();
                for d in ["keep", "cache", ""] {
                    set_mtime(&into.join(d), 2_000_000);
                }
            };
            let reference = tempfile::tempdir().unwrap();
            extract(reference.path());
            let snapshot = tree(reference.path());

            let journal_path = dir.path().join("j");
            let mut swap = Swap::begin(&journal_path, RestoreJournal::new("app", "snap")).unwrap();
            let mut done = 0;
            let mut step = |f: &mut dyn FnMut()| {
                if done < cut {
                    f();
                }
                done += 1;
            };
            step(&mut || {
                swap.stage(vec![staged.clone()]).unwrap();
                extract(&staged);
            });
            step(&mut || swap.stopping(Vec::new()).unwrap());
            step(&mut || swap.move_aside(&m, "00000003", Some(&staged)).unwrap());
            // Cut inside the carry: after its journaled intent alone, and after one path
            // moved (cuts 4 and 5); cut 6 carries all and commits.
            let inside = cut <= 5;
            step(&mut || {
                if !inside {
                    return;
                }
                let aside = &swap.journal.mounts[0].aside;
                let paths = excluded_paths(aside, &exclude).unwrap();
                swap.journal.mounts[0].carried = Some(Carried {
                    paths,
                    folders: vec![(PathBuf::from("cache"), 1_000_000, 0)],
                });
                swap.save().unwrap();
            });
            step(&mut || {
                if inside {
                    let aside = &swap.journal.mounts[0].aside;
                    fs::rename(aside.join("cache/a"), m.join("cache/a")).unwrap();
                }
            });
            step(&mut || {
                swap.carry_over(0, &exclude).unwrap();
                swap.extracted().unwrap();
            });
            drop(swap);

            let mut again = Swap::load(&journal_path).unwrap();
            if again.journal.commits() {
                again.commit().unwrap();
                let mut want = snapshot.clone();
                let carried = [
                    ("cache/a", "cache a"),
                    ("cache/b", "dir"),
                    ("cache/b/c", "cache c"),
                    ("newdir", "dir"),
                    ("newdir/y.tmp", "y"),
                    ("x.tmp", "x"),
                ];
                for (path, what) in carried {
                    let t = old.iter().find(|(p, ..)| p == path).unwrap().2;
                    want.push((path.into(), what.into(), t));
                }
                want.sort();
                assert_eq!(
                    tree(&m),
                    want,
                    "cut {cut}: the snapshot plus what it left out"
                );
                assert_eq!(cut, 6);
            } else {
                again.rollback_files().unwrap();
                again.drop_staging().unwrap();
                again.finish().unwrap();
                assert_eq!(tree(&m), old, "cut {cut}: the old tree, exactly");
            }
            let left: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
            assert_eq!(left.len(), 1, "cut {cut}: nothing but the mount: {left:?}");
        }
    }

    #[test]
    fn a_restored_file_in_the_way_of_an_excluded_path_fails_before_anything_moves() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        fs::create_dir_all(m.join("cache")).unwrap();
        fs::write(m.join("cache/a"), "keep me").unwrap();
        let staged = staging_path(&m, "00000004").unwrap();
        fs::create_dir_all(&staged).unwrap();
        fs::write(staged.join("cache"), "a file where a folder was").unwrap();
        let mut swap = Swap::begin(&dir.path().join("j"), RestoreJournal::new("a", "s")).unwrap();
        swap.stage(vec![staged.clone()]).unwrap();
        swap.stopping(Vec::new()).unwrap();
        swap.move_aside(&m, "00000004", Some(&staged)).unwrap();
        let exclude = Exclude::new(&["cache/**".into()]).unwrap();
        let err = swap.carry_over(0, &exclude).unwrap_err();
        assert!(err.contains("restoring would drop it"), "{err}");
        assert!(
            swap.journal.mounts[0].carried.is_none(),
            "nothing journaled"
        );
        swap.rollback_files().unwrap();
        swap.drop_staging().unwrap();
        assert_eq!(fs::read_to_string(m.join("cache/a")).unwrap(), "keep me");
    }
}
