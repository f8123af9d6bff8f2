//! A snapshot as a restic tree: each entry of its tar stream becomes a restic node under
//! `/<app_id>/<snapshot_id>/`, mirroring the archive (`appsnap.json`, `volumes/<name>/…`,
//! `binds/<escaped path>/…`, `project/…`), so that rustic chunks every file on its own and
//! a second copy uploads what changed, as restic does for files; and `restic restore`
//! gives the app's real files. The [`layout`](super::layout) beside the folder keeps
//! what turns the tree back into the tar stream byte for byte.
//!
//! The source reads the local `.tar.gz` through its entry index. A restic tree needs its
//! entries in path order (each folder's children sorted by name, a folder before what it
//! holds); the writer's tar order is that within each mount, but the mounts follow one
//! another as the snapshot lists them. [`plan`] cuts the tar order into *runs* that are
//! each in path order and sorts the runs; each run is then read from its place in the
//! archive (inflating starts at the gzip member that holds it). An archive that cannot be
//! put in path order that way (an import made by another tool, odd names) is copied as
//! one tar file, as before.
//!
//! Small files are read into memory as the runs go by; a large one (or a hard link's
//! target) is read again from its place by the rustic worker that chunks it, so that
//! rustic's parallel workers never wait on one sequential stream and memory stays
//! bounded.

use std::cmp::Ordering as Order;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rustic_core::repofile::{Metadata, Node, NodeType};
use rustic_core::{ReadSource, ReadSourceEntry, RusticError, RusticResult};

use super::Progress;
use super::layout::{self, Record};
use crate::archive::index::{self, EntryKind, Index, Local, TarAt};
use crate::archive::tar_read::{TarReader, pad};
use crate::archive::{Cancel, cancelled};

/// Files up to this size (stored and logical) are read into memory as their run goes by.
const SMALL: u64 = 1 << 20;

/// Most bytes of holes (logical size beyond what is stored) a snapshot's sparse files may
/// add up to: rustic reads a hole as zeros, which costs time, never upload.
const MAX_HOLES: u64 = 1 << 30;

/// A stretch of the tar stream whose entries are in path order.
#[derive(Debug, Clone)]
struct Run {
    /// Tar offset of its first header.
    start: u64,
    /// Entries in it.
    count: usize,
    /// Whether it is the last in tar order (its end is the end-of-archive marker).
    last: bool,
    /// Its place in tar order.
    rank: usize,
    /// The metadata entry at the start, which the entry index leaves out.
    head: bool,
}

/// How a snapshot becomes a tree, decided from its entry index before anything is read.
#[derive(Debug)]
pub struct Plan {
    /// In path order.
    runs: Vec<Run>,
    /// Hard-link targets: archive path → (group number, names in the group).
    links: HashMap<Vec<u8>, (u64, u64)>,
}

