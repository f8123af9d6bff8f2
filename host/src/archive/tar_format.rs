//! Encoding of tar headers: GNU format, with the extensions GNU tar itself reads back.
//!
//! - names and link targets over 100 bytes: GNU `L`/`K` records, which carry raw bytes, so
//!   non-UTF-8 names survive exactly;
//! - extended attributes: a PAX `x` record per entry with `SCHILY.xattr.*` keys (what GNU
//!   tar writes with `--xattrs`; a plain `tar -x` ignores them);
//! - sparse files: the old GNU sparse format (`S`), which GNU tar and the `tar` crate both
//!   read: only the data segments are stored, plus a map of where they go;
//! - owners are numeric only (no user/group names), so that a restore on another host
//!   never maps ids through that host's `/etc/passwd`.

use tar::{EntryType, Header};

/// Tar's unit: every header is one block, and every entry's data is padded with zeros to a
/// whole number of blocks.
pub const BLOCK: usize = 512;

/// Everything a header says about one entry, gathered from `lstat` by the walker.
#[derive(Debug, Clone, Default)]
pub struct EntryMeta {
    /// What the entry is; a `File` with `sparse` set becomes a GNU sparse entry (`S`).
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Numeric ids only, here and in `gid`: no names are written (see the module header).
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch; earlier times are stored as 0.
    pub mtime: i64,
    /// Bytes of data that follow the header (for sparse files: the data segments only).
    pub size: u64,
    /// A symlink's target, or for a hard link the archive name of the file's first name;
    /// raw bytes without NUL, empty for other kinds. Over 100 bytes it needs a `K` record.
    pub link: Vec<u8>,
    /// `(major, minor)` of a character or block device; not written for other kinds.
    pub device: (u32, u32),
    /// `(name, value)` pairs, each written as a PAX `SCHILY.xattr.<name>` record.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For sparse files: the logical size and the `(offset, length)` data segments.
    pub sparse: Option<(u64, Vec<(u64, u64)>)>,
}

/// The entry types appsnap writes. Sockets have none: the walker skips them, since the app
/// recreates its sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    #[default]
    File,
    Dir,
    Symlink,
    /// A further name of a file already in the archive: no data, `link` names the first.
    HardLink,
    Fifo,
    CharDevice,
    BlockDevice,
}

/// The header blocks (extensions first) for an entry named `path` (relative, `/`-separated;
/// directories get their trailing `/` here). Data, padded to [`BLOCK`], follows them.
/// The header's own name and link fields keep the first 100 bytes of a longer name or
/// target, whose whole bytes travel in the `L`/`K` record before it. A sparse map fills the
/// header's four slots, then extension blocks of 21 segments each, right after it.
pub fn header_blocks(path: &[u8], meta: &EntryMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK * 2);
    let mut name = path.to_vec();
    if meta.kind == Kind::Dir && !name.ends_with(b"/") {
        name.push(b'/');
    }
    if !meta.xattrs.is_empty() {
        let mut records = Vec::new();
        for (key, value) in &meta.xattrs {
            let mut k = b"SCHILY.xattr.".to_vec();
            k.extend_from_slice(key);
            pax_record(&mut records, &k, value);
        }
        extension(&mut out, b"././@PaxHeader", EntryType::XHeader, &records);
    }
    if name.len() > 100 {
        let mut data = name.clone();
        data.push(0);
        extension(&mut out, b"././@LongLink", EntryType::GNULongName, &data);
    }
    if meta.link.len() > 100 {
        let mut data = meta.link.clone();
        data.push(0);
        extension(&mut out, b"././@LongLink", EntryType::GNULongLink, &data);
    }

    let mut h = Header::new_gnu();
    set_name(&mut h, &name);
    h.set_mode(meta.mode & 0o7777);
    h.set_uid(meta.uid);
    h.set_gid(meta.gid);
    h.set_mtime(meta.mtime.max(0) as u64);
    h.set_size(meta.size);
    h.set_entry_type(match meta.kind {
        Kind::File if meta.sparse.is_some() => EntryType::GNUSparse,
        Kind::File => EntryType::Regular,
        Kind::Dir => EntryType::Directory,
        Kind::Symlink => EntryType::Symlink,
        Kind::HardLink => EntryType::Link,
        Kind::Fifo => EntryType::Fifo,
        Kind::CharDevice => EntryType::Char,
        Kind::BlockDevice => EntryType::Block,
    });
    if !meta.link.is_empty() {
        let n = meta.link.len().min(100);
        h.as_old_mut().linkname[..n].copy_from_slice(&meta.link[..n]);
    }
    let gnu = h.as_gnu_mut().expect("new_gnu header");
    if matches!(meta.kind, Kind::CharDevice | Kind::BlockDevice) {
        gnu.set_device_major(meta.device.0);
        gnu.set_device_minor(meta.device.1);
    }
    let mut ext_blocks = Vec::new();
    if let Some((real_size, segments)) = &meta.sparse {
        gnu.set_real_size(*real_size);
        // GNU marks a file that ends in a hole with a last, empty segment at its end.
        let mut map = segments.clone();
        if map.last().is_none_or(|&(off, len)| off + len < *real_size) {
            map.push((*real_size, 0));
        }
        let (first, rest) = map.split_at(map.len().min(4));
        for (slot, &(off, len)) in gnu.sparse.iter_mut().zip(first) {
            slot.set_offset(off);
            slot.set_length(len);
        }
        gnu.set_is_extended(!rest.is_empty());
        let mut chunks = rest.chunks(21).peekable();
        while let Some(chunk) = chunks.next() {
            let mut ext = tar::GnuExtSparseHeader::new();
            for (slot, &(off, len)) in ext.sparse_mut().iter_mut().zip(chunk) {
                slot.set_offset(off);
                slot.set_length(len);
            }
            ext.set_is_extended(chunks.peek().is_some());
            ext_blocks.extend_from_slice(ext.as_bytes());
        }
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&ext_blocks);
    out
}

/// Zero bytes that pad `len` bytes of data to a whole block (0 when it is one already).
pub fn padding(len: u64) -> usize {
    (BLOCK - (len % BLOCK as u64) as usize) % BLOCK
}

/// The end-of-archive marker: two zero blocks.
pub const END: [u8; BLOCK * 2] = [0; BLOCK * 2];

/// Copies at most the first 100 bytes of `name` into the old-style name field; a longer
/// name relies on the `L` record written before the header.
fn set_name(h: &mut Header, name: &[u8]) {
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
}

/// A pseudo-entry (`L`, `K`, `x`) whose data describes the next real entry.
fn extension(out: &mut Vec<u8>, name: &[u8], kind: EntryType, data: &[u8]) {
    let mut h = Header::new_gnu();
    set_name(&mut h, name);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_entry_type(kind);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + padding(data.len() as u64), 0);
}

/// `"<len> <key>=<value>\n"`, where `<len>` counts the whole record, its own digits too.
/// Found by iterating, because adding a digit to the length can itself add a digit.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        for n in [0usize, 1, 5, 90, 91, 92, 995, 996, 1000] {
            let mut out = Vec::new();
            pax_record(&mut out, b"k", &vec![b'v'; n]);
            let space = out.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..space]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "value of {n} bytes");
        }
    }
}
