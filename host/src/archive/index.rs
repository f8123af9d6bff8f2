//! The entry index of an archive: where every entry sits, so a snapshot can be listed
//! without inflating it.
//!
//! One file beside each archive, `{snapshot_id}.index`, gzip-compressed, holding:
//! - the sha256 of the archive it describes: an index whose sha256 is not the archive's
//!   recorded one is stale or foreign and never used (it is built again);
//! - the gzip member table: for each member, its offset in the compressed file and the
//!   offset of its first byte in the tar stream (so a read of one entry inflates only the
//!   members holding it);
//! - every entry: its archive path (raw bytes), type, size, mode, owner, mtime, link
//!   target, and the tar offsets of its header and of its data; sorted by (parent folder,
//!   name), so a folder's children are one range.
//!
//! The backup's writer makes one as it writes ([`Builder`], fed by the walk with each
//! header's place). For archives that lack one (imports, fetches, older snapshots),
//! [`build`] makes one by one sequential read of the archive, through the same bounded tar
//! reader as the extractor (no size the archive claims is believed unchecked, memory is
//! bounded by the entry limit). [`Index::load`] reads one back and checks its framing: a
//! damaged index is an error, never a partial listing.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::bufread::GzDecoder;

use super::tar_read::TarReader;

/// First bytes of an index file (inside its gzip), with its format version.
const MAGIC: &[u8; 8] = b"ASINDEX1";

/// Most bytes an index inflates to (a million entries take ~110 MB).
const MAX_RAW: usize = 1 << 30;

/// Longest path or link target an index accepts (the extractor's limit is the same order).
const MAX_NAME: u32 = 64 * 1024;

/// What an entry is, as the listing shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Other,
}

impl EntryKind {
    fn of(t: tar::EntryType) -> EntryKind {
        use tar::EntryType as T;
        match t {
            T::Regular | T::Continuous | T::GNUSparse => EntryKind::File,
            T::Directory => EntryKind::Dir,
            T::Symlink => EntryKind::Symlink,
            T::Link => EntryKind::Hardlink,
            T::Fifo => EntryKind::Fifo,
            T::Char => EntryKind::CharDevice,
            T::Block => EntryKind::BlockDevice,
            _ => EntryKind::Other,
        }
    }

    /// Every kind, in the order of its code in an index file: the one place that order
    /// is written down.
    const ALL: [EntryKind; 8] = [
        EntryKind::File,
        EntryKind::Dir,
        EntryKind::Symlink,
        EntryKind::Hardlink,
        EntryKind::Fifo,
        EntryKind::CharDevice,
        EntryKind::BlockDevice,
        EntryKind::Other,
    ];

    fn code(self) -> u8 {
        Self::ALL
            .iter()
            .position(|&k| k == self)
            .expect("every kind is listed") as u8
    }

    fn from_code(c: u8) -> Option<EntryKind> {
        Self::ALL.get(c as usize).copied()
    }
}

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The archive path as stored, without a trailing `/`.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Logical size of a file (a sparse file's full length); 0 for anything else.
    pub size: u64,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// A symlink's or hard link's target, as stored.
    pub link: Option<Vec<u8>>,
    /// Where its first header block (extensions included) starts in the tar stream.
    pub header_offset: u64,
    /// Where its data starts in the tar stream.
    pub data_offset: u64,
}

impl Entry {
    /// The entry of a header the walker wrote at `header_offset` for `name`, its data
    /// starting at `data_offset`: what [`build`] reads back from that header.
    pub(super) fn written(
        name: &[u8],
        meta: &super::tar_format::EntryMeta,
        header_offset: u64,
        data_offset: u64,
    ) -> Entry {
        use super::tar_format::Kind;
        let kind = match meta.kind {
            Kind::File => EntryKind::File,
            Kind::Dir => EntryKind::Dir,
            Kind::Symlink => EntryKind::Symlink,
            Kind::HardLink => EntryKind::Hardlink,
            Kind::Fifo => EntryKind::Fifo,
            Kind::CharDevice => EntryKind::CharDevice,
            Kind::BlockDevice => EntryKind::BlockDevice,
        };
        Entry {
            path: name.to_vec(),
            kind,
            size: match (kind, &meta.sparse) {
                (EntryKind::File, Some((logical, _))) => *logical,
                (EntryKind::File, None) => meta.size,
                _ => 0,
            },
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            // The header stores times before the epoch as 0.
            mtime: meta.mtime.max(0),
            link: matches!(kind, EntryKind::Symlink | EntryKind::Hardlink)
                .then(|| meta.link.clone()),
            header_offset,
            data_offset,
        }
    }

