//! The producer: walks each source (a volume's `_data`, a bind-mount source, the compose
//! project dir) and emits its tar stream into the gzip pipeline, reading file data straight
//! into the pipeline's chunk buffers.
//!
//! The walk goes by directory descriptors, never by re-resolving full paths: every child is
//! opened relative to its parent's descriptor with `O_PATH | O_NOFOLLOW` (a name from
//! `readdir` has no `/`, so nothing but the final component is resolved, and it is never
//! followed), and what it is — its `fstat`, its data, its listing, its link target — comes
//! from that descriptor. A live app that swaps a directory for a symlink to a host folder
//! between two steps gets the symlink archived as a symlink, never the host folder's files.
//! A file that changes under the walk is a warning, not a failure.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Whence, lseek};

use super::gzip::{ParallelGzip, Slot};
use super::tar_format::{EntryMeta, Kind, header_blocks, padding};

/// At most this many warnings are kept word for word; the rest are counted.
const MAX_WARNINGS: usize = 100;

/// The pipeline broke down (the output failed); the real error comes from `finish`.
/// Also what a cancelled walk returns. Every write of the walk can return it, and the walk
/// then stops at once: nothing more is worth producing.
#[derive(Debug)]
pub struct Broken;

/// The tar stream's end of the pipeline: a current chunk being filled.
///
/// Bytes go into the current slot's buffer, which is submitted as soon as it holds
/// `chunk_size` bytes: every chunk is exactly that long but the last. `progress` gets the
/// bytes of tar stream produced after each submitted chunk, and once more at `finish`.
pub struct ChunkSink<'p, W> {
    gz: ParallelGzip<W>,
    /// The slot being filled; taken from the pool only once there is something to write.
    slot: Option<Slot>,
    /// Bytes of tar stream produced so far.
    pub bytes: u64,
    /// Of them, bytes passed on as an earlier archive's members ([`Self::reuse_members`]).
    pub reused: u64,
    progress: &'p (dyn Fn(u64) + Sync),
    /// Checked at every chunk: set, the pipeline stops as if broken.
    pub cancel: Option<super::Cancel>,
}

impl<'p, W: io::Write + Send + 'static> ChunkSink<'p, W> {
    /// A sink feeding `gz`, with no cancel flag (set `cancel` to add one).
    pub fn new(gz: ParallelGzip<W>, progress: &'p (dyn Fn(u64) + Sync)) -> Self {
        ChunkSink {
            gz,
            slot: None,
            bytes: 0,
            reused: 0,
            progress,
            cancel: None,
        }
    }

    /// The slot to write into, taking a free one from the pool (blocking while all are in
    /// flight: that is what bounds memory when the disk is slower than the walk).
    fn current(&mut self) -> Result<&mut Slot, Broken> {
        if self.slot.is_none() {
            self.slot = Some(self.gz.take().ok_or(Broken)?);
        }
        Ok(self.slot.as_mut().expect("just filled"))
    }

    /// Submits the current slot once it holds a whole chunk, then reports progress. The
    /// cancel flag is checked here, once per chunk, so a cancelled walk stops within one
    /// chunk of tar stream.
    fn flush_if_full(&mut self) -> Result<(), Broken> {
        let full = self
            .slot
            .as_ref()
            .is_some_and(|s| s.raw.len() >= self.gz.chunk_size);
        if full {
            if super::cancelled(&self.cancel) {
                return Err(Broken);
            }
            let slot = self.slot.take().expect("checked");
            if !self.gz.submit(slot) {
                return Err(Broken);
            }
            (self.progress)(self.bytes);
        }
        Ok(())
    }

    /// Appends `data` to the tar stream, across as many chunks as it takes. `Err(Broken)`
    /// when the pipeline broke down or the walk was cancelled.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), Broken> {
        let chunk = self.gz.chunk_size;
        while !data.is_empty() {
            let slot = self.current()?;
            let n = (chunk - slot.raw.len()).min(data.len());
            slot.raw.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.bytes += n as u64;
            self.flush_if_full()?;
        }
        Ok(())
    }

    /// Copies up to `len` bytes of `file` from `offset` straight into chunk buffers.
    /// Returns how many bytes were copied — less than `len` when the file shrank
    /// meanwhile or a read failed (then with the error) — so the caller can pad the
    /// entry to the length its header promised.
    ///
    /// Reads with `pread` into the slot's own buffer (no copy in between); a read of 0
    /// bytes before `len` means the file shrank. `Err(Broken)` is the pipeline's, never the
    /// file's.
    fn copy_from(
        &mut self,
        file: &File,
        mut offset: u64,
        len: u64,
    ) -> Result<(u64, Option<io::Error>), Broken> {
        let chunk = self.gz.chunk_size;
        let mut left = len;
        while left > 0 {
            let slot = self.current()?;
            let start = slot.raw.len();
            let want = ((chunk - start) as u64).min(left) as usize;
            slot.raw.resize(start + want, 0);
            let read = loop {
                match file.read_at(&mut slot.raw[start..], offset) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    slot.raw.truncate(start);
                    return Ok((len - left, Some(e)));
                }
            };
            slot.raw.truncate(start + n);
            self.bytes += n as u64;
            offset += n as u64;
            left -= n as u64;
            self.flush_if_full()?;
            if n == 0 {
                break;
            }
        }
        Ok((len - left, None))
    }

    /// Writes `members`, complete gzip members of an earlier archive holding `raw_len`
    /// bytes of tar stream, as they are: the chunk being filled is submitted first,
    /// however short, so the stream stays in order.
    pub fn reuse_members(&mut self, members: &[u8], raw_len: u64) -> Result<(), Broken> {
        if super::cancelled(&self.cancel) {
            return Err(Broken);
        }
        self.cut()?;
        if !self.gz.submit_reused(members, raw_len) {
            return Err(Broken);
        }
        self.bytes += raw_len;
        self.reused += raw_len;
        (self.progress)(self.bytes);
        Ok(())
    }

    /// Ends the chunk being filled here, however short: what comes next starts a member
    /// of its own (an in-place assembly's regions each begin and end on one).
    pub fn cut(&mut self) -> Result<(), Broken> {
        if let Some(slot) = self.slot.take_if(|s| !s.raw.is_empty())
            && !self.gz.submit(slot)
        {
            return Err(Broken);
        }
        Ok(())
    }

    /// Submits the last partial chunk and waits for the pipeline to drain.
    /// Progress is reported one last time with the final count. Returns the writer's first
    /// I/O error (e.g. ENOSPC) if it had one: the cause of a `Broken` that was not a
    /// cancellation.
    pub fn finish(mut self) -> io::Result<(super::gzip::Written, W)> {
        if let Some(slot) = self.slot.take()
            && !slot.raw.is_empty()
        {
            self.gz.submit(slot);
        }
        (self.progress)(self.bytes);
        self.gz.finish()
    }
}

