//! Shared helpers: real Docker apps (compose-labelled containers, named volumes, bind
//! mounts), a real appsnap (in-process router or the real binary), and manifests that
//! compare trees by every attribute appsnap promises to keep.

#![allow(dead_code)]

pub mod craft;
pub mod rest;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Once};

use appsnap::config::Config;
use appsnap::manager::BackupManager;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

pub const IMAGE: &str = "appsnap-test/busybox:1";

/// Backs `app_id` up in `mode` (`[apps.<id>] mode`).
pub fn set_mode(c: &mut Config, app_id: &str, mode: appsnap::config::BackupMode) {
    c.apps.insert(
        app_id.to_string(),
        appsnap::config::AppConfig {
            mode: Some(mode),
            ..Default::default()
        },
    );
}

/// Runs a command, panics with its output when it fails; returns stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Docker must be there: a missing engine is a failure with instructions, never a skip.
/// Fails loudly in a build without the fail points: the tests that stop or hold appsnap
/// at a named step need them (`scripts/test` builds with `--features appsnap/failpoints`).
pub fn require_failpoints() {
    if !cfg!(feature = "failpoints") {
        panic!(
            "this test needs the fail points: run `scripts/test` (it builds with \
             `--features appsnap/failpoints`)"
        );
    }
}

pub fn require_docker() {
    static CHECK: Once = Once::new();
    CHECK.call_once(|| {
        let ok = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "no Docker engine answers. Run the tests with `sudo scripts/test` (it installs \
             Debian's docker.io and busybox-static and starts dockerd), or start dockerd yourself"
        );
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the tests must run as root: appsnap reads /var/lib/docker/volumes"
        );
        if Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()
            .is_ok_and(|o| !o.status.success())
        {
            let root = tempfile::tempdir().unwrap();
            sh(&format!(
                "mkdir -p {r}/bin && cp /bin/busybox {r}/bin/ && ln -s busybox {r}/bin/sh && \
                 tar -C {r} -c . | docker import - {IMAGE}",
                r = root.path().display()
            ));
        }
    });
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// A compose-like app: containers labelled with the project, a labelled named volume, a
/// bind mount and a project working dir, removed on drop.
pub struct TestApp {
    pub id: String,
    pub volume: String,
    pub containers: Vec<String>,
    pub tmp: tempfile::TempDir,
}

impl TestApp {
    /// One container `web` mounting volume `<id>_data` at /data and `<tmp>/bind` at /bind,
    /// with the given extra `docker run` arguments (labels for hooks, …).
    pub fn new(extra: &str) -> TestApp {
        Self::new_running(extra, "")
    }

    /// An app whose container runs `first` (a shell line) at every start.
    pub fn new_running(extra: &str, first: &str) -> TestApp {
        require_docker();
        let id = unique("t_");
        let tmp = tempfile::tempdir().unwrap();
        let volume = format!("{id}_data");
        fs::create_dir_all(tmp.path().join("bind")).unwrap();
        fs::create_dir_all(tmp.path().join("project")).unwrap();
        fs::write(
            tmp.path().join("project/docker-compose.yml"),
            "services: {}\n",
        )
        .unwrap();
        fs::write(tmp.path().join("project/.env"), "SECRET=1\n").unwrap();
        sh(&format!(
            "docker volume create --label com.docker.compose.project={id} {volume}"
        ));
        let mut app = TestApp {
            id,
            volume,
            containers: Vec::new(),
            tmp,
        };
        app.add_container_running("web", extra, first);
        app
    }

    pub fn add_container(&mut self, name: &str, extra: &str) -> String {
        self.add_container_running(name, extra, "")
    }

    /// Like `add_container`, with a shell line run before the container idles (a check
    /// that makes it exit, say).
    pub fn add_container_running(&mut self, name: &str, extra: &str, first: &str) -> String {
        let cname = format!("{}_{name}", self.id);
        // `wait` lets sh act on SIGTERM at once, so stops take milliseconds.
        let id = sh(&format!(
            "docker run -d --name {cname} --network none \
             --label com.docker.compose.project={id} \
             --label com.docker.compose.project.working_dir={project} \
             -v {vol}:/data -v {bind}:/bind {extra} {IMAGE} \
             sh -c '{first} trap \"exit 0\" TERM; sleep 1000000 & wait'",
            id = self.id,
            project = self.project().display(),
            vol = self.volume,
            bind = self.bind().display(),
        ));
        self.containers.push(id.clone());
        id
    }

