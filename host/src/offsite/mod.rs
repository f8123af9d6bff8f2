//! Offsite copies: each snapshot, stored in restic-format repositories (S3 and
//! S3-compatible stores, a REST server, a local or mounted path, anything OpenDAL reaches).
//!
//! Local snapshots stay one `.tar.gz` each. A copy is one restic snapshot holding the
//! archive's entries as a file tree under `/<app_id>/<snapshot_id>/` ([`Format::Tree`]):
//! rustic chunks each file on its own, so a second copy uploads what changed in the files
//! (as `restic backup` does), and `restic restore` gives the app's files. Beside the
//! folder, `<snapshot_id>.layout` rebuilds the tar stream byte for byte and
//! `<snapshot_id>.index` is the entry index. Copies made before trees hold the
//! uncompressed tar stream as one file, `/<app_id>/<snapshot_id>.tar` ([`Format::Tar`]);
//! they stay readable, and an archive that cannot be a tree is still copied so. rustic_core
//! does the rest: deduplication, zstd, AES-256 + Poly1305 with a key derived from the
//! password. The restic snapshot is tagged `appsnap`, `app:<app_id>` and
//! `appsnap-id:<snapshot_id>`, and its description carries the snapshot's metadata and
//! the tar stream's sha256 ([`Description`]), so a server that has lost everything can
//! list and fetch it, and Debian's `restic` can restore it without appsnap at all.
//!
//! - [`tree`]: the archive's entries as rustic's source, in path order, and the layout.
//! - [`layout`]: the layout's format, and the tar stream rebuilt from a tree.
//! - [`rebuild`]: a tree copy read back from the repository as its tar stream.
//! - [`source`]: the `ReadSource` that feeds a tar stream as one file (the old format).
//! - [`browse`]: a copy opened for browsing, its tar stream read by ranges.
//!
//! rustic_core is synchronous (it runs its own threads): every function here blocks and
//! is called from `spawn_blocking`.

pub mod browse;
mod counting;
pub mod layout;
pub mod rebuild;
pub mod source;
pub mod tree;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use rustic_backend::BackendOptions;
use rustic_core::repofile::{KeyId, MasterKey, PackId};
use rustic_core::{
    BackupOptions, ConfigOptions, Credentials, KeyOptions, OpenStatus, ParentOptions,
    RepairIndexOptions, Repository, RepositoryOptions, RusticError, SnapshotOptions,
};
use serde::{Deserialize, Serialize};

use crate::catalog::Origin;
use crate::model::Mount;

/// Label of every restic snapshot appsnap writes (restic shows it as the snapshot label).
pub const LABEL: &str = "appsnap";

/// Errors of offsite repositories.
#[derive(Debug, thiserror::Error)]
pub enum OffsiteError {
    /// The request names a repository the configuration does not have.
    #[error("no repository `{0}` is configured (see `[[repositories]]` in the config)")]
    UnknownRepository(String),
    /// The configuration of a repository is incomplete or contradictory.
    #[error("repository `{name}`: {reason}")]
    Config { name: String, reason: String },
    /// The storage could not be reached, refused the credentials, or failed mid-way.
    #[error("repository `{name}`: {message}")]
    Backend { name: String, message: String },
    /// The repository exists but the password does not open it.
    #[error("repository `{0}`: the password does not open it (wrong password or key)")]
    WrongPassword(String),
    /// The repository holds no copy of that snapshot.
    #[error("repository `{name}` holds no copy of snapshot `{snapshot_id}`")]
    SnapshotNotFound { name: String, snapshot_id: String },
    /// The repository's copies of that snapshot were made by other servers sharing it
    /// (a snapshot id survives download and import).
    #[error(
        "repository `{name}` holds copies of snapshot `{snapshot_id}` made by another server \
         only (repository snapshots {others}); appsnap forgets only its own copies"
    )]
    NotOurs {
        name: String,
        snapshot_id: String,
        others: String,
    },
    /// What came back from the repository is not what the backup wrote.
    #[error("repository `{name}`: the copy of `{snapshot_id}` is not the snapshot: {reason}")]
    Mismatch {
        name: String,
        snapshot_id: String,
        reason: String,
    },
    /// Reading the local archive failed while copying it.
    #[error("cannot read the local archive: {0}")]
    Local(#[source] io::Error),
    /// The work was stopped (shutdown, or its client left).
    #[error("stopped: appsnap is shutting down or the request was abandoned")]
    Cancelled,
    /// The archive cannot be copied as a tree (its entries are not as its index says):
    /// the caller copies it as one tar file.
    #[error("the snapshot cannot be copied as a tree: {0}")]
    NotATree(String),
    /// The repository is configured `append_only`: this server never deletes there.
    #[error(
        "repository `{0}` is append-only: prune it from a machine that holds its admin \
         credentials (`appsnap repo forget|prune --config admin.toml`)"
    )]
    AppendOnly(String),
}

/// When snapshots are copied to a repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyWhen {
    /// Every new snapshot, once it is complete and the app runs again.
    #[default]
    AfterBackup,
    /// Only on `POST /api/v1/backup/snapshots/{id}/copy`.
    Manual,
}

