//! The tar stream as rustic's source entry, read through a checker: rustic skips (and
//! only logs) a file that fails to read, so the caller asks the checker afterwards
//! whether the whole stream went through with the recorded sha256. The snapshot's entry
//! index goes with it, as a second file beside it: what lets a copy be browsed by
//! reading only the chunks that hold what is asked for.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rustic_core::repofile::{Metadata, Node, NodeType};
use rustic_core::{ReadSource, ReadSourceEntry, RusticResult};
use sha2::{Digest, Sha256};

use super::Progress;
use crate::archive::{Cancel, cancelled};

/// What the reader saw, shared with the caller.
#[derive(Default)]
struct Seen {
    /// Bytes the inner reader has returned so far.
    bytes: u64,
    /// Hex sha256 of the whole stream, set at its end (the first read that returned 0
    /// into a non-empty buffer). `None`: the stream was not read to its end.
    sha256: Option<String>,
    /// The latest error of the inner reader, copied (kind and message: `io::Error` is not
    /// `Clone`).
    error: Option<io::Error>,
    /// A read found the cancel flag set and was refused.
    cancelled: bool,
}

/// The caller's view of what was read. Clones share the state with the reader, so it can
/// be asked once rustic has finished (or given up on) the stream.
#[derive(Clone)]
pub struct Check(Arc<Mutex<Seen>>);

impl Check {
    /// Why the stream read does not match `sha256`, if it does not. `None` only when the
    /// stream was read to its end, without error or cancel, and its hash is `sha256`. A
    /// cancel is reported before a read error, which is reported before a short or
    /// different stream.
    pub fn problem(&self, sha256: &str) -> Option<String> {
        let seen = self.0.lock().expect("check lock");
        if seen.cancelled {
            return Some("stopped".into());
        }
        if let Some(e) = &seen.error {
            return Some(format!("reading the tar stream failed: {e}"));
        }
        match &seen.sha256 {
            None => Some(format!(
                "the tar stream was not read to its end ({} bytes)",
                seen.bytes
            )),
            Some(actual) if actual != sha256 => Some(format!(
                "the tar stream's sha256 is {actual}, the backup recorded {sha256}"
            )),
            Some(_) => None,
        }
    }

    /// Whether the copy was stopped through its cancel flag: the caller then reports a
    /// cancel, not a failed copy.
    pub fn cancelled(&self) -> bool {
        self.0.lock().expect("check lock").cancelled
    }

    /// The local read error, if reading failed (rather than the stream being different).
    /// A copy with the same kind and message; the original's source chain is not kept.
    pub fn read_error(&self) -> Option<io::Error> {
        let seen = self.0.lock().expect("check lock");
        seen.error
            .as_ref()
            .map(|e| io::Error::new(e.kind(), e.to_string()))
    }
}

/// Hashes and counts what passes; remembers how it ended. Errors are passed on to rustic
/// unchanged (it logs them and skips the file) and recorded for `Check`.
pub struct Checked<R> {
    inner: R,
    /// Running sha256 of every byte returned so far.
    hash: Sha256,
    seen: Arc<Mutex<Seen>>,
    /// Its `bytes_read` grows as bytes pass, for the job's progress.
    progress: Arc<Progress>,
    /// Checked before every read: once set, each read fails with "stopped" without
    /// touching the inner reader, so a copy stops within one buffer.
    cancel: Option<Cancel>,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if cancelled(&self.cancel) {
            self.seen.lock().expect("check lock").cancelled = true;
            return Err(io::Error::other("stopped"));
        }
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                let mut seen = self.seen.lock().expect("check lock");
                if seen.sha256.is_none() {
                    seen.sha256 = Some(crate::archive::hex(&self.hash.clone().finalize()));
                }
                Ok(0)
            }
            Ok(n) => {
                self.hash.update(&buf[..n]);
                self.seen.lock().expect("check lock").bytes += n as u64;
                self.progress
                    .bytes_read
                    .fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                let mut seen = self.seen.lock().expect("check lock");
                seen.error = Some(io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
        }
    }
}

