//! Pre-copy: the archive of a running app, made consistent by a short second pass while
//! it is stopped (live migration's pre-copy, applied to a backup).
//!
//! 1. **First pass, app running** ([`super::write_recording`]): the archive is written as
//!    always, and every entry's [`Identity`] (device, inode, size, mtime and ctime in ns,
//!    mode, owner, link count) is recorded with where its bytes sit in the tar stream and
//!    when it was read.
//! 2. **Second pass, app stopped** ([`second_pass`]): the same walk, in the same order,
//!    compared with the records by a merge (both are in walk order). An entry whose
//!    identity is the same, which was read cleanly, and whose ctime is older than the
//!    moment it was read minus [`racy_window_ns`] is *unchanged*: its first-pass bytes
//!    are named (a [`Piece::First`]), not read. Everything else — changed, new, racily
//!    clean, a file with several links — is read now into a delta file. Deleted entries
//!    are simply not met. The result is a list of pieces that, end to end, is exactly
//!    the tar stream a cold backup at the stop would produce.
//! 3. **Assembly, app running again** ([`assemble`]): the pieces become the final
//!    `.tar.gz`. The first pass wrote small gzip members ([`FIRST_PASS_MEMBER`]); every
//!    member wholly inside one piece is copied as it is (members are independent and tar
//!    has no absolute offsets, so a member range can be spliced anywhere); the few
//!    members cut by a change are inflated and compressed again with the delta's bytes.
//!    On ext4 and XFS this is done in place instead ([`super::in_place`]): the kept
//!    members stay where the first pass wrote them and only the gaps are rewritten, so the
//!    archive is not written a second time. When nothing changed at all
//!    ([`SecondPass::unchanged`]) the first pass's archive is the final one, and nothing
//!    is written again. Reused members are not inflated again
//!    (they are this process's output of moments ago, trusted as a stop-mode archive's
//!    members are), so the final archive's tar stream sha256 is not known here: an
//!    offsite copy, the only user of it, computes it before the first copy.
//!
//! Why the ctime test is sound: every change of a file's data or metadata through the
//! kernel moves its ctime, except writes through a shared memory mapping, which move it
//! only at the first write fault after the page was last written back. Such a page is
//! written back within `vm.dirty_expire_centisecs` + `vm.dirty_writeback_centisecs`, so
//! a file whose ctime is older than that before it was read has no page whose later
//! writes would go unseen. The window also covers the coarse clock ctime is taken from.

use std::cmp::Ordering;
use std::fs::{File, Metadata};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use super::gzip::{ParallelGzip, Written};
use super::walk::{Broken, ChunkSink, TarSink, Walker};
use super::{ArchiveError, Options, Source, Writeback};

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_nanos() as i64
}

/// How long before its read a file must have last changed (by ctime) to be trusted
/// unchanged: the kernel's dirty-page expiry plus its writeback interval (see the module
/// header), plus one second for the coarse clock. 36 s with the kernel's defaults.
pub fn racy_window_ns() -> i64 {
    let centisecs = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/vm/{name}"))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(3000)
    };
    let ms = (centisecs("dirty_expire_centisecs") + centisecs("dirty_writeback_centisecs")) * 10;
    (ms + 1000) * 1_000_000
}

/// What proves an entry unchanged between the two passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
    /// `st_mode`: type and permission bits.
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Identity {
    pub fn of(meta: &Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            nlink: meta.nlink(),
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }

    /// The same from a raw `stat` (`fstatat`, which the second pass uses so as not to
    /// open what it finds unchanged).
    pub fn of_stat(st: &libc::stat) -> Identity {
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink,
            size: st.st_size as u64,
            mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
            ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
        }
    }

    /// A regular file with several names: written again by a second pass, never reused.
    fn linked(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG && self.nlink > 1
    }
}

/// One entry as the first pass wrote it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The archive path.
    pub path: Vec<u8>,
    pub id: Identity,
    /// `[start, end)` of its header, data and padding in the first pass's tar stream.
    pub start: u64,
    pub end: u64,
    /// What restoring it allocates (`super::allocation`), counted again for the result.
    pub alloc: u64,
    /// When it was read (ns since the epoch), before its data.
    pub read_at: i64,
    /// A warning was raised while it was written (a read error, a file that shrank): its
    /// bytes are not trusted, and it is read again.
    pub flawed: bool,
    /// The length of its header blocks (its data starts at `start + header_len`).
    pub header_len: u64,
    /// A symlink's target as written (empty for anything else).
    pub link: Vec<u8>,
}

impl Record {
    /// Its entry in the final archive's index, its bytes reused at tar offset `at`. An
    /// entry is reused only when its identity is unchanged, so its type, mode, owner,
    /// size and time are the identity's; a hard-link entry is never reused.
    pub fn index_entry(&self, at: u64) -> super::index::EntryRef<'_> {
        use super::index::EntryKind;
        let kind = match self.id.mode & libc::S_IFMT {
            libc::S_IFREG => EntryKind::File,
            libc::S_IFDIR => EntryKind::Dir,
            libc::S_IFLNK => EntryKind::Symlink,
            libc::S_IFIFO => EntryKind::Fifo,
            libc::S_IFCHR => EntryKind::CharDevice,
            libc::S_IFBLK => EntryKind::BlockDevice,
            _ => EntryKind::Other,
        };
        super::index::Entry {
            path: &self.path,
            kind,
            size: if kind == EntryKind::File {
                self.id.size
            } else {
                0
            },
            mode: self.id.mode & 0o7777,
            uid: self.id.uid as u64,
            gid: self.id.gid as u64,
            // The header stores times before the epoch as 0.
            mtime: self.id.mtime_ns.div_euclid(1_000_000_000).max(0),
            link: (kind == EntryKind::Symlink).then_some(&self.link[..]),
            header_offset: at,
            data_offset: at + self.header_len,
        }
    }
}

