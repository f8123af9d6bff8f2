//! A pre-copy's final archive made **in place**, in the first pass's file.
//!
//! The copy assembly ([`super::precopy::assemble`]) writes the whole archive a second
//! time. Below the page cache's dirty budget that costs little, but at 4 GiB the disk
//! takes the second 2.2 GB at its own pace, and that write was most of the difference
//! between a pre-copy's wall time and stop mode's.
//!
//! Here the members the final stream keeps stay where the first pass wrote them, and
//! only the **gaps** between them are rewritten: the members a change cut, compressed
//! again (first into a scratch file), the changed entries from the delta, and the few kept
//! bytes that share a 4 KiB block with a gap. Each gap is brought to whole blocks with an
//! empty gzip member ([`super::gzip::padding_member`], at most one block plus a header),
//! then made its new size with `fallocate`'s `COLLAPSE_RANGE` / `INSERT_RANGE`, which move
//! extents instead of bytes. The result is the same tar stream as the copy assembly's, in
//! a plain `.tar.gz`; it is a little larger, by the padding (under 4.2 KB per gap).
//!
//! The order of the steps is what makes it fast, and it is why an earlier attempt (which
//! interleaved them) lost to the copy:
//! 1. the gaps' new members, compressed into the scratch file;
//! 2. the final file's sha256, hashed **before anything moves**: ext4 writes back and drops
//!    the page cache from each collapse or insert to the end of the file, so afterwards
//!    the kept members would be read back from the disk;
//! 3. every collapse and insert, last gap first (the offsets before it stay valid), while
//!    nothing in the file is dirty: each only moves extents;
//! 4. the gaps' bytes written at their final places, once.
//!
//! A failure after step 3 has begun leaves the file unusable: it is a `.partial` file, and
//! the caller removes it.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use super::gzip::{PAD_MIN, ParallelGzip, Written, padding_member};
use super::precopy::{FirstArchive, Member, Piece, members_of, splice};
use super::walk::ChunkSink;
use super::{ArchiveError, Options};

/// The block `fallocate` moves: what stays in place starts and ends on a multiple of it.
pub const ALIGN: u64 = 4096;

/// The highest libdeflate level the gaps are compressed again at while they hold less
/// than a fifth of the stream. They are compressed while the assembly waits, on the
/// critical path of every pre-copy backup with changes, and compressing is most of its
/// time: 6.2 % of the stream at 4 GiB (280 MB) cost about 3 s of CPU at level 6. While
/// they are a small part of the archive, a faster level costs little size; beyond, the
/// archive's own level (the size then matters more).
const RECOMPRESS_LEVEL: u32 = 4;

/// What [`assemble`] made.
#[derive(Debug)]
pub struct InPlace {
    /// The final file's length, sha256 and member table (no tar stream hash: kept members
    /// are not inflated).
    pub written: Written,
    /// The final tar stream's length.
    pub tar_bytes: u64,
    /// Of it, the bytes kept where the first pass wrote them.
    pub kept_tar_bytes: u64,
}

/// One stretch of the final archive, in order.
#[derive(Debug)]
enum Item {
    /// Members of the first pass's file kept as they are: their bytes there, and the tar
    /// stream they hold in the first pass's stream.
    Keep { packed: Range<u64>, tar: Range<u64> },
    /// Stretches of the final tar stream that are compressed again: parts of members a
    /// change cut, and the delta's entries.
    New(Vec<Piece>),
}

impl Item {
    /// The tar bytes it holds in the final stream.
    fn tar_len(&self) -> u64 {
        match self {
            Item::Keep { tar, .. } => tar.end - tar.start,
            Item::New(pieces) => pieces.iter().map(piece_len).sum(),
        }
    }
}

