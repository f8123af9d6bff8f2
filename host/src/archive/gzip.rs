//! Parallel gzip made of independent members (the pigz idea, without the shared
//! dictionary), so that both ends can use every core.
//!
//! The tar stream is cut into chunks; each chunk is compressed on a worker thread into one
//! or more complete gzip members, and a writer thread puts them in order into the file.
//! `gzip -d`, `tar -xz` and every zlib reader accept concatenated members, so the result is
//! an ordinary `.tar.gz`.
//!
//! Two details make it fast *and* small:
//! - Each chunk is classified in 64 KiB blocks by byte entropy. Runs of blocks that look
//!   already compressed (media, encrypted or compressed pages) become *stored* members,
//!   which cost a copy instead of a deflate that would save nothing.
//! - Each member carries the BGZF-style extra field `AS` with its own length, so a reader
//!   can find member boundaries without inflating and inflate them in parallel (restore).
//!
//! Memory is bounded: a fixed pool of [`Slot`]s (input chunk + output buffer) circulates
//! between the producer, the workers and the writer; the producer blocks when all are in
//! flight.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use libdeflater::{CompressionLvl, Compressor, Crc};
use sha2::{Digest, Sha256};

/// Classification granularity: small enough to isolate a JPEG inside a chunk of text.
const BLOCK: usize = 64 * 1024;
/// Byte entropy (bits per byte) above which a block is stored rather than deflated.
/// Random and already-compressed data sit at 7.95–8.0; text and database pages far below.
const STORE_ENTROPY: f64 = 7.9;
/// A stored deflate block holds at most 65535 bytes.
const STORED_MAX: usize = 65535;
/// Fixed header length: 10 bytes + XLEN(2) + subfield `AS` (2 + 2 + 4).
pub const HEADER_LEN: usize = 20;
/// Trailer length: CRC-32 of the member's data, then its length (ISIZE), little-endian.
pub const TRAILER_LEN: usize = 8;
/// Every appsnap member's header before its `AS` value (the member's length, 4 bytes).
const HEADER_BEFORE_LEN: [u8; HEADER_LEN - 4] = [
    0x1f, 0x8b, 8, 0x04, // magic, deflate, FLG.FEXTRA
    0, 0, 0, 0, // MTIME unknown: the tar headers carry the real times
    0, 3, // XFL, OS = Unix
    8, 0, // XLEN
    b'A', b'S', 4, 0, // subfield "AS", 4 bytes: this member's total length
];

/// One unit of work in flight: a chunk of the tar stream and the members made from it.
pub struct Slot {
    /// Submission order, set by `submit`: the writer puts slots out in this order.
    seq: u64,
    /// The chunk of tar stream, filled by the producer; emptied (capacity kept) by the
    /// hasher before the slot goes back to the pool.
    pub raw: Vec<u8>,
    /// The complete gzip members made from `raw`, written to the output as they are.
    packed: Vec<u8>,
    /// `packed` came filled, with members of an earlier archive holding this many bytes
    /// of tar stream, reused as they are: nothing to compress, and the tar stream they
    /// hold never passes here, so the pipeline cannot hash it.
    reused: Option<u64>,
    /// Why the worker could not do its part: the writer stops with it.
    failed: Option<String>,
}

/// What the writer thread reports at the end.
#[derive(Debug, Clone)]
pub struct Written {
    /// Bytes written to the output: the archive's size.
    pub compressed_bytes: u64,
    /// Of the gzip file.
    pub sha256: [u8; 32],
    /// Of the tar stream before compression: what an offsite copy holds, so a copy
    /// fetched back can be checked against the backup that made it. `None` when it was
    /// not asked for, or when members were reused ([`ParallelGzip::submit_reused`]):
    /// their tar bytes were never seen.
    pub raw_sha256: Option<[u8; 32]>,
    /// `(compressed offset, tar offset)` where each chunk's members begin, in order: the
    /// member table a reader uses to inflate only what holds the bytes it wants.
    pub chunks: Vec<(u64, u64)>,
}

/// What the writer thread returns: the members' length, the chunk table, the output.
type WriterResult<W> = io::Result<(u64, Vec<(u64, u64)>, W)>;

