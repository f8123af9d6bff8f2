//! appsnap: backup and restore for the data of self-hosted Docker compose apps.
//!
//! Map of the modules, from the outside in:
//! - [`api`]: the axum REST API — routes, auth, the one error → HTTP mapping, OpenAPI.
//! - [`manager`]: `BackupManager`, the only place that creates, lists and deletes
//!   snapshots: per-app locks, stop/start around the archive, crash journal.
//! - [`jobs`]: long operations with progress (polled or streamed as SSE).
//! - [`metrics`]: the Prometheus counters and gauges behind `GET /metrics`.
//! - [`notify`]: alerts (webhook, ntfy, Gotify, Slack, Discord, Telegram, mail).
//! - [`policy`]: WebAssembly policies (wasmtime sandbox, registry of built-in and uploaded
//!   components, bindings); the decisions are applied in `manager`.
//! - [`docker`]: apps are compose projects; finds their mounts, stops/starts containers,
//!   runs hooks (bollard).
//! - [`archive`]: the `.tar.gz` itself — filesystem walk (and its read-ahead), tar
//!   headers, parallel gzip, parallel inflate, safe extraction.
//! - [`offsite`]: copies in restic-format repositories (S3, paths, OpenDAL) via rustic_core.
//! - [`catalog`]: `snapshots.json`, written atomically, rebuildable from the archives.
//! - [`model`]: what those three share — `Mount`, `Source`, a file's sha256.
//! - [`scheduler`]: the service's clock — pending repairs retried, scheduled backups
//!   started.
//! - [`config`]: TOML file < `APPSNAP_*` environment < flags, with safe defaults.
//! - [`ids`]: validation of the ids that reach the filesystem.
//! - [`failpoint`]: named points where the crash-walk test stops the process.
//!
//! `main.rs` is a thin CLI over these (`serve`, `backup`, `list`, `delete`, `reindex`).

pub mod api;
pub mod archive;
pub mod catalog;
pub mod config;
pub mod docker;
pub mod failpoint;
pub mod ids;
pub mod jobs;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod offsite;
pub mod policy;
pub mod scheduler;