/// The first pass's records, written in walk order to a spill file as they are made:
/// memory does not grow with the number of entries (a million files would otherwise hold
/// ~200 MB of records), and the second pass reads them back in the same order.
#[derive(Debug)]
pub struct Recorder {
    out: io::BufWriter<File>,
    /// The source being walked (records before the first `next_source` are source 0).
    source: u32,
    started: bool,
    count: u64,
    /// The spill file's first write error: the backup fails with it.
    error: Option<io::Error>,
    /// One record's bytes, reused from record to record.
    scratch: Vec<u8>,
    /// End of the metadata entry in the tar stream (it is the stream's first entry).
    pub meta_end: u64,
}

impl Recorder {
    /// A recorder for a stream whose metadata entry ends at `meta_end`, spilling into
    /// `spill` (an empty file, read and written).
    pub fn new(meta_end: u64, spill: File) -> Recorder {
        Recorder {
            out: io::BufWriter::with_capacity(1 << 20, spill),
            source: 0,
            started: false,
            count: 0,
            error: None,
            scratch: Vec::with_capacity(256),
            meta_end,
        }
    }

    /// The walk begins its next source.
    pub fn next_source(&mut self) {
        if self.started {
            self.source += 1;
        }
        self.started = true;
    }

    pub fn push(&mut self, r: Record) {
        self.started = true;
        if self.error.is_some() {
            return;
        }
        let b = &mut self.scratch;
        b.clear();
        b.extend_from_slice(&self.source.to_le_bytes());
        b.extend_from_slice(&(r.path.len() as u32).to_le_bytes());
        b.extend_from_slice(&r.path);
        for v in [
            r.id.dev,
            r.id.ino,
            r.id.nlink,
            r.id.size,
            r.start,
            r.end,
            r.alloc,
            r.header_len,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [r.id.mode, r.id.uid, r.id.gid] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [r.id.mtime_ns, r.id.ctime_ns, r.read_at] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.push(u8::from(r.flawed));
        b.extend_from_slice(&(r.link.len() as u32).to_le_bytes());
        b.extend_from_slice(&r.link);
        match self.out.write_all(b) {
            Ok(()) => self.count += 1,
            Err(e) => self.error = Some(e),
        }
    }

    /// Entries recorded.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records, for a second pass: the spill file flushed and rewound.
    pub fn finish(self, window_ns: i64) -> io::Result<Previous> {
        use std::io::Seek;
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.seek(io::SeekFrom::Start(0))?;
        Ok(Previous {
            records: io::BufReader::with_capacity(1 << 20, file),
            next: None,
            current: None,
            distrusted: false,
            distrust_next: false,
            window_ns,
            reused: 0,
        })
    }
}

/// The records a second pass compares against, read in walk order, with its place in
/// them.
#[derive(Debug)]
pub struct Previous {
    records: io::BufReader<File>,
    /// The next record not yet met, with its source, read ahead of its turn.
    next: Option<(u32, Record)>,
    /// The source being walked (`None` before the first).
    current: Option<u32>,
    /// The current source's records are not trusted.
    distrusted: bool,
    /// Nor will the next source's be.
    distrust_next: bool,
    /// [`racy_window_ns`].
    window_ns: i64,
    /// Entries found unchanged.
    pub reused: u64,
}

impl Previous {
    /// The walk begins its next source (the same order as the first pass's).
    pub fn next_source(&mut self) {
        self.current = Some(self.current.map_or(0, |c| c + 1));
        self.distrusted = std::mem::take(&mut self.distrust_next);
    }

    /// Will trust nothing of the next source: every entry is read again (a filesystem
    /// whose ctime cannot be relied on).
    pub fn distrust_next_source(&mut self) {
        self.distrust_next = true;
    }

    /// The next record, read from the spill file (`None` at its end; a spill file that
    /// cannot be read ends the records: everything after is read again, never trusted).
    fn peek(&mut self) -> Option<&(u32, Record)> {
        if self.next.is_none() {
            self.next = read_record(&mut self.records).ok().flatten();
        }
        self.next.as_ref()
    }

