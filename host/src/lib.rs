//! appsnap: backup and restore for the data of self-hosted Docker compose apps.
//!
//! Map of the modules, from the outside in (a module only uses those below it):
//! - [`api`]: the axum REST API — routes, auth (key, loopback Host, Origin), the one
//!   error → HTTP mapping, OpenAPI. Nothing below it imports it.
//! - [`console`]: the web console at `/` (askama pages, embedded assets, English and
//!   Chinese, sign-in, CSRF); the API router serves it under the same Host rules. Where
//!   it answers what the API answers it uses the API's own function, so the two cannot
//!   drift: refusals (`api::error`), a job's event stream (`api::jobs::event_stream`),
//!   downloads (`api::files::download_response`, `api::transfer::archive_response`). The
//!   one place a module points up: the two are one HTTP face of the manager.
//! - [`scheduler`]: the service's clock — pending repairs retried, scheduled backups
//!   started.
//! - [`manager`]: `BackupManager`, the façade through which snapshots are created,
//!   listed, restored, copied and deleted. Below it, components with one job each
//!   (`gate`: locks, cleanup waits, heavy slots, cancel flags; `store`: the backup root,
//!   catalog, sidecars and journals' paths; `containers`: stop, start, wait, hooks;
//!   `verify`: checks and extraction rules; `repos`: repositories and whose copies are
//!   whose; `rules`: what policies decide; `recovery`: rollback and repairs) and the
//!   operations that use them (`backup`, `restore` with `aside`, its journaled state
//!   machine, `browse`, `transfer`, `offsite`, `policies`), which never call each other; `run`,
//!   the façade's job starters, chains them. `admin` runs without the façade: a
//!   repository's retention applied from an admin machine (`repo forget`).
//! - [`jobs`]: long operations with progress (polled or streamed as SSE).
//! - [`metrics`]: the Prometheus counters and gauges behind `GET /metrics`.
//! - [`notify`]: alerts (webhook, ntfy, Gotify, Slack, Discord, Telegram, mail).
//! - [`policy`]: WebAssembly policies (wasmtime sandbox, registry of built-in and uploaded
//!   components, bindings); the decisions are applied in `manager`.
//! - [`offsite`]: copies in restic-format repositories (S3, REST, paths, OpenDAL) via
//!   rustic_core: a snapshot as a tree of its entries with the layout that rebuilds its
//!   tar stream (`tree`, `layout`, `rebuild`), the old one-file format (`source`), a copy
//!   read by byte ranges for browsing, rate limits and counting (`counting`).
//! - [`docker`]: apps are compose projects; finds their mounts, stops/starts containers,
//!   runs hooks (bollard).
//! - [`catalog`]: `snapshots.json` and each archive's sidecar (the server's `Facts`),
//!   written atomically, rebuildable from the archives.
//! - [`archive`]: the `.tar.gz` itself — filesystem walk (and its read-ahead), tar
//!   headers, parallel gzip, parallel inflate, safe extraction, checksums, the entry
//!   index (where each entry sits, for listings), pre-copy (a first pass while the app
//!   runs, a second one for what changed, the final archive spliced from both).
//! - [`exclude`]: the `appsnap.exclude` label's patterns, matched by the walk and by a
//!   restore that carries excluded paths over.
//! - [`model`]: the types the layers share — `Mount`, `Source`, `ErrorBody`.
//! - [`config`]: TOML file < `APPSNAP_*` environment < flags, with safe defaults.
//! - [`ids`]: validation of the ids that reach the filesystem.
//! - [`memory`]: malloc's arenas, limited when a process starts (a copy's peak RSS).
//! - [`failpoint`]: named points where the crash-walk test stops the process.
//!
//! `main.rs` is a thin CLI over these: `serve`, `backup`, `list`, `files`, `cat`,
//! `delete`, `restore`, `verify`, `reindex`, `repo` (`init`, `snapshots`, `check`,
//! `prune`, `forget`), and the hidden `pack`, `unpack` (benchmark) and `compile-policy` (the
//! service's sandboxed compiles).

pub mod api;
pub mod archive;
pub mod catalog;
pub mod config;
pub mod console;
pub mod docker;
pub mod exclude;
pub mod failpoint;
pub mod ids;
pub mod jobs;
pub mod manager;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod offsite;
pub mod policy;
pub mod scheduler;
