//! The layout of a tree copy: what turns the restic tree of a snapshot's entries back into
//! the snapshot's tar stream, byte for byte.
//!
//! A tree copy stores each tar entry as a restic node (a file's content chunked on its
//! own). What no node holds — the exact header bytes with their extensions, PAX records
//! and sparse maps, the padding, the end-of-archive blocks — is kept here, in tar order,
//! as records of two parts:
//! - the *gap*: the bytes between the previous entry's data (or the start) and this
//!   entry's data, as they are;
//! - the *data*: which node (its path below the snapshot's folder) and which of its bytes
//!   the tar stream holds there (a sparse file's stored segments; else its first
//!   `stored` bytes). A record with an empty path has no data.
//!
//! File: `ASLAYOUT` and the tar stream's length (u64 LE), then blocks, each the tar
//! offset of its first byte (u64 LE), its compressed length (u32 LE) and a gzip member
//! of records. Record: gap length (u32 LE) and bytes, path length (u32 LE) and bytes,
//! stored length (u64 LE), segment count (u32 LE) and that many (offset, length) u64 LE
//! pairs. Blocks let a reader start near any offset without inflating the whole layout.
//!
//! Read back from a repository, a layout is untrusted input: every length is bounded
//! before it is used, the blocks must cover the stream exactly, and whoever rebuilds a
//! whole stream checks it against the recorded sha256.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

const MAGIC: &[u8; 8] = b"ASLAYOUT";
/// Raw bytes of records a writer puts in one block before it starts the next.
const BLOCK_RAW: usize = 256 << 10;
/// Longest gap a record may have: headers with 64 KiB of extensions, and the extension
/// blocks of a sparse map of a million segments (~24 MiB).
pub const MAX_GAP: u32 = 32 << 20;
/// Longest path of a record.
const MAX_PATH: u32 = 64 << 10;
/// Most bytes one block inflates to: one record of the largest size, and then some.
const MAX_BLOCK: u64 = (MAX_GAP as u64) * 2;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the copy's layout: {}", msg.into()),
    )
}

/// One record (see the module's documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub gap: Vec<u8>,
    /// The node's path below the snapshot's folder; empty: no data.
    pub path: Vec<u8>,
    /// Bytes of data the tar stream holds after the gap.
    pub stored: u64,
    /// `(offset, length)` of a sparse file's stored segments in the node's content;
    /// empty: the content's first `stored` bytes.
    pub segments: Vec<(u64, u64)>,
}

impl Record {
    /// Bytes of the tar stream the record stands for.
    pub fn len(&self) -> u64 {
        self.gap.len() as u64 + self.stored
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends its encoding to `out`.
    pub fn encode(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&(self.gap.len() as u32).to_le_bytes())?;
        out.write_all(&self.gap)?;
        out.write_all(&(self.path.len() as u32).to_le_bytes())?;
        out.write_all(&self.path)?;
        out.write_all(&self.stored.to_le_bytes())?;
        out.write_all(&(self.segments.len() as u32).to_le_bytes())?;
        for (off, len) in &self.segments {
            out.write_all(&off.to_le_bytes())?;
            out.write_all(&len.to_le_bytes())?;
        }
        Ok(())
    }