/// A `ReadSource` of the tar stream at `path`, and the entry index beside it (the same
/// name ending `.index`) when there is one.
pub struct TarSource<R> {
    /// Where the file sits in the restic snapshot (`/<app_id>/<snapshot_id>.tar`).
    path: PathBuf,
    /// The size the backup recorded, announced to rustic before anything is read; the
    /// bytes actually read are checked by `Check`, not by this.
    size: u64,
    /// The file's mtime in the restic snapshot (the snapshot's creation), whole seconds.
    mtime: DateTime<Utc>,
    /// The stream can be read once: the first `entries` call takes it.
    reader: Mutex<Option<Checked<R>>>,
    /// The index file's bytes.
    index: Option<Vec<u8>>,
}

/// What rustic reads of one entry: the tar stream, checked, or the index's bytes.
pub enum Open<R> {
    Tar(Checked<R>),
    Index(io::Cursor<Vec<u8>>),
}

impl<R: Read> Read for Open<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Open::Tar(r) => r.read(buf),
            Open::Index(r) => r.read(buf),
        }
    }
}

/// Where the entry index of the tar file at `tar` sits in the copy.
pub fn index_path(tar: &str) -> String {
    format!("{}.index", tar.strip_suffix(".tar").unwrap_or(tar))
}

impl<R: Read + Send + 'static> TarSource<R> {
    /// Wraps `reader` (the uncompressed tar stream of a snapshot) for one `archive` call
    /// and returns, with the source, the `Check` to ask once rustic is done with it.
    /// `size` and `mtime` are only metadata; `progress.bytes_read` counts what is read.
    pub fn new(
        path: PathBuf,
        index: Option<Vec<u8>>,
        reader: R,
        size: u64,
        mtime: DateTime<Utc>,
        progress: Arc<Progress>,
        cancel: Option<Cancel>,
    ) -> (TarSource<R>, Check) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let checked = Checked {
            inner: reader,
            hash: Sha256::new(),
            seen: Arc::clone(&seen),
            progress,
            cancel,
        };
        (
            TarSource {
                path,
                size,
                mtime,
                reader: Mutex::new(Some(checked)),
                index,
            },
            Check(seen),
        )
    }
}

impl<R: Read + Send + 'static> ReadSource for TarSource<R> {
    type Open = Open<R>;
    type Iter = std::vec::IntoIter<RusticResult<ReadSourceEntry<Open<R>>>>;

    fn size(&self) -> RusticResult<Option<u64>> {
        Ok(Some(
            self.size + self.index.as_ref().map_or(0, |i| i.len() as u64),
        ))
    }

    /// The index (when there is one), then the tar stream, in path order: regular files
    /// with mode 0600 (they describe and hold an app's data). A second call yields the
    /// tar entry with no reader (the stream is consumed).
    fn entries(&self) -> Self::Iter {
        let mtime = rustic_core::jiff::Timestamp::from_second(self.mtime.timestamp()).ok();
        let file = |path: PathBuf, size: u64, open: Option<Open<R>>| {
            let name = path
                .file_name()
                .unwrap_or(OsStr::new("snapshot"))
                .to_owned();
            let meta = Metadata {
                size,
                mode: Some(0o600),
                mtime,
                ..Metadata::default()
            };
            Ok(ReadSourceEntry {
                path,
                node: Node::new_node(&name, NodeType::File, meta),
                open,
            })
        };
        let mut out = Vec::new();
        if let Some(index) = &self.index {
            let path = index_path(&self.path.to_string_lossy());
            let open = Open::Index(io::Cursor::new(index.clone()));
            out.push(file(PathBuf::from(path), index.len() as u64, Some(open)));
        }
        let tar = self.reader.lock().expect("source lock").take();
        out.push(file(self.path.clone(), self.size, tar.map(Open::Tar)));
        out.into_iter()
    }
}