/// One `[[repositories]]` entry. The names follow rustic's `[repository]` section, so a
/// rustic config carries over.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// How the API and the catalog call it (an id: letters, digits, `_`, `-`).
    pub name: String,
    /// `opendal:s3`, `opendal:<service>`, `rest:http(s)://host:port/path`, or a local
    /// path (`/mnt/nas/appsnap`). A REST login belongs in the options (`rest_user`,
    /// `rest_password[_file]`); one written into the URL is masked wherever it is shown.
    #[serde(serialize_with = "serialize_masked")]
    pub repository: String,
    /// The repository password. Prefer `password_file` or the environment variable
    /// `APPSNAP_REPO_<NAME>_PASSWORD`: a config file is often world-readable.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// A file whose first line (without its line ending, otherwise as it is) is the
    /// password; read at each open, so a rotated file needs no restart. Used when
    /// `password` is absent.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Whether every new snapshot is copied here, or only on request.
    #[serde(default)]
    pub copy: CopyWhen,
    /// Handed to the backend as rustic does (`bucket`, `root`, `endpoint`, `region`,
    /// `access_key_id`, `secret_access_key`, `retry`, …), except appsnap's own
    /// `rest_user`, `rest_password` and `rest_password_file` (the REST server's login).
    /// Never serialized: it may hold secrets.
    #[serde(default, skip_serializing)]
    pub options: BTreeMap<String, String>,
    /// How long packs that a prune found unused stay in the storage before a later prune
    /// deletes them (rustic's `keep-delete`; default 23 h). The delay keeps a copy that
    /// another server is writing at the same time safe; 0 frees space at the next prune.
    #[serde(default = "default_keep_delete")]
    pub keep_delete_secs: u64,
    /// This server only adds to the repository: forget, prune and retention passes there
    /// are refused up front (an admin machine runs them), and nothing appsnap does
    /// deletes a file there. Meant for a store whose credentials cannot delete (restic's
    /// `rest-server --append-only`, an object-lock bucket): a compromised server can then
    /// add copies but not destroy them.
    #[serde(default)]
    pub append_only: bool,
    /// Upper bound of the upload rate to the storage, in KiB/s (packs, index, snapshots).
    #[serde(default)]
    pub limit_upload_kib: Option<u64>,
    /// Upper bound of the download rate from the storage, in KiB/s.
    #[serde(default)]
    pub limit_download_kib: Option<u64>,
}

fn default_keep_delete() -> u64 {
    23 * 3600
}

impl std::fmt::Debug for RepositoryConfig {
    // Hand-written so that no secret reaches a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryConfig")
            .field("name", &self.name)
            .field("copy", &self.copy)
            .field("repository", &self.location())
            .field("keep_delete_secs", &self.keep_delete_secs)
            .field("append_only", &self.append_only)
            .field("limit_upload_kib", &self.limit_upload_kib)
            .field("limit_download_kib", &self.limit_download_kib)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl RepositoryConfig {
    /// The environment variable that may hold this repository's password.
    pub fn password_env(&self) -> String {
        // Names may hold `-` and `.`, which environment variable names cannot.
        let name: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("APPSNAP_REPO_{name}_PASSWORD")
    }

    /// A configuration error of this repository.
    fn misconfigured(&self, reason: impl Into<String>) -> OffsiteError {
        OffsiteError::Config {
            name: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// The first line of `file` (without its line ending, otherwise as it is): what a
    /// password file holds. Read at each open, so a rotated file needs no restart.
    fn first_line(&self, file: &Path) -> Result<String, OffsiteError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| self.misconfigured(format!("cannot read {}: {e}", file.display())))?;
        Ok(text.lines().next().unwrap_or("").to_string())
    }

    /// The password: `password`, else `password_file` (first line), else the environment.
    fn password(&self) -> Result<String, OffsiteError> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        if let Some(file) = &self.password_file {
            let line = self.first_line(file)?;
            if line.is_empty() {
                return Err(self.misconfigured(format!("{} is empty", file.display())));
            }
            return Ok(line);
        }
        std::env::var(self.password_env()).map_err(|_| {
            self.misconfigured(format!(
                "no password: set `password_file`, `password` or {}",
                self.password_env()
            ))
        })
    }

    /// Checks what can be checked without reaching the storage.
    pub fn check(&self) -> Result<(), OffsiteError> {
        crate::ids::validate("repository name", &self.name)
            .map_err(|e| self.misconfigured(e.to_string()))?;
        if self.repository.is_empty() {
            return Err(self.misconfigured("`repository` is empty"));
        }
        if self.limit_upload_kib == Some(0) || self.limit_download_kib == Some(0) {
            return Err(self.misconfigured(
                "a limit of 0 KiB/s would never transfer anything; leave it out for no limit",
            ));
        }
        self.backend_target()?;
        self.password().map(|_| ())
    }

    /// Whether this is a REST server (`rest:http://…`, `rest:https://…`).
    fn is_rest(&self) -> bool {
        self.repository.starts_with("rest:")
    }

    /// The REST server's user and password, when the options name a user:
    /// `rest_user` with `rest_password` or `rest_password_file` (first line, read at each
    /// open like `password_file`).
    fn rest_credentials(&self) -> Result<Option<(String, String)>, OffsiteError> {
        let Some(user) = self.options.get(REST_USER) else {
            if self.options.contains_key(REST_PASSWORD)
                || self.options.contains_key(REST_PASSWORD_FILE)
            {
                return Err(self.misconfigured(format!("`{REST_PASSWORD}` needs `{REST_USER}`")));
            }
            return Ok(None);
        };
        let password = match (
            self.options.get(REST_PASSWORD),
            self.options.get(REST_PASSWORD_FILE),
        ) {
            (Some(p), None) => p.clone(),
            (None, Some(file)) => self.first_line(Path::new(file))?,
            (None, None) => String::new(),
            (Some(_), Some(_)) => {
                return Err(self.misconfigured(format!(
                    "`{REST_PASSWORD}` and `{REST_PASSWORD_FILE}` both given; keep one"
                )));
            }
        };
        Ok(Some((user.clone(), password)))
    }

    /// What rustic_backend is handed: the repository (for REST, the URL with the
    /// server's credentials in it, the way rustic and restic take them) and the options
    /// without appsnap's own.
    fn backend_target(&self) -> Result<(String, BTreeMap<String, String>), OffsiteError> {
        let mut options = self.options.clone();
        for own in [REST_USER, REST_PASSWORD, REST_PASSWORD_FILE] {
            options.remove(own);
        }
        if !self.is_rest() {
            if options.len() != self.options.len() {
                return Err(self.misconfigured(format!(
                    "`{REST_USER}` and its password are for `rest:` repositories"
                )));
            }
            return Ok((self.repository.clone(), options));
        }
        let mut url = self.rest_url()?;
        if let Some((user, password)) = self.rest_credentials()? {
            let bad = || self.misconfigured("the REST URL cannot carry credentials");
            url.set_username(&user).map_err(|_| bad())?;
            url.set_password(Some(&password)).map_err(|_| bad())?;
        }
        Ok((format!("rest:{url}"), options))
    }

