//! One folder of an archive as a tar stream of its own: what the browse API sends when a
//! folder is downloaded.
//!
//! The entries are read from the archive through the bounded tar reader, starting at the
//! gzip member that holds the folder's own header (nothing before it is inflated), and
//! written again by appsnap's own header writer, named from the folder down (`uploads/…`
//! for `volumes/x/uploads`): the same fidelity a restore gives (type, mode, owner, mtime,
//! link target, xattrs, sparse map). Reading stops after the folder's last entry, which
//! the index names. A hard link whose file lies outside the folder is sent as that file,
//! its bytes read from the archive, so the download stands on its own.
//!
//! Names come from the archive and are untrusted: one with an empty, `.` or `..`
//! component, or an absolute one, ends the stream with an error (the client's gzip sees
//! a cut stream) rather than reach a user's `tar -x`.

use std::io::{self, Read};
use std::sync::Arc;

use tar::EntryType;

use super::index::{self, Entry, EntryKind, Index, TarAt, inside};
use super::tar_format::{END, EntryMeta, Kind, header_blocks, padding};
use super::tar_read::TarReader;

/// A tar stream of the folder `folder` of the archive `tar` reads, `index` its index
/// (`folder`: an entry of kind `Dir`, or a regular file alone).
pub fn open(tar: Arc<dyn TarAt>, index: Arc<Index>, folder: &Entry) -> io::Result<Subtree> {
    let mut last_data = folder.data_offset;
    for i in index.below(&folder.path)? {
        last_data = last_data.max(index.entry(i)?.data_offset);
    }
    let stream = tar.tar_at(folder.header_offset)?;
    let cut = match folder.path.iter().rposition(|&b| b == b'/') {
        Some(i) => i + 1,
        None => 0,
    };
    Ok(Subtree {
        reader: TarReader::new(stream),
        tar,
        index,
        folder: folder.path.clone(),
        cut,
        start: folder.header_offset,
        last_data,
        out: Vec::new(),
        at: 0,
        data: None,
        done: false,
    })
}

/// A name that the extractor's rules accept: relative, no empty, `.` or `..` component.
fn safe(name: &[u8]) -> bool {
    !name.is_empty()
        && !name.starts_with(b"/")
        && name
            .split(|&b| b == b'/')
            .all(|c| !matches!(c, b"" | b"." | b".."))
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The folder's tar stream; see [`open`].
pub struct Subtree {
    reader: TarReader<Box<dyn Read + Send>>,
    /// Where the archive is read from (a hard link's file is read from there too).
    tar: Arc<dyn TarAt>,
    index: Arc<Index>,
    folder: Vec<u8>,
    /// Bytes cut from the front of each name: the folder's parent and its `/`.
    cut: usize,
    /// The folder's own header's offset in the archive's tar stream: where the reader
    /// began (its `bytes` count from there).
    start: u64,
    /// Where the folder's last entry's data starts (an offset in the archive's tar
    /// stream): no entry beyond is read.
    last_data: u64,
    /// Bytes made and not yet read out, from `at`.
    out: Vec<u8>,
    at: usize,
    /// The current entry's data still to send.
    data: Option<Data>,
    done: bool,
}

/// Where an entry's data comes from, and how much of it is left, then its padding.
enum Data {
    /// The entry's own, from the tar stream.
    Stored { left: u64, pad: usize },
    /// A hard link's file outside the folder, read from its own place.
    Linked {
        content: Box<dyn Read + Send>,
        left: u64,
        pad: usize,
    },
}

impl Read for Subtree {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.at < self.out.len() {
                let n = buf.len().min(self.out.len() - self.at);
                buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            self.out.clear();
            self.at = 0;
            match &mut self.data {
                Some(Data::Stored { left, pad }) if *left == 0 => {
                    self.out.resize(*pad, 0);
                    self.data = None;
                }
                Some(Data::Linked { left, pad, .. }) if *left == 0 => {
                    self.out.resize(*pad, 0);
                    self.data = None;
                }
                Some(Data::Stored { left, .. }) => {
                    self.out.resize((*left).min(256 << 10) as usize, 0);
                    let n = self.reader.read_data(&mut self.out)?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    self.out.truncate(n);
                    *left -= n as u64;
                }
                Some(Data::Linked { content, left, .. }) => {
                    self.out.resize((*left).min(256 << 10) as usize, 0);
                    let n = content.read(&mut self.out)?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    self.out.truncate(n);
                    *left -= n as u64;
                }
                None if self.done => return Ok(0),
                None => self.next_entry()?,
            }
        }
    }
}

