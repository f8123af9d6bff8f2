//! `--offsite`: the offsite copy against `restic backup --stdin`, both into a real S3
//! server (s3s-fs, as the tests use) on loopback, in the same run.
//!
//! appsnap's side is what a copy job does: inflate the local `.tar.gz` in parallel
//! (`archive::read::open_tar_stream`) and hand the tar stream to `offsite::copy`. restic's
//! side gets the same tar stream the way a user would script it:
//! `pigz -dc archive | restic backup --stdin`. Each run copies the original archive, then
//! one of the same tree with 5 % of its bytes rewritten, into a fresh bucket per tool;
//! the tools alternate which goes first, and each figure is the median of the runs.
//! Bytes uploaded are measured on the server's disk (the bucket's growth), not taken from
//! either tool's report.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};

use appsnap::archive::index::{self, Index};

use crate::{generate, human, sh};

/// Indexes `archive` as the backup would have, beside it.
fn write_index(archive: &Path) -> Index {
    let index = index::build(archive, "bench", u64::MAX).unwrap();
    index.save(&index::path_for(archive)).unwrap();
    index
}

/// Browses the copy `id` in `bucket` the way `GET …/files/content?repository=` does:
/// opens it (the repository's index, the copy's entry index), then reads `path` whole.
/// Returns the bytes downloaded by the opening and by the file's read.
fn browse_copy(server: &Server, bucket: &str, id: &str, path: &[u8]) -> (u64, u64) {
    let cfg = server.repository(bucket);
    let remote = appsnap::offsite::list(&cfg, None)
        .unwrap()
        .into_iter()
        .find(|r| r.snapshot_id == id)
        .expect("the copy is listed");
    let (copy, index) = appsnap::offsite::browse::open_copy(&cfg, &remote).unwrap();
    let index = Index::from_file(&index.expect("the copy carries its index")).unwrap();
    let opened = copy.downloaded();
    let copy = Arc::new(copy);
    let entry = index.get(path).unwrap().expect("indexed");
    let mut content = index::open_file(&copy, entry).unwrap();
    let n = std::io::copy(&mut content, &mut std::io::sink()).unwrap();
    assert_eq!(n, entry.size);
    (opened, copy.downloaded() - opened)
}

const KEY: &str = "benchkey";
const SECRET: &str = "benchsecret0123456789";
const PASSWORD: &str = "bench password";

struct Server {
    port: u16,
    data: PathBuf,
    child: Child,
}

impl Server {
    fn start(data: PathBuf) -> Server {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let bin = PathBuf::from(home).join(".cargo/bin/s3s-fs");
        assert!(
            bin.exists(),
            "s3s-fs is missing: cargo install s3s-fs@0.14.1 --features binary --locked"
        );
        fs::create_dir_all(&data).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Owned at once, so that a panic below still kills and reaps it.
        let server = Server { port, data, child };
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("s3s-fs did not listen");
    }

    fn bucket(&self, name: &str) -> PathBuf {
        let b = self.data.join(name);
        let _ = fs::remove_dir_all(&b);
        fs::create_dir_all(&b).unwrap();
        b
    }

