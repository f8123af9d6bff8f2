//! A tar reader that believes nothing an archive claims before it is checked — the reading
//! half of [`super::tar_format`], for restore, verify and import.
//!
//! The `tar` crate reads a GNU long name or a PAX record whole into memory, whatever size
//! its header claims (a 1 MB archive can ask for 1 GiB), and expands a sparse entry by
//! *reading* its holes as zeros (a 541-byte archive can describe a 1 PiB file). Here:
//! - long names, long link targets and PAX records are at most [`MAX_EXTENSION`] bytes;
//! - a sparse entry comes as its map (at most [`MAX_SPARSE_SEGMENTS`] segments, ordered,
//!   inside a logical size of at most [`MAX_LOGICAL_SIZE`]) plus its stored data, so the
//!   cost is O(stored bytes + map), never O(logical size): holes are the writer's seeks;
//! - the archive must end with tar's end-of-archive marker, and nothing but zeros after it
//!   (a stream cut between two entries is truncated, not shorter);
//! - every header's checksum is checked.
//!
//! The header layouts themselves are decoded with the `tar` crate's `Header` types.

use std::io::{self, Read};

use tar::{EntryType, Header};

/// Tar's unit: each header is one block, and each entry's data is padded to whole blocks.
pub const BLOCK: u64 = 512;
/// Longest GNU long name / long link / PAX extension record set accepted.
pub const MAX_EXTENSION: u64 = 64 << 10;
/// Most segments a sparse entry's map may have.
pub const MAX_SPARSE_SEGMENTS: usize = 1 << 20;
/// Largest logical size of a sparse file (ext4's largest file, 16 TiB).
pub const MAX_LOGICAL_SIZE: u64 = 1 << 44;

/// One entry, with every extension applied.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Raw bytes: PAX `path`, else a GNU long name, else the header's field. Not checked
    /// for `/` or `..` here: that is the extractor's job.
    pub name: Vec<u8>,
    /// The header's type flag; extension types (`L`, `K`, `x`, `g`) never appear here.
    pub kind: EntryType,
    /// Permission bits only (`& 0o7777`): no file type bits.
    pub mode: u32,
    /// Numeric owner and group, from the header or PAX, as stored (not range-checked).
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch; a PAX fraction of a second is dropped.
    pub mtime: i64,
    /// Symlink or hard-link target: PAX `linkpath`, else a GNU long link, else the
    /// header's field; `None` when none of them gives one.
    pub link: Option<Vec<u8>>,
    /// `(major, minor)` for character and block devices, `(0, 0)` for anything else.
    pub device: (u32, u32),
    /// From PAX `SCHILY.xattr.*` records, in archive order. Other PAX keys than those
    /// above (`path`, `linkpath`, `size`, `uid`, `gid`, `mtime`) are ignored.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes of data stored after the header (for a sparse file: its segments only).
    /// Exactly what `read_data` gives for this entry; for a sparse file, checked to be
    /// the sum of its segments' lengths.
    pub size: u64,
    /// For a GNU sparse file: the logical size and the `(offset, length)` segments, in
    /// order, whose data follows one after the other.
    pub sparse: Option<(u64, Vec<(u64, u64)>)>,
}

/// An `InvalidData` error: the archive is malformed (the extractor reports it as corrupt).
fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// An `UnexpectedEof` error: the stream ended inside a header, inside data, or before the
/// end-of-archive marker.
fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the archive ends before tar's end-of-archive marker (truncated)",
    )
}

/// Reads entries off `inner` one after the other: `next_entry`, then `read_data` until it
/// returns 0. Memory per entry is one header block, at most [`MAX_EXTENSION`] bytes of
/// extensions and a sparse map of at most [`MAX_SPARSE_SEGMENTS`] segments; data goes
/// straight into the caller's buffer, so no size an archive claims is allocated unbounded.
pub struct TarReader<R> {
    inner: R,
    /// Bytes of the tar stream read so far.
    pub bytes: u64,
    /// Data bytes of the current entry not yet read, then its padding.
    remaining: u64,
    /// Skipped, never checked to be zeros.
    padding: u64,
}

impl<R: Read> TarReader<R> {
    /// A reader of the tar stream `inner`, which must be at the stream's first header.
    pub fn new(inner: R) -> TarReader<R> {
        TarReader {
            inner,
            bytes: 0,
            remaining: 0,
            padding: 0,
        }
    }