/// The producer side of the pipeline: take a slot, fill `raw`, submit it.
///
/// Behind it run `threads` compression workers, one writer and one hasher of the raw
/// stream; they end when `finish` closes the work queue, or soon after the writer fails.
pub struct ParallelGzip<W> {
    pool: Receiver<Slot>,
    work: Option<SyncSender<Slot>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<WriterResult<W>>>,
    packed_hasher: Option<JoinHandle<[u8; 32]>>,
    raw_hasher: Option<JoinHandle<Option<[u8; 32]>>>,
    next_seq: u64,
    /// Bytes of tar stream the producer puts in a slot before submitting it. A member never
    /// holds more than one chunk, and the parallel reader refuses members of more than
    /// `read::MAX_MEMBER_RAW` (4 MiB): a larger chunk makes archives it cannot read.
    pub chunk_size: usize,
}

impl<W: Write + Send + 'static> ParallelGzip<W> {
    /// Starts `threads` compression workers and one writer thread writing into `out`.
    /// `level` is the libdeflate level 0–12 (0 = store everything). There are
    /// `2 × threads + 2` slots, each holding a chunk and its members: that bounds memory.
    /// Panics only if a thread cannot be spawned.
    pub fn new(out: W, level: u32, threads: usize, chunk_size: usize) -> ParallelGzip<W> {
        Self::with_members(out, level, threads, chunk_size, None, true)
    }

    /// As [`new`](Self::new), with no member holding more than `member_size` bytes of tar
    /// stream (`None`: a member per chunk, or per run of like blocks in it). A pre-copy's
    /// first pass writes small members inside its chunks, so that its assembly recompresses
    /// only the members a change cuts, while the pipeline still moves whole chunks (a
    /// small chunk costs a few thread hand-offs each: 64 KiB chunks made a first pass of
    /// 1 GiB 1.5 s slower). The tar stream is hashed only when `raw_hash` asks for it
    /// (else `raw_sha256` is `None`).
    pub fn with_members(
        out: W,
        level: u32,
        threads: usize,
        chunk_size: usize,
        member_size: Option<usize>,
        raw_hash: bool,
    ) -> ParallelGzip<W> {
        Self::start(out, level, threads, chunk_size, member_size, raw_hash, None)
    }

    /// As [`new`](Self::new), for a scratch output that another thread reads as it is
    /// written (an in-place assembly's new members): with the writer's [`Progress`] to
    /// follow, and no hash of the output — that reader hashes what it takes, and on two
    /// cores the pipeline's own hash would slow it down. `Written::sha256` is then all
    /// zeros. The tar stream is hashed only when `raw_hash` asks for it (else
    /// `raw_sha256` is `None`).
    pub fn scratch(
        out: W,
        level: u32,
        threads: usize,
        chunk_size: usize,
        raw_hash: bool,
    ) -> (ParallelGzip<W>, Arc<Progress>) {
        let progress = Arc::new(Progress::default());
        let gz = Self::start(
            out,
            level,
            threads,
            chunk_size,
            None,
            raw_hash,
            Some(Arc::clone(&progress)),
        );
        (gz, progress)
    }

    fn start(
        out: W,
        level: u32,
        threads: usize,
        chunk_size: usize,
        member_size: Option<usize>,
        hash_raw_too: bool,
        watch: Option<Arc<Progress>>,
    ) -> ParallelGzip<W> {
        let hash_packed_too = watch.is_none();
        let member_size = member_size.unwrap_or(usize::MAX).max(1);
        let threads = threads.max(1);
        let slots = threads * 2 + 2;
        let (pool_tx, pool) = sync_channel::<Slot>(slots);
        for _ in 0..slots {
            pool_tx
                .send(Slot {
                    seq: 0,
                    raw: Vec::with_capacity(chunk_size),
                    packed: Vec::new(),
                    reused: None,
                    failed: None,
                })
                .expect("pool has room for every slot");
        }
        let (work_tx, work_rx) = sync_channel::<Slot>(slots);
        let work_rx = Arc::new(Mutex::new(work_rx));
        let (done_tx, done_rx) = sync_channel::<Slot>(slots);
        let workers = (0..threads)
            .map(|i| {
                let work_rx = Arc::clone(&work_rx);
                let done_tx = done_tx.clone();
                thread::Builder::new()
                    .name(format!("appsnap-gzip-{i}"))
                    .spawn(move || worker(level, member_size, &work_rx, &done_tx))
                    .expect("spawn gzip worker")
            })
            .collect();
        drop(done_tx);
        // The writer passes each written slot on to be hashed (its members, then its tar
        // bytes, each on a thread of its own), and the last hasher frees it.
        let (written_tx, written_rx) = sync_channel::<Slot>(slots);
        let (hashed_tx, hashed_rx) = sync_channel::<Slot>(slots);
        let packed_hasher = thread::Builder::new()
            .name("appsnap-gzip-sha".into())
            .spawn(move || hash_packed(&written_rx, &hashed_tx, hash_packed_too))
            .expect("spawn gzip hasher");
        let raw_hasher = thread::Builder::new()
            .name("appsnap-gzip-hash".into())
            .spawn(move || hash_raw(&hashed_rx, &pool_tx, hash_raw_too))
            .expect("spawn gzip hasher");
        let writer = thread::Builder::new()
            .name("appsnap-gzip-writer".into())
            .spawn(move || write_in_order(out, &done_rx, &written_tx, watch.as_deref()))
            .expect("spawn gzip writer");
        ParallelGzip {
            pool,
            work: Some(work_tx),
            workers,
            writer: Some(writer),
            packed_hasher: Some(packed_hasher),
            raw_hasher: Some(raw_hasher),
            next_seq: 0,
            chunk_size,
        }
    }

    /// A free slot with an empty `raw` buffer; blocks while all slots are in flight.
    /// `None` means the pipeline broke down (the writer failed): call [`finish`] for why.
    pub fn take(&mut self) -> Option<Slot> {
        self.pool.recv().ok()
    }

    /// Hands `members`, complete gzip members of an earlier archive, to the pipeline to be
    /// written as they are, neither inflated nor checked: they are this process's own
    /// output of moments ago (a pre-copy's first pass), trusted as a stop-mode archive's
    /// members are. The tar stream's hash is then unknown (`Written::raw_sha256`).
    /// `false` means the pipeline broke down.
    pub fn submit_reused(&mut self, members: &[u8], raw_len: u64) -> bool {
        let Some(mut slot) = self.take() else {
            return false;
        };
        slot.packed.clear();
        slot.packed.extend_from_slice(members);
        slot.reused = Some(raw_len);
        self.submit(slot)
    }

    /// Hands a filled slot to the workers. `false` means the pipeline broke down.
    /// Slots are numbered as submitted and written in that order, whichever worker ends
    /// first.
    pub fn submit(&mut self, mut slot: Slot) -> bool {
        slot.seq = self.next_seq;
        self.next_seq += 1;
        match &self.work {
            Some(work) => work.send(slot).is_ok(),
            None => false,
        }
    }

    /// Waits for every submitted chunk to be written and flushed; returns the writer's
    /// result (its first I/O error, e.g. ENOSPC, if any) and the output back.
    pub fn finish(mut self) -> io::Result<(Written, W)> {
        self.work = None;
        // A worker that panicked took its chunk with it: the writer would end the archive
        // short of it, so the archive is an error, never a shorter "success".
        let lost_chunk = self
            .workers
            .drain(..)
            .map(JoinHandle::join)
            .fold(false, |lost, joined| lost | joined.is_err());
        let written = match self.writer.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err(io::Error::other("gzip writer thread panicked")),
        };
        // It ends once the writer has (the writer holds its channel). The writer's error,
        // if any, is the one to report (ENOSPC says more than a lost hash).
        let sha256 = self.packed_hasher.take().map(JoinHandle::join);
        let raw_sha256 = self.raw_hasher.take().map(JoinHandle::join);
        let (compressed_bytes, chunks, out) = written?;
        if lost_chunk {
            return Err(io::Error::other("a gzip compression thread panicked"));
        }
        let (Some(Ok(sha256)), Some(Ok(raw_sha256))) = (sha256, raw_sha256) else {
            return Err(io::Error::other("gzip hasher thread panicked"));
        };
        Ok((
            Written {
                compressed_bytes,
                sha256,
                raw_sha256,
                chunks,
            },
            out,
        ))
    }
}

