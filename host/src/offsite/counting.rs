//! A storage backend that counts what passes through it: the bytes a copy uploads, shown
//! in its job as it goes (rustic reports only what it read), and the bytes browsing a
//! copy downloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rustic_core::{BytesList, FileType, Id, ReadBackend, RusticResult, WriteBackend};

/// Forwards every call to `inner`; adds the size of each file written to `written`, and
/// of each read to `read`.
///
/// The count is what crossed to or from the storage, after rustic's compression and
/// encryption: packs, index files, the snapshot file. A removal does not subtract: it
/// measures what a copy sent, not what the repository holds.
pub struct Counting {
    /// The real backend (the repository's storage as `rustic_backend` opened it).
    pub inner: Arc<dyn WriteBackend>,
    /// Bytes written so far; shared with the job's progress (`Progress::bytes_uploaded`),
    /// which reads it while rustic's threads write. Relaxed: it orders nothing else.
    pub written: Arc<AtomicU64>,
    /// Bytes read so far (whole files and parts of packs).
    pub read: Arc<AtomicU64>,
}

impl Counting {
    fn got(&self, bytes: RusticResult<Bytes>) -> RusticResult<Bytes> {
        let bytes = bytes?;
        self.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }
}

impl ReadBackend for Counting {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        self.inner.list_with_size(tpe)
    }

    fn list(&self, tpe: FileType) -> RusticResult<Vec<Id>> {
        self.inner.list(tpe)
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        self.got(self.inner.read_full(tpe, id))
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        self.got(self.inner.read_partial(tpe, id, cacheable, offset, length))
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.inner.warmup_path(tpe, id)
    }

    fn needs_warm_up(&self) -> bool {
        self.inner.needs_warm_up()
    }

    fn warm_up(&self, tpe: FileType, id: &Id) -> RusticResult<()> {
        self.inner.warm_up(tpe, id)
    }
}

impl WriteBackend for Counting {
    fn create(&self) -> RusticResult<()> {
        self.inner.create()
    }

    /// Writes through `inner`, then counts `content`'s size; a failed write adds nothing.
    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        let size = content.size() as u64;
        self.inner.write_bytes(tpe, id, cacheable, content)?;
        // Counted once the storage took it: a failed write uploaded nothing that stays.
        self.written.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    /// Removes through `inner`; what the file's write added stays in `written` (a short
    /// copy's snapshot file, taken back, still counts as sent).
    fn remove(&self, tpe: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        self.inner.remove(tpe, id, cacheable)
    }
}