/// Where a walk's tar stream goes: the gzip pipeline ([`ChunkSink`]), or, for the second
/// pass of a pre-copy backup, a splice of the first pass's bytes and the changed ones
/// ([`super::precopy::SpliceSink`]). Every method's `Err(Broken)` stops the walk.
pub trait TarSink {
    /// Appends `data`.
    fn write(&mut self, data: &[u8]) -> Result<(), Broken>;
    /// Appends `n` zero bytes from a fixed buffer: `n` may be a 10 GB log that was
    /// truncated while being read, which must not become a 10 GB allocation.
    fn zeros(&mut self, mut n: u64) -> Result<(), Broken> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..k])?;
            n -= k as u64;
        }
        Ok(())
    }
    /// Appends up to `len` bytes of `file` from `offset`; returns how many, and the read
    /// error that cut them short (the caller pads the rest).
    fn copy_from(
        &mut self,
        file: &File,
        offset: u64,
        len: u64,
    ) -> Result<(u64, Option<io::Error>), Broken>;
    /// Bytes of tar stream so far.
    fn position(&self) -> u64;
    /// Appends `[start, end)` of the first pass's tar stream: an unchanged entry, not
    /// read again. Only a second pass's sink has a first pass.
    fn reuse(&mut self, start: u64, end: u64) -> Result<(), Broken> {
        let _ = (start, end);
        Err(Broken)
    }
}

impl<W: io::Write + Send + 'static> TarSink for ChunkSink<'_, W> {
    fn write(&mut self, data: &[u8]) -> Result<(), Broken> {
        ChunkSink::write(self, data)
    }
    fn copy_from(
        &mut self,
        file: &File,
        offset: u64,
        len: u64,
    ) -> Result<(u64, Option<io::Error>), Broken> {
        ChunkSink::copy_from(self, file, offset, len)
    }
    fn position(&self) -> u64 {
        self.bytes
    }
}

/// Walks sources into a [`TarSink`], keeping hard-link identities and warnings.
pub struct Walker<'s, S> {
    /// Where the tar stream goes; the caller writes the end marker to it after the last
    /// source.
    pub sink: &'s mut S,
    /// `(dev, ino)` → archive path of the first name of a multiply-linked file, per source.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Directories never to enter, by `(dev, ino)`: the backup root itself, so that an app
    /// that bind-mounts a parent of it does not back up its own backups.
    skip_dirs: Vec<(u64, u64)>,
    /// Entries written so far, the metadata entry and hard links included.
    pub entries: u64,
    /// What a restore of the files written so far allocates ([`super::allocation`]),
    /// counted as a restore's check counts it.
    pub stored: u64,
    /// The first `MAX_WARNINGS` (100) warnings word for word, for the snapshot's record.
    pub warnings: Vec<String>,
    /// Warnings beyond those: counted here, and still logged one by one.
    pub dropped_warnings: u64,
    /// First pass of a pre-copy backup: each entry's identity and place, recorded.
    pub recorder: Option<super::precopy::Recorder>,
    /// Second pass: the first pass's records; an entry found unchanged is reused.
    pub previous: Option<super::precopy::Previous>,
    /// The current source's `appsnap.exclude` patterns, and the length of its archive
    /// folder's name (the patterns match what follows it).
    exclude: Option<(crate::exclude::Exclude, usize)>,
    /// Entries left out by those patterns (a directory counts once, not its contents).
    pub excluded: u64,
    /// The archive's entry index, made as it is written (the final stream's walk only:
    /// stop mode, or a pre-copy's second pass).
    pub index: Option<super::index::Builder>,
    /// The index entry of the header written last: what `add` files into the index or
    /// the pre-copy record.
    written: Option<super::index::Entry>,
}

