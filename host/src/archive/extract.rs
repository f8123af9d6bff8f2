//! Safe extraction of a snapshot into its mounts — the half of a restore that touches
//! the disk — and, with `dry_run`, the structural half of `verify`.
//!
//! Whatever the archive says (it may come from an import or a tampered disk), nothing is
//! written outside the mount an entry belongs to:
//! - absolute names and `..` components are refused, and every entry must lie under one of
//!   the snapshot's mount folders;
//! - the extractor remembers every path it has made (by a keyed hash: see [`Made`]); a
//!   parent must be a directory *it* made, so a symlink planted by the archive is never
//!   written through, and an existing path is never overwritten (a duplicate entry is
//!   refused);
//! - hard links must point at a regular file extracted earlier in the same mount;
//! - device nodes only when explicitly allowed;
//! - at most [`Options::max_entries`] entries, which bounds that memory.
//!
//! Files are created with `O_EXCL | O_NOFOLLOW` and finished through their descriptor
//! (owner, then mode — chown clears setuid — then xattrs, then times). Runs of zero blocks
//! become holes, so sparse files stay sparse. A directory gets its owner, mode and xattrs
//! when its entry comes, and its times once its contents are in (adding an entry changes
//! its parent's mtime): the extractor keeps the chain of directories it is inside, which
//! costs the depth of one path, not the number of directories.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, futimens, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, mkfifo};
use tar::EntryType;

use super::tar_read::TarReader;
use super::{ArchiveError, METADATA_ENTRY};

/// The buffer file data is copied through: one for the whole extraction.
const COPY_BUF: usize = 256 * 1024;

/// Where one mount folder of the archive goes.
///
/// An entry belongs to the target whose `archive_dir` is the longest prefix of its name (in
/// whole components); an entry under none of them is refused, never written elsewhere.
#[derive(Debug, Clone)]
pub struct Target {
    /// e.g. `volumes/db` (no trailing slash).
    pub archive_dir: String,
    /// The mount root on the host, created when missing. It may exist already only as a
    /// real directory (a single-file bind mount's must not exist at all); everything below
    /// it is made by this extraction.
    pub path: PathBuf,
    /// A name at the top of `path` that belongs to appsnap (the aside folder when the
    /// current data was moved into the mount itself); the archive may not use it.
    pub reserved: Option<String>,
    /// Check this mount's entries but write none of them (a snapshot mount the app no
    /// longer has: it is skipped, not written wherever the archive says).
    pub discard: bool,
    /// The root may be a regular file: a single file restored on its own (a bind
    /// mount's root, under `binds/`, may always be one).
    pub file_root: bool,
}

/// The rules of one extraction. `Default` is the strictest: no devices, `user.*` xattrs
/// only, no entry limit, and it writes.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Create character and block devices found in the archive. Without it a device entry
    /// is unsafe, and fails the whole extraction, dry run or not.
    pub allow_devices: bool,
    /// Check and read everything, write nothing (verify).
    pub dry_run: bool,
    /// Restore extended attributes outside `user.*` (`security.capability`, `trusted.*`,
    /// ACLs): only for snapshots this server made, or when the operator says so.
    /// Without it they are dropped and counted in `Summary::dropped_xattrs`, not refused.
    pub privileged_xattrs: bool,
    /// Set from outside to stop at the next read (shutdown, an abandoned verify).
    pub cancel: Option<super::Cancel>,
    /// Refuse an archive of more entries than this (`None`: no limit). Each costs ~10–20
    /// bytes of memory while the archive is read (see [`Made`]).
    pub max_entries: Option<u64>,
}

/// What an extraction, or its dry run, read.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Entries read, the metadata entry included.
    pub entries: u64,
    /// Bytes of tar stream read, to the end of the stream (trailing zeros included).
    pub tar_bytes: u64,
    /// What a restore of each target's files allocates ([`super::allocation`]): what it
    /// needs on its filesystem, in `targets` order.
    pub stored: Vec<u64>,
    /// Entries per target, in `targets` order.
    pub mount_entries: Vec<u64>,
    /// Extended attributes left out because they were not allowed (`privileged_xattrs`).
    pub dropped_xattrs: u64,
}