/// Makes the final archive in `file`, the first pass's archive (opened read and write),
/// from `pieces` (see [`super::precopy::second_pass`]). `scratch` is an empty file the
/// new members go through.
///
/// `Ok(None)`, with `file` untouched, when it cannot be done here: a filesystem whose
/// `fallocate` cannot move extents (only ext4 and XFS are trusted with it, and they may
/// still refuse the first move), or kept members that do not come in the first pass's
/// order. The caller then assembles a copy (and the scratch file is left to it to remove).
pub fn assemble(
    file: &File,
    first: &FirstArchive<'_>,
    delta: &File,
    pieces: &[Piece],
    scratch: File,
    opts: &Options,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Option<InPlace>, ArchiveError> {
    let output = ArchiveError::Output;
    if !movable(file) {
        return Ok(None);
    }
    let mut table = first.chunks.to_vec();
    table.push((first.compressed_bytes, first.tar_bytes));
    let Some(items) = plan(file, &table, pieces).map_err(output)? else {
        return Ok(None);
    };
    let started = std::time::Instant::now();

    // Where each `Item::New` goes in the scratch file's tar stream, one after another.
    let mut new_tar = Vec::new();
    let mut at = 0;
    for item in items.iter().filter(|i| matches!(i, Item::New(_))) {
        let len = item.tar_len();
        new_tar.push(at..at + len);
        at += len;
    }
    let compressed_again = at;

    // 1. and 2. at once: one thread compresses the new members into the scratch file, each
    //    item beginning and ending on a member of its own; this one hashes the final file
    //    in its order right behind it, and reads the kept bytes each gap rewrites, while
    //    nothing has moved.
    let scratch_read = scratch.try_clone().map_err(output)?;
    let level = if compressed_again * 5 < first.tar_bytes {
        opts.level.min(RECOMPRESS_LEVEL)
    } else {
        opts.level
    };
    // With nothing kept, the scratch file's tar stream is the whole stream: its hash is
    // the snapshot's `tar_sha256` (when asked for), as a copy assembly of nothing reused
    // has one.
    let whole = opts.hash_tar && !items.iter().any(|i| matches!(i, Item::Keep { .. }));
    let (gz, written) = ParallelGzip::scratch(scratch, level, opts.threads, opts.chunk_size, whole);
    let mut hash = Sha256::new();
    let mut originals: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut buf = vec![0u8; 4 << 20];
    let (compressed, laid_out) = std::thread::scope(|s| {
        let compressing = s.spawn(|| compress_new(gz, &items, &new_tar, file, &table, delta, opts));
        let laid_out = Layout::new(
            &items,
            first.compressed_bytes,
            |n| {
                let r = &new_tar[n];
                match (written.wait_for(r.start), written.wait_for(r.end)) {
                    (Some(s0), Some(s1)) => Ok(s0..s1),
                    _ => Err(output(io::Error::other(
                        "the scratch file ended before its members",
                    ))),
                }
            },
            |gap, anchor| {
                let mut kept = Vec::new();
                for part in &gap.parts {
                    match part.what {
                        What::Original(ref r) => {
                            let mut b = vec![0u8; (r.end - r.start) as usize];
                            file.read_exact_at(&mut b, r.start).map_err(output)?;
                            hash.update(&b);
                            kept.push(b);
                        }
                        What::Scratch(ref r) => {
                            hash_range(&scratch_read, r.clone(), &mut buf, &mut hash)
                                .map_err(output)?;
                        }
                        What::Pad(n) => hash.update(padding_member(n as usize)),
                    }
                }
                originals.push(kept);
                if let Some((anchor, tar_at)) = anchor {
                    hash_range(file, anchor.blocks.clone(), &mut buf, &mut hash).map_err(output)?;
                    progress(tar_at);
                    if super::cancelled(&opts.cancel) {
                        return Err(ArchiveError::Cancelled);
                    }
                }
                Ok(())
            },
        );
        let compressed = compressing
            .join()
            .unwrap_or_else(|_| Err(output(io::Error::other("the compression thread panicked"))));
        (compressed, laid_out)
    });
    // The compression's error, if any, says why the scratch file ended early.
    let (recompressed, scratch) = compressed?;
    let layout = laid_out?;
    let mut scratch_table = recompressed.chunks.clone();
    scratch_table.push((recompressed.compressed_bytes, compressed_again));
    let hashed = started.elapsed().as_secs_f64();

    // 3. Each gap made its new size, last first. From the first move on, an error leaves
    //    the file unusable (the caller removes it). A filesystem that refuses the very first
    //    move has had nothing done to it: a copy then. It answers EOPNOTSUPP for a file
    //    without extents on ext4, and EINVAL where moves go by units larger than a block
    //    (an ext4 with bigalloc clusters, an XFS extent size hint).
    let mut moves = 0;
    for (g, gap) in layout.gaps.iter().enumerate().rev() {
        if g == layout.anchors.len() {
            continue; // the last gap runs to the end of the file: written, then cut
        }
        let (old, new) = (gap.span.end - gap.span.start, gap.len());
        let moved = if new > old {
            fallocate(file, libc::FALLOC_FL_INSERT_RANGE, gap.span.end, new - old)
        } else if new < old {
            fallocate(
                file,
                libc::FALLOC_FL_COLLAPSE_RANGE,
                gap.span.start + new,
                old - new,
            )
        } else {
            continue;
        };
        match moved {
            Ok(()) => moves += 1,
            Err(e)
                if moves == 0
                    && matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) =>
            {
                tracing::info!("this filesystem moves no extents of this file: a copy instead");
                return Ok(None);
            }
            Err(e) => return Err(output(e)),
        }
    }
    let moved = started.elapsed().as_secs_f64();
    // The crash walk's point with the file half made: moved, not yet written.
    crate::failpoint::point("backup.in-place-moved").map_err(|e| output(io::Error::other(e)))?;

    // 4. The gaps' bytes, at their final places, gathered into whole pages first: a
    //    write that covers part of a page the moves dropped from the cache reads that page
    //    from the disk first, and one such read per gap cost 0.3 s at 4 GiB.
    let mut shift: i64 = 0;
    let mut end = 0;
    let mut pages = Pages {
        file,
        buf: Vec::with_capacity(WRITE_BATCH + (1 << 20)),
        at: 0,
    };
    for (gap, kept) in layout.gaps.iter().zip(originals) {
        pages.at = (gap.span.start as i64 + shift) as u64;
        let mut kept = kept.into_iter();
        for part in &gap.parts {
            match part.what {
                What::Original(_) => {
                    pages.put(&kept.next().expect("one per original part"))?;
                }
                What::Scratch(ref r) => {
                    let mut from = r.start;
                    while from < r.end {
                        let n = (r.end - from).min(buf.len() as u64) as usize;
                        scratch.read_exact_at(&mut buf[..n], from).map_err(output)?;
                        pages.put(&buf[..n])?;
                        from += n as u64;
                    }
                }
                What::Pad(n) => pages.put(&padding_member(n as usize))?,
            }
        }
        end = pages.flush()?;
        shift += gap.len() as i64 - (gap.span.end - gap.span.start) as i64;
    }
    file.set_len(end).map_err(output)?;
    if end != layout.len {
        return Err(output(io::Error::other(
            "the assembled archive's length is not what its parts add up to",
        )));
    }
    progress(layout.tar_len);
    tracing::info!(
        tar_bytes = layout.tar_len,
        compressed_again,
        gaps = layout.gaps.len(),
        compress_and_hash_secs = hashed,
        move_secs = moved - hashed,
        secs = started.elapsed().as_secs_f64(),
        "assembled the archive in place: {:.1} % of its tar stream compressed again",
        100.0 * compressed_again as f64 / layout.tar_len.max(1) as f64
    );
    Ok(Some(InPlace {
        written: Written {
            compressed_bytes: end,
            sha256: hash.finalize().into(),
            raw_sha256: recompressed.raw_sha256.filter(|_| whole),
            chunks: layout.member_table(&items, &table, &scratch_table, &new_tar),
        },
        tar_bytes: layout.tar_len,
        kept_tar_bytes: layout.tar_len - compressed_again,
    }))
}