    /// The REST server's URL, as configured (credentials in it included).
    fn rest_url(&self) -> Result<reqwest::Url, OffsiteError> {
        let text = self.repository.strip_prefix("rest:").unwrap_or_default();
        let url = reqwest::Url::parse(text).map_err(|e| {
            self.misconfigured(format!("`{}` is no REST URL: {e}", self.location()))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(
                self.misconfigured("a REST repository is `rest:http://…` or `rest:https://…`")
            );
        }
        Ok(url)
    }

    /// The repository as logs and messages show it: a password in a URL masked.
    pub fn location(&self) -> String {
        masked(&self.repository)
    }

    /// `text` with the REST server's password (as written and as a URL carries it)
    /// replaced by `***`: rustic's and reqwest's messages may quote the URL.
    fn scrub(&self, text: &str) -> String {
        let mut secrets: Vec<String> = Vec::new();
        if let Ok(Some((_, password))) = self.rest_credentials() {
            secrets.push(password);
        }
        if let Ok(url) = self.rest_url()
            && let Some(password) = url.password()
        {
            secrets.push(password.to_string());
        }
        let mut text = text.to_string();
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            let mut encoded = reqwest::Url::parse("http://h/").expect("a URL");
            let _ = encoded.set_username("u");
            let _ = encoded.set_password(Some(secret));
            for form in [secret.as_str(), encoded.password().unwrap_or(secret)] {
                text = text.replace(form, "***");
            }
        }
        text
    }
}

/// `repository` with the password of a `rest:` URL masked.
fn masked(repository: &str) -> String {
    match repository.strip_prefix("rest:") {
        Some(text) => match reqwest::Url::parse(text) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                format!("rest:{url}")
            }
            Err(_) => "rest:(not a URL)".into(),
        },
        None => repository.to_string(),
    }
}

/// Serializes `repository` masked: a config written back out keeps no password.
fn serialize_masked<S: serde::Serializer>(repository: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&masked(repository))
}

/// The options appsnap reads itself for a `rest:` repository, never handed to the backend.
const REST_USER: &str = "rest_user";
const REST_PASSWORD: &str = "rest_password";
const REST_PASSWORD_FILE: &str = "rest_password_file";

/// What appsnap writes into the description of each restic snapshot (JSON): enough to
/// list, fetch, check and restore the snapshot with nothing else of the server left.
/// Read back, it is untrusted input like an archive's metadata entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// Format of this description.
    pub appsnap: u32,
    pub app_id: String,
    pub snapshot_id: String,
    pub created_at: DateTime<Utc>,
    /// sha256 of the tar stream, as the backup wrote it.
    pub tar_sha256: String,
    /// Length of the tar stream: what a complete copy holds, and what a dump must yield.
    pub tar_bytes: u64,
    /// Entries in the tar stream, when the local snapshot recorded them.
    #[serde(default)]
    pub entries: Option<u64>,
    pub mounts: Vec<Mount>,
    pub origin: Origin,
    #[serde(default)]
    pub note: Option<String>,
    /// The id of the backup root (the server) that made this copy: with the repository's
    /// own snapshot id, what tells this server's copies from those of another server
    /// sharing the repository. Absent in copies made before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
    /// How the copy stores the snapshot; copies made before trees existed are `tar`.
    #[serde(default)]
    pub format: Format,
    /// Whether the snapshot was pinned when it was copied: what an admin machine's
    /// retention pass sees of the server's pins (`appsnap repo forget`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

/// How a copy stores a snapshot in its restic snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The tar stream as one file, `/<app_id>/<snapshot_id>.tar` (`restic dump` gives it).
    #[default]
    Tar,
    /// Each entry as a node under `/<app_id>/<snapshot_id>/` (`restic restore` gives the
    /// app's files), and `/<app_id>/<snapshot_id>.layout` to rebuild the tar stream.
    Tree,
}

/// A snapshot as a repository holds it (`GET /api/v1/repositories/{name}/snapshots`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RemoteSnapshot {
    pub repository: String,
    /// The restic snapshot id (what `restic dump` takes).
    pub repository_snapshot: String,
    pub snapshot_id: String,
    pub app_id: String,
    pub created_at: DateTime<Utc>,
    /// When the copy was made, and by which host.
    pub copied_at: DateTime<Utc>,
    pub hostname: String,
    pub tar_bytes: u64,
    pub tar_sha256: String,
    pub mounts: Vec<Mount>,
    pub origin: Origin,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Where the snapshot sits in the restic snapshot: the tar file (`restic dump <id>
    /// <path>` gives the tar stream) or, for a tree, its folder (`restic restore <id>
    /// --include <path>` gives the files).
    pub path: String,
    pub format: Format,
    /// Pinned on the server that copied it, when it copied it.
    pub pinned: bool,
    /// The backup root (server) that made the copy, when it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
}

/// What one copy did.
#[derive(Debug, Clone)]
pub struct Copied {
    /// The id of the restic snapshot just written (what `forget` and `dump` name).
    pub repository_snapshot: String,
    /// The tar stream's length, as checked against its sha256 after the copy.
    pub bytes_read: u64,
    /// Bytes the copy added to the repository (packs, index, snapshot), after dedup and
    /// compression.
    pub bytes_uploaded: u64,
    pub format: Format,
}

/// Counters a long repository operation updates as it goes (for the job's progress).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of the tar stream read so far (rustic reads it once, start to end).
    pub bytes_read: AtomicU64,
    /// Bytes written to the storage so far (packs, index, snapshot).
    pub bytes_uploaded: Arc<AtomicU64>,
}