    /// The record of `name` if the entry is unchanged since it (`meta` is its `fstat`
    /// now). Records before `name` in walk order are entries deleted since: passed over.
    pub fn unchanged(&mut self, name: &[u8], id: Identity) -> Option<Record> {
        let current = self.current?;
        loop {
            let (source, r) = self.peek()?;
            let order = match source.cmp(&current) {
                Ordering::Equal => walk_order(&r.path, name),
                other => other,
            };
            match order {
                Ordering::Less => self.next = None,
                Ordering::Greater => return None,
                Ordering::Equal => {
                    let (_, r) = self.next.take().expect("peeked");
                    // A further name of a file becomes a link entry by the walk's order
                    // of names: such files are written again, never reused.
                    let trusted = !self.distrusted
                        && !r.flawed
                        && !id.linked()
                        && r.id == id
                        && r.id.ctime_ns < r.read_at - self.window_ns;
                    if !trusted {
                        return None;
                    }
                    self.reused += 1;
                    return Some(r);
                }
            }
        }
    }
}

/// Reads one record as [`Recorder::push`] wrote it; `Ok(None)` at the end of the file.
fn read_record(r: &mut impl io::Read) -> io::Result<Option<(u32, Record)>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let source = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(head[4..].try_into().expect("4 bytes")) as usize;
    let mut path = vec![0; len];
    r.read_exact(&mut path)?;
    // Eight u64s, three u32s, three i64s, the flag, the link's length.
    let mut fixed = [0u8; 8 * 8 + 3 * 4 + 3 * 8 + 1 + 4];
    r.read_exact(&mut fixed)?;
    let u64_at = |i: usize| u64::from_le_bytes(fixed[i * 8..i * 8 + 8].try_into().expect("8"));
    let u32_at =
        |i: usize| u32::from_le_bytes(fixed[64 + i * 4..68 + i * 4].try_into().expect("4"));
    let i64_at =
        |i: usize| i64::from_le_bytes(fixed[76 + i * 8..84 + i * 8].try_into().expect("8"));
    let id = Identity {
        dev: u64_at(0),
        ino: u64_at(1),
        nlink: u64_at(2),
        size: u64_at(3),
        mode: u32_at(0),
        uid: u32_at(1),
        gid: u32_at(2),
        mtime_ns: i64_at(0),
        ctime_ns: i64_at(1),
    };
    let link_len = u32::from_le_bytes(fixed[101..105].try_into().expect("4")) as usize;
    let mut link = vec![0; link_len];
    r.read_exact(&mut link)?;
    Ok(Some((
        source,
        Record {
            path,
            id,
            start: u64_at(4),
            end: u64_at(5),
            alloc: u64_at(6),
            header_len: u64_at(7),
            read_at: i64_at(2),
            flawed: fixed[100] != 0,
            link,
        },
    )))
}

/// The kind of filesystem under `path` when a second pass cannot compare on it: a network
/// filesystem (the server sets the times, with its own clock and granularity) or FUSE (the
/// times are whatever the daemon says).
fn uncomparable(path: &Path) -> Option<&'static str> {
    const NFS: i64 = 0x6969;
    const SMB: i64 = 0x517b;
    const CIFS: i64 = 0xff53_4d42;
    const SMB2: i64 = 0xfe53_4d42;
    const FUSE: i64 = 0x6573_5546;
    let fs = nix::sys::statfs::statfs(path).ok()?;
    match fs.filesystem_type().0 as i64 {
        NFS => Some("NFS"),
        SMB | CIFS | SMB2 => Some("SMB/CIFS"),
        FUSE => Some("a FUSE filesystem"),
        _ => None,
    }
}

/// The walk's order: depth first, each folder's children by name (bytes). Comparing
/// paths component by component gives it (`a/b` before `a-c`, unlike a plain byte
/// comparison).
fn walk_order(a: &[u8], b: &[u8]) -> Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

/// One stretch of the final tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// `len` bytes of the first pass's tar stream from `start`.
    First { start: u64, len: u64 },
    /// `len` bytes of the delta file from `start`.
    Delta { start: u64, len: u64 },
}

/// The second pass's sink: unchanged entries become [`Piece::First`]s; everything
/// written goes to the delta file as plain tar bytes (fast: the app is down meanwhile).
pub struct SpliceSink {
    delta: io::BufWriter<File>,
    delta_len: u64,
    pub pieces: Vec<Piece>,
    position: u64,
    /// Bytes of file data read during the pass.
    pub reread_bytes: u64,
    /// The delta file's first write error (the walk stops at it).
    pub error: Option<io::Error>,
    /// Checked at every MiB of delta: set, the walk stops.
    pub cancel: Option<super::Cancel>,
    buf: Vec<u8>,
}

impl SpliceSink {
    pub fn new(delta: File) -> SpliceSink {
        SpliceSink {
            delta: io::BufWriter::with_capacity(1 << 20, delta),
            delta_len: 0,
            pieces: Vec::new(),
            position: 0,
            reread_bytes: 0,
            error: None,
            cancel: None,
            buf: vec![0; 1 << 20],
        }
    }

    /// Appends a piece, merged with the last one when it continues it.
    fn push(&mut self, piece: Piece) {
        use Piece::*;
        let (len, merged) = match (self.pieces.last_mut(), piece) {
            (Some(First { start, len }), First { start: s, len: l }) if *start + *len == s => {
                *len += l;
                (l, true)
            }
            (Some(Delta { start, len }), Delta { start: s, len: l }) if *start + *len == s => {
                *len += l;
                (l, true)
            }
            (_, First { len, .. } | Delta { len, .. }) => (len, false),
        };
        if !merged {
            self.pieces.push(piece);
        }
        self.position += len;
    }

    fn append(&mut self, data: &[u8]) -> Result<(), Broken> {
        let mib = |n: u64| n >> 20;
        if mib(self.delta_len) != mib(self.delta_len + data.len() as u64)
            && super::cancelled(&self.cancel)
        {
            return Err(Broken);
        }
        if let Err(e) = self.delta.write_all(data) {
            self.error.get_or_insert(e);
            return Err(Broken);
        }
        let start = self.delta_len;
        self.delta_len += data.len() as u64;
        self.push(Piece::Delta {
            start,
            len: data.len() as u64,
        });
        Ok(())
    }

    /// Flushes the delta file and gives it back, with the pieces.
    pub fn finish(self) -> io::Result<(File, Vec<Piece>)> {
        let file = self.delta.into_inner().map_err(|e| e.into_error())?;
        Ok((file, self.pieces))
    }
}