/// Bytes a gap's writes gather before they go to the file, in whole pages.
const WRITE_BATCH: usize = 4 << 20;

/// A gap's bytes on their way into the file from `at` (a page boundary), written whole
/// pages at a time.
struct Pages<'f> {
    file: &'f File,
    buf: Vec<u8>,
    at: u64,
}

impl Pages<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= WRITE_BATCH {
            let whole = self.buf.len() / ALIGN as usize * ALIGN as usize;
            self.file
                .write_all_at(&self.buf[..whole], self.at)
                .map_err(ArchiveError::Output)?;
            self.buf.drain(..whole);
            self.at += whole as u64;
        }
        Ok(())
    }

    /// Writes what is left; returns where it ends.
    fn flush(&mut self) -> Result<u64, ArchiveError> {
        self.file
            .write_all_at(&self.buf, self.at)
            .map_err(ArchiveError::Output)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(self.at)
    }
}

/// Compresses the `Item::New`s of `items` into `gz`, one after another, each beginning
/// and ending on a member of its own (at `new_tar` in its tar stream).
fn compress_new(
    gz: ParallelGzip<File>,
    items: &[Item],
    new_tar: &[Range<u64>],
    file: &File,
    table: &[(u64, u64)],
    delta: &File,
    opts: &Options,
) -> Result<(Written, File), ArchiveError> {
    let output = ArchiveError::Output;
    let mut sink = ChunkSink::new(gz, &|_| {});
    sink.cancel = opts.cancel.clone();
    let mut read_error = None;
    let mut fed = Ok(());
    let news = items.iter().filter_map(|item| match item {
        Item::New(pieces) => Some(pieces),
        Item::Keep { .. } => None,
    });
    for (pieces, tar) in news.zip(new_tar) {
        fed = splice(&mut sink, file, table, delta, pieces, &mut read_error)
            .and_then(|()| sink.cut());
        if fed.is_err() {
            break;
        }
        if sink.bytes != tar.end {
            read_error.get_or_insert(io::Error::other(
                "a stretch of the tar stream is not the length its pieces add up to",
            ));
            fed = Err(super::walk::Broken);
            break;
        }
    }
    let done = sink.finish().map_err(output)?;
    if let Some(e) = read_error {
        return Err(output(e));
    }
    if fed.is_err() {
        return Err(super::stopped_early(&opts.cancel));
    }
    Ok(done)
}