    /// Fills `buf` completely; a short stream is truncation. Counts into `bytes`.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => return Err(truncated()),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.bytes += n as u64;
        Ok(())
    }

    /// Reads and drops `n` bytes through a fixed 8 KiB buffer: a forged size costs reading
    /// time (or a truncation error), never memory.
    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            self.fill(&mut buf[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// An extension's data (long name, PAX records), bounded before anything is read.
    /// Its padding is skipped too, so the stream is left at the next header.
    fn small_data(&mut self, size: u64, what: &str) -> io::Result<Vec<u8>> {
        if size > MAX_EXTENSION {
            return Err(bad(format!(
                "a {what} of {size} bytes (the limit is {MAX_EXTENSION})"
            )));
        }
        let mut data = vec![0; size as usize];
        self.fill(&mut data)?;
        self.skip(pad(size))?;
        Ok(data)
    }

    /// The current entry's data: reads at most what is left of it.
    /// Returns 0 once the entry's `size` bytes are read, never reading into the padding or
    /// the next header. A stream that ends sooner is an `UnexpectedEof` error, so a cut
    /// archive never passes for a shorter file.
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.fill(&mut buf[..n])?;
        self.remaining -= n as u64;
        Ok(n)
    }

    /// The reader below, as it is.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Reads the current entry's padding, once its data is read to the end, so that the
    /// stream stands at the next header (what a tree copy records byte for byte).
    pub fn skip_padding(&mut self) -> io::Result<()> {
        if self.remaining > 0 {
            return Err(io::Error::other("the entry's data is not read to its end"));
        }
        self.skip(self.padding)?;
        self.padding = 0;
        Ok(())
    }

    /// The next entry, or `None` at the end-of-archive marker (after checking that only
    /// zeros follow it). Whatever the caller left unread of the previous entry is skipped.
    ///
    /// Several `x` records before one entry add up, bounded together by [`MAX_EXTENSION`];
    /// a global `g` record is read within that bound and ignored. Errors: `InvalidData` for
    /// a bad checksum or numeric field, an extension too large or with no entry after it, a
    /// malformed PAX record or sparse map, or data after the end marker; `UnexpectedEof`
    /// when the stream ends first; the inner reader's own errors as they are.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;
        let (mut long_name, mut long_link, mut pax): (Option<Vec<u8>>, Option<Vec<u8>>, Vec<u8>) =
            (None, None, Vec::new());
        loop {
            let mut block = [0u8; BLOCK as usize];
            self.fill(&mut block)?;
            if block.iter().all(|&b| b == 0) {
                if long_name.is_some() || long_link.is_some() || !pax.is_empty() {
                    return Err(bad("an extension header with no entry after it"));
                }
                self.end()?;
                return Ok(None);
            }
            let header = Header::from_byte_slice(&block);
            check_sum(&block, header)?;
            let kind = header.entry_type();
            let size = header.entry_size()?;
            match kind {
                EntryType::GNULongName => {
                    long_name = Some(trim_nul(self.small_data(size, "long name")?))
                }
                EntryType::GNULongLink => {
                    long_link = Some(trim_nul(self.small_data(size, "long link target")?))
                }
                EntryType::XHeader => {
                    if pax.len() as u64 + size > MAX_EXTENSION {
                        return Err(bad(format!(
                            "PAX records of more than {MAX_EXTENSION} bytes"
                        )));
                    }
                    let data = self.small_data(size, "PAX record set")?;
                    pax.extend_from_slice(&data);
                }
                EntryType::XGlobalHeader => {
                    self.small_data(size, "global PAX record set")?;
                }
                _ => return self.entry(header, long_name, long_link, &pax).map(Some),
            }
        }
    }

    /// The real entry after its extensions: PAX records override the header (as GNU tar
    /// and the `tar` crate read them), a GNU sparse map is read and checked.
    /// A PAX `size` replaces the header's and is what the data is read by; it is only ever
    /// read through, never allocated. Leaves `remaining` and `padding` set for the data.
    fn entry(
        &mut self,
        header: &Header,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
        pax: &[u8],
    ) -> io::Result<Entry> {
        let kind = header.entry_type();
        let mut e = Entry {
            name: long_name.unwrap_or_else(|| header.path_bytes().into_owned()),
            kind,
            mode: header.mode()? & 0o7777,
            uid: header.uid()?,
            gid: header.gid()?,
            mtime: header.mtime()? as i64,
            link: long_link.or_else(|| header.link_name_bytes().map(|l| l.into_owned())),
            device: (0, 0),
            xattrs: Vec::new(),
            size: header.entry_size()?,
            sparse: None,
        };
        if matches!(kind, EntryType::Char | EntryType::Block) {
            e.device = (
                header.device_major()?.unwrap_or(0),
                header.device_minor()?.unwrap_or(0),
            );
        }
        for (key, value) in pax_records(pax)? {
            let number = || -> io::Result<u64> {
                let text = std::str::from_utf8(value).map_err(|_| bad("a PAX number"))?;
                let whole = text.split('.').next().unwrap_or_default();
                whole
                    .parse()
                    .map_err(|_| bad(format!("PAX value `{text}`")))
            };
            match key {
                b"path" => e.name = value.to_vec(),
                b"linkpath" => e.link = Some(value.to_vec()),
                b"size" => e.size = number()?,
                b"uid" => e.uid = number()?,
                b"gid" => e.gid = number()?,
                b"mtime" => e.mtime = number()? as i64,
                k => {
                    if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                        e.xattrs.push((name.to_vec(), value.to_vec()));
                    }
                }
            }
        }
        if kind == EntryType::GNUSparse {
            e.sparse = Some(self.sparse_map(header, e.size)?);
        }
        self.remaining = e.size;
        self.padding = pad(e.size);
        Ok(e)
    }

    /// A GNU sparse entry's map: four slots in the header, then 21 per extension block.
    /// Checked: the logical size is at most [`MAX_LOGICAL_SIZE`], there are at most
    /// [`MAX_SPARSE_SEGMENTS`] segments (checked after each extension block, so the map
    /// never grows far past it), segments come in order without overlap and end within the
    /// logical size, and their lengths add up to `stored`, the entry's data size. Empty
    /// segments (GNU's marker of a file ending in a hole) are dropped.
    fn sparse_map(&mut self, header: &Header, stored: u64) -> io::Result<(u64, Vec<(u64, u64)>)> {
        let gnu = header
            .as_gnu()
            .ok_or_else(|| bad("a sparse entry without a GNU header"))?;
        let real = gnu.real_size()?;
        if real > MAX_LOGICAL_SIZE {
            return Err(bad(format!(
                "a sparse file of {real} bytes (the limit is {MAX_LOGICAL_SIZE})"
            )));
        }
        let mut raw: Vec<(u64, u64)> = Vec::new();
        for slot in gnu.sparse.iter().filter(|s| !s.is_empty()) {
            raw.push((slot.offset()?, slot.length()?));
        }
        let mut extended = gnu.is_extended();
        while extended {
            let mut block = [0u8; BLOCK as usize];
            self.fill(&mut block)?;
            for slot in block[..504].chunks(24) {
                if slot[0] == 0 {
                    continue;
                }
                raw.push((octal(&slot[..12])?, octal(&slot[12..])?));
            }
            extended = block[504] != 0;
            if raw.len() > MAX_SPARSE_SEGMENTS {
                return Err(bad(format!(
                    "a sparse map of more than {MAX_SPARSE_SEGMENTS} segments"
                )));
            }
        }
        let (mut end, mut total) = (0u64, 0u64);
        let mut segments = Vec::with_capacity(raw.len());
        for (off, len) in raw {
            let stop = off
                .checked_add(len)
                .filter(|&s| off >= end && s <= real)
                .ok_or_else(|| bad("a sparse map out of order or past the file's end"))?;
            end = stop;
            total += len;
            if len > 0 {
                segments.push((off, len));
            }
        }
        if total != stored {
            return Err(bad(format!(
                "a sparse map of {total} bytes for {stored} stored bytes"
            )));
        }
        Ok((real, segments))
    }

    /// After the first zero block: the second, then only zeros to the end.
    /// The inner stream is read to its very end, so the gzip layer below checks its last
    /// members too: a corrupt tail is an error, not ignored. A single zero block at the end
    /// of the stream is truncation.
    fn end(&mut self) -> io::Result<()> {
        let mut second = [0u8; BLOCK as usize];
        self.fill(&mut second)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match self.inner.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.bytes += n as u64;
            if buf[..n].iter().any(|&b| b != 0) {
                return Err(bad("data after tar's end-of-archive marker"));
            }
        }
        if second.iter().any(|&b| b != 0) {
            return Err(bad("data after tar's end-of-archive marker"));
        }
        Ok(())
    }
}

