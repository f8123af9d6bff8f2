//! A tree copy read back as its tar stream: the layout's gaps, and each node's bytes
//! fetched from the repository as the stream reaches them (a fetch reads it from the
//! start, browsing from any offset).

use std::collections::HashMap;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rustic_core::repofile::{Node, NodeType};
use rustic_core::vfs::OpenFile;
use rustic_core::{IndexedFullStatus, Repository, TreeId};

use super::layout::{Layout, Nodes, Rebuilt};
use super::{OffsiteError, RemoteSnapshot, RepositoryConfig, backend_err, describe};

/// Largest layout a copy's is believed to be (a million entries take ~100 MB raw, several
/// times less compressed).
const MAX_LAYOUT: u64 = 1 << 30;

/// Folders a reader keeps, read once each: a fetch walks the tree in order, so this
/// holds the folders it is in and a few more; browsing keeps those it went through.
const MAX_FOLDERS: usize = 4096;

/// A folder's nodes by name.
type Folder = Arc<HashMap<Vec<u8>, Node>>;

/// The nodes of one tree copy, found by path below the snapshot's folder.
pub struct RepoNodes {
    repo: Arc<Repository<IndexedFullStatus>>,
    folder: TreeId,
    folders: Mutex<HashMap<TreeId, Folder>>,
    /// The file read last: a stream reads a file window after window.
    last: Mutex<Option<Opened>>,
}

/// A file of the copy, open for reading.
#[derive(Clone)]
struct Opened {
    path: Vec<u8>,
    file: Arc<OpenFile>,
    /// Where each of its blobs ends in the file.
    ends: Arc<Vec<u64>>,
}

impl RepoNodes {
    fn folder(&self, id: TreeId) -> io::Result<Folder> {
        if let Some(f) = self.folders.lock().expect("folders").get(&id) {
            return Ok(Arc::clone(f));
        }
        let tree = self
            .repo
            .get_tree(&id)
            .map_err(|e| io::Error::other(describe(&e)))?;
        let folder: Folder = Arc::new(
            tree.nodes
                .into_iter()
                .map(|n| (n.name().as_bytes().to_vec(), n))
                .collect(),
        );
        let mut folders = self.folders.lock().expect("folders");
        if folders.len() >= MAX_FOLDERS {
            folders.clear();
        }
        folders.insert(id, Arc::clone(&folder));
        Ok(folder)
    }

    /// The node at `path` below the snapshot's folder.
    fn node(&self, path: &[u8]) -> io::Result<Node> {
        let missing = || io::Error::other("the layout names a node the copy does not have");
        let mut names = path.split(|&c| c == b'/').peekable();
        let mut at = self.folder;
        while let Some(name) = names.next() {
            let folder = self.folder(at)?;
            let node = folder.get(name).ok_or_else(missing)?;
            if names.peek().is_none() {
                return Ok(node.clone());
            }
            at = node.subtree.ok_or_else(missing)?;
        }
        Err(missing())
    }

    fn open(&self, path: &[u8]) -> io::Result<Opened> {
        if let Some(last) = &*self.last.lock().expect("node cache")
            && last.path == path
        {
            return Ok(last.clone());
        }
        let node = self.node(path)?;
        if !matches!(node.node_type, NodeType::File) {
            return Err(io::Error::other("the layout names a node that is no file"));
        }
        let fail = |e: Box<rustic_core::RusticError>| io::Error::other(describe(&e));
        let file = Arc::new(self.repo.open_file(&node).map_err(fail)?);
        let mut end = 0;
        let mut ends = Vec::new();
        for id in node.content.iter().flatten() {
            end += u64::from(self.repo.get_index_entry(id).map_err(fail)?.data_length());
            ends.push(end);
        }
        let opened = Opened {
            path: path.to_vec(),
            file,
            ends: Arc::new(ends),
        };
        *self.last.lock().expect("node cache") = Some(opened.clone());
        Ok(opened)
    }
}

impl Nodes for RepoNodes {
    /// Ends the read at the last blob boundary inside it, when there is one: the next
    /// read then starts at a blob's start, and no blob is downloaded twice (rustic's
    /// blob cache, 32 MB, does not reliably keep one between two reads: a fetch read 22 %
    /// more than the copy held, and paid the rate limit for it).
    fn read(&self, path: &[u8], offset: u64, len: usize) -> io::Result<Bytes> {
        let Opened { file, ends, .. } = self.open(path)?;
        let asked = offset + len as u64;
        let end = match ends.partition_point(|&e| e <= asked) {
            0 => asked,
            i if ends[i - 1] <= offset => asked,
            i => ends[i - 1],
        };
        self.repo
            .read_file_at(&file, offset as usize, (end - offset) as usize)
            .map_err(|e| io::Error::other(describe(&e)))
    }
}