    pub fn bind(&self) -> PathBuf {
        self.tmp.path().join("bind")
    }

    /// The same app (project name) created afresh, as on a new server: its containers
    /// and volume removed and made again, its bind mount and project folder emptied.
    pub fn recreate(&mut self) {
        for c in std::mem::take(&mut self.containers) {
            sh(&format!("docker rm -f {c}"));
        }
        sh(&format!("docker volume rm -f {}", self.volume));
        for dir in [self.bind(), self.project()] {
            fs::remove_dir_all(&dir).unwrap();
            fs::create_dir_all(&dir).unwrap();
        }
        sh(&format!(
            "docker volume create --label com.docker.compose.project={} {}",
            self.id, self.volume
        ));
        self.add_container("web", "");
    }

    pub fn project(&self) -> PathBuf {
        self.tmp.path().join("project")
    }

    /// The volume's data on the host.
    pub fn volume_path(&self) -> PathBuf {
        PathBuf::from(sh(&format!(
            "docker volume inspect -f '{{{{.Mountpoint}}}}' {}",
            self.volume
        )))
    }

    pub fn started_at(&self, container: &str) -> String {
        sh(&format!(
            "docker inspect -f '{{{{.State.StartedAt}}}}' {container}"
        ))
    }

    pub fn running(&self, container: &str) -> bool {
        sh(&format!(
            "docker inspect -f '{{{{.State.Running}}}}' {container}"
        )) == "true"
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.volume])
            .output();
    }
}

/// What a restore interrupted in `phase` leaves behind, as a real one writes it: the app's
/// volume holds `now` in `state`, the data set aside holds "old", its container is
/// stopped, and a backup root holds the journal. Returns the root and the journal's path.
pub fn interrupted_restore(
    app: &TestApp,
    phase: &str,
    now: &str,
) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let data = app.volume_path();
    let aside = data.with_file_name("._data.appsnap-aside-0000abcd");
    fs::create_dir(&aside).unwrap();
    fs::write(aside.join("state"), "old").unwrap();
    fs::write(data.join("state"), now).unwrap();
    sh(&format!("docker stop -t 1 {}", app.containers[0]));
    let root = tempfile::tempdir().unwrap();
    fs::create_dir(root.path().join(".appsnap")).unwrap();
    let journal = serde_json::json!({
        "app_id": app.id, "snapshot_id": "snapshot_20260101T000000Z_0001", "phase": phase,
        "stopped": [app.containers[0]], "created_volumes": [],
        "mounts": [{"target": data, "aside": aside, "how": "renamed", "root": null}],
    });
    let journal_path = root
        .path()
        .join(format!(".appsnap/{}.restore.journal", app.id));
    fs::write(&journal_path, journal.to_string()).unwrap();
    (root, journal_path, aside)
}

/// The restore route for a snapshot (as the API answered it).
pub fn restore_uri(app: &str, snapshot: &serde_json::Value) -> String {
    format!(
        "/api/v1/backup/restore/{app}/{}",
        snapshot["snapshot_id"].as_str().unwrap()
    )
}

/// A config for tests: a private backup root, quick container stops.
pub fn test_config(root: &Path) -> Config {
    Config {
        backup_root: root.to_path_buf(),
        state_dir: std::env::temp_dir().join("appsnap-test-state"),
        stop_timeout_secs: 5,
        restore_settle_secs: 1,
        restore_timeout_secs: 30,
        ..Config::default()
    }
}

/// appsnap in-process: the real manager and router, driven with `oneshot`.
pub struct Harness {
    pub root: tempfile::TempDir,
    pub manager: Arc<BackupManager>,
    pub router: axum::Router,
}

impl Harness {
    pub async fn new() -> Harness {
        Self::with(|_| {}).await
    }

    pub async fn with(tune: impl FnOnce(&mut Config)) -> Harness {
        Self::in_root(tempfile::tempdir().unwrap(), tune).await
    }

    /// A harness where `app_id` is backed up in `live` mode (its containers keep running).
    pub async fn live(app_id: &str) -> Harness {
        Self::in_mode(app_id, appsnap::config::BackupMode::Live).await
    }