/// What this extraction made at a path. The value is kept in the two low bits of the
/// path's key in [`Made`], so it must stay within 1..=3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// A directory made here, or the mount root found as a real directory: the only thing
    /// an entry may be written into.
    Dir = 1,
    /// A regular file (or a hard link to one): the only thing a hard link may point at.
    File = 2,
    /// A symlink, FIFO or device: never a parent, never a link target.
    Other = 3,
}

/// The paths one mount's extraction has made, as a set of 64-bit words: a hash of the path
/// under a key drawn at random for each extraction, whose two low bits say what was made
/// there. ~10–20 bytes per entry whatever its name's length (names may be 64 KiB each).
/// An archive cannot be crafted to collide with a key it does not know; a chance collision
/// (about n²/2⁶³: 10⁻⁷ for a million entries) can only make two paths look like one.
struct Made {
    keys: RandomState,
    nodes: HashSet<u64>,
}

impl Made {
    fn new() -> Made {
        Made {
            keys: RandomState::new(),
            nodes: HashSet::new(),
        }
    }

    /// What was made at the path whose key (low bits clear) is `key`, if anything.
    fn get(&self, key: u64) -> Option<Node> {
        [Node::Dir, Node::File, Node::Other]
            .into_iter()
            .find(|&node| self.nodes.contains(&(key | node as u64)))
    }

    /// Callers check first that nothing was made at `key`.
    fn insert(&mut self, key: u64, node: Node) {
        self.nodes.insert(key | node as u64);
    }

    /// The keys of `rel`'s ancestors (the mount root first) and of `rel` itself, each
    /// hashed on from the last: O(length of the path), however deep.
    fn prefix_keys(&self, rel: &[Vec<u8>]) -> Vec<u64> {
        let mut hasher = self.keys.build_hasher();
        let mut keys = Vec::with_capacity(rel.len() + 1);
        keys.push(hasher.clone().finish() & !3);
        for c in rel {
            hasher.write(c);
            hasher.write_u8(b'/');
            keys.push(hasher.clone().finish() & !3);
        }
        keys
    }
}

/// One target's extraction: what it made, and the directories whose times are pending.
struct Tree<'t> {
    target: &'t Target,
    /// `archive_dir` as components: the part of an entry's name that selects this tree.
    prefix: Vec<Vec<u8>>,
    made: Made,
    /// The directories the last entry went into (below the mount root), outermost first,
    /// with the mtime each gets once the archive has left it.
    open: Vec<(Vec<u8>, Option<TimeSpec>)>,
    /// The mount root's mtime, set at the very end.
    root_mtime: Option<TimeSpec>,
}

/// What the headers say about an entry, besides its name and data.
#[derive(Debug, Clone)]
struct Meta {
    kind: EntryType,
    /// Numeric owner and group, applied as they are (never mapped through names).
    uid: u64,
    gid: u64,
    /// Permission bits, setuid/setgid/sticky included: set after the owner.
    mode: u32,
    /// Seconds since the epoch; restored times are whole seconds.
    mtime: i64,
    /// Already filtered by `Options::privileged_xattrs`.
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Symlink or hard-link target.
    link: Option<Vec<u8>>,
    device: (u32, u32),
    /// A sparse file's logical size and data segments (its data is the segments only).
    sparse: Option<(u64, Vec<(u64, u64)>)>,
}

