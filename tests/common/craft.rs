//! Hand-made archives for the tests that attack the reader and the extractor, and the
//! memory probe they are measured with. Built byte by byte (not with `tar::Builder`),
//! so that they can say what no honest writer would: `..`, absolute names, links out.

use std::fs;
use std::io::Write;

use tar::{EntryType, Header};

/// One crafted entry: name, type, link target, data.
pub type Crafted<'a> = (&'a [u8], EntryType, &'a [u8], &'a [u8]);

/// A GNU tar header of `name` (mode 0644, root, a fixed mtime), its checksum set.
pub fn header(name: &[u8], kind: EntryType, size: u64) -> Header {
    header_linked(name, kind, b"", size)
}

/// [`header`] with a link target (a block device gets 8:0).
fn header_linked(name: &[u8], kind: EntryType, link: &[u8], size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    if kind == EntryType::Block {
        h.set_device_major(8).unwrap();
        h.set_device_minor(0).unwrap();
    }
    h.set_size(size);
    h.set_cksum();
    h
}

/// A gzip'd tar: `meta` as the metadata entry, then `entries`.
pub fn archive_with(meta: &str, entries: &[Crafted]) -> Vec<u8> {
    let mut tar = Vec::new();
    let mut add = |name: &[u8], kind: EntryType, link: &[u8], data: &[u8]| {
        tar.extend_from_slice(header_linked(name, kind, link, data.len() as u64).as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    };
    add(b"appsnap.json", EntryType::Regular, b"", meta.as_bytes());
    for (name, kind, link, data) in entries {
        add(name, *kind, link, data);
    }
    tar.extend_from_slice(&[0; 1024]);
    gz_of(&mut |out| out.write_all(&tar).unwrap())
}

/// gzip (one member, fast) of a tar stream made of `parts` written one after another.
pub fn gz_of(parts: &mut dyn FnMut(&mut dyn Write)) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    parts(&mut gz);
    gz.finish().unwrap()
}

/// `VmHWM` (peak resident set) of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}