    /// The next record of `input`, `None` at its clean end; every length bounded first.
    pub fn decode(input: &mut impl Read) -> io::Result<Option<Record>> {
        let mut first = [0u8; 4];
        match input.read(&mut first[..1])? {
            0 => return Ok(None),
            _ => input.read_exact(&mut first[1..])?,
        }
        let gap_len = u32::from_le_bytes(first);
        if gap_len > MAX_GAP {
            return Err(bad(format!("a gap of {gap_len} bytes")));
        }
        let mut gap = vec![0; gap_len as usize];
        input.read_exact(&mut gap)?;
        let path_len = u32_le(input)?;
        if path_len > MAX_PATH {
            return Err(bad(format!("a path of {path_len} bytes")));
        }
        let mut path = vec![0; path_len as usize];
        input.read_exact(&mut path)?;
        let stored = u64_le(input)?;
        let count = u32_le(input)? as usize;
        if count > crate::archive::tar_read::MAX_SPARSE_SEGMENTS {
            return Err(bad(format!("{count} sparse segments")));
        }
        let mut segments = Vec::with_capacity(count.min(1024));
        let (mut end, mut total) = (0u64, 0u64);
        for _ in 0..count {
            let (off, len) = (u64_le(input)?, u64_le(input)?);
            let stop = off
                .checked_add(len)
                .filter(|_| off >= end)
                .ok_or_else(|| bad("sparse segments out of order"))?;
            end = stop;
            total = total.saturating_add(len);
            segments.push((off, len));
        }
        if count > 0 && total != stored {
            return Err(bad(
                "sparse segments that do not add up to the stored bytes",
            ));
        }
        if path.is_empty() && stored > 0 {
            return Err(bad("data without a node"));
        }
        Ok(Some(Record {
            gap,
            path,
            stored,
            segments,
        }))
    }
}

