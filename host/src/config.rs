//! Configuration: a TOML file, overridden by `APPSNAP_*` environment variables, overridden
//! by command-line flags (clap resolves the last two; see `main.rs`).
//!
//! Every default is the safe one: loopback only, consistent (stopping) backups, no
//! automatic deletion of snapshots.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of loading and checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for appsnap.
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range or unsafe.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the REST API. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Where archives and the catalog live. Default `/var/websoft9/backups`.
    pub backup_root: PathBuf,
    /// appsnap's memory outside the backup root: the id each backup root had, so that an
    /// unmounted backup disk is noticed instead of silently replaced by an empty folder.
    /// Default `/var/lib/appsnap`.
    pub state_dir: PathBuf,
    /// Value the `x-api-key` header must carry. Unset: no auth, and loopback only.
    pub api_key: Option<String>,
    /// A file holding the key (first line; a key given on the command line is visible
    /// to every user in `ps`). Read at start-up into `api_key`.
    pub api_key_file: Option<PathBuf>,
    /// Serve on this Unix socket (mode 0660) instead of `listen`: for a panel on the same
    /// host, with the socket's permissions as the access control.
    pub listen_unix: Option<PathBuf>,
    /// The web console's path prefix behind a reverse proxy that passes the whole path
    /// on, e.g. `/appsnap` (nginx: `location /appsnap { proxy_pass http://127.0.0.1:8080; }`).
    /// Its pages and links are then under it; the API stays at `/api/v1`. Default empty:
    /// the console at `/`.
    pub base_path: String,
    /// Origins allowed to show the console in a frame (CSP `frame-ancestors`), e.g.
    /// `["https://panel.example.com"]` for a panel that embeds it. Default none: it
    /// cannot be framed.
    pub frame_ancestors: Vec<String>,
    /// tracing filter, e.g. `info` or `appsnap=debug`.
    pub log: String,
    /// `text` (colours only on a terminal) or `json` (one object per line, for log shippers).
    pub log_format: LogFormat,
    /// libdeflate level 0–12 (0 = store). Default 3: on the benchmark's app-like mix it
    /// is ~4× the speed of `pigz -6` for ~2 % more output; 6 gives gzip's ratio at ~3×
    /// (figures in the README).
    pub compression_level: u32,
    /// Compression threads; 0 = one per core.
    pub threads: usize,
    /// Heavy operations (backups, restores, verifies, imports) running at once; more wait
    /// their turn (their job says so).
    pub max_parallel: usize,
    /// Keep at most this many snapshots per app (oldest unpinned deleted after a backup);
    /// 0 = keep all (default: appsnap never deletes data unless asked).
    pub max_snapshots_per_app: usize,
    /// Seconds Docker waits for a container to stop before killing it, for containers
    /// without a stop timeout of their own (compose's `stop_grace_period`).
    pub stop_timeout_secs: u32,
    /// Seconds appsnap waits for one answer of the Docker engine. A container's stop is
    /// waited for this long *beyond* its own stop timeout: giving up earlier would leave
    /// Docker stopping it after appsnap has "started it again".
    pub docker_timeout_secs: u64,
    /// Seconds a pre/post-backup hook may run before the backup gives up on it.
    pub hook_timeout_secs: u64,
    /// After a restore, how long containers may take to run (and be healthy, when they
    /// have a healthcheck) before the restore is rolled back.
    pub restore_timeout_secs: u32,
    /// A container without a healthcheck must keep running this long after a restore
    /// to count as started (one that exits at once is a failed restore).
    pub restore_settle_secs: u32,
    /// Recreate device nodes from any snapshot, imports included (off: only from snapshots
    /// this server made; an imported archive could plant one).
    pub restore_devices: bool,
    /// Restore extended attributes outside `user.*` (file capabilities, `trusted.*`,
    /// ACLs) from any snapshot, imports included (off: only from this server's own).
    pub restore_privileged_xattrs: bool,
    /// Largest snapshot accepted by `POST /api/v1/backup/snapshots/import`.
    pub max_import_bytes: u64,
    /// Most entries (files, directories, links) in a snapshot from elsewhere (imports);
    /// each costs ~10–20 bytes of memory while it is read, so the default keeps any
    /// verify under ~64 MB. This server's own snapshots may hold as many as they recorded.
    pub max_archive_entries: u64,
    /// Seconds between two scheduler passes (schedule policies decide what is due).
    pub scheduler_tick_secs: u64,
    /// Where the Docker host's filesystem is visible (`/` on the host; e.g. `/host` when
    /// appsnap runs in a container with the host's root mounted there).
    pub host_root: PathBuf,
    /// Hours without a successful backup after which an app is reported stale (the
    /// `stale` notification); 0 = never. Per app: `[apps.<id>] stale_after_hours`.
    pub stale_after_hours: u64,
    /// Where alerts go (`[[notify]]`, see `notify`).
    pub notify: Vec<crate::notify::Target>,
    /// Offsite repositories snapshots are copied to (`[[repositories]]`, see `offsite`).
    pub repositories: Vec<crate::offsite::RepositoryConfig>,
    /// Seconds before the first retry of a failed offsite copy; each next wait is 4×
    /// longer (60 s, 4 min, 16 min by default).
    pub offsite_retry_secs: u64,
    /// Attempts of an offsite copy before it is `failed` (and `offsite_failed` is sent).
    pub offsite_attempts: u32,
    /// How backups keep an app consistent (`precopy`, `stop` or `live`); per app:
    /// `[apps.<id>] mode`.
    pub mode: BackupMode,
    /// Pre-copy: seconds before the first pass read a file that it must have last
    /// changed (by ctime) for the second pass to trust it unchanged. Unset: the kernel's
    /// dirty-page expiry plus writeback interval, plus 1 s (36 s by default), which covers
    /// writes through shared memory mappings (they move ctime late). A lower value (at
    /// least 1) is safe only for apps that never write files through such mappings.
    pub precopy_racy_secs: Option<u64>,
    /// Archive an app whose volumes include one appsnap cannot read from the host (an
    /// NFS or CIFS volume Docker mounts only for a container) without that volume, listed
    /// as a warning, instead of refusing it (422). A restore never touches it. Per app:
    /// `[apps.<id>] skip_unreadable_mounts`.
    pub skip_unreadable_mounts: bool,
    /// Per-app settings, by app id.
    pub apps: HashMap<String, AppConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// Overrides `mode` for this app.
    pub mode: Option<BackupMode>,
    /// Overrides `skip_unreadable_mounts` for this app.
    pub skip_unreadable_mounts: Option<bool>,
    /// Overrides `hook_timeout_secs` for this app.
    pub hook_timeout_secs: Option<u64>,
    /// Overrides `stale_after_hours` for this app.
    pub stale_after_hours: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How an app's data is made consistent for the archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    /// Archive while the app runs, then stop it only to read again what changed
    /// meanwhile (`archive::precopy`): the same snapshot as `stop`, with a downtime that
    /// does not grow with the data.
    #[default]
    Precopy,
    /// Stop the app's running containers for the whole archive, start them right after.
    Stop,
    /// Archive while the app runs (pair with `appsnap.pre-backup` hooks for databases).
    Live,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            backup_root: PathBuf::from("/var/websoft9/backups"),
            state_dir: PathBuf::from("/var/lib/appsnap"),
            api_key: None,
            api_key_file: None,
            listen_unix: None,
            base_path: String::new(),
            frame_ancestors: Vec::new(),
            log: "info".into(),
            log_format: LogFormat::Text,
            compression_level: 3,
            threads: 0,
            max_parallel: 2,
            max_snapshots_per_app: 0,
            stop_timeout_secs: 30,
            docker_timeout_secs: 120,
            hook_timeout_secs: 600,
            restore_timeout_secs: 120,
            restore_settle_secs: 3,
            restore_devices: false,
            restore_privileged_xattrs: false,
            max_import_bytes: 100 << 30,
            max_archive_entries: 1_500_000,
            scheduler_tick_secs: 30,
            host_root: PathBuf::from("/"),
            stale_after_hours: 0,
            notify: Vec::new(),
            repositories: Vec::new(),
            offsite_retry_secs: 60,
            offsite_attempts: 4,
            mode: BackupMode::Precopy,
            precopy_racy_secs: None,
            skip_unreadable_mounts: false,
            apps: HashMap::new(),
        }
    }
}

