//! A copy opened for browsing: its entry index, and its tar stream read at any offset by
//! fetching only the chunks that hold the bytes asked for.
//!
//! A copy of the old format stores the tar stream as one restic file whose content is a
//! list of chunks with their lengths in the repository's index; rustic's `read_file_at`
//! maps an offset onto the chunks and fetches each from its pack with one ranged read. A
//! tree copy rebuilds the stream from its layout, reading only the nodes a range covers.
//! With the snapshot's entry index (the `.index` file beside the snapshot), a listing
//! costs the index's download, and a file its header's and its data's chunks: megabytes,
//! where a fetch of the whole copy costs its size.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rustic_core::vfs::OpenFile;
use rustic_core::{IndexedFullStatus, Repository};

use super::rebuild::{TreeCopy, copy_folder, file_named, mismatch, read_whole};
use super::source::index_path;
use super::{
    Format, OffsiteError, RemoteSnapshot, RepositoryConfig, backend_err, describe, open_counting,
};
use crate::archive::index::TarAt;

/// Largest entry index a copy's is believed to be (an index inflates to at most 1 GiB;
/// compressed, it is several times smaller).
const MAX_INDEX: u64 = 1 << 30;

/// Bytes asked for per read of the tar stream. Chunks are ~1 MiB and rustic keeps the
/// ones read last in memory (32 MB), so reading on through a chunk costs nothing more;
/// a small window only keeps a small file from pulling in the chunk after it.
const WINDOW: usize = 64 << 10;

/// A copy of a snapshot, open for reading parts of it.
pub struct OpenCopy {
    repo: Arc<Repository<IndexedFullStatus>>,
    stored: Stored,
    tar_bytes: u64,
    /// Bytes read from the storage since the copy was opened: the repository's own
    /// index, the entry index, the chunks read.
    pub downloaded: Arc<AtomicU64>,
}

/// How the copy holds the tar stream.
enum Stored {
    /// One file (`Format::Tar`).
    Tar(OpenFile),
    /// A tree and its layout (`Format::Tree`).
    Tree(TreeCopy),
}

impl std::fmt::Debug for OpenCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenCopy")
            .field("tar_bytes", &self.tar_bytes)
            .finish_non_exhaustive()
    }
}

/// Opens the copy `remote` of repository `cfg` for browsing and reads its entry index.
/// The index is `None` for a copy made before copies carried one.
pub fn open_copy(
    cfg: &RepositoryConfig,
    remote: &RemoteSnapshot,
) -> Result<(OpenCopy, Option<Vec<u8>>), OffsiteError> {
    let err = backend_err(cfg);
    let downloaded = Arc::new(AtomicU64::new(0));
    let repo = open_counting(cfg, false, None, Some(Arc::clone(&downloaded)))?
        .to_indexed()
        .map_err(&err)?;
    let nodes = copy_folder(cfg, &repo, remote)?;
    let name = remote.path.rsplit('/').next().unwrap_or_default();
    let tar = match remote.format {
        Format::Tar => {
            let tar = file_named(&nodes, name)
                .ok_or_else(|| mismatch(cfg, remote, "the tar file is missing"))?;
            if tar.meta.size != remote.tar_bytes {
                return Err(mismatch(cfg, remote, "the tar file has another size"));
            }
            Some(repo.open_file(tar).map_err(&err)?)
        }
        Format::Tree => None,
    };
    let index = match file_named(&nodes, &index_path(name)) {
        None => None,
        Some(node) => {
            Some(read_whole(cfg, &repo, remote, node, MAX_INDEX, "entry index")?.to_vec())
        }
    };
    let repo = Arc::new(repo);
    let stored = match tar {
        Some(tar) => Stored::Tar(tar),
        None => Stored::Tree(TreeCopy::open(cfg, Arc::clone(&repo), remote, &nodes)?),
    };
    Ok((
        OpenCopy {
            repo,
            stored,
            tar_bytes: remote.tar_bytes,
            downloaded,
        },
        index,
    ))
}

impl OpenCopy {
    /// Up to `len` bytes of the tar stream from `at` (fewer only at its end).
    fn read_at(&self, tar: &OpenFile, at: u64, len: usize) -> io::Result<Bytes> {
        self.repo
            .read_file_at(tar, at as usize, len)
            .map_err(|e| io::Error::other(describe(&e)))
    }

    /// Bytes read from the storage so far.
    pub fn downloaded(&self) -> u64 {
        self.downloaded.load(Ordering::Relaxed)
    }
}

impl TarAt for Arc<OpenCopy> {
    fn tar_at(&self, at: u64) -> io::Result<Box<dyn Read + Send>> {
        Ok(match &self.stored {
            Stored::Tar(_) => Box::new(Stream {
                copy: Arc::clone(self),
                at,
                buf: Bytes::new(),
            }),
            Stored::Tree(tree) => Box::new(tree.stream_at(at)?),
        })
    }
}

/// The tar stream from an offset, fetched a window at a time.
struct Stream {
    copy: Arc<OpenCopy>,
    /// Offset of the first byte after `buf`.
    at: u64,
    buf: Bytes,
}

impl Read for Stream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buf.is_empty() {
            if self.at >= self.copy.tar_bytes || out.is_empty() {
                return Ok(0);
            }
            let Stored::Tar(tar) = &self.copy.stored else {
                unreachable!("a stream of one tar file");
            };
            self.buf = self.copy.read_at(tar, self.at, WINDOW)?;
            if self.buf.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the copy's tar stream ends before its recorded length",
                ));
            }
            self.at += self.buf.len() as u64;
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}
