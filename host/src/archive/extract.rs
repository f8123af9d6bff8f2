//! Safe extraction of a snapshot into its mounts — the half of a restore that touches
//! the disk — and, with `dry_run`, the structural half of `verify`.
//!
//! Whatever the archive says (it may come from an import or a tampered disk), nothing is
//! written outside the mount an entry belongs to:
//! - absolute names and `..` components are refused, and every entry must lie under one of
//!   the snapshot's mount folders;
//! - the extractor keeps a map of every path it has made; a parent must be a directory *it*
//!   made, so a symlink planted by the archive is never written through, and an existing
//!   path is never overwritten (a duplicate entry is refused);
//! - hard links must point at a regular file extracted earlier in the same mount;
//! - device nodes only when explicitly allowed.
//!
//! Files are created with `O_EXCL | O_NOFOLLOW` and finished through their descriptor
//! (owner, then mode — chown clears setuid — then xattrs, then times). Runs of zero blocks
//! become holes, so sparse files stay sparse. Directory metadata is applied last, deepest
//! first, so a read-only directory does not block its own contents.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, futimens, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, mkfifo};
use tar::EntryType;

use super::tar_read::TarReader;
use super::{ArchiveError, METADATA_ENTRY};

/// Where one mount folder of the archive goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// e.g. `volumes/db` (no trailing slash).
    pub archive_dir: String,
    pub path: PathBuf,
    /// A name at the top of `path` that belongs to appsnap (the aside folder when the
    /// current data was moved into the mount itself); the archive may not use it.
    pub reserved: Option<String>,
    /// Check this mount's entries but write none of them (a snapshot mount the app no
    /// longer has: it is skipped, not written wherever the archive says).
    pub discard: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Create character and block devices found in the archive.
    pub allow_devices: bool,
    /// Check and read everything, write nothing (verify).
    pub dry_run: bool,
    /// Restore extended attributes outside `user.*` (`security.capability`, `trusted.*`,
    /// ACLs): only for snapshots this server made, or when the operator says so.
    pub privileged_xattrs: bool,
    /// Set from outside to stop at the next read (shutdown, an abandoned verify).
    pub cancel: Option<super::Cancel>,
}

#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub entries: u64,
    pub tar_bytes: u64,
    /// Bytes of file data stored for each target (holes excluded): what a restore of it
    /// needs on its filesystem, in `targets` order.
    pub stored: Vec<u64>,
    /// Extended attributes left out because they were not allowed (`privileged_xattrs`).
    pub dropped_xattrs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Other,
}

struct Tree<'t> {
    target: &'t Target,
    prefix: Vec<Vec<u8>>,
    nodes: HashMap<Vec<u8>, Node>,
    /// Directories to finish at the end: (path, uid, gid, mode, mtime, xattrs).
    dirs: Vec<(Vec<u8>, Meta)>,
}

/// What the headers say about an entry, besides its name and data.
#[derive(Debug, Clone)]
struct Meta {
    kind: EntryType,
    uid: u64,
    gid: u64,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Symlink or hard-link target.
    link: Option<Vec<u8>>,
    device: (u32, u32),
    /// A sparse file's logical size and data segments (its data is the segments only).
    sparse: Option<(u64, Vec<(u64, u64)>)>,
}

/// Reads the whole tar stream and extracts (or with `dry_run`, checks) every entry.
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
            nodes: HashMap::new(),
            dirs: Vec::new(),
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
        ..Summary::default()
    };
    let mut first = true;
    while let Some(entry) = reader.next_entry().map_err(ArchiveError::corrupt)? {
        let name = entry.name.clone();
        let shown = String::from_utf8_lossy(&name).into_owned();
        let unsafe_entry = |reason: &str| ArchiveError::Unsafe {
            entry: shown.clone(),
            reason: reason.to_string(),
        };
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
            summary.stored[index] += entry.size;
        }
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
        let file_root = tree.target.archive_dir.starts_with("binds/")
            && matches!(meta.kind, EntryType::Regular | EntryType::Continuous);
        if rel.is_empty() && !meta.kind.is_dir() && !file_root {
            return Err(unsafe_entry(
                "a mount's root must be a directory (a bind mount's may be a regular file), \
                 never a link or a special file",
            ));
        }
        tree.add(&rel, &mut EntryData(&mut reader), meta, &tree_opts[index])
            .map_err(|e| match e {
                Failure::Unsafe(reason) => unsafe_entry(&reason),
                Failure::Io(path, source) => ArchiveError::Write { path, source },
                Failure::Read(e) => ArchiveError::corrupt(e),
            })?;
        summary.entries += 1;
    }
    for (tree, opts) in trees.iter_mut().zip(&tree_opts) {
        tree.finish_dirs(opts)?;
    }
    summary.tar_bytes = reader.bytes;
    Ok(summary)
}

/// The current entry's data, as a `Read`.
struct EntryData<'r, R>(&'r mut TarReader<R>);

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_data(buf)
    }
}