impl Config {
    /// The file's settings over the defaults; no file means defaults.
    pub fn from_file(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Refuses settings that would be unsafe or cannot work.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.compression_level > 12 {
            return Err(ConfigError::Invalid(format!(
                "compression_level {} is out of range 0–12",
                self.compression_level
            )));
        }
        if !self.backup_root.is_absolute() {
            return Err(ConfigError::Invalid(format!(
                "backup_root {} must be an absolute path",
                self.backup_root.display()
            )));
        }
        if self.api_key.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::Invalid("api_key is set but empty".into()));
        }
        let path_char = |c: char| c.is_ascii_alphanumeric() || "/-_.".contains(c);
        if !self.base_path.is_empty()
            && (!self.base_path.starts_with('/')
                || self.base_path.ends_with('/')
                || self.base_path.contains("//")
                || self.base_path.split('/').any(|p| p == "." || p == "..")
                || !self.base_path.chars().all(path_char))
        {
            return Err(ConfigError::Invalid(format!(
                "base_path `{}` must be empty or like `/appsnap`: a leading `/`, no trailing \
                 one, letters, digits, `-`, `_`, `.` and `/` only",
                self.base_path
            )));
        }
        for origin in &self.frame_ancestors {
            let scheme = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let host_ok = scheme.is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-.:[]*".contains(c))
            });
            if !host_ok {
                return Err(ConfigError::Invalid(format!(
                    "frame_ancestors entry `{origin}` must be an origin such as \
                     `https://panel.example.com` or `http://10.0.0.2:9000`"
                )));
            }
        }
        for id in self.apps.keys() {
            crate::ids::validate("app id", id).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        let mut names = std::collections::HashSet::new();
        for target in &self.notify {
            target.check().map_err(ConfigError::Invalid)?;
            if !names.insert(&target.name) {
                return Err(ConfigError::Invalid(format!(
                    "two [[notify]] targets are named `{}`",
                    target.name
                )));
            }
        }
        let mut names = std::collections::HashSet::new();
        for repo in &self.repositories {
            repo.check()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if ["local", "all"].contains(&repo.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "a repository cannot be named `{}`: it means a location in the API",
                    repo.name
                )));
            }
            if !names.insert(&repo.name) {
                return Err(ConfigError::Invalid(format!(
                    "two [[repositories]] are named `{}`",
                    repo.name
                )));
            }
        }
        Ok(())
    }

    /// Reads `api_key_file` into `api_key`.
    pub fn load_key_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.api_key_file else {
            return Ok(());
        };
        if self.api_key.is_some() {
            return Err(ConfigError::Invalid(
                "set api_key or api_key_file, not both".into(),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let key = text.lines().next().unwrap_or_default().trim();
        if key.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "api_key_file {} is empty",
                path.display()
            )));
        }
        self.api_key = Some(key.to_string());
        Ok(())
    }

    /// Serving beyond loopback without a key would hand everyone's data to the network.
    pub fn check_listen(&self) -> Result<(), ConfigError> {
        if self.listen_unix.is_none() && self.api_key.is_none() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "refusing to listen on {} without an API key: set APPSNAP_API_KEY \
                 (or api_key in the config file), or listen on 127.0.0.1",
                self.listen
            )));
        }
        Ok(())
    }

    pub fn mode_for(&self, app_id: &str) -> BackupMode {
        self.apps
            .get(app_id)
            .and_then(|a| a.mode)
            .unwrap_or(self.mode)
    }

    /// The app's `stale_after_hours` (0: no staleness watch).
    pub fn stale_after_hours_for(&self, app_id: &str) -> u64 {
        self.apps
            .get(app_id)
            .and_then(|a| a.stale_after_hours)
            .unwrap_or(self.stale_after_hours)
    }

    pub fn skip_unreadable_for(&self, app_id: &str) -> bool {
        self.apps
            .get(app_id)
            .and_then(|a| a.skip_unreadable_mounts)
            .unwrap_or(self.skip_unreadable_mounts)
    }

    /// The pre-copy's racy window in ns (`precopy_racy_secs`, at least 1 s).
    pub fn precopy_racy_ns(&self) -> i64 {
        match self.precopy_racy_secs {
            Some(secs) => secs.max(1) as i64 * 1_000_000_000,
            None => crate::archive::precopy::racy_window_ns(),
        }
    }

    pub fn hook_timeout_for(&self, app_id: &str) -> std::time::Duration {
        let secs = self
            .apps
            .get(app_id)
            .and_then(|a| a.hook_timeout_secs)
            .unwrap_or(self.hook_timeout_secs);
        std::time::Duration::from_secs(secs)
    }

    pub fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe() {
        let c = Config::default();
        c.check().unwrap();
        c.check_listen().unwrap();
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.max_snapshots_per_app, 0);
        assert_eq!(c.mode_for("any"), BackupMode::Precopy);
    }

    #[test]
    fn a_base_path_and_frame_ancestors_must_be_plain_paths_and_origins() {
        let with = |base: &str, frame: &str| Config {
            base_path: base.into(),
            frame_ancestors: vec![frame.into()],
            ..Config::default()
        };
        with("/appsnap", "https://panel.example.com")
            .check()
            .unwrap();
        with("/a/b-c_d.e", "http://10.0.0.2:9000").check().unwrap();
        for base in [
            "appsnap",
            "/appsnap/",
            "/",
            "//x",
            "/a/../b",
            "/a b",
            "/a\"b",
        ] {
            assert!(with(base, "https://p.example").check().is_err(), "{base}");
        }
        for frame in [
            "*",
            "panel.example.com",
            "https://p.example; script-src *",
            "https://",
        ] {
            assert!(with("", frame).check().is_err(), "{frame}");
        }
    }

    #[test]
    fn refuses_public_listen_without_key() {
        let mut c = Config {
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..Config::default()
        };
        assert!(
            c.check_listen()
                .unwrap_err()
                .to_string()
                .contains("APPSNAP_API_KEY")
        );
        c.api_key = Some("k".into());
        c.check_listen().unwrap();
    }

    #[test]
    fn the_key_can_come_from_a_file_but_not_from_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "s3cret\n").unwrap();
        let mut c = Config {
            api_key_file: Some(file.clone()),
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..Config::default()
        };
        c.load_key_file().unwrap();
        assert_eq!(c.api_key.as_deref(), Some("s3cret"));
        c.check_listen().unwrap();
        let err = c.load_key_file().unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        std::fs::write(&file, "\n").unwrap();
        let mut empty = Config {
            api_key_file: Some(file),
            ..Config::default()
        };
        assert!(
            empty
                .load_key_file()
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }

    #[test]
    fn file_sets_per_app_mode_and_rejects_unknown_keys() {
        let c: Config =
            toml::from_str("compression_level = 9\n[apps.wordpress_x]\nmode = \"live\"\n").unwrap();
        assert_eq!(c.mode_for("wordpress_x"), BackupMode::Live);
        assert_eq!(c.compression_level, 9);
        assert!(toml::from_str::<Config>("compresion_level = 3").is_err());
    }
}