/// Reads the whole tar stream and extracts (or with `dry_run`, checks) every entry.
///
/// Blocking. Nothing is written outside `targets` (see the module header), and the stream
/// must be whole: a cut one, or anything but zeros after its end marker, is corrupt. A
/// first entry `appsnap.json` is counted and skipped. `progress` gets the tar bytes read,
/// about every MiB and at the end. Errors: `Unsafe` for an entry the rules refuse,
/// `Corrupt` for a malformed stream or more than `max_entries` entries, `Write` when the
/// disk fails, and `Cancelled`, whatever the error, once `opts.cancel` is set. On an
/// error, what was extracted so far is left in place: undoing it is the caller's job.
pub fn extract(
    stream: impl Read,
    targets: &[Target],
    opts: &Options,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Summary, ArchiveError> {
    let counted = Counting {
        inner: stream,
        bytes: 0,
        reported: 0,
        progress,
        cancel: opts.cancel.clone(),
    };
    extract_entries(counted, targets, opts).map_err(|e| {
        if super::cancelled(&opts.cancel) {
            ArchiveError::Cancelled
        } else {
            e
        }
    })
}

/// The loop behind [`extract`]. Each entry is checked in turn against the entry limit,
/// then for an absolute name, `..`, which mount it is under, the reserved name, NUL bytes
/// and a mount root that is not a directory, before its tree gets it. Xattrs are filtered
/// and allocation counted here; each tree sets its pending directory times at the end.
fn extract_entries<R: Read>(
    counted: Counting<'_, R>,
    targets: &[Target],
    opts: &Options,
) -> Result<Summary, ArchiveError> {
    let mut reader = TarReader::new(counted);
    let mut trees: Vec<Tree> = targets
        .iter()
        .map(|t| Tree {
            target: t,
            prefix: components(t.archive_dir.as_bytes()).unwrap_or_default(),
            made: Made::new(),
            open: Vec::new(),
            root_mtime: None,
        })
        .collect();
    // A discarded mount (one the app no longer has) is read and checked, never written.
    let tree_opts: Vec<Options> = targets
        .iter()
        .map(|t| Options {
            dry_run: opts.dry_run || t.discard,
            ..opts.clone()
        })
        .collect();
    let mut summary = Summary {
        stored: vec![0; targets.len()],
        mount_entries: vec![0; targets.len()],
        ..Summary::default()
    };
    let mut first = true;
    // One copy buffer for the whole archive: allocated per file, it cost a quarter of a
    // restore's time in page faults (tens of thousands of small files).
    let mut buf = vec![0u8; COPY_BUF];
    while let Some(entry) = reader.next_entry().map_err(ArchiveError::corrupt)? {
        let name = entry.name.clone();
        let shown = String::from_utf8_lossy(&name).into_owned();
        let unsafe_entry = |reason: &str| ArchiveError::Unsafe {
            entry: shown.clone(),
            reason: reason.to_string(),
        };
        if let Some(max) = opts.max_entries
            && summary.entries >= max
        {
            return Err(ArchiveError::corrupt(io::Error::other(format!(
                "more than {max} entries (the limit is {max}: `max_archive_entries`)"
            ))));
        }
        if std::mem::take(&mut first) && name == METADATA_ENTRY.as_bytes() {
            summary.entries += 1; // its data is skipped by the next read
            continue;
        }
        if name.first() == Some(&b'/') {
            return Err(unsafe_entry("absolute path"));
        }
        let parts = components(&name).ok_or_else(|| unsafe_entry("`..` in the path"))?;
        let (index, tree) = trees
            .iter_mut()
            .enumerate()
            .filter(|(_, t)| parts.starts_with(&t.prefix))
            .max_by_key(|(_, t)| t.prefix.len())
            .ok_or_else(|| unsafe_entry("not under any mount of the snapshot"))?;
        let rel = parts[tree.prefix.len()..].to_vec();
        if let (Some(first), Some(reserved)) = (rel.first(), &tree.target.reserved)
            && first.as_slice() == reserved.as_bytes()
        {
            return Err(unsafe_entry("uses the name of appsnap's aside folder"));
        }
        if name.contains(&0) || entry.link.as_ref().is_some_and(|l| l.contains(&0)) {
            return Err(unsafe_entry("a NUL byte in a name"));
        }
        let mut xattrs = entry.xattrs;
        if !opts.privileged_xattrs {
            let before = xattrs.len();
            xattrs.retain(|(k, _)| k.starts_with(b"user."));
            summary.dropped_xattrs += (before - xattrs.len()) as u64;
        }
        if matches!(
            entry.kind,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
        ) {
            summary.stored[index] += super::allocation(
                entry.size,
                entry.sparse.as_ref().map(|(_, segs)| segs.as_slice()),
            );
        }
        summary.mount_entries[index] += 1;
        let meta = Meta {
            kind: entry.kind,
            uid: entry.uid,
            gid: entry.gid,
            mode: entry.mode,
            mtime: entry.mtime,
            xattrs,
            link: entry.link,
            device: entry.device,
            sparse: entry.sparse,
        };
        // A root that is a link would make the mount itself point anywhere on the host.
        // Only a bind mount may be a single (regular) file: `./nginx.conf:/etc/nginx/…`.
        let file_root = (tree.target.file_root || tree.target.archive_dir.starts_with("binds/"))
            && matches!(meta.kind, EntryType::Regular | EntryType::Continuous);
        if rel.is_empty() && !meta.kind.is_dir() && !file_root {
            return Err(unsafe_entry(
                "a mount's root must be a directory (a bind mount's may be a regular file), \
                 never a link or a special file",
            ));
        }
        tree.add(
            &rel,
            &mut EntryData(&mut reader),
            meta,
            &tree_opts[index],
            &mut buf,
        )
        .map_err(|e| match e {
            Failure::Unsafe(reason) => unsafe_entry(&reason),
            Failure::Io(path, source) => ArchiveError::Write { path, source },
            Failure::Read(e) => ArchiveError::corrupt(e),
        })?;
        summary.entries += 1;
    }
    for (tree, opts) in trees.iter_mut().zip(&tree_opts) {
        tree.finish(opts)?;
    }
    summary.tar_bytes = reader.bytes;
    Ok(summary)
}

/// The current entry's data, as a `Read`: it ends at the entry's size, never in the next
/// header, so a file gets exactly the bytes its header declared.
struct EntryData<'r, R>(&'r mut TarReader<R>);

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_data(buf)
    }
}