    /// A harness where `app_id` is backed up in `mode`.
    pub async fn in_mode(app_id: &str, mode: appsnap::config::BackupMode) -> Harness {
        Self::with(|c| set_mode(c, app_id, mode)).await
    }

    /// Opens appsnap on a backup root the test prepared (crash leftovers, say).
    pub async fn in_root(root: tempfile::TempDir, tune: impl FnOnce(&mut Config)) -> Harness {
        require_docker();
        // Uploaded policies compile in `appsnap compile-policy`; this process is the tests'.
        appsnap::policy::engine::set_compiler(env!("CARGO_BIN_EXE_appsnap").into());
        let mut config = test_config(root.path());
        tune(&mut config);
        let manager = BackupManager::open(config).await.expect("open manager");
        let router = appsnap::api::router(Arc::clone(&manager));
        Harness {
            root,
            manager,
            router,
        }
    }

    /// The service stopped and started again on the same backup root (an upgrade, a
    /// restart after a lost catalog). `tune` runs while it is down: it may change the new
    /// configuration, and the backup root as a person (or a crash) would.
    pub async fn reopen(self, tune: impl FnOnce(&mut Config)) -> Harness {
        let Harness {
            root,
            manager,
            router,
        } = self;
        drop((manager, router)); // releases the root's lock
        Harness::in_root(root, tune).await
    }

    /// POSTs an archive to the import route (`query` like `?app_id=x`, or empty).
    pub async fn import(&self, bytes: Vec<u8>, query: &str) -> (StatusCode, serde_json::Value) {
        let req = Request::post(format!("/api/v1/backup/snapshots/import{query}"))
            .body(Body::from(bytes))
            .unwrap();
        self.call_with(req).await
    }

    pub async fn call(&self, method: &str, uri: &str) -> (StatusCode, serde_json::Value) {
        self.call_with(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// A GET whose answer is bytes (a download): (status, body).
    pub async fn get_bytes(&self, uri: &str) -> (StatusCode, Vec<u8>) {
        let req = Request::get(uri).body(Body::empty()).unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, bytes.to_vec())
    }

    /// Pins or unpins snapshot `id` through the API (200 asserted).
    pub async fn pin(&self, id: &str, pinned: bool) {
        let uri = format!("/api/v1/backup/snapshots/{id}");
        let (status, body) =
            (self.call_json("PATCH", &uri, serde_json::json!({"pinned": pinned}))).await;
        assert_eq!(status, axum::http::StatusCode::OK, "{body}");
    }

    /// Copies snapshot `id` to `repository` through the API (202 asserted) and waits for
    /// the job to succeed; returns the ended job.
    pub async fn copy_to(&self, id: &str, repository: &str) -> serde_json::Value {
        let uri = format!("/api/v1/backup/snapshots/{id}/copy?repository={repository}");
        let (status, job) = self.call("POST", &uri).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        let done = job_done(self, job["job_id"].as_str().unwrap()).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        done
    }

    /// A request with a JSON body.
    pub async fn call_json(
        &self,
        method: &str,
        uri: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        self.call_with(
            Request::builder()
                .method(method)
                .uri(uri)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    pub async fn call_with(&self, req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into())
            })
        };
        (status, json)
    }

    /// POST a backup and insist on 200; returns the snapshot.
    pub async fn backup(&self, app: &str) -> serde_json::Value {
        let (status, body) = self.call("POST", &format!("/api/v1/backup/{app}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["snapshot"].clone()
    }

    /// Every file under the backup root (relative), to prove that nothing was touched.
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk_names(self.root.path(), self.root.path(), &mut out);
        out.retain(|p| !p.starts_with(".appsnap"));
        out
    }
}

fn walk_names(base: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push(p.strip_prefix(base).unwrap().to_string_lossy().into());
        if e.file_type().unwrap().is_dir() {
            walk_names(base, &p, out);
        }
    }
    out.sort();
}

