//! The snapshot archive: a standard `.tar.gz` that `tar -xzf` opens anywhere.
//!
//! Layout: a first entry `appsnap.json` (the snapshot's own metadata, so the catalog can be
//! rebuilt from the archives alone), then one folder per source: `volumes/<name>/…`,
//! `binds/<escaped host path>/…`, `project/…` (see [`crate::docker`]).
//!
//! - [`gzip`]: parallel, independent gzip members; stores incompressible blocks.
//! - [`tar_format`]: header encoding (GNU long names, PAX xattrs, GNU sparse).
//! - [`tar_read`]: the bounded reader of those headers (nothing claimed is believed).
//! - [`walk`]: the filesystem walk that feeds the tar stream into the gzip pipeline.
//! - [`precopy`]: a backup of a running app made consistent by a short second pass.
//! - [`in_place`]: its final archive made in the first pass's file, only the gaps rewritten.
//! - [`read`]: the way back: members inflated in parallel into one tar stream.
//! - [`extract`]: safe extraction into mounts (restore) and its dry run (verify).
//! - [`index`]: where each entry and gzip member sits (browsing without inflating).
//! - [`subtree`]: one folder of an archive as a tar stream of its own (a folder download).

mod digest;
pub mod extract;
pub mod gzip;
pub mod in_place;
pub mod index;
pub mod precopy;
pub mod prefetch;
pub mod read;
pub mod subtree;
pub mod tar_format;
pub mod tar_read;
pub mod walk;

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use crate::model::Source;
pub use digest::{hex, sha256_file};

/// Name of the metadata entry, always the archive's first.
pub const METADATA_ENTRY: &str = "appsnap.json";
/// A metadata entry larger than this (16 MiB) is not ours; checked before its buffer is
/// allocated.
const METADATA_MAX: u64 = 16 << 20;

