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
//!
//! A copy in a repository is browsed the same way (`repository` named in the request):
//! its entry index travels with it, and its files are read from the chunks that hold
//! them ([`crate::offsite::browse`]). The copy opened last is kept open, so the listings
//! and downloads that follow pay neither the repository's opening (its key, its index)
//! nor the entry index's download again.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::ManagerError;
use super::{BackupManager, check_path};
use crate::archive::index::{self, EntryKind, Index, TarAt};
use crate::catalog::Snapshot;
use crate::model::Mount;
use crate::offsite::{OffsiteError, browse::OpenCopy};

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
    /// Browsing a copy: the repository, and the bytes read from it since the copy was
    /// opened for browsing (its index, the chunks of what was read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downloaded_bytes: Option<u64>,
}

/// A snapshot as browsing reads it: the local archive, or a copy in a repository.
pub(super) struct Browsed {
    snapshot_id: String,
    mounts: Vec<Mount>,
    created_at: DateTime<Utc>,
    index: Arc<Index>,
    tar: Arc<dyn TarAt>,
    held: Held,
}

impl Browsed {
    /// Whether it is the copy of `snapshot_id` in `repository`.
    fn is_copy(&self, repository: &str, snapshot_id: &str) -> bool {
        self.repository() == Some(repository) && self.snapshot_id == snapshot_id
    }

    /// The repository holding it, for a copy.
    pub(super) fn repository(&self) -> Option<&str> {
        match &self.held {
            Held::Copy(name, _) => Some(name),
            Held::Local(_) => None,
        }
    }
}