/// How adding one entry fails; [`extract_entries`] names the entry and maps it.
enum Failure {
    /// The archive asks for something the rules refuse (`ArchiveError::Unsafe`).
    Unsafe(String),
    /// Writing at this path failed (`ArchiveError::Write`).
    Io(PathBuf, io::Error),
    /// The entry's data could not be read from the stream (`ArchiveError::Corrupt`).
    Read(io::Error),
}

impl Tree<'_> {
    /// The host path of `rel` below the mount root. `rel` holds checked components only
    /// (no `..`, no `/`, none empty), so it cannot leave the root by its name alone.
    fn path(&self, rel: &[Vec<u8>]) -> PathBuf {
        let mut p = self.target.path.clone();
        for c in rel {
            p.push(OsStr::from_bytes(c));
        }
        p
    }

    /// The path of the `depth` outermost open directories.
    fn open_path(&self, depth: usize) -> PathBuf {
        let mut p = self.target.path.clone();
        for (c, _) in &self.open[..depth] {
            p.push(OsStr::from_bytes(c));
        }
        p
    }

    /// Before an entry goes into `parent` (whose ancestors' keys are `keys`): sets the
    /// times of the open directories the archive has now left, then opens the way down to
    /// `parent`. Only the directory that receives the new entry — `parent`, or the deepest
    /// existing ancestor when missing parents are made first — changes; if the archive had
    /// left it already (entries out of walk order), it is opened again with the time it
    /// has now, so it keeps it.
    fn enter(&mut self, parent: &[Vec<u8>], keys: &[u64]) -> Result<(), Failure> {
        let common = self
            .open
            .iter()
            .zip(parent)
            .take_while(|((open, _), p)| open == *p)
            .count();
        while self.open.len() > common {
            let depth = self.open.len();
            if let Some(t) = self.open[depth - 1].1 {
                let path = self.open_path(depth);
                set_times(&path, t).map_err(|e| Failure::Io(path, e))?;
            }
            self.open.pop();
        }
        let receiving = (0..=parent.len())
            .rev()
            .find(|&d| self.made.get(keys[d]) == Some(Node::Dir))
            .unwrap_or(0);
        for depth in common + 1..=parent.len() {
            let time = if depth == receiving {
                let path = self.path(&parent[..depth]);
                let m = fs::symlink_metadata(&path).map_err(|e| Failure::Io(path, e))?;
                Some(TimeSpec::new(m.mtime(), m.mtime_nsec()))
            } else {
                None
            };
            self.open.push((parent[depth - 1].clone(), time));
        }
        Ok(())
    }

    /// Makes sure every ancestor of `rel` is a directory this extraction made (creating
    /// missing ones, for archives without directory entries).
    fn ensure_parents(
        &mut self,
        rel: &[Vec<u8>],
        keys: &[u64],
        opts: &Options,
    ) -> Result<(), Failure> {
        for depth in 0..rel.len() {
            match self.made.get(keys[depth]) {
                Some(Node::Dir) => continue,
                Some(_) => return Err(Failure::Unsafe("a parent is a symlink or a file".into())),
                None => {}
            }
            if !opts.dry_run {
                let path = self.path(&rel[..depth]);
                self.mkdir(&path, depth == 0)?;
            }
            self.made.insert(keys[depth], Node::Dir);
        }
        Ok(())
    }

    /// Creates a directory. Only the mount's root may exist already (it is kept when the
    /// current data was moved into it), and then it must be a real directory.
    fn mkdir(&self, path: &Path, is_root: bool) -> Result<(), Failure> {
        match fs::create_dir(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && is_root => {
                match fs::symlink_metadata(path) {
                    Ok(m) if m.is_dir() => Ok(()),
                    _ => Err(Failure::Unsafe(
                        "the mount root exists and is not a directory".into(),
                    )),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(Failure::Unsafe("the path exists already".into()))
            }
            Err(e) => Err(Failure::Io(path.to_path_buf(), e)),
        }
    }

    /// Extracts one entry at `rel` (below the mount root; empty: the root itself), reading
    /// its data from `data`. A path where this extraction made something already is
    /// refused, except a directory entry for a directory, whose attributes are then set
    /// again. A hard link must name a regular file this extraction made in the same mount.
    /// A dry run makes the same checks and reads the data, but writes nothing.
    fn add(
        &mut self,
        rel: &[Vec<u8>],
        data: &mut impl Read,
        meta: Meta,
        opts: &Options,
        buf: &mut [u8],
    ) -> Result<(), Failure> {
        let kind = meta.kind;
        let keys = self.made.prefix_keys(rel);
        let key = keys[rel.len()];
        match self.made.get(key) {
            Some(Node::Dir) | None if kind.is_dir() => {}
            Some(_) if kind.is_dir() => {
                return Err(Failure::Unsafe("a directory replaces another entry".into()));
            }
            Some(_) => {
                return Err(Failure::Unsafe(
                    "duplicate entry (it would overwrite an earlier one)".into(),
                ));
            }
            None => {}
        }
        if let Some((_, ancestors)) = rel.split_last() {
            if !opts.dry_run {
                self.enter(ancestors, &keys)?;
            }
            self.ensure_parents(rel, &keys, opts)?;
        }
        let path = self.path(rel);
        let io_err = |e| Failure::Io(path.clone(), e);
        if kind.is_dir() {
            if self.made.get(key).is_none() {
                if !opts.dry_run {
                    self.mkdir(&path, rel.is_empty())?;
                }
                self.made.insert(key, Node::Dir);
            }
            if !opts.dry_run {
                // Owner, mode and xattrs now (root writes into a read-only directory all
                // the same); the time once the archive leaves it.
                set_owner_mode_xattrs(&path, &meta, true).map_err(io_err)?;
                let time = Some(TimeSpec::new(meta.mtime, 0));
                match rel.last() {
                    Some(name) => self.open.push((name.clone(), time)),
                    None => self.root_mtime = time,
                }
            }
            return Ok(());
        }
        let node = match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                if opts.dry_run {
                    io::copy(data, &mut io::sink()).map_err(Failure::Read)?;
                } else {
                    write_file(&path, data, &meta, buf)?;
                }
                Node::File
            }
            EntryType::Symlink => {
                // Creating a link is harmless; writing *through* it is what the parent
                // check above prevents.
                if !opts.dry_run {
                    let target = link_target(&meta)?;
                    std::os::unix::fs::symlink(OsStr::from_bytes(target), &path).map_err(io_err)?;
                    finish_by_path(&path, &meta, false).map_err(io_err)?;
                }
                Node::Other
            }
            EntryType::Link => {
                let target = link_target(&meta)?;
                let parts = components(target)
                    .ok_or_else(|| Failure::Unsafe("hard link with `..`".into()))?;
                if target.first() == Some(&b'/') || !parts.starts_with(&self.prefix) {
                    return Err(Failure::Unsafe(
                        "hard link to a file outside its mount".into(),
                    ));
                }
                let trel = &parts[self.prefix.len()..];
                let tkey = self.made.prefix_keys(trel)[trel.len()];
                if self.made.get(tkey) != Some(Node::File) {
                    return Err(Failure::Unsafe(
                        "hard link to a file the archive did not create".into(),
                    ));
                }
                if !opts.dry_run {
                    fs::hard_link(self.path(trel), &path).map_err(io_err)?;
                }
                Node::File
            }
            EntryType::Fifo => {
                if !opts.dry_run {
                    mkfifo(&path, Mode::from_bits_truncate(0o600)).map_err(|e| io_err(e.into()))?;
                    finish_by_path(&path, &meta, true).map_err(io_err)?;
                }
                Node::Other
            }
            EntryType::Char | EntryType::Block => {
                if !opts.allow_devices {
                    return Err(Failure::Unsafe(
                        "device node (allow with `restore_devices = true`)".into(),
                    ));
                }
                if !opts.dry_run {
                    let (major, minor) = meta.device;
                    let sflag = if kind == EntryType::Char {
                        SFlag::S_IFCHR
                    } else {
                        SFlag::S_IFBLK
                    };
                    mknod(
                        &path,
                        sflag,
                        Mode::from_bits_truncate(0o600),
                        nix::sys::stat::makedev(major.into(), minor.into()),
                    )
                    .map_err(|e| io_err(e.into()))?;
                    finish_by_path(&path, &meta, true).map_err(io_err)?;
                }
                Node::Other
            }
            other => return Err(Failure::Unsafe(format!("unsupported entry type {other:?}"))),
        };
        self.made.insert(key, node);
        Ok(())
    }

    /// The times of the directories still open, innermost first, and of the mount root.
    fn finish(&mut self, opts: &Options) -> Result<(), ArchiveError> {
        if opts.dry_run {
            return Ok(());
        }
        let write_err = |path: PathBuf| move |source| ArchiveError::Write { path, source };
        while let Some(depth) = self.open.len().checked_sub(1) {
            if let Some(t) = self.open[depth].1 {
                let path = self.open_path(depth + 1);
                set_times(&path, t).map_err(write_err(path.clone()))?;
            }
            self.open.pop();
        }
        if let Some(t) = self.root_mtime {
            let path = self.target.path.clone();
            set_times(&path, t).map_err(write_err(path.clone()))?;
        }
        Ok(())
    }
}