impl<'s, S: TarSink> Walker<'s, S> {
    /// A walker writing into `sink`; `skip_dirs` are `(dev, ino)` pairs of directories
    /// whose own entry is written but whose contents never are.
    pub fn new(sink: &'s mut S, skip_dirs: Vec<(u64, u64)>) -> Self {
        Walker {
            sink,
            links: HashMap::new(),
            skip_dirs,
            entries: 0,
            stored: 0,
            warnings: Vec::new(),
            dropped_warnings: 0,
            recorder: None,
            previous: None,
            exclude: None,
            excluded: 0,
            index: None,
            written: None,
        }
    }

    /// Logs `message` and keeps it for the snapshot, unless `MAX_WARNINGS` are kept
    /// already: then it is only counted.
    pub fn warn(&mut self, message: String) {
        tracing::warn!("{message}");
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(message);
        } else {
            self.dropped_warnings += 1;
        }
    }

    /// Adds one whole source under its archive folder (e.g. `volumes/db`), less what its
    /// `exclude` patterns leave out. A source may be a directory or a single file (a
    /// bind-mounted config file).
    ///
    /// `path` itself is opened with `O_NOFOLLOW`: a source that is a symlink is archived as
    /// the link. A source that cannot be opened is a warning, not an error: `Err` only
    /// means the pipeline broke down. Hard-link identities are forgotten first, so no link
    /// entry points into another source (the extractor refuses links across mounts).
    pub fn add_source(&mut self, source: &super::Source) -> Result<(), Broken> {
        let (prefix, path) = (source.archive_dir.as_str(), source.path.as_path());
        self.exclude = crate::exclude::Exclude::new(&source.exclude).map(|e| (e, prefix.len()));
        self.links.clear();
        if let Some(r) = &mut self.recorder {
            r.next_source();
        }
        if let Some(p) = &mut self.previous {
            p.next_source();
        }
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(path);
        match opened.and_then(|fd| Node::new(fd, path.to_path_buf())) {
            Ok(node) => self.add(&node, prefix.as_bytes().to_vec()),
            Err(e) => {
                self.warn(format!("source {} skipped: {e}", path.display()));
                Ok(())
            }
        }
    }

    /// Adds an in-memory regular file (the metadata entry): mode 0644, owner 0:0, `mtime`
    /// in seconds since the epoch.
    pub fn add_bytes(&mut self, name: &str, data: &[u8], mtime: i64) -> Result<(), Broken> {
        let meta = EntryMeta {
            mode: 0o644,
            mtime,
            size: data.len() as u64,
            ..EntryMeta::default()
        };
        self.sink.write(&header_blocks(name.as_bytes(), &meta))?;
        self.sink.write(data)?;
        self.sink.zeros(padding(data.len() as u64) as u64)?;
        self.entries += 1;
        Ok(())
    }

    /// Writes the entry for `node` under `name` and, for a directory, everything below it,
    /// depth first in name order. In a second pass, an entry found unchanged since the
    /// first is taken from the first pass's stream instead of being read again; in a
    /// first pass, each entry's identity and place are recorded for the second.
    fn add(&mut self, node: &Node, name: Vec<u8>) -> Result<(), Broken> {
        if self.reused(node, &name)? {
            // Taken from the first pass's stream as it was.
        } else if self.recorder.is_none() {
            self.entry(node, &name)?;
            if let (Some(index), Some(e)) = (&mut self.index, self.written.take()) {
                index.push(&e);
            }
        } else {
            let start = self.sink.position();
            let warned = self.warnings.len() as u64 + self.dropped_warnings;
            let read_at = super::precopy::now_ns();
            let stored = self.stored;
            let written = self.entry(node, &name)?;
            let header = self.written.take();
            if let (Some(recorder), Some(meta), Some(header)) =
                (&mut self.recorder, written, header)
            {
                let flawed = self.warnings.len() as u64 + self.dropped_warnings != warned;
                recorder.push(super::precopy::Record {
                    path: name.clone(),
                    id: super::precopy::Identity::of(&meta),
                    start,
                    end: self.sink.position(),
                    header_len: header.data_offset - header.header_offset,
                    link: header.link.unwrap_or_default(),
                    alloc: self.stored - stored,
                    read_at,
                    flawed,
                });
            }
        }
        if node.meta.is_dir() {
            return self.add_children(node, &name);
        }
        Ok(())
    }

    /// In a second pass, before opening `child` of `dir`: whether it is unchanged since
    /// the first pass read it, by one `fstatat` (no open, fstat and close), and then its
    /// first-pass bytes are reused. The app is stopped then, and most of its entries
    /// have not changed: this is most of the second pass's, and so of the downtime's,
    /// metadata walk. A folder is always opened (the walk enters it); anything the look
    /// cannot settle goes the usual way, which asks again.
    fn reused_unopened(&mut self, dir: &Node, name: &[u8], child: &OsStr) -> Result<bool, Broken> {
        let Some(previous) = &mut self.previous else {
            return Ok(false);
        };
        let flags = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        let Ok(st) = nix::sys::stat::fstatat(&dir.fd, child, flags) else {
            return Ok(false);
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Ok(false);
        }
        let Some(record) = previous.unchanged(name, super::precopy::Identity::of_stat(&st)) else {
            return Ok(false);
        };
        self.reuse(&record)?;
        Ok(true)
    }

    /// Takes an unchanged entry's bytes from the first pass's stream, as they were.
    fn reuse(&mut self, record: &super::precopy::Record) -> Result<(), Broken> {
        let at = self.sink.position();
        self.sink.reuse(record.start, record.end)?;
        self.entries += 1;
        self.stored += record.alloc;
        if let Some(index) = &mut self.index {
            index.push(&record.index_entry(at));
        }
        Ok(())
    }

    /// In a second pass: whether `node` is unchanged since the first pass read it, and
    /// then its first-pass bytes are reused (its header and data, not read again).
    fn reused(&mut self, node: &Node, name: &[u8]) -> Result<bool, Broken> {
        let Some(previous) = &mut self.previous else {
            return Ok(false);
        };
        let Some(record) = previous.unchanged(name, super::precopy::Identity::of(&node.meta))
        else {
            return Ok(false);
        };
        self.reuse(&record)?;
        Ok(true)
    }

    /// Writes the entry for `node` alone (a directory's children are `add`'s). Returns
    /// the metadata of what was written (a file's as it was opened), or `None` when
    /// nothing was (a socket, a link that could not be read, a file that could not be
    /// opened: each a warning). Xattrs are kept for directories and regular files only.
    /// A further name of a multiply-linked file already archived in this source becomes a
    /// hard-link entry without data.
    fn entry(&mut self, node: &Node, name: &[u8]) -> Result<Option<Metadata>, Broken> {
        let (path, meta) = (node.path.as_path(), &node.meta);
        let ft = meta.file_type();
        let mut entry = EntryMeta {
            mode: meta.mode() & 0o7777,
            uid: meta.uid() as u64,
            gid: meta.gid() as u64,
            mtime: meta.mtime(),
            ..EntryMeta::default()
        };
        if ft.is_socket() {
            self.warn(format!(
                "{} skipped: a socket cannot be archived (the app recreates it)",
                path.display()
            ));
            return Ok(None);
        }
        if ft.is_dir() {
            entry.kind = Kind::Dir;
            entry.xattrs = match node.reopen(libc::O_DIRECTORY) {
                Ok(dir) => xattrs_of(&dir),
                Err(_) => Vec::new(),
            };
        } else if ft.is_symlink() {
            entry.kind = Kind::Symlink;
            match node.read_link() {
                Ok(target) => entry.link = target,
                Err(e) => {
                    self.warn(format!("{} skipped: {e}", path.display()));
                    return Ok(None);
                }
            }
        } else if ft.is_fifo() {
            entry.kind = Kind::Fifo;
        } else if ft.is_char_device() || ft.is_block_device() {
            entry.kind = if ft.is_char_device() {
                Kind::CharDevice
            } else {
                Kind::BlockDevice
            };
            let rdev = meta.rdev();
            entry.device = (libc::major(rdev), libc::minor(rdev));
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    entry.kind = Kind::HardLink;
                    entry.link = first.clone();
                    entry.xattrs.clear();
                    self.header(name, &entry)?;
                    self.entries += 1;
                    return Ok(Some(meta.clone()));
                }
                // Only a name that really is in the archive may be a link target: if
                // this one could not be read, the next name of the same file is stored
                // as the file itself.
                let written = self.add_file(node, name, entry)?;
                if written.is_some() {
                    self.links.insert(key, name.to_vec());
                }
                return Ok(written);
            }
            return self.add_file(node, name, entry);
        }
        self.header(name, &entry)?;
        self.entries += 1;
        Ok(Some(meta.clone()))
    }

    /// Writes the header blocks of the entry `name`, and keeps its index entry for `add`.
    fn header(&mut self, name: &[u8], entry: &EntryMeta) -> Result<(), Broken> {
        let header_offset = self.sink.position();
        self.sink.write(&header_blocks(name, entry))?;
        if self.index.is_some() || self.recorder.is_some() {
            self.written = Some(super::index::Entry::written(
                name,
                entry,
                header_offset,
                self.sink.position(),
            ));
        }
        Ok(())
    }

    /// The entries below the directory `dir`, already written as `name`. The backup root
    /// is not entered; a directory that cannot be listed keeps its own entry, empty. Both
    /// are warnings.
    fn add_children(&mut self, dir: &Node, name: &[u8]) -> Result<(), Broken> {
        let meta = &dir.meta;
        if self.skip_dirs.contains(&(meta.dev(), meta.ino())) {
            self.warn(format!(
                "{} not entered: it is appsnap's backup root",
                dir.path.display()
            ));
            return Ok(());
        }
        let children = match dir.sorted_children() {
            Ok(children) => children,
            Err(e) => {
                self.warn(format!("{}: cannot list: {e}", dir.path.display()));
                return Ok(());
            }
        };
        for child in children {
            self.add_child(dir, name, &child)?;
        }
        Ok(())
    }

    /// Adds the child `child` of `dir`, whose archive name is `name`.
    /// A child that vanished since the listing, or cannot be opened, is a warning.
    /// Left out by the source's `exclude` patterns: not even opened.
    fn add_child(&mut self, dir: &Node, name: &[u8], child: &OsStr) -> Result<(), Broken> {
        let child_name = child_name(name, child);
        if let Some((exclude, prefix)) = &self.exclude
            && exclude.matches(&child_name[prefix + 1..])
        {
            self.excluded += 1;
            return Ok(());
        }
        if self.reused_unopened(dir, &child_name, child)? {
            return Ok(());
        }
        let path = dir.path.join(child);
        match dir.child(child).and_then(|fd| Node::new(fd, path.clone())) {
            Ok(node) => self.add(&node, child_name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.warn(format!("{} vanished during the backup", path.display()));
                Ok(())
            }
            Err(e) => {
                self.warn(format!("{} skipped: {e}", path.display()));
                Ok(())
            }
        }
    }

    /// Adds a regular file; returns its `fstat` as opened, or `None` when it could not be
    /// archived (a warning says why).
    ///
    /// Size, holes and type are taken from `fstat` of the opened file, not the walk's
    /// earlier look: the header announces what the file held when opened, and exactly that
    /// many bytes follow it (see `copy_entry_data`). A file that cannot be reopened, or
    /// is no longer a regular file, is skipped.
    fn add_file(
        &mut self,
        node: &Node,
        name: &[u8],
        mut entry: EntryMeta,
    ) -> Result<Option<Metadata>, Broken> {
        let path = node.path.as_path();
        let file = match node.open_for_reading() {
            Ok(f) => f,
            Err(e) => {
                self.warn(format!("{} skipped: {e}", path.display()));
                return Ok(None);
            }
        };
        entry.xattrs = xattrs_of(&file);
        // Sizes come from the open file: it may have grown or shrunk since the fstat.
        let meta = match file.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                self.warn(format!("{} changed type during the backup", path.display()));
                return Ok(None);
            }
            Err(e) => {
                self.warn(format!("{} skipped: {e}", path.display()));
                return Ok(None);
            }
        };
        let size = meta.len();
        let segments = data_segments(&file, &meta);
        entry.size = match &segments {
            Some(segs) => segs.iter().map(|s| s.1).sum(),
            None => size,
        };
        if let Some(segs) = segments {
            entry.sparse = Some((size, segs));
        }
        entry.kind = Kind::File;
        self.header(name, &entry)?;
        self.entries += 1;
        self.stored += super::allocation(
            entry.size,
            entry.sparse.as_ref().map(|(_, segs)| segs.as_slice()),
        );
        let ranges = match &entry.sparse {
            Some((_, segs)) => segs.clone(),
            None => vec![(0, size)],
        };
        self.copy_entry_data(path, &file, &ranges)?;
        self.sink.zeros(padding(entry.size) as u64)?;
        Ok(Some(meta))
    }

    /// Copies the `ranges` of `file` that a header just announced. Whatever happens to
    /// the file meanwhile, exactly the announced bytes are written, so the entries that
    /// follow stay aligned: a shrunk end or an unreadable range is stored as zeros (in
    /// bounded chunks) and becomes a warning on the snapshot.
    fn copy_entry_data(
        &mut self,
        path: &Path,
        file: &File,
        ranges: &[(u64, u64)],
    ) -> Result<(), Broken> {
        let mut shrank = false;
        for &(offset, len) in ranges {
            let (copied, error) = self.sink.copy_from(file, offset, len)?;
            if copied == len {
                continue;
            }
            self.sink.zeros(len - copied)?;
            match error {
                Some(e) => self.warn(format!(
                    "{}: read error at byte {}, the rest of that range is stored as zeros: {e}",
                    path.display(),
                    offset + copied
                )),
                None => shrank = true,
            }
        }
        if shrank {
            self.warn(format!(
                "{} shrank while being read; the missing end is stored as zeros",
                path.display()
            ));
        }
        Ok(())
    }
}