/// One compression thread: takes slots off the shared queue, fills their `packed`, and
/// passes them to the writer. Level 0 has no deflater, so every member is stored. Ends when
/// the queue closes (`finish`) or the writer is gone.
fn worker(level: u32, member_size: usize, work: &Mutex<Receiver<Slot>>, done: &SyncSender<Slot>) {
    let mut deflater = (level > 0).then(|| Deflater::new(level));
    loop {
        // Hold the lock only to receive, never while compressing.
        let next = work.lock().map(|rx| rx.recv());
        let Ok(Ok(mut slot)) = next else { return };
        if slot.reused.is_none() {
            slot.packed.clear();
            compress_chunk(deflater.as_mut(), &slot.raw, &mut slot.packed, member_size);
        }
        if done.send(slot).is_err() {
            return;
        }
    }
}

/// A libdeflate compressor with its own output buffer, sized once for the largest input
/// seen, so that no member pays for zeroing a fresh buffer.
pub struct Deflater {
    compressor: Compressor,
    scratch: Vec<u8>,
}

impl Deflater {
    /// A compressor at libdeflate `level`; a level libdeflate does not accept falls back to
    /// its default (6).
    pub fn new(level: u32) -> Deflater {
        Deflater {
            compressor: Compressor::new(CompressionLvl::new(level as i32).unwrap_or_default()),
            scratch: Vec::new(),
        }
    }