    /// The folder holding it (empty at the top) and its own name.
    pub fn split(&self) -> (&[u8], &[u8]) {
        split(&self.path)
    }
}

/// Whether the archive path `path` is `folder` or below it (whole names only:
/// `v/upload` is not below `v/up`).
pub fn inside(path: &[u8], folder: &[u8]) -> bool {
    path.strip_prefix(folder)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

/// An archive path split at its last `/`: (parent, name).
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// An archive's entries and gzip members, bound to the archive's sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// sha256 (hex) of the archive file this index describes.
    pub sha256: String,
    /// `(compressed offset, tar offset)` of each gzip member, in order.
    pub members: Vec<(u64, u64)>,
    /// Sorted by (parent, name).
    pub entries: Vec<Entry>,
}

/// Where the index of the archive at `archive` lives.
pub fn path_for(archive: &Path) -> PathBuf {
    let name = archive.file_name().unwrap_or_default().to_string_lossy();
    let stem = name.strip_suffix(".tar.gz").unwrap_or(&name);
    archive.with_file_name(format!("{stem}.index"))
}

/// Builds the index of the archive at `path` (whose sha256 is `sha256`) by one sequential
/// read. The metadata entry (`appsnap.json`) is left out. More than `max_entries` entries,
/// or a malformed archive, is an error (`InvalidData`); nothing is written.
pub fn build(path: &Path, sha256: &str, max_entries: u64) -> io::Result<Index> {
    let file = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: File::open(path)?,
            n: 0,
        },
    );
    let mut members = Members {
        state: State::Between(file),
        table: Vec::new(),
        tar: 0,
    };
    let mut tar = TarReader::new(&mut members);
    let mut entries = Vec::new();
    let mut next_header = 0u64;
    while let Some(e) = tar.next_entry()? {
        let header_offset = next_header;
        let data_offset = tar.bytes;
        next_header = data_offset + e.size.div_ceil(512) * 512;
        let mut name = e.name;
        while name.last() == Some(&b'/') {
            name.pop();
        }
        if name == b"appsnap.json" {
            continue;
        }
        if entries.len() as u64 >= max_entries {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {max_entries} entries"),
            ));
        }
        let kind = EntryKind::of(e.kind);
        entries.push(Entry {
            size: match (kind, &e.sparse) {
                (EntryKind::File, Some((logical, _))) => *logical,
                (EntryKind::File, None) => e.size,
                _ => 0,
            },
            path: name,
            kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            link: e
                .link
                .filter(|_| matches!(kind, EntryKind::Symlink | EntryKind::Hardlink)),
            header_offset,
            data_offset,
        });
    }
    entries.sort_by(|a, b| a.split().cmp(&b.split()));
    Ok(Index {
        sha256: sha256.to_string(),
        members: members.table,
        entries,
    })
}

impl Index {
    /// The entries directly in `folder` (an archive path without a trailing `/`; empty
    /// for the top), in name order: one range of the sorted entries.
    pub fn children(&self, folder: &[u8]) -> &[Entry] {
        let start = self.entries.partition_point(|e| e.split().0 < folder);
        let end = start + self.entries[start..].partition_point(|e| e.split().0 == folder);
        &self.entries[start..end]
    }

    /// The entry at `path`, if the archive has one.
    pub fn get(&self, path: &[u8]) -> Option<&Entry> {
        let key = split(path);
        self.entries
            .binary_search_by(|e| e.split().cmp(&key))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Writes the index to `path` atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut builder = Builder::default();
        for e in &self.entries {
            builder.push(e);
        }
        builder.write(path, &self.sha256, &self.members)
    }

