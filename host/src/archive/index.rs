//! The entry index of an archive: where every entry sits, so a snapshot can be listed
//! without inflating it.
//!
//! One file beside each archive, `{snapshot_id}.index`, holding:
//! - the sha256 of the archive it describes: an index whose sha256 is not the archive's
//!   recorded one is stale or foreign and never used (it is built again);
//! - the gzip member table: for each member, its offset in the compressed file and the
//!   offset of its first byte in the tar stream (so a read of one entry inflates only the
//!   members holding it);
//! - every entry: its archive path (raw bytes), type, size, mode, owner, mtime, link
//!   target, and the tar offsets of its header and of its data; sorted by (parent folder,
//!   name), so a folder's children are one range.
//!
//! The entries are cut into blocks of about 256 KiB, each its own gzip member, and the
//! head names each block's first path: a listing or a lookup inflates the one or two
//! blocks that hold it, not the whole index (a first listing of a snapshot of 275,000
//! entries inflated 33 MB before). Layout: `ASINDEX2`, the head's compressed length
//! (u64 LE), the head (gzip: sha256, member table, entry count, and per block its entry
//! count, compressed length and first path), then the blocks.
//!
//! The backup's writer makes one as it writes ([`Builder`], fed by the walk with each
//! header's place). For archives that lack one (imports, fetches, older snapshots),
//! [`build`] makes one by one sequential read of the archive, through the same bounded tar
//! reader as the extractor (no size the archive claims is believed unchecked, memory is
//! bounded by the entry limit). [`Index::load`] reads one back and checks its framing: a
//! damaged index is an error, never a partial listing.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flate2::bufread::GzDecoder;

use super::tar_read::TarReader;

/// First bytes of an index file, with its format version. Files of another version
/// (`ASINDEX1`: one gzip member) do not load, so they are built again.
const MAGIC: &[u8; 8] = b"ASINDEX2";

/// Most bytes an index inflates to, all blocks together (a million entries take
/// ~110 MB).
const MAX_RAW: usize = 1 << 30;

/// Bytes of entries a writer puts in one block before it starts the next.
const BLOCK_RAW: usize = 256 << 10;

/// Most bytes one block inflates to: [`BLOCK_RAW`] and one entry with the longest names.
const MAX_BLOCK: usize = BLOCK_RAW + 2 * (MAX_NAME as usize + 4) + MIN_ENTRY;

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

/// One entry of the archive. Its names are owned (`Entry`, as a writer makes one) or
/// borrowed from a loaded index's block ([`EntryRef`]): reading an index allocates
/// nothing per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<N = Vec<u8>> {
    /// The archive path as stored, without a trailing `/`.
    pub path: N,
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
    pub link: Option<N>,
    /// Where its first header block (extensions included) starts in the tar stream.
    pub header_offset: u64,
    /// Where its data starts in the tar stream.
    pub data_offset: u64,
}

/// An entry of a loaded [`Index`], borrowing its names from it.
pub type EntryRef<'a> = Entry<&'a [u8]>;

impl<N: AsRef<[u8]>> Entry<N> {
    /// The folder holding it (empty at the top) and its own name.
    pub fn split(&self) -> (&[u8], &[u8]) {
        split(self.path.as_ref())
    }

    /// The same entry, borrowing its names.
    pub fn as_ref(&self) -> EntryRef<'_> {
        self.map_names(|n| n.as_ref())
    }
}

impl<N> Entry<N> {
    /// The same entry with its names made by `f`.
    fn map_names<'a, M>(&'a self, f: impl Fn(&'a N) -> M) -> Entry<M> {
        Entry {
            path: f(&self.path),
            link: self.link.as_ref().map(&f),
            kind: self.kind,
            size: self.size,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            header_offset: self.header_offset,
            data_offset: self.data_offset,
        }
    }
}

impl EntryRef<'_> {
    /// The same entry, owning its names.
    pub fn to_owned(self) -> Entry {
        self.map_names(|n| n.to_vec())
    }
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
}