/// Extended attributes, read through an open descriptor. Symlinks, FIFOs and devices are
/// not opened for this (opening a FIFO blocks, a device may act): theirs are not kept.
/// Sorted by name, so unchanged attributes give the same archive bytes; a value that
/// cannot be read (it vanished meanwhile) is left out.
fn xattrs_of(file: &File) -> Vec<(Vec<u8>, Vec<u8>)> {
    use xattr::FileExt;
    let names = match file.list_xattr() {
        Ok(names) => names,
        // Filesystems without xattr support answer ENOTSUP: nothing to keep.
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    for key in names {
        if let Ok(Some(value)) = file.get_xattr(&key) {
            out.push((key.as_bytes().to_vec(), value));
        }
    }
    out.sort();
    out
}

/// One object of the walk: an `O_PATH | O_NOFOLLOW` descriptor (opened beneath its
/// parent's, never following a link), its `fstat`, and its path — for messages only,
/// never reopened. Everything done to it goes through the descriptor (the read-ahead,
/// `super::prefetch`, walks the same way).
pub(super) struct Node {
    fd: File,
    pub(super) meta: Metadata,
    pub(super) path: PathBuf,
}

impl Node {
    /// Takes `fd`, an `O_PATH | O_NOFOLLOW` descriptor, and `fstat`s it: the metadata is
    /// that of the object itself, a link's own when it is a symlink.
    pub(super) fn new(fd: File, path: PathBuf) -> io::Result<Node> {
        let meta = fd.metadata()?;
        Ok(Node { fd, meta, path })
    }

    /// `/proc/self/fd/N`: opening it reopens *this* object, whatever its path is now.
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The object behind `fd` opened again for reading (`O_RDONLY | flags`), through
    /// `/proc/self/fd` ([`proc_fds`]): an `O_PATH` descriptor cannot be read or listed, and
    /// reopening by path could reach whatever has taken that name since.
    fn reopen(&self, flags: i32) -> io::Result<File> {
        let fds = proc_fds().ok_or_else(|| io::Error::other("cannot open /proc/self/fd"))?;
        let name = std::ffi::CString::new(self.fd.as_raw_fd().to_string())?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name; the returned
        // descriptor is owned by the File.
        let fd = unsafe {
            libc::openat(
                fds.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC | flags,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// A regular file opened for reading. O_NOATIME keeps a backup from touching every
    /// file's atime; it needs ownership or CAP_FOWNER, so fall back without it.
    pub(super) fn open_for_reading(&self) -> io::Result<File> {
        match self.reopen(libc::O_NONBLOCK | libc::O_NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => self.reopen(libc::O_NONBLOCK),
            other => other,
        }
    }

    /// This directory's entries, sorted by name: the archive's order. Listed through the
    /// descriptor, so it is the very directory that was opened.
    /// Sorted by raw bytes, not locale, so the same tree always gives the same order.
    /// Entries that fail to be read during the listing are left out.
    pub(super) fn sorted_children(&self) -> io::Result<Vec<std::ffi::OsString>> {
        let mut children: Vec<_> = fs::read_dir(self.proc_path())?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        children.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(children)
    }

    /// A child of this directory, as an `O_PATH | O_NOFOLLOW` descriptor.
    /// `name` is one component from the listing; `NotFound` when it vanished since.
    pub(super) fn child(&self, name: &OsStr) -> io::Result<File> {
        let c_name = std::ffi::CString::new(name.as_bytes())?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name; the returned
        // descriptor is owned by the File.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c_name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// The target of this symlink (`readlinkat` on its own descriptor).
    /// Raw bytes; the buffer doubles until the whole target fits, whatever its length.
    fn read_link(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        loop {
            // SAFETY: an empty path with an O_PATH descriptor reads the link itself; the
            // buffer is valid for `buf.len()` bytes.
            let n = unsafe {
                libc::readlinkat(
                    self.fd.as_raw_fd(),
                    c"".as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if (n as usize) < buf.len() {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// This process's `/proc/self/fd`, opened once. Reopening a descriptor as
/// `openat(this, "N")` resolves one name, where the path `/proc/self/fd/N` resolves four
/// and follows the `self` link: on a cold backup of many small files, that path walk was
/// a tenth of the CPU (it is done twice per file, by the read-ahead and by the writer).
/// All threads share one descriptor table, so any thread may use it.
fn proc_fds() -> Option<&'static File> {
    static FDS: std::sync::OnceLock<Option<File>> = std::sync::OnceLock::new();
    FDS.get_or_init(|| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open("/proc/self/fd")
            .ok()
    })
    .as_ref()
}

/// `parent/child` as raw bytes, so that non-UTF-8 names are archived exactly.
fn child_name(parent: &[u8], child: &OsStr) -> Vec<u8> {
    let mut name = parent.to_vec();
    name.push(b'/');
    name.extend_from_slice(child.as_bytes());
    name
}

/// The data segments of a file with holes, from `SEEK_DATA`/`SEEK_HOLE`, so that a 100 MiB
/// file holding 5 bytes is read as 4 KiB. `None` when its blocks cover its length (no
/// hole: asked without a syscall), when it has no hole after all, or when the filesystem
/// cannot say. `meta` is the file's `fstat`. The writer and the read-ahead both use it,
/// so the read-ahead counts what the writer will read.
pub(super) fn data_segments(file: &File, meta: &Metadata) -> Option<Vec<(u64, u64)>> {
    use std::os::fd::AsFd;
    let size = meta.len();
    if meta.blocks() * 512 >= size {
        return None;
    }
    let fd = file.as_fd();
    let mut segments = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        let start = match lseek(fd, pos, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole remains
            Err(_) => return None,
        };
        let end = lseek(fd, start, Whence::SeekHole).ok()?.min(size as i64);
        if end > start {
            segments.push((start as u64, (end - start) as u64));
        }
        pos = end;
    }
    if segments.len() == 1 && segments[0] == (0, size) {
        return None;
    }
    Some(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::gzip::ParallelGzip;

    /// Runs `f` on a walker writing into memory; returns its warnings.
    fn walk_with(f: impl FnOnce(&mut Walker<'_, ChunkSink<'_, Vec<u8>>>)) -> Vec<String> {
        walk_to_tar(f).0
    }

    /// Runs `f`, ends the tar stream, and parses it back with the `tar` crate (as a
    /// restore would): the warnings, and each entry's name, type and data.
    #[allow(clippy::type_complexity)]
    fn walk_to_tar(
        f: impl FnOnce(&mut Walker<'_, ChunkSink<'_, Vec<u8>>>),
    ) -> (Vec<String>, Vec<(String, tar::EntryType, Vec<u8>)>) {
        use std::io::Read;
        let progress = |_| {};
        let mut sink = ChunkSink::new(ParallelGzip::new(Vec::new(), 1, 1, 4096), &progress);
        let warnings = {
            let mut walker = Walker::new(&mut sink, Vec::new());
            f(&mut walker);
            walker.warnings.clone()
        };
        sink.write(&crate::archive::tar_format::END).unwrap();
        let (_, gz) = sink.finish().unwrap();
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(&gz[..]));
        let entries = archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.expect("a well-formed tar stream");
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let kind = e.header().entry_type();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, kind, data)
            })
            .collect();
        (warnings, entries)
    }

    /// A header announcing `len` bytes, then `copy` fills them from `file`, then one
    /// more entry: the entries after a misbehaving file must still be read correctly.
    fn announced_then_next(
        w: &mut Walker<'_, ChunkSink<'_, Vec<u8>>>,
        len: u64,
        copy: impl FnOnce(&mut Walker<'_, ChunkSink<'_, Vec<u8>>>),
    ) {
        let meta = EntryMeta {
            mode: 0o644,
            size: len,
            ..EntryMeta::default()
        };
        w.sink.write(&header_blocks(b"v/file", &meta)).unwrap();
        copy(w);
        w.sink.zeros(padding(len) as u64).unwrap();
        w.add_bytes("v/next", b"still aligned", 0).unwrap();
    }

    #[test]
    fn a_file_that_shrinks_while_read_keeps_the_stream_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        fs::write(&path, vec![b'x'; 300_000]).unwrap();
        let file = File::open(&path).unwrap();
        let announced = file.metadata().unwrap().len();
        // The app truncates its log after our fstat.
        let app = fs::OpenOptions::new().write(true).open(&path).unwrap();
        app.set_len(1000).unwrap();
        let (warnings, entries) = walk_to_tar(|w| {
            announced_then_next(w, announced, |w| {
                w.copy_entry_data(&path, &file, &[(0, announced)]).unwrap()
            })
        });
        assert_eq!(entries.len(), 2, "{warnings:?}");
        let data = &entries[0].2;
        assert_eq!(data.len() as u64, announced);
        assert!(data[..1000].iter().all(|&b| b == b'x'));
        assert!(data[1000..].iter().all(|&b| b == 0));
        assert_eq!(entries[1].0, "v/next");
        assert_eq!(entries[1].2, b"still aligned");
        assert!(warnings[0].contains("shrank"), "{warnings:?}");
    }

    /// A real read error in the middle of a range: `/proc/self/mem` read across a page
    /// that is mapped, then one that is not, gives 4096 bytes and then EIO.
    #[test]
    fn a_read_error_mid_file_pads_only_what_is_missing() {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};
        use std::num::NonZeroUsize;
        let page = 4096usize;
        // SAFETY: a fresh anonymous mapping that nothing else uses; the second page is
        // unmapped so that reading it through /proc/self/mem fails.
        let base = unsafe {
            let p = mmap_anonymous(
                None,
                NonZeroUsize::new(2 * page).unwrap(),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
            .unwrap();
            std::ptr::write_bytes(p.as_ptr() as *mut u8, b'm', page);
            munmap(p.byte_add(page), page).unwrap();
            p
        };
        let mem = File::open("/proc/self/mem").unwrap();
        let addr = base.as_ptr() as u64;
        let len = 3 * page as u64;
        let (warnings, entries) = walk_to_tar(|w| {
            announced_then_next(w, len, |w| {
                w.copy_entry_data(Path::new("/proc/self/mem"), &mem, &[(addr, len)])
                    .unwrap()
            })
        });
        // SAFETY: the first page is still ours.
        unsafe { munmap(base, page).unwrap() };
        assert_eq!(entries.len(), 2, "{warnings:?}");
        let data = &entries[0].2;
        assert_eq!(data.len() as u64, len);
        assert!(data[..page].iter().all(|&b| b == b'm'));
        assert!(data[page..].iter().all(|&b| b == 0));
        assert_eq!(entries[1].2, b"still aligned");
        assert!(warnings[0].contains("read error at byte"), "{warnings:?}");
    }

    #[test]
    fn a_vanished_hard_link_target_leaves_the_next_name_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, "shared inode").unwrap();
        fs::hard_link(&a, &b).unwrap();
        let parent = node(dir.path());
        // Both names were listed; then the app removes `a`.
        fs::remove_file(&a).unwrap();
        let (warnings, entries) = walk_to_tar(|w| {
            w.add_child(&parent, b"v", OsStr::new("a")).unwrap();
            w.add_child(&parent, b"v", OsStr::new("b")).unwrap();
        });
        assert!(warnings[0].contains("vanished"), "{warnings:?}");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, "v/b");
        assert_eq!(entries[0].1, tar::EntryType::Regular);
        assert_eq!(entries[0].2, b"shared inode");
    }

    /// The directory `dir` as the walk holds it.
    fn node(dir: &Path) -> Node {
        let fd = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(dir)
            .unwrap();
        Node::new(fd, dir.to_path_buf()).unwrap()
    }

    #[test]
    fn a_file_that_vanishes_between_readdir_and_open_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("session.tmp"), "short-lived").unwrap();
        let parent = node(dir.path());
        fs::remove_file(dir.path().join("session.tmp")).unwrap(); // listed, then gone
        let warnings = walk_with(|w| {
            w.add_child(&parent, b"v", OsStr::new("session.tmp"))
                .unwrap()
        });
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("vanished"), "{warnings:?}");
    }

    #[test]
    fn a_missing_source_is_a_warning() {
        let warnings = walk_with(|w| {
            w.add_source(&crate::model::Source {
                archive_dir: "volumes/x".into(),
                path: "/nonexistent/appsnap".into(),
                exclude: Vec::new(),
            })
            .unwrap()
        });
        assert!(
            warnings[0].contains("source /nonexistent/appsnap skipped"),
            "{warnings:?}"
        );
    }

    /// The attack of a live app: the directory being walked is swapped for a symlink to a
    /// host folder. The walk holds the directory's descriptor, so it archives the
    /// directory it opened (or the link, as a link) — never the host folder's files.
    #[test]
    fn a_directory_swapped_for_a_symlink_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let host = root.path().join("host");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("shadow"), "host secret").unwrap();
        let vol = root.path().join("vol");
        fs::create_dir_all(vol.join("d")).unwrap();
        fs::write(vol.join("d/own"), "app data").unwrap();
        let parent = node(&vol);
        let d = node(&vol.join("d"));
        // Swap: `d` becomes a symlink to the host folder after it was opened.
        fs::rename(vol.join("d"), root.path().join("old-d")).unwrap();
        std::os::unix::fs::symlink(&host, vol.join("d")).unwrap();
        let (_, entries) = walk_to_tar(|w| {
            w.add_children(&d, b"v/d").unwrap(); // the opened directory
            w.add_child(&parent, b"v", OsStr::new("d")).unwrap(); // the new name
        });
        let names: Vec<_> = entries.iter().map(|e| (e.0.as_str(), e.1)).collect();
        assert_eq!(
            names,
            [
                ("v/d/own", tar::EntryType::Regular),
                ("v/d", tar::EntryType::Symlink)
            ]
        );
        assert!(entries.iter().all(|e| e.2 != b"host secret"));
    }

    #[test]
    fn holes_are_found_without_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("sparse")).unwrap();
        f.set_len(100 << 20).unwrap();
        f.write_at(b"hello", 50 << 20).unwrap();
        let segs = data_segments(&f, &f.metadata().unwrap()).unwrap();
        assert_eq!(segs.len(), 1);
        let (off, len) = segs[0];
        assert!(
            off <= 50 << 20 && off + len >= (50 << 20) + 5 && len <= 1 << 20,
            "{segs:?}"
        );
    }
}