impl TarSink for SpliceSink {
    fn write(&mut self, data: &[u8]) -> Result<(), Broken> {
        self.append(data)
    }

    fn copy_from(
        &mut self,
        file: &File,
        mut offset: u64,
        len: u64,
    ) -> Result<(u64, Option<io::Error>), Broken> {
        let mut left = len;
        let mut buf = std::mem::take(&mut self.buf);
        let result = loop {
            if left == 0 {
                break Ok((len, None));
            }
            let want = left.min(buf.len() as u64) as usize;
            let n = match file.read_at(&mut buf[..want], offset) {
                Ok(0) => break Ok((len - left, None)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Ok((len - left, Some(e))),
            };
            if self.append(&buf[..n]).is_err() {
                break Err(Broken);
            }
            self.reread_bytes += n as u64;
            offset += n as u64;
            left -= n as u64;
        };
        self.buf = buf;
        result
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn reuse(&mut self, start: u64, end: u64) -> Result<(), Broken> {
        self.push(Piece::First {
            start,
            len: end - start,
        });
        Ok(())
    }
}

/// What the second pass found.
#[derive(Debug)]
pub struct SecondPass {
    pub pieces: Vec<Piece>,
    /// The final tar stream's length: what the pieces add up to.
    pub tar_bytes: u64,
    /// The delta file, flushed (the caller syncs nothing: it is read back at once and
    /// removed).
    pub delta: File,
    /// Entries of the final stream, the metadata entry included.
    pub entries: u64,
    /// Per source, as [`super::Summary`] counts them.
    pub stored: Vec<u64>,
    pub mount_entries: Vec<u64>,
    pub warnings: Vec<String>,
    /// Entries and file bytes read while the app was stopped.
    pub reread_entries: u64,
    pub reread_bytes: u64,
    /// The final archive's entry index (its member table comes from the assembly).
    pub index: super::index::Builder,
}

impl SecondPass {
    /// True when the final stream is the first pass's byte for byte: every entry was met
    /// unchanged where the first pass put it and nothing else was written but the
    /// end-of-archive marker. The first pass's archive is then the final one as it is.
    pub fn unchanged(&self, first_tar_bytes: u64) -> bool {
        let end = super::tar_format::END.len() as u64;
        matches!(
            self.pieces.as_slice(),
            [Piece::First { start: 0, len }, Piece::Delta { len: e, .. }]
                if *e == end && len + end == first_tar_bytes
        )
    }
}

/// The second pass over `sources` (the app stopped), against the first pass's
/// `recorder`: writes what changed into `delta` and returns the pieces of the final
/// stream, its end marker included. An entry that changed less than `window_ns` before
/// the first pass read it is read again ([`racy_window_ns`] is the safe default).
pub fn second_pass(
    delta: File,
    recorder: Recorder,
    sources: &[Source],
    opts: &Options,
    window_ns: i64,
) -> Result<SecondPass, ArchiveError> {
    let meta_end = recorder.meta_end;
    let previous = recorder.finish(window_ns).map_err(ArchiveError::Output)?;
    let mut sink = SpliceSink::new(delta);
    sink.cancel = opts.cancel.clone();
    sink.reuse(0, meta_end).expect("a splice takes any range");
    let mut walker = Walker::new(&mut sink, super::skipped(&opts.skip_dirs));
    walker.previous = Some(previous);
    walker.index = Some(super::index::Builder::default());
    walker.entries = 1; // the metadata entry, reused
    let mut result = Ok(());
    let (mut stored, mut mount_entries) = (Vec::new(), Vec::new());
    for source in sources {
        let (before, entries_before) = (walker.stored, walker.entries);
        if let Some(kind) = uncomparable(&source.path) {
            walker.warn(format!(
                "{} is on {kind}, whose change times cannot be trusted: read again whole \
                 while the app was stopped",
                source.path.display()
            ));
            if let Some(previous) = &mut walker.previous {
                previous.distrust_next_source();
            }
        }
        result = walker.add_source(source);
        stored.push(walker.stored - before);
        mount_entries.push(walker.entries - entries_before);
        if result.is_err() || super::cancelled(&opts.cancel) {
            break;
        }
    }
    let entries = walker.entries;
    let index = walker.index.take().unwrap_or_default();
    let reused = walker.previous.as_ref().map_or(0, |p| p.reused);
    let mut warnings = std::mem::take(&mut walker.warnings);
    if walker.dropped_warnings > 0 {
        warnings.push(format!(
            "… and {} more warnings (see the log)",
            walker.dropped_warnings
        ));
    }
    if result.is_ok() {
        result = sink.write(&super::tar_format::END);
    }
    if super::cancelled(&opts.cancel) {
        return Err(ArchiveError::Cancelled);
    }
    if let Some(e) = sink.error.take() {
        return Err(ArchiveError::Output(e));
    }
    if result.is_err() {
        return Err(ArchiveError::Output(io::Error::other(
            "the second pass stopped early",
        )));
    }
    let (reread_bytes, tar_bytes) = (sink.reread_bytes, sink.position());
    let (delta, pieces) = sink.finish().map_err(ArchiveError::Output)?;
    Ok(SecondPass {
        pieces,
        tar_bytes,
        delta,
        entries,
        stored,
        mount_entries,
        warnings,
        reread_entries: entries - 1 - reused,
        reread_bytes,
        index,
    })
}

/// The first pass's archive, as the assembly reads it.
pub struct FirstArchive<'a> {
    pub path: &'a Path,
    /// Its chunk table ([`super::Summary::chunks`]).
    pub chunks: &'a [(u64, u64)],
    pub compressed_bytes: u64,
    pub tar_bytes: u64,
}

/// What [`assemble`] made.
#[derive(Debug)]
pub struct Assembled {
    /// What the pipeline wrote.
    pub written: Written,
    /// The final tar stream's length.
    pub tar_bytes: u64,
    /// Of it, the bytes passed on as the first pass's members, not compressed again.
    pub reused_tar_bytes: u64,
    /// The output, written but not synced.
    pub file: File,
}

/// Writes the final archive into `out` from the pieces of the first pass's archive and
/// of the delta file: a copy, for filesystems where [`super::in_place::assemble`] cannot
/// move extents.
pub fn assemble(
    out: File,
    first: &FirstArchive<'_>,
    delta: &File,
    pieces: &[Piece],
    opts: &Options,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Assembled, ArchiveError> {
    let first_file = File::open(first.path).map_err(|source| ArchiveError::Read {
        path: first.path.to_path_buf(),
        source,
    })?;
    let out = Writeback {
        file: out,
        written: 0,
        started: 0,
    };
    let gz = ParallelGzip::with_members(
        out,
        opts.level,
        opts.threads,
        opts.chunk_size,
        None,
        opts.hash_tar,
    );
    let mut sink = ChunkSink::new(gz, progress);
    sink.cancel = opts.cancel.clone();
    let mut table = first.chunks.to_vec();
    table.push((first.compressed_bytes, first.tar_bytes));
    let mut read_error = None;
    let started = std::time::Instant::now();
    let result = splice(
        &mut sink,
        &first_file,
        &table,
        delta,
        pieces,
        &mut read_error,
    );
    let tar_bytes = sink.bytes;
    let reused = sink.reused;
    let (written, Writeback { file, .. }) = sink.finish().map_err(ArchiveError::Output)?;
    tracing::info!(
        tar_bytes,
        reused_tar_bytes = reused,
        compressed_bytes = written.compressed_bytes,
        secs = started.elapsed().as_secs_f64(),
        "assembled the archive: {:.1} % of its tar stream compressed again",
        100.0 * (tar_bytes - reused) as f64 / tar_bytes.max(1) as f64
    );
    if let Some(e) = read_error {
        return Err(ArchiveError::Output(e));
    }
    if result.is_err() {
        return Err(super::stopped_early(&opts.cancel));
    }
    Ok(Assembled {
        written,
        tar_bytes,
        reused_tar_bytes: reused,
        file,
    })
}

/// Most tar bytes per gzip member of a first pass (its chunks stay 1 MiB): a member that
/// a change cuts is inflated and compressed again by the assembly, and the 687 scattered
/// changes of the bench's 1 GiB tree cut about a sixth of the stream's 256 KiB members
/// (192 MB compressed again, most of the assembly's time), a tenth of 64 KiB ones. The
/// archive is 0.5 % larger for it (each member starts without a dictionary).
pub const FIRST_PASS_MEMBER: usize = 64 << 10;

/// One member of a first-pass chunk: where it sits in the chunk's packed bytes, and the
/// tar bytes it holds, counted from the chunk's start.
#[derive(Debug)]
pub(super) struct Member {
    pub packed: std::ops::Range<usize>,
    pub raw: std::ops::Range<u64>,
}

/// The members of a chunk's `packed` bytes, by their `AS` lengths and their trailers'
/// sizes (nothing is inflated), which must add up to the chunk's `raw_len`.
pub(super) fn members_of(packed: &[u8], raw_len: u64) -> io::Result<Vec<Member>> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let (mut pos, mut raw, mut members) = (0, 0, Vec::new());
    while pos < packed.len() {
        let len = super::gzip::member_len(&packed[pos..])
            .filter(|&l| {
                l >= super::gzip::HEADER_LEN + super::gzip::TRAILER_LEN && pos + l <= packed.len()
            })
            .ok_or_else(|| bad("a first-pass chunk holds a member that is not appsnap's"))?;
        let isize = u32::from_le_bytes(packed[pos + len - 4..pos + len].try_into().expect("4"));
        members.push(Member {
            packed: pos..pos + len,
            raw: raw..raw + u64::from(isize),
        });
        pos += len;
        raw += u64::from(isize);
    }
    if raw != raw_len {
        return Err(bad(
            "a first-pass chunk's members hold another length than its table says",
        ));
    }
    Ok(members)
}

/// The chunk a piece cuts, read once for the pieces on either side of a change.
struct Cut {
    chunk: usize,
    packed: Vec<u8>,
    members: Vec<Member>,
    /// The last member inflated, to cut a part out of it.
    inflated: Option<(usize, Vec<u8>)>,
}

/// Feeds the pieces into `sink` (see [`assemble`]); a read error of the first archive or
/// the delta goes to `read_error` and stops it. A chunk wholly inside a piece goes on as
/// its members; of a chunk a piece cuts, the members wholly inside go on as they are, and
/// only the one or two members the cut falls in are inflated.
pub(super) fn splice<W: Write + Send + 'static>(
    sink: &mut ChunkSink<'_, W>,
    first: &File,
    table: &[(u64, u64)],
    delta: &File,
    pieces: &[Piece],
    read_error: &mut Option<io::Error>,
) -> Result<(), Broken> {
    let mut fail = |e: io::Error| {
        read_error.get_or_insert(e);
        Broken
    };
    let mut inflater = libdeflater::Decompressor::new();
    let mut whole = Vec::new();
    let mut cut: Option<Cut> = None;
    for piece in pieces {
        match *piece {
            Piece::Delta { start, len } => {
                let (n, e) = sink.copy_from(delta, start, len)?;
                if n != len {
                    return Err(fail(e.unwrap_or_else(|| {
                        io::Error::other("the delta file is shorter than its pieces")
                    })));
                }
            }
            Piece::First { start, len } => {
                let (mut pos, end) = (start, start + len);
                while pos < end {
                    let k = table.partition_point(|&(_, t)| t <= pos);
                    if k == 0 || k >= table.len() {
                        return Err(fail(io::Error::other("a piece outside the first pass")));
                    }
                    let k = k - 1;
                    let ((c0, t0), (c1, t1)) = (table[k], table[k + 1]);
                    if pos == t0 && t1 <= end {
                        whole.resize((c1 - c0) as usize, 0);
                        first.read_exact_at(&mut whole, c0).map_err(&mut fail)?;
                        sink.reuse_members(&whole, t1 - t0)?;
                        pos = t1;
                        continue;
                    }
                    if cut.as_ref().is_none_or(|c| c.chunk != k) {
                        let mut packed = vec![0; (c1 - c0) as usize];
                        first.read_exact_at(&mut packed, c0).map_err(&mut fail)?;
                        let members = members_of(&packed, t1 - t0).map_err(&mut fail)?;
                        cut = Some(Cut {
                            chunk: k,
                            packed,
                            members,
                            inflated: None,
                        });
                    }
                    let c = cut.as_mut().expect("just read");
                    let rel = pos - t0;
                    let m = c.members.partition_point(|m| m.raw.end <= rel);
                    let (packed_at, raw_at) =
                        (c.members[m].packed.clone(), c.members[m].raw.clone());
                    if rel == raw_at.start && t0 + raw_at.end <= end {
                        // Members wholly inside the piece, as they are.
                        let last = m + c.members[m..]
                            .iter()
                            .take_while(|n| t0 + n.raw.end <= end)
                            .count()
                            - 1;
                        let (from, to) = (&c.members[m], &c.members[last]);
                        sink.reuse_members(
                            &c.packed[from.packed.start..to.packed.end],
                            to.raw.end - from.raw.start,
                        )?;
                        pos = t0 + to.raw.end;
                        continue;
                    }
                    if c.inflated.as_ref().is_none_or(|(i, _)| *i != m) {
                        let mut raw = Vec::new();
                        super::read::inflate_members(&mut inflater, &c.packed[packed_at], &mut raw)
                            .map_err(&mut fail)?;
                        c.inflated = Some((m, raw));
                    }
                    let raw = &c.inflated.as_ref().expect("just inflated").1;
                    let to = end.min(t0 + raw_at.end);
                    let at = t0 + raw_at.start;
                    sink.write(&raw[(pos - at) as usize..(to - at) as usize])?;
                    pos = to;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::path::PathBuf;

    /// The tar stream of a `.tar.gz` after its first entry (the metadata entry, whose
    /// header holds the time it was written).
    fn stream_after_metadata(path: &Path, meta_end: u64) -> Vec<u8> {
        let mut tar = Vec::new();
        flate2::read::MultiGzDecoder::new(File::open(path).unwrap())
            .read_to_end(&mut tar)
            .unwrap();
        tar.split_off(meta_end as usize)
    }

    fn tree(dir: &Path) {
        for d in 0..6 {
            let sub = dir.join(format!("d{d}"));
            std::fs::create_dir_all(sub.join("deeper")).unwrap();
            for f in 0..40 {
                let body: Vec<u8> = (0..(f * 397 + d * 13) % 9000)
                    .map(|i| (i * 7 + f) as u8)
                    .collect();
                std::fs::write(sub.join(format!("f{f:02}")), body).unwrap();
            }
            std::fs::write(sub.join("deeper/x"), "x").unwrap();
        }
    }

    /// A temporary folder with [`tree`] in its `data`, the one source of a snapshot.
    fn tree_in_a_tempdir() -> (tempfile::TempDir, PathBuf, Vec<Source>) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        tree(&data);
        let sources = vec![Source {
            archive_dir: "volumes/v".into(),
            path: data.clone(),
            exclude: Vec::new(),
        }];
        (dir, data, sources)
    }

    /// A new file, read and written (the passes read back what they wrote).
    fn read_write(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap()
    }

    /// A first pass over `sources` into `out`, recording.
    fn first_pass(
        out: File,
        sources: &[Source],
        opts: &Options,
    ) -> (super::super::Summary, Recorder) {
        let ahead = super::super::read_ahead(sources, opts);
        let spill = tempfile::tempfile().unwrap();
        let (summary, _, recorder) =
            super::super::write_recording(out, b"{}", sources, opts, &|_| {}, &ahead, Some(spill))
                .unwrap();
        (summary, recorder.unwrap())
    }

    /// Every kind of change between the passes; what a live app does meanwhile.
    fn change(dir: &Path) {
        std::fs::write(dir.join("d0/f03"), "rewritten, another size").unwrap();
        // The same size, rewritten in place: only the times tell.
        let same = std::fs::read(dir.join("d1/f05")).unwrap();
        std::fs::write(dir.join("d1/f05"), vec![b'z'; same.len()]).unwrap();
        std::fs::remove_file(dir.join("d2/f10")).unwrap();
        std::fs::remove_dir_all(dir.join("d3")).unwrap();
        std::fs::create_dir(dir.join("d2/new-dir")).unwrap();
        std::fs::write(dir.join("d2/new-dir/new"), "new").unwrap();
        std::fs::write(dir.join("d4/f00b"), "between two names").unwrap();
        std::fs::rename(dir.join("d5/f01"), dir.join("d5/f99")).unwrap();
        std::fs::hard_link(dir.join("d5/f02"), dir.join("d5/f02-link")).unwrap();
        xattr::set(dir.join("d4/f07"), "user.appsnap.test", b"v").unwrap();
        std::fs::set_permissions(
            dir.join("d4/f08"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }

    /// The whole pre-copy on a real tree changed between the passes, with `opts` for the
    /// first pass: the assembled archive's tar stream is byte for byte a cold archive's of
    /// the changed tree, most of it was not read again, and most of the first pass's
    /// members were reused as they were; assembled in place, the same. With
    /// `on_bigalloc_too`, an in-place assembly on a filesystem that refuses the moves
    /// falls back untouched. Returns the tar bytes compressed again.
    fn assemble_after_changes(opts: &Options, on_bigalloc_too: bool) -> u64 {
        let (dir, data, sources) = tree_in_a_tempdir();
        let out = |name: &str| {
            let path: PathBuf = dir.path().join(name);
            (read_write(&path), path)
        };
        let (first_file, first_path) = out("first");
        let (first, recorder) = first_pass(first_file, &sources, opts);
        let meta_end = recorder.meta_end;
        change(&data);

        let (delta_file, _) = out("delta");
        let second = second_pass(delta_file, recorder, &sources, opts, 0).unwrap();
        assert!(!second.unchanged(first.tar_bytes));
        let (final_file, final_path) = out("final");
        let first_archive = FirstArchive {
            path: &first_path,
            chunks: &first.chunks,
            compressed_bytes: first.compressed_bytes,
            tar_bytes: first.tar_bytes,
        };
        // The final archive is written as a stop-mode one is (a member per chunk).
        let final_opts = Options {
            member_size: None,
            ..opts.clone()
        };
        let assembled = assemble(
            final_file,
            &first_archive,
            &second.delta,
            &second.pieces,
            &final_opts,
            &|_| {},
        )
        .unwrap();
        let tar_bytes = assembled.tar_bytes;

        let (cold_file, cold_path) = out("cold");
        let (cold, _) =
            super::super::write(cold_file, b"{}", &sources, &final_opts, &|_| {}).unwrap();
        assert_eq!(
            stream_after_metadata(&final_path, meta_end),
            stream_after_metadata(&cold_path, meta_end),
            "the assembled stream is the cold one"
        );
        assert_eq!((tar_bytes, second.entries), (cold.tar_bytes, cold.entries));
        assert_eq!(
            second.tar_bytes, tar_bytes,
            "the pass knows the final length"
        );
        assert_eq!(second.stored, cold.stored);
        assert_eq!(second.mount_entries, cold.mount_entries);
        assert_eq!(
            assembled.written.compressed_bytes,
            std::fs::metadata(&final_path).unwrap().len()
        );
        assert!(
            second.reread_entries < 20 && second.reread_entries * 10 < cold.entries,
            "{} of {} entries read again",
            second.reread_entries,
            cold.entries
        );
        // Every member of the first pass, as its bytes: most are in the final archive.
        let first_bytes = std::fs::read(&first_path).unwrap();
        let final_bytes = std::fs::read(&final_path).unwrap();
        let mut table = first.chunks.clone();
        table.push((first.compressed_bytes, first.tar_bytes));
        let members: Vec<&[u8]> = table
            .windows(2)
            .flat_map(|w| {
                let ((c0, t0), (c1, t1)) = (w[0], w[1]);
                let packed = &first_bytes[c0 as usize..c1 as usize];
                let members = members_of(packed, t1 - t0).unwrap();
                members.into_iter().map(move |m| &packed[m.packed])
            })
            .collect();
        let reused = members
            .iter()
            .filter(|m| final_bytes.windows(m.len()).any(|f| f == **m))
            .count();
        assert!(
            reused * 2 > members.len(),
            "{reused} of {} members reused as they were",
            members.len()
        );
        assert!(assembled.reused_tar_bytes * 2 > tar_bytes);

        // In place, in a copy of the first pass's file in `folder`.
        let in_place_in = |folder: &Path| {
            let path = folder.join("in-place");
            std::fs::copy(&first_path, &path).unwrap();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let done = super::super::in_place::assemble(
                &file,
                &first_archive,
                &second.delta,
                &second.pieces,
                tempfile::tempfile_in(folder).unwrap(),
                &final_opts,
                &|_| {},
            )
            .unwrap();
            (path, done)
        };
        // Here: the same stream, in an archive the parallel reader takes, whose sha256
        // and member table are what it says.
        let (in_place_path, done) = in_place_in(dir.path());
        let done = done.expect("an in-place assembly (the test's folder must be on ext4 or XFS)");
        let stream = |path: &Path| {
            let mut tar = Vec::new();
            super::super::read::open_tar_stream(path, 2)
                .unwrap()
                .read_to_end(&mut tar)
                .unwrap();
            tar
        };
        let whole = stream(&final_path);
        assert!(
            stream(&in_place_path) == whole,
            "the same tar stream in place"
        );
        assert_eq!(done.tar_bytes, tar_bytes);
        let bytes = std::fs::read(&in_place_path).unwrap();
        assert_eq!(done.written.compressed_bytes, bytes.len() as u64);
        use sha2::Digest;
        assert_eq!(
            done.written.sha256,
            <[u8; 32]>::from(sha2::Sha256::digest(&bytes))
        );
        let table = &done.written.chunks;
        assert_eq!(table[0], (0, 0));
        assert!(table.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        for &(c, t) in table {
            let mut head = vec![0; 1024.min(whole.len() - t as usize)];
            flate2::read::MultiGzDecoder::new(&bytes[c as usize..])
                .read_exact(&mut head)
                .unwrap();
            assert!(
                head == whole[t as usize..t as usize + head.len()],
                "member at {c}"
            );
        }
        assert!(done.kept_tar_bytes * 2 > tar_bytes);

        if on_bigalloc_too {
            // On an ext4 whose clusters are 64 KiB, the first move is refused (EINVAL):
            // nothing was done to the file, and the caller makes a copy instead.
            let fs = LoopExt4::bigalloc();
            let (path, refused) = in_place_in(fs.mount.path());
            assert!(refused.is_none(), "moved extents on a bigalloc ext4");
            assert!(
                std::fs::read(&path).unwrap() == first_bytes,
                "the file is untouched"
            );
        }
        tar_bytes - assembled.reused_tar_bytes
    }

    /// An ext4 with 64 KiB clusters (`bigalloc`) in a file, loop-mounted for the test's
    /// life: `fallocate` moves whole clusters only there. Needs root and loop devices.
    struct LoopExt4 {
        mount: tempfile::TempDir,
        _image: tempfile::TempDir,
    }

    impl LoopExt4 {
        fn bigalloc() -> LoopExt4 {
            let image = tempfile::tempdir().unwrap();
            let mount = tempfile::tempdir().unwrap();
            let file = image.path().join("ext4.img");
            let run = |cmd: &mut std::process::Command| {
                let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
                assert!(
                    out.status.success(),
                    "{cmd:?} (this test needs root, e2fsprogs and loop devices): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            std::fs::File::create(&file)
                .unwrap()
                .set_len(64 << 20)
                .unwrap();
            run(std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F", "-O", "bigalloc", "-C", "65536"])
                .arg(&file));
            run(std::process::Command::new("mount")
                .args(["-o", "loop"])
                .arg(&file)
                .arg(mount.path()));
            LoopExt4 {
                mount,
                _image: image,
            }
        }
    }

    impl Drop for LoopExt4 {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.mount.path())
                .status();
        }
    }

    /// The assembly is exact with a member per chunk and with several members in each;
    /// with several, it compresses less again (only the members a change cuts).
    #[test]
    fn the_assembled_archive_is_a_cold_archive_of_the_tree_at_the_stop() {
        let per_chunk = assemble_after_changes(
            &Options {
                chunk_size: 16384,
                threads: 2,
                ..Options::default()
            },
            false,
        );
        let per_member = assemble_after_changes(
            &Options {
                chunk_size: 16384,
                member_size: Some(4096),
                threads: 2,
                ..Options::default()
            },
            true,
        );
        assert!(
            per_member * 2 < per_chunk,
            "compressed again: {per_member} bytes with 4 KiB members, {per_chunk} with one \
             per 16 KiB chunk"
        );
    }

    /// Nothing changed between the passes: the second pass says so, and the first pass's
    /// stream is then the cold one (the archive it is kept as).
    #[test]
    fn an_unchanged_tree_is_the_first_pass_as_it_is() {
        let (dir, _, sources) = tree_in_a_tempdir();
        let opts = Options::default();
        let first_path = dir.path().join("first");
        let (first, recorder) = first_pass(read_write(&first_path), &sources, &opts);
        let meta_end = recorder.meta_end;
        let delta = read_write(&dir.path().join("delta"));
        let second = second_pass(delta, recorder, &sources, &opts, 0).unwrap();
        assert!(second.unchanged(first.tar_bytes), "{:?}", second.pieces);
        assert_eq!(second.reread_entries, 0);
        let cold_path = dir.path().join("cold");
        super::super::write(read_write(&cold_path), b"{}", &sources, &opts, &|_| {}).unwrap();
        assert_eq!(
            stream_after_metadata(&first_path, meta_end),
            stream_after_metadata(&cold_path, meta_end)
        );
    }

    /// A file changed within the racy window before the first pass read it is read again,
    /// even though its identity is the same (a write through a shared mapping would not
    /// have moved its ctime).
    #[test]
    fn a_racily_clean_file_is_read_again() {
        let (dir, _, sources) = tree_in_a_tempdir();
        let opts = Options::default();
        let first_file = File::create(dir.path().join("first")).unwrap();
        let (_, recorder) = first_pass(first_file, &sources, &opts);
        let total = recorder.len();
        let delta = read_write(&dir.path().join("delta"));
        let second = second_pass(delta, recorder, &sources, &opts, racy_window_ns()).unwrap();
        assert_eq!(second.reread_entries, total, "all were changed seconds ago");
    }

    #[test]
    fn the_walk_order_is_depth_first_by_name() {
        let mut paths: Vec<&[u8]> = vec![b"v/a-c", b"v/a/b", b"v/a", b"v", b"v/b", b"v/a/b/c"];
        paths.sort_by(|a, b| walk_order(a, b));
        assert_eq!(
            paths,
            [&b"v"[..], b"v/a", b"v/a/b", b"v/a/b/c", b"v/a-c", b"v/b"]
        );
    }
}
