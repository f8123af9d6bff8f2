//! `--offsite`: the offsite copy against `restic backup` of the same files, both into a
//! real S3 server (s3s-fs, as the tests use) on loopback, in the same run.
//!
//! appsnap's side is what a copy job does: plan the tree from the entry index, check the
//! archive's sha256, and hand the archive's entries to `offsite::copy` as a tree. restic's
//! side is what a user of restic would run: `restic backup DIR` on the very tree the
//! archive holds. Each run copies the original tree, then one with 1 % of its bytes
//! rewritten (one bucket per tool), and again the original then one with 5 % rewritten
//! (another bucket); the tools alternate which goes first, and each figure is the median
//! of the runs. Bytes uploaded are measured on the server's disk (the bucket's growth),
//! not taken from either tool's report.

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
    mutate_seeded(data, fraction, 5)
}

/// [`mutate`] with its own choice of files and bytes (one seed per day of a history).
fn mutate_seeded(data: &Path, fraction: f64, seed: u64) -> u64 {
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
    let mut rng = StdRng::seed_from_u64(seed);
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
    /// Peak RSS of this process during an appsnap copy (0 for restic's).
    rss: u64,
    /// CPU seconds (user + system) the copy took: this process's for appsnap, the
    /// children's for restic (s3s-fs, started earlier, is in neither).
    cpu: f64,
}

/// CPU seconds so far: (this process, its children waited for), from `/proc/self/stat`.
fn cpu_seconds() -> (f64, f64) {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command's closing parenthesis; utime is field 14 of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<f64> = rest
        .split(' ')
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap())
        .collect();
    let tick = 100.0; // USER_HZ on Linux
    ((f[0] + f[1]) / tick, (f[2] + f[3]) / tick)
}

/// What a copy job does with `archive` (a backup's, indexed beside it): plan the tree from
/// the entry index, check the archive's sha256, copy the tree as snapshot `id`.
fn copy_tree(
    cfg: &appsnap::offsite::RepositoryConfig,
    archive: &Path,
    summary: &appsnap::archive::Summary,
    id: &str,
) -> appsnap::offsite::Copied {
    let index_file = fs::read(index::path_for(archive)).expect("indexed before the copy");
    let index = Arc::new(Index::from_file(&index_file).unwrap());
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
        format: appsnap::offsite::Format::Tree,
        pinned: false,
    };
    let plan = appsnap::offsite::tree::plan(&index, summary.tar_bytes)
        .unwrap()
        .expect("the writer's archives are trees");
    appsnap::archive::check_sha256(archive, &summary.sha256).unwrap();
    let input = appsnap::offsite::Input::Tree {
        local: Arc::new(index::Local {
            archive: archive.to_path_buf(),
            index,
        }),
        plan,
        scratch: archive.parent().unwrap().to_path_buf(),
    };
    let progress = Arc::new(appsnap::offsite::Progress::default());
    let copied = appsnap::offsite::copy(
        cfg,
        &description,
        Some(index_file),
        input,
        &progress,
        None,
        false,
    )
    .unwrap();
    assert_eq!(copied.format, appsnap::offsite::Format::Tree);
    copied
}

fn appsnap_copy(
    server: &Server,
    bucket: &str,
    archive: &Path,
    summary: &appsnap::archive::Summary,
    id: &str,
) -> Copy {
    let cfg = server.repository(bucket);
    let before = dir_bytes(&server.data.join(bucket));
    crate::api::reset_peak();
    let (cpu, start) = (cpu_seconds().0, Instant::now());
    copy_tree(&cfg, archive, summary, id);
    Copy {
        secs: start.elapsed().as_secs_f64(),
        uploaded: dir_bytes(&server.data.join(bucket)) - before,
        rss: crate::api::peak_rss(),
        cpu: cpu_seconds().0 - cpu,
    }
}