    fn repository(&self, bucket: &str) -> appsnap::offsite::RepositoryConfig {
        serde_json::from_value(serde_json::json!({
            "name": "bench",
            "repository": "opendal:s3",
            "password": PASSWORD,
        }))
        .map(|mut r: appsnap::offsite::RepositoryConfig| {
            r.options = [
                ("bucket", bucket.to_string()),
                ("root", "/appsnap".into()),
                ("endpoint", format!("http://127.0.0.1:{}", self.port)),
                ("region", "us-east-1".into()),
                ("access_key_id", KEY.into()),
                ("secret_access_key", SECRET.into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            r
        })
        .unwrap()
    }

    fn restic(&self, bucket: &str, args: &str) -> String {
        format!(
            "AWS_ACCESS_KEY_ID={KEY} AWS_SECRET_ACCESS_KEY={SECRET} RESTIC_PASSWORD='{PASSWORD}' \
             restic --no-cache -q -r s3:http://127.0.0.1:{}/{bucket}/appsnap {args}",
            self.port
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dir_bytes(p: &Path) -> u64 {
    fs::read_dir(p)
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

/// An appsnap archive of `data` (what a backup writes), with its tar stream's summary.
fn pack(data: &Path, out: &Path) -> appsnap::archive::Summary {
    let sources = [appsnap::archive::Source {
        archive_dir: "volumes/data".into(),
        path: data.to_path_buf(),
        exclude: Vec::new(),
    }];
    let opts = appsnap::archive::Options {
        level: 3,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        ..Default::default()
    };
    let file = fs::File::create(out).unwrap();
    let (summary, file) = appsnap::archive::write(file, b"{}", &sources, &opts, &|_| {}).unwrap();
    file.sync_all().unwrap();
    summary
}

/// Rewrites whole files, picked at random, until `fraction` of the tree's bytes changed.
fn mutate(data: &Path, fraction: f64) -> u64 {
    let mut files = Vec::new();
    let mut stack = vec![data.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && m.len() > 0 && m.len() < 64 << 20 {
                files.push((e.path(), m.len()));
            }
        }
    }
    files.sort();
    let total: u64 = files.iter().map(|f| f.1).sum();
    let goal = (total as f64 * fraction) as u64;
    let mut rng = StdRng::seed_from_u64(5);
    let mut changed = 0;
    while changed < goal && !files.is_empty() {
        let (path, len) = files.swap_remove(rng.random_range(0..files.len()));
        let mut bytes = vec![0u8; len as usize];
        rng.fill_bytes(&mut bytes);
        fs::write(&path, bytes).unwrap();
        changed += len;
    }
    changed
}

struct Copy {
    secs: f64,
    uploaded: u64,
}

fn appsnap_copy(
    server: &Server,
    bucket: &str,
    archive: &Path,
    summary: &appsnap::archive::Summary,
    id: &str,
) -> Copy {
    let index = fs::read(index::path_for(archive)).expect("indexed before the runs");
    let cfg = server.repository(bucket);
    let before = dir_bytes(&server.data.join(bucket));
    let description = appsnap::offsite::Description {
        appsnap: 1,
        app_id: "bench".into(),
        snapshot_id: id.into(),
        created_at: chrono::Utc::now(),
        tar_sha256: summary
            .tar_sha256
            .clone()
            .expect("a plain archive's tar stream is hashed"),
        tar_bytes: summary.tar_bytes,
        entries: Some(summary.entries),
        mounts: Vec::new(),
        origin: appsnap::catalog::Origin::Manual,
        note: None,
        root_id: None,
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let start = Instant::now();
    let tar = appsnap::archive::read::open_tar_stream(archive, threads).unwrap();
    let progress = Arc::new(appsnap::offsite::Progress::default());
    appsnap::offsite::copy(&cfg, &description, Some(index), tar, &progress, None, false).unwrap();
    Copy {
        secs: start.elapsed().as_secs_f64(),
        uploaded: dir_bytes(&server.data.join(bucket)) - before,
    }
}

fn restic_copy(server: &Server, bucket: &str, archive: &Path, id: &str) -> Copy {
    let before = dir_bytes(&server.data.join(bucket));
    let start = Instant::now();
    sh(&format!(
        "pigz -dc {} | {}",
        archive.display(),
        server.restic(
            bucket,
            &format!("backup --stdin --stdin-filename bench/{id}.tar --tag appsnap")
        )
    ));
    Copy {
        secs: start.elapsed().as_secs_f64(),
        uploaded: dir_bytes(&server.data.join(bucket)) - before,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn run(dir: &Path, size: u64, runs: usize) {
    crate::require(&["restic", "pigz"], "apt-get install restic pigz");
    let _ = fs::remove_dir_all(dir);
    let data = dir.join("data");
    let input = generate(&data, size);
    let first = dir.join("first.tar.gz");
    let second = dir.join("second.tar.gz");
    let s1 = pack(&data, &first);
    let changed = mutate(&data, 0.05);
    let s2 = pack(&data, &second);
    let _ = fs::remove_dir_all(&data);
    write_index(&first);
    let index = write_index(&second);
    let small = crate::browse::small_file_half_way(&index).to_owned();
    let mut browsed = Vec::new();
    println!(
        "offsite copy of {} of data (tar stream {}; second: {} rewritten), {runs} runs, \
         s3s-fs on loopback:",
        human(input),
        human(s1.tar_bytes),
        human(changed)
    );
    let server = Server::start(dir.join("s3"));
    // Per tool: (first secs, first bytes, second secs, second bytes) of each run.
    let mut results: [Vec<[f64; 4]>; 2] = [Vec::new(), Vec::new()];
    crate::alternating(runs, |run, tool| {
        let bucket = format!("b{run}-{tool}");
        server.bucket(&bucket);
        sh(&format!(
            "cat {} {} > /dev/null",
            first.display(),
            second.display()
        ));
        sh("sync");
        let (a, b) = if tool == 0 {
            (
                appsnap_copy(&server, &bucket, &first, &s1, "snapshot_1"),
                appsnap_copy(&server, &bucket, &second, &s2, "snapshot_2"),
            )
        } else {
            // Not timed, while appsnap's first copy creates its repository (a few KB
            // and a key derivation) inside its time.
            sh(&server.restic(&bucket, "init"));
            (
                restic_copy(&server, &bucket, &first, "snapshot_1"),
                restic_copy(&server, &bucket, &second, "snapshot_2"),
            )
        };
        eprintln!(
            "  run {run} {}: first {:.2}s {}, second {:.2}s {}",
            ["appsnap", "restic"][tool],
            a.secs,
            human(a.uploaded),
            b.secs,
            human(b.uploaded)
        );
        results[tool].push([a.secs, a.uploaded as f64, b.secs, b.uploaded as f64]);
        if tool == 0 {
            browsed.push(browse_copy(&server, &bucket, "snapshot_2", &small.path));
        }
        let _ = fs::remove_dir_all(server.data.join(&bucket));
    });
    let m = |tool: usize, i: usize| median(results[tool].iter().map(|r| r[i]).collect());
    println!(
        "{:<34} {:>9} {:>9} {:>12} {:>14} {:>12}",
        "copy", "seconds", "MB/s", "uploaded", "x restic MB/s", "bytes/restic"
    );
    for (label, i, tar) in [
        ("first copy", 0, s1.tar_bytes),
        ("second copy (5 % changed)", 2, s2.tar_bytes),
    ] {
        for tool in 0..2 {
            let (secs, bytes) = (m(tool, i), m(tool, i + 1));
            println!(
                "{:<34} {:>9.2} {:>9.1} {:>12} {:>14.2} {:>12.3}",
                format!("{} {label}", ["appsnap", "restic --stdin"][tool]),
                secs,
                tar as f64 / secs / 1e6,
                human(bytes as u64),
                m(1, i) / secs,
                bytes / m(1, i + 1),
            );
        }
    }
    let (opened, read) = (
        median(browsed.iter().map(|b| b.0 as f64).collect()),
        median(browsed.iter().map(|b| b.1 as f64).collect()),
    );
    println!(
        "browsing the second copy ({} entries; entry index {}): opening it downloads {} \
         (the repository's index, the entry index), one {} file half-way through {} more; \
         {} in all (goal < 4 MiB; the copy's tar stream is {})",
        index.len(),
        human(fs::metadata(index::path_for(&second)).unwrap().len()),
        human(opened as u64),
        human(small.size),
        human(read as u64),
        human((opened + read) as u64),
        human(s2.tar_bytes)
    );
    drop(server);
    if std::env::var_os("APPSNAP_BENCH_KEEP").is_none() {
        let _ = fs::remove_dir_all(dir);
    }
}