/// The real binary, serving on a free loopback port. Killed on drop.
pub struct Service {
    pub child: Child,
    pub addr: String,
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
    /// Signalled by the reader thread at each line it adds to `log`.
    logged: Arc<std::sync::Condvar>,
    /// The thread copying stderr into `log`; joined to read a dead service's last words.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    pub fn start(root: &Path, env: &[(&str, &str)]) -> Service {
        require_docker();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_appsnap"));
        cmd.arg("serve")
            .env("APPSNAP_BACKUP_ROOT", root)
            .env("APPSNAP_LISTEN", "127.0.0.1:0")
            .env("APPSNAP_LOG", "info")
            .env_remove("APPSNAP_API_KEY")
            .env_remove("APPSNAP_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn appsnap");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = Arc::clone(&log);
        let logged = Arc::new(std::sync::Condvar::new());
        let logged2 = Arc::clone(&logged);
        // The service logs its bound address; read it instead of guessing a free port.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // `http://127.0.0.1:PORT`, or `unix:/path` for a Unix socket.
                // (In a JSON log the message is a quoted string.)
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let at: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    let _ = tx.send(at.trim_start_matches("http://").to_string());
                }
                log2.lock().unwrap().push(line);
                logged2.notify_all();
            }
        });
        let addr = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("appsnap did not start: {:?}", log.lock().unwrap()));
        Service {
            child,
            addr,
            log,
            logged,
            reader: Some(reader),
        }
    }

    /// Waits until the process has ended by itself; its exit status and its whole log.
    pub fn wait_exit(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        (status, self.log.lock().unwrap().clone())
    }

    /// kill -9, then its whole log.
    pub fn kill_and_log(mut self) -> Vec<String> {
        let _ = self.child.kill();
        self.wait_exit().1
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POST with no body; the answer's JSON.
    pub async fn post(&self, path: &str) -> serde_json::Value {
        reqwest::Client::new()
            .post(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// GET; the answer's JSON.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        reqwest::get(self.url(path))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// kill -9, and wait until the process is gone.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Blocks until a line of the log contains `needle` (each new line wakes it); fails
    /// the test after two minutes without one, with the log.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let mut log = self.log.lock().unwrap();
        while !log.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "no log line with `{needle}`: {:?}", *log);
            log = self.logged.wait_timeout(log, left).unwrap().0;
        }
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One path's attributes, as compared before/after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub link: Option<Vec<u8>>,
    pub sha256: Option<String>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Inode number of the first path of a hard-link group, as a path, so groups compare.
    pub link_group: Option<Vec<u8>>,
}

/// Every path under `dir` (relative, raw bytes) with everything appsnap keeps. Directory
/// mtimes are left out on request: extracting into a dir updates it.
pub fn manifest(dir: &Path, dir_mtimes: bool) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    manifest_walk(dir, dir, dir_mtimes, &mut out, &mut inodes);
    out
}

fn manifest_walk(
    base: &Path,
    path: &Path,
    dir_mtimes: bool,
    out: &mut BTreeMap<Vec<u8>, Entry>,
    inodes: &mut BTreeMap<u64, Vec<u8>>,
) {
    let meta = fs::symlink_metadata(path).unwrap();
    let rel = path
        .strip_prefix(base)
        .unwrap()
        .as_os_str()
        .as_bytes()
        .to_vec();
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    };
    let mut xattrs: Vec<_> = xattr::list(path)
        .map(|names| {
            names
                .filter_map(|n| Some((n.as_bytes().to_vec(), xattr::get(path, &n).ok()??)))
                .collect()
        })
        .unwrap_or_default();
    xattrs.sort();
    let link_group = (ft.is_file() && meta.nlink() > 1).then(|| {
        inodes
            .entry(meta.ino())
            .or_insert_with(|| rel.clone())
            .clone()
    });
    out.insert(
        rel,
        Entry {
            kind,
            mode: meta.permissions().mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: if ft.is_file() { meta.len() } else { 0 },
            mtime: if ft.is_dir() && !dir_mtimes {
                0
            } else {
                meta.mtime()
            },
            link: ft
                .is_symlink()
                .then(|| fs::read_link(path).unwrap().as_os_str().as_bytes().to_vec()),
            sha256: ft.is_file().then(|| {
                let mut h = Sha256::new();
                std::io::copy(&mut fs::File::open(path).unwrap(), &mut h).unwrap();
                format!("{:x}", h.finalize())
            }),
            xattrs,
            link_group,
        },
    );
    if ft.is_dir() {
        // In name order: a hard-link group is named by its first name met, which must
        // not depend on the order a filesystem lists a folder in (tmpfs: newest first).
        let mut children: Vec<_> = fs::read_dir(path)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        children.sort();
        for child in children {
            manifest_walk(base, &child, dir_mtimes, out, inodes);
        }
    }
}