/// Splits a name into components: `.` and empty ones dropped, `None` if any is `..`.
fn components(name: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => out.push(c.to_vec()),
        }
    }
    Some(out)
}

/// The link's target; a missing or empty one is unsafe.
fn link_target(meta: &Meta) -> Result<&[u8], Failure> {
    match &meta.link {
        Some(l) if !l.is_empty() => Ok(l),
        _ => Err(Failure::Unsafe("link without a target".into())),
    }
}

/// Writes a regular file through its descriptor. A sparse entry's segments are written at
/// their offsets (its holes cost a seek, never a write or a read), and in any file runs of
/// zero blocks become holes, so sparse files stay sparse.
///
/// The file is created with `O_CREAT | O_EXCL | O_NOFOLLOW` and mode 0600: an existing
/// path, a symlink included, is refused rather than written through, and no other user
/// can open the file before its owner and mode are set. A sparse segment whose data runs
/// out before the map's length is a read error.
fn write_file(
    path: &Path,
    data: &mut impl Read,
    meta: &Meta,
    buf: &mut [u8],
) -> Result<(), Failure> {
    let io_err = |e| Failure::Io(path.to_path_buf(), e);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Failure::Unsafe("the path exists already".into())
            } else {
                io_err(e)
            }
        })?;
    // The end of the last data written: short of the size, the file ends in a hole that
    // only `set_len` makes (a syscall most files do without).
    let mut data_end = 0;
    let size = match &meta.sparse {
        Some((logical, segments)) => {
            for &(offset, len) in segments {
                let (written, end) =
                    write_run(path, &file, &mut data.by_ref().take(len), offset, buf)?;
                data_end = data_end.max(end);
                if written != len {
                    return Err(Failure::Read(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "a sparse segment is cut short",
                    )));
                }
            }
            *logical
        }
        None => {
            let (written, end) = write_run(path, &file, data, 0, buf)?;
            data_end = end;
            written
        }
    };
    if data_end != size {
        file.set_len(size).map_err(io_err)?;
    }
    if data_end >= START_WRITEBACK {
        // The restore's final sync then finds most of the data on disk already.
        super::start_writeback(&file, 0, 0);
    }
    finish_fd(&file, meta).map_err(io_err)
}