    /// Reads the index at `path`. A missing file is `NotFound`; one that does not parse
    /// to the end exactly is `InvalidData`. No count it holds is believed beyond the
    /// bytes that are there.
    pub fn load(path: &Path) -> io::Result<Index> {
        let packed = std::fs::read(path)?;
        // One gzip member, inflated in one call (libdeflate: several times zlib's speed,
        // most of a listing's time at 275,000 entries) into a buffer of the size its
        // trailer gives, which is believed only up to MAX_RAW.
        let claimed = match packed.len().checked_sub(4) {
            Some(at) => u32::from_le_bytes(packed[at..].try_into().expect("4 bytes")) as usize,
            None => return Err(bad("cut short")),
        };
        if claimed > MAX_RAW {
            return Err(bad("larger than an index can be"));
        }
        let mut raw = vec![0u8; claimed];
        let n = libdeflater::Decompressor::new()
            .gzip_decompress(&packed, &mut raw)
            .map_err(|e| bad(&format!("not a gzip member of its stated size: {e}")))?;
        if n != claimed {
            return Err(bad("inflates to another size than its trailer says"));
        }
        let mut r = Cursor { buf: &raw, at: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err(bad("not an appsnap index"));
        }
        let sha256 = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| bad("bad sha256"))?;
        let members_n = r.count(16)?;
        let mut members = Vec::with_capacity(members_n);
        for _ in 0..members_n {
            members.push((r.u64()?, r.u64()?));
        }
        let entries_n = r.count(4 + 1 + 40 + 1 + 4 + 16)?;
        let mut entries = Vec::with_capacity(entries_n);
        for _ in 0..entries_n {
            let path = r.bytes()?.to_vec();
            let kind = EntryKind::from_code(r.take(1)?[0]).ok_or_else(|| bad("bad entry type"))?;
            let (size, mode, uid, gid, mtime) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
            let has_link = r.take(1)?[0] != 0;
            let link = r.bytes()?.to_vec();
            entries.push(Entry {
                path,
                kind,
                size,
                mode: mode as u32,
                uid,
                gid,
                mtime: mtime as i64,
                link: has_link.then_some(link),
                header_offset: r.u64()?,
                data_offset: r.u64()?,
            });
        }
        if r.at != raw.len() {
            return Err(bad("bytes after the last entry"));
        }
        if !entries.is_sorted_by(|a, b| a.split() < b.split()) {
            return Err(bad("entries out of order"));
        }
        Ok(Index {
            sha256,
            members,
            entries,
        })
    }
}

/// An index made as the archive is written: the writer pushes each entry in the order
/// of the tar stream, and [`Builder::write`] sorts them and saves the file once the
/// archive's sha256 is known. Entries are kept in their file encoding in one buffer
/// (62 bytes and the path each), not as [`Entry`] values with two allocations each: a
/// backup of a million files holds about 100 MB here instead of 170 MB.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    encoded: Vec<u8>,
    /// Where each entry starts in `encoded`.
    starts: Vec<usize>,
}

impl Builder {
    pub fn push(&mut self, e: &Entry) {
        self.starts.push(self.encoded.len());
        let raw = &mut self.encoded;
        put_bytes(raw, &e.path);
        raw.push(e.kind.code());
        for n in [e.size, e.mode as u64, e.uid, e.gid, e.mtime as u64] {
            raw.extend_from_slice(&n.to_le_bytes());
        }
        raw.push(e.link.is_some() as u8);
        put_bytes(raw, e.link.as_deref().unwrap_or_default());
        raw.extend_from_slice(&e.header_offset.to_le_bytes());
        raw.extend_from_slice(&e.data_offset.to_le_bytes());
    }