    /// The deflated bytes, or `None` when deflate would not make `data` smaller.
    fn deflate(&mut self, data: &[u8]) -> Option<&[u8]> {
        let bound = self.compressor.deflate_compress_bound(data.len());
        if self.scratch.len() < bound {
            self.scratch.resize(bound, 0);
        }
        match self.compressor.deflate_compress(data, &mut self.scratch) {
            Ok(n) if n < data.len() => Some(&self.scratch[..n]),
            _ => None,
        }
    }
}

/// Writes the members in order. Each written slot goes on to [`hash_packed`]. Slots finished ahead of their turn wait in a map, at most the slots in
/// flight. Returns, after a flush, once every worker is gone, or at the first write error.
fn write_in_order<W: Write>(
    mut out: W,
    done: &Receiver<Slot>,
    written: &SyncSender<Slot>,
    watch: Option<&Progress>,
) -> WriterResult<W> {
    // However the writer ends, whoever follows it stops waiting.
    struct Ended<'a>(Option<&'a Progress>);
    impl Drop for Ended<'_> {
        fn drop(&mut self) {
            if let Some(p) = self.0 {
                p.update(|s| s.ended = true);
            }
        }
    }
    let _ended = Ended(watch);
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    let (mut total, mut raw_total) = (0u64, 0u64);
    let mut chunks = Vec::new();
    while let Ok(slot) = done.recv() {
        pending.insert(slot.seq, slot);
        while let Some(mut slot) = pending.remove(&next) {
            // An error returns at once: dropping `done` and `written` makes the workers,
            // the hasher and then the producer stop at their next send or take.
            if let Some(why) = slot.failed.take() {
                return Err(io::Error::other(why));
            }
            out.write_all(&slot.packed)?;
            chunks.push((total, raw_total));
            total += slot.packed.len() as u64;
            raw_total += slot.reused.unwrap_or(slot.raw.len() as u64);
            if let Some(p) = watch {
                p.update(|s| {
                    s.chunks.push(*chunks.last().expect("just pushed"));
                    (s.total, s.raw_total) = (total, raw_total);
                });
            }
            next += 1;
            let _ = written.send(slot);
        }
    }
    out.flush()?;
    Ok((total, chunks, out))
}

