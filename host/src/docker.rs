//! Docker, as appsnap sees it: an **app** is a compose project, i.e. the containers whose
//! label `com.docker.compose.project` equals the app id, running or not. Its **data** is
//! every volume and bind mount of those containers, the named volumes carrying the same
//! label, and the project's working dir (where Websoft9 keeps the compose file and `.env`).
//!
//! Data is read from the host's filesystem (`host_root` + the volume's `Mountpoint` or the
//! bind source), never through helper containers.
//!
//! A mount's *root* is resolved the way the kernel resolves it when Docker mounts it: a
//! bind source or compose dir that is a symlink (`./data -> /mnt/disk2/db`, the usual way
//! to move a database to another disk) is followed, so the archive holds the data and a
//! restore writes where the container reads. Links *inside* the data stay links.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListVolumesOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use futures_util::StreamExt;

use crate::model::{Mount, Source, escape_path};

/// Set by compose on every container and named volume of a project; its value is the app
/// id. Volumes a restore creates get it too, so that the app owns them afterwards.
pub const PROJECT_LABEL: &str = "com.docker.compose.project";
/// The directory compose ran in (compose file, `.env`): archived as the `project` mount
/// when it is a directory on the host.
pub const WORKING_DIR_LABEL: &str = "com.docker.compose.project.working_dir";
/// Container label holding a shell command run inside the container (`sh -c`) before its
/// data is read, e.g. a database dump. A failure or timeout fails the backup.
pub const PRE_BACKUP_LABEL: &str = "appsnap.pre-backup";
/// On any container of an app: `precopy`, `stop` or `live`, over the configured mode.
pub const MODE_LABEL: &str = "appsnap.mode";
/// Like `PRE_BACKUP_LABEL`, run once the data is read (and, in stop mode, the containers
/// are started again); a failure only adds a warning to the backup.
pub const POST_BACKUP_LABEL: &str = "appsnap.post-backup";
/// Hook output kept for the error message, in bytes (stdout and stderr together).
const HOOK_OUTPUT_MAX: usize = 4096;
/// Symlinks followed while resolving one mount root (the kernel's limit).
const MAX_LINKS: usize = 40;

/// Errors of talking to Docker.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No container carries the compose project label of this app.
    #[error("no container belongs to compose project `{0}`")]
    AppNotFound(String),
    /// The Docker engine could not be reached or refused a call.
    #[error("Docker engine: {0}")]
    Engine(#[from] bollard::errors::Error),
    /// A volume whose data only exists while a container mounts it (NFS, CIFS, a block
    /// device through `driver_opts`): stopped for a consistent copy, it would read empty.
    #[error(
        "volume `{name}` is mounted by Docker from {what} only while a container uses it; \
         appsnap cannot read it from the host. Back it up where it is served from, or \
         use a bind mount"
    )]
    UnreadableVolume { name: String, what: String },
    /// A pre/post-backup hook did not finish in time (it may still run in the container).
    #[error(
        "{label} hook `{command}` in container {container} did not finish within {secs} s \
         (set hook_timeout_secs to allow more)"
    )]
    HookTimeout {
        label: &'static str,
        container: String,
        command: String,
        secs: u64,
    },
    /// A pre/post-backup hook exited non-zero.
    #[error("{label} hook `{command}` in container {container} exited with {exit_code}: {output}")]
    Hook {
        label: &'static str,
        container: String,
        command: String,
        exit_code: i64,
        output: String,
    },
}

impl DockerError {
    /// The error as an alert tells it to third parties (a chat, a mail provider): a
    /// hook's command line and output may hold secrets (`mysqldump -p…`, a dump's
    /// error), so an alert names the hook and its exit code only; the log keeps the rest.
    pub fn alert_text(&self) -> String {
        match self {
            DockerError::Hook {
                label,
                container,
                exit_code,
                ..
            } => format!(
                "{label} hook in container {container} exited with {exit_code} (its command \
                 and output are in appsnap's log)"
            ),
            DockerError::HookTimeout {
                label,
                container,
                secs,
                ..
            } => format!(
                "{label} hook in container {container} did not finish within {secs} s (its \
                 command is in appsnap's log)"
            ),
            other => other.to_string(),
        }
    }