    /// Entries pushed.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Writes the index of the archive whose sha256 is `sha256` and whose gzip members
    /// begin at `members` to `path`, atomically (temp file, fsync, rename), its entries
    /// sorted by (parent, name). A temp file cut short is `.{name}.tmp`, which the
    /// store's start-up removes.
    pub fn write(self, path: &Path, sha256: &str, members: &[(u64, u64)]) -> io::Result<()> {
        let (encoded, starts) = (&self.encoded, &self.starts);
        // Entry `i` is `encoded[starts[i]..starts[i + 1]]`, its path first.
        let bytes_of =
            |i: usize| &encoded[starts[i]..starts.get(i + 1).copied().unwrap_or(encoded.len())];
        let path_of = |i: usize| {
            let raw = bytes_of(i);
            let len = u32::from_le_bytes(raw[..4].try_into().expect("4 bytes pushed")) as usize;
            split(&raw[4..4 + len])
        };
        let mut order: Vec<usize> = (0..starts.len()).collect();
        order.sort_by(|&a, &b| path_of(a).cmp(&path_of(b)));
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp"));
        let result = (|| {
            let file = File::create(&tmp)?;
            let mut gz = flate2::write::GzEncoder::new(
                io::BufWriter::with_capacity(1 << 20, file),
                flate2::Compression::fast(),
            );
            let mut head = Vec::with_capacity(64 + members.len() * 16);
            head.extend_from_slice(MAGIC);
            put_bytes(&mut head, sha256.as_bytes());
            head.extend_from_slice(&(members.len() as u64).to_le_bytes());
            for (c, t) in members {
                head.extend_from_slice(&c.to_le_bytes());
                head.extend_from_slice(&t.to_le_bytes());
            }
            head.extend_from_slice(&(starts.len() as u64).to_le_bytes());
            gz.write_all(&head)?;
            for &i in &order {
                gz.write_all(bytes_of(i))?;
            }
            let file = gz.finish()?.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// The tar stream of `archive` from tar offset `at`: inflating starts at the gzip member
/// holding `at` (found in `members`), so bytes before that member are never read.
pub fn tar_from(archive: &Path, members: &[(u64, u64)], at: u64) -> io::Result<impl Read + use<>> {
    let i = members
        .partition_point(|&(_, tar)| tar <= at)
        .checked_sub(1)
        .ok_or_else(|| bad("no member holds the offset"))?;
    let (compressed, tar) = members[i];
    let mut file = File::open(archive)?;
    io::Seek::seek(&mut file, io::SeekFrom::Start(compressed))?;
    let mut stream = Members {
        state: State::Between(BufReader::with_capacity(
            1 << 20,
            Counting {
                inner: file,
                n: compressed,
            },
        )),
        table: Vec::new(),
        tar,
    };
    io::copy(&mut (&mut stream).take(at - tar), &mut io::sink())?;
    Ok(stream)
}

/// A regular file's content, read from its place in the archive: its header is read
/// again through the bounded tar reader and must name the indexed path (an index that
/// does not match its archive is an `InvalidData` error, never another file's bytes); a
/// sparse file's holes come back as zeros.
pub struct Content<R> {
    tar: TarReader<R>,
    /// `(offset, length)` of the stored segments, and where the logical file ends.
    segments: Vec<(u64, u64)>,
    size: u64,
    /// Logical position.
    at: u64,
}

/// Opens `entry` (a regular file) of `archive` for reading.
pub fn open_file(
    archive: &Path,
    index: &Index,
    entry: &Entry,
) -> io::Result<Content<impl Read + use<>>> {
    let stream = tar_from(archive, &index.members, entry.header_offset)?;
    let mut tar = TarReader::new(stream);
    let found = tar
        .next_entry()?
        .ok_or_else(|| bad("no entry at its offset"))?;
    let mut name = found.name;
    while name.last() == Some(&b'/') {
        name.pop();
    }
    if name != entry.path || EntryKind::of(found.kind) != EntryKind::File {
        return Err(bad("the archive holds another entry where the index says"));
    }
    let (size, segments) = match found.sparse {
        Some((logical, segments)) => (logical, segments),
        None => (found.size, vec![(0, found.size)]),
    };
    Ok(Content {
        tar,
        segments,
        size,
        at: 0,
    })
}

impl<R: Read> Read for Content<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at >= self.size || buf.is_empty() {
            return Ok(0);
        }
        // Segments are in order and do not overlap (the tar reader checked the map).
        let next = self
            .segments
            .iter()
            .find(|&&(off, len)| off + len > self.at);
        let n = match next {
            Some(&(off, _)) if off > self.at => {
                let n = (off - self.at).min(buf.len() as u64) as usize;
                buf[..n].fill(0);
                n
            }
            Some(&(off, len)) => {
                let want = (off + len - self.at).min(buf.len() as u64) as usize;
                let n = self.tar.read_data(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file cut short",
                    ));
                }
                n
            }
            None => {
                let n = (self.size - self.at).min(buf.len() as u64) as usize;
                buf[..n].fill(0);
                n
            }
        };
        self.at += n as u64;
        Ok(n)
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("index: {msg}"))
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A bounds-checked reader over the inflated index.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| bad("cut short"))?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn bytes(&mut self) -> io::Result<&'a [u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
        if n > MAX_NAME {
            return Err(bad("a name longer than allowed"));
        }
        self.take(n as usize)
    }

    /// A count of records of at least `min` bytes each, checked against what is left.
    fn count(&mut self, min: usize) -> io::Result<usize> {
        let n = self.u64()?;
        if n > ((self.buf.len() - self.at) / min) as u64 {
            return Err(bad("a count larger than the index"));
        }
        Ok(n as usize)
    }
}

/// Counts the bytes read through it: the compressed offset of each gzip member.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

type Compressed = BufReader<Counting<File>>;

/// Between members, or inside one.
enum State {
    Between(Compressed),
    In(Box<GzDecoder<Compressed>>),
    Done,
}

/// The tar stream of a multi-member gzip file, recording where each member starts.
struct Members {
    state: State,
    table: Vec<(u64, u64)>,
    /// Tar bytes given out so far.
    tar: u64,
}

