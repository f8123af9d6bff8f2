//! Reading archives back: a `Read` over the tar stream that inflates appsnap's
//! independent gzip members on every core (restore, verify), falling back to a plain
//! sequential gzip reader for archives made by other tools.
//!
//! A reader thread splits the file into members using the `AS` length field of each
//! member header (see [`super::gzip`]), workers inflate them with libdeflate (which also
//! checks each member's CRC-32 and length), and the consumer reassembles them in order.
//! Like the writer, a fixed number of members is in flight, so memory stays bounded.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;

use libdeflater::Decompressor;

use super::gzip::{HEADER_LEN, TRAILER_LEN, member_len};

/// An appsnap member never holds more than a chunk (1 MiB); anything claiming more than
/// this is refused before its buffer is allocated, so the members in flight bound memory.
pub const MAX_MEMBER_RAW: usize = 4 << 20;
/// Deflate's worst case adds a few bytes per 64 KiB stored block.
const MAX_MEMBER_PACKED: usize = MAX_MEMBER_RAW + (MAX_MEMBER_RAW >> 10) + 64;

/// Opens `path` as a tar stream: parallel when the archive is appsnap's, sequential
/// otherwise. `threads` is the number of inflate workers.
///
/// Only the first member's header decides: in an archive that starts as appsnap's, a later
/// member without the `AS` field is a corrupt-data error, not a reason to fall back. The
/// file is opened twice so the reader starts at byte 0. Errors here are only those of
/// opening and of the first read; a corrupt or truncated archive, or a later I/O error,
/// comes from `read` on the stream. The parallel reader's threads wind down once the
/// stream is dropped.
pub fn open_tar_stream(path: &Path, threads: usize) -> io::Result<Box<dyn Read + Send>> {
    let mut file = File::open(path)?;
    let mut head = [0u8; HEADER_LEN];
    let n = read_full(&mut file, &mut head)?;
    drop(file);
    let file = File::open(path)?;
    if n == HEADER_LEN && member_len(&head).is_some() {
        Ok(Box::new(ParallelInflate::new(file, threads)))
    } else {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(
            file,
        ))))
    }
}

/// One member in flight, with its place in the archive. Slots circulate (reader →
/// worker → consumer → reader) and keep their buffers: allocating two fresh megabytes per
/// member made the kernel fault in and zero every page of them, a large share of a
/// restore's time.
struct Slot {
    /// The member's place in the archive, from 0: the order the consumer restores.
    seq: u64,
    /// The whole member as read from the file, header to trailer.
    packed: Vec<u8>,
    /// Its inflated bytes: once inflated, exactly the trailer's ISIZE long.
    raw: Vec<u8>,
    /// Why this member cannot be read; the stream ends with it.
    error: Option<io::Error>,
}

/// The consumer end: a `Read` of the inflated members in archive order. The first error
/// (I/O, truncation, a malformed or corrupt member) is returned when that member's turn
/// comes, after all the data before it, and the stream ends there.
pub struct ParallelInflate {
    /// Inflated members from the workers, in the order they finish.
    done: Receiver<Slot>,
    /// Members that finished ahead of their turn, by `seq`: at most the slots in flight.
    pending: BTreeMap<u64, Slot>,
    next: u64,
    /// The member being read out, and how far (`pos` bytes of its `raw`).
    current: Option<Slot>,
    pos: usize,
    /// Consumed slots go back to the reader, which bounds the members in flight.
    recycle: SyncSender<Slot>,
    /// The end was seen: later reads return 0 at once instead of waiting on the channel.
    finished: bool,
}

impl ParallelInflate {
    /// Starts one reader thread over `file` and `threads` inflate workers, with
    /// `2 × threads + 2` slots in flight.
    fn new(file: File, threads: usize) -> ParallelInflate {
        let threads = threads.max(1);
        let in_flight = threads * 2 + 2;
        let (recycle, free) = sync_channel::<Slot>(in_flight);
        for _ in 0..in_flight {
            let slot = Slot {
                seq: 0,
                packed: Vec::new(),
                raw: Vec::new(),
                error: None,
            };
            recycle.send(slot).expect("room for every slot");
        }
        let (work_tx, work_rx) = sync_channel::<Slot>(in_flight);
        let (done_tx, done) = sync_channel::<Slot>(in_flight);
        let work_rx = Arc::new(Mutex::new(work_rx));
        for i in 0..threads {
            let (work_rx, done_tx) = (Arc::clone(&work_rx), done_tx.clone());
            thread::Builder::new()
                .name(format!("appsnap-inflate-{i}"))
                .spawn(move || inflate_worker(&work_rx, &done_tx))
                .expect("spawn inflate worker");
        }
        thread::Builder::new()
            .name("appsnap-inflate-reader".into())
            .spawn(move || split_members(file, &work_tx, &free))
            .expect("spawn member reader");
        ParallelInflate {
            done,
            pending: BTreeMap::new(),
            next: 0,
            current: None,
            pos: 0,
            recycle,
            finished: false,
        }
    }

    /// The next member in order; `None` at the end of the archive. A member that carries an
    /// error returns it here, so it surfaces in archive order.
    fn next_member(&mut self) -> io::Result<Option<Slot>> {
        loop {
            if let Some(mut slot) = self.pending.remove(&self.next) {
                self.next += 1;
                if let Some(e) = slot.error.take() {
                    return Err(e);
                }
                return Ok(Some(slot));
            }
            match self.done.recv() {
                Ok(slot) => {
                    self.pending.insert(slot.seq, slot);
                }
                // All senders gone and nothing pending for `next`: the end.
                Err(_) => return Ok(None),
            }
        }
    }
}