/// Component-wise order of archive paths: a folder before what it holds, children by
/// name (bytes), as restic sorts a tree's nodes.
fn tree_order(a: &[u8], b: &[u8]) -> Order {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

/// A path a restic tree can hold as it is: relative, no empty, `.` or `..` component.
fn clean(path: &[u8]) -> bool {
    !path.is_empty()
        && path
            .split(|&c| c == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// The plan for the archive `index` describes, `None` when it cannot be a tree (then the
/// copy is one tar file). `tar_bytes`: the stream's length.
pub fn plan(index: &Index, tar_bytes: u64) -> io::Result<Option<Plan>> {
    let mut entries: Vec<index::Entry> = index.iter()?.map(|e| e.to_owned()).collect();
    entries.sort_by_key(|e| e.header_offset);
    let kinds: HashMap<&[u8], EntryKind> = entries
        .iter()
        .map(|e| (e.path.as_slice(), e.kind))
        .collect();
    let mut links: HashMap<Vec<u8>, (u64, u64)> = HashMap::new();
    let mut holes = 0u64;
    let mut runs: Vec<(usize, usize)> = Vec::new(); // (first, count) in tar order
    for (i, e) in entries.iter().enumerate() {
        let path = &e.path;
        if !clean(path) || e.kind == EntryKind::Other {
            return Ok(None);
        }
        let next = entries.get(i + 1).map_or(tar_bytes, |e| e.header_offset);
        let stored = next.saturating_sub(e.data_offset);
        match e.kind {
            EntryKind::File => holes += e.size.saturating_sub(stored),
            // Anything else holds no data in the writer's archives; one that does would
            // need its bytes kept somewhere the tree has no place for.
            _ if stored > 0 && i + 1 < entries.len() => return Ok(None),
            EntryKind::Hardlink => {
                let target = e.link.as_deref().unwrap_or_default();
                if kinds.get(target) != Some(&EntryKind::File) {
                    return Ok(None);
                }
                let n = links.len() as u64;
                links.entry(target.to_vec()).or_insert((n + 1, 1)).1 += 1;
            }
            _ => {}
        }
        match runs.last_mut() {
            Some((first, count))
                if tree_order(&entries[*first + *count - 1].path, path) == Order::Less =>
            {
                *count += 1
            }
            _ => runs.push((i, 1)),
        }
    }
    if holes > MAX_HOLES || entries.is_empty() {
        return Ok(None);
    }
    // The metadata entry comes first in every snapshot and the index leaves it out: a run
    // of its own, one entry, checked by name as it is read.
    let metadata = crate::archive::METADATA_ENTRY.as_bytes();
    let head = entries[0].header_offset > 0;
    let mut all: Vec<Run> = Vec::new();
    let mut bounds: Vec<(&[u8], &[u8])> = Vec::new();
    if head {
        all.push(Run {
            start: 0,
            count: 1,
            last: false,
            rank: 0,
            head: true,
        });
        bounds.push((metadata, metadata));
    }
    for (first, count) in &runs {
        all.push(Run {
            start: entries[*first].header_offset,
            count: *count,
            last: false,
            rank: all.len(),
            head: false,
        });
        bounds.push((&entries[*first].path, &entries[*first + *count - 1].path));
    }
    if let Some(last) = all.last_mut() {
        last.last = true;
    }
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by(|&a, &b| tree_order(bounds[a].0, bounds[b].0));
    // The runs must not interleave: each ends before the next begins.
    for pair in order.windows(2) {
        if tree_order(bounds[pair[0]].1, bounds[pair[1]].0) != Order::Less {
            return Ok(None);
        }
    }
    Ok(Some(Plan {
        runs: order.into_iter().map(|i| all[i].clone()).collect(),
        links,
    }))
}

/// What the readers saw, shared with the caller: the first error, and whether the
/// iteration got through every run.
#[derive(Default)]
struct Seen {
    error: Option<(io::ErrorKind, String)>,
    cancelled: bool,
    complete: bool,
}

/// The caller's view, asked once rustic is done: `None` when every entry went in whole.
#[derive(Clone)]
pub struct Check(Arc<Mutex<Seen>>);

impl Check {
    pub fn problem(&self) -> Option<String> {
        let seen = self.0.lock().expect("check lock");
        if seen.cancelled {
            return Some("stopped".into());
        }
        if let Some((_, e)) = &seen.error {
            return Some(format!("reading the local archive failed: {e}"));
        }
        (!seen.complete).then(|| "the snapshot's entries were not all read".into())
    }

    pub fn cancelled(&self) -> bool {
        self.0.lock().expect("check lock").cancelled
    }

    /// Whether the archive turned out not to be what its index and the plan say (an
    /// `InvalidData` error): the snapshot is then copied as one tar file.
    pub fn unlike(&self) -> bool {
        let seen = self.0.lock().expect("check lock");
        matches!(&seen.error, Some((io::ErrorKind::InvalidData, _)))
    }

    fn fail(&self, e: &io::Error) {
        let mut seen = self.0.lock().expect("check lock");
        seen.error.get_or_insert_with(|| (e.kind(), e.to_string()));
    }
}

/// The tree of one snapshot, as rustic's source.
pub struct TreeSource {
    /// The first `entries` call takes the work; a second yields nothing.
    parts: Mutex<Option<SourceParts>>,
    tar_bytes: u64,
}

impl TreeSource {
    /// The source of the archive `local` as `plan` lays it out, under `root`
    /// (`/<app_id>/<snapshot_id>`), with `index_file` beside it; the layout's scratch files
    /// go to `scratch`. Returns the check to ask once rustic is done.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        local: Arc<Local>,
        plan: Plan,
        root: PathBuf,
        tar_bytes: u64,
        scratch: PathBuf,
        index_file: Option<Vec<u8>>,
        created: chrono::DateTime<chrono::Utc>,
        progress: Arc<Progress>,
        cancel: Option<Cancel>,
    ) -> (TreeSource, Check) {
        let check = Check(Arc::default());
        let parts = SourceParts {
            local,
            runs: plan.runs,
            links: plan.links,
            root,
            tar_bytes,
            scratch,
            index_file,
            mtime: rustic_core::jiff::Timestamp::from_second(created.timestamp()).ok(),
            progress,
            cancel,
            check: check.clone(),
        };
        let source = TreeSource {
            parts: Mutex::new(Some(parts)),
            tar_bytes,
        };
        (source, check)
    }
}

/// What rustic reads of one node.
pub enum Open {
    /// A small file, read as its run went by (or the index, or the layout).
    Memory(io::Cursor<Vec<u8>>),
    /// A large file or a hard link's target, read from its place in the archive.
    Archive {
        local: Arc<Local>,
        entry: index::Entry,
        /// Bytes of the tar stream it stands for (its stored data; 0 for a hard link),
        /// counted as read progress while its first bytes are read.
        counts: u64,
        check: Check,
        progress: Arc<Progress>,
        cancel: Option<Cancel>,
    },
    /// The layout, from its scratch file.
    Scratch(BufReader<File>),
}

impl rustic_core::ReadSourceOpen for Open {
    type Reader = Reader;

    fn open(self) -> RusticResult<Reader> {
        Ok(match self {
            Open::Memory(c) => Reader::Memory(c),
            Open::Scratch(f) => Reader::Scratch(f),
            Open::Archive {
                local,
                entry,
                counts,
                check,
                progress,
                cancel,
            } => match index::open_file(&*local, entry.as_ref()) {
                Ok(content) => Reader::Archive {
                    content,
                    uncounted: counts,
                    check,
                    progress,
                    cancel,
                },
                Err(e) => {
                    check.fail(&e);
                    return Err(RusticError::with_source(
                        rustic_core::ErrorKind::InputOutput,
                        "cannot read a file of the local archive",
                        e,
                    ));
                }
            },
        })
    }
}

pub enum Reader {
    Memory(io::Cursor<Vec<u8>>),
    Scratch(BufReader<File>),
    Archive {
        content: index::Content<Box<dyn Read + Send>>,
        /// Progress still to count: the job's total is the tar stream's length, and a
        /// sparse file reads more (its holes) than the stream holds.
        uncounted: u64,
        check: Check,
        progress: Arc<Progress>,
        cancel: Option<Cancel>,
    },
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Reader::Memory(c) => c.read(buf),
            Reader::Scratch(f) => f.read(buf),
            Reader::Archive {
                content,
                uncounted,
                check,
                progress,
                cancel,
            } => {
                if cancelled(cancel) {
                    check.0.lock().expect("check lock").cancelled = true;
                    return Err(io::Error::other("stopped"));
                }
                let n = content.read(buf).inspect_err(|e| check.fail(e))?;
                let counted = (n as u64).min(*uncounted);
                *uncounted -= counted;
                progress.bytes_read.fetch_add(counted, Ordering::Relaxed);
                Ok(n)
            }
        }
    }
}