impl Read for Members {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Done => return Ok(0),
                State::Between(mut file) => {
                    if file.fill_buf()?.is_empty() {
                        return Ok(0);
                    }
                    let at = file.get_ref().n - file.buffer().len() as u64;
                    self.table.push((at, self.tar));
                    self.state = State::In(Box::new(GzDecoder::new(file)));
                }
                State::In(mut member) => {
                    let n = member.read(buf)?;
                    if n > 0 || buf.is_empty() {
                        self.tar += n as u64;
                        self.state = State::In(member);
                        return Ok(n);
                    }
                    self.state = State::Between(member.into_inner());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_round_trips_and_lists_a_folder_as_one_range() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("a/b")).unwrap();
        std::fs::write(data.join("a/one"), vec![7u8; 3 << 20]).unwrap();
        std::fs::write(data.join("a/b/two"), b"two").unwrap();
        std::fs::write(data.join("top"), b"t").unwrap();
        std::os::unix::fs::symlink("a/one", data.join("link")).unwrap();
        let archive = dir.path().join("s.tar.gz");
        let sources = [crate::model::Source {
            path: data.clone(),
            exclude: Vec::new(),
            archive_dir: "volumes/v".into(),
        }];
        let opts = crate::archive::Options {
            chunk_size: 1 << 20,
            ..Default::default()
        };
        crate::archive::write(
            File::create(&archive).unwrap(),
            b"{}",
            &sources,
            &opts,
            &|_| {},
        )
        .unwrap();

        let index = build(&archive, "abc", 1000).unwrap();
        assert!(index.members.len() > 2, "{:?}", index.members);
        assert_eq!(index.members[0], (0, 0));
        let names = |folder: &[u8]| -> Vec<String> {
            index
                .children(folder)
                .iter()
                .map(|e| String::from_utf8_lossy(e.split().1).into_owned())
                .collect()
        };
        assert_eq!(names(b"volumes/v"), ["a", "link", "top"]);
        assert_eq!(names(b"volumes/v/a"), ["b", "one"]);
        let one = index.get(b"volumes/v/a/one").unwrap();
        assert_eq!((one.kind, one.size), (EntryKind::File, 3 << 20));
        let link = index.get(b"volumes/v/link").unwrap();
        assert_eq!(link.link.as_deref(), Some(&b"a/one"[..]));

        // The data offset points at the file's bytes in the tar stream.
        let mut tar = Vec::new();
        crate::archive::read::open_tar_stream(&archive, 1)
            .unwrap()
            .read_to_end(&mut tar)
            .unwrap();
        let two = index.get(b"volumes/v/a/b/two").unwrap();
        let at = two.data_offset as usize;
        assert_eq!(&tar[at..at + 3], b"two");

        for (path, want) in [
            (&b"volumes/v/a/one"[..], vec![7u8; 3 << 20]),
            (b"volumes/v/a/b/two", b"two".to_vec()),
        ] {
            let mut got = Vec::new();
            open_file(&archive, &index, index.get(path).unwrap())
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            assert_eq!(got, want);
        }
        // An index that points at another entry is refused, never read from.
        let mut lying = index.clone();
        let two = index.get(b"volumes/v/a/b/two").unwrap().clone();
        let one = lying
            .entries
            .iter_mut()
            .find(|e| e.path == b"volumes/v/a/one")
            .unwrap();
        one.header_offset = two.header_offset;
        let one = lying.get(b"volumes/v/a/one").unwrap();
        let err = open_file(&archive, &lying, one).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let saved = dir.path().join("s.index");
        index.save(&saved).unwrap();
        assert_eq!(Index::load(&saved).unwrap(), index);
    }

    #[test]
    fn a_damaged_index_is_an_error_never_a_partial_listing() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index {
            sha256: "abc".into(),
            members: vec![(0, 0)],
            entries: vec![Entry {
                path: b"volumes/v/x".to_vec(),
                kind: EntryKind::File,
                size: 1,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
                link: None,
                header_offset: 0,
                data_offset: 512,
            }],
        };
        let path = dir.path().join("x.index");
        index.save(&path).unwrap();
        let mut raw = Vec::new();
        GzDecoder::new(BufReader::new(File::open(&path).unwrap()))
            .read_to_end(&mut raw)
            .unwrap();
        for cut in [raw.len() - 1, 20, MAGIC.len()] {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&raw[..cut]).unwrap();
            std::fs::write(&path, gz.finish().unwrap()).unwrap();
            let err = Index::load(&path).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidData,
                "cut at {cut}: {err}"
            );
        }
    }
}