impl Read for ParallelInflate {
    /// Copies from the current member only: a read never spans two members, so it can
    /// return less than `buf.len()` well before the end. A used member's slot goes back to
    /// the reader thread, which may then read the next one off the file.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self
            .current
            .as_ref()
            .is_none_or(|c| self.pos == c.raw.len())
        {
            if let Some(used) = self.current.take() {
                let _ = self.recycle.send(used);
            }
            if self.finished {
                return Ok(0);
            }
            match self.next_member()? {
                Some(slot) => {
                    self.current = Some(slot);
                    self.pos = 0;
                }
                None => {
                    self.finished = true;
                    return Ok(0);
                }
            }
        }
        let raw = &self.current.as_ref().expect("a member is current").raw;
        let n = buf.len().min(raw.len() - self.pos);
        buf[..n].copy_from_slice(&raw[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads whole members off the file, each into a free slot. A malformed member ends the
/// stream with an error in its place.
///
/// The reader thread. A member's claimed length is checked against
/// `MAX_MEMBER_PACKED` before its buffer is sized, so a forged `AS` field cannot make it
/// allocate more. It returns at a clean end of file between members, after the first
/// error, or when the consumer or the workers are gone. Messages give the member's byte
/// offset in the file.
fn split_members(mut file: File, work: &SyncSender<Slot>, free: &Receiver<Slot>) {
    let corrupt = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    let mut seq = 0;
    let mut offset = 0u64;
    loop {
        let Ok(mut slot) = free.recv() else { return };
        let mut head = [0u8; HEADER_LEN];
        let read = match read_full(&mut file, &mut head) {
            Ok(0) => return,
            Ok(n) if n < HEADER_LEN => {
                Err(corrupt(format!("truncated gzip header at byte {offset}")))
            }
            Ok(_) => match member_len(&head) {
                Some(len)
                    if len >= HEADER_LEN + TRAILER_LEN && len - HEADER_LEN <= MAX_MEMBER_PACKED =>
                {
                    slot.packed.clear();
                    slot.packed.resize(len, 0);
                    slot.packed[..HEADER_LEN].copy_from_slice(&head);
                    match read_full(&mut file, &mut slot.packed[HEADER_LEN..]) {
                        Ok(n) if n == len - HEADER_LEN => Ok(()),
                        Ok(_) => Err(corrupt(format!(
                            "archive truncated inside the member at byte {offset}"
                        ))),
                        Err(e) => Err(e),
                    }
                }
                Some(len) => Err(corrupt(format!(
                    "the gzip member at byte {offset} claims {len} bytes (appsnap writes at \
                     most {MAX_MEMBER_PACKED})"
                ))),
                _ => Err(corrupt(format!("no appsnap gzip member at byte {offset}"))),
            },
            Err(e) => Err(e),
        };
        slot.seq = seq;
        slot.error = read.err();
        let failed = slot.error.is_some();
        offset += slot.packed.len() as u64;
        if work.send(slot).is_err() || failed {
            return;
        }
        seq += 1;
    }
}

/// One inflate thread, with its own libdeflate decompressor. A slot that already carries
/// the reader's error passes through untouched, so the consumer meets it in order.
fn inflate_worker(work: &Mutex<Receiver<Slot>>, done: &SyncSender<Slot>) {
    let mut decompressor = Decompressor::new();
    loop {
        let next = work.lock().map(|rx| rx.recv());
        let Ok(Ok(mut slot)) = next else { return };
        if slot.error.is_none()
            && let Err(e) = inflate(&mut decompressor, &slot.packed, &mut slot.raw)
        {
            slot.error = Some(e);
        }
        if done.send(slot).is_err() {
            return;
        }
    }
}

/// Inflates one whole member into `out` (resized to what its trailer announces).
fn inflate(decompressor: &mut Decompressor, member: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    inflate_onto(decompressor, member, out)
}

/// Inflates one whole member onto the end of `out`.
/// The announced length is believed only up to `MAX_MEMBER_RAW`; libdeflate then checks the
/// member's CRC-32, and the inflated length must be exactly the announced one. Every
/// failure is `InvalidData`.
fn inflate_onto(
    decompressor: &mut Decompressor,
    member: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    let isize =
        u32::from_le_bytes(member[member.len() - 4..].try_into().expect("4 bytes")) as usize;
    if isize > MAX_MEMBER_RAW {
        return Err(invalid(format!(
            "a gzip member inflating to {isize} bytes (appsnap writes at most {MAX_MEMBER_RAW})"
        )));
    }
    let start = out.len();
    out.resize(start + isize, 0);
    match decompressor.gzip_decompress(member, &mut out[start..]) {
        Ok(n) if n == isize => Ok(()),
        Ok(_) => Err(invalid("gzip member length mismatch".into())),
        Err(e) => Err(invalid(format!("corrupt gzip member ({e:?})"))),
    }
}

/// Inflates the complete members in `packed` (appsnap's, each with its `AS` length, as
/// a chunk of our own archive holds them) onto the end of `raw`, each checked as
/// [`inflate_onto`] checks one.
pub fn inflate_members(
    decompressor: &mut Decompressor,
    packed: &[u8],
    raw: &mut Vec<u8>,
) -> io::Result<()> {
    let mut pos = 0;
    while pos < packed.len() {
        let len = member_len(&packed[pos..]).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "not an appsnap gzip member")
        })?;
        if len < HEADER_LEN + TRAILER_LEN || pos + len > packed.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a gzip member's length runs past its chunk",
            ));
        }
        inflate_onto(decompressor, &packed[pos..pos + len], raw)?;
        pos += len;
    }
    Ok(())
}

/// Reads until `buf` is full or the input ends; the bytes read.
/// `Interrupted` is retried; any other error is returned as is, and the bytes read before
/// it are not counted.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