/// Where a snapshot sits in its restic snapshot: `/<app_id>/<snapshot_id>.tar`, or the
/// folder `/<app_id>/<snapshot_id>` of a tree.
pub fn file_path(app_id: &str, snapshot_id: &str, format: Format) -> String {
    match format {
        Format::Tar => format!("/{app_id}/{snapshot_id}.tar"),
        Format::Tree => format!("/{app_id}/{snapshot_id}"),
    }
}

/// rustic's errors are long reports; the log form is one line with the cause.
fn describe(e: &RusticError) -> String {
    let text = e.display_log();
    text.strip_prefix("Error: ").unwrap_or(&text).to_string()
}

/// Maps rustic's errors for repository `cfg`: a password that opens no key becomes
/// `WrongPassword` (the operator's mistake, worth its own message), anything else
/// `Backend` with the one-line cause, secrets scrubbed.
fn backend_err(cfg: &RepositoryConfig) -> impl Fn(Box<RusticError>) -> OffsiteError + '_ {
    move |e| {
        if e.is_incorrect_password() {
            OffsiteError::WrongPassword(cfg.name.clone())
        } else {
            OffsiteError::Backend {
                name: cfg.name.clone(),
                message: cfg.scrub(&describe(&e)),
            }
        }
    }
}

/// Master keys this process has derived, by [`key_slot`], with the key file each came
/// from. Deriving one from a password costs ~0.5 s of scrypt by design; paying it once per
/// repository and process, instead of at every listing, download or restore, is the
/// difference between a snappy list and a slow one. A changed password, storage or
/// option is another slot; a key file removed from the repository (`restic key remove`)
/// stops the cached key from being used ([`open_with_cached_key`]).
static KEYS: std::sync::Mutex<BTreeMap<[u8; 32], CachedKey>> =
    std::sync::Mutex::new(BTreeMap::new());

/// A master key derived from a password, and the key file it came from.
#[derive(Clone)]
struct CachedKey {
    file: KeyId,
    key: MasterKey,
    /// How many times the slot was filled by a derivation (tests check it stays 1).
    derivations: u32,
}

