//! Read-ahead for a backup: a thread that walks the sources in the archive's own order,
//! a bounded distance ahead of the writer, and asks the kernel to start reading each
//! regular file (`posix_fadvise(WILLNEED)`), without waiting for it.
//!
//! Why: the writer reads one file after another, and on a cold cache each small file
//! costs a full round trip to the disk (the read-ahead of one file never reaches the
//! next). With the requests already queued, the disk serves many at once. Measured on
//! this project's machine, 1 GiB of app data in 58,000 files: `tar | cat` from a cold
//! cache took 11.6–15.2 s alone and 4.1 s beside such a walk.
//!
//! The hints go out in batches (a few dozen files, back to back), not one between two
//! opens. Measured on this project's machine, reading 60,491 small files cold beside such
//! a walk: 2.4–2.8 s of CPU one by one, 1.7–1.9 s in batches of 64. The likely reason:
//! back to back, the requests queue while the disk is busy and go out together, where one
//! at a time each cost its own notification of the (virtual) disk and its own interrupt.
//!
//! It only gives hints. It opens files the way the writer does (`O_PATH | O_NOFOLLOW`
//! relative to the parent's descriptor, `fstat`, then a reopen of that very inode), so a
//! path swapped for a symlink or a device node is never followed or opened; it never
//! enters the directories the writer skips; whatever it fails to do is ignored. It stops
//! when dropped.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Source;
use super::walk::{Node, data_segments};
use crate::exclude::Exclude;

/// How far ahead of the writer, in bytes of file data: enough to keep the disk's queue
/// full, little enough that what is read ahead is still cached when the writer comes.
const WINDOW: u64 = 128 << 20;
/// Files opened before their hints go out together, and the bytes that also send them
/// (a large file needs no company to keep the disk busy).
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 4 << 20;

/// The running read-ahead; dropping it stops the thread.
pub struct Prefetch {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Option<u64>>>,
}

struct Shared {
    /// Bytes of tar stream the writer has produced (it reports them per chunk).
    consumed: AtomicU64,
    stop: AtomicBool,
    wake: Condvar,
    lock: Mutex<()>,
}

impl Prefetch {
    /// Starts walking `sources` (directories or single files), skipping the directories
    /// `skip` names by `(dev, ino)` and what each source's `exclude` patterns leave out.
    pub fn start(sources: Vec<Source>, skip: Vec<(u64, u64)>) -> Prefetch {
        let shared = Arc::new(Shared {
            consumed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            lock: Mutex::new(()),
        });
        let walker = Ahead {
            shared: Arc::clone(&shared),
            skip,
            advised: 0,
            batch: Vec::with_capacity(BATCH_FILES),
            batch_bytes: 0,
            exclude: None,
        };
        let thread = std::thread::Builder::new()
            .name("appsnap-prefetch".into())
            .spawn(move || walker.run(&sources))
            .ok();
        Prefetch { shared, thread }
    }

    /// Waits for the walk to end by itself (no writer needed); what [`Ahead::run`] returns.
    #[cfg(test)]
    fn into_walked(mut self) -> Option<u64> {
        self.thread.take()?.join().ok()?
    }