    /// The engine answered 404: the container (or volume) does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            DockerError::Engine(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            })
        )
    }
}

/// One container of an app.
#[derive(Debug, Clone)]
pub struct Container {
    /// The engine's container id (empty if the engine left it out).
    pub id: String,
    /// Its first name, without Docker's leading `/`.
    pub name: String,
    /// Running or restarting: both count as up, so a stop-mode backup stops them and
    /// starts them again.
    pub running: bool,
    /// All its labels, hook commands included.
    pub labels: HashMap<String, String>,
}

/// An app and where its data lives.
#[derive(Debug, Clone)]
pub struct App {
    /// The compose project name.
    pub id: String,
    /// Every container of the project, running or not.
    pub containers: Vec<Container>,
    /// The data to archive, each source once (nested ones dropped), sorted by
    /// `archive_dir`, with `source` resolved on the host (see `Docker::resolve_on_host`).
    pub mounts: Vec<Mount>,
    /// Mount sources left out, with why (nested in another source, a socket, /proc …).
    pub skipped: Vec<String>,
    /// Volumes whose data appsnap cannot read from the host (name, where Docker mounts
    /// it from): a backup refuses the app rather than archive an empty folder as its data.
    pub unreadable: Vec<(String, String)>,
    /// Labels found unusable (an `appsnap.exclude` pattern that is no glob), for the
    /// snapshot's warnings.
    pub warnings: Vec<String>,
}

impl App {
    /// The mounts as archive sources: each resolved host path and its folder in the
    /// archive, in the order of `mounts`.
    pub fn sources(&self) -> Vec<Source> {
        self.mounts
            .iter()
            .map(|m| Source {
                archive_dir: m.archive_dir.clone(),
                path: PathBuf::from(&m.source),
                exclude: m.exclude.clone(),
            })
            .collect()
    }

    /// The containers that are up (running or restarting): those whose hooks run, and
    /// those a stop-mode backup or a restore stops and starts again.
    pub fn running(&self) -> Vec<&Container> {
        self.containers.iter().filter(|c| c.running).collect()
    }
}

/// The Docker engine, and where the host's filesystem is seen from this process. Every
/// call goes through the engine's API; data is never read through it.
#[derive(Clone)]
pub struct Docker {
    client: bollard::Docker,
    /// `/` when appsnap runs on the host; e.g. `/host` in a container with the host's
    /// root mounted there. Host paths the engine reports are read under it.
    host_root: PathBuf,
}

impl Docker {
    /// Connects through `DOCKER_HOST` or the local socket; each request waits at most
    /// `timeout` for its answer (a stop longer: see [`Self::stop`]).
    pub fn connect(host_root: &Path, timeout: Duration) -> Result<Docker, DockerError> {
        Ok(Docker {
            client: bollard::Docker::connect_with_local_defaults()?.with_timeout(timeout),
            host_root: host_root.to_path_buf(),
        })
    }