/// Zero bytes after `size` bytes of data, up to the next whole block.
pub fn pad(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// A GNU long name or link without its trailing NUL(s): the record's data ends with one.
fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// The header checksum: the unsigned sum of the block's bytes, with the checksum field
/// (bytes 148..156) counted as eight spaces. A random or misaligned block almost always
/// fails it, which is how a stream that lost its place is caught.
fn check_sum(block: &[u8; BLOCK as usize], header: &Header) -> io::Result<()> {
    let sum: u32 = block[..148]
        .iter()
        .chain(&block[156..])
        .map(|&b| u32::from(b))
        .sum::<u32>()
        + 8 * 32;
    if header.cksum()? != sum {
        return Err(bad("tar header checksum mismatch"));
    }
    Ok(())
}

/// `"<len> <key>=<value>\n"` records; a malformed one is refused.
/// Each `<len>` must cover its record and stay within `data`. Keys and values borrow from
/// `data`; the key ends at the first `=`, and the value may hold any bytes, `=` included.
fn pax_records(mut data: &[u8]) -> io::Result<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("a PAX record without its length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|t| t.parse().ok())
            .filter(|&l| l > space + 1 && l <= data.len())
            .ok_or_else(|| bad("a PAX record with a bad length"))?;
        let record = &data[space + 1..len];
        let record = record
            .strip_suffix(b"\n")
            .ok_or_else(|| bad("a PAX record without its newline"))?;
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("a PAX record without `=`"))?;
        out.push((&record[..eq], &record[eq + 1..]));
        data = &data[len..];
    }
    Ok(out)
}

/// A numeric header field: octal text, or GNU's base-256 when the high bit is set.
/// Used for the slots of sparse extension blocks. An empty field is 0; a value over 64
/// bits or text that is not octal is refused.
fn octal(field: &[u8]) -> io::Result<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| bad("a numeric field out of range"))?;
        }
        return Ok(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|&b| b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let text = std::str::from_utf8(&text).map_err(|_| bad("a numeric field"))?;
    u64::from_str_radix(text, 8).map_err(|_| bad(format!("numeric field `{text}`")))
}