fn restic_copy(server: &Server, bucket: &str, tree: &Path) -> Copy {
    let before = dir_bytes(&server.data.join(bucket));
    let (cpu, start) = (cpu_seconds().1, Instant::now());
    sh(&format!(
        "cd {} && {}",
        tree.display(),
        server.restic(bucket, "backup --tag appsnap --host bench .")
    ));
    Copy {
        secs: start.elapsed().as_secs_f64(),
        uploaded: dir_bytes(&server.data.join(bucket)) - before,
        rss: 0,
        cpu: cpu_seconds().1 - cpu,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn run(dir: &Path, size: u64, runs: usize) {
    crate::require(&["restic"], "apt-get install restic");
    let _ = fs::remove_dir_all(dir);
    // Three trees: the original, and two with 1 % and 5 % of their bytes rewritten; each
    // kept as files (restic's input) and archived (appsnap's).
    let base = dir.join("base");
    let input = generate(&base, size);
    let mut trees = Vec::new();
    for (name, fraction) in [("base", 0.0), ("one", 0.01), ("five", 0.05)] {
        let tree = dir.join(name);
        if fraction > 0.0 {
            sh(&format!("cp -a {} {}", base.display(), tree.display()));
        }
        let changed = mutate(&tree, fraction);
        let archive = dir.join(format!("{name}.tar.gz"));
        let summary = pack(&tree, &archive);
        write_index(&archive);
        trees.push((tree, archive, summary, changed));
    }
    let index = Index::load(&index::path_for(&trees[2].1)).unwrap();
    let small = crate::browse::small_file_half_way(&index).to_owned();
    let mut browsed = Vec::new();
    println!(
        "offsite copy of {} of data (tar stream {}; {} and {} rewritten), {runs} runs, \
         s3s-fs on loopback, appsnap's tree against restic backup of the same files:",
        human(input),
        human(trees[0].2.tar_bytes),
        human(trees[1].3),
        human(trees[2].3),
    );
    let server = Server::start(dir.join("s3"));
    // Per tool: (first secs, first bytes, 1 % secs, 1 % bytes, 5 % secs, 5 % bytes).
    let mut results: [Vec<[f64; 6]>; 2] = [Vec::new(), Vec::new()];
    let mut peak = 0u64;
    crate::alternating(runs, |run, tool| {
        let mut row = [0.0; 6];
        for (case, changed) in [(0usize, 1usize), (1, 2)] {
            let bucket = format!("b{run}-{tool}-{case}");
            server.bucket(&bucket);
            sh("sync");
            let copy = |i: usize, id: &str| {
                let (tree, archive, summary, _) = &trees[i];
                match tool {
                    0 => appsnap_copy(&server, &bucket, archive, summary, id),
                    _ => restic_copy(&server, &bucket, tree),
                }
            };
            if tool == 1 {
                // Not timed, while appsnap's first copy creates its repository (a few KB
                // and a key derivation) inside its time.
                sh(&server.restic(&bucket, "init"));
            }
            let a = copy(0, "snapshot_1");
            let b = copy(changed, "snapshot_2");
            peak = peak.max(a.rss).max(b.rss);
            eprintln!(
                "  run {run} {}: first {:.2}s ({:.2}s CPU) {}, then {} changed {:.2}s ({:.2}s CPU) {}",
                ["appsnap", "restic"][tool],
                a.secs,
                a.cpu,
                human(a.uploaded),
                ["1 %", "5 %"][case],
                b.secs,
                b.cpu,
                human(b.uploaded)
            );
            if case == 0 {
                row[0] = a.secs;
                row[1] = a.uploaded as f64;
            }
            row[2 + 2 * case] = b.secs;
            row[3 + 2 * case] = b.uploaded as f64;
            if tool == 0 && case == 1 {
                browsed.push(browse_copy(&server, &bucket, "snapshot_2", &small.path));
            }
            let _ = fs::remove_dir_all(server.data.join(&bucket));
        }
        results[tool].push(row);
    });
    let m = |tool: usize, i: usize| median(results[tool].iter().map(|r| r[i]).collect());
    println!(
        "{:<34} {:>9} {:>9} {:>12} {:>14} {:>12}",
        "copy", "seconds", "MB/s", "uploaded", "x restic MB/s", "bytes/restic"
    );
    for (label, i, tar) in [
        ("first copy", 0, trees[0].2.tar_bytes),
        ("second copy (1 % changed)", 2, trees[1].2.tar_bytes),
        ("second copy (5 % changed)", 4, trees[2].2.tar_bytes),
    ] {
        for tool in 0..2 {
            let (secs, bytes) = (m(tool, i), m(tool, i + 1));
            println!(
                "{:<34} {:>9.2} {:>9.1} {:>12} {:>14.2} {:>12.3}",
                format!("{} {label}", ["appsnap", "restic (files)"][tool]),
                secs,
                tar as f64 / secs / 1e6,
                human(bytes as u64),
                m(1, i) / secs,
                bytes / m(1, i + 1),
            );
        }
    }
    println!(
        "appsnap's peak RSS during a copy: {} (goal < 256 MB); goals: a second copy uploads \
         <= 1.2x restic's bytes, a first copy >= 1.0x restic's throughput",
        human(peak)
    );
    let (opened, read) = (
        median(browsed.iter().map(|b| b.0 as f64).collect()),
        median(browsed.iter().map(|b| b.1 as f64).collect()),
    );
    println!(
        "browsing the second copy ({} entries; entry index {}): opening it downloads {} \
         (the repository's index, the entry index), one {} file half-way through {} more; \
         {} in all (goal < 4 MiB; the copy's tar stream is {})",
        index.len(),
        human(fs::metadata(index::path_for(&trees[2].1)).unwrap().len()),
        human(opened as u64),
        human(small.size),
        human(read as u64),
        human((opened + read) as u64),
        human(trees[2].2.tar_bytes)
    );
    drop(server);
    if std::env::var_os("APPSNAP_BENCH_KEEP").is_none() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// `--history`: the recipe "a repository on a local path holds the history, the backup
/// root only the newest archives". Every day 1 % of the tree's bytes is rewritten, the day
/// is archived and copied (as a copy job does) into a repository on a local path, and only
/// the last two archives stay. Prints the repository's size against the tree's and
/// against 30 archives kept side by side, then fetches day 20 back and checks that its
/// tar stream is the one archived that day.
pub fn history(dir: &Path, size: u64, days: usize) {
    let _ = fs::remove_dir_all(dir);
    let data = dir.join("data");
    let input = generate(&data, size);
    let repo_dir = dir.join("repo");
    let cfg: appsnap::offsite::RepositoryConfig = serde_json::from_value(serde_json::json!({
        "name": "history",
        "repository": repo_dir.to_str().unwrap(),
        "password": PASSWORD,
    }))
    .unwrap();
    let check_day = 20.min(days);
    let (mut archives_total, mut day_summary) = (0u64, None);
    let start = Instant::now();
    for day in 1..=days {
        if day > 1 {
            mutate_seeded(&data, 0.01, day as u64);
        }
        let archive = dir.join(format!("day{day:02}.tar.gz"));
        let summary = pack(&data, &archive);
        write_index(&archive);
        archives_total += fs::metadata(&archive).unwrap().len();
        let id = format!("snapshot_day{day:02}");
        copy_tree(&cfg, &archive, &summary, &id);
        if day == check_day {
            day_summary = Some((id, summary.clone()));
        }
        // The backup root keeps the last two archives.
        if day > 2 {
            let old = dir.join(format!("day{:02}.tar.gz", day - 2));
            let _ = fs::remove_file(index::path_for(&old));
            fs::remove_file(old).unwrap();
        }
        eprintln!(
            "  day {day}: repository {}, archive {}",
            human(dir_bytes(&repo_dir)),
            human(fs::metadata(&archive).unwrap().len())
        );
    }
    let held = dir_bytes(&repo_dir);
    println!(
        "deduplicated history: {days} daily backups of {} of data with 1 % of its bytes \
         rewritten each day take {} in the repository ({:.2}x the data; goal < 1.3x of a \
         1 GiB tree); the same {days} archives side by side: {} ({:.0} s in all)",
        human(input),
        human(held),
        held as f64 / input as f64,
        human(archives_total),
        start.elapsed().as_secs_f64()
    );
    let (id, summary) = day_summary.expect("a day to check");
    let remote = appsnap::offsite::list(&cfg, None)
        .unwrap()
        .into_iter()
        .find(|r| r.snapshot_id == id)
        .expect("listed");
    let mut hash = HashWriter(<sha2::Sha256 as sha2::Digest>::new());
    appsnap::offsite::dump(&cfg, &remote, &mut hash).unwrap();
    let got = appsnap::archive::hex(&sha2::Digest::finalize(hash.0));
    assert_eq!(
        Some(&got),
        summary.tar_sha256.as_ref(),
        "day {check_day} comes back whole"
    );
    println!(
        "day {check_day} fetched back from the repository: its tar stream is identical (sha256 {got})"
    );
    if std::env::var_os("APPSNAP_BENCH_KEEP").is_none() {
        let _ = fs::remove_dir_all(dir);
    }
}

struct HashWriter(sha2::Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(&mut self.0, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
