//! A real restic REST server (rustic_server, installed by `scripts/test`) with two users,
//! and a stand-in for restic's `rest-server --append-only` in front of it.

use std::collections::BTreeSet;
use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The password of the REST user appsnap's server uses.
pub const REST_PASSWORD: &str = "rest-appsnap-Pw!";
/// The password of the REST user an admin machine uses.
pub const REST_ADMIN_PASSWORD: &str = "rest-admin-Pw!";
/// The repository password (what encrypts the data).
pub const REPO_PASSWORD: &str = "correct horse battery";

/// A loopback port nothing listens on now, and that no other test of this run was given.
///
/// The kernel may hand the same free port to two tests that ask at nearly the same time
/// (each drops its probe socket before its server binds). The second server then fails
/// to bind while the first one answers its readiness probe, and the test talks to another
/// test's server until that one goes away (seen in CI). So ports are handed out once.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Returns once `port` accepts connections (readiness, not a sleep): the first accepted
/// connection means the server serves. Panics if `child` (the server) exits first, or is
/// gone right after: then what answered is not the server this test started.
pub fn wait_listening(port: u16, what: &str, child: Option<&mut Child>) {
    let mut child = child;
    let exited = |child: &mut Option<&mut Child>| {
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("{what} exited ({status}) instead of listening on port {port}");
        }
    };
    for _ in 0..500 {
        exited(&mut child);
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            exited(&mut child);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{what} did not listen on port {port} within 10 s");
}

/// rustic_server on a free loopback port, serving repository `repo` to user `appsnap`
/// (with the access level given to `start`) and `admin` (`Modify`); killed on drop.
pub struct RestServer {
    pub port: u16,
    pub data: tempfile::TempDir,
    child: Child,
}

impl RestServer {
    /// `appsnap_access`: `Append` or `Modify` (rustic_server's ACL levels).
    pub fn start(appsnap_access: &str) -> RestServer {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let binary = PathBuf::from(home).join(".cargo/bin/rustic-server");
        assert!(
            binary.exists(),
            "rustic-server is not installed: run scripts/test, or \
             `cargo install rustic_server@0.4.4 --locked`"
        );
        let data = tempfile::tempdir().unwrap();
        let htpasswd = data.path().join(".htpasswd");
        for (user, password) in [("appsnap", REST_PASSWORD), ("admin", REST_ADMIN_PASSWORD)] {
            let out = Command::new(&binary)
                .args(["auth", "add", "-f"])
                .arg(&htpasswd)
                .args(["-u", user, "-p", password])
                .output()
                .unwrap();
            assert!(out.status.success(), "rustic-server auth add: {out:?}");
        }
        let acl = data.path().join("acl.toml");
        fs::write(
            &acl,
            format!("[repo]\nappsnap = \"{appsnap_access}\"\nadmin = \"Modify\"\n"),
        )
        .unwrap();
        let port = free_port();
        let mut child = Command::new(&binary)
            // rustic_server 0.4.4's `serve` shuts itself down after 3 s when `CI` is set
            // (its own test hook, src/commands/serve.rs); CI machines set it.
            .env_remove("CI")
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--path")
            .arg(data.path())
            .arg("--htpasswd-file")
            .arg(&htpasswd)
            .arg("--private-repos")
            .arg("--acl-path")
            .arg(&acl)
            .stdout(Stdio::null())
            .stderr(fs::File::create(data.path().join("server.log")).unwrap())
            .spawn()
            .expect("start rustic-server");
        wait_listening(port, "rustic-server", Some(&mut child));
        RestServer { port, data, child }
    }

    /// The repository's URL on this server (or, with `port`, through a proxy).
    pub fn url(port: u16) -> String {
        format!("http://127.0.0.1:{port}/repo")
    }

