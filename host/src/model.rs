//! The shared snapshot model: what the archive, the catalog and Docker discovery all speak
//! of — a mount of an app, a tree to archive, and the checksum of a file — kept apart so
//! that none of those modules has to lean on another for it.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `{"message": "...", "details": "..."}`: the body of every API error, and the error of a
/// failed job (jobs carry it without knowing HTTP; `api::error` fills both the same way).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Short and stable: panels match on it.
    pub message: String,
    /// What exactly went wrong.
    pub details: String,
}

/// One piece of an app's data, as recorded in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Mount {
    /// `volume`, `bind` or `project` (the compose working dir).
    #[serde(rename = "type")]
    pub kind: String,
    /// Volume name, or the host path of a bind mount / project dir.
    pub name: String,
    /// Host path the data was read from.
    pub source: String,
    /// Where containers see it (comma-separated when several); empty for the project dir
    /// or a volume no container mounts.
    pub destination: String,
    /// Folder of this mount inside the archive.
    pub archive_dir: String,
}

/// One tree to archive: the host path and the folder it becomes in the archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Source {
    pub archive_dir: String,
    pub path: PathBuf,
}

/// A host path as one archive folder name: `/srv/app/data` → `srv%2Fapp%2Fdata`.
/// Reversible (`%` is escaped too) and free of `/`.
pub fn escape_path(path: &str) -> String {
    path.trim_start_matches('/')
        .replace('%', "%25")
        .replace('/', "%2F")
}

/// Checks what an archive's metadata says about its mounts before anything believes it:
/// known kinds, names that fit their kind, and each mount's archive folder exactly the
/// one its kind and name give (so a folder name cannot smuggle in another meaning).
pub fn check_mounts(mounts: &[Mount]) -> Result<(), String> {
    let mut folders = std::collections::HashSet::new();
    for m in mounts {
        let expected = match m.kind.as_str() {
            "volume" => {
                let ok = m
                    .name
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
                    && m.name.len() <= 255
                    && m.name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                if !ok {
                    return Err(format!("`{}` is not a Docker volume name", m.name));
                }
                format!("volumes/{}", m.name)
            }
            "bind" => {
                let p = Path::new(&m.name);
                let ok = p.is_absolute()
                    && !m.name.contains('\0')
                    && p.components().all(|c| c != std::path::Component::ParentDir);
                if !ok {
                    return Err(format!("bind `{}` is not an absolute, plain path", m.name));
                }
                format!("binds/{}", escape_path(&m.name))
            }
            "project" => "project".to_string(),
            other => return Err(format!("unknown mount type `{other}`")),
        };
        if m.archive_dir != expected {
            return Err(format!(
                "{} `{}` must be archived under `{expected}`, not `{}`",
                m.kind, m.name, m.archive_dir
            ));
        }
        if !folders.insert(expected.clone()) {
            return Err(format!("`{expected}` is listed twice"));
        }
    }
    Ok(())
}

/// sha256 (hex) and length of a file, read once. A second thread reads while this one
/// hashes: one after the other, a cold read and the hash took the sum of both (a restore's
/// "verifying the checksum" of 2.3 GB took 3.0–3.6 s, where each alone takes ≈ 1.5 s here).
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    const BLOCK: usize = 4 << 20;
    const BLOCKS: usize = 4;
    let mut file = File::open(path)?;
    std::thread::scope(|s| {
        // Buffers go round: empty to the reader, full (with their length) to the hasher.
        let (full_tx, full) = std::sync::mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(BLOCKS);
        let (empty, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BLOCKS);
        for _ in 0..BLOCKS {
            empty.send(vec![0; BLOCK]).expect("room for every buffer");
        }
        s.spawn(move || {
            while let Ok(mut buf) = empty_rx.recv() {
                let filled = read_full(&mut file, &mut buf);
                let end = matches!(filled, Ok(0) | Err(_));
                if full_tx.send(filled.map(|n| (buf, n))).is_err() || end {
                    return;
                }
            }
        });
        let mut hash = Sha256::new();
        let mut total = 0u64;
        loop {
            // An error returns at once; dropping `empty` then ends the reader.
            let (buf, n) = full
                .recv()
                .map_err(|_| io::Error::other("reader thread died"))??;
            if n == 0 {
                return Ok((hex(&hash.finalize()), total));
            }
            hash.update(&buf[..n]);
            total += n as u64;
            let _ = empty.send(buf);
        }
    })
}

/// Reads until `buf` is full or the input ends; the bytes read.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reader thread hands over blocks in order, whatever the file's length: empty,
    /// shorter than a block, and several blocks ending mid-block.
    #[test]
    fn sha256_file_matches_a_one_pass_hash() {
        for len in [0usize, 1000, (9 << 20) + 3] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &data).unwrap();
            let (sha, n) = sha256_file(file.path()).unwrap();
            assert_eq!(n, len as u64);
            assert_eq!(sha, hex(&Sha256::digest(&data)), "{len} bytes");
        }
        assert!(sha256_file(Path::new("/nonexistent/appsnap")).is_err());
    }
}