impl Subtree {
    /// Puts the next entry's header of the folder into `out` (and its data in `data`),
    /// or the end-of-archive marker after the last one.
    fn next_entry(&mut self) -> io::Result<()> {
        loop {
            let e = match self.reader.next_entry()? {
                Some(e) if self.start + self.reader.bytes <= self.last_data => e,
                // The archive's end, or past the folder's last entry.
                _ => {
                    self.finish();
                    return Ok(());
                }
            };
            let mut name = e.name.clone();
            while name.last() == Some(&b'/') {
                name.pop();
            }
            if !inside(&name, &self.folder) {
                continue; // not the folder's: its data is skipped by the next read
            }
            if !safe(&name) {
                return Err(bad(format!(
                    "the archive holds an unsafe name `{}`",
                    String::from_utf8_lossy(&name)
                )));
            }
            let kind = match e.kind {
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
                EntryType::Directory => Kind::Dir,
                EntryType::Symlink => Kind::Symlink,
                EntryType::Link => Kind::HardLink,
                EntryType::Fifo => Kind::Fifo,
                EntryType::Char => Kind::CharDevice,
                EntryType::Block => Kind::BlockDevice,
                _ => continue, // a type the extractor does not restore either
            };
            let mut meta = EntryMeta {
                kind,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime: e.mtime,
                size: if kind == Kind::File { e.size } else { 0 },
                link: e.link.clone().unwrap_or_default(),
                device: e.device,
                xattrs: e.xattrs.clone(),
                sparse: if kind == Kind::File {
                    e.sparse.clone()
                } else {
                    None
                },
            };
            if kind == Kind::File {
                self.data = Some(Data::Stored {
                    left: e.size,
                    pad: padding(e.size),
                });
            }
            if kind == Kind::HardLink {
                if !safe(&meta.link) {
                    return Err(bad(format!(
                        "the archive holds an unsafe link target `{}`",
                        String::from_utf8_lossy(&meta.link)
                    )));
                }
                if inside(&meta.link, &self.folder) {
                    meta.link = meta.link[self.cut..].to_vec();
                } else {
                    meta = self.linked_file(&meta.link)?;
                }
            }
            self.out = header_blocks(&name[self.cut..], &meta);
            return Ok(());
        }
    }

    /// A hard link's file outside the folder, as a regular file of its own: its
    /// metadata (the inode's, shared by every name) from the index, its bytes from its
    /// place in the archive (holes as zeros). Its xattrs are not carried.
    fn linked_file(&mut self, target: &[u8]) -> io::Result<EntryMeta> {
        let file = self
            .index
            .get(target)?
            .filter(|t| t.kind == EntryKind::File)
            .map(|t| t.to_owned())
            .ok_or_else(|| {
                bad(format!(
                    "a hard link to `{}`, which the archive does not hold as a file",
                    String::from_utf8_lossy(target)
                ))
            })?;
        let content = index::open_file(&*self.tar, file.as_ref())?;
        self.data = Some(Data::Linked {
            content: Box::new(content),
            left: file.size,
            pad: padding(file.size),
        });
        Ok(EntryMeta {
            kind: Kind::File,
            mode: file.mode,
            uid: file.uid,
            gid: file.gid,
            mtime: file.mtime,
            size: file.size,
            ..EntryMeta::default()
        })
    }

    /// Bytes of the archive's tar stream read so far, from the folder's header on.
    pub fn read_from_archive(&self) -> u64 {
        self.reader.bytes
    }

    fn finish(&mut self) {
        self.out = END.to_vec();
        self.data = None;
        self.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_holds_itself_and_what_is_below_it_only() {
        assert!(inside(b"v/up", b"v/up"));
        assert!(inside(b"v/up/a", b"v/up"));
        assert!(!inside(b"v/upload", b"v/up"));
        assert!(!inside(b"v", b"v/up"));
    }

    #[test]
    fn names_that_could_leave_the_download_are_refused() {
        assert!(safe(b"up/a.jpg"));
        for name in [
            &b""[..],
            b"/etc/passwd",
            b"up/../../x",
            b"up//a",
            b"./up",
            b"up/.",
        ] {
            assert!(!safe(name), "{}", String::from_utf8_lossy(name));
        }
    }
}