/// Everything a reader below the tar reader passes on, except what is switched off (the
/// data of files): the gaps of the layout.
struct Recorder<R> {
    inner: R,
    on: bool,
    kept: Arc<Mutex<Vec<u8>>>,
}

impl<R: Read> Read for Recorder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.on {
            self.kept
                .lock()
                .expect("recorder")
                .extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

type Tar = TarReader<Recorder<Box<dyn Read + Send>>>;

/// The iteration: runs in path order, then the index file and the layout.
pub struct Entries {
    source: Option<SourceParts>,
    /// The run being read: its reader, where that reader started, entries left.
    tar: Option<(Tar, u64, usize)>,
    run: usize,
    kept: Arc<Mutex<Vec<u8>>>,
    /// Per run (by rank in tar order): its records, encoded, in a scratch file.
    spills: Vec<Option<BufWriter<File>>>,
    extras_done: bool,
    /// The index file and the layout, once the runs are read.
    pending: std::collections::VecDeque<ReadSourceEntry<Open>>,
}

/// What the iteration needs (owned, so that the iterator is `'static`).
struct SourceParts {
    local: Arc<Local>,
    /// In path order.
    runs: Vec<Run>,
    /// Hard-link targets: archive path → (group number, names in the group).
    links: HashMap<Vec<u8>, (u64, u64)>,
    /// `/<app_id>/<snapshot_id>`.
    root: PathBuf,
    tar_bytes: u64,
    /// Where the layout's scratch files go (unlinked at once, so nothing stays).
    scratch: PathBuf,
    /// The index file's bytes, stored as `<root>.index`.
    index_file: Option<Vec<u8>>,
    mtime: Option<rustic_core::jiff::Timestamp>,
    progress: Arc<Progress>,
    cancel: Option<Cancel>,
    check: Check,
}

impl ReadSource for TreeSource {
    type Open = Open;
    type Iter = Entries;