/// Errors of writing and reading archives.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Writing the archive failed (disk full, I/O error).
    #[error("cannot write the archive: {0}")]
    Output(#[source] io::Error),
    /// Reading an existing archive failed.
    #[error("cannot read archive {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The archive's compressed or tar structure is broken (truncated, corrupted).
    #[error("corrupt archive: {0}")]
    Corrupt(#[source] io::Error),
    /// An entry would write outside its mount or is otherwise unsafe to extract.
    /// `entry` is the name as stored (lossy UTF-8), `reason` the rule it breaks.
    #[error("unsafe entry `{entry}`: {reason}")]
    Unsafe { entry: String, reason: String },
    /// Writing a restored file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The work was stopped (appsnap is shutting down, or its client left).
    #[error("stopped: appsnap is shutting down or the request was abandoned")]
    Cancelled,
    /// The archive's checksum differs from the one recorded at backup time.
    #[error("checksum mismatch: recorded {recorded}, file has {actual}")]
    Checksum { recorded: String, actual: String },
    /// The archive is readable but is not an appsnap snapshot.
    #[error("{path} is not an appsnap snapshot: {reason}")]
    NotASnapshot { path: PathBuf, reason: String },
}

impl ArchiveError {
    /// True when the cause is a full disk or an exhausted quota (HTTP 507).
    pub fn is_no_space(&self) -> bool {
        match self {
            ArchiveError::Output(e) | ArchiveError::Write { source: e, .. } => is_no_space(e),
            _ => false,
        }
    }

    /// For `map_err`: a malformed tar or gzip stream (a bad archive, not a failed disk).
    pub(crate) fn corrupt(e: io::Error) -> ArchiveError {
        ArchiveError::Corrupt(e)
    }

    /// True when the archive itself is bad (as opposed to the disk we write to).
    pub fn is_bad_archive(&self) -> bool {
        matches!(
            self,
            ArchiveError::Corrupt(_)
                | ArchiveError::Unsafe { .. }
                | ArchiveError::Checksum { .. }
                | ArchiveError::NotASnapshot { .. }
        )
    }
}

/// True for `ENOSPC` and `EDQUOT`: the disk or the quota is full, which callers report as
/// out of space rather than as a server fault.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// How to compress.
#[derive(Debug, Clone)]
pub struct Options {
    /// libdeflate level 0–12 (see `Config::compression_level` for the trade-off).
    pub level: u32,
    /// Compression threads (default: every core).
    pub threads: usize,
    /// Bytes of tar stream per unit of parallel work.
    pub chunk_size: usize,
    /// Most bytes of tar stream in one gzip member (`None`: a member per chunk, or per run
    /// of like blocks in it). See [`precopy::FIRST_PASS_MEMBER`].
    pub member_size: Option<usize>,
    /// Whether to hash the tar stream as it is written (`Summary::tar_sha256`). Only an
    /// offsite copy needs that hash, and a snapshot without it is inflated and hashed once
    /// before its first copy; hashing every byte twice (the stream and the file) was a
    /// tenth of a backup's CPU on 2 cores. The manager asks for it when a repository is
    /// configured.
    pub hash_tar: bool,
    /// Directories never entered (the backup root).
    pub skip_dirs: Vec<PathBuf>,
    /// Set from outside to stop the work at the next chunk.
    pub cancel: Option<Cancel>,
}

/// A flag that long archive work checks, so that a shutdown, a job's cancel and an
/// abandoned request stop it within a chunk instead of running to the end.
pub type Cancel = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// Who may stop work: a set of cancel flags that one call sets, and that sets every flag
/// given to it later at once. The shutdown holds one (every flag of the process), and each
/// job one (the flags of its own work). A flag is one piece of work's, not the job's: an
/// abandoned request sets its own flag when it ends (`SetOnDrop`), which must not stop
/// the job's next piece.
#[derive(Default)]
pub struct Cancels {
    set: std::sync::atomic::AtomicBool,
    flags: std::sync::Mutex<Vec<std::sync::Weak<std::sync::atomic::AtomicBool>>>,
}

impl Cancels {
    /// Puts `flag` in the set; it is set at once when the set already is.
    pub fn adopt(&self, flag: &Cancel) {
        use std::sync::atomic::Ordering;
        let mut flags = self.flags.lock().expect("cancels lock");
        flags.retain(|w| w.strong_count() > 0);
        flags.push(std::sync::Arc::downgrade(flag));
        if self.set.load(Ordering::SeqCst) {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Sets every flag alive in the set, and every one adopted later.
    pub fn set_all(&self) {
        use std::sync::atomic::Ordering;
        let flags = self.flags.lock().expect("cancels lock");
        self.set.store(true, Ordering::SeqCst);
        for flag in flags.iter().filter_map(std::sync::Weak::upgrade) {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Whether [`Self::set_all`] was called.
    pub fn is_set(&self) -> bool {
        self.set.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// True once the flag is set; `None` never cancels. A relaxed load is enough: the flag
/// guards no data, and seeing it one check late only delays the stop by a chunk.
pub fn cancelled(cancel: &Option<Cancel>) -> bool {
    cancel
        .as_ref()
        .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
}

/// Why a pipeline that returned `Broken` stopped, once its writer's own error (if any) was
/// taken from `finish`: the cancel, or an early stop with no more to say.
fn stopped_early(cancel: &Option<Cancel>) -> ArchiveError {
    if cancelled(cancel) {
        return ArchiveError::Cancelled;
    }
    ArchiveError::Output(io::Error::other("the archive pipeline stopped early"))
}

impl Default for Options {
    fn default() -> Self {
        Options {
            level: 3,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            chunk_size: 1 << 20,
            member_size: None,
            hash_tar: true,
            skip_dirs: Vec::new(),
            cancel: None,
        }
    }
}

/// What writing an archive produced.
#[derive(Debug, Clone)]
pub struct Summary {
    /// sha256 of the archive file as written (hex), hashed on the way to the disk.
    pub sha256: String,
    /// sha256 of the uncompressed tar stream; `None` for a pre-copy's final archive, whose
    /// reused members were never inflated (computed before its first offsite copy).
    pub tar_sha256: Option<String>,
    /// Size of the archive file.
    pub compressed_bytes: u64,
    /// Length of the tar stream, end-of-archive marker included.
    pub tar_bytes: u64,
    /// Entries written, the metadata entry included.
    pub entries: u64,
    /// What a restore of each source's files allocates ([`allocation`]), in `sources`
    /// order, as a verify counts it.
    pub stored: Vec<u64>,
    /// Entries written per source, in `sources` order (0: nothing could be read).
    pub mount_entries: Vec<u64>,
    /// `(compressed offset, tar offset)` where each chunk's gzip members begin.
    pub chunks: Vec<(u64, u64)>,
    /// What the walk could not archive as it found it (skipped, vanished or shrunk files,
    /// unreadable sources): the first 100 word for word, then one line counting the rest.
    pub warnings: Vec<String>,
    /// The archive's entry index, to be written once the file is in place (`None` for a
    /// pre-copy's first pass, whose file is only a source for the final one).
    pub index: Option<index::Builder>,
}

/// The filesystem block a restore's space check assumes (ext4's, and most others').
const BLOCK: u64 = 4096;

/// What restoring a regular file's data allocates, at least: every data segment (the
/// whole file when it has no holes) takes whole blocks. So a sparse map of a million
/// one-byte segments, 1 MB stored, counts as the 4 GB it would take on disk; it is never
/// believed to cost its stored bytes.
pub fn allocation(size: u64, sparse: Option<&[(u64, u64)]>) -> u64 {
    let blocks = |n: u64| n.div_ceil(BLOCK) * BLOCK;
    match sparse {
        Some(segments) => segments.iter().map(|&(_, len)| blocks(len)).sum(),
        None => blocks(size),
    }
}

/// The directories `skip_dirs` names, as `(dev, ino)`: what the walks compare.
fn skipped(skip_dirs: &[PathBuf]) -> Vec<(u64, u64)> {
    skip_dirs
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

/// Starts reading `sources` ahead of their archive ([`prefetch`]), for
/// [`write_recording`]. A backup starts it before it stops the app, so that the disk
/// already works while the containers shut down and the hooks run: reading early is
/// safe, the page cache always holds a file's latest data.
pub fn read_ahead(sources: &[Source], opts: &Options) -> prefetch::Prefetch {
    prefetch::Prefetch::start(sources.to_vec(), skipped(&opts.skip_dirs))
}

/// Writes the archive for `sources` into `out` (blocking; run it off the async runtime).
/// `progress` is called with the bytes of tar stream produced so far. The caller owns
/// fsync and rename: this only writes and flushes.
pub fn write(
    out: File,
    metadata_json: &[u8],
    sources: &[Source],
    opts: &Options,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Summary, File), ArchiveError> {
    let ahead = read_ahead(sources, opts);
    write_recording(out, metadata_json, sources, opts, progress, &ahead, None)
        .map(|(summary, file, _)| (summary, file))
}

/// [`write`], with a read-ahead of the same `sources` already started ([`read_ahead`]),
/// and recording into `record` (a spill file, see [`precopy::Recorder`]) every entry's
/// identity and place for the second pass of a pre-copy backup ([`precopy`]).
pub fn write_recording(
    out: File,
    metadata_json: &[u8],
    sources: &[Source],
    opts: &Options,
    progress: &(dyn Fn(u64) + Sync),
    prefetch: &prefetch::Prefetch,
    record: Option<File>,
) -> Result<(Summary, File, Option<precopy::Recorder>), ArchiveError> {
    let skip = skipped(&opts.skip_dirs);
    let progress = &|bytes| {
        prefetch.consumed(bytes);
        progress(bytes)
    };
    let out = Writeback {
        file: out,
        written: 0,
        started: 0,
    };
    let gz = gzip::ParallelGzip::with_members(
        out,
        opts.level,
        opts.threads,
        opts.chunk_size,
        opts.member_size,
        opts.hash_tar,
    );
    let mut sink = walk::ChunkSink::new(gz, progress);
    sink.cancel = opts.cancel.clone();
    let mut walker = walk::Walker::new(&mut sink, skip);
    let now = chrono::Utc::now().timestamp();
    let mut result = walker.add_bytes(METADATA_ENTRY, metadata_json, now);
    match record {
        Some(spill) => walker.recorder = Some(precopy::Recorder::new(walker.sink.bytes, spill)),
        None => walker.index = Some(index::Builder::default()),
    }
    let mut stored = Vec::with_capacity(sources.len());
    let mut mount_entries = Vec::with_capacity(sources.len());
    for source in sources {
        if result.is_err() {
            break;
        }
        let (before, entries_before) = (walker.stored, walker.entries);
        result = walker.add_source(source);
        stored.push(walker.stored - before);
        mount_entries.push(walker.entries - entries_before);
    }
    if walker.excluded > 0 {
        tracing::info!(
            excluded = walker.excluded,
            "entries left out by appsnap.exclude patterns (a folder counts once)"
        );
    }
    let (entries, mut warnings, dropped, recorder, index) = (
        walker.entries,
        std::mem::take(&mut walker.warnings),
        walker.dropped_warnings,
        walker.recorder.take(),
        walker.index.take(),
    );
    if result.is_ok() {
        result = sink.write(&tar_format::END);
    }
    if dropped > 0 {
        warnings.push(format!("… and {dropped} more warnings (see the log)"));
    }
    let tar_bytes = sink.bytes;
    // A broken pipeline has its cause in the writer: `finish` returns it.
    let (written, Writeback { file, .. }) = sink.finish().map_err(ArchiveError::Output)?;
    if result.is_err() {
        return Err(stopped_early(&opts.cancel));
    }
    Ok((
        Summary {
            sha256: hex(&written.sha256),
            tar_sha256: written.raw_sha256.map(|h| hex(&h)),
            compressed_bytes: written.compressed_bytes,
            tar_bytes,
            entries,
            stored,
            mount_entries,
            chunks: written.chunks,
            warnings,
            index,
        },
        file,
        recorder,
    ))
}

/// Starts writing `len` bytes of `file`'s dirty pages from `offset` (0: to the end) to the
/// disk, without waiting. With much memory the kernel would otherwise keep everything a
/// backup or restore writes dirty until its final sync, which then does all the I/O at
/// once; started early, that I/O overlaps the work.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor we own; its failure only loses the hint.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// The archive file, whose writeback starts every [`WRITEBACK_STEP`] bytes.
///
/// Also for a pre-copy's first pass, though that file is deleted within seconds: left
/// dirty, its gigabytes made the containers' stop wait (Docker's small fsyncs on the same
/// filesystem flushed them), 0.3 → 1.3 s at 4 GiB.
struct Writeback {
    file: File,
    written: u64,
    started: u64,
}

/// Bytes of archive (16 MiB) between two writeback hints.
const WRITEBACK_STEP: u64 = 16 << 20;

impl io::Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_STEP {
            start_writeback(&self.file, self.started, self.written - self.started);
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Bytes of file data `write` will read for `sources` (allocated size for sparse files),
/// from a metadata-only walk: the denominator of progress.
/// Each entry also counts 512 bytes for its header. Unreadable paths count what could be
/// seen; an estimate never fails.
pub fn estimate(sources: &[Source]) -> u64 {
    fn walk(path: &Path, rel: &mut Vec<u8>, exclude: Option<&crate::exclude::Exclude>) -> u64 {
        if !rel.is_empty() && exclude.is_some_and(|e| e.matches(rel)) {
            return 0;
        }
        let Ok(meta) = fs::symlink_metadata(path) else {
            return 0;
        };
        if meta.is_dir() {
            let Ok(rd) = fs::read_dir(path) else {
                return 512;
            };
            let mut sum = 512;
            for e in rd.flatten() {
                let len = rel.len();
                if len > 0 {
                    rel.push(b'/');
                }
                rel.extend_from_slice(e.file_name().as_bytes());
                sum += walk(&e.path(), rel, exclude);
                rel.truncate(len);
            }
            sum
        } else if meta.is_file() {
            512 + meta.len().min(meta.blocks() * 512)
        } else {
            512
        }
    }
    sources
        .iter()
        .map(|s| {
            let exclude = crate::exclude::Exclude::new(&s.exclude);
            walk(&s.path, &mut Vec::new(), exclude.as_ref())
        })
        .sum()
}

/// Reads the metadata entry of an archive (the first entry), inflating only its start.
/// Errors: `Read` when the file cannot be opened or read, `NotASnapshot` when the first
/// entry is missing, malformed, not `appsnap.json`, or larger than `METADATA_MAX`.
pub fn read_metadata(path: &Path) -> Result<Vec<u8>, ArchiveError> {
    let read_err = |source| ArchiveError::Read {
        path: path.to_path_buf(),
        source,
    };
    let not_ours = |reason: &str| ArchiveError::NotASnapshot {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let file = File::open(path).map_err(read_err)?;
    let gz = flate2::read::MultiGzDecoder::new(io::BufReader::new(file));
    // The bounded reader: extensions before the first entry are limited like anywhere.
    let mut reader = tar_read::TarReader::new(gz);
    let first = match reader.next_entry() {
        Ok(Some(entry)) => entry,
        Ok(None) => return Err(not_ours("empty archive")),
        Err(e) => return Err(not_ours(&e.to_string())),
    };
    if first.name != METADATA_ENTRY.as_bytes() {
        return Err(not_ours("first entry is not appsnap.json"));
    }
    if first.size > METADATA_MAX {
        return Err(not_ours("metadata entry too large"));
    }
    let mut data = vec![0; first.size as usize];
    let mut filled = 0;
    while filled < data.len() {
        match reader.read_data(&mut data[filled..]).map_err(read_err)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(data)
}

/// What a successful verification saw.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Entries read, the metadata entry included.
    pub entries: u64,
    pub tar_bytes: u64,
    /// What a restore of each target's files allocates ([`allocation`]), in `targets`
    /// order.
    pub stored: Vec<u64>,
    /// Entries per target, in `targets` order: a target with none is not restored (its
    /// current data is left alone, never emptied).
    pub mount_entries: Vec<u64>,
}

/// The archive file's sha256 must be `recorded`.
/// `Read` when the file cannot be read, `Checksum` when the sums differ.
pub fn check_sha256(path: &Path, recorded: &str) -> Result<(), ArchiveError> {
    let (actual, _) = sha256_file(path).map_err(|source| ArchiveError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if actual != recorded {
        return Err(ArchiveError::Checksum {
            recorded: recorded.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Checks an archive without writing anything: its sha256 against `sha256` (when given),
/// then a full read of every member and entry under the same rules as a restore.
pub fn verify(
    path: &Path,
    sha256: Option<&str>,
    targets: &[extract::Target],
    threads: usize,
    opts: &extract::Options,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Verified, ArchiveError> {
    if let Some(recorded) = sha256 {
        check_sha256(path, recorded)?;
    }
    let stream = read::open_tar_stream(path, threads).map_err(|source| ArchiveError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let opts = extract::Options {
        dry_run: true,
        ..opts.clone()
    };
    let summary = extract::extract(stream, targets, &opts, progress)?;
    Ok(Verified {
        entries: summary.entries,
        tar_bytes: summary.tar_bytes,
        stored: summary.stored,
        mount_entries: summary.mount_entries,
    })
}