/// The final stream as items: every member of the first pass wholly inside a
/// [`Piece::First`] is kept; the rest (members cut by a change, the delta) is new.
/// `None` when kept members come out of the first pass's order (the walk's order makes
/// that impossible; in place, it could not be done).
fn plan(file: &File, table: &[(u64, u64)], pieces: &[Piece]) -> io::Result<Option<Vec<Item>>> {
    let mut items: Vec<Item> = Vec::new();
    // The members of the last chunk a piece cut, by chunk number.
    let mut cut: Option<(usize, Vec<Member>)> = None;
    let mut kept_end = 0;
    for piece in pieces {
        let Piece::First { start, len } = *piece else {
            push_new(&mut items, *piece);
            continue;
        };
        let (mut pos, end) = (start, start + len);
        while pos < end {
            let k = table.partition_point(|&(_, t)| t <= pos);
            if k == 0 || k >= table.len() {
                return Err(io::Error::other("a piece outside the first pass"));
            }
            let k = k - 1;
            let ((c0, t0), (c1, t1)) = (table[k], table[k + 1]);
            let kept = if pos == t0 && t1 <= end {
                Some((c0..c1, t0..t1))
            } else {
                if cut.as_ref().is_none_or(|(c, _)| *c != k) {
                    let mut packed = vec![0; (c1 - c0) as usize];
                    file.read_exact_at(&mut packed, c0)?;
                    cut = Some((k, members_of(&packed, t1 - t0)?));
                }
                let members = &cut.as_ref().expect("just read").1;
                let rel = pos - t0;
                let m = members.partition_point(|m| m.raw.end <= rel);
                let whole = members[m..]
                    .iter()
                    .take_while(|n| t0 + n.raw.end <= end)
                    .count();
                if rel == members[m].raw.start && whole > 0 {
                    let (from, to) = (&members[m], &members[m + whole - 1]);
                    Some((
                        c0 + from.packed.start as u64..c0 + to.packed.end as u64,
                        t0 + from.raw.start..t0 + to.raw.end,
                    ))
                } else {
                    let to = end.min(t0 + members[m].raw.end);
                    push_new(
                        &mut items,
                        Piece::First {
                            start: pos,
                            len: to - pos,
                        },
                    );
                    pos = to;
                    None
                }
            };
            if let Some((packed, tar)) = kept {
                if packed.start < kept_end {
                    return Ok(None);
                }
                kept_end = packed.end;
                pos = tar.end;
                match items.last_mut() {
                    Some(Item::Keep { packed: p, tar: t }) if p.end == packed.start => {
                        p.end = packed.end;
                        t.end = tar.end;
                    }
                    _ => items.push(Item::Keep { packed, tar }),
                }
            }
        }
    }
    Ok(Some(items))
}

