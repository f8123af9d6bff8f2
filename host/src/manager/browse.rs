//! Browse: a snapshot's folders, listed from its entry index without inflating the
//! archive.
//!
//! The top level lists the snapshot's mounts (`volumes/<name>`, `binds/<escaped path>`,
//! `project`) with the container path each serves; below, each folder is one range of
//! the index. The backup writes the index beside the archive; a snapshot without one
//! (an import, a fetch, an older snapshot) gets it at its first listing (one sequential
//! read, under a heavy slot). One whose sha256 is not the archive's recorded one is
//! never used, but made again. A path in a request is only
//! ever compared with the index's paths: it never reaches the filesystem.

use std::io::Read;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::ManagerError;
use super::{BackupManager, check_path};
use crate::archive::index::{self, EntryKind, Index};
use crate::catalog::Snapshot;

/// Most entries one page lists.
pub const MAX_PAGE: usize = 1000;

/// One page of a folder's listing.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Listing {
    pub snapshot_id: String,
    /// The folder listed (empty: the snapshot's mounts).
    pub path: String,
    /// In name order.
    pub entries: Vec<FileInfo>,
    /// Pass it as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What a download of a snapshot's path gives: read its reader on a blocking thread.
pub enum Download {
    /// A regular file's bytes.
    File(FileContent),
    /// A folder, as a `.tar.gz` of its subtree ([`crate::archive::subtree`]), named
    /// `<folder>.tar.gz`; its length is not known ahead.
    Folder {
        name: String,
        reader: Box<dyn Read + Send>,
    },
}

/// A file's bytes, as `file_content` opened them.
pub struct FileContent {
    /// Its name (the last path component), lossy UTF-8.
    pub name: String,
    /// The file's whole logical size.
    pub size: u64,
    /// The first byte `reader` gives, and how many it gives.
    pub start: u64,
    pub len: u64,
    pub reader: Box<dyn Read + Send>,
}

/// One entry of a listing. Names that are not UTF-8 are shown with U+FFFD in place of
/// the bytes that are not.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FileInfo {
    pub name: String,
    /// The archive path, for the next listing or a download.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// A file's logical size in bytes (a sparse file's full length); 0 otherwise.
    pub size: u64,
    /// Permission bits, octal as text (`0644`).
    pub mode: String,
    pub uid: u64,
    pub gid: u64,
    pub mtime: DateTime<Utc>,
    /// A link's target, as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// For a mount (top level): the path it has in its containers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_path: Option<String>,
}