/// Files of at least this much data have their writeback started as soon as they are
/// written (see [`super::start_writeback`]).
const START_WRITEBACK: u64 = 256 * 1024;

/// Copies `data` to `file` from `base` on, leaving zero blocks as holes; returns the bytes
/// read and the end of the last data written (`base` if none was).
/// Zeros are found by 4 KiB block of each read; a run of data blocks is written at once.
fn write_run(
    path: &Path,
    file: &File,
    data: &mut impl Read,
    base: u64,
    buf: &mut [u8],
) -> Result<(u64, u64), Failure> {
    const BLOCK: usize = 4096;
    let mut offset = base;
    let mut data_end = base;
    loop {
        let n = match data.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Read(e)),
        };
        let chunk = &buf[..n];
        let mut start = 0;
        while start < n {
            let end = (start + BLOCK).min(n);
            if chunk[start..end].iter().all(|&b| b == 0) {
                start = end;
                continue;
            }
            // Extend the run of data blocks, then write it at once.
            let mut run_end = end;
            while run_end < n {
                let next = (run_end + BLOCK).min(n);
                if chunk[run_end..next].iter().all(|&b| b == 0) {
                    break;
                }
                run_end = next;
            }
            file.write_all_at(&chunk[start..run_end], offset + start as u64)
                .map_err(|e| Failure::Io(path.to_path_buf(), e))?;
            data_end = offset + run_end as u64;
            start = run_end;
        }
        offset += n as u64;
    }
    Ok((offset - base, data_end))
}