    fn size(&self) -> RusticResult<Option<u64>> {
        Ok(Some(self.tar_bytes))
    }

    fn entries(&self) -> Entries {
        let source = self.parts.lock().expect("source lock").take();
        let runs = source.as_ref().map_or(0, |p| p.runs.len());
        Entries {
            source,
            tar: None,
            run: 0,
            kept: Arc::default(),
            spills: (0..runs).map(|_| None).collect(),
            extras_done: false,
            pending: Default::default(),
        }
    }
}

/// The archive is not as its index and plan say: an `InvalidData` error, on which the
/// caller copies the snapshot as one tar file instead.
fn unlike(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A scratch file in `dir`, unlinked at once: it lives as long as its descriptor.
fn scratch_file(dir: &Path) -> io::Result<File> {
    let path = dir.join(format!(
        ".layout-{}-{}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// Restic's extended attributes (its type is not exported: built through its serde
/// form, the value in base64).
fn xattrs<T: serde::de::DeserializeOwned>(list: &[(Vec<u8>, Vec<u8>)]) -> io::Result<T> {
    let list: Vec<serde_json::Value> = list
        .iter()
        .map(|(k, v)| serde_json::json!({"name": String::from_utf8_lossy(k), "value": base64(v)}))
        .collect();
    serde_json::from_value(serde_json::Value::Array(list)).map_err(io::Error::other)
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Restic's mode: the permission bits and Go's type bits (`io/fs.FileMode`).
fn go_mode(mode: u32, kind: EntryKind) -> u32 {
    let mut m = mode & 0o777;
    m |= match kind {
        EntryKind::Dir => 1 << 31,
        EntryKind::Symlink => 1 << 27,
        EntryKind::BlockDevice => 1 << 26,
        EntryKind::CharDevice => (1 << 26) | (1 << 21),
        EntryKind::Fifo => 1 << 25,
        _ => 0,
    };
    if mode & 0o4000 != 0 {
        m |= 1 << 23;
    }
    if mode & 0o2000 != 0 {
        m |= 1 << 22;
    }
    if mode & 0o1000 != 0 {
        m |= 1 << 20;
    }
    m
}

impl Entries {
    fn parts(&self) -> &SourceParts {
        self.source.as_ref().expect("taken")
    }

    /// Opens run `i`'s reader at its first header.
    fn open_run(&mut self, i: usize) -> io::Result<()> {
        let run = self.parts().runs[i].clone();
        let tar = self.reader_at(run.start)?;
        self.kept.lock().expect("recorder").clear();
        let spill = BufWriter::new(scratch_file(&self.parts().scratch)?);
        self.spills[run.rank] = Some(spill);
        self.tar = Some((tar, run.start, run.count));
        Ok(())
    }

    fn reader_at(&self, at: u64) -> io::Result<Tar> {
        let raw = self.parts().local.tar_at(at)?;
        Ok(TarReader::new(Recorder {
            inner: raw,
            on: true,
            kept: Arc::clone(&self.kept),
        }))
    }

    fn record(&mut self, path: &[u8], stored: u64, segments: Vec<(u64, u64)>) -> io::Result<()> {
        let gap = std::mem::take(&mut *self.kept.lock().expect("recorder"));
        if gap.len() > layout::MAX_GAP as usize {
            // A layout must read back: one its reader would refuse is no copy.
            return Err(unlike("an entry with headers larger than a layout holds"));
        }
        let parts = self.parts();
        parts
            .progress
            .bytes_read
            .fetch_add(gap.len() as u64, Ordering::Relaxed);
        let rank = parts.runs[self.run].rank;
        let spill = self.spills[rank].as_mut().expect("run open");
        Record {
            gap,
            path: if stored > 0 {
                path.to_vec()
            } else {
                Vec::new()
            },
            stored,
            segments,
        }
        .encode(spill)
    }

    /// The next entry of the open run, recorded in its spill.
    fn next_in_run(&mut self) -> io::Result<ReadSourceEntry<Open>> {
        let (mut tar, base, left) = self.tar.take().expect("run open");
        tar.get_mut().on = true;
        let header_at = base + tar.bytes;
        let e = tar
            .next_entry()?
            .ok_or_else(|| unlike("the archive ends before its index says"))?;
        let data_at = base + tar.bytes;
        let mut name = e.name.clone();
        while name.last() == Some(&b'/') {
            name.pop();
        }
        let parts = self.parts();
        // Each entry must be the one the plan expects there: the metadata entry, or the
        // one the index puts at this offset (an entry the index does not know would
        // break the order the plan checked).
        let expected = match parts.runs[self.run].head {
            true => name == crate::archive::METADATA_ENTRY.as_bytes(),
            false => parts
                .local
                .index
                .get(&name)?
                .is_some_and(|i| i.header_offset == header_at),
        };
        if !expected || !clean(&name) {
            return Err(unlike("an entry its index does not describe"));
        }
        let kind = match e.kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                EntryKind::File
            }
            tar::EntryType::Link => EntryKind::Hardlink,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Fifo => EntryKind::Fifo,
            tar::EntryType::Char => EntryKind::CharDevice,
            tar::EntryType::Block => EntryKind::BlockDevice,
            _ => return Err(unlike("an entry of a kind a tree cannot hold")),
        };
        if kind != EntryKind::File && e.size > 0 {
            return Err(unlike("an entry with data a tree cannot hold"));
        }
        let logical = e.sparse.as_ref().map_or(e.size, |s| s.0);
        let group = |path: &[u8]| parts.links.get(path).copied();
        let mut meta = Metadata {
            mode: Some(go_mode(e.mode, kind)),
            mtime: rustic_core::jiff::Timestamp::from_second(e.mtime).ok(),
            uid: u32::try_from(e.uid).ok(),
            gid: u32::try_from(e.gid).ok(),
            extended_attributes: xattrs(&e.xattrs)?,
            ..Metadata::default()
        };
        let lookup = |path: &[u8]| -> io::Result<index::Entry> {
            Ok(parts
                .local
                .index
                .get(path)?
                .ok_or_else(|| io::Error::other("a file the index does not list"))?
                .to_owned())
        };
        let archive = |entry: index::Entry, counts: u64| Open::Archive {
            local: Arc::clone(&parts.local),
            entry,
            counts,
            check: parts.check.clone(),
            progress: Arc::clone(&parts.progress),
            cancel: parts.cancel.clone(),
        };
        let (node_type, open, stored, segments, resume) = match kind {
            EntryKind::File => {
                meta.size = logical;
                if let Some((g, n)) = group(&name) {
                    (meta.inode, meta.links) = (g, n);
                }
                let segments = e.sparse.as_ref().map(|s| s.1.clone()).unwrap_or_default();
                if e.size <= SMALL && logical <= SMALL {
                    tar.get_mut().on = false;
                    let mut stored_bytes = vec![0; e.size as usize];
                    let mut n = 0;
                    while n < stored_bytes.len() {
                        match tar.read_data(&mut stored_bytes[n..])? {
                            0 => return Err(io::Error::other("a file cut short")),
                            k => n += k,
                        }
                    }
                    let content = match &e.sparse {
                        None => stored_bytes,
                        Some((logical, segs)) => {
                            let mut full = vec![0; *logical as usize];
                            let mut at = 0usize;
                            for &(off, len) in segs {
                                full[off as usize..(off + len) as usize]
                                    .copy_from_slice(&stored_bytes[at..at + len as usize]);
                                at += len as usize;
                            }
                            full
                        }
                    };
                    parts
                        .progress
                        .bytes_read
                        .fetch_add(e.size, Ordering::Relaxed);
                    tar.get_mut().on = true;
                    let open = Open::Memory(io::Cursor::new(content));
                    (NodeType::File, Some(open), e.size, segments, None)
                } else {
                    // Read later, from its place, by the worker that chunks it: this
                    // reader goes on after its data.
                    (
                        NodeType::File,
                        Some(archive(lookup(&name)?, e.size)),
                        e.size,
                        segments,
                        Some(data_at + e.size),
                    )
                }
            }
            EntryKind::Hardlink => {
                let target = e.link.clone().unwrap_or_default();
                let entry = lookup(&target)?;
                meta.size = entry.size;
                if let Some((g, n)) = group(&target) {
                    (meta.inode, meta.links) = (g, n);
                }
                (NodeType::File, Some(archive(entry, 0)), 0, Vec::new(), None)
            }
            EntryKind::Dir => (NodeType::Dir, None, 0, Vec::new(), None),
            EntryKind::Symlink => {
                let target = e.link.clone().unwrap_or_default();
                let t = NodeType::from_link(Path::new(OsStr::from_bytes(&target)));
                (t, None, 0, Vec::new(), None)
            }
            EntryKind::Fifo => (NodeType::Fifo, None, 0, Vec::new(), None),
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                let device = libc::makedev(e.device.0, e.device.1);
                let t = match kind {
                    EntryKind::CharDevice => NodeType::Chardev { device },
                    _ => NodeType::Dev { device },
                };
                (t, None, 0, Vec::new(), None)
            }
            EntryKind::Other => unreachable!("refused above"),
        };
        let path = parts.root.join(OsStr::from_bytes(&name));
        let file_name = path.file_name().unwrap_or_default().to_owned();
        let node = Node::new_node(&file_name, node_type, meta);
        let last_of_run = left == 1;
        let run_is_last = parts.runs[self.run].last;
        // The gap of this entry is complete; its data (if any) is the node's.
        self.record(&name, stored, segments)?;
        let mut tar = match resume {
            Some(data_end) => {
                // Skip the data by starting again after it: its padding is recorded,
                // then the next header.
                let mut t = self.reader_at(data_end)?;
                let mut padding = vec![0; pad(stored) as usize];
                t.get_mut().read_exact(&mut padding)?;
                (t, data_end + padding.len() as u64)
            }
            None => {
                // Its padding (none but after a file) goes into the next gap.
                tar.skip_padding()?;
                (tar, base)
            }
        };
        if last_of_run {
            tar.0.get_mut().on = true;
            if run_is_last {
                // The end-of-archive marker and whatever follows it.
                if tar.0.next_entry()?.is_some() {
                    return Err(unlike("entries after the last one indexed"));
                }
            }
            // The run's tail: the last padding (and the end, for the last run).
            self.record(b"", 0, Vec::new())?;
            self.tar = None;
        } else {
            self.tar = Some((tar.0, tar.1, left - 1));
        }
        Ok(ReadSourceEntry { path, node, open })
    }

    /// The layout, assembled from the runs' spills in tar order, in a scratch file.
    fn layout(&mut self) -> io::Result<(File, u64)> {
        let (scratch, tar_bytes) = (self.parts().scratch.clone(), self.parts().tar_bytes);
        let out = BufWriter::new(scratch_file(&scratch)?);
        let mut writer = layout::Writer::new(out, tar_bytes)?;
        for spill in self.spills.iter_mut() {
            let spill = spill
                .take()
                .ok_or_else(|| io::Error::other("a run not read"))?;
            let mut file = spill.into_inner().map_err(|e| e.into_error())?;
            file.rewind()?;
            let mut input = BufReader::new(file);
            while let Some(r) = Record::decode(&mut input)? {
                writer.push(&r)?;
            }
        }
        let (out, covered) = writer.finish()?;
        if covered != tar_bytes {
            return Err(io::Error::other(format!(
                "the entries cover {covered} bytes of a {tar_bytes} byte stream"
            )));
        }
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.flush()?;
        let len = file.stream_position()?;
        file.rewind()?;
        Ok((file, len))
    }

    /// A plain file beside the snapshot's folder (`<root>.index`, `<root>.layout`).
    fn extra(&self, suffix: &str, size: u64, open: Open) -> ReadSourceEntry<Open> {
        let parts = self.parts();
        let mut name = parts.root.file_name().unwrap_or_default().to_owned();
        name.push(suffix);
        let meta = Metadata {
            size,
            mode: Some(0o600),
            mtime: parts.mtime,
            ..Metadata::default()
        };
        ReadSourceEntry {
            path: parts.root.with_file_name(&name),
            node: Node::new_node(&name, NodeType::File, meta),
            open: Some(open),
        }
    }

    fn step(&mut self) -> io::Result<Option<ReadSourceEntry<Open>>> {
        if cancelled(&self.parts().cancel) {
            self.parts().check.0.lock().expect("check lock").cancelled = true;
            return Ok(None);
        }
        if self.tar.is_none() && self.run < self.parts().runs.len() {
            self.open_run(self.run)?;
        }
        if self.tar.is_some() {
            let entry = self.next_in_run()?;
            if self.tar.is_none() {
                self.run += 1;
            }
            return Ok(Some(entry));
        }
        if self.extras_done {
            return Ok(None);
        }
        self.extras_done = true;
        // `<id>.index` sorts before `<id>.layout`; both after the folder `<id>`.
        let mut extras = Vec::new();
        if let Some(index) = self.parts().index_file.clone() {
            let size = index.len() as u64;
            extras.push(self.extra(".index", size, Open::Memory(io::Cursor::new(index))));
        }
        let (file, size) = self.layout()?;
        extras.push(self.extra(".layout", size, Open::Scratch(BufReader::new(file))));
        self.parts().check.0.lock().expect("check lock").complete = true;
        self.pending = extras.into();
        Ok(self.pending.pop_front())
    }
}

impl Iterator for Entries {
    type Item = RusticResult<ReadSourceEntry<Open>>;

    /// An error ends the iteration (rustic would skip the entry and go on): the check
    /// then reports it, and the copy is taken back.
    fn next(&mut self) -> Option<Self::Item> {
        self.source.as_ref()?;
        if let Some(e) = self.pending.pop_front() {
            return Some(Ok(e));
        }
        match self.step() {
            Ok(e) => e.map(Ok),
            Err(e) => {
                self.parts().check.fail(&e);
                self.source = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{self, Source};

    /// A real archive of two folders (the second sorts before the first, as `binds`
    /// does before `volumes`), with small and large files, a hard link, a symlink.
    fn archive_of(dir: &Path) -> (PathBuf, archive::Summary, Arc<Index>) {
        let (a, b) = (dir.join("a"), dir.join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join("small.txt"), b"hello\n").unwrap();
            std::fs::write(d.join("sub/z"), vec![7u8; 1000]).unwrap();
        }
        let big: Vec<u8> = (0..(3u32 << 20)).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(a.join("big.bin"), &big).unwrap();
        std::fs::hard_link(a.join("big.bin"), a.join("sub/big-link")).unwrap();
        std::os::unix::fs::symlink("../small.txt", b.join("sub/link")).unwrap();
        let sources = [
            Source {
                archive_dir: "volumes/vol".into(),
                path: a,
                exclude: Vec::new(),
            },
            Source {
                archive_dir: "binds/b".into(),
                path: b,
                exclude: Vec::new(),
            },
        ];
        let path = dir.join("s.tar.gz");
        let file = File::create(&path).unwrap();
        let (summary, _) =
            archive::write(file, b"{}", &sources, &archive::Options::default(), &|_| {}).unwrap();
        let index = index::build(&path, &summary.sha256, 1 << 20).unwrap();
        (path, summary, Arc::new(index))
    }

    #[test]
    fn the_tree_and_its_layout_give_back_the_tar_stream_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (path, summary, index) = archive_of(dir.path());
        let plan = plan(&index, summary.tar_bytes).unwrap().expect("a tree");

        assert!(plan.runs.len() >= 2, "{plan:?}");
        let local = Arc::new(Local {
            archive: path.clone(),
            index: Arc::clone(&index),
        });
        let progress = Arc::new(Progress::default());
        let (source, check) = TreeSource::new(
            local,
            plan,
            PathBuf::from("/app/snap"),
            summary.tar_bytes,
            dir.path().to_path_buf(),
            None,
            chrono::Utc::now(),
            Arc::clone(&progress),
            None,
        );
        let mut contents: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut paths = Vec::new();
        let mut layout_file = None;
        for entry in source.entries() {
            let entry = entry.unwrap();
            paths.push(entry.path.clone());
            let mut bytes = Vec::new();
            if let Some(open) = entry.open {
                rustic_core::ReadSourceOpen::open(open)
                    .unwrap()
                    .read_to_end(&mut bytes)
                    .unwrap();
            }
            if entry.path == Path::new("/app/snap.layout") {
                layout_file = Some(bytes);
            } else if let Ok(rel) = entry.path.strip_prefix("/app/snap") {
                contents.insert(rel.as_os_str().as_bytes().to_vec(), bytes);
            }
        }
        assert_eq!(check.problem(), None);
        assert_eq!(
            progress.bytes_read.load(Ordering::Relaxed),
            summary.tar_bytes,
            "the progress adds up to the stream"
        );
        let sorted = {
            let mut s = paths.clone();
            s.sort();
            s
        };
        assert_eq!(paths, sorted, "entries come in path order");
        let layout = Arc::new(
            layout::Layout::parse(bytes::Bytes::from(layout_file.expect("a layout"))).unwrap(),
        );
        struct Mem(HashMap<Vec<u8>, Vec<u8>>);
        impl layout::Nodes for Mem {
            fn read(&self, path: &[u8], offset: u64, len: usize) -> io::Result<bytes::Bytes> {
                let data = &self.0[path];
                let from = (offset as usize).min(data.len());
                let to = (from + len).min(data.len());
                Ok(bytes::Bytes::copy_from_slice(&data[from..to]))
            }
        }
        let mut rebuilt = Vec::new();
        layout::Rebuilt::at(layout, Arc::new(Mem(contents)), 0)
            .unwrap()
            .read_to_end(&mut rebuilt)
            .unwrap();
        let mut original = Vec::new();
        archive::read::open_tar_stream(&path, 1)
            .unwrap()
            .read_to_end(&mut original)
            .unwrap();
        assert_eq!(rebuilt.len(), original.len());
        assert!(rebuilt == original, "the very same bytes");
    }
}