/// What a cached key is filed under: a digest of everything that opened it (the password
/// included, so that no cached key outlives the password that derived it).
fn key_slot(cfg: &RepositoryConfig, password: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [cfg.name.as_str(), cfg.repository.as_str(), password] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    for (k, v) in &cfg.options {
        for part in [k, v] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    h.finalize().into()
}

/// Opens `repo` with the key cached under `slot`, if there is one and the key file it
/// came from is still in the repository; `None` (and the slot emptied) otherwise, and
/// the caller derives the key from the password.
fn open_with_cached_key(
    repo: Repository<()>,
    backends: &rustic_core::RepositoryBackends,
    slot: &[u8; 32],
) -> Option<Repository<OpenStatus>> {
    let cached = KEYS.lock().expect("key cache").get(slot).cloned()?;
    let still_there = backends
        .repository()
        .list(rustic_core::FileType::Key)
        .is_ok_and(|ids| ids.into_iter().any(|id| KeyId::from(id) == cached.file));
    let opened = still_there
        .then(|| repo.open(&Credentials::Masterkey(cached.key)).ok())
        .flatten();
    if opened.is_none() {
        KEYS.lock().expect("key cache").remove(slot);
    }
    opened
}

/// Opens a repository; creates it first when `create` and its storage has no repository
/// yet. "No repository" is only believed when the storage says the config file is not
/// found: a refused credential or an unreachable server is an error, never a reason to
/// write a second repository over the first.
pub fn open(cfg: &RepositoryConfig, create: bool) -> Result<Repository<OpenStatus>, OffsiteError> {
    open_counting(cfg, create, None, None)
}

/// [`open`], counting what is written to the storage into `written` and what is read
/// from it into `read`, at the rates the repository's limits allow.
fn open_counting(
    cfg: &RepositoryConfig,
    create: bool,
    written: Option<Arc<AtomicU64>>,
    read: Option<Arc<AtomicU64>>,
) -> Result<Repository<OpenStatus>, OffsiteError> {
    let err = backend_err(cfg);
    let password = cfg.password()?;
    let (repository, options) = cfg.backend_target()?;
    let backends = BackendOptions::default()
        .repository(repository)
        .options(options)
        .to_backends()
        .map_err(&err)?;
    let counting = counting::Counting {
        inner: backends.repository(),
        written: written.unwrap_or_default(),
        read: read.unwrap_or_default(),
        upload: cfg.limit_upload_kib.map(counting::Limiter::kib),
        download: cfg.limit_download_kib.map(counting::Limiter::kib),
    };
    let backends = rustic_core::RepositoryBackends::new(Arc::new(counting), backends.repo_hot());
    // No cache: the repository may be written by other servers, and the cache would be
    // one more place holding (encrypted) data on the server whose loss we prepare for.
    let opts = RepositoryOptions::default().no_cache(true);
    let repo = || Repository::new(&opts, &backends).map_err(&err);
    let credentials = Credentials::password(&password);
    let slot = key_slot(cfg, &password);
    let opened = match repo()?.config_id().map_err(&err)? {
        Some(_) => match open_with_cached_key(repo()?, &backends, &slot) {
            Some(opened) => return Ok(opened),
            None => repo()?.open(&credentials).map_err(&err)?,
        },
        None => {
            if cfg.is_rest() {
                // rustic's REST backend reads any answer but 2xx to `HEAD config` as "no
                // repository", a refused password included: ask once more and tell them
                // apart before anything is created.
                rest_config_missing(cfg)?;
            }
            if !create {
                return Err(OffsiteError::Backend {
                    name: cfg.name.clone(),
                    message: "no repository there yet (`appsnap repo init` creates it)".into(),
                });
            }
            tracing::info!(repository = %cfg.name, "initialising a new repository");
            repo()?
                .init(
                    &credentials,
                    &KeyOptions::default(),
                    &ConfigOptions::default(),
                )
                .map_err(&err)?
        }
    };
    if let Some(file) = opened.key_id() {
        let mut keys = KEYS.lock().expect("key cache");
        let derivations = keys.get(&slot).map_or(0, |k| k.derivations) + 1;
        keys.insert(
            slot,
            CachedKey {
                file: *file,
                key: opened.key(),
                derivations,
            },
        );
    }
    Ok(opened)
}

/// Succeeds when the REST server answers 404 to `HEAD <repository>/config`: no repository
/// there yet. Any other answer is the error it means (credentials refused, access denied,
/// a server failing), named for the operator.
fn rest_config_missing(cfg: &RepositoryConfig) -> Result<(), OffsiteError> {
    let fail = |message: String| OffsiteError::Backend {
        name: cfg.name.clone(),
        message: cfg.scrub(&message),
    };
    let mut url = cfg.rest_url()?;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    let url = url.join("config").map_err(|e| fail(e.to_string()))?;
    let mut request = reqwest::blocking::Client::new().head(url.clone());
    if let Some((user, password)) = cfg.rest_credentials()? {
        request = request.basic_auth(user, Some(password));
    }
    let status = request
        .timeout(std::time::Duration::from_secs(60))
        .send()
        .map_err(|e| {
            fail(format!(
                "the REST server cannot be reached: {}",
                e.without_url()
            ))
        })?
        .status();
    match status.as_u16() {
        404 => Ok(()),
        // rest-server answers 401 to a wrong password; rustic_server 403, as it does to
        // a user its access rules keep out of the repository.
        code @ (401 | 403) => Err(fail(format!(
            "the REST server refused the login or denies this user the repository (HTTP \
             {code}): check `{REST_USER}` and `{REST_PASSWORD}` / `{REST_PASSWORD_FILE}`, and \
             the server's access rules"
        ))),
        code => Err(fail(format!(
            "the REST server answered HTTP {code} when asked for the repository's config"
        ))),
    }
}

/// What a copy reads.
pub enum Input {
    /// The tar stream, stored as one file (`Format::Tar`).
    Tar(Box<dyn io::Read + Send>),
    /// The local archive's entries, stored as a tree (`Format::Tree`), as `plan` says;
    /// `scratch` is a folder for the layout's scratch files.
    Tree {
        local: Arc<crate::archive::index::Local>,
        plan: tree::Plan,
        scratch: PathBuf,
    },
}

/// Copies one snapshot into the repository (created on first use), as `input` says, and
/// checks that what was stored is all of it; a copy that falls short is removed again
/// (left, in an append-only repository). `repair`: rebuild the index first (a retry).
/// `index`: the snapshot's entry index file, stored beside the snapshot for browsing.
///
/// A tar stream is checked by its sha256 and by the chunks of the stored file; a tree by
/// every file having been read whole from the local archive, whose gzip members carry
/// their own checksums (and whose sha256 the caller checked, for a tree).
pub fn copy(
    cfg: &RepositoryConfig,
    description: &Description,
    index: Option<Vec<u8>>,
    input: Input,
    progress: &Arc<Progress>,
    cancel: Option<crate::archive::Cancel>,
    repair: bool,
) -> Result<Copied, OffsiteError> {
    let err = backend_err(cfg);
    let repo = open_counting(cfg, true, Some(Arc::clone(&progress.bytes_uploaded)), None)?;
    // An upload cut short (a server that died, a kill) can leave index entries for packs
    // that never arrived; deduplicating against them would make a "complete" copy that
    // cannot be read back. A retry rebuilds the index from the packs that exist, and so
    // does a tree copy that finds such entries (a tree is not checked chunk by chunk
    // afterwards). An append-only store refuses the deletes a repair makes.
    let tree = matches!(input, Input::Tree { .. });
    let damaged = tree && index_names_lost_packs(&repo).map_err(&err)?;
    if (repair || damaged) && !cfg.append_only {
        repo.repair_index(&RepairIndexOptions::default(), false)
            .map_err(&err)?;
    } else if damaged {
        return Err(OffsiteError::Mismatch {
            name: cfg.name.clone(),
            snapshot_id: description.snapshot_id.clone(),
            reason: "the repository's index names packs the storage does not have; its \
                     admin must repair the index (`rustic repair index`)"
                .into(),
        });
    }
    let repo = repo.to_indexed_ids().map_err(&err)?;
    let format = match input {
        Input::Tar(_) => Format::Tar,
        Input::Tree { .. } => Format::Tree,
    };
    let path = file_path(&description.app_id, &description.snapshot_id, format);
    let description = Description {
        format,
        ..description.clone()
    };
    let snap = SnapshotOptions::default()
        .label(LABEL.to_string())
        .description(serde_json::to_string(&description).expect("description serializes"))
        .add_tags(&format!(
            "{LABEL},app:{},appsnap-id:{}",
            description.app_id, description.snapshot_id
        ))
        .and_then(|o| o.to_snapshot())
        .map_err(&err)?;
    // No parent: the data is always read whole; dedup is by content, not by mtime.
    let opts = BackupOptions::default().parent_opts(ParentOptions::default().force(true));
    fn take_back<S: rustic_core::Open>(
        cfg: &RepositoryConfig,
        id: rustic_core::repofile::SnapshotId,
        repo: &Repository<S>,
    ) {
        if cfg.append_only {
            tracing::warn!(repository = %cfg.name, "the short copy {id} stays in the append-only repository (a fetch refuses it: it is not the snapshot); its admin may forget it");
        } else if let Err(e) = repo.delete_snapshots(&[id]) {
            tracing::warn!(repository = %cfg.name, "cannot remove the short copy {id}: {}", describe(&e));
        }
    }
    let mismatch = |reason: String| OffsiteError::Mismatch {
        name: cfg.name.clone(),
        snapshot_id: description.snapshot_id.clone(),
        reason,
    };
    let saved = match input {
        Input::Tar(tar) => {
            let (source, check) = source::TarSource::new(
                PathBuf::from(&path),
                index,
                tar,
                description.tar_bytes,
                description.created_at,
                Arc::clone(progress),
                cancel,
            );
            let saved = repo
                .archive(&opts, &source, snap, &[PathBuf::from(&path)])
                .map_err(&err)?;
            // The index in `repo` predates the copy: read it again from the storage,
            // which now holds the copy's index files (the key is kept).
            let repo = repo.drop_index().to_indexed().map_err(&err)?;
            // rustic logs and skips a file it could not read completely, and saves the
            // snapshot anyway: what was read is checked here, and a short copy is taken
            // back.
            let stored = repo.node_from_snapshot_path(&format!("{}:{path}", saved.id), |_| true);
            let problem = check
                .problem(&description.tar_sha256)
                .or_else(|| match stored {
                    Ok(node) => unreadable_chunks(&repo, &node, description.tar_bytes)
                        .err()
                        .map(|e| describe(&e)),
                    Err(e) => Some(format!("the stored file is missing: {}", describe(&e))),
                });
            if let Some(reason) = problem {
                take_back(cfg, saved.id, &repo);
                if check.cancelled() {
                    return Err(OffsiteError::Cancelled);
                }
                if let Some(e) = check.read_error() {
                    return Err(OffsiteError::Local(e));
                }
                return Err(mismatch(reason));
            }
            saved
        }
        Input::Tree {
            local,
            plan,
            scratch,
        } => {
            let (source, check) = tree::TreeSource::new(
                local,
                plan,
                PathBuf::from(&path),
                description.tar_bytes,
                scratch,
                index,
                description.created_at,
                Arc::clone(progress),
                cancel,
            );
            let saved = repo
                .archive(&opts, &source, snap, &[PathBuf::from(&path)])
                .map_err(&err)?;
            if let Some(reason) = check.problem() {
                let repo = repo.drop_index();
                take_back(cfg, saved.id, &repo);
                if check.cancelled() {
                    return Err(OffsiteError::Cancelled);
                }
                if check.unlike() {
                    return Err(OffsiteError::NotATree(reason));
                }
                return Err(mismatch(reason));
            }
            saved
        }
    };
    // Counted at the storage's door (every file this copy wrote), not taken from
    // rustic's summary, which says 0 for a source like ours.
    let bytes_uploaded = progress.bytes_uploaded.load(Ordering::Relaxed);
    Ok(Copied {
        repository_snapshot: saved.id.to_string(),
        bytes_read: description.tar_bytes,
        bytes_uploaded,
        format,
    })
}

/// Whether the repository's index lists a pack the storage does not have (what an
/// upload cut short leaves behind until the index is repaired).
fn index_names_lost_packs(repo: &Repository<OpenStatus>) -> rustic_core::RusticResult<bool> {
    let present: std::collections::HashSet<PackId> = repo.list::<PackId>()?.collect();
    for file in repo.stream_files::<rustic_core::repofile::IndexFile>()? {
        let (_, file) = file?;
        if file.packs.iter().any(|p| !present.contains(&p.id)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Fails unless every chunk of `node` is indexed in a pack the storage really has, and the
/// chunks add up to `expected_bytes`: the proof that a copy can be read back whole,
/// whatever an interrupted upload left behind.
fn unreadable_chunks<S: rustic_core::IndexedFull>(
    repo: &Repository<S>,
    node: &rustic_core::repofile::Node,
    expected_bytes: u64,
) -> rustic_core::RusticResult<()> {
    let present: std::collections::HashSet<PackId> = repo.list::<PackId>()?.collect();
    let chunks = node.content.as_deref().unwrap_or_default();
    let mut missing = 0;
    // What the chunks hold, as the index says: the node's own size is only what the
    // copy declared (rustic keeps it even when it read less).
    let mut held = 0u64;
    for id in chunks {
        match repo.get_index_entry(id) {
            Ok(e) if present.contains(&e.pack) => held += u64::from(e.location.data_length()),
            _ => missing += 1,
        }
    }
    if missing == 0 && held != expected_bytes {
        return Err(RusticError::new(
            rustic_core::ErrorKind::Verification,
            "the stored chunks hold {held} bytes, the tar stream {expected}",
        )
        .attach_context("held", held.to_string())
        .attach_context("expected", expected_bytes.to_string()));
    }
    if missing > 0 {
        return Err(RusticError::new(
            rustic_core::ErrorKind::Verification,
            "{missing} of {total} chunks of the copy are in packs the storage does not have \
             (an earlier upload was cut short); the index is repaired before the next attempt",
        )
        .attach_context("missing", missing.to_string())
        .attach_context("total", chunks.len().to_string()));
    }
    Ok(())
}

/// Bytes of every file in the repository, from one listing.
fn stored_bytes<S: rustic_core::Open>(repo: &Repository<S>) -> rustic_core::RusticResult<u64> {
    Ok(repo.infos_files()?.repo.iter().map(|i| i.size).sum())
}

/// Every appsnap snapshot the repository holds (also those other servers copied),
/// oldest first, optionally of one app. Snapshots of other tools, and descriptions that
/// do not hold up (ids, mounts), are left out.
pub fn list(
    cfg: &RepositoryConfig,
    app_id: Option<&str>,
) -> Result<Vec<RemoteSnapshot>, OffsiteError> {
    let repo = open(cfg, false)?;
    let mut out: Vec<RemoteSnapshot> = repo
        .get_all_snapshots()
        .map_err(backend_err(cfg))?
        .into_iter()
        .filter(|s| s.label == LABEL)
        .filter_map(|s| {
            let d = parse_description(s.description.as_deref()?)?;
            let copied_at = DateTime::from_timestamp(
                s.time.timestamp().as_second(),
                s.time.timestamp().subsec_nanosecond() as u32,
            )
            .unwrap_or_default();
            Some(RemoteSnapshot {
                repository: cfg.name.clone(),
                repository_snapshot: s.id.to_string(),
                path: file_path(&d.app_id, &d.snapshot_id, d.format),
                format: d.format,
                pinned: d.pinned,
                snapshot_id: d.snapshot_id,
                app_id: d.app_id,
                created_at: listed_created_at(d.created_at, copied_at, Utc::now()),
                copied_at,
                hostname: s.hostname,
                tar_bytes: d.tar_bytes,
                tar_sha256: d.tar_sha256,
                mounts: d.mounts,
                origin: d.origin,
                note: d.note,
                root_id: d.root_id,
            })
        })
        .filter(|s| app_id.is_none_or(|a| a == s.app_id))
        .collect();
    out.sort_by(|a, b| (a.created_at, &a.snapshot_id).cmp(&(b.created_at, &b.snapshot_id)));
    Ok(out)
}

/// The date a copy is listed (and ranked by retention) under. A date another server's
/// clock put in the future would make the copy "the newest" for every policy, forever:
/// like an import dated in the future (listed as of its import), it is listed as of its
/// copy, and as of now when the copy's own time is in the future too.
fn listed_created_at(
    created_at: DateTime<Utc>,
    copied_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let slack = chrono::Duration::minutes(5);
    let mut at = created_at;
    if at > copied_at + slack {
        at = copied_at;
    }
    if at > now + slack {
        at = now;
    }
    at
}

/// A description read back from a repository, believed only once it holds up.
fn parse_description(text: &str) -> Option<Description> {
    let d: Description = serde_json::from_str(text).ok()?;
    let ok = crate::ids::validate("app id", &d.app_id).is_ok()
        && crate::ids::validate("snapshot id", &d.snapshot_id).is_ok()
        && d.tar_sha256.len() == 64
        && d.tar_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        && crate::model::check_mounts(&d.mounts).is_ok();
    ok.then_some(d)
}

/// Bytes the repository's storage holds (every file: packs, index, snapshots, keys).
pub fn stored(cfg: &RepositoryConfig) -> Result<u64, OffsiteError> {
    stored_bytes(&open(cfg, false)?).map_err(backend_err(cfg))
}

/// Removes exactly the named repository snapshots (appsnap's copies only) from the
/// repository's snapshot list; returns how many there were. The caller names copies, not
/// appsnap ids: another server sharing the repository may hold a copy of the same id.
/// The data stays until a prune frees what no snapshot uses any more.
pub fn forget(
    cfg: &RepositoryConfig,
    repository_snapshots: &[String],
) -> Result<usize, OffsiteError> {
    if cfg.append_only {
        return Err(OffsiteError::AppendOnly(cfg.name.clone()));
    }
    let err = backend_err(cfg);
    let repo = open(cfg, false)?;
    let ids: Vec<_> = repo
        .get_all_snapshots()
        .map_err(&err)?
        .into_iter()
        .filter(|s| s.label == LABEL && repository_snapshots.contains(&s.id.to_string()))
        .map(|s| s.id)
        .collect();
    if !ids.is_empty() {
        repo.delete_snapshots(&ids).map_err(&err)?;
    }
    Ok(ids.len())
}

/// Writes the tar stream of `remote` into `out`. The caller checks its sha256 (it sees
/// the bytes; nothing here believes the repository).
pub fn dump(
    cfg: &RepositoryConfig,
    remote: &RemoteSnapshot,
    out: &mut impl Write,
) -> Result<(), OffsiteError> {
    let err = backend_err(cfg);
    let repo = open(cfg, false)?.to_indexed().map_err(&err)?;
    if remote.format == Format::Tree {
        let beside = rebuild::copy_folder(cfg, &repo, remote)?;
        let copy = rebuild::TreeCopy::open(cfg, Arc::new(repo), remote, &beside)?;
        let mut stream = copy.stream_at(0).map_err(OffsiteError::Local)?;
        return io::copy(&mut stream, out)
            .map(|_| ())
            .map_err(|e| OffsiteError::Backend {
                name: cfg.name.clone(),
                message: cfg.scrub(&e.to_string()),
            });
    }
    let node = repo
        .node_from_snapshot_path(
            &format!("{}:{}", remote.repository_snapshot, remote.path),
            |_| true,
        )
        .map_err(&err)?;
    repo.dump(&node, out).map_err(&err)
}

/// Creates the repository (`appsnap repo init`); an existing one is only opened.
pub fn init(cfg: &RepositoryConfig) -> Result<String, OffsiteError> {
    let repo = open(cfg, true)?;
    Ok(repo.config().id.to_string())
}

/// Where a fresh local copy of a fetched snapshot goes while it is written.
pub fn fetch_path(state_dir: &Path, snapshot_id: &str) -> PathBuf {
    state_dir.join(format!(
        "fetch-{snapshot_id}{}",
        crate::catalog::PARTIAL_SUFFIX
    ))
}

/// What a prune did (`POST /api/v1/repositories/{name}/prune`, and after every forget).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Pruned {
    pub repository: String,
    /// Packs no snapshot uses any more, marked by this prune. They are deleted by the first
    /// prune at least `keep_delete_secs` later: a copy that another server is writing at
    /// this moment may still come to use them (rustic's two-phase delete).
    pub packs_marked: u64,
    /// Packs marked by an earlier prune, deleted now.
    pub packs_deleted: u64,
    /// Packs partly used, rewritten without what is unused.
    pub packs_repacked: u64,
    /// What the storage held before and after, in bytes (every file, as `stored` counts).
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Frees what no snapshot uses any more (rustic's prune). Packs become unused when
/// snapshots are forgotten; they are first marked, then deleted by a later prune once
/// `keep_delete_secs` have passed, so that a copy running elsewhere meanwhile is safe.
pub fn prune(cfg: &RepositoryConfig) -> Result<Pruned, OffsiteError> {
    if cfg.append_only {
        return Err(OffsiteError::AppendOnly(cfg.name.clone()));
    }
    let err = backend_err(cfg);
    let repo = open(cfg, false)?;
    let keep_delete = i64::try_from(cfg.keep_delete_secs).unwrap_or(i64::MAX);
    let opts = rustic_core::PruneOptions::default()
        .keep_delete(rustic_core::jiff::Span::new().seconds(keep_delete));
    let before = stored_bytes(&repo).map_err(&err)?;
    let plan = repo.prune_plan(&opts).map_err(&err)?;
    let stats = &plan.stats;
    let (packs_marked, packs_deleted, packs_repacked) = (
        stats.packs.unused,
        stats.packs_to_delete.remove,
        stats.packs.repack,
    );
    repo.prune(&opts, plan).map_err(&err)?;
    let after = stored_bytes(&repo).map_err(&err)?;
    Ok(Pruned {
        repository: cfg.name.clone(),
        packs_marked,
        packs_deleted,
        packs_repacked,
        bytes_before: before,
        bytes_after: after,
    })
}

/// What `appsnap repo check` found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Checked {
    pub repository: String,
    /// Whether the pack files were read and their contents checked (`read_data`).
    pub read_data: bool,
    /// Problems that make data unreadable. Empty: the repository is sound.
    pub errors: Vec<String>,
    /// Oddities that do not affect the data (unused packs, a missing cache).
    pub warnings: Vec<String>,
}

/// Checks the repository's structure: every snapshot's trees, every indexed blob in a
/// pack the storage has, the index against the packs; with `read_data`, also reads every
/// pack and checks each blob's hash (downloads the whole repository).
pub fn check(cfg: &RepositoryConfig, read_data: bool) -> Result<Checked, OffsiteError> {
    let err = backend_err(cfg);
    let repo = open(cfg, false)?;
    let results = repo
        .check(rustic_core::CheckOptions::default().read_data(read_data))
        .map_err(&err)?;
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    for (level, problem) in &results.0 {
        // The level's type is not exported by rustic_core; its `Debug` is its name.
        if format!("{level:?}") == "Error" {
            errors.push(problem.to_string());
        } else {
            warnings.push(problem.to_string());
        }
    }
    Ok(Checked {
        repository: cfg.name.clone(),
        read_data,
        errors,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local_repository(dir: &Path, password: &str) -> RepositoryConfig {
        toml::from_str(&format!(
            "name = 'local'\nrepository = '{}'\npassword = '{password}'\n",
            dir.display()
        ))
        .unwrap()
    }

    fn derivations(cfg: &RepositoryConfig) -> u32 {
        let slot = key_slot(cfg, &cfg.password().unwrap());
        KEYS.lock().unwrap().get(&slot).map_or(0, |k| k.derivations)
    }

    #[test]
    fn a_rest_login_reaches_the_backend_and_no_message() {
        let mut cfg: RepositoryConfig = toml::from_str(
            "name = 'nas'\nrepository = 'rest:http://127.0.0.1:8000/repo'\npassword = 'x'\n\
             options = { rest_user = 'appsnap', rest_password = 's3cr/t@', retry = '1' }\n",
        )
        .unwrap();
        cfg.check().unwrap();
        let (url, options) = cfg.backend_target().unwrap();
        assert_eq!(url, "rest:http://appsnap:s3cr%2Ft%40@127.0.0.1:8000/repo");
        assert_eq!(options.keys().collect::<Vec<_>>(), ["retry"]);
        let message = "error sending request for http://appsnap:s3cr%2Ft%40@127.0.0.1 (s3cr/t@)";
        assert!(
            !cfg.scrub(message).contains("s3cr"),
            "{}",
            cfg.scrub(message)
        );
        assert!(!format!("{cfg:?}").contains("s3cr"));

        // A login written into the URL is masked wherever the repository is shown.
        cfg.repository = "rest:http://appsnap:inline-pw@nas:8000/repo".into();
        cfg.options.clear();
        assert_eq!(cfg.location(), "rest:http://appsnap:***@nas:8000/repo");
        assert!(!serde_json::to_string(&cfg).unwrap().contains("inline-pw"));
        assert!(
            !cfg.scrub("http://appsnap:inline-pw@nas")
                .contains("inline-pw")
        );

        // A REST login on another kind of repository, a zero limit: refused.
        cfg.repository = "/mnt/nas".into();
        cfg.options.insert("rest_user".into(), "u".into());
        assert!(cfg.check().is_err());
        cfg.options.clear();
        cfg.limit_upload_kib = Some(0);
        assert!(cfg.check().is_err());
    }

    #[test]
    fn a_key_is_derived_once_per_repository_and_stops_working_with_its_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = local_repository(&dir.path().join("repo"), "first password");
        init(&cfg).unwrap();
        assert_eq!(derivations(&cfg), 1, "init derives the key");
        for _ in 0..3 {
            assert!(list(&cfg, None).unwrap().is_empty());
            stored(&cfg).unwrap();
        }
        assert_eq!(derivations(&cfg), 1, "listings reuse it");
        // Another password is another slot, and must open the repository on its own.
        let wrong = local_repository(&dir.path().join("repo"), "not the password");
        assert!(matches!(
            list(&wrong, None),
            Err(OffsiteError::WrongPassword(_))
        ));
        // The key file removed (`restic key remove`): the cached key is no longer used.
        for key in std::fs::read_dir(dir.path().join("repo/keys")).unwrap() {
            std::fs::remove_file(key.unwrap().path()).unwrap();
        }
        assert!(list(&cfg, None).is_err(), "no key file, no access");
        assert_eq!(derivations(&cfg), 0, "the slot is emptied");
    }

    #[test]
    fn a_copy_dated_in_the_future_is_listed_as_of_its_copy_or_of_now() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let now = t("2026-12-03T12:00:00Z");
        // An ordinary copy: made after the snapshot.
        let (made, copied) = (t("2026-12-03T10:00:00Z"), t("2026-12-03T10:01:00Z"));
        assert_eq!(listed_created_at(made, copied, now), made);
        // Another server's clock a year ahead: listed as of the copy.
        let future = t("2027-12-03T10:00:00Z");
        assert_eq!(listed_created_at(future, copied, now), copied);
        // Both dates ahead (the copying server's clock too): as of now.
        assert_eq!(listed_created_at(future, future, now), now);
        // A few seconds of skew are no reason to move anything.
        let skew = t("2026-12-03T10:01:30Z");
        assert_eq!(listed_created_at(skew, copied, now), skew);
    }
}