fn u32_le(input: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn u64_le(input: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    input.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Writes a layout: records in tar order go in, blocks come out into `out`.
pub struct Writer<W: Write> {
    out: W,
    /// Raw records of the block being filled, and the tar offset of its first byte.
    raw: Vec<u8>,
    block_start: u64,
    /// Tar bytes the records so far stand for.
    at: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, tar_bytes: u64) -> io::Result<Writer<W>> {
        out.write_all(MAGIC)?;
        out.write_all(&tar_bytes.to_le_bytes())?;
        Ok(Writer {
            out,
            raw: Vec::new(),
            block_start: 0,
            at: 0,
        })
    }

    pub fn push(&mut self, record: &Record) -> io::Result<()> {
        record.encode(&mut self.raw)?;
        self.at += record.len();
        if self.raw.len() >= BLOCK_RAW {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> io::Result<()> {
        if self.raw.is_empty() {
            return Ok(());
        }
        let mut gz = GzEncoder::new(Vec::new(), Compression::new(6));
        gz.write_all(&self.raw)?;
        let block = gz.finish()?;
        self.out.write_all(&self.block_start.to_le_bytes())?;
        self.out.write_all(&(block.len() as u32).to_le_bytes())?;
        self.out.write_all(&block)?;
        self.raw.clear();
        self.block_start = self.at;
        Ok(())
    }

    /// Writes the last block; returns the output and the tar bytes the records stand for.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.flush_block()?;
        Ok((self.out, self.at))
    }
}

/// A layout read back: its blocks, still compressed, and where each starts.
pub struct Layout {
    bytes: Bytes,
    /// Per block: its first tar offset and its range in `bytes`.
    blocks: Vec<(u64, std::ops::Range<usize>)>,
    pub tar_bytes: u64,
}

impl Layout {
    /// Parses the framing of `bytes` (no block is inflated yet): the blocks must start at
    /// 0 and at increasing offsets within the stream.
    pub fn parse(bytes: Bytes) -> io::Result<Layout> {
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(bad("not a layout file"));
        }
        let tar_bytes = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let mut blocks = Vec::new();
        let mut at = 16usize;
        while at < bytes.len() {
            if bytes.len() - at < 12 {
                return Err(bad("a block header cut short"));
            }
            let start = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
            let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4")) as usize;
            let body = at + 12..at + 12 + len;
            if body.end > bytes.len() {
                return Err(bad("a block cut short"));
            }
            let in_order = match blocks.last() {
                None => start == 0,
                Some((prev, _)) => start > *prev && start <= tar_bytes,
            };
            if !in_order {
                return Err(bad("blocks out of order"));
            }
            blocks.push((start, body.clone()));
            at = body.end;
        }
        if blocks.is_empty() {
            return Err(bad("no blocks"));
        }
        Ok(Layout {
            bytes,
            blocks,
            tar_bytes,
        })
    }

    /// The records of block `i`, with the tar offset of the first.
    fn block(&self, i: usize) -> io::Result<(u64, Vec<Record>)> {
        let (start, range) = &self.blocks[i];
        let gz = GzDecoder::new(&self.bytes[range.clone()]);
        let mut raw = io::BufReader::new(gz.take(MAX_BLOCK));
        let mut records = Vec::new();
        while let Some(r) = Record::decode(&mut raw)? {
            records.push(r);
        }
        // The block must end where the next begins (or at the stream's end).
        let end = self.blocks.get(i + 1).map_or(self.tar_bytes, |(s, _)| *s);
        let covered = records.iter().map(Record::len).sum::<u64>();
        if start.checked_add(covered) != Some(end) {
            return Err(bad("a block does not cover its part of the stream"));
        }
        Ok((*start, records))
    }
}

/// Where a rebuilt stream gets a node's bytes: at most `len` bytes of the node at `path`
/// (below the snapshot's folder) from `offset`; at least one unless at its end. A
/// source that reads in blocks (a repository's blobs) may stop at a block's end.
pub trait Nodes: Send + Sync {
    fn read(&self, path: &[u8], offset: u64, len: usize) -> io::Result<Bytes>;
}

/// The tar stream a layout describes, from any offset: gaps from the layout, data from
/// the nodes.
pub struct Rebuilt {
    layout: Arc<Layout>,
    nodes: Arc<dyn Nodes>,
    block: usize,
    records: Vec<Record>,
    /// Record being read, and the position inside it (gap first, then data).
    record: usize,
    inside: u64,
    /// The record's data from `inside` on, as far as the last node read went: a node is
    /// read [`READ`] bytes at a time whatever the caller's buffer (`io::copy` asks for
    /// 8 KiB), since each read fetches (and pays the rate limit for) whole blobs.
    ahead: Bytes,
}

/// Most bytes one read of a node asks for: restic's largest chunk, so that a read that
/// starts at a blob's start can end at a blob's end.
const READ: usize = 8 << 20;

impl Rebuilt {
    /// The stream from tar offset `at` on.
    pub fn at(layout: Arc<Layout>, nodes: Arc<dyn Nodes>, at: u64) -> io::Result<Rebuilt> {
        if at > layout.tar_bytes {
            return Err(bad("an offset past the stream's end"));
        }
        let block = layout
            .blocks
            .partition_point(|(start, _)| *start <= at)
            .saturating_sub(1);
        let (mut start, records) = layout.block(block)?;
        let mut record = 0;
        while record < records.len() && start + records[record].len() <= at {
            start += records[record].len();
            record += 1;
        }
        Ok(Rebuilt {
            layout,
            nodes,
            block,
            records,
            record,
            inside: at - start,
            ahead: Bytes::new(),
        })
    }

    /// Bytes of the data part of `r` at `offset` (within `stored`), at most `max`.
    fn data(&self, r: &Record, offset: u64, max: usize) -> io::Result<Bytes> {
        let (node_at, left) = if r.segments.is_empty() {
            (offset, r.stored - offset)
        } else {
            // The stored bytes are the segments one after the other.
            let mut skip = offset;
            let mut found = None;
            for &(off, len) in &r.segments {
                if skip < len {
                    found = Some((off + skip, len - skip));
                    break;
                }
                skip -= len;
            }
            found.ok_or_else(|| bad("an offset past a file's segments"))?
        };
        let want = (left.min(max as u64) as usize).min(READ);
        let got = self.nodes.read(&r.path, node_at, want)?;
        if got.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a file of the copy is shorter than its layout says",
            ));
        }
        Ok(got)
    }
}

