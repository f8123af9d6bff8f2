//! `--api`: backup and restore the way a user runs them — through the manager, on an app
//! made of a real container and a named volume, with the container stopped and started —
//! against `tar | pigz -6 -p <cores>` and `pigz -dc | tar -x && sync` on the same data.
//!
//! Every run starts from the same cache state: `sync` and dropped page caches (root only),
//! so nobody inherits the previous run's writeback. The tools alternate which goes first;
//! each figure is the median of the runs. A restore is broken down by the job's steps
//! (timestamped as they change); the settle window (`restore_settle_secs`) is reported
//! apart and left out of the ratio, and the app's downtime (containers stopped → started
//! again) is reported too. Peak RSS is the process's high-water mark over each operation
//! (reset through `/proc/self/clear_refs` before it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use appsnap::catalog::Origin;
use appsnap::manager::BackupManager;

use crate::{generate, human, sh, timed};

const IMAGE: &str = "appsnap-test/busybox:1";

fn out(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "`{cmd}`: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// The same starting line for every run: data on disk, page cache empty.
pub(crate) fn cold() {
    sh("sync && echo 3 > /proc/sys/vm/drop_caches");
}

/// Resets the peak RSS counter of this process; `peak_rss` reads it.
pub(crate) fn reset_peak() {
    let _ = fs::write("/proc/self/clear_refs", "5");
}

pub(crate) fn peak_rss() -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// A compose-like app: one container (stops at once on SIGTERM) with a named volume.
pub(crate) struct App {
    pub(crate) project: String,
    pub(crate) mountpoint: PathBuf,
}

impl App {
    pub(crate) fn create() -> App {
        let ok = Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "docker with the image {IMAGE} is needed: run scripts/test --no-run first"
        );
        let project = format!("appsnapbench{:06x}", rand::random::<u32>() & 0xff_ffff);
        sh(&format!(
            "docker volume create --label com.docker.compose.project={project} \
             {project}_data > /dev/null"
        ));
        sh(&format!(
            "docker run -d --name {project}_web --label com.docker.compose.project={project} \
             --label com.docker.compose.service=web -v {project}_data:/data {IMAGE} \
             sh -c 'trap \"exit 0\" TERM; sleep 1000000 & wait' > /dev/null"
        ));
        let mountpoint = PathBuf::from(out(&format!(
            "docker volume inspect -f '{{{{.Mountpoint}}}}' {project}_data"
        )));
        App {
            project,
            mountpoint,
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker rm -f {p}_web; docker volume rm -f {p}_data",
                p = self.project
            ))
            .output();
    }
}

/// Each step of a job with how long it lasted, in order.
pub(crate) type Steps = Vec<(String, Duration)>;