/// Appends `piece` to the new stretch at the end of `items`, or starts one.
fn push_new(items: &mut Vec<Item>, piece: Piece) {
    match items.last_mut() {
        Some(Item::New(pieces)) => pieces.push(piece),
        _ => items.push(Item::New(vec![piece])),
    }
}

/// A kept run that holds at least one whole block: those blocks stay where they are.
#[derive(Debug)]
struct Anchor {
    /// Its `Item::Keep`.
    item: usize,
    /// The whole blocks inside its bytes.
    blocks: Range<u64>,
}

/// Where a part of a gap comes from.
#[derive(Debug)]
enum What {
    /// Bytes of the first pass's file, read before anything moves.
    Original(Range<u64>),
    /// Bytes of the scratch file.
    Scratch(Range<u64>),
    /// A padding member this long.
    Pad(u64),
}

#[derive(Debug)]
struct Part {
    what: What,
    /// The item this part belongs to, when the item may begin here (`None` for a padding
    /// member and for an anchor's tail, whose item began before it).
    item: Option<usize>,
}

impl Part {
    fn len(&self) -> u64 {
        match self.what {
            What::Original(ref r) | What::Scratch(ref r) => r.end - r.start,
            What::Pad(n) => n,
        }
    }
}

/// What lies between two anchors (or before the first, or after the last).
#[derive(Debug)]
struct Gap {
    /// Its bytes in the first pass's file, block-aligned but at the end of the file.
    span: Range<u64>,
    /// What it holds in the final file, in order.
    parts: Vec<Part>,
}

impl Gap {
    fn len(&self) -> u64 {
        self.parts.iter().map(Part::len).sum()
    }
}

/// The final file: gap 0, anchor 0's blocks, gap 1, …, the last gap.
#[derive(Debug)]
struct Layout {
    anchors: Vec<Anchor>,
    gaps: Vec<Gap>,
    /// Where each item begins in the final file, and in the final tar stream.
    starts: Vec<u64>,
    tar_starts: Vec<u64>,
    /// The final file's length and tar stream's.
    len: u64,
    tar_len: u64,
}

impl Layout {
    /// The layout of `items`, the `n`th `Item::New` being `new(n)` in the scratch file.
    /// `visit` sees each gap as soon as it is laid out, in order, with the anchor after it
    /// and where that anchor's item begins in the final tar stream.
    fn new(
        items: &[Item],
        eof: u64,
        mut new: impl FnMut(usize) -> Result<Range<u64>, ArchiveError>,
        mut visit: impl FnMut(&Gap, Option<(&Anchor, u64)>) -> Result<(), ArchiveError>,
    ) -> Result<Layout, ArchiveError> {
        let anchors: Vec<Anchor> = items
            .iter()
            .enumerate()
            .filter_map(|(item, it)| match it {
                Item::Keep { packed, .. } => {
                    let blocks = packed.start.div_ceil(ALIGN) * ALIGN..packed.end / ALIGN * ALIGN;
                    (blocks.end > blocks.start).then_some(Anchor { item, blocks })
                }
                Item::New(_) => None,
            })
            .collect();
        let packed = |item: usize| match &items[item] {
            Item::Keep { packed, .. } => packed.clone(),
            Item::New(_) => unreachable!("anchors are kept items"),
        };
        let mut tar_starts = Vec::with_capacity(items.len());
        let mut tar_at = 0;
        for item in items {
            tar_starts.push(tar_at);
            tar_at += item.tar_len();
        }
        let mut gaps = Vec::with_capacity(anchors.len() + 1);
        let mut next_new = 0;
        for g in 0..=anchors.len() {
            let (prev, next) = (g.checked_sub(1).map(|i| &anchors[i]), anchors.get(g));
            let span = prev.map_or(0, |a| a.blocks.end)..next.map_or(eof, |a| a.blocks.start);
            let mut parts = Vec::new();
            if let Some(a) = prev {
                parts.push(Part {
                    what: What::Original(a.blocks.end..packed(a.item).end),
                    item: None,
                });
            }
            let items_from = prev.map_or(0, |a| a.item + 1);
            let items_to = next.map_or(items.len(), |a| a.item);
            for (i, item) in items.iter().enumerate().take(items_to).skip(items_from) {
                let what = match item {
                    Item::Keep { packed, .. } => What::Original(packed.clone()),
                    Item::New(_) => {
                        next_new += 1;
                        What::Scratch(new(next_new - 1)?)
                    }
                };
                parts.push(Part {
                    what,
                    item: Some(i),
                });
            }
            if let Some(a) = next {
                let head = packed(a.item).start..a.blocks.start;
                let len: u64 = parts.iter().map(Part::len).sum::<u64>() + (head.end - head.start);
                let mut pad = (ALIGN - len % ALIGN) % ALIGN;
                while pad != 0 && pad < PAD_MIN as u64 {
                    pad += ALIGN;
                }
                if pad > 0 {
                    parts.push(Part {
                        what: What::Pad(pad),
                        item: None,
                    });
                }
                // Pushed even when empty: it marks where the anchor's item begins.
                parts.push(Part {
                    what: What::Original(head),
                    item: Some(a.item),
                });
            }
            let gap = Gap { span, parts };
            visit(&gap, next.map(|a| (a, tar_starts[a.item])))?;
            gaps.push(gap);
        }
        // Where each item begins: at its first part, in the final order.
        let (mut starts, mut at) = (vec![None; items.len()], 0u64);
        for (g, gap) in gaps.iter().enumerate() {
            for part in &gap.parts {
                if let Some(i) = part.item {
                    starts[i].get_or_insert(at);
                }
                at += part.len();
            }
            if let Some(a) = anchors.get(g) {
                at += a.blocks.end - a.blocks.start;
            }
        }
        Ok(Layout {
            anchors,
            gaps,
            starts: starts
                .into_iter()
                .map(|s| s.expect("every item has a part"))
                .collect(),
            tar_starts,
            len: at,
            tar_len: tar_at,
        })
    }

