//! appsnap's integration tests: one binary (ripgrep/wasmtime style), shared helpers in
//! [`common`], one module per area. They need a running Docker engine and root (appsnap
//! reads volumes from /var/lib/docker): run them with `scripts/test`, which starts dockerd
//! on a fresh machine. Without Docker they fail loudly, they never skip.

mod common;

mod archive_fidelity;
mod backup;
mod browse;
mod console;
mod contract;
mod faults;
mod hostile;
mod integrity;
mod offsite;
mod operability;
mod policies;
mod precopy;
mod repositories;
mod restore;
mod restore_paths;
mod rollback_and_crash;
mod service;