/// Follows a job to its end, timing each step as the job moves on.
pub(crate) async fn steps_of(job: appsnap::jobs::Job) -> Steps {
    let mut rx = job.subscribe();
    let mut steps: Steps = Vec::new();
    let mut current = (rx.borrow().step.clone(), Instant::now());
    loop {
        let info = rx.borrow_and_update().clone();
        if info.step != current.0 {
            steps.push((current.0.clone(), current.1.elapsed()));
            current = (info.step.clone(), Instant::now());
        }
        if info.state != appsnap::jobs::JobState::Running {
            steps.push((current.0, current.1.elapsed()));
            return steps;
        }
        if rx.changed().await.is_err() {
            return steps;
        }
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Backup {
    secs: f64,
    bytes: u64,
    rss: u64,
    steps: Steps,
    /// The app's downtime as the snapshot records it.
    downtime: f64,
    /// Bytes read while the app was down.
    stopped_bytes: u64,
}

/// The median of `runs` bare `docker stop` + `docker start` of the app's container.
pub(crate) fn bare_stop_start(app: &App, runs: usize) -> f64 {
    median(
        (0..runs.max(1))
            .map(|_| {
                let t = Instant::now();
                sh(&format!(
                    "docker stop {p}_web >/dev/null && docker start {p}_web >/dev/null",
                    p = app.project
                ));
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Every 100th regular file of the tree (1 % of its files), leaving out sparse files (a
/// disk image rewritten whole would become a dense GiB, not an app's 1 % change).
fn files_to_change(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let mut children: Vec<_> = fs::read_dir(&d).unwrap().flatten().collect();
        children.sort_by_key(|e| e.file_name());
        for e in children {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file() {
                let m = e.metadata().unwrap();
                if std::os::unix::fs::MetadataExt::blocks(&m) * 512 >= m.len() {
                    files.push(e.path());
                }
            }
        }
    }
    files.into_iter().step_by(100).collect()
}

/// A writer, as the app's own would be: rewrites `files` (each with new bytes of its own
/// size) on a thread, starting now, while the backup runs.
fn change_files(files: Vec<PathBuf>, seed: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for (i, f) in files.iter().enumerate() {
            let len = fs::metadata(f).map(|m| m.len()).unwrap_or(0) as usize;
            let byte = (seed as usize + i) as u8;
            fs::write(f, vec![byte; len]).unwrap();
        }
    })
}

struct Restore {
    secs: f64,
    steps: Steps,
    rss: u64,
    /// The removal of the replaced data, after the answer (not in `secs`).
    cleanup: f64,
    /// From the call to the job's creation (finding the app, taking its lock).
    accepting: f64,
}

/// Prints the median time of each step, in the order the runs met them.
pub(crate) fn print_steps(what: &str, runs: &[&Steps]) {
    println!("{what} steps (median seconds):");
    let mut names: Vec<&String> = Vec::new();
    for r in runs {
        for (s, _) in r.iter() {
            if !names.contains(&s) {
                names.push(s);
            }
        }
    }
    for n in names {
        println!("  {n:<34} {:>7.2}", step_median(runs, n));
    }
}

/// The median over runs of the time spent in step `name` (summed within a run).
fn step_median(runs: &[&Steps], name: &str) -> f64 {
    median(
        runs.iter()
            .map(|r| {
                r.iter()
                    .filter(|(s, _)| s == name)
                    .map(|(_, d)| d.as_secs_f64())
                    // Not `sum()`: an empty float sum is -0.0.
                    .fold(0.0, |a, b| a + b)
            })
            .collect(),
    )
}

/// `backup_only`: stops after the backups (for quick work on the backup path).
/// `repository`: with a repository configured (copies on request only, so none is made),
/// as an offsite user's backups are: they also hash the tar stream.
pub fn run(
    dir: &Path,
    size: u64,
    runs: usize,
    backup_only: bool,
    unchanged: bool,
    repository: bool,
) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join("peer")).unwrap();
    let app = App::create();
    let input = generate(&app.mountpoint, size);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let repositories = match repository {
        true => vec![
            serde_json::from_value(serde_json::json!({
                "name": "nas",
                "repository": dir.join("repo"),
                "password": "bench",
                "copy": "manual",
            }))
            .expect("a repository's config"),
        ],
        false => Vec::new(),
    };
    let config = appsnap::config::Config {
        backup_root: dir.join("root"),
        state_dir: dir.join("state"),
        repositories,
        ..appsnap::config::Config::default()
    };
    let settle = config.restore_settle_secs as f64;
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Stop mode through a manager of its own, on its own backup root (one process may
    // hold a root at a time; the two never run at once).
    let stop_config = appsnap::config::Config {
        backup_root: dir.join("root-stop"),
        state_dir: dir.join("state-stop"),
        mode: appsnap::config::BackupMode::Stop,
        ..config.clone()
    };
    let stop_manager = rt
        .block_on(BackupManager::open(stop_config))
        .expect("open the stop-mode manager");
    let manager = rt
        .block_on(BackupManager::open(config))
        .expect("open the manager");
    println!(
        "through the manager: app {} with {} in one volume, {cores} cores, cold cache, {runs} runs",
        app.project,
        human(input)
    );

    // The tree just written is younger than the pre-copy's racy window: a first pass
    // would trust none of it. A server's data has had time to age; so does the bench's.
    let window = appsnap::archive::precopy::racy_window_ns() as f64 / 1e9;
    eprintln!("  letting the tree age past the pre-copy racy window ({window:.0} s)");
    std::thread::sleep(Duration::from_secs_f64(window));

    // What the containers' own stop and start cost: the floor of any consistent backup.
    let bare = bare_stop_start(&app, runs);

    // Backups: the manager's in pre-copy mode and in stop mode (stop, archive, fsync,
    // start, catalog), each with a writer changing 1 % of the files meanwhile, against
    // tar | pigz of the same tree. The three take turns going first.
    let changing = match unchanged {
        true => Vec::new(),
        false => files_to_change(&app.mountpoint),
    };
    let (mut precopy, mut stop, mut peers) = (Vec::new(), Vec::new(), Vec::new());
    let peer_file = dir.join("peer/peer.tar.gz");
    let mut keep = None;
    for run in 0..runs {
        for turn in 0..3 {
            let tool = (run + turn) % 3;
            cold();
            if tool < 2 {
                let mode = if tool == 0 {
                    appsnap::config::BackupMode::Precopy
                } else {
                    appsnap::config::BackupMode::Stop
                };
                let manager = if tool == 0 { &manager } else { &stop_manager };
                reset_peak();
                let t = Instant::now();
                let writer = change_files(changing.clone(), run as u64 * 3 + tool as u64);
                let (snap, steps) = rt.block_on(async {
                    let started = manager
                        .start_backup(&app.project, Origin::Manual, None)
                        .await
                        .expect("backup starts");
                    let steps = tokio::spawn(steps_of(started.job.clone()));
                    let snap = started.done.await.unwrap().expect("backup");
                    (snap, steps.await.unwrap())
                });
                writer.join().unwrap();
                let down = snap
                    .facts
                    .downtime
                    .clone()
                    .expect("a backup records its downtime");
                assert_eq!(down.mode, mode);
                let b = Backup {
                    secs: t.elapsed().as_secs_f64(),
                    bytes: snap.size_bytes,
                    rss: peak_rss(),
                    steps,
                    downtime: down.downtime_ms as f64 / 1000.0,
                    stopped_bytes: down.stopped_bytes,
                };
                eprintln!(
                    "  run {run} appsnap {mode:?} backup: {:.2}s, down {:.2}s, read while down {}",
                    b.secs,
                    b.downtime,
                    human(b.stopped_bytes)
                );
                if tool == 0 {
                    precopy.push(b);
                    if let Some(old) = keep.replace(snap.snapshot_id) {
                        manager.delete(&old).unwrap();
                    }
                } else {
                    stop.push(b);
                    manager.delete(&snap.snapshot_id).unwrap();
                }
            } else {
                let (elapsed, rss) = timed(&format!(
                    "tar -S -cf - -C {} . | pigz -6 -p {cores} > {f} && sync -f {f}",
                    app.mountpoint.display(),
                    f = peer_file.display()
                ));
                let b = Backup {
                    secs: elapsed.as_secs_f64(),
                    bytes: fs::metadata(&peer_file).unwrap().len(),
                    rss,
                    steps: Vec::new(),
                    downtime: 0.0,
                    stopped_bytes: 0,
                };
                eprintln!("  run {run} tar | pigz: {:.2}s", b.secs);
                peers.push(b);
            }
        }
    }
    let secs = |v: &[Backup]| median(v.iter().map(|b| b.secs).collect());
    let down = |v: &[Backup]| median(v.iter().map(|b| b.downtime).collect());
    let (a, s, p) = (secs(&precopy), secs(&stop), secs(&peers));
    let (dp, ds) = (down(&precopy), down(&stop));
    println!(
        "backup ({}): pre-copy {a:.2}s ({:.1} MB/s), \
         stop mode {s:.2}s, tar | pigz -6 -p {cores} {p:.2}s; throughput vs tar | pigz: \
         pre-copy {:.2}x, stop mode {:.2}x; pre-copy wall time {:.2}x stop mode's; \
         size pre-copy {:.3}x stop mode, {:.3}x tar | pigz; peak RSS {}",
        match changing.len() {
            0 => "nothing changes".to_string(),
            n => format!("a writer changes {n} files, 1 %, during each"),
        },
        input as f64 / a / 1e6,
        p / a,
        p / s,
        a / s,
        precopy[0].bytes as f64 / stop[0].bytes as f64,
        precopy[0].bytes as f64 / peers[0].bytes as f64,
        human(
            precopy
                .iter()
                .chain(&stop)
                .map(|b| b.rss)
                .max()
                .unwrap_or(0)
        )
    );
    println!(
        "backup downtime: pre-copy {dp:.2}s, stop mode {ds:.2}s, a bare docker stop + start \
         {bare:.2}s; beyond it: pre-copy {:.2}s, stop mode {:.2}s ({:.1} %); read while down: \
         pre-copy {}, stop mode {}",
        dp - bare,
        ds - bare,
        100.0 * (dp - bare).max(0.0) / (ds - bare).max(1e-9),
        human(median(precopy.iter().map(|b| b.stopped_bytes as f64).collect()) as u64),
        human(median(stop.iter().map(|b| b.stopped_bytes as f64).collect()) as u64),
    );
    print_steps(
        "pre-copy backup",
        &precopy.iter().map(|b| &b.steps).collect::<Vec<_>>(),
    );
    print_steps(
        "stop-mode backup",
        &stop.iter().map(|b| &b.steps).collect::<Vec<_>>(),
    );
    drop(stop_manager);

    if backup_only {
        return end(manager, rt, app, dir);
    }

    // Restores of the kept snapshot, against pigz -dc | tar -x && sync into an empty
    // folder (the peer's tree is removed and synced before the next run starts).
    let id = keep.expect("a snapshot");
    let archive = manager.get(&id).unwrap().file_path;
    let (mut ours, mut peers) = (Vec::new(), Vec::new());
    let target = dir.join("peer/tree");
    crate::alternating(runs, |run, tool| {
        cold();
        if tool == 0 {
            reset_peak();
            let t = Instant::now();
            let (steps, secs, cleanup, accepting) = rt.block_on(async {
                let started = manager
                    .start_restore_from(&app.project, &id, None)
                    .await
                    .expect("restore starts");
                let accepting = t.elapsed().as_secs_f64();
                let steps = tokio::spawn(steps_of(started.job.clone()));
                started.done.await.unwrap().expect("restore");
                let secs = t.elapsed().as_secs_f64();
                // Outside the restore's time, as the peer's `rm -rf` of its tree is;
                // but before the next run, whose cold start it would disturb.
                let c = Instant::now();
                manager.cleanups_finished().await;
                (
                    steps.await.unwrap(),
                    secs,
                    c.elapsed().as_secs_f64(),
                    accepting,
                )
            });
            let r = Restore {
                secs,
                steps,
                rss: peak_rss(),
                cleanup,
                accepting,
            };
            eprintln!("  run {run} appsnap restore: {:.2}s", r.secs);
            ours.push(r);
        } else {
            let (elapsed, _) = timed(&format!(
                "mkdir {t} && pigz -dc {archive} | tar -x -C {t} && sync -f {t}",
                t = target.display()
            ));
            eprintln!(
                "  run {run} pigz -dc | tar -x: {:.2}s",
                elapsed.as_secs_f64()
            );
            peers.push(elapsed.as_secs_f64());
            sh(&format!("rm -rf {} && sync", target.display()));
        }
    });
    let total = median(ours.iter().map(|r| r.secs).collect());
    let peer = median(peers);
    let downtime = median(
        ours.iter()
            .map(|r| {
                let mut on = false;
                let mut secs = 0.0;
                for (s, d) in &r.steps {
                    on |= s == "stopping containers";
                    if s == "waiting for containers to run" {
                        break;
                    }
                    if on {
                        secs += d.as_secs_f64();
                    }
                }
                secs
            })
            .collect(),
    );
    println!(
        "  (before the job) accepting        {:>7.2}",
        median(ours.iter().map(|r| r.accepting).collect())
    );
    print_steps(
        "restore",
        &ours.iter().map(|r| &r.steps).collect::<Vec<_>>(),
    );
    println!(
        "  (after the answer) cleanup       {:>7.2}",
        median(ours.iter().map(|r| r.cleanup).collect())
    );
    println!(
        "restore: appsnap {total:.2}s, without the {settle:.0} s settle window {:.2}s; \
         pigz -dc | tar -x && sync {peer:.2}s: {:.2}x; downtime {downtime:.2}s \
         (a bare docker stop + start {bare:.2}s: {:.2}s beyond it); peak RSS {}",
        total - settle,
        peer / (total - settle),
        downtime - bare,
        human(ours.iter().map(|r| r.rss).max().unwrap_or(0))
    );
    end(manager, rt, app, dir);
}

/// Removes the app, then the bench's folder (kept with `APPSNAP_BENCH_KEEP`).
fn end(manager: std::sync::Arc<BackupManager>, rt: tokio::runtime::Runtime, app: App, dir: &Path) {
    drop(manager);
    drop(rt);
    drop(app);
    if std::env::var_os("APPSNAP_BENCH_KEEP").is_none() {
        let _ = fs::remove_dir_all(dir);
    }
}