/// Whether the archive path `path` is `folder` or below it (whole names only:
/// `v/upload` is not below `v/up`).
pub fn inside(path: &[u8], folder: &[u8]) -> bool {
    path.strip_prefix(folder)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

/// An archive path split at its last `/`: (parent, name).
pub fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// An archive's entries and gzip members, bound to the archive's sha256.
///
/// Blocks are inflated and checked when first looked at, and kept: an entry is decoded
/// from its block's bytes when it is read ([`EntryRef`] borrows its names), so no value
/// per entry is ever allocated. Because a block is checked only when read, the lookups
/// can fail (`InvalidData`: a damaged block), and [`Index::iter`] checks them all first.
#[derive(Debug)]
pub struct Index {
    /// sha256 (hex) of the archive file this index describes.
    pub sha256: String,
    /// `(compressed offset, tar offset)` of each gzip member, in order.
    pub members: Vec<(u64, u64)>,
    blocks: Vec<Block>,
    /// Entries before each block, and the total last.
    before: Vec<usize>,
}

#[derive(Debug)]
struct Block {
    /// The path of its first entry.
    first: Vec<u8>,
    /// How many entries it holds (at least one).
    entries: usize,
    /// Its gzip member, as in the file.
    packed: Vec<u8>,
    /// Its entries, once inflated and checked (or why they are not).
    decoded: OnceLock<Result<Decoded, String>>,
}

#[derive(Debug)]
struct Decoded {
    /// The entries in their file encoding, sorted by (parent, name).
    raw: Vec<u8>,
    /// Where each starts in `raw`.
    starts: Vec<u32>,
}

impl Decoded {
    fn key(&self, j: usize) -> (&[u8], &[u8]) {
        split(path_at(&self.raw, self.starts[j] as usize))
    }

    fn entry(&self, j: usize) -> EntryRef<'_> {
        let mut r = Cursor {
            buf: &self.raw,
            at: self.starts[j] as usize,
        };
        read_entry(&mut r).expect("a block's entries are checked when it is inflated")
    }
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
    let mut entries = Builder::default();
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
        entries.push(&Entry {
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
    entries.finish(sha256, &members.table)
}

impl Index {
    /// How many entries it holds.
    pub fn len(&self) -> usize {
        *self.before.last().expect("one more than the blocks")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th entry in (parent, name) order.
    pub fn entry(&self, i: usize) -> io::Result<EntryRef<'_>> {
        let b = self.before.partition_point(|&n| n <= i) - 1;
        Ok(self.block(b)?.entry(i - self.before[b]))
    }

    /// Every entry, in (parent, name) order: every block is inflated and checked first.
    pub fn iter(&self) -> io::Result<impl Iterator<Item = EntryRef<'_>> + '_> {
        let blocks = (0..self.blocks.len())
            .map(|b| self.block(b))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(blocks
            .into_iter()
            .flat_map(|d| (0..d.starts.len()).map(|j| d.entry(j))))
    }

    /// The entries directly in `folder` (an archive path without a trailing `/`; empty
    /// for the top), in name order: one range of the sorted entries, for [`Self::entry`].
    pub fn children(&self, folder: &[u8]) -> io::Result<Range<usize>> {
        Ok(self.partition(|k| k.0 < folder)?..self.partition(|k| k.0 <= folder)?)
    }

    /// The entries below `folder`, at any depth, in index order: those whose parent is
    /// `folder` and those whose parent starts with `folder/`, two ranges of the sorted
    /// entries (a parent such as `folder-x` sorts between them).
    pub fn below(&self, folder: &[u8]) -> io::Result<impl Iterator<Item = usize> + use<>> {
        let deeper = [folder, b"/"].concat();
        let after = [folder, b"0"].concat(); // `0` follows `/`
        let deep = self.partition(|k| k.0 < &deeper[..])?..self.partition(|k| k.0 < &after[..])?;
        Ok(self.children(folder)?.chain(deep))
    }

    /// The entry at `path`, if the archive has one.
    pub fn get(&self, path: &[u8]) -> io::Result<Option<EntryRef<'_>>> {
        let key = split(path);
        let i = self.partition(|k| k < key)?;
        if i == self.len() {
            return Ok(None);
        }
        let e = self.entry(i)?;
        Ok((e.split() == key).then_some(e))
    }

    /// The first entry whose (parent, name) is not `before`, which holds for a prefix of
    /// the order: found among the blocks' first paths, then in the one block that can
    /// hold it (the only one inflated).
    fn partition(&self, before: impl Fn((&[u8], &[u8])) -> bool) -> io::Result<usize> {
        let b = self.blocks.partition_point(|blk| before(split(&blk.first)));
        let Some(b) = b.checked_sub(1) else {
            return Ok(0);
        };
        let d = self.block(b)?;
        Ok(self.before[b] + partition_point(d.starts.len(), |j| before(d.key(j))))
    }

    /// Block `b`, inflated and checked at its first use.
    fn block(&self, b: usize) -> io::Result<&Decoded> {
        let blk = &self.blocks[b];
        let next = self.blocks.get(b + 1).map(|n| split(&n.first));
        blk.decoded
            .get_or_init(|| decode(blk, next).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| bad(&format!("block {b}: {e}")))
    }

    /// Writes the index to `path` atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut head = Vec::with_capacity(64 + self.members.len() * 16);
        put_bytes(&mut head, self.sha256.as_bytes());
        head.extend_from_slice(&(self.members.len() as u64).to_le_bytes());
        for (c, t) in &self.members {
            head.extend_from_slice(&c.to_le_bytes());
            head.extend_from_slice(&t.to_le_bytes());
        }
        head.extend_from_slice(&(self.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.blocks.len() as u64).to_le_bytes());
        for blk in &self.blocks {
            head.extend_from_slice(&(blk.entries as u64).to_le_bytes());
            head.extend_from_slice(&(blk.packed.len() as u64).to_le_bytes());
            put_bytes(&mut head, &blk.first);
        }
        let head = gzip(&head);
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp"));
        let result = (|| {
            let mut file = io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            file.write_all(MAGIC)?;
            file.write_all(&(head.len() as u64).to_le_bytes())?;
            file.write_all(&head)?;
            for blk in &self.blocks {
                file.write_all(&blk.packed)?;
            }
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Reads the index at `path`: its head, and each block as it is in the file (a block
    /// is inflated and checked when first read). A missing file is `NotFound`; one whose
    /// head does not parse, or whose blocks do not fill the file exactly, is
    /// `InvalidData`. No count or size it holds is believed beyond the bytes there are.
    pub fn load(path: &Path) -> io::Result<Index> {
        Index::from_file(&std::fs::read(path)?)
    }

    /// [`Self::load`] of an index file's bytes (one a repository's copy carries).
    pub fn from_file(file: &[u8]) -> io::Result<Index> {
        let mut r = Cursor { buf: file, at: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err(bad("not an appsnap index of this version"));
        }
        let head_len = usize::try_from(r.u64()?).map_err(|_| bad("head too long"))?;
        let head = inflate(r.take(head_len)?, MAX_RAW)?;
        let mut h = Cursor { buf: &head, at: 0 };
        let sha256 = String::from_utf8(h.bytes()?.to_vec()).map_err(|_| bad("bad sha256"))?;
        let members_n = h.count(16)?;
        let mut members = Vec::with_capacity(members_n);
        for _ in 0..members_n {
            members.push((h.u64()?, h.u64()?));
        }
        let total = h.u64()?;
        let blocks_n = h.count(8 + 8 + 4)?;
        let (mut blocks, mut before) = (Vec::with_capacity(blocks_n), vec![0usize]);
        let mut raw_total = 0usize;
        for _ in 0..blocks_n {
            let entries = h.u64()?;
            let packed_len = usize::try_from(h.u64()?).map_err(|_| bad("block too long"))?;
            let first = h.bytes()?.to_vec();
            let packed = r.take(packed_len)?.to_vec();
            // A block's inflated size, from its gzip trailer: checked here, believed
            // (as a buffer's size) only within these bounds.
            let raw_len = packed
                .len()
                .checked_sub(4)
                .map(|at| u32::from_le_bytes(packed[at..].try_into().expect("4 bytes")))
                .ok_or_else(|| bad("a block cut short"))? as usize;
            raw_total += raw_len;
            if raw_len > MAX_BLOCK || raw_total > MAX_RAW {
                return Err(bad("a block larger than one can be"));
            }
            if entries == 0 || entries > (raw_len / MIN_ENTRY) as u64 {
                return Err(bad("a block's entry count does not fit it"));
            }
            if blocks
                .last()
                .is_some_and(|p: &Block| split(&p.first) >= split(&first))
            {
                return Err(bad("blocks out of order"));
            }
            before.push(before.last().expect("one at least") + entries as usize);
            blocks.push(Block {
                first,
                entries: entries as usize,
                packed,
                decoded: OnceLock::new(),
            });
        }
        if h.at != head.len() || r.at != file.len() {
            return Err(bad("bytes after its end"));
        }
        if *before.last().expect("one at least") as u64 != total {
            return Err(bad(
                "blocks hold another number of entries than the head says",
            ));
        }
        Ok(Index {
            sha256,
            members,
            blocks,
            before,
        })
    }
}

/// Inflates one block and checks it: exactly its entries, in order, the first one the
/// head names, the last one before the next block's first (`next`).
fn decode(blk: &Block, next: Option<(&[u8], &[u8])>) -> io::Result<Decoded> {
    let raw = inflate(&blk.packed, MAX_BLOCK)?;
    let mut r = Cursor { buf: &raw, at: 0 };
    let mut starts = Vec::with_capacity(blk.entries);
    let mut last: Option<(&[u8], &[u8])> = None;
    for _ in 0..blk.entries {
        starts.push(r.at as u32);
        let key = split(read_entry(&mut r)?.path);
        match last {
            None if key != split(&blk.first) => {
                return Err(bad("its first entry is not the one the head names"));
            }
            Some(last) if last >= key => return Err(bad("entries out of order")),
            _ => {}
        }
        last = Some(key);
    }
    if r.at != raw.len() {
        return Err(bad("bytes after the last entry"));
    }
    if let (Some(last), Some(next)) = (last, next)
        && last >= next
    {
        return Err(bad("entries out of order across blocks"));
    }
    Ok(Decoded { raw, starts })
}

/// One gzip member, inflated in one call (libdeflate: several times zlib's speed) into
/// a buffer of the size its trailer gives, which is believed only up to `max`.
fn inflate(packed: &[u8], max: usize) -> io::Result<Vec<u8>> {
    let claimed = match packed.len().checked_sub(4) {
        Some(at) => u32::from_le_bytes(packed[at..].try_into().expect("4 bytes")) as usize,
        None => return Err(bad("cut short")),
    };
    if claimed > max {
        return Err(bad("larger than it can be"));
    }
    let mut raw = vec![0u8; claimed];
    let n = libdeflater::Decompressor::new()
        .gzip_decompress(packed, &mut raw)
        .map_err(|e| bad(&format!("not a gzip member of its stated size: {e}")))?;
    if n != claimed {
        return Err(bad("inflates to another size than its trailer says"));
    }
    Ok(raw)
}

/// `raw` as one gzip member (libdeflate's level 1; its "fastest", 0, does not compress).
fn gzip(raw: &[u8]) -> Vec<u8> {
    let level = libdeflater::CompressionLvl::new(1).expect("1 is a level");
    let mut c = libdeflater::Compressor::new(level);
    let mut out = vec![0u8; c.gzip_compress_bound(raw.len())];
    let n = c
        .gzip_compress(raw, &mut out)
        .expect("the buffer is the bound");
    out.truncate(n);
    out
}

/// The first `i` in `0..n` for which `before(i)` is false (`before` holds for a prefix).
fn partition_point(n: usize, before: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if before(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The fewest bytes an entry takes in an index file (empty names).
const MIN_ENTRY: usize = 4 + 1 + 40 + 1 + 4 + 16;

/// Appends the encoding of `e` to `out`: the one place the entry format is written
/// ([`read_entry`] reads it).
fn put_entry<N: AsRef<[u8]>>(out: &mut Vec<u8>, e: &Entry<N>) {
    put_bytes(out, e.path.as_ref());
    out.push(e.kind.code());
    for n in [e.size, e.mode as u64, e.uid, e.gid, e.mtime as u64] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.push(e.link.is_some() as u8);
    put_bytes(out, e.link.as_ref().map_or(&[][..], AsRef::as_ref));
    out.extend_from_slice(&e.header_offset.to_le_bytes());
    out.extend_from_slice(&e.data_offset.to_le_bytes());
}

/// Reads one entry that [`put_entry`] wrote.
fn read_entry<'a>(r: &mut Cursor<'a>) -> io::Result<EntryRef<'a>> {
    let path = r.bytes()?;
    let kind = EntryKind::from_code(r.take(1)?[0]).ok_or_else(|| bad("bad entry type"))?;
    let (size, mode, uid, gid, mtime) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let has_link = r.take(1)?[0] != 0;
    let link = r.bytes()?;
    Ok(Entry {
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
    })
}

/// The path of the entry [`put_entry`] wrote at `at` of `raw` (checked before).
fn path_at(raw: &[u8], at: usize) -> &[u8] {
    let len = u32::from_le_bytes(raw[at..at + 4].try_into().expect("4 bytes")) as usize;
    &raw[at + 4..at + 4 + len]
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
    pub fn push<N: AsRef<[u8]>>(&mut self, e: &Entry<N>) {
        self.starts.push(self.encoded.len());
        put_entry(&mut self.encoded, e);
    }

    /// Entries pushed.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Writes the index of the archive whose sha256 is `sha256` and whose gzip members
    /// begin at `members` to `path`, atomically, its entries sorted by (parent, name).
    /// Only the compressed blocks are held besides the pushed bytes: a backup does not
    /// hold its entries twice.
    pub fn write(self, path: &Path, sha256: &str, members: &[(u64, u64)]) -> io::Result<()> {
        self.into_index(sha256, members, false)?.save(path)
    }

    /// The index itself, in memory. One larger than an index file may be
    /// (`InvalidData`) is refused.
    pub fn finish(self, sha256: &str, members: &[(u64, u64)]) -> io::Result<Index> {
        self.into_index(sha256, members, true)
    }

    /// Sorts the entries and cuts them into blocks, compressed; `keep` keeps each
    /// block's bytes as well (the index is to be read, not only saved).
    fn into_index(self, sha256: &str, members: &[(u64, u64)], keep: bool) -> io::Result<Index> {
        let (encoded, starts) = (&self.encoded, &self.starts);
        let bytes_of =
            |i: usize| &encoded[starts[i]..starts.get(i + 1).copied().unwrap_or(encoded.len())];
        let key = |i: usize| split(path_at(encoded, starts[i]));
        let mut order: Vec<usize> = (0..starts.len()).collect();
        order.sort_by(|&a, &b| key(a).cmp(&key(b)));
        let (mut blocks, mut before) = (Vec::new(), vec![0usize]);
        let mut raw_total = 0usize;
        for group in cut(&order, |i| bytes_of(i).len()) {
            let mut raw = Vec::with_capacity(BLOCK_RAW + MIN_ENTRY);
            let mut starts = Vec::with_capacity(group.len());
            for &i in group {
                starts.push(raw.len() as u32);
                raw.extend_from_slice(bytes_of(i));
            }
            raw_total += raw.len();
            if raw_total > MAX_RAW {
                return Err(bad("larger than an index can be"));
            }
            let decoded = OnceLock::new();
            let packed = gzip(&raw);
            if keep {
                let _ = decoded.set(Ok(Decoded { raw, starts }));
            }
            before.push(before.last().expect("one at least") + group.len());
            blocks.push(Block {
                first: path_at(encoded, self.starts[group[0]]).to_vec(),
                entries: group.len(),
                packed,
                decoded,
            });
        }
        Ok(Index {
            sha256: sha256.to_string(),
            members: members.to_vec(),
            blocks,
            before,
        })
    }
}

/// `order` cut into blocks of about [`BLOCK_RAW`] bytes (`len` of each entry), each
/// ending where its bytes reach that size.
fn cut(order: &[usize], len: impl Fn(usize) -> usize) -> Vec<&[usize]> {
    let (mut out, mut from, mut size) = (Vec::new(), 0, 0);
    for (k, &i) in order.iter().enumerate() {
        size += len(i);
        if size >= BLOCK_RAW {
            out.push(&order[from..=k]);
            (from, size) = (k + 1, 0);
        }
    }
    if from < order.len() {
        out.push(&order[from..]);
    }
    out
}

/// Where an archive's tar stream is read from, at any offset: the local `.tar.gz`
/// ([`Local`]) or a copy in a repository (`offsite::OpenCopy`). Reads of entries go
/// through it, so they are the same whichever holds the snapshot.
pub trait TarAt: Send + Sync {
    /// The tar stream from offset `at` on.
    fn tar_at(&self, at: u64) -> io::Result<Box<dyn Read + Send>>;
}

/// A local archive, read through its gzip member table.
pub struct Local {
    pub archive: PathBuf,
    pub index: std::sync::Arc<Index>,
}

impl TarAt for Local {
    fn tar_at(&self, at: u64) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(tar_from(&self.archive, &self.index.members, at)?))
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

/// Opens `entry` (a regular file) of the archive `tar` reads for reading.
pub fn open_file(
    tar: &dyn TarAt,
    entry: EntryRef<'_>,
) -> io::Result<Content<Box<dyn Read + Send>>> {
    let mut tar = TarReader::new(tar.tar_at(entry.header_offset)?);
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

        let index = std::sync::Arc::new(build(&archive, "abc", 1000).unwrap());
        let local = Local {
            archive: archive.clone(),
            index: index.clone(),
        };
        assert!(index.members.len() > 2, "{:?}", index.members);
        assert_eq!(index.members[0], (0, 0));
        let names = |folder: &[u8]| -> Vec<String> {
            index
                .children(folder)
                .unwrap()
                .map(|i| String::from_utf8_lossy(index.entry(i).unwrap().split().1).into_owned())
                .collect()
        };
        assert_eq!(names(b"volumes/v"), ["a", "link", "top"]);
        assert_eq!(names(b"volumes/v/a"), ["b", "one"]);
        let get = |path: &[u8]| index.get(path).unwrap().unwrap();
        let one = get(b"volumes/v/a/one");
        assert_eq!((one.kind, one.size), (EntryKind::File, 3 << 20));
        assert_eq!(get(b"volumes/v/link").link, Some(&b"a/one"[..]));
        assert!(index.get(b"volumes/v/a/on").unwrap().is_none());

        // The data offset points at the file's bytes in the tar stream.
        let mut tar = Vec::new();
        crate::archive::read::open_tar_stream(&archive, 1)
            .unwrap()
            .read_to_end(&mut tar)
            .unwrap();
        let at = get(b"volumes/v/a/b/two").data_offset as usize;
        assert_eq!(&tar[at..at + 3], b"two");

        for (path, want) in [
            (&b"volumes/v/a/one"[..], vec![7u8; 3 << 20]),
            (b"volumes/v/a/b/two", b"two".to_vec()),
        ] {
            let mut got = Vec::new();
            open_file(&local, get(path))
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            assert_eq!(got, want);
        }
        // An index that points at another entry is refused, never read from.
        let two = get(b"volumes/v/a/b/two");
        let mut lying = Builder::default();
        for mut e in index.iter().unwrap() {
            if e.path == b"volumes/v/a/one" {
                e.header_offset = two.header_offset;
            }
            lying.push(&e);
        }
        let lying = Local {
            archive: archive.clone(),
            index: std::sync::Arc::new(lying.finish(&index.sha256, &index.members).unwrap()),
        };
        let one = lying.index.get(b"volumes/v/a/one").unwrap().unwrap();
        let err = open_file(&lying, one).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let saved = dir.path().join("s.index");
        index.save(&saved).unwrap();
        assert_same(&Index::load(&saved).unwrap(), &index);
    }

    fn assert_same(a: &Index, b: &Index) {
        assert_eq!((&a.sha256, &a.members), (&b.sha256, &b.members));
        assert!(a.iter().unwrap().eq(b.iter().unwrap()));
    }

    /// An index of `n` files spread over folders, some of whose names sort between a
    /// folder and its subfolders (`d1-x` between `d1` and `d1/…`).
    fn many(n: u64) -> Index {
        let mut b = Builder::default();
        for i in 0..n {
            let folder = match i % 4 {
                0 => format!("volumes/v/d{}", i % 7),
                1 => format!("volumes/v/d{}/sub", i % 7),
                2 => format!("volumes/v/d{}-x", i % 7),
                _ => format!("volumes/v/d{}.y/deep/er", i % 7),
            };
            b.push(&Entry {
                path: format!("{folder}/file-{i:07}").into_bytes(),
                kind: EntryKind::File,
                size: i,
                mode: 0o644,
                uid: 1,
                gid: 2,
                mtime: i as i64,
                link: None,
                header_offset: i * 1024,
                data_offset: i * 1024 + 512,
            });
        }
        b.finish("abc", &[(0, 0)]).unwrap()
    }

    #[test]
    fn a_large_index_is_read_block_by_block_and_answers_like_a_sorted_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.index");
        many(40_000).save(&path).unwrap();
        let index = Index::load(&path).unwrap();
        assert!(index.blocks.len() > 5, "{} blocks", index.blocks.len());
        let inflated = || {
            index
                .blocks
                .iter()
                .filter(|b| b.decoded.get().is_some())
                .count()
        };
        assert_eq!(inflated(), 0, "nothing inflated by loading");

        // A lookup inflates one block.
        let e = index
            .get(b"volumes/v/d3/sub/file-0023369")
            .unwrap()
            .unwrap();
        assert_eq!((e.size, e.header_offset), (23369, 23369 * 1024));
        assert!(inflated() <= 1, "{} blocks for one lookup", inflated());

        // Every answer equals the one a plain scan of the sorted entries gives.
        let all: Vec<EntryRef> = index.iter().unwrap().collect();
        assert_eq!(all.len(), 40_000);
        assert!(all.is_sorted_by(|a, b| a.split() < b.split()));
        for d in 0..7 {
            for folder in [
                format!("volumes/v/d{d}"),
                format!("volumes/v/d{d}/sub"),
                format!("volumes/v/d{d}.y/deep"),
                format!("volumes/v/d{d}-"),
            ] {
                let folder = folder.as_bytes();
                let children: Vec<_> = index.children(folder).unwrap().collect();
                let want: Vec<_> = (0..all.len())
                    .filter(|&i| all[i].split().0 == folder)
                    .collect();
                assert_eq!(children, want, "{}", String::from_utf8_lossy(folder));
                let mut below: Vec<_> = index.below(folder).unwrap().collect();
                below.sort();
                let want: Vec<_> = (0..all.len())
                    .filter(|&i| inside(all[i].split().0, folder))
                    .collect();
                assert_eq!(below, want, "{}", String::from_utf8_lossy(folder));
            }
        }
        for e in all.iter().step_by(997) {
            assert_eq!(index.get(e.path).unwrap(), Some(*e));
        }
    }

    #[test]
    fn a_damaged_index_is_an_error_never_a_partial_listing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        many(20_000).save(&path).unwrap();
        let good = std::fs::read(&path).unwrap();

        // Framing: cut anywhere, or a head that lies, and it does not load.
        for cut in [good.len() - 1, good.len() / 2, 40, 9, 0] {
            std::fs::write(&path, &good[..cut]).unwrap();
            let err = Index::load(&path).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidData,
                "cut at {cut}: {err}"
            );
        }
        // The format before blocks (one gzip member) is not read: it is built again.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"ASINDEX1").unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        assert_eq!(
            Index::load(&path).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );

        // A block damaged inside: it loads, and every read that needs that block fails,
        // the same each time; the other blocks still answer.
        let mut bad_block = good.clone();
        let at = good.len() - 4000; // inside the last block's deflate data
        bad_block[at] ^= 0x55;
        std::fs::write(&path, &bad_block).unwrap();
        let index = Index::load(&path).unwrap();
        let last = index.len() - 1;
        for _ in 0..2 {
            let err = index.entry(last).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(index.iter().is_err());
        }
        assert!(index.entry(0).is_ok());
    }
}