/// Owner, mode, xattrs, then times, all through the descriptor. The mode comes after the
/// owner because chown clears setuid and setgid. Any failure, an xattr the filesystem
/// refuses included, fails the file.
fn finish_fd(file: &File, meta: &Meta) -> io::Result<()> {
    use std::os::fd::AsFd;
    nix::unistd::fchown(
        file.as_fd(),
        Some(Uid::from_raw(meta.uid as u32)),
        Some(Gid::from_raw(meta.gid as u32)),
    )?;
    file.set_permissions(fs::Permissions::from_mode(meta.mode))?;
    for (k, v) in &meta.xattrs {
        xattr::FileExt::set_xattr(file, OsStr::from_bytes(k), v)?;
    }
    let t = TimeSpec::new(meta.mtime, 0);
    futimens(file.as_fd(), &t, &t)?;
    Ok(())
}

/// For entries without a useful descriptor (dirs, symlinks, FIFOs, devices). Symlinks
/// have no mode of their own and take no `user.*` xattrs.
fn finish_by_path(path: &Path, meta: &Meta, chmod: bool) -> io::Result<()> {
    set_owner_mode_xattrs(path, meta, chmod)?;
    set_times(path, TimeSpec::new(meta.mtime, 0))
}

/// Owner (of the path itself, never a link's target), then the mode when `chmod`, then
/// xattrs. Without `chmod` (symlinks) an xattr that cannot be set is ignored, since Linux
/// takes no `user.*` xattrs on symlinks.
fn set_owner_mode_xattrs(path: &Path, meta: &Meta, chmod: bool) -> io::Result<()> {
    fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(Uid::from_raw(meta.uid as u32)),
        Some(Gid::from_raw(meta.gid as u32)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    if chmod {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))?;
    }
    for (k, v) in &meta.xattrs {
        if let Err(e) = xattr::set(path, OsStr::from_bytes(k), v)
            && chmod
        {
            return Err(e);
        }
    }
    Ok(())
}

