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

/// One or more members in flight, with their place in the archive. Slots circulate
/// (reader → worker → consumer → reader) and keep their buffers: allocating two fresh
/// megabytes per member made the kernel fault in and zero every page of them, a large
/// share of a restore's time.
struct Slot {
    /// The slot's place in the archive, from 0: the order the consumer restores.
    seq: u64,
    /// Whole members as read from the file, header to trailer.
    packed: Vec<u8>,
    /// Their inflated bytes: once inflated, exactly their trailers' ISIZEs long.
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
                // A slot whose first members inflated gives their bytes first; its error
                // comes once they are read (`read`).
                if slot.raw.is_empty()
                    && let Some(e) = slot.error.take()
                {
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
    /// Copies from the current slot only: a read never spans two slots, so it can return
    /// less than `buf.len()` well before the end. A used slot goes back to the reader
    /// thread, which may then read the next members off the file.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self
            .current
            .as_ref()
            .is_none_or(|c| self.pos == c.raw.len())
        {
            if let Some(mut used) = self.current.take() {
                let error = used.error.take();
                let _ = self.recycle.send(used);
                if let Some(e) = error {
                    self.finished = true;
                    return Err(e);
                }
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

/// Members go into one slot until they hold this many bytes, packed or inflated (a
/// pre-copy's archive is made of 64 KiB members, and a slot each cost a few thread
/// hand-offs per member).
const SLOT_BATCH: usize = 512 << 10;

/// Reads whole members off the file into free slots, several per slot up to
/// [`SLOT_BATCH`]. A malformed member ends the stream with an error in its place, after
/// the members before it.
///
/// The reader thread. A member's claimed length is checked against
/// `MAX_MEMBER_PACKED` before its buffer is sized, so a forged `AS` field cannot make it
/// allocate more. It returns at a clean end of file between members, after the first
/// error, or when the consumer or the workers are gone. Messages give the member's byte
/// offset in the file.
fn split_members(mut file: File, work: &SyncSender<Slot>, free: &Receiver<Slot>) {
    let mut seq = 0;
    let mut offset = 0u64;
    loop {
        let Ok(mut slot) = free.recv() else { return };
        slot.packed.clear();
        slot.error = None;
        let mut last = false;
        // What the members claim to inflate to (each believed up to `MAX_MEMBER_RAW`):
        // members of zeros pack a megabyte into a kilobyte, and a slot must not hold
        // hundreds of them.
        let mut raw = 0;
        while slot.packed.len() < SLOT_BATCH && raw < SLOT_BATCH {
            let at = slot.packed.len();
            match read_member(&mut file, &mut slot.packed, offset) {
                Ok(true) => {
                    offset += (slot.packed.len() - at) as u64;
                    let trailer = &slot.packed[slot.packed.len() - 4..];
                    let isize = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
                    raw += (isize as usize).min(MAX_MEMBER_RAW);
                }
                Ok(false) => {
                    last = true;
                    break;
                }
                Err(e) => {
                    // The members before it stay in the slot; the error comes after them.
                    slot.packed.truncate(at);
                    slot.error = Some(e);
                    last = true;
                    break;
                }
            }
        }
        if slot.packed.is_empty() && slot.error.is_none() {
            return;
        }
        slot.seq = seq;
        seq += 1;
        if work.send(slot).is_err() || last {
            return;
        }
    }
}

/// Appends the member at `offset` (the file's position) to `packed`: `Ok(false)` at a
/// clean end of file, an error for a truncated or malformed member.
fn read_member(file: &mut File, packed: &mut Vec<u8>, offset: u64) -> io::Result<bool> {
    let corrupt = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    let mut head = [0u8; HEADER_LEN];
    match read_full(file, &mut head)? {
        0 => return Ok(false),
        n if n < HEADER_LEN => {
            return Err(corrupt(format!("truncated gzip header at byte {offset}")));
        }
        _ => {}
    }
    let len = match member_len(&head) {
        Some(len) if len >= HEADER_LEN + TRAILER_LEN && len - HEADER_LEN <= MAX_MEMBER_PACKED => {
            len
        }
        Some(len) => {
            return Err(corrupt(format!(
                "the gzip member at byte {offset} claims {len} bytes (appsnap writes at \
                 most {MAX_MEMBER_PACKED})"
            )));
        }
        None => return Err(corrupt(format!("no appsnap gzip member at byte {offset}"))),
    };
    let at = packed.len();
    packed.extend_from_slice(&head);
    packed.resize(at + len, 0);
    match read_full(file, &mut packed[at + HEADER_LEN..])? {
        n if n == len - HEADER_LEN => Ok(true),
        _ => Err(corrupt(format!(
            "archive truncated inside the member at byte {offset}"
        ))),
    }
}

/// One inflate thread, with its own libdeflate decompressor. A slot's members are
/// inflated even when the reader's error follows them; a member that fails to inflate
/// comes before that error in the stream, so its error replaces it.
fn inflate_worker(work: &Mutex<Receiver<Slot>>, done: &SyncSender<Slot>) {
    let mut decompressor = Decompressor::new();
    loop {
        let next = work.lock().map(|rx| rx.recv());
        let Ok(Ok(mut slot)) = next else { return };
        slot.raw.clear();
        if let Err(e) = inflate_members(&mut decompressor, &slot.packed, &mut slot.raw) {
            slot.error = Some(e);
        }
        if done.send(slot).is_err() {
            return;
        }
    }
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
/// [`inflate_onto`] checks one. After an error `raw` holds the members before the bad one.
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
        let good = raw.len();
        if let Err(e) = inflate_onto(decompressor, &packed[pos..pos + len], raw) {
            raw.truncate(good);
            return Err(e);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::gzip::{Deflater, compress_chunk};

    /// Many small members, as a pre-copy's archive has: the reader puts several in a slot
    /// and gives every byte back in order; a damaged member after them is an error that
    /// comes after all the bytes before it.
    #[test]
    fn small_members_come_back_in_order_and_a_damaged_one_after_them() {
        let raw: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 7919) as u8)
            .collect();
        let mut packed = Vec::new();
        compress_chunk(Some(&mut Deflater::new(3)), &raw, &mut packed, 4096);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &packed).unwrap();
        let mut out = Vec::new();
        open_tar_stream(file.path(), 2)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == raw, "{} bytes of {}", out.len(), raw.len());

        let mut last = Vec::new();
        compress_chunk(
            Some(&mut Deflater::new(3)),
            b"the last one",
            &mut last,
            4096,
        );
        let crc = last.len() - TRAILER_LEN;
        last[crc] ^= 0xff;
        packed.extend_from_slice(&last);
        std::fs::write(file.path(), &packed).unwrap();
        let mut got = Vec::new();
        let err = open_tar_stream(file.path(), 2)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(
            got == raw,
            "every byte before the damaged member: {}",
            got.len()
        );
    }
}