impl BackupManager {
    /// One page of the folder `path` of `snapshot_id`: up to `limit` entries (at most
    /// [`MAX_PAGE`]) after `cursor`. With a `query`, instead, the entries anywhere under
    /// `path` (the whole snapshot when empty) whose name holds it, case-insensitively,
    /// in index order (folder by folder). Errors: `InvalidId`, `InvalidPath` (absolute,
    /// `.`, `..`, NUL, too long; a query over 256 bytes), `SnapshotNotFound`,
    /// `PathNotFound` (no such folder), `Corrupt` when the archive cannot be read to make
    /// its index.
    pub async fn files(
        &self,
        snapshot_id: &str,
        path: &str,
        query: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Listing, ManagerError> {
        let snapshot = self.store.get(snapshot_id)?;
        let folder = check_path(path)?;
        let query = query.filter(|q| !q.is_empty());
        if query.is_some_and(|q| q.len() > 256 || q.contains('\0')) {
            return Err(ManagerError::InvalidPath(format!("query {query:?}")));
        }
        let start = parse_cursor(cursor)?;
        let limit = limit.clamp(1, MAX_PAGE);
        let page = |all: &mut dyn Iterator<Item = FileInfo>| -> Vec<FileInfo> {
            all.skip(start).take(limit + 1).collect()
        };
        let mut entries = match query {
            None if folder.is_empty() => page(&mut mounts(&snapshot).into_iter()),
            None => {
                let index = self.index_of(&snapshot).await?;
                let damaged = self.index_damaged(&snapshot);
                let listed = (|| {
                    let children = index.children(folder.as_bytes())?;
                    if children.is_empty() && !is_folder(&index, &snapshot, &folder)? {
                        return Ok(None);
                    }
                    let shown = children.skip(start).take(limit + 1);
                    shown
                        .map(|i| index.entry(i).map(info))
                        .collect::<std::io::Result<Vec<_>>>()
                        .map(Some)
                })()
                .map_err(damaged)?;
                listed.ok_or_else(|| ManagerError::PathNotFound {
                    snapshot_id: snapshot_id.into(),
                    path: folder.clone(),
                    what: "folder",
                })?
            }
            Some(query) => {
                let index = self.index_of(&snapshot).await?;
                let all = index.iter().map_err(self.index_damaged(&snapshot))?;
                let (needle, prefix) = (query.to_lowercase(), format!("{folder}/"));
                page(
                    &mut all
                        .filter(|e| folder.is_empty() || e.path.starts_with(prefix.as_bytes()))
                        .filter(|e| {
                            String::from_utf8_lossy(e.split().1)
                                .to_lowercase()
                                .contains(&needle)
                        })
                        .map(info),
                )
            }
        };
        let next_cursor = (entries.len() > limit).then(|| (start + limit).to_string());
        entries.truncate(limit);
        Ok(Listing {
            snapshot_id: snapshot.snapshot_id,
            path: folder,
            entries,
            next_cursor,
        })
    }

    /// A regular file of the snapshot, to read: all of it, or the bytes `range` names
    /// (`(start, Some(end))` inclusive, `(start, None)` to the end). Only the gzip members
    /// holding the file are inflated. A hard link reads as the file it links to. A
    /// folder comes as a `.tar.gz` of its subtree (whole: `range` does not apply).
    /// Errors: those of [`Self::files`], `PathNotFound`, `NotAFile` (a symlink, a
    /// device, a mount's top level, …), `BadRange` (starts beyond the end), `Corrupt`
    /// when the archive does not hold the file where its index says.
    pub async fn file_content(
        &self,
        snapshot_id: &str,
        path: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Download, ManagerError> {
        let snapshot = self.store.get(snapshot_id)?;
        let path = check_path(path)?;
        let index = self.index_of(&snapshot).await?;
        let not_found = || ManagerError::PathNotFound {
            snapshot_id: snapshot_id.into(),
            path: path.clone(),
            what: "file",
        };
        let damaged = || self.index_damaged(&snapshot);
        let mut entry = index
            .get(path.as_bytes())
            .map_err(damaged())?
            .ok_or_else(not_found)?;
        if entry.kind == EntryKind::Hardlink {
            let target = entry.link.unwrap_or_default();
            entry = index
                .get(target)
                .map_err(damaged())?
                .ok_or_else(not_found)?;
        }
        if entry.kind == EntryKind::Dir {
            let (archive, folder) = (PathBuf::from(&snapshot.file_path), entry.to_owned());
            let name = format!("{}.tar.gz", String::from_utf8_lossy(folder.split().1));
            let reader = tokio::task::spawn_blocking(move || {
                let tree = crate::archive::subtree::open(&archive, index, &folder)?;
                let gz = flate2::read::GzEncoder::new(tree, flate2::Compression::new(3));
                Ok::<_, std::io::Error>(Box::new(gz) as Box<dyn Read + Send>)
            })
            .await
            .map_err(|e| ManagerError::Corrupt(format!("read task: {e}")))?
            .map_err(|e| ManagerError::Corrupt(format!("cannot read `{path}`: {e}")))?;
            return Ok(Download::Folder { name, reader });
        }
        if entry.kind != EntryKind::File {
            return Err(ManagerError::NotAFile(path));
        }
        let size = entry.size;
        let (start, end) = match range {
            None => (0, size.saturating_sub(1)),
            Some((start, _)) if start >= size => return Err(ManagerError::BadRange { size }),
            Some((start, end)) => (start, end.unwrap_or(u64::MAX).min(size - 1)),
        };
        let len = if size == 0 { 0 } else { end + 1 - start };
        let (archive, entry, name) = (
            PathBuf::from(&snapshot.file_path),
            entry.to_owned(),
            String::from_utf8_lossy(entry.split().1).into_owned(),
        );
        let reader = tokio::task::spawn_blocking(move || {
            let mut content = index::open_file(&archive, &index, entry.as_ref())?;
            std::io::copy(&mut (&mut content).take(start), &mut std::io::sink())?;
            Ok::<_, std::io::Error>(Box::new(content.take(len)) as Box<dyn Read + Send>)
        })
        .await
        .map_err(|e| ManagerError::Corrupt(format!("read task: {e}")))?
        .map_err(|e| ManagerError::Corrupt(format!("cannot read `{path}`: {e}")))?;
        Ok(Download::File(FileContent {
            name,
            size,
            start,
            len,
            reader,
        }))
    }
}

/// How many entries a page starts after (`next_cursor` of the page before).
fn parse_cursor(cursor: Option<&str>) -> Result<usize, ManagerError> {
    cursor.map_or(Ok(0), |c| {
        c.parse()
            .map_err(|_| ManagerError::InvalidPath(format!("cursor {c}")))
    })
}

/// Whether `folder` is a folder of the snapshot: a directory entry, or a mount's folder
/// (which an empty mount has no entry for).
fn is_folder(index: &Index, snapshot: &Snapshot, folder: &str) -> std::io::Result<bool> {
    Ok(snapshot.mounts.iter().any(|m| m.archive_dir == folder)
        || index
            .get(folder.as_bytes())?
            .is_some_and(|e| e.kind == EntryKind::Dir))
}

/// The top level: each mount's folder, with the path it serves in its containers.
fn mounts(snapshot: &Snapshot) -> Vec<FileInfo> {
    let mut out: Vec<FileInfo> = snapshot
        .mounts
        .iter()
        .map(|m| FileInfo {
            name: m.archive_dir.clone(),
            path: m.archive_dir.clone(),
            kind: EntryKind::Dir,
            size: 0,
            mode: String::new(),
            uid: 0,
            gid: 0,
            mtime: snapshot.facts.created_at,
            link: None,
            container_path: Some(m.destination.clone()),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn info(e: index::EntryRef<'_>) -> FileInfo {
    FileInfo {
        name: String::from_utf8_lossy(e.split().1).into_owned(),
        path: String::from_utf8_lossy(e.path).into_owned(),
        kind: e.kind,
        size: e.size,
        mode: format!("{:04o}", e.mode),
        uid: e.uid,
        gid: e.gid,
        mtime: DateTime::from_timestamp(e.mtime, 0).unwrap_or_default(),
        link: e.link.map(|l| String::from_utf8_lossy(l).into_owned()),
        container_path: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_could_leave_the_snapshot_is_refused() {
        for bad in [
            "/etc",
            "volumes/../x",
            "volumes/./x",
            "a//b",
            "a\0b",
            &"a/".repeat(3000),
        ] {
            assert!(
                matches!(check_path(bad), Err(ManagerError::InvalidPath(_))),
                "{bad:?}"
            );
        }
        assert_eq!(check_path("").unwrap(), "");
        assert_eq!(check_path("volumes/v/").unwrap(), "volumes/v");
        assert_eq!(check_path("volumes/v/a b").unwrap(), "volumes/v/a b");
    }
}