    /// The final file's member table: the first pass's chunk starts inside kept items
    /// (and each kept item's own start), the scratch file's inside new ones, moved to
    /// where they are now.
    fn member_table(
        &self,
        items: &[Item],
        table: &[(u64, u64)],
        scratch_table: &[(u64, u64)],
        new_tar: &[Range<u64>],
    ) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut next_new = 0;
        for (i, item) in items.iter().enumerate() {
            let (at, tar_at) = (self.starts[i], self.tar_starts[i]);
            match item {
                Item::Keep { packed, tar } => {
                    out.push((at, tar_at));
                    let from = table.partition_point(|&(c, _)| c <= packed.start);
                    for &(c, t) in table[from..].iter().take_while(|&&(c, _)| c < packed.end) {
                        out.push((at + c - packed.start, tar_at + t - tar.start));
                    }
                }
                Item::New(_) => {
                    let r = &new_tar[next_new];
                    next_new += 1;
                    let from = scratch_table.partition_point(|&(_, t)| t < r.start);
                    let base = scratch_table.get(from).map_or(0, |&(c, _)| c);
                    for &(c, t) in scratch_table[from..]
                        .iter()
                        .take_while(|&&(_, t)| t < r.end)
                    {
                        out.push((at + c - base, tar_at + t - r.start));
                    }
                }
            }
        }
        out
    }
}

fn piece_len(piece: &Piece) -> u64 {
    match *piece {
        Piece::First { len, .. } | Piece::Delta { len, .. } => len,
    }
}

/// Adds `range` of `file` to `hash`, read in large blocks.
fn hash_range(file: &File, range: Range<u64>, buf: &mut [u8], hash: &mut Sha256) -> io::Result<()> {
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        hash.update(&buf[..n]);
        at += n as u64;
    }
    Ok(())
}

/// Whether the filesystem holding `file` moves extents for `fallocate`'s collapse and
/// insert, with blocks that divide [`ALIGN`].
fn movable(file: &File) -> bool {
    let Ok(fs) = nix::sys::statfs::fstatfs(file) else {
        return false;
    };
    let kind = fs.filesystem_type();
    (kind == nix::sys::statfs::EXT4_SUPER_MAGIC || kind == nix::sys::statfs::XFS_SUPER_MAGIC)
        && fs.block_size() > 0
        && ALIGN as i64 % fs.block_size() == 0
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