    /// Fails with `Engine` when the engine cannot be reached or answers with an error.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.client.ping().await?;
        Ok(())
    }

    /// Every app (compose project) with a container on this engine, running or not:
    /// sorted, each once. Projects whose name is not a valid app id are left out, since
    /// an app id becomes part of paths and URLs.
    pub async fn list_apps(&self) -> Result<Vec<String>, DockerError> {
        let filters = HashMap::from([("label".to_string(), vec![PROJECT_LABEL.to_string()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let mut apps: Vec<String> = self
            .client
            .list_containers(Some(options))
            .await?
            .into_iter()
            .filter_map(|c| c.labels?.remove(PROJECT_LABEL))
            .filter(|app| crate::ids::validate("app id", app).is_ok())
            .collect();
        apps.sort();
        apps.dedup();
        Ok(apps)
    }

    /// Finds an app and its data. [`DockerError::AppNotFound`] when no container has the
    /// project label (a project with only volumes left is not an app any more).
    ///
    /// The data: the volumes and bind mounts of its containers (tmpfs and the like hold
    /// nothing to keep), the named volumes labelled with the project even if no container
    /// mounts them, and the compose working dir. Sources that are not app data, hold
    /// nothing persistent or lie inside another source go to `skipped`; volumes only
    /// Docker can mount go to `unreadable`. `app_id` is not validated here: callers check
    /// it first. Any failed engine call (a volume removed between listing and inspecting,
    /// say) is `Engine`.
    pub async fn find_app(&self, app_id: &str) -> Result<App, DockerError> {
        let label = format!("{PROJECT_LABEL}={app_id}");
        let filters = HashMap::from([("label".to_string(), vec![label.clone()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self.client.list_containers(Some(options)).await?;
        if summaries.is_empty() {
            return Err(DockerError::AppNotFound(app_id.to_string()));
        }

        let mut containers = Vec::new();
        // Keyed by host path (binds) or volume name, with the container paths they serve.
        let mut binds: Vec<Uses> = Vec::new();
        let mut volumes: Vec<Uses> = Vec::new();
        let mut working_dir = None;
        let mut warnings = Vec::new();
        for s in &summaries {
            let labels = s.labels.clone().unwrap_or_default();
            if working_dir.is_none() {
                working_dir = labels.get(WORKING_DIR_LABEL).cloned();
            }
            let name = s
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            let exclude = exclude_label(&name, &labels, &mut warnings);
            containers.push(Container {
                id: s.id.clone().unwrap_or_default(),
                name,
                running: matches!(
                    s.state,
                    Some(
                        ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::RESTARTING
                    )
                ),
                labels,
            });
            for m in s.mounts.iter().flatten() {
                let dest = m.destination.clone().unwrap_or_default();
                match m.typ.as_deref() {
                    Some("volume") => {
                        if let Some(name) = &m.name {
                            add_use(&mut volumes, name, dest, &exclude);
                        }
                    }
                    Some("bind") => {
                        if let Some(src) = &m.source {
                            add_use(&mut binds, src, dest, &exclude);
                        }
                    }
                    _ => {} // tmpfs, npipe, image: nothing on disk to keep
                }
            }
        }
        let vfilters = HashMap::from([("label".to_string(), vec![label])]);
        let labelled = self
            .client
            .list_volumes(Some(
                ListVolumesOptionsBuilder::default()
                    .filters(&vfilters)
                    .build(),
            ))
            .await?;
        for v in labelled.volumes.into_iter().flatten() {
            add_use(&mut volumes, &v.name, String::new(), &[]);
        }

        let mut mounts = Vec::new();
        let mut skipped = Vec::new();
        let mut unreadable = Vec::new();
        for Uses {
            key: name,
            dests,
            exclude,
        } in volumes
        {
            let vol = self.client.inspect_volume(&name).await?;
            let source = match volume_source(&vol) {
                VolumeSource::Mountpoint => vol.mountpoint.clone(),
                VolumeSource::Device(device) => device,
                VolumeSource::Nothing(why) => {
                    skipped.push(format!("volume {name}: {why}"));
                    continue;
                }
                VolumeSource::Unreadable(what) => {
                    unreadable.push((name, what));
                    continue;
                }
            };
            mounts.push(Mount {
                kind: "volume".into(),
                archive_dir: format!("volumes/{name}"),
                source: self.resolve_on_host(&source),
                destination: dests.join(","),
                name,
                exclude,
            });
        }
        for Uses {
            key: src,
            dests,
            exclude,
        } in binds
        {
            if let Some(why) = excluded_bind(&src) {
                skipped.push(format!("bind {src}: {why}"));
                continue;
            }
            mounts.push(Mount {
                kind: "bind".into(),
                archive_dir: format!("binds/{}", escape_path(&src)),
                source: self.resolve_on_host(&src),
                destination: dests.join(","),
                name: src,
                exclude,
            });
        }
        if let Some(dir) = working_dir {
            let source = self.resolve_on_host(&dir);
            if Path::new(&source).is_dir() {
                mounts.push(Mount {
                    kind: "project".into(),
                    archive_dir: "project".into(),
                    source,
                    destination: String::new(),
                    name: dir,
                    exclude: Vec::new(),
                });
            }
        }
        let mut mounts = drop_nested(mounts, &mut skipped);
        for m in &mut mounts {
            bound_exclude(m, &mut warnings);
        }
        Ok(App {
            id: app_id.to_string(),
            containers,
            mounts,
            skipped,
            unreadable,
            warnings,
        })
    }

    /// `host_root` + an absolute host path, with no symlink followed: for paths the engine
    /// itself made (a new volume's mountpoint). Mount roots go through `resolve_on_host`.
    pub fn on_host(&self, path: &str) -> String {
        self.host_root
            .join(path.trim_start_matches('/'))
            .to_string_lossy()
            .into_owned()
    }

    /// Where the data of the host path `path` really is, as seen from here: every
    /// symlink on the way followed like the kernel does when Docker mounts it, with
    /// absolute link targets taken inside `host_root`.
    pub fn resolve_on_host(&self, path: &str) -> String {
        resolve_in_root(&self.host_root, Path::new(path))
            .to_string_lossy()
            .into_owned()
    }

    /// Stops a container, giving it its own stop timeout (compose's `stop_grace_period`)
    /// when it has one, else `default_secs`. Returns when it has stopped; `Killed` when it
    /// did not stop in time and Docker had to kill it (its files may be inconsistent).
    /// The answer is awaited for that timeout plus the usual request timeout: a client
    /// that gave up sooner would leave Docker stopping the container after appsnap had
    /// moved on (and started it "again", to no effect).
    pub async fn stop(&self, id: &str, default_secs: u32) -> Result<Stopped, DockerError> {
        let info = self.client.inspect_container(id, None).await?;
        let timeout = info
            .config
            .and_then(|c| c.stop_timeout)
            .filter(|&t| t >= 0)
            .unwrap_or(default_secs.into());
        let was_running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        let opts = StopContainerOptionsBuilder::default()
            .t(timeout.min(i32::MAX.into()) as i32)
            .build();
        let patient = self
            .client
            .clone()
            .with_timeout(self.client.timeout() + Duration::from_secs(timeout.max(0) as u64));
        match patient.stop_container(id, Some(opts)).await {
            // 304: it was not running.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => return Ok(Stopped::Clean),
            other => other?,
        }
        let state = self.state(id).await?;
        Ok(if was_running && state.exit_code == 137 {
            Stopped::Killed { timeout }
        } else {
            Stopped::Clean
        })
    }

    /// Starts a container. "Already running" (304) is not a start: a stop still in
    /// flight answers it too, and ends with the container stopped; callers that stopped
    /// the container themselves check again ([`Started::AlreadyRunning`]).
    pub async fn start(&self, id: &str) -> Result<Started, DockerError> {
        match self
            .client
            .start_container(id, None::<StartContainerOptions>)
            .await
        {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(Started::AlreadyRunning),
            other => {
                other?;
                Ok(Started::Now)
            }
        }
    }

    /// Runs the command of `label` (if the container has it) with `sh -c` inside the
    /// container and fails with its output when it exits non-zero.
    /// A hook that has not finished after `timeout` fails: a hung dump must not hold the
    /// app's lock (and, in stop mode, keep it from being backed up) forever.
    pub async fn run_hook(
        &self,
        c: &Container,
        label: &'static str,
        timeout: std::time::Duration,
    ) -> Result<(), DockerError> {
        let Some(command) = c.labels.get(label) else {
            return Ok(());
        };
        match tokio::time::timeout(timeout, self.run_hook_command(c, label, command)).await {
            Ok(result) => result,
            Err(_) => Err(DockerError::HookTimeout {
                label,
                container: c.name.clone(),
                command: command.clone(),
                secs: timeout.as_secs(),
            }),
        }
    }

    /// `sh -c <command>` through `docker exec`, with stdout and stderr attached. The output
    /// stream is drained to its end, but only its first `HOOK_OUTPUT_MAX` bytes are kept
    /// (cut on a character boundary) for the error. An exit code the engine does not
    /// report counts as -1, a failure. The command is logged: the log is the operator's;
    /// alerts leave it out (see `DockerError::alert_text`).
    async fn run_hook_command(
        &self,
        c: &Container,
        label: &'static str,
        command: &String,
    ) -> Result<(), DockerError> {
        tracing::info!(container = %c.name, %label, %command, "running hook");
        let exec = self
            .client
            .create_exec(
                &c.id,
                CreateExecOptions {
                    cmd: Some(vec!["sh".to_string(), "-c".to_string(), command.clone()]),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        let mut output = String::new();
        if let StartExecResults::Attached {
            output: mut stream, ..
        } = self.client.start_exec(&exec.id, None).await?
        {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?.into_bytes();
                if output.len() < HOOK_OUTPUT_MAX {
                    output.push_str(&String::from_utf8_lossy(&chunk));
                }
            }
        }
        let exit_code = self
            .client
            .inspect_exec(&exec.id)
            .await?
            .exit_code
            .unwrap_or(-1);
        if exit_code != 0 {
            truncate_utf8(&mut output, HOOK_OUTPUT_MAX);
            return Err(DockerError::Hook {
                label,
                container: c.name.clone(),
                command: command.clone(),
                exit_code,
                output: output.trim().to_string(),
            });
        }
        Ok(())
    }

    /// The project label of the named volume, `Some(None)` for an unlabelled one, `None`
    /// when no volume has that name.
    pub async fn volume_owner(&self, name: &str) -> Result<Option<Option<String>>, DockerError> {
        match self.client.inspect_volume(name).await {
            Ok(v) => Ok(Some(v.labels.get(PROJECT_LABEL).cloned())),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The running containers that mount the named volume and are not of `app_id`, by
    /// name and compose project (`None`: not in a project).
    pub async fn other_users_of_volume(
        &self,
        name: &str,
        app_id: &str,
    ) -> Result<Vec<(String, Option<String>)>, DockerError> {
        let filters = HashMap::from([
            ("volume".to_string(), vec![name.to_string()]),
            ("status".to_string(), vec!["running".to_string()]),
        ]);
        let options = ListContainersOptionsBuilder::default()
            .filters(&filters)
            .build();
        let users = self.client.list_containers(Some(options)).await?;
        Ok(users
            .into_iter()
            .map(|c| {
                let project = c.labels.and_then(|mut l| l.remove(PROJECT_LABEL));
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .or(c.id)
                    .unwrap_or_default();
                (name, project)
            })
            .filter(|(_, project)| project.as_deref() != Some(app_id))
            .collect())
    }

    /// Docker's own data directory (`/var/lib/docker`), as seen from here; that default
    /// when the engine does not say. A restore refuses targets inside it other than a
    /// volume's own `_data`.
    pub async fn root_dir(&self) -> Result<String, DockerError> {
        let info = self.client.info().await?;
        Ok(self.resolve_on_host(info.docker_root_dir.as_deref().unwrap_or("/var/lib/docker")))
    }

    /// Creates a named volume for `app_id` (a restore into an app that lost it) and
    /// returns where its data lives on the host. It carries the project label, so the app
    /// owns it from then on (and `find_app` lists it).
    pub async fn create_volume(&self, name: &str, app_id: &str) -> Result<String, DockerError> {
        let request = bollard::models::VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(HashMap::from([(
                PROJECT_LABEL.to_string(),
                app_id.to_string(),
            )])),
            ..Default::default()
        };
        let volume = self.client.create_volume(request).await?;
        Ok(self.on_host(&volume.mountpoint))
    }

    /// Removes a named volume, without force: the engine refuses one still in use. A
    /// volume already gone is an error too; `DockerError::is_not_found` tells it.
    pub async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        self.client
            .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await?;
        Ok(())
    }

    /// What a restore waits on after starting a container. Fields the engine leaves out
    /// read as: not running, not restarting, exit code 0, no healthcheck, no restart.
    pub async fn state(&self, id: &str) -> Result<ContainerStatus, DockerError> {
        let info = self.client.inspect_container(id, None).await?;
        let state = info.state.unwrap_or_default();
        Ok(ContainerStatus {
            running: state.running.unwrap_or(false),
            restarting: state.restarting.unwrap_or(false),
            exit_code: state.exit_code.unwrap_or(0),
            health: state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty() && s != "none"),
            restart_count: info.restart_count.unwrap_or(0),
            started_at: state.started_at.unwrap_or_default(),
        })
    }
}

/// How [`Docker::start`] found a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// It was started now.
    Now,
    /// Docker said it runs already: started by someone else, or a stop still in flight.
    AlreadyRunning,
}

/// How a container stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited within its timeout, or was not running.
    Clean,
    /// It outlived its stop timeout and was killed. Told by exit code 137 (SIGKILL) of a
    /// container that was running when the stop was sent.
    Killed {
        /// The stop timeout it was given, in seconds.
        timeout: i64,
    },
}

/// Where a named volume's data can be read from the host.
enum VolumeSource {
    /// Its `Mountpoint` (`…/volumes/<name>/_data`), always there.
    Mountpoint,
    /// A `local` volume with `driver_opts` `type: none, o: bind, device: <path>`: the
    /// data lives at `device`; `_data` shows it only while a container runs.
    Device(String),
    /// Nothing persistent (tmpfs) or no mountpoint at all: skipped, with why.
    Nothing(String),
    /// Mounted by Docker from elsewhere (NFS, CIFS, a block device) only while used.
    Unreadable(String),
}

/// Reads a volume's driver and `driver_opts`. Only the `local` driver's options are
/// understood; a volume of another driver is read at its mountpoint when it has one.
fn volume_source(vol: &bollard::models::Volume) -> VolumeSource {
    let opt = |k: &str| vol.options.get(k).map(String::as_str).unwrap_or("");
    let (kind, o, device) = (opt("type"), opt("o"), opt("device"));
    if vol.driver == "local" && !(kind.is_empty() && device.is_empty()) {
        let bind = o.split(',').any(|f| f == "bind" || f == "rbind");
        return if bind && device.starts_with('/') {
            VolumeSource::Device(device.to_string())
        } else if kind == "tmpfs" {
            VolumeSource::Nothing("a tmpfs volume holds nothing that survives a stop".into())
        } else {
            VolumeSource::Unreadable(format!("`{device}` (driver_opts type `{kind}`)"))
        };
    }
    if vol.mountpoint.is_empty() {
        return VolumeSource::Nothing(format!("driver {} exposes no mountpoint", vol.driver));
    }
    VolumeSource::Mountpoint
}

/// Resolves the absolute `path` inside `root` (`root` + path, every symlink followed;
/// absolute targets start again at `root`, `..` never climbs above it). A component that
/// does not exist ends the resolution: the rest is appended as it is.
fn resolve_in_root(root: &Path, path: &Path) -> PathBuf {
    use std::collections::VecDeque;
    use std::path::Component;
    let mut todo: VecDeque<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut done = PathBuf::new(); // relative to root
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            done.pop();
            continue;
        }
        let candidate = done.join(&c);
        let target = match std::fs::symlink_metadata(root.join(&candidate)) {
            Ok(m) if m.file_type().is_symlink() && hops < MAX_LINKS => {
                std::fs::read_link(root.join(&candidate)).ok()
            }
            Ok(_) => None,
            Err(_) => {
                done.push(c);
                done.extend(todo);
                return root.join(done);
            }
        };
        match target {
            Some(t) => {
                hops += 1;
                if t.is_absolute() {
                    done = PathBuf::new();
                }
                for part in t.components().rev() {
                    match part {
                        Component::Normal(n) => todo.push_front(n.to_os_string()),
                        Component::ParentDir => todo.push_front("..".into()),
                        _ => {}
                    }
                }
            }
            None => done.push(c),
        }
    }
    root.join(done)
}

/// Cuts `s` to at most `max` bytes without splitting a character.
fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// A container's state as far as a restore cares.
#[derive(Debug, Clone)]
pub struct ContainerStatus {
    pub running: bool,
    /// Its restart policy is bringing it back after an exit.
    pub restarting: bool,
    /// Of its last exit; 0 while it runs or never ran.
    pub exit_code: i64,
    /// `starting`, `healthy` or `unhealthy`; `None` without a healthcheck.
    pub health: Option<String>,
    /// Restarts by its restart policy; a change while waiting means it exited meanwhile.
    pub restart_count: i64,
    /// The engine's timestamp of its current run, as given (RFC 3339); a change means it
    /// was started again.
    pub started_at: String,
}

/// Records that `key` (a volume name or a bind's host path) serves container path `dest`:
/// one entry per key, each destination once; an empty `dest` (a labelled volume no
/// container mounts) adds the key only.
fn add_use(list: &mut Vec<Uses>, key: &str, dest: String, exclude: &[String]) {
    let i = match list.iter().position(|u| u.key == key) {
        Some(i) => i,
        None => {
            list.push(Uses {
                key: key.to_string(),
                ..Uses::default()
            });
            list.len() - 1
        }
    };
    let uses = &mut list[i];
    if !dest.is_empty() && !uses.dests.contains(&dest) {
        uses.dests.push(dest);
    }
    for p in exclude {
        if !uses.exclude.contains(p) {
            uses.exclude.push(p.clone());
        }
    }
}

/// Keeps a mount's patterns within what a snapshot may record
/// ([`crate::model::check_mounts`]); what is dropped is a warning (more is archived, never
/// less).
fn bound_exclude(m: &mut Mount, warnings: &mut Vec<String>) {
    use crate::model::{MAX_EXCLUDE, MAX_EXCLUDE_LEN};
    let before = m.exclude.len();
    m.exclude.retain(|p| p.len() <= MAX_EXCLUDE_LEN);
    m.exclude.truncate(MAX_EXCLUDE);
    if m.exclude.len() < before {
        warnings.push(format!(
            "{} {}: {} {} pattern(s) ignored (at most {MAX_EXCLUDE}, each at most \
             {MAX_EXCLUDE_LEN} bytes)",
            m.kind,
            m.name,
            before - m.exclude.len(),
            crate::exclude::LABEL
        ));
    }
}

/// One volume or bind source, with what its containers say of it.
#[derive(Default)]
struct Uses {
    /// Volume name or host path.
    key: String,
    /// The container paths it serves.
    dests: Vec<String>,
    /// The union of the `appsnap.exclude` patterns of the containers mounting it: a path
    /// one of them asks to leave out is left out.
    exclude: Vec<String>,
}

/// The usable patterns of a container's `appsnap.exclude` label; an unusable one is left
/// out with a warning for the snapshot (everything is then archived: more data, never
/// less).
fn exclude_label(
    container: &str,
    labels: &HashMap<String, String>,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let Some(value) = labels.get(crate::exclude::LABEL) else {
        return Vec::new();
    };
    let mut patterns = Vec::new();
    for p in crate::exclude::split(value) {
        match crate::exclude::check(p) {
            Ok(()) => patterns.push(p.to_string()),
            Err(why) => warnings.push(format!(
                "container {container}: {} pattern {p:?} ignored: {why}",
                crate::exclude::LABEL
            )),
        }
    }
    patterns
}

/// Bind sources that are not app data: the Docker socket and kernel filesystems, and `/`.
fn excluded_bind(src: &str) -> Option<&'static str> {
    let p = Path::new(src);
    if p == Path::new("/") {
        return Some("the host's root is not app data");
    }
    if src.ends_with("docker.sock") {
        return Some("the Docker socket is not app data");
    }
    for sys in ["/proc", "/sys", "/dev", "/run/docker", "/var/run/docker"] {
        if p.starts_with(sys) {
            return Some("a kernel or runtime filesystem is not app data");
        }
    }
    None
}

/// A source inside another source is archived once, as part of the outer one (a compose
/// dir that holds its `./data` bind mount, say).
fn drop_nested(mut mounts: Vec<Mount>, skipped: &mut Vec<String>) -> Vec<Mount> {
    mounts.sort_by_key(|m| m.source.len());
    let mut kept: Vec<Mount> = Vec::new();
    for m in mounts {
        let Some(outer) = kept
            .iter_mut()
            .find(|k| Path::new(&m.source).starts_with(&k.source))
        else {
            kept.push(m);
            continue;
        };
        skipped.push(format!(
            "{} {}: included in {} {}",
            m.kind, m.name, outer.kind, outer.name
        ));
        // Its patterns apply below it inside the outer mount.
        let rel = Path::new(&m.source)
            .strip_prefix(&outer.source)
            .unwrap_or(Path::new(""))
            .to_string_lossy()
            .into_owned();
        outer
            .exclude
            .extend(crate::exclude::rebase(&m.exclude, &rel));
    }
    kept.sort_by(|a, b| a.archive_dir.cmp(&b.archive_dir));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str) -> Mount {
        Mount {
            kind: kind.into(),
            name: source.into(),
            source: source.into(),
            destination: String::new(),
            archive_dir: format!("{kind}/{}", escape_path(source)),
            exclude: Vec::new(),
        }
    }

    /// A snapshot records only what a restore accepts of it (`check_mounts`).
    #[test]
    fn a_mounts_patterns_are_bounded_with_a_warning() {
        let mut m = mount("volume", "/v");
        m.exclude = (0..250).map(|i| format!("p{i}")).collect();
        m.exclude.insert(0, "x".repeat(600));
        let mut warnings = Vec::new();
        bound_exclude(&mut m, &mut warnings);
        assert_eq!(m.exclude.len(), crate::model::MAX_EXCLUDE);
        assert_eq!(m.exclude[0], "p0");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("51 appsnap.exclude pattern(s) ignored"),
            "{warnings:?}"
        );
    }

    #[test]
    fn nested_sources_are_archived_once() {
        let mut skipped = Vec::new();
        let kept = drop_nested(
            vec![
                mount("bind", "/data/apps/wp/html"),
                mount("project", "/data/apps/wp"),
                mount("bind", "/data/apps/wpx"),
            ],
            &mut skipped,
        );
        let sources: Vec<_> = kept.iter().map(|m| m.source.as_str()).collect();
        assert_eq!(sources, ["/data/apps/wpx", "/data/apps/wp"]);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("included in project"));
    }

    #[test]
    fn mount_roots_are_resolved_like_the_kernel_does() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("mnt/disk2/db")).unwrap();
        std::fs::create_dir_all(r.join("srv/app")).unwrap();
        // absolute link (taken inside the root), relative link, link to a link
        std::os::unix::fs::symlink("/mnt/disk2/db", r.join("srv/app/data")).unwrap();
        std::os::unix::fs::symlink("../mnt/disk2", r.join("srv/disk")).unwrap();
        std::os::unix::fs::symlink("app/data", r.join("srv/again")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("srv/loop")).unwrap();
        let resolve = |p: &str| resolve_in_root(r, Path::new(p));
        assert_eq!(resolve("/srv/app/data"), r.join("mnt/disk2/db"));
        assert_eq!(resolve("/srv/disk/db"), r.join("mnt/disk2/db"));
        assert_eq!(resolve("/srv/again"), r.join("mnt/disk2/db"));
        assert_eq!(resolve("/srv/app/data/new/x"), r.join("mnt/disk2/db/new/x"));
        assert_eq!(resolve("/srv/../../srv/app"), r.join("srv/app"));
        // A loop ends after MAX_LINKS hops instead of spinning.
        assert_eq!(resolve("/srv/loop"), r.join("srv/loop"));
    }

    #[test]
    fn an_alert_names_the_hook_and_its_exit_code_not_its_command_or_output() {
        let e = DockerError::Hook {
            label: "appsnap.pre-backup",
            container: "db".into(),
            command: "mysqldump -pS3cret all".into(),
            exit_code: 2,
            output: "access denied for S3cret".into(),
        };
        let alert = e.alert_text();
        assert!(
            alert.contains("appsnap.pre-backup") && alert.contains("exited with 2"),
            "{alert}"
        );
        assert!(!alert.contains("S3cret"), "{alert}");
        assert!(e.to_string().contains("S3cret"), "the log keeps it");
    }

    #[test]
    fn hook_output_is_cut_on_a_character_boundary() {
        let mut s = "é".repeat(HOOK_OUTPUT_MAX); // 2 bytes each
        s.insert(0, 'x'); // every boundary is now odd
        truncate_utf8(&mut s, HOOK_OUTPUT_MAX);
        assert!(s.len() <= HOOK_OUTPUT_MAX && s.len() >= HOOK_OUTPUT_MAX - 1);
    }

    #[test]
    fn escaping_is_flat_and_reversible() {
        assert_eq!(escape_path("/srv/a%b/c"), "srv%2Fa%25b%2Fc");
        assert_ne!(escape_path("/a/b"), escape_path("/a%2Fb"));
    }

    #[test]
    fn socket_and_kernel_paths_are_not_data() {
        assert!(excluded_bind("/var/run/docker.sock").is_some());
        assert!(excluded_bind("/proc/1").is_some());
        assert!(excluded_bind("/").is_some());
        assert!(excluded_bind("/srv/data").is_none());
    }
}