enum Held {
    /// The local snapshot (its index is made again when found damaged).
    Local(Box<Snapshot>),
    /// A copy, in the repository named.
    Copy(String, Arc<OpenCopy>),
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
    /// One page of the folder `path` of `snapshot_id` (of its copy in `repository` when
    /// named): up to `limit` entries (at most [`MAX_PAGE`]) after `cursor`. With a
    /// `query`, instead, the entries anywhere under `path` (the whole snapshot when
    /// empty) whose name holds it, case-insensitively, in index order (folder by
    /// folder). Errors: `InvalidId`, `InvalidPath` (absolute, `.`, `..`, NUL, too long; a
    /// query over 256 bytes), `SnapshotNotFound`, `PathNotFound` (no such folder),
    /// `Corrupt` when the archive cannot be read to make its index; for a copy, those of
    /// [`Self::browsed`].
    pub async fn files(
        &self,
        snapshot_id: &str,
        repository: Option<&str>,
        path: &str,
        query: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Listing, ManagerError> {
        self.browsable(snapshot_id, repository)?;
        let folder = check_path(path)?;
        let query = query.filter(|q| !q.is_empty());
        if query.is_some_and(|q| q.len() > 256 || q.contains('\0')) {
            return Err(ManagerError::InvalidPath(format!("query {query:?}")));
        }
        let start = parse_cursor(cursor)?;
        let limit = limit.clamp(1, MAX_PAGE);
        let b = self.browsed(snapshot_id, repository).await?;
        let index = &b.index;
        let page = |all: &mut dyn Iterator<Item = FileInfo>| -> Vec<FileInfo> {
            all.skip(start).take(limit + 1).collect()
        };
        let mut entries = match query {
            None if folder.is_empty() => page(&mut mounts(&b).into_iter()),
            None => {
                let listed = (|| {
                    let children = index.children(folder.as_bytes())?;
                    if children.is_empty() && !is_folder(&b, &folder)? {
                        return Ok(None);
                    }
                    let shown = children.skip(start).take(limit + 1);
                    shown
                        .map(|i| index.entry(i).map(info))
                        .collect::<io::Result<Vec<_>>>()
                        .map(Some)
                })()
                .map_err(self.index_damaged(&b))?;
                listed.ok_or_else(|| ManagerError::PathNotFound {
                    snapshot_id: snapshot_id.into(),
                    path: folder.clone(),
                    what: "folder",
                })?
            }
            Some(query) => {
                let all = index.iter().map_err(self.index_damaged(&b))?;
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
        let (repository, downloaded_bytes) = match &b.held {
            Held::Local(_) => (None, None),
            Held::Copy(name, copy) => (Some(name.clone()), Some(copy.downloaded())),
        };
        Ok(Listing {
            snapshot_id: b.snapshot_id.clone(),
            path: folder,
            entries,
            next_cursor,
            repository,
            downloaded_bytes,
        })
    }

    /// A regular file of the snapshot (of its copy in `repository` when named), to read:
    /// all of it, or the bytes `range` names (`(start, Some(end))` inclusive,
    /// `(start, None)` to the end). Only the gzip members (a copy: the chunks) holding
    /// the file are read. A hard link reads as the file it links to. A folder comes as a
    /// `.tar.gz` of its subtree (whole: `range` does not apply). Errors: those of
    /// [`Self::files`], `PathNotFound`, `NotAFile` (a symlink, a device, a mount's top
    /// level, …), `BadRange` (starts beyond the end), `Corrupt` when the archive does not
    /// hold the file where its index says; for a copy, a repository that fails.
    pub async fn file_content(
        &self,
        snapshot_id: &str,
        repository: Option<&str>,
        path: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Download, ManagerError> {
        self.browsable(snapshot_id, repository)?;
        let path = check_path(path)?;
        let b = self.browsed(snapshot_id, repository).await?;
        let not_found = || ManagerError::PathNotFound {
            snapshot_id: snapshot_id.into(),
            path: path.clone(),
            what: "file",
        };
        let damaged = || self.index_damaged(&b);
        let mut entry = b
            .index
            .get(path.as_bytes())
            .map_err(damaged())?
            .ok_or_else(not_found)?;
        if entry.kind == EntryKind::Hardlink {
            let target = entry.link.unwrap_or_default();
            entry = b
                .index
                .get(target)
                .map_err(damaged())?
                .ok_or_else(not_found)?;
        }
        let cannot_read = |e: io::Error| match &b.held {
            Held::Local(_) => ManagerError::Corrupt(format!("cannot read `{path}`: {e}")),
            Held::Copy(name, _) => OffsiteError::Backend {
                name: name.clone(),
                message: format!("reading `{path}` of the copy of {snapshot_id}: {e}"),
            }
            .into(),
        };
        if entry.kind == EntryKind::Dir {
            let (tar, index, folder) = (Arc::clone(&b.tar), Arc::clone(&b.index), entry.to_owned());
            let name = format!("{}.tar.gz", String::from_utf8_lossy(folder.split().1));
            let reader = tokio::task::spawn_blocking(move || {
                let tree = crate::archive::subtree::open(tar, index, &folder)?;
                let gz = flate2::read::GzEncoder::new(tree, flate2::Compression::new(3));
                Ok::<_, io::Error>(Box::new(gz) as Box<dyn Read + Send>)
            })
            .await
            .map_err(|e| ManagerError::Corrupt(format!("read task: {e}")))?
            .map_err(cannot_read)?;
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
        let (tar, entry, name) = (
            Arc::clone(&b.tar),
            entry.to_owned(),
            String::from_utf8_lossy(entry.split().1).into_owned(),
        );
        let reader = tokio::task::spawn_blocking(move || {
            let mut content = index::open_file(&*tar, entry.as_ref())?;
            io::copy(&mut (&mut content).take(start), &mut io::sink())?;
            Ok::<_, io::Error>(Box::new(content.take(len)) as Box<dyn Read + Send>)
        })
        .await
        .map_err(|e| ManagerError::Corrupt(format!("read task: {e}")))?
        .map_err(cannot_read)?;
        Ok(Download::File(FileContent {
            name,
            size,
            start,
            len,
            reader,
        }))
    }

    /// Fails as the lookup of what a request names does (no such local snapshot, no
    /// such repository) before its other parts are checked: what is not there is 404
    /// whatever else the request holds.
    fn browsable(&self, snapshot_id: &str, repository: Option<&str>) -> Result<(), ManagerError> {
        match repository {
            None => self.store.get(snapshot_id).map(drop),
            Some(name) => self.repos.get(name).map(drop),
        }
    }

    /// The snapshot `snapshot_id` to browse: the local one, or with `repository` its
    /// copy there (the one opened last when it is that copy, else opened now: the
    /// repository's key and index, the copy's entry index). Errors for a copy: those of
    /// finding it (an unknown repository, a copy it does not hold, a storage that
    /// fails), `CopyNotBrowsable` for a copy made before copies carried their index,
    /// `Corrupt` for an entry index that does not read.
    async fn browsed(
        &self,
        snapshot_id: &str,
        repository: Option<&str>,
    ) -> Result<Arc<Browsed>, ManagerError> {
        let Some(repository) = repository else {
            let snapshot = self.store.get(snapshot_id)?;
            let index = self.index_of(&snapshot).await?;
            let tar = index::Local {
                archive: PathBuf::from(&snapshot.file_path),
                index: Arc::clone(&index),
            };
            return Ok(Arc::new(Browsed {
                snapshot_id: snapshot.snapshot_id.clone(),
                mounts: snapshot.mounts.clone(),
                created_at: snapshot.facts.created_at,
                index,
                tar: Arc::new(tar),
                held: Held::Local(Box::new(snapshot)),
            }));
        };
        let cached = self.last_copy.lock().unwrap().clone();
        if let Some(b) = cached.filter(|b| b.is_copy(repository, snapshot_id)) {
            return Ok(b);
        }
        let remote = self
            .repos
            .find(&self.store, Some(repository), snapshot_id)
            .await?;
        let cfg = self.repos.get(repository)?;
        let opened = {
            let remote = remote.clone();
            tokio::task::spawn_blocking(move || crate::offsite::browse::open_copy(&cfg, &remote))
        };
        let (copy, index) = opened
            .await
            .map_err(|e| ManagerError::Corrupt(format!("open task: {e}")))??;
        let index = index.ok_or_else(|| ManagerError::CopyNotBrowsable {
            repository: repository.into(),
            snapshot_id: snapshot_id.into(),
        })?;
        let index = Index::from_file(&index).map_err(|e| {
            ManagerError::Corrupt(format!(
                "the entry index of the copy of {snapshot_id} in `{repository}`: {e}"
            ))
        })?;
        let copy = Arc::new(copy);
        let b = Arc::new(Browsed {
            snapshot_id: remote.snapshot_id.clone(),
            mounts: remote.mounts.clone(),
            created_at: remote.created_at,
            index: Arc::new(index),
            tar: Arc::new(Arc::clone(&copy)),
            held: Held::Copy(repository.into(), copy),
        });
        *self.last_copy.lock().unwrap() = Some(Arc::clone(&b));
        Ok(b)
    }

    /// For a lookup in the index of `b` that found a damaged block: the index is
    /// forgotten (a local one in memory and on disk, so that the next request builds it
    /// again from the archive; a copy's is read again), and the request that found it
    /// fails with what it was doing.
    fn index_damaged<'a>(&'a self, b: &'a Browsed) -> impl FnOnce(io::Error) -> ManagerError + 'a {
        move |source| match &b.held {
            Held::Local(snapshot) => self.local_index_damaged(snapshot)(source),
            Held::Copy(repository, _) => {
                *self.last_copy.lock().unwrap() = None;
                ManagerError::Corrupt(format!(
                    "the entry index of the copy of {} in `{repository}` is damaged: {source}",
                    b.snapshot_id
                ))
            }
        }
    }
}

/// How many entries a page starts after (`next_cursor` of the page before; none or an
/// empty one: the first page).
fn parse_cursor(cursor: Option<&str>) -> Result<usize, ManagerError> {
    cursor.filter(|c| !c.is_empty()).map_or(Ok(0), |c| {
        c.parse()
            .map_err(|_| ManagerError::InvalidPath(format!("cursor {c}")))
    })
}

/// Whether `folder` is a folder of the snapshot: a directory entry, or a mount's folder
/// (which an empty mount has no entry for).
fn is_folder(b: &Browsed, folder: &str) -> io::Result<bool> {
    Ok(b.mounts.iter().any(|m| m.archive_dir == folder)
        || b.index
            .get(folder.as_bytes())?
            .is_some_and(|e| e.kind == EntryKind::Dir))
}

/// The top level: each mount's folder, with the path it serves in its containers.
fn mounts(b: &Browsed) -> Vec<FileInfo> {
    let mut out: Vec<FileInfo> = b
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
            mtime: b.created_at,
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
