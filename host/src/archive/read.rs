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

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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

/// A member (raw, then inflated) with its place in the archive.
type Numbered = (u64, io::Result<Vec<u8>>);

pub struct ParallelInflate {
    done: Receiver<Numbered>,
    pending: BTreeMap<u64, io::Result<Vec<u8>>>,
    next: u64,
    current: Vec<u8>,
    pos: usize,
    /// Returns a permit per consumed member, bounding members in flight.
    permits: SyncSender<()>,
    finished: bool,
}

impl ParallelInflate {
    fn new(file: File, threads: usize) -> ParallelInflate {
        let threads = threads.max(1);
        let in_flight = threads * 2 + 2;
        let (permit_tx, permit_rx) = sync_channel::<()>(in_flight);
        for _ in 0..in_flight {
            permit_tx.send(()).expect("room for every permit");
        }
        let (work_tx, work_rx) = sync_channel::<Numbered>(in_flight);
        let (done_tx, done) = sync_channel::<Numbered>(in_flight);
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
            .spawn(move || split_members(file, &work_tx, &permit_rx))
            .expect("spawn member reader");
        ParallelInflate {
            done,
            pending: BTreeMap::new(),
            next: 0,
            current: Vec::new(),
            pos: 0,
            permits: permit_tx,
            finished: false,
        }
    }

    /// The next member's bytes in order; `None` at the end of the archive.
    fn next_member(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(result) = self.pending.remove(&self.next) {
                self.next += 1;
                let _ = self.permits.send(());
                return result.map(Some);
            }
            match self.done.recv() {
                Ok((seq, result)) => {
                    self.pending.insert(seq, result);
                }
                // All senders gone and nothing pending for `next`: the end.
                Err(_) => return Ok(None),
            }
        }
    }
}

impl Read for ParallelInflate {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.finished {
                return Ok(0);
            }
            match self.next_member()? {
                Some(bytes) => {
                    self.current = bytes;
                    self.pos = 0;
                }
                None => {
                    self.finished = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads whole members off the file, one permit each. A malformed member ends the
/// stream with an error in its place.
fn split_members(mut file: File, work: &SyncSender<Numbered>, permits: &Receiver<()>) {
    let corrupt = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    let mut seq = 0;
    let mut offset = 0u64;
    loop {
        if permits.recv().is_err() {
            return;
        }
        let mut head = [0u8; HEADER_LEN];
        let member = match read_full(&mut file, &mut head) {
            Ok(0) => return,
            Ok(n) if n < HEADER_LEN => {
                Err(corrupt(format!("truncated gzip header at byte {offset}")))
            }
            Ok(_) => match member_len(&head) {
                Some(len)
                    if len >= HEADER_LEN + TRAILER_LEN && len - HEADER_LEN <= MAX_MEMBER_PACKED =>
                {
                    let mut member = vec![0; len];
                    member[..HEADER_LEN].copy_from_slice(&head);
                    match read_full(&mut file, &mut member[HEADER_LEN..]) {
                        Ok(n) if n == len - HEADER_LEN => Ok(member),
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
        let failed = member.is_err();
        if let Ok(m) = &member {
            offset += m.len() as u64;
        }
        if work.send((seq, member)).is_err() || failed {
            return;
        }
        seq += 1;
    }
}

fn inflate_worker(work: &Mutex<Receiver<Numbered>>, done: &SyncSender<Numbered>) {
    let mut decompressor = Decompressor::new();
    loop {
        let next = work.lock().map(|rx| rx.recv());
        let Ok(Ok((seq, member))) = next else { return };
        let result = member.and_then(|m| {
            let isize = u32::from_le_bytes(m[m.len() - 4..].try_into().expect("4 bytes")) as usize;
            if isize > MAX_MEMBER_RAW {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "a gzip member inflating to {isize} bytes (appsnap writes at most \
                         {MAX_MEMBER_RAW})"
                    ),
                ));
            }
            let mut out = vec![0; isize];
            match decompressor.gzip_decompress(&m, &mut out) {
                Ok(n) if n == isize => Ok(out),
                Ok(_) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "gzip member length mismatch",
                )),
                Err(e) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("corrupt gzip member ({e:?})"),
                )),
            }
        });
        if done.send((seq, result)).is_err() {
            return;
        }
    }
}
