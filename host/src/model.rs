//! The shared snapshot model: what the archive, the catalog and Docker discovery all speak
//! of — a mount of an app, a tree to archive, and the checksum of a file — kept apart so
//! that none of those modules has to lean on another for it.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// sha256 (hex) and length of a file, read once.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&hash.finalize()), total))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
