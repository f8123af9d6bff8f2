//! Docker, as appsnap sees it: an **app** is a compose project, i.e. the containers whose
//! label `com.docker.compose.project` equals the app id, running or not. Its **data** is
//! every volume and bind mount of those containers, the named volumes carrying the same
//! label, and the project's working dir (where Websoft9 keeps the compose file and `.env`).
//!
//! Data is read from the host's filesystem (`host_root` + the volume's `Mountpoint` or the
//! bind source), never through helper containers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListVolumesOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::archive::Source;

pub const PROJECT_LABEL: &str = "com.docker.compose.project";
pub const WORKING_DIR_LABEL: &str = "com.docker.compose.project.working_dir";
pub const PRE_BACKUP_LABEL: &str = "appsnap.pre-backup";
pub const POST_BACKUP_LABEL: &str = "appsnap.post-backup";
/// Hook output kept for the error message.
const HOOK_OUTPUT_MAX: usize = 4096;

/// Errors of talking to Docker.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No container carries the compose project label of this app.
    #[error("no container belongs to compose project `{0}`")]
    AppNotFound(String),
    /// The Docker engine could not be reached or refused a call.
    #[error("Docker engine: {0}")]
    Engine(#[from] bollard::errors::Error),
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
    pub id: String,
    pub name: String,
    pub running: bool,
    pub labels: HashMap<String, String>,
}

/// One piece of an app's data, as recorded in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Mount {
    /// `volume`, `bind` or `project` (the compose working dir).
    #[serde(rename = "type")]
    pub kind: String,
    /// Volume name, or the host path of a bind mount / project dir.
    pub name: String,
    /// Host path the data was read from.
    pub source: String,
    /// Where containers see it (comma-separated when several); empty for the project dir
    /// or a volume no container mounts.
    pub destination: String,
    /// Folder of this mount inside the archive.
    pub archive_dir: String,
}

/// An app and where its data lives.
#[derive(Debug, Clone)]
pub struct App {
    pub id: String,
    pub containers: Vec<Container>,
    pub mounts: Vec<Mount>,
    /// Mount sources left out, with why (nested in another source, a socket, /proc …).
    pub skipped: Vec<String>,
}

impl App {
    pub fn sources(&self) -> Vec<Source> {
        self.mounts
            .iter()
            .map(|m| Source {
                archive_dir: m.archive_dir.clone(),
                path: PathBuf::from(&m.source),
            })
            .collect()
    }

    pub fn running(&self) -> Vec<&Container> {
        self.containers.iter().filter(|c| c.running).collect()
    }
}

#[derive(Clone)]
pub struct Docker {
    client: bollard::Docker,
    host_root: PathBuf,
}

impl Docker {
    /// Connects through `DOCKER_HOST` or the local socket.
    pub fn connect(host_root: &Path) -> Result<Docker, DockerError> {
        Ok(Docker {
            client: bollard::Docker::connect_with_local_defaults()?,
            host_root: host_root.to_path_buf(),
        })
    }

    pub async fn ping(&self) -> Result<(), DockerError> {
        self.client.ping().await?;
        Ok(())
    }