    /// A `[[repositories]]` entry named `name` for the repository at `url`, as REST user
    /// `user` with `password`.
    pub fn repository(
        name: &str,
        url: &str,
        user: &str,
        password: &str,
    ) -> appsnap::offsite::RepositoryConfig {
        let mut repo: appsnap::offsite::RepositoryConfig = toml::from_str(&format!(
            "name = '{name}'\nrepository = 'rest:{url}'\npassword = '{REPO_PASSWORD}'\n\
             keep_delete_secs = 0\n"
        ))
        .unwrap();
        repo.options = [
            ("rest_user", user.to_string()),
            ("rest_password", password.to_string()),
            // rustic's REST backend retries 5 times with backoff; appsnap retries the copy.
            ("retry", "1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        repo
    }

    /// Debian's `restic` on the repository over REST, as `user`: (status ok, stdout).
    pub fn restic(&self, user: &str, password: &str, args: &[&str]) -> (bool, Vec<u8>) {
        let out = Command::new("restic")
            .arg("-r")
            .arg(format!(
                "rest:http://{user}:{password}@127.0.0.1:{}/repo",
                self.port
            ))
            .args(args)
            .arg("--no-cache")
            .env("RESTIC_PASSWORD", REPO_PASSWORD)
            .output()
            .expect("restic is not installed: run scripts/test, or apt-get install restic");
        if !out.status.success() {
            eprintln!("restic {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            self.alive();
        }
        (out.status.success(), out.stdout)
    }

    /// Panics, with the server's own last words, if it has exited: a test then fails where
    /// the server died rather than at a later "connection refused".
    pub fn alive(&self) {
        let log = || fs::read_to_string(self.data.path().join("server.log")).unwrap_or_default();
        // `try_wait` needs `&mut`; /proc tells the same without reaping.
        let pid = self.child.id();
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let gone = state.is_empty() || state.split_whitespace().nth(2) == Some("Z");
        assert!(
            !gone,
            "rustic-server (port {}) has exited; its log:\n{}",
            self.port,
            log()
        );
    }

    /// Files under the repository's folder of kind `dir` (`snapshots`, `data`, …).
    pub fn files(&self, dir: &str) -> usize {
        fn walk(p: &std::path::Path) -> usize {
            fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| match e.file_type().unwrap().is_dir() {
                            true => walk(&e.path()),
                            false => 1,
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.data.path().join("repo").join(dir))
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// **A stand-in for restic's `rest-server --append-only`**, which is not installable here:
/// a proxy in front of a [`RestServer`] that passes every request through, except that it
/// answers 403 to a DELETE of anything but a lock, as rest-server does in that mode.
/// (rustic_server 0.4.4 lets an `Append` user delete, so it cannot play that part itself.)
pub struct RefusingProxy {
    pub port: u16,
    /// DELETEs it refused.
    pub refused: Arc<AtomicU64>,
}

impl RefusingProxy {
    pub fn start(upstream_port: u16) -> RefusingProxy {
        use axum::body::Body;
        use axum::extract::{Request, State};
        use axum::http::StatusCode;
        use axum::response::Response;

        #[derive(Clone)]
        struct Upstream {
            base: String,
            client: reqwest::Client,
            refused: Arc<AtomicU64>,
        }
        async fn forward(State(up): State<Upstream>, req: Request) -> Response {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            if req.method() == axum::http::Method::DELETE && !path.contains("/locks/") {
                up.refused.fetch_add(1, Ordering::Relaxed);
                return Response::builder()
                    .status(StatusCode::FORBIDDEN)
                    .body(Body::from("append-only"))
                    .unwrap();
            }
            let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
            let mut out = up.client.request(method, format!("{}{path}", up.base));
            for (name, value) in req.headers() {
                if name != axum::http::header::HOST {
                    out = out.header(name.as_str(), value.as_bytes());
                }
            }
            let body = axum::body::to_bytes(req.into_body(), usize::MAX)
                .await
                .unwrap();
            let answer = match out.body(body).send().await {
                Ok(a) => a,
                Err(_) => {
                    return Response::builder()
                        .status(StatusCode::BAD_GATEWAY)
                        .body(Body::empty())
                        .unwrap();
                }
            };
            let mut response = Response::builder().status(answer.status().as_u16());
            for (name, value) in answer.headers() {
                response = response.header(name.as_str(), value.as_bytes());
            }
            response
                .body(Body::from(answer.bytes().await.unwrap_or_default()))
                .unwrap()
        }

        let refused = Arc::new(AtomicU64::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Upstream {
            base: format!("http://127.0.0.1:{upstream_port}"),
            client: reqwest::Client::new(),
            refused: Arc::clone(&refused),
        };
        // Its own thread and runtime: the test's runtime may be single-threaded and busy.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(forward).with_state(state);
                axum::serve(listener, app).await.unwrap();
            });
        });
        wait_listening(port, "the refusing proxy", None);
        RefusingProxy { port, refused }
    }
}