impl Read for Rebuilt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if buf.is_empty() {
                return Ok(0);
            }
            if self.record >= self.records.len() {
                if self.block + 1 >= self.layout.blocks.len() {
                    return Ok(0);
                }
                self.block += 1;
                self.records = self.layout.block(self.block)?.1;
                self.record = 0;
                self.inside = 0;
                continue;
            }
            let r = &self.records[self.record];
            let gap = r.gap.len() as u64;
            if self.inside < gap {
                let from = self.inside as usize;
                let n = (r.gap.len() - from).min(buf.len());
                buf[..n].copy_from_slice(&r.gap[from..from + n]);
                self.inside += n as u64;
                return Ok(n);
            }
            if self.inside < r.len() {
                if self.ahead.is_empty() {
                    self.ahead = self.data(r, self.inside - gap, READ)?;
                }
                let n = self.ahead.len().min(buf.len());
                buf[..n].copy_from_slice(&self.ahead.split_to(n));
                self.inside += n as u64;
                return Ok(n);
            }
            self.record += 1;
            self.inside = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Mem(HashMap<Vec<u8>, Vec<u8>>);

    impl Nodes for Mem {
        fn read(&self, path: &[u8], offset: u64, len: usize) -> io::Result<Bytes> {
            let data = self
                .0
                .get(path)
                .ok_or_else(|| io::Error::other("no node"))?;
            let from = (offset as usize).min(data.len());
            let to = (from + len).min(data.len());
            Ok(Bytes::copy_from_slice(&data[from..to]))
        }
    }

    #[test]
    fn a_stream_is_rebuilt_from_any_offset_across_blocks_and_segments() {
        let mut nodes = HashMap::new();
        let mut records = Vec::new();
        let mut expected = Vec::new();
        for i in 0..3000u32 {
            let gap: Vec<u8> = (0..(i % 700)).map(|b| (b ^ i) as u8).collect();
            let name = format!("f{i}").into_bytes();
            let content: Vec<u8> = (0..(i % 1300)).map(|b| (b * 7 + i) as u8).collect();
            expected.extend_from_slice(&gap);
            let (stored, segments) = if i % 5 == 0 && content.len() > 100 {
                // A sparse file: two segments of its content.
                let segs = vec![(10, 20), (60, content.len() as u64 - 60)];
                for &(o, l) in &segs {
                    expected.extend_from_slice(&content[o as usize..(o + l) as usize]);
                }
                (20 + content.len() as u64 - 60, segs)
            } else {
                expected.extend_from_slice(&content);
                (content.len() as u64, Vec::new())
            };
            let path = if stored > 0 { name.clone() } else { Vec::new() };
            nodes.insert(name, content);
            records.push(Record {
                gap,
                path,
                stored,
                segments,
            });
        }
        let mut w = Writer::new(Vec::new(), expected.len() as u64).unwrap();
        for r in &records {
            w.push(r).unwrap();
        }
        let (file, total) = w.finish().unwrap();
        assert_eq!(total, expected.len() as u64);
        let layout = Arc::new(Layout::parse(Bytes::from(file)).unwrap());
        assert!(layout.blocks.len() > 1, "several blocks");
        let nodes: Arc<dyn Nodes> = Arc::new(Mem(nodes));
        for at in [
            0,
            1,
            511,
            100_000,
            expected.len() as u64 / 2,
            expected.len() as u64,
        ] {
            let mut got = Vec::new();
            Rebuilt::at(Arc::clone(&layout), Arc::clone(&nodes), at)
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            assert!(got == expected[at as usize..], "from {at}");
        }
    }

    #[test]
    fn a_forged_layout_is_refused_before_anything_is_allocated() {
        assert!(Layout::parse(Bytes::from_static(b"nonsense")).is_err());
        let mut raw = Vec::new();
        raw.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Record::decode(&mut &raw[..]).is_err(), "a 4 GiB gap");
        let mut w = Writer::new(Vec::new(), 999).unwrap();
        w.push(&Record {
            gap: vec![1; 10],
            ..Record::default()
        })
        .unwrap();
        let (file, _) = w.finish().unwrap();
        let layout = Layout::parse(Bytes::from(file)).unwrap();
        assert!(
            layout.block(0).is_err(),
            "a block that does not cover the stream"
        );
    }
}