    /// Finds an app and its data. [`DockerError::AppNotFound`] when no container has the
    /// project label (a project with only volumes left is not an app any more).
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
        let mut binds: Vec<(String, Vec<String>)> = Vec::new();
        let mut volumes: Vec<(String, Vec<String>)> = Vec::new();
        let mut working_dir = None;
        for s in &summaries {
            let labels = s.labels.clone().unwrap_or_default();
            if working_dir.is_none() {
                working_dir = labels.get(WORKING_DIR_LABEL).cloned();
            }
            containers.push(Container {
                id: s.id.clone().unwrap_or_default(),
                name: s
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
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
                            add_use(&mut volumes, name, dest);
                        }
                    }
                    Some("bind") => {
                        if let Some(src) = &m.source {
                            add_use(&mut binds, src, dest);
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
            add_use(&mut volumes, &v.name, String::new());
        }

        let mut mounts = Vec::new();
        let mut skipped = Vec::new();
        for (name, dests) in volumes {
            let vol = self.client.inspect_volume(&name).await?;
            if vol.mountpoint.is_empty() {
                skipped.push(format!(
                    "volume {name}: driver {} exposes no mountpoint",
                    vol.driver
                ));
                continue;
            }
            mounts.push(Mount {
                kind: "volume".into(),
                archive_dir: format!("volumes/{name}"),
                source: self.on_host(&vol.mountpoint),
                destination: dests.join(","),
                name,
            });
        }
        for (src, dests) in binds {
            if let Some(why) = excluded_bind(&src) {
                skipped.push(format!("bind {src}: {why}"));
                continue;
            }
            mounts.push(Mount {
                kind: "bind".into(),
                archive_dir: format!("binds/{}", escape_path(&src)),
                source: self.on_host(&src),
                destination: dests.join(","),
                name: src,
            });
        }
        if let Some(dir) = working_dir
            && Path::new(&self.on_host(&dir)).is_dir()
        {
            mounts.push(Mount {
                kind: "project".into(),
                archive_dir: "project".into(),
                source: self.on_host(&dir),
                destination: String::new(),
                name: dir,
            });
        }
        let mounts = drop_nested(mounts, &mut skipped);
        Ok(App {
            id: app_id.to_string(),
            containers,
            mounts,
            skipped,
        })
    }

    /// `host_root` + an absolute host path.
    pub fn on_host(&self, path: &str) -> String {
        self.host_root
            .join(path.trim_start_matches('/'))
            .to_string_lossy()
            .into_owned()
    }

    pub async fn stop(&self, id: &str, timeout_secs: u32) -> Result<(), DockerError> {
        let opts = StopContainerOptionsBuilder::default()
            .t(timeout_secs as i32)
            .build();
        self.client.stop_container(id, Some(opts)).await?;
        Ok(())
    }

    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        match self
            .client
            .start_container(id, None::<StartContainerOptions>)
            .await
        {
            // 304: already running, which is what we want.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            other => Ok(other?),
        }
    }

    /// Runs the command of `label` (if the container has it) with `sh -c` inside the
    /// container and fails with its output when it exits non-zero.
    pub async fn run_hook(&self, c: &Container, label: &'static str) -> Result<(), DockerError> {
        let Some(command) = c.labels.get(label) else {
            return Ok(());
        };
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
                if output.len() < HOOK_OUTPUT_MAX {
                    output.push_str(&String::from_utf8_lossy(&chunk?.into_bytes()));
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
            output.truncate(HOOK_OUTPUT_MAX);
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

    /// Creates a named volume for `app_id` (a restore into an app that lost it) and
    /// returns where its data lives on the host.
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

    pub async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        self.client
            .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await?;
        Ok(())
    }

    /// What a restore waits on after starting a container.
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

/// A container's state as far as a restore cares.
#[derive(Debug, Clone)]
pub struct ContainerStatus {
    pub running: bool,
    pub restarting: bool,
    pub exit_code: i64,
    /// `starting`, `healthy` or `unhealthy`; `None` without a healthcheck.
    pub health: Option<String>,
    pub restart_count: i64,
    pub started_at: String,
}

fn add_use(list: &mut Vec<(String, Vec<String>)>, key: &str, dest: String) {
    match list.iter_mut().find(|(k, _)| k == key) {
        Some((_, dests)) => {
            if !dest.is_empty() && !dests.contains(&dest) {
                dests.push(dest);
            }
        }
        None => list.push((
            key.to_string(),
            [dest].into_iter().filter(|d| !d.is_empty()).collect(),
        )),
    }
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
        match kept
            .iter()
            .find(|k| Path::new(&m.source).starts_with(&k.source))
        {
            Some(outer) => skipped.push(format!(
                "{} {}: included in {} {}",
                m.kind, m.name, outer.kind, outer.name
            )),
            None => kept.push(m),
        }
    }
    kept.sort_by(|a, b| a.archive_dir.cmp(&b.archive_dir));
    kept
}

/// A host path as one archive folder name: `/srv/app/data` → `srv%2Fapp%2Fdata`.
/// Reversible (`%` is escaped too) and free of `/`.
pub fn escape_path(path: &str) -> String {
    path.trim_start_matches('/')
        .replace('%', "%25")
        .replace('/', "%2F")
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
        }
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