/// Access and modification time, of the path itself (never a link's target).
fn set_times(path: &Path, t: TimeSpec) -> io::Result<()> {
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// Counts the tar bytes read, for progress.
/// It also checks the cancel flag before each read: once it is set, the next read fails,
/// which stops the extraction (and `extract` reports `Cancelled`).
struct Counting<'p, R> {
    inner: R,
    bytes: u64,
    /// `bytes` at the last progress call: calls come about once per MiB, and at the end.
    reported: u64,
    progress: &'p (dyn Fn(u64) + Sync),
    cancel: Option<super::Cancel>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if super::cancelled(&self.cancel) {
            return Err(io::Error::other("cancelled"));
        }
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if self.bytes - self.reported >= 1 << 20 || n == 0 {
            self.reported = self.bytes;
            (self.progress)(self.bytes);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, EntryType, i64)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for &(name, kind, mtime) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(if kind.is_dir() { 0o750 } else { 0o640 });
            h.set_mtime(mtime as u64);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(0);
            b.append_data(&mut h, name, io::empty()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn target(dir: &Path) -> Target {
        Target {
            archive_dir: "m".into(),
            path: dir.join("m"),
            reserved: None,
            discard: false,
            file_root: false,
        }
    }

    fn mtime(p: &Path) -> i64 {
        fs::symlink_metadata(p).unwrap().mtime()
    }

    /// The archive's order must not change what a directory's time ends up as: entries
    /// that come back into a directory the archive had left, and a directory whose entry
    /// comes after its contents, all keep the recorded times.
    #[test]
    fn directories_keep_their_times_in_any_entry_order() {
        let tar = archive(&[
            ("m/", EntryType::Directory, 1_000),
            ("m/a/", EntryType::Directory, 2_000),
            ("m/a/f", EntryType::Regular, 5),
            ("m/b/", EntryType::Directory, 3_000),
            ("m/b/g", EntryType::Regular, 5),
            ("m/a/late", EntryType::Regular, 5),
            ("m/c/d/e", EntryType::Regular, 5),
            ("m/c/", EntryType::Directory, 4_000),
            ("m/c/d/", EntryType::Directory, 4_500),
            ("m/b/x/y/", EntryType::Directory, 6_000),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let summary = extract(
            &tar[..],
            &[target(dir.path())],
            &Options::default(),
            &|_| {},
        )
        .unwrap();
        assert_eq!(summary.entries, 10);
        let m = dir.path().join("m");
        for (path, want) in [
            ("", 1_000),
            ("a", 2_000),
            ("b", 3_000),
            ("c", 4_000),
            ("c/d", 4_500),
            ("b/x/y", 6_000),
            ("a/late", 5),
        ] {
            assert_eq!(mtime(&m.join(path)), want, "{path}");
        }
        let mode = fs::symlink_metadata(m.join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o750);
    }

    /// More entries than allowed: refused, naming the setting, dry run or not.
    #[test]
    fn more_entries_than_the_limit_are_refused() {
        let names: Vec<String> = (0..6).map(|i| format!("m/f{i}")).collect();
        let entries: Vec<_> = names
            .iter()
            .map(|n| (n.as_str(), EntryType::Regular, 1))
            .collect();
        let tar = archive(&entries);
        for dry_run in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let targets = [target(dir.path())];
            let limited = |max| Options {
                dry_run,
                max_entries: Some(max),
                ..Options::default()
            };
            let err = extract(&tar[..], &targets, &limited(5), &|_| {}).unwrap_err();
            assert!(err.to_string().contains("`max_archive_entries`"), "{err}");
            let dir = tempfile::tempdir().unwrap();
            let targets = [target(dir.path())];
            assert_eq!(
                extract(&tar[..], &targets, &limited(6), &|_| {})
                    .unwrap()
                    .entries,
                6
            );
        }
    }
}
