//! The `appsnap` binary: a thin CLI over the library. `serve` runs the REST API; the other
//! verbs drive the same `BackupManager` for operators without the API (they refuse to run
//! while a service uses the same backup root).
//!
//! Settings: the TOML file, overridden by `APPSNAP_*` variables, overridden by flags (clap
//! reads each variable as its flag's fallback). Logs go to stderr, so stdout holds only a
//! command's output (`backup` prints the snapshot as JSON). Exit codes: 0, 1 when the
//! command failed, 2 for a config that cannot be used (and for clap's usage errors).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use appsnap::catalog::Origin;
use appsnap::config::Config;
use appsnap::manager::BackupManager;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "appsnap",
    version,
    about = "Backup and restore for Docker compose apps"
)]
struct Cli {
    /// TOML config file (settings below override it).
    #[arg(long, global = true, env = "APPSNAP_CONFIG")]
    config: Option<PathBuf>,
    /// Where archives and the catalog live [default: /var/websoft9/backups].
    #[arg(long, global = true, env = "APPSNAP_BACKUP_ROOT")]
    backup_root: Option<PathBuf>,
    /// Log filter (tracing syntax) [default: info].
    #[arg(long, global = true, env = "APPSNAP_LOG")]
    log: Option<String>,
    /// Log format [default: text; colours only on a terminal].
    #[arg(long, global = true, env = "APPSNAP_LOG_FORMAT")]
    log_format: Option<appsnap::config::LogFormat>,
    /// Deflate level 0–12 [default: 3].
    #[arg(long, global = true, env = "APPSNAP_COMPRESSION_LEVEL")]
    compression_level: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the REST API.
    Serve {
        /// Listen address [default: 127.0.0.1:8080].
        #[arg(long, env = "APPSNAP_LISTEN")]
        listen: Option<SocketAddr>,
        /// Required x-api-key; without it appsnap only listens on loopback.
        #[arg(long, env = "APPSNAP_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// File holding the x-api-key (not visible in `ps`, unlike --api-key).
        #[arg(long, env = "APPSNAP_API_KEY_FILE")]
        api_key_file: Option<PathBuf>,
        /// Serve on this Unix socket (mode 0660) instead of TCP.
        #[arg(long, env = "APPSNAP_LISTEN_UNIX")]
        listen_unix: Option<PathBuf>,
        /// The web console's path prefix behind a reverse proxy, e.g. `/appsnap`.
        #[arg(long, env = "APPSNAP_BASE_PATH")]
        base_path: Option<String>,
    },
    /// Snapshot an app now.
    Backup {
        /// The app's compose project name.
        app_id: String,
        /// A note stored with the snapshot.
        #[arg(long)]
        note: Option<String>,
    },
    /// List snapshots, newest first.
    List {
        /// Only this app's snapshots.
        #[arg(long)]
        app: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List one folder of a snapshot (its mounts without PATH), like `ls -l`.
    Files {
        snapshot_id: String,
        /// An archive path such as `volumes/data/uploads`.
        path: Option<String>,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
        /// Browse the snapshot's copy in this repository.
        #[arg(long)]
        repository: Option<String>,
    },
    /// Write one file of a snapshot to standard output (a folder: a `.tar.gz` of it).
    Cat {
        snapshot_id: String,
        /// An archive path such as `volumes/data/uploads/a.jpg`.
        path: String,
        /// Read it from the snapshot's copy in this repository.
        #[arg(long)]
        repository: Option<String>,
    },
    /// Delete a snapshot (only the local archive unless --location says otherwise).
    Delete {
        /// May be one held only in a repository, with --location naming it (or `all`).
        snapshot_id: String,
        /// `local`, a repository's name (its copies there are forgotten), or `all`.
        #[arg(long, default_value = "local")]
        location: String,
    },
    /// Restore an app from one of its snapshots (rolled back on any failure).
    Restore {
        /// The app to restore into; the snapshot must be one of its own.
        app_id: String,
        /// One not held locally is fetched from a repository first (see --from).
        snapshot_id: String,
        /// Fetch the snapshot from this repository (else a snapshot without a local
        /// archive is looked for in every configured repository).
        #[arg(long)]
        from: Option<String>,
    },
    /// Check a snapshot's checksum and structure.
    Verify { snapshot_id: String },
    /// Offsite repositories (`[[repositories]]` in the config).
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Rebuild the catalog from the archives on disk.
    Reindex,
    /// Archive directories into a .tar.gz (no Docker; used by the benchmark).
    #[command(hide = true)]
    Pack {
        /// The archive to write (an existing file is overwritten).
        #[arg(short, long)]
        output: PathBuf,
        /// Archived as `data0`, `data1`… in this order.
        dirs: Vec<PathBuf>,
    },
    /// Extract a `pack` archive's first folder into a new directory (benchmark).
    #[command(hide = true)]
    Unpack { archive: PathBuf, into: PathBuf },
    /// Compile an uploaded policy component under limits (run by the service itself).
    #[command(hide = true)]
    CompilePolicy,
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Create the repository (an existing one is only opened, never overwritten).
    Init { name: String },
    /// List the appsnap snapshots a repository holds.
    Snapshots {
        /// Its `name` in the config's `[[repositories]]`.
        name: String,
        /// Only this app's snapshots.
        #[arg(long)]
        app: Option<String>,
    },
    /// Check the repository's structure; exits non-zero when it finds errors.
    Check {
        /// Its `name` in the config's `[[repositories]]`.
        name: String,
        /// Also download every pack and check each blob's hash (reads the whole repository).
        #[arg(long)]
        read_data: bool,
    },
    /// Free the space of forgotten snapshots: unused packs are marked, and those marked
    /// by an earlier prune at least `keep_delete_secs` ago are deleted.
    Prune { name: String },
    /// Apply the retention bound to the repository (from an admin machine, for servers
    /// whose access is append-only): every copy of each app, whichever server made it;
    /// what the policy deletes is forgotten (`repo prune` then frees the space).
    Forget {
        name: String,
        /// Only this app's copies.
        #[arg(long)]
        app: Option<String>,
        /// Only say what would be forgotten.
        #[arg(long)]
        dry_run: bool,
        /// The server's policies: a copy of its `{backup_root}/.appsnap/policies` folder
        /// (default: this configuration's own).
        #[arg(long)]
        policies: Option<PathBuf>,
    },
}

/// Parses the command line, loads the config, sets up logging, then runs the command on
/// a multi-threaded runtime. `compile-policy` comes first and skips all of that: the
/// service runs it as a child with an empty environment and takes its stdout as the
/// compiled artifact, so it must load no config and print nothing else.
fn main() -> ExitCode {
    appsnap::memory::limit_arenas();
    let cli = Cli::parse();
    if let Command::CompilePolicy = cli.command {
        return appsnap::policy::engine::compile_child();
    }
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("appsnap: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        appsnap::config::LogFormat::Json => logs.json().init(),
        // journald and files get no colour codes.
        appsnap::config::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("appsnap: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The file's settings, then the global flags over them. For `serve`, its own flags
/// (listen, key, key file, socket) go over those too; then the key file is read (refused
/// together with a key) and a TCP address beyond loopback is refused without a key.
/// `check` runs last, on the result.
fn load_config(cli: &Cli) -> Result<Config, Box<dyn std::error::Error>> {
    let mut config = Config::from_file(cli.config.as_deref())?;
    if let Some(v) = &cli.backup_root {
        config.backup_root = v.clone();
    }
    if let Some(v) = &cli.log {
        config.log = v.clone();
    }
    if let Some(v) = cli.log_format {
        config.log_format = v;
    }
    if let Some(v) = cli.compression_level {
        config.compression_level = v;
    }
    if let Command::Serve {
        listen,
        api_key,
        api_key_file,
        listen_unix,
        base_path,
    } = &cli.command
    {
        if let Some(v) = base_path {
            config.base_path = v.clone();
        }
        if let Some(v) = listen {
            config.listen = *v;
        }
        if let Some(v) = api_key {
            config.api_key = Some(v.clone());
        }
        if let Some(v) = api_key_file {
            config.api_key_file = Some(v.clone());
        }
        if let Some(v) = listen_unix {
            config.listen_unix = Some(v.clone());
        }
        config.load_key_file()?;
        config.check_listen()?;
    }
    config.check()?;
    Ok(config)
}

/// Runs one command. `pack` and `unpack` need neither the backup root nor Docker, and
/// `repo init|check|prune|forget` only the repository (and `forget` a policies folder).
/// Every other command opens the manager: it takes the backup root's process lock, so it
/// fails while a service uses the root, and first repairs what a crash left. `backup` and `restore` report SIGINT and SIGTERM
/// and carry on to a consistent end; `backup` also waits for the offsite copies it owes,
/// `restore` for the removal of the data it replaced.
async fn run(command: Command, config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let command = match command {
        Command::Pack { output, dirs } => return pack(&config, &output, dirs),
        Command::Unpack { archive, into } => return unpack(&config, &archive, into),
        other => other,
    };
    if let Command::Repo(
        RepoCommand::Init { name }
        | RepoCommand::Check { name, .. }
        | RepoCommand::Prune { name }
        | RepoCommand::Forget { name, .. },
    ) = &command
    {
        // These need no backup root (and no Docker): only the repository's storage, so
        // they also work from another machine after a disaster.
        let repo = config
            .repositories
            .iter()
            .find(|r| &r.name == name)
            .cloned()
            .ok_or_else(|| appsnap::offsite::OffsiteError::UnknownRepository(name.clone()))?;
        return repo_command(command, repo, &config).await;
    }
    let manager = BackupManager::open(config).await?;
    if matches!(command, Command::Backup { .. } | Command::Restore { .. }) {
        // Ctrl-C or SIGTERM in the middle would leave the app stopped or half restored:
        // the operation runs to its consistent end (done, or rolled back) first.
        // Registered here, before the operation starts, not when the task first runs.
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                eprintln!(
                    "appsnap: signal received; finishing the current operation first so that \
                     the app is not left down (kill -9 would leave that to the next start)"
                );
            }
        });
    }
    match command {
        Command::Serve { .. } => appsnap::api::serve(manager, shutdown_signal()).await?,
        Command::Backup { app_id, note } => {
            let started = manager.start_backup(&app_id, Origin::Manual, note).await?;
            let snapshot = started.done.await??;
            // The copies it owes run before the command exits (the service would resume
            // them otherwise, but there may be no service).
            manager.offsite_finished().await;
            let snapshot = manager.get(&snapshot.snapshot_id).unwrap_or(snapshot);
            println!("{}", serde_json::to_string_pretty(&snapshot)?);
        }
        Command::List { app, json } => {
            let list = manager.list(app.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for s in list {
                    println!(
                        "{}  {:<24} {:>12}  {}",
                        s.snapshot_id,
                        s.app_id,
                        s.size_bytes,
                        s.facts.created_at.to_rfc3339()
                    );
                }
            }
        }
        Command::Files {
            snapshot_id,
            path,
            json,
            repository,
        } => {
            let path = path.unwrap_or_default();
            let mut cursor = None;
            loop {
                let page = manager
                    .files(
                        &snapshot_id,
                        repository.as_deref(),
                        &path,
                        None,
                        cursor.as_deref(),
                        usize::MAX,
                    )
                    .await?;
                for e in &page.entries {
                    if json {
                        println!("{}", serde_json::to_string(e)?);
                        continue;
                    }
                    let kind = serde_json::to_value(e.kind)?;
                    let target = match (&e.link, &e.container_path) {
                        (Some(l), _) => format!(" -> {l}"),
                        (_, Some(c)) => format!("  (mounted at {c})"),
                        _ => String::new(),
                    };
                    println!(
                        "{:<10} {:>5} {:>5}:{:<5} {:>12}  {}  {}{target}",
                        kind.as_str().unwrap_or("?"),
                        e.mode,
                        e.uid,
                        e.gid,
                        e.size,
                        e.mtime.format("%Y-%m-%d %H:%M"),
                        e.name,
                    );
                }
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        Command::Cat {
            snapshot_id,
            path,
            repository,
        } => {
            let download = manager.file_content(&snapshot_id, repository.as_deref(), &path, None);
            let mut reader = match download.await? {
                appsnap::manager::Download::File(file) => file.reader,
                appsnap::manager::Download::Folder { reader, .. } => reader,
            };
            tokio::task::spawn_blocking(move || {
                std::io::copy(&mut reader, &mut std::io::stdout().lock())
            })
            .await??;
        }
        Command::Delete {
            snapshot_id,
            location,
        } => manager.delete_at(&snapshot_id, &location).await?,
        Command::Reindex => println!("{} snapshots indexed", manager.reindex()?),
        Command::Restore {
            app_id,
            snapshot_id,
            from,
        } => {
            let started = manager
                .start_restore_from(&app_id, &snapshot_id, from.as_deref())
                .await?;
            let restored = started.done.await??;
            println!("Snapshot {snapshot_id} restored into {app_id}");
            for skipped in restored.skipped {
                println!("not restored: {skipped}");
            }
            // The app runs the snapshot already; the data it replaced goes before exit
            // (else the next start of appsnap would remove it).
            println!("removing the data the restore replaced…");
            manager.cleanups_finished().await;
            let cleanup = restored.cleanup_job.and_then(|id| manager.jobs.get(&id));
            if let Some(failure) = cleanup.and_then(|job| job.info().failure) {
                eprintln!("appsnap: {failure}");
            }
        }
        Command::Verify { snapshot_id } => {
            let (_, v) = manager.verify(&snapshot_id).await?;
            println!(
                "Snapshot {snapshot_id} verified: {} entries, {} tar bytes",
                v.entries, v.tar_bytes
            );
        }
        Command::Repo(RepoCommand::Snapshots { name, app }) => {
            for s in manager.remote_snapshots(&name, app.as_deref()).await? {
                println!(
                    "{}  {:<24} {:>12}  {}  restic {}",
                    s.snapshot_id,
                    s.app_id,
                    s.tar_bytes,
                    s.created_at.to_rfc3339(),
                    &s.repository_snapshot[..8.min(s.repository_snapshot.len())]
                );
            }
        }
        Command::Pack { .. }
        | Command::Unpack { .. }
        | Command::CompilePolicy
        | Command::Repo(
            RepoCommand::Init { .. }
            | RepoCommand::Check { .. }
            | RepoCommand::Prune { .. }
            | RepoCommand::Forget { .. },
        ) => {
            unreachable!("handled above")
        }
    }
    Ok(())
}

/// `appsnap repo init|check|prune|forget`: straight on the repository, without the
/// manager.
/// `check` prints every warning and error, and fails only for errors. The repository
/// calls block, so they run on blocking threads.
async fn repo_command(
    command: Command,
    repo: appsnap::offsite::RepositoryConfig,
    config: &Config,
) -> Result<(), Box<dyn std::error::Error>> {
    use appsnap::offsite;
    let name = repo.name.clone();
    match command {
        Command::Repo(RepoCommand::Init { .. }) => {
            let id = tokio::task::spawn_blocking(move || offsite::init(&repo)).await??;
            println!("repository {name} is ready (id {id})");
        }
        Command::Repo(RepoCommand::Prune { .. }) => {
            let p = tokio::task::spawn_blocking(move || offsite::prune(&repo)).await??;
            println!(
                "repository {name} pruned: {} packs marked unused, {} deleted, {} repacked; \
                 {} bytes before, {} after",
                p.packs_marked, p.packs_deleted, p.packs_repacked, p.bytes_before, p.bytes_after
            );
        }
        Command::Repo(RepoCommand::Check { read_data, .. }) => {
            let c = tokio::task::spawn_blocking(move || offsite::check(&repo, read_data)).await??;
            for w in &c.warnings {
                println!("warning: {w}");
            }
            for e in &c.errors {
                println!("error: {e}");
            }
            if !c.errors.is_empty() {
                return Err(format!(
                    "repository {name}: the check found {} errors",
                    c.errors.len()
                )
                .into());
            }
            println!("repository {name}: no errors found");
        }
        Command::Repo(RepoCommand::Forget {
            app,
            dry_run,
            policies,
            ..
        }) => {
            let dir =
                policies.unwrap_or_else(|| config.backup_root.join(".appsnap").join("policies"));
            if !dir.join("state.json").is_file() {
                return Err(format!(
                    "no policies at {}: copy the server's {{backup_root}}/.appsnap/policies \
                     folder here, or name it with --policies",
                    dir.display()
                )
                .into());
            }
            let registry = appsnap::policy::Registry::open_dir(dir)?;
            let reports = tokio::task::spawn_blocking(move || {
                appsnap::manager::admin::forget_by_policies(
                    &repo,
                    &registry,
                    app.as_deref(),
                    dry_run,
                )
            })
            .await??;
            println!("{}", serde_json::to_string_pretty(&reports)?);
            let forgotten: usize = reports.iter().map(|r| r.deleted.len()).sum();
            let verb = if dry_run { "would forget" } else { "forgot" };
            eprintln!(
                "repository {name}: {verb} {forgotten} snapshots of {} apps{}",
                reports.len(),
                if dry_run || forgotten == 0 {
                    ""
                } else {
                    "; `appsnap repo prune` frees their space"
                }
            );
        }
        _ => unreachable!("only repository commands"),
    }
    Ok(())
}

/// `appsnap pack`: the archive writer alone, for the benchmark. The metadata entry is
/// `{}`, so the result is not a snapshot (an import refuses it); compression level and
/// threads come from the config. The summary goes to stderr.
fn pack(
    config: &Config,
    output: &std::path::Path,
    dirs: Vec<PathBuf>,
) -> Result<(), Box<dyn std::error::Error>> {
    let sources: Vec<_> = dirs
        .into_iter()
        .enumerate()
        .map(|(i, path)| appsnap::archive::Source {
            archive_dir: format!("data{i}"),
            path,
            exclude: Vec::new(),
        })
        .collect();
    let opts = appsnap::archive::Options {
        level: config.compression_level,
        threads: config.threads(),
        ..Default::default()
    };
    let file = std::fs::File::create(output)?;
    let (summary, file) = appsnap::archive::write(file, b"{}", &sources, &opts, &|_| {})?;
    file.sync_all()?;
    eprintln!(
        "{} entries, {} tar bytes -> {} bytes, sha256 {}",
        summary.entries, summary.tar_bytes, summary.compressed_bytes, summary.sha256
    );
    Ok(())
}

/// `appsnap unpack`: the extractor alone, for the benchmark. Only `data0` is extracted,
/// under the strictest extraction rules (no devices, `user.*` xattrs only); an entry
/// outside it fails the extraction, so only single-folder `pack` archives unpack.
fn unpack(
    config: &Config,
    archive: &std::path::Path,
    into: PathBuf,
) -> Result<(), Box<dyn std::error::Error>> {
    let stream = appsnap::archive::read::open_tar_stream(archive, config.threads())?;
    let targets = [appsnap::archive::extract::Target {
        archive_dir: "data0".into(),
        path: into,
        reserved: None,
        discard: false,
        file_root: false,
    }];
    let opts = appsnap::archive::extract::Options::default();
    let summary = appsnap::archive::extract::extract(stream, &targets, &opts, &|_| {})?;
    eprintln!(
        "{} entries, {} tar bytes",
        summary.entries, summary.tar_bytes
    );
    Ok(())
}

/// SIGINT or SIGTERM.
///
/// `serve` only: the first one starts the graceful shutdown (`appsnap::api::serve`).
/// tokio keeps its handlers for the life of the process, so a second signal does not
/// kill it halfway either (SIGKILL would; the next start then repairs what it left).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