enum Failure {
    Unsafe(String),
    Io(PathBuf, io::Error),
    Read(io::Error),
}

impl Tree<'_> {
    fn path(&self, rel: &[Vec<u8>]) -> PathBuf {
        let mut p = self.target.path.clone();
        for c in rel {
            p.push(OsStr::from_bytes(c));
        }
        p
    }

    /// Makes sure every ancestor of `rel` is a directory this extraction made (creating
    /// missing ones, for archives without directory entries).
    fn ensure_parents(&mut self, rel: &[Vec<u8>], opts: &Options) -> Result<(), Failure> {
        for depth in 0..rel.len() {
            let key = rel[..depth].join(&b'/');
            match self.nodes.get(&key) {
                Some(Node::Dir) => continue,
                Some(_) => return Err(Failure::Unsafe("a parent is a symlink or a file".into())),
                None => {}
            }
            if !opts.dry_run {
                let path = self.path(&rel[..depth]);
                self.mkdir(&path, depth == 0)?;
            }
            self.nodes.insert(key, Node::Dir);
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

    fn add(
        &mut self,
        rel: &[Vec<u8>],
        data: &mut impl Read,
        meta: Meta,
        opts: &Options,
    ) -> Result<(), Failure> {
        let kind = meta.kind;
        let key = rel.join(&b'/');
        if kind.is_dir() {
            match self.nodes.get(&key) {
                Some(Node::Dir) => {}
                Some(_) => {
                    return Err(Failure::Unsafe("a directory replaces another entry".into()));
                }
                None => {
                    if !rel.is_empty() {
                        self.ensure_parents(rel, opts)?;
                    }
                    if !opts.dry_run {
                        self.mkdir(&self.path(rel), rel.is_empty())?;
                    }
                    self.nodes.insert(key.clone(), Node::Dir);
                }
            }
            self.dirs.retain(|(k, _)| *k != key);
            self.dirs.push((key, meta));
            return Ok(());
        }
        if self.nodes.contains_key(&key) {
            return Err(Failure::Unsafe(
                "duplicate entry (it would overwrite an earlier one)".into(),
            ));
        }
        if !rel.is_empty() {
            self.ensure_parents(rel, opts)?;
        }
        let path = self.path(rel);
        let io_err = |e| Failure::Io(path.clone(), e);
        let node = match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                if opts.dry_run {
                    io::copy(data, &mut io::sink()).map_err(Failure::Read)?;
                } else {
                    write_file(&path, data, &meta)?;
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
                if self.nodes.get(&trel.join(&b'/')) != Some(&Node::File) {
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
        self.nodes.insert(key, node);
        Ok(())
    }

    /// Owners, modes, xattrs and times of directories, deepest first.
    fn finish_dirs(&mut self, opts: &Options) -> Result<(), ArchiveError> {
        if opts.dry_run {
            return Ok(());
        }
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(k, _)| {
            std::cmp::Reverse(k.iter().filter(|&&b| b == b'/').count() + usize::from(!k.is_empty()))
        });
        for (key, meta) in dirs {
            let rel = components(&key).unwrap_or_default();
            let path = self.path(&rel);
            finish_by_path(&path, &meta, true)
                .map_err(|source| ArchiveError::Write { path, source })?;
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

fn link_target(meta: &Meta) -> Result<&[u8], Failure> {
    match &meta.link {
        Some(l) if !l.is_empty() => Ok(l),
        _ => Err(Failure::Unsafe("link without a target".into())),
    }
}

/// Writes a regular file through its descriptor. A sparse entry's segments are written at
/// their offsets (its holes cost a seek, never a write or a read), and in any file runs of
/// zero blocks become holes, so sparse files stay sparse.
fn write_file(path: &Path, data: &mut impl Read, meta: &Meta) -> Result<(), Failure> {
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
    let mut buf = vec![0u8; 256 * 1024];
    let size = match &meta.sparse {
        Some((logical, segments)) => {
            for &(offset, len) in segments {
                let written =
                    write_run(path, &file, &mut data.by_ref().take(len), offset, &mut buf)?;
                if written != len {
                    return Err(Failure::Read(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "a sparse segment is cut short",
                    )));
                }
            }
            *logical
        }
        None => write_run(path, &file, data, 0, &mut buf)?,
    };
    file.set_len(size).map_err(io_err)?;
    finish_fd(&file, meta).map_err(io_err)
}

/// Copies `data` to `file` from `base` on, leaving zero blocks as holes; returns the bytes
/// read.
fn write_run(
    path: &Path,
    file: &File,
    data: &mut impl Read,
    base: u64,
    buf: &mut [u8],
) -> Result<u64, Failure> {
    const BLOCK: usize = 4096;
    let mut offset = base;
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
            start = run_end;
        }
        offset += n as u64;
    }
    Ok(offset - base)
}

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
    let t = TimeSpec::new(meta.mtime, 0);
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
struct Counting<'p, R> {
    inner: R,
    bytes: u64,
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