/// A tree copy opened for reading its tar stream.
pub struct TreeCopy {
    pub layout: Arc<Layout>,
    pub nodes: Arc<dyn Nodes>,
}

impl TreeCopy {
    /// Opens the tree copy `remote` in `repo`: its folder, and its layout read whole
    /// (bounded, and checked to describe a stream of the recorded length). `beside`: the
    /// nodes of the folder that holds both ([`copy_folder`]).
    pub fn open(
        cfg: &RepositoryConfig,
        repo: Arc<Repository<IndexedFullStatus>>,
        remote: &RemoteSnapshot,
        beside: &[Node],
    ) -> Result<TreeCopy, OffsiteError> {
        let mismatch = |reason: &str| mismatch(cfg, remote, reason);
        let name = remote.path.rsplit('/').next().unwrap_or_default();
        let folder = beside
            .iter()
            .find(|n| *n.name() == *name)
            .and_then(|n| n.subtree)
            .ok_or_else(|| mismatch("its folder is missing"))?;
        let layout = file_named(beside, &format!("{name}.layout"))
            .ok_or_else(|| mismatch("its layout is missing"))?;
        let bytes = read_whole(cfg, &repo, remote, layout, MAX_LAYOUT, "layout")?;
        let layout = Layout::parse(bytes).map_err(|e| mismatch(&e.to_string()))?;
        if layout.tar_bytes != remote.tar_bytes {
            return Err(mismatch("its layout describes another stream"));
        }
        Ok(TreeCopy {
            layout: Arc::new(layout),
            nodes: Arc::new(RepoNodes {
                repo,
                folder,
                folders: Mutex::default(),
                last: Mutex::default(),
            }),
        })
    }

    /// The tar stream from offset `at` on.
    pub fn stream_at(&self, at: u64) -> io::Result<Rebuilt> {
        Rebuilt::at(Arc::clone(&self.layout), Arc::clone(&self.nodes), at)
    }
}

/// What a copy holds that is not the snapshot: an `OffsiteError::Mismatch`.
pub(super) fn mismatch(
    cfg: &RepositoryConfig,
    remote: &RemoteSnapshot,
    reason: &str,
) -> OffsiteError {
    OffsiteError::Mismatch {
        name: cfg.name.clone(),
        snapshot_id: remote.snapshot_id.clone(),
        reason: reason.into(),
    }
}

/// The nodes of the folder `/<app_id>` holding the copy `remote` (its tar file or its
/// folder, the entry index, the layout), read once: a missing file is then told apart
/// from a storage that fails.
pub(super) fn copy_folder(
    cfg: &RepositoryConfig,
    repo: &Repository<IndexedFullStatus>,
    remote: &RemoteSnapshot,
) -> Result<Vec<Node>, OffsiteError> {
    let err = backend_err(cfg);
    let (folder, _) = remote
        .path
        .rsplit_once('/')
        .ok_or_else(|| mismatch(cfg, remote, "its path has no folder"))?;
    let dir = repo
        .node_from_snapshot_path(&format!("{}:{folder}", remote.repository_snapshot), |_| {
            true
        })
        .map_err(&err)?;
    let tree = dir
        .subtree
        .ok_or_else(|| mismatch(cfg, remote, "its folder is not a folder"))?;
    Ok(repo.get_tree(&tree).map_err(&err)?.nodes)
}

/// The regular file `name` among `nodes`.
pub(super) fn file_named<'a>(nodes: &'a [Node], name: &str) -> Option<&'a Node> {
    nodes
        .iter()
        .find(|n| *n.name() == *name && matches!(n.node_type, NodeType::File))
}

/// A small file of a copy (its entry index, its layout) read whole: one larger than `max`
/// bytes, or one that reads short, is refused as not the snapshot's.
pub(super) fn read_whole(
    cfg: &RepositoryConfig,
    repo: &Repository<IndexedFullStatus>,
    remote: &RemoteSnapshot,
    node: &Node,
    max: u64,
    what: &str,
) -> Result<Bytes, OffsiteError> {
    let err = backend_err(cfg);
    if node.meta.size > max {
        return Err(mismatch(
            cfg,
            remote,
            &format!("its {what} is larger than one can be"),
        ));
    }
    let open = repo.open_file(node).map_err(&err)?;
    let size = node.meta.size as usize;
    let bytes = repo.read_file_at(&open, 0, size).map_err(&err)?;
    if bytes.len() != size {
        return Err(mismatch(cfg, remote, &format!("its {what} is cut short")));
    }
    Ok(bytes)
}