/// What the writer has written so far, for a reader that follows it in the output (an
/// in-place assembly hashes its scratch file while the file is still being written).
#[derive(Debug, Default)]
pub struct Progress {
    state: Mutex<WriterState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct WriterState {
    /// `(compressed offset, tar offset)` of each chunk written, as in [`Written::chunks`].
    chunks: Vec<(u64, u64)>,
    total: u64,
    raw_total: u64,
    /// The writer is done, or failed.
    ended: bool,
}

impl Progress {
    fn update(&self, f: impl FnOnce(&mut WriterState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
        self.changed.notify_all();
    }

    /// Waits until the output holds the tar stream up to `tar`, which must fall between
    /// two chunks, and returns where that is in the output. `None` when the writer ended
    /// first, or `tar` falls inside a chunk.
    pub fn wait_for(&self, tar: u64) -> Option<u64> {
        let mut s = self.state.lock().ok()?;
        loop {
            if s.raw_total == tar {
                return Some(s.total);
            }
            if s.raw_total > tar {
                let i = s.chunks.partition_point(|&(_, t)| t < tar);
                return s.chunks.get(i).filter(|&&(_, t)| t == tar).map(|&(c, _)| c);
            }
            if s.ended {
                return None;
            }
            s = self.changed.wait(s).ok()?;
        }
    }
}

/// Hashes the members as written, slot after slot, and passes each on to [`hash_raw`].
/// A thread of its own, so that the writer only writes: a pre-copy's assembly, which
/// mostly copies members, would otherwise wait on the hash.
fn hash_packed(written: &Receiver<Slot>, hashed: &SyncSender<Slot>, hashing: bool) -> [u8; 32] {
    let mut hash = Sha256::new();
    for slot in written {
        if hashing {
            hash.update(&slot.packed);
        }
        let _ = hashed.send(slot);
    }
    if !hashing {
        return [0; 32];
    }
    hash.finalize().into()
}

/// Hashes the tar stream, slot after slot in the order written, and frees each slot.
/// A thread of its own: where the data does not compress (media), the writer would
/// otherwise hash every byte twice and hold the whole pipeline back.
fn hash_raw(written: &Receiver<Slot>, pool: &SyncSender<Slot>, hashing: bool) -> Option<[u8; 32]> {
    let mut hash = Sha256::new();
    let mut whole = hashing;
    for mut slot in written {
        whole &= slot.reused.is_none();
        if whole {
            hash.update(&slot.raw);
        }
        slot.raw.clear();
        slot.reused = None;
        let _ = pool.send(slot);
    }
    whole.then(|| hash.finalize().into())
}

/// Compresses one chunk into complete gzip members appended to `out`: one member per run
/// of blocks of the same kind (deflate or store), and none of more than `member_size`
/// bytes (a block is then at most that long). Without a deflater (level 0) the chunk is
/// stored, in members of at most `member_size`. Each member holds at most `raw.len()`
/// bytes of input; an empty chunk is one empty member.
pub fn compress_chunk(
    deflater: Option<&mut Deflater>,
    raw: &[u8],
    out: &mut Vec<u8>,
    member_size: usize,
) {
    let member_size = member_size.max(1);
    let Some(compressor) = deflater else {
        if raw.is_empty() {
            return push_member(None, raw, out);
        }
        for part in raw.chunks(member_size) {
            push_member(None, part, out);
        }
        return;
    };
    let block = BLOCK.min(member_size);
    let mut compressor = Some(compressor);
    let mut start = 0;
    let mut run_stored = None;
    let mut pos = 0;
    while pos < raw.len() {
        let end = (pos + block).min(raw.len());
        let stored = entropy(&raw[pos..end]) > STORE_ENTROPY;
        match run_stored {
            Some(kind) if kind != stored || pos - start >= member_size => {
                let c = if kind {
                    None
                } else {
                    compressor.as_deref_mut()
                };
                push_member(c, &raw[start..pos], out);
                start = pos;
            }
            _ => {}
        }
        run_stored = Some(stored);
        pos = end;
    }
    if start < raw.len() {
        let c = if run_stored == Some(true) {
            None
        } else {
            compressor
        };
        push_member(c, &raw[start..], out);
    }
}

/// Shannon entropy in bits per byte, estimated from four 4 KiB windows spread over the
/// block (a quarter of a 64 KiB block: the estimate is as good for this decision and costs
/// a quarter). Four histograms break the store-to-load dependency on repeated bytes.
/// Under 1 KiB it returns 0, so such a short block is always deflated.
fn entropy(data: &[u8]) -> f64 {
    const WINDOW: usize = 4096;
    if data.len() < 1024 {
        return 0.0; // too small to judge; deflate is cheap here anyway
    }
    let mut h = [[0u32; 256]; 4];
    let mut count = |window: &[u8]| {
        let mut quads = window.chunks_exact(4);
        for q in &mut quads {
            h[0][q[0] as usize] += 1;
            h[1][q[1] as usize] += 1;
            h[2][q[2] as usize] += 1;
            h[3][q[3] as usize] += 1;
        }
        for &b in quads.remainder() {
            h[0][b as usize] += 1;
        }
    };
    let mut n = 0;
    if data.len() < 4 * WINDOW {
        count(data);
        n = data.len();
    } else {
        for i in 0..4 {
            let start = i * (data.len() - WINDOW) / 3;
            count(&data[start..start + WINDOW]);
            n += WINDOW;
        }
    }
    let n = n as f64;
    (0..256)
        .map(|i| h[0][i] + h[1][i] + h[2][i] + h[3][i])
        .filter(|&c| c > 0)
        .map(|c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Appends one gzip member holding `data`: deflated with `deflater`, or stored when it
/// is `None` or deflate would not make it smaller. The `AS` field is filled in last, once
/// the member's whole length (header, body and trailer) is known.
fn push_member(deflater: Option<&mut Deflater>, data: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&HEADER_BEFORE_LEN);
    out.extend_from_slice(&[0; 4]);
    match deflater.and_then(|d| d.deflate(data)) {
        Some(deflated) => out.extend_from_slice(deflated),
        None => push_stored(data, out),
    }
    let mut crc = Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let len = (out.len() - start) as u32;
    out[start + 16..start + 20].copy_from_slice(&len.to_le_bytes());
}

/// The shortest [`padding_member`]: a header, a 2-byte empty deflate stream, a trailer.
pub const PAD_MIN: usize = HEADER_LEN + 2 + TRAILER_LEN;

/// A gzip member of exactly `len` bytes (at least [`PAD_MIN`]) that inflates to nothing,
/// for an in-place assembly to fill the bytes up to a block boundary: the usual header
/// with its `AS` length, then empty deflate blocks (RFC 1951) adding up to the length —
/// empty non-final stored blocks of 5 bytes, then a tail of 2 to 6 bytes made of empty
/// fixed-Huffman blocks (10 bits each) and a final empty block — then CRC 0 and length
/// 0. Every gzip reader takes it as an empty member.
pub fn padding_member(len: usize) -> Vec<u8> {
    assert!(
        len >= PAD_MIN,
        "a padding member is at least {PAD_MIN} bytes"
    );
    let body = len - HEADER_LEN - TRAILER_LEN;
    let tail = 2 + (body - 2) % 5;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&HEADER_BEFORE_LEN);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    for _ in 0..(body - tail) / 5 {
        out.extend_from_slice(&[0, 0, 0, 0xff, 0xff]); // empty stored block, not final
    }
    out.extend_from_slice(match tail {
        2 => &[0x03, 0x00][..],                     // fixed, final
        3 => &[0x02, 0x0c, 0x00],                   // fixed; fixed, final
        4 => &[0x02, 0x08, 0x30, 0x00],             // fixed; fixed; fixed, final
        5 => &[0x01, 0x00, 0x00, 0xff, 0xff],       // stored, final
        _ => &[0x02, 0x04, 0x00, 0x00, 0xff, 0xff], // fixed; stored, final
    });
    out.extend_from_slice(&[0; TRAILER_LEN]); // CRC-32 of nothing, length 0
    debug_assert_eq!(out.len(), len);
    out
}

/// Deflate "stored" blocks (RFC 1951 §3.2.4): byte-aligned copies with a 5-byte header.
/// Empty data still gets one final, empty block: a deflate stream needs at least one.
fn push_stored(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        return;
    }
    let mut blocks = data.chunks(STORED_MAX).peekable();
    while let Some(block) = blocks.next() {
        let last = blocks.peek().is_none();
        let len = block.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
}

/// Length of the member starting at `buf[0]` if it was written by appsnap (has the `AS`
/// extra field), so that a reader can split an archive into members without inflating.
/// `None` for other gzip (another tool's) or non-gzip data. The length is what the member
/// claims, unchecked: the reader bounds it before allocating anything.
pub fn member_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < HEADER_LEN
        || buf[0..4] != HEADER_BEFORE_LEN[0..4]
        || buf[10..16] != HEADER_BEFORE_LEN[10..16]
    {
        return None;
    }
    Some(u32::from_le_bytes(buf[16..20].try_into().ok()?) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn noise(n: usize) -> Vec<u8> {
        (0..n).map(|_| rand::random::<u8>()).collect()
    }

    #[test]
    fn mixed_chunk_round_trips_and_stores_noise() {
        let mut raw = b"<?php echo 'hello'; ?>\n".repeat(10_000);
        let noise = noise(300_000);
        raw.extend_from_slice(&noise);
        raw.extend_from_slice(&b"SELECT * FROM t;\n".repeat(5_000));
        let mut c = Deflater::new(6);
        let mut out = Vec::new();
        compress_chunk(Some(&mut c), &raw, &mut out, usize::MAX);
        assert_eq!(gunzip(&out), raw);
        // Noise is stored (≈ its own size), text is deflated to almost nothing.
        assert!(out.len() < noise.len() + 20_000, "{} bytes", out.len());
        assert!(out.len() >= noise.len());
        // Members can be walked by their AS field and cover the whole output.
        let (mut pos, mut members) = (0, 0);
        while pos < out.len() {
            pos += member_len(&out[pos..]).expect("appsnap member");
            members += 1;
        }
        assert_eq!(pos, out.len());
        assert!(members >= 3, "text, noise and text make three members");
    }

    #[test]
    fn level_zero_and_empty_input_are_valid_gzip() {
        let mut out = Vec::new();
        compress_chunk(None, b"", &mut out, usize::MAX);
        compress_chunk(None, &[7u8; 200_000], &mut out, usize::MAX);
        assert_eq!(gunzip(&out), vec![7u8; 200_000]);
    }

    /// Members a pre-copy's first pass asks for: none holds more than `member_size`, at
    /// either level, and together they are the chunk.
    #[test]
    fn members_are_cut_at_the_size_asked() {
        let raw = b"<?php echo 'hello'; ?>\n".repeat(9_000);
        for level in [0, 3] {
            let mut c = (level > 0).then(|| Deflater::new(level));
            let mut out = Vec::new();
            compress_chunk(c.as_mut(), &raw, &mut out, 64 << 10);
            assert_eq!(gunzip(&out), raw);
            let (mut pos, mut sizes) = (0, Vec::new());
            while pos < out.len() {
                let len = member_len(&out[pos..]).expect("appsnap member");
                let isize = u32::from_le_bytes(out[pos + len - 4..pos + len].try_into().unwrap());
                sizes.push(isize as usize);
                pos += len;
            }
            assert_eq!(sizes.iter().sum::<usize>(), raw.len());
            assert!(sizes.iter().all(|&n| n <= 64 << 10), "{sizes:?}");
            assert_eq!(sizes.len(), raw.len().div_ceil(64 << 10), "level {level}");
        }
    }

    #[test]
    fn pipeline_keeps_order_and_hashes_output() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let out = file.reopen().unwrap();
        let mut gz = ParallelGzip::new(out, 6, 3, 4096);
        let mut expect = Vec::new();
        for i in 0..200u32 {
            let mut slot = gz.take().unwrap();
            slot.raw
                .extend_from_slice(format!("chunk {i} ").repeat(300).as_bytes());
            expect.extend_from_slice(&slot.raw);
            assert!(gz.submit(slot));
        }
        let (written, _) = gz.finish().unwrap();
        let on_disk = std::fs::read(file.path()).unwrap();
        assert_eq!(written.compressed_bytes, on_disk.len() as u64);
        assert_eq!(written.sha256, <[u8; 32]>::from(Sha256::digest(&on_disk)));
        // The tar stream's hash, taken on its own thread, covers every chunk in order.
        assert_eq!(
            written.raw_sha256,
            Some(<[u8; 32]>::from(Sha256::digest(&expect)))
        );
        assert_eq!(gunzip(&on_disk), expect);
    }

    #[test]
    fn padding_members_are_empty_members_of_any_length() {
        for len in PAD_MIN..PAD_MIN + 40 {
            let m = padding_member(len);
            assert_eq!(m.len(), len);
            assert_eq!(member_len(&m), Some(len));
            assert_eq!(gunzip(&m), Vec::<u8>::new(), "length {len}");
            let mut raw = Vec::new();
            super::super::read::inflate_members(
                &mut libdeflater::Decompressor::new(),
                &m,
                &mut raw,
            )
            .unwrap_or_else(|e| panic!("length {len}: {e}"));
            assert!(raw.is_empty());
        }
    }

    #[test]
    fn writer_error_stops_the_pipeline() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut gz = ParallelGzip::new(Full, 1, 2, 1024);
        let mut broke = false;
        for _ in 0..100 {
            match gz.take() {
                Some(mut slot) => {
                    slot.raw.extend_from_slice(&[1; 1024]);
                    if !gz.submit(slot) {
                        broke = true;
                        break;
                    }
                }
                None => {
                    broke = true;
                    break;
                }
            }
        }
        assert!(broke, "producer must notice that the writer is gone");
        let err = gz.finish().err().expect("the writer's error");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    }
}