    /// The writer has produced `bytes` of tar stream so far.
    pub fn consumed(&self, bytes: u64) {
        self.shared.consumed.store(bytes, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Ahead {
    shared: Arc<Shared>,
    skip: Vec<(u64, u64)>,
    /// Bytes of file data advised so far (the writer's count includes headers, so this
    /// runs a little behind it, on the safe side).
    advised: u64,
    /// Opened files whose hints have not gone out yet.
    batch: Vec<fs::File>,
    batch_bytes: u64,
    /// The current source's `exclude` patterns.
    exclude: Option<Exclude>,
}

impl Ahead {
    /// Walks every source; the bytes of data it advised, or `None` once stopped.
    fn run(mut self, sources: &[Source]) -> Option<u64> {
        for source in sources {
            self.exclude = Exclude::new(&source.exclude);
            let opened = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
                .open(&source.path);
            if let Ok(node) = opened.and_then(|fd| Node::new(fd, source.path.clone()))
                && !self.visit(node, &mut Vec::new())
            {
                return None;
            }
        }
        self.send_hints();
        Some(self.advised)
    }

    /// Asks the kernel to read every batched file, back to back, and closes them.
    fn send_hints(&mut self) {
        for file in self.batch.drain(..) {
            // SAFETY: a plain syscall on a descriptor we own; a failure only loses a hint.
            unsafe {
                libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED);
            }
        }
        self.batch_bytes = 0;
    }

    /// Advises one node, or walks it if it is a directory; `false` once stopped. `rel`
    /// is its path in the source (empty for the source itself), for the `exclude` patterns.
    fn visit(&mut self, node: Node, rel: &mut Vec<u8>) -> bool {
        let meta = &node.meta;
        if meta.is_file() {
            if !self.wait_for_room() {
                return false;
            }
            if let Ok(file) = node.open_for_reading() {
                // What the archive will hold of it, found as the writer finds it: a sparse
                // file's holes are not read. Its apparent size (a 1 GiB disk image holding
                // 32 KiB) would count as a window ahead of the writer for a long while and
                // stop the read-ahead meanwhile.
                let data = data_segments(&file, meta)
                    .map_or(meta.len(), |segs| segs.iter().map(|s| s.1).sum());
                self.batch.push(file);
                self.batch_bytes += data;
                self.advised += data;
                if self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
                    self.send_hints();
                }
            }
            return true;
        }
        if !meta.is_dir() || self.skip.contains(&(meta.dev(), meta.ino())) {
            return true;
        }
        // The writer's order: children sorted by name, each walked where it comes.
        let Ok(children) = node.sorted_children() else {
            return true;
        };
        for child in children {
            if self.shared.stop.load(Ordering::Relaxed) {
                return false;
            }
            let len = rel.len();
            if len > 0 {
                rel.push(b'/');
            }
            rel.extend_from_slice(child.as_bytes());
            let excluded = self.exclude.as_ref().is_some_and(|e| e.matches(rel));
            let path = node.path.join(&child);
            let stopped = !excluded
                && node
                    .child(&child)
                    .and_then(|fd| Node::new(fd, path))
                    .is_ok_and(|child| !self.visit(child, rel));
            rel.truncate(len);
            if stopped {
                return false;
            }
        }
        true
    }

    fn window_full(&self) -> bool {
        self.advised >= self.shared.consumed.load(Ordering::Relaxed) + WINDOW
    }

    /// Waits while the read-ahead is a window ahead of the writer; `false` once stopped.
    fn wait_for_room(&mut self) -> bool {
        if self.window_full() {
            // The writer may be waiting for these very files.
            self.send_hints();
        }
        let mut guard = self.shared.lock.lock().expect("prefetch lock");
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return false;
            }
            if !self.window_full() {
                return true;
            }
            // The timeout only covers a wake-up lost between the check and the wait.
            guard = self
                .shared
                .wake
                .wait_timeout(guard, Duration::from_millis(50))
                .expect("prefetch lock")
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_sparse_file_counts_by_its_data_and_does_not_stop_the_read_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let image = fs::File::create(dir.path().join("a.img")).unwrap();
        image.set_len(4 << 30).unwrap();
        image.write_at(&[1; 4096], 1 << 30).unwrap();
        fs::write(dir.path().join("b.txt"), vec![7u8; 10_000]).unwrap();
        let source = Source {
            archive_dir: "volumes/v".into(),
            path: dir.path().to_path_buf(),
            exclude: Vec::new(),
        };
        let prefetch = Prefetch::start(vec![source], Vec::new());
        // No writer reports progress here: counted by its apparent size, the image would
        // put the read-ahead 4 GiB past its window, and it would wait there for good.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(prefetch.into_walked()));
        let walked = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the read-ahead went on past the sparse file");
        assert_eq!(walked, Some(4096 + 10_000));
    }
}