/// Fills `dir` with one of every kind of file appsnap must keep: owners, modes with
/// setuid/setgid/sticky, old mtimes, symlinks (relative, absolute, dangling, to a dir),
/// hard links, a FIFO, an empty dir, xattrs, a long name, a non-UTF-8 name, and a 100 MiB
/// sparse file holding 5 bytes.
pub fn fill_every_kind(dir: &Path) {
    use std::os::unix::ffi::OsStrExt as _;
    let p = |s: &str| dir.join(s);
    fs::create_dir_all(p("sub/deeper")).unwrap();
    fs::create_dir_all(p("empty")).unwrap();
    fs::write(p("sub/hello.php"), "<?php echo 'hi';\n".repeat(1000)).unwrap();
    fs::write(
        p("random.bin"),
        (0..300_000)
            .map(|_| rand::random::<u8>())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    fs::write(p("owned"), "uid 1234\n").unwrap();
    nix::unistd::chown(&p("owned"), Some(1234.into()), Some(5678.into())).unwrap();
    fs::write(p("setuid"), "x").unwrap();
    fs::set_permissions(p("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(p("setgid-dir")).unwrap();
    nix::unistd::chown(&p("setgid-dir"), None, Some(33.into())).unwrap();
    fs::set_permissions(p("setgid-dir"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::create_dir(p("sticky")).unwrap();
    fs::set_permissions(p("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(p("private"), "secret").unwrap();
    fs::set_permissions(p("private"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("sub/hello.php", p("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", p("abs-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", p("dangling")).unwrap();
    std::os::unix::fs::symlink("sub", p("dir-link")).unwrap();
    fs::write(p("linked-a"), "same inode\n").unwrap();
    fs::hard_link(p("linked-a"), p("sub/linked-b")).unwrap();
    nix::unistd::mkfifo(&p("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    fs::write(p("with-xattr"), "x").unwrap();
    xattr::set(p("with-xattr"), "user.appsnap.test", b"value\0with nul").unwrap();
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(200));
    fs::create_dir_all(p(&long).parent().unwrap()).unwrap();
    fs::write(p(&long), "long name").unwrap();
    let non_utf8 = std::ffi::OsStr::from_bytes(b"caf\xe9-\xff.txt");
    fs::write(dir.join(non_utf8), "latin-1 name").unwrap();
    let sparse = fs::File::create(p("sparse.img")).unwrap();
    sparse.set_len(100 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_at(b"hello", 50 << 20).unwrap();
    drop(sparse);
    // Old, distinct mtimes (after the content is final).
    for (i, name) in ["sub/hello.php", "owned", "random.bin", "linked-a"]
        .iter()
        .enumerate()
    {
        let t = nix::sys::time::TimeSpec::new(1_500_000_000 + i as i64 * 1000, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &p(name),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

/// A real, tiny filesystem (tmpfs) mounted at `dir`; unmounted on drop.
pub struct SmallFs(pub PathBuf);

impl SmallFs {
    pub fn mount(dir: &Path, size: &str) -> SmallFs {
        fs::create_dir_all(dir).unwrap();
        sh(&format!(
            "mount -t tmpfs -o size={size} appsnap-test {}",
            dir.display()
        ));
        SmallFs(dir.to_path_buf())
    }
}

/// `dir` bind-mounted read-only onto itself: writes fail with EROFS, even for root.
pub struct ReadOnly(pub PathBuf);

impl ReadOnly {
    pub fn mount(dir: &Path) -> ReadOnly {
        let d = dir.display();
        sh(&format!(
            "mount --bind {d} {d} && mount -o remount,bind,ro {d}"
        ));
        ReadOnly(dir.to_path_buf())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Follows a job's SSE stream on a real service until `stop` says so; returns the last
/// event's JSON. Panics if the job finishes first.
pub async fn follow_until(
    svc: &Service,
    job_id: &str,
    stop: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    use futures_util::StreamExt;
    let resp = reqwest::get(svc.url(&format!("/api/v1/jobs/{job_id}/events")))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    loop {
        let chunk = stream.next().await.expect("stream open").unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let job: serde_json::Value = serde_json::from_str(data).unwrap();
            if stop(&job) {
                return job;
            }
            assert_eq!(
                job["state"], "running",
                "the job ended before the awaited moment: {job}"
            );
        }
    }
}

/// The operation journals left in the backup root `root` (`.appsnap/*.journal`): none
/// once an operation has ended, repaired or rolled back.
pub fn journals(root: &Path) -> Vec<PathBuf> {
    fs::read_dir(root.join(".appsnap"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".journal"))
        .collect()
}

/// Total bytes of the files under `dir` (0 when it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        dir_bytes(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Asserts that each mount of `snapshot`, as a restore outside appsnap gave it in
/// `restored` (the snapshot's folder), equals what GNU tar unpacks from the local
/// archive: every entry, owner, mode, time, link and xattr.
pub fn assert_same_as_the_archive(snapshot: &serde_json::Value, restored: &Path) {
    let unpacked = tempfile::tempdir().unwrap();
    sh(&format!(
        "tar --xattrs --xattrs-include='*' --numeric-owner -xpzf {} -C {}",
        snapshot["file_path"].as_str().unwrap(),
        unpacked.path().display()
    ));
    let mounts = snapshot["mounts"].as_array().unwrap();
    assert!(!mounts.is_empty(), "{snapshot}");
    for m in mounts {
        let dir = m["archive_dir"].as_str().unwrap();
        assert_eq!(
            manifest(&restored.join(dir), true),
            manifest(&unpacked.path().join(dir), true),
            "{dir} as restored outside appsnap"
        );
    }
}

/// A real S3 server (s3s-fs, installed by `scripts/test`) on a free loopback port, serving
/// each folder of its data dir as a bucket; killed on drop.
pub struct S3Server {
    pub port: u16,
    pub data: tempfile::TempDir,
    child: Option<std::process::Child>,
}

pub const S3_KEY: &str = "appsnaptestkey";
pub const S3_SECRET: &str = "appsnaptestsecret0123456789";

impl S3Server {
    /// Starts it with bucket `bucket` created.
    pub fn start(bucket: &str) -> S3Server {
        let data = tempfile::tempdir().unwrap();
        fs::create_dir(data.path().join(bucket)).unwrap();
        let port = rest::free_port();
        let mut server = S3Server {
            port,
            data,
            child: None,
        };
        server.restart();
        server
    }

    fn binary() -> PathBuf {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let installed = PathBuf::from(home).join(".cargo/bin/s3s-fs");
        assert!(
            installed.exists(),
            "s3s-fs is not installed: run scripts/test, or \
             `cargo install s3s-fs@0.14.1 --features binary --locked`"
        );
        installed
    }

    /// Kills the server (mid-transfer, if one runs).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on the same port and data; returns once it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = Command::new(Self::binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(self.data.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        rest::wait_listening(self.port, "s3s-fs", Some(&mut child));
        self.child = Some(child);
    }

    /// A `[[repositories]]` entry for this server.
    pub fn repository(
        &self,
        name: &str,
        bucket: &str,
        secret: &str,
    ) -> appsnap::offsite::RepositoryConfig {
        let options = [
            ("bucket", bucket.to_string()),
            ("root", "/appsnap".to_string()),
            ("endpoint", format!("http://127.0.0.1:{}", self.port)),
            ("region", "us-east-1".to_string()),
            ("access_key_id", S3_KEY.to_string()),
            ("secret_access_key", secret.to_string()),
            // The opendal default retries 5 times with backoff; appsnap retries the copy.
            ("retry", "1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        toml::from_str::<appsnap::offsite::RepositoryConfig>(&format!(
            "name = '{name}'\nrepository = 'opendal:s3'\npassword = 'correct horse battery'\n"
        ))
        .map(|mut r| {
            r.options = options;
            r
        })
        .unwrap()
    }

    /// Total bytes stored in the bucket's files.
    pub fn stored_bytes(&self, bucket: &str) -> u64 {
        dir_bytes(&self.data.path().join(bucket))
    }

    /// `restic` (Debian's) on this server's repository: (status ok, stdout).
    pub fn restic(&self, bucket: &str, args: &[&str]) -> (bool, Vec<u8>) {
        let out = Command::new("restic")
            .arg("-r")
            .arg(format!(
                "s3:http://127.0.0.1:{}/{bucket}/appsnap",
                self.port
            ))
            .args(args)
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env("RESTIC_PASSWORD", "correct horse battery")
            .env(
                "RESTIC_CACHE_DIR",
                std::env::temp_dir().join("appsnap-restic-cache"),
            )
            .output()
            .expect("restic is not installed: run scripts/test, or apt-get install restic");
        if !out.status.success() {
            eprintln!("restic {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        (out.status.success(), out.stdout)
    }
}

impl S3Server {
    /// Asserts that `restic check` finds the bucket's repository sound. It reads the
    /// bucket's files as a local repository (s3s-fs stores each object as a file under its
    /// key): restic's S3 listing does not descend into s3s-fs's nested prefixes, so over
    /// S3 it reports every pack as missing, even in a repository restic wrote itself.
    pub fn restic_check(&self, bucket: &str) {
        let out = Command::new("restic")
            .arg("-r")
            .arg(self.data.path().join(bucket).join("appsnap"))
            .args(["check", "--no-cache"])
            .env("RESTIC_PASSWORD", "correct horse battery")
            .output()
            .expect("restic is not installed: run scripts/test, or apt-get install restic");
        assert!(
            out.status.success(),
            "restic check of bucket {bucket}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `restic restore` of a copy (a tree) as the repository listing shows it, into a new
    /// folder; returns it and the snapshot's folder inside it.
    pub fn restic_restore(
        &self,
        bucket: &str,
        remote: &serde_json::Value,
    ) -> (tempfile::TempDir, PathBuf) {
        let target = tempfile::tempdir().unwrap();
        let path = remote["path"].as_str().unwrap();
        let (ok, _) = self.restic(
            bucket,
            &[
                "restore",
                remote["repository_snapshot"].as_str().unwrap(),
                "--target",
                target.path().to_str().unwrap(),
                "--include",
                path,
            ],
        );
        assert!(ok, "restic restore of {remote}");
        let folder = target.path().join(path.trim_start_matches('/'));
        (target, folder)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `job` says it waits for a heavy slot, and insists that it does (a job
/// that ended instead fails the test rather than hanging it).
pub async fn until_waiting_for_a_slot(job: &appsnap::jobs::Job) {
    let waiting = job
        .subscribe()
        .wait_for(|j| {
            j.step.starts_with("waiting for a free slot")
                || j.state != appsnap::jobs::JobState::Running
        })
        .await
        .unwrap()
        .clone();
    assert!(
        waiting.step.starts_with("waiting for a free slot"),
        "{waiting:?}"
    );
}

/// Polls a job (in-process) until it is no longer running; returns its JSON.
pub async fn job_done(h: &Harness, job_id: &str) -> serde_json::Value {
    let mut rx = h.manager.jobs.get(job_id).expect("job exists").subscribe();
    loop {
        let info = rx.borrow_and_update().clone();
        if info.state != appsnap::jobs::JobState::Running {
            return serde_json::to_value(info).unwrap();
        }
        rx.changed().await.expect("job channel open");
    }
}

/// `chattr +i` for the length of a test: nothing in the folder can be renamed or removed.
pub struct Immutable(pub PathBuf);

impl Immutable {
    pub fn set(dir: &Path) -> Immutable {
        sh(&format!("chattr +i {}", dir.display()));
        Immutable(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .args(["-i"])
            .arg(&self.0)
            .status();
    }
}

/// Runs `tests/browser/<script>` with `args` under Node, against Debian's Chromium, and
/// fails with its output unless it exits 0. Screenshots go to
/// `target/browser-screenshots/`. Fails loudly when Chromium or the Node packages are
/// missing (`scripts/test` installs both).
pub fn browser_test(script: &str, args: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium is missing: apt-get install --no-install-recommends chromium (scripts/test does)"
    );
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "the browser tests' packages are missing: npm ci --prefix tests/browser (scripts/test does)"
    );
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-screenshots");
    let out = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(&dir)
        .env("APPSNAP_SCREENSHOTS", &shots)
        .output()
        .expect("node runs (Node 20 comes with the machine; apt-get install nodejs)");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `[[repositories]]` entry named `offsite` for a repository on the local path `at`
/// (password `pw`), with `extra` TOML lines (`copy = 'manual'\n`, limits, …).
pub fn local_repository(at: &Path, extra: &str) -> appsnap::offsite::RepositoryConfig {
    toml::from_str(&format!(
        "name = 'offsite'\nrepository = '{}'\npassword = 'pw'\n{extra}",
        at.display()
    ))
    .expect("a local repository's config")
}
