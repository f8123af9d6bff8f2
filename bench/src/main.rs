//! appsnap's benchmark: generates an app-like tree and, in the same run, times appsnap's
//! archive against `tar | gzip -6`, `tar | pigz -6` and `tar | zstd -T0` on it (warm
//! cache), printing throughput and size ratios and peak memory; then times listing a
//! catalog of 10,000 snapshots.
//!
//! `cargo run --release -p appsnap-bench -- --size 2G [--dir /var/tmp/appsnap-bench]`
//!
//! `… -- --offsite [--runs 3] --size 2G`: instead, the offsite copy against
//! `restic backup` of the same files into a local S3 server (see `offsite.rs`).
//! `… -- --api [--runs 3] --size 1G`: instead, backup and restore through the manager on
//! a real container and volume, against tar | pigz and pigz -dc | tar (see `api.rs`).
//! `… -- --browse [--runs 3] --size 4G`: instead, browsing a snapshot and a partial
//! restore through the manager, against `tar -xzf --to-stdout` (see `browse.rs`).
//! `… -- --console [--runs 5]`: instead, the web console's apps page at 50 apps and
//! 10,000 snapshots, over a real socket, and its weight (see `console.rs`).
//! `… -- --history [--days 30] --size 1G`: instead, deduplicated local history: daily
//! backups with 1 % churn copied into a repository on a local path (see `offsite.rs`).
//!
//! The tree: ~25 % source text (PHP/JS-like), ~40 % already-compressed media (random
//! bytes), ~30 % database-like files of 16 KiB pages (rows + zeroed free space), ~5 % small
//! config files, and a 1 GiB sparse file holding a few blocks.

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod api;
mod browse;
mod console;
mod offsite;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const WORDS: &[&str] = &[
    "function",
    "return",
    "$this->",
    "public",
    "private",
    "static",
    "array",
    "null",
    "true",
    "false",
    "if",
    "else",
    "foreach",
    "as",
    "=>",
    "echo",
    "get_post_meta",
    "wp_query",
    "$post_id",
    "$args",
    "const",
    "let",
    "var",
    "async",
    "await",
    "import",
    "export",
    "default",
    "class",
    "extends",
    "new",
    "Promise",
    "document.getElementById",
    "addEventListener",
    "console.log",
    "<div class=\"",
    "</div>",
    "<span>",
    "</span>",
    "{",
    "}",
    "(",
    ")",
    ";",
    "$wpdb->prepare",
    "SELECT",
    "FROM",
    "WHERE",
    "esc_html",
    "__(",
    "'textdomain'",
    "apply_filters",
    "add_action",
];

fn main() {
    // As `appsnap` itself does: the copies measured here run in this process.
    appsnap::memory::limit_arenas();
    // The library's own logs (where an assembly's time goes, say), on stderr when asked.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut size: u64 = 2 << 30;
    let mut dir = PathBuf::from("/var/tmp/appsnap-bench");
    let mut levels = vec![3u32];
    let mut offsite_runs = None;
    let mut api = false;
    let mut browse = false;
    let mut console = false;
    let mut history = None;
    let mut backup_only = false;
    let mut unchanged = false;
    let mut repository = false;
    let mut generate_only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--offsite" => offsite_runs = Some(3),
            "--api" => api = true,
            "--browse" => browse = true,
            "--console" => console = true,
            "--history" => history = Some(30),
            "--days" => history = Some(args.next().expect("--days N").parse().expect("a number")),
            "--backup-only" => backup_only = true,
            // --api: no writer during the backups (what a quiet app costs).
            "--unchanged" => unchanged = true,
            // --api: with a repository configured (the backups then hash the tar stream).
            "--with-repository" => repository = true,
            // Only writes the tree (for timing `appsnap pack` by hand, cold or warm).
            "--generate" => {
                generate_only = Some(PathBuf::from(args.next().expect("--generate PATH")))
            }
            "--runs" => {
                offsite_runs = Some(args.next().expect("--runs N").parse().expect("a number"))
            }
            "--size" => size = parse_size(&args.next().expect("--size N[K|M|G]")),
            "--dir" => dir = PathBuf::from(args.next().expect("--dir PATH")),
            "--levels" => {
                levels = args
                    .next()
                    .expect("--levels 4,6")
                    .split(',')
                    .map(|l| l.parse().expect("levels 0-12"))
                    .collect()
            }
            _ => panic!(
                "usage: appsnap-bench [--size 2G] [--dir PATH] [--levels 6[,4…]] \
                 | --offsite [--runs 3] [--size 2G] [--dir PATH] \
                 | --api [--runs 3] [--size 1G] [--dir PATH] [--backup-only] [--unchanged] \
                   [--with-repository] \
                 | --browse [--runs 3] [--size 4G] [--dir PATH] \
                 | --console [--runs 5] [--dir PATH] \
                 | --history [--days 30] [--size 1G] [--dir PATH] \
                 | --generate PATH [--size 1G]"
            ),
        }
    }
    if let Some(root) = generate_only {
        let data = generate(&root, size);
        return println!("generated {} at {}", human(data), root.display());
    }
    if console {
        return console::run(&dir, offsite_runs.unwrap_or(5));
    }
    if let Some(days) = history {
        return offsite::history(&dir, size, days);
    }
    if browse {
        return browse::run(&dir, size, offsite_runs.unwrap_or(3));
    }
    if api {
        return api::run(
            &dir,
            size,
            offsite_runs.unwrap_or(3),
            backup_only,
            unchanged,
            repository,
        );
    }
    if let Some(runs) = offsite_runs {
        return offsite::run(&dir, size, runs);
    }
    let appsnap = std::env::current_exe().unwrap().with_file_name("appsnap");
    assert!(
        appsnap.exists(),
        "build the binary first: cargo build --release --bin appsnap"
    );
    require(
        &["pigz", "zstd", "gzip", "tar"],
        "apt-get install pigz zstd",
    );
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let data = dir.join("data");
    let out = dir.join("out");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&out).unwrap();
    let t = Instant::now();
    let input = generate(&data, size);
    println!(
        "generated {} in {:.1}s at {}",
        human(input),
        t.elapsed().as_secs_f64(),
        data.display()
    );
    // Flush the generated tree first, or its writeback would slow whichever run comes
    // first; then warm the page cache (GNU tar skips reading when writing to /dev/null).
    sh("sync");
    sh(&format!(
        "tar -S -cf - -C {} . | cat > /dev/null",
        data.display()
    ));

    let d = data.display();
    let o = out.display();
    let mut runs: Vec<(String, String, String)> = levels
        .iter()
        .map(|l| {
            (
                format!("appsnap (level {l})"),
                format!(
                    "{} --compression-level {l} pack -o {o}/a{l}.tar.gz {d}",
                    appsnap.display()
                ),
                format!("a{l}.tar.gz"),
            )
        })
        .collect();
    // The baselines fsync their output like appsnap does: a backup that is not on disk
    // is not a backup. `tar | cat` is the floor: reading the tree and writing it out.
    for (name, pipe, file) in [
        (
            "tar | gzip -6".to_string(),
            "gzip -6".to_string(),
            "g.tar.gz",
        ),
        (
            format!("tar | pigz -6 -p {cores}"),
            format!("pigz -6 -p {cores}"),
            "p.tar.gz",
        ),
        (
            "tar | zstd -T0".to_string(),
            "zstd -q -T0".to_string(),
            "z.tar.zst",
        ),
        (
            "tar | cat (I/O floor)".to_string(),
            "cat".to_string(),
            "c.tar",
        ),
    ] {
        runs.push((
            name,
            format!("tar -S -cf - -C {d} . | {pipe} > {o}/{file} && sync {o}/{file}"),
            file.to_string(),
        ));
    }
    let mut results = Vec::new();
    for (name, cmd, file) in &runs {
        let (elapsed, rss) = timed(cmd);
        let bytes = fs::metadata(out.join(file)).unwrap().len();
        if !file.starts_with('a') {
            let _ = fs::remove_file(out.join(file)); // keep the page cache for the input
        }
        results.push((name.to_string(), elapsed, bytes, rss));
        eprintln!("  {name}: {:.2}s", elapsed.as_secs_f64());
    }
    let pigz = &results[levels.len() + 1];
    println!("\nbackup of {} ({cores} cores, warm cache):", human(input));
    println!(
        "{:<22} {:>9} {:>11} {:>12} {:>10} {:>10} {:>9}",
        "tool", "seconds", "MB/s", "output", "x pigz/s", "size/pigz", "peak RSS"
    );
    for (name, elapsed, bytes, rss) in &results {
        let mbps = input as f64 / elapsed.as_secs_f64() / 1e6;
        println!(
            "{:<22} {:>9.2} {:>11.1} {:>12} {:>10.2} {:>10.3} {:>9}",
            name,
            elapsed.as_secs_f64(),
            mbps,
            human(*bytes),
            pigz.1.as_secs_f64() / elapsed.as_secs_f64(),
            *bytes as f64 / pigz.2 as f64,
            human(*rss),
        );
    }
    let restore_level = *levels.iter().find(|&&l| l == 3).unwrap_or(&levels[0]);
    restore(&appsnap, &out, restore_level, input);
    list_10k(&dir.join("catalog"));
    policy_bench();
    if std::env::var_os("APPSNAP_BENCH_KEEP").is_none() {
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Restore throughput: appsnap's extractor (parallel inflate) against `gzip -dc | tar -x`
/// and `pigz -dc | tar -x` of the same archive, each followed by a syncfs of its target.
fn restore(appsnap: &Path, out: &Path, level: u32, input: u64) {
    let archive = out.join(format!("a{level}.tar.gz"));
    let a = archive.display();
    for l in fs::read_dir(out).unwrap().flatten() {
        if l.path() != archive {
            let _ = fs::remove_file(l.path());
        }
    }
    let target = |name: &str| {
        let t = out.join(name);
        let _ = fs::remove_dir_all(&t);
        t
    };
    let runs = [
        ("appsnap restore", {
            let t = target("r-appsnap");
            format!(
                "{} unpack {a} {} && sync -f {}",
                appsnap.display(),
                t.display(),
                out.display()
            )
        }),
        ("gzip -dc | tar -x", {
            let t = target("r-gzip");
            format!(
                "mkdir {t} && gzip -dc {a} | tar -x -C {t} && sync -f {o}",
                t = t.display(),
                o = out.display()
            )
        }),
        ("pigz -dc | tar -x", {
            let t = target("r-pigz");
            format!(
                "mkdir {t} && pigz -dc {a} | tar -x -C {t} && sync -f {o}",
                t = t.display(),
                o = out.display()
            )
        }),
    ];
    let mut results = Vec::new();
    for (name, cmd) in &runs {
        sh(&format!("cat {a} > /dev/null")); // archive in cache for everyone
        let (elapsed, rss) = timed(cmd);
        eprintln!("  {name}: {:.2}s", elapsed.as_secs_f64());
        results.push((name, elapsed, rss));
        for d in ["r-appsnap", "r-gzip", "r-pigz"] {
            let _ = fs::remove_dir_all(out.join(d));
        }
    }
    let pigz = results[2].1;
    println!(
        "\nrestore of the level-{level} archive ({} of data):",
        human(input)
    );
    println!(
        "{:<22} {:>9} {:>11} {:>10} {:>9}",
        "tool", "seconds", "MB/s", "x pigz", "peak RSS"
    );
    for (name, elapsed, rss) in &results {
        println!(
            "{:<22} {:>9.2} {:>11.1} {:>10.2} {:>9}",
            name,
            elapsed.as_secs_f64(),
            input as f64 / elapsed.as_secs_f64() / 1e6,
            pigz.as_secs_f64() / elapsed.as_secs_f64(),
            human(*rss)
        );
    }
}

/// Calls `f(run, tool)` for two tools over `runs` runs, alternating which goes first, so
/// that neither always inherits the other's leftovers (cache, writeback).
fn alternating(runs: usize, mut f: impl FnMut(usize, usize)) {
    for run in 0..runs {
        for tool in if run % 2 == 0 { [0, 1] } else { [1, 0] } {
            f(run, tool);
        }
    }
}

/// Fails loudly, with how to install them, when `tools` are not on the PATH.
fn require(tools: &[&str], install: &str) {
    for tool in tools {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "{tool} is missing: {install}");
    }
}

fn parse_size(s: &str) -> u64 {
    let (n, mult) = match s.chars().last().unwrap().to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 1 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    n.parse::<u64>().expect("a size like 512M or 2G") * mult
}

fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2}G", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1}M", b as f64 / (1u64 << 20) as f64)
    }
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "`{cmd}` failed");
}

/// Wall time and the peak RSS of the largest process of the command (wait4's rusage).
// The child is reaped by `wait4` (which `Child::wait` cannot do: it drops the rusage).
#[allow(clippy::zombie_processes)]
fn timed(cmd: &str) -> (Duration, u64) {
    let start = Instant::now();
    let child = Command::new("sh").arg("-c").arg(cmd).spawn().unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert_eq!(pid, child.id() as i32);
    assert!(
        std::process::ExitStatus::from_raw(status).success(),
        "`{cmd}` failed"
    );
    (elapsed, usage.ru_maxrss as u64 * 1024)
}

/// Writes the app-like tree; returns the bytes of data it holds (sparse file: its data).
fn generate(root: &Path, size: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut total = 0;
    let budget = |share: f64| (size as f64 * share) as u64;

    // Source text: many files of 1–64 KiB in nested dirs.
    let mut made = 0;
    let mut n = 0;
    while made < budget(0.25) {
        let len = rng.random_range(1024..65536);
        let dir = root.join(format!("html/wp-content/plugins/p{}/inc", n % 97));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("file{n}.php")), source_text(&mut rng, len)).unwrap();
        made += len as u64;
        n += 1;
    }
    total += made;

    // Media: already compressed, 1–8 MiB each.
    let mut made = 0;
    let mut n = 0;
    fs::create_dir_all(root.join("html/wp-content/uploads")).unwrap();
    while made < budget(0.40) {
        let len = rng
            .random_range(1 << 20..8 << 20)
            .min((budget(0.40) - made) as usize + 1);
        let mut buf = vec![0; len];
        rng.fill_bytes(&mut buf);
        fs::write(
            root.join(format!("html/wp-content/uploads/img{n}.jpg")),
            &buf,
        )
        .unwrap();
        made += len as u64;
        n += 1;
    }
    total += made;

    // Database-like: files of 16 KiB pages.
    let mut made = 0;
    let mut n = 0;
    fs::create_dir_all(root.join("mysql/wordpress")).unwrap();
    while made < budget(0.30) {
        let pages = ((budget(0.30) - made) / 16384).clamp(1, 4096);
        let mut f = fs::File::create(root.join(format!("mysql/wordpress/t{n}.ibd"))).unwrap();
        for p in 0..pages {
            f.write_all(&db_page(&mut rng, p)).unwrap();
        }
        made += pages * 16384;
        n += 1;
    }
    total += made;

    // Small config files.
    let mut made = 0;
    let mut n = 0;
    while made < budget(0.05) {
        let dir = root.join(format!("config/d{}", n % 50));
        fs::create_dir_all(&dir).unwrap();
        let len = rng.random_range(100..2048);
        let text: String = (0..len / 20)
            .map(|i| format!("key_{i} = \"{}\"\n", rng.random::<u16>()))
            .collect();
        fs::write(dir.join(format!("c{n}.conf")), &text).unwrap();
        made += text.len() as u64;
        n += 1;
    }
    total += made;

    // A 1 GiB sparse disk image with a few blocks of data.
    let f = fs::File::create(root.join("disk.img")).unwrap();
    f.set_len(1 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    for i in 0..8u64 {
        f.write_at(&[0xab; 4096], i * (128 << 20)).unwrap();
    }
    total + 8 * 4096
}

fn source_text(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len + 100);
    while s.len() < len {
        let indent = rng.random_range(0..4);
        s.push_str(&"    ".repeat(indent));
        for _ in 0..rng.random_range(3..12) {
            let w = WORDS[rng.random_range(0..WORDS.len())];
            s.push_str(w);
            if rng.random_bool(0.3) {
                s.push_str(&format!("_{}", rng.random_range(0..5000)));
            }
            s.push(' ');
        }
        s.push('\n');
    }
    s.truncate(len);
    s.into_bytes()
}

/// An InnoDB-ish page: header, rows of ids/timestamps/text, then zeroed free space.
fn db_page(rng: &mut StdRng, page_no: u64) -> Vec<u8> {
    let mut page = Vec::with_capacity(16384);
    page.extend_from_slice(&page_no.to_be_bytes());
    page.extend_from_slice(&rng.random::<u64>().to_be_bytes()); // checksum-like noise
    let fill = rng.random_range(0.3..0.95);
    let mut id = page_no * 100;
    while (page.len() as f64) < 16384.0 * fill {
        id += 1;
        page.extend_from_slice(&id.to_be_bytes());
        page.extend_from_slice(&(1_700_000_000u32 + rng.random_range(0..50_000_000)).to_be_bytes());
        for _ in 0..rng.random_range(2..8) {
            page.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
            page.push(b' ');
        }
        page.push(0);
    }
    page.resize(16384, 0);
    page
}

/// The gfs policy deciding over 10,000 snapshots, instantiation included (the compiled
/// component cached, as in the service), and the cold compile of an upload.
fn policy_bench() {
    use appsnap::policy::engine::SnapshotInfo;
    let gfs = appsnap::policy::BUILTINS
        .iter()
        .find(|(n, _)| *n == "gfs")
        .unwrap()
        .1;
    let engine = appsnap::policy::shared();
    let t = Instant::now();
    let compiled = engine.load_builtin(gfs).unwrap(); // in-process, as built-ins are
    let cold = t.elapsed();
    let base = 1_700_000_000i64;
    let snapshots: Vec<SnapshotInfo> = (0..10_000)
        .rev()
        .map(|i| SnapshotInfo {
            id: format!("snapshot_{i:05}"),
            app_id: "bench".into(),
            created_at: base + i * 3_600,
            size: 1 << 30,
            origin: "scheduled".into(),
            pinned: false,
            verified: true,
        })
        .collect();
    let now = base + 10_000 * 3_600;
    let config =
        r#"{"last": 5, "hourly": 48, "daily": 14, "weekly": 8, "monthly": 12, "yearly": 3}"#;
    let mut best = Duration::MAX;
    for _ in 0..10 {
        let t = Instant::now();
        let verdicts = engine
            .retention(&compiled, now, config, &snapshots)
            .unwrap();
        best = best.min(t.elapsed());
        assert_eq!(verdicts.len(), 10_000);
    }
    println!(
        "\ngfs over 10,000 snapshots (fresh instance per call): {:.1} ms; cold compile of the component: {:.0} ms",
        best.as_secs_f64() * 1e3,
        cold.as_secs_f64() * 1e3
    );
}

/// Listing 10,000 snapshots: the catalog loaded by the real manager, listed newest first
/// and serialized as the API does.
fn list_10k(root: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let manager = rt.block_on(catalog_10k(root, 20));
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let json = serde_json::to_vec(&manager.list(None).unwrap()).unwrap();
        best = best.min(t.elapsed());
        assert!(json.len() > 1_000_000);
    }
    println!(
        "\nlist of 10,000 snapshots (newest first, as JSON): {:.1} ms",
        best.as_secs_f64() * 1e3
    );
}

/// A manager over a catalog of 10,000 snapshots (empty archive files) of `apps` apps,
/// one a minute from 2026-01-01.
pub(crate) async fn catalog_10k(
    root: &Path,
    apps: usize,
) -> std::sync::Arc<appsnap::manager::BackupManager> {
    use appsnap::catalog::{Facts, Origin, Snapshot};
    let app_dir = root.join("bench_app");
    fs::create_dir_all(&app_dir).unwrap();
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let list: Vec<Snapshot> = (0..10_000)
        .map(|i| {
            let created_at = base + chrono::Duration::minutes(i);
            let id = format!(
                "snapshot_{}_{:04x}",
                created_at.format("%Y%m%dT%H%M%SZ"),
                i % 65536
            );
            let file_path = app_dir.join(format!("{id}.tar.gz"));
            fs::File::create(&file_path).unwrap();
            Snapshot {
                snapshot_id: id,
                app_id: format!("app{}", i as usize % apps),
                size_bytes: 1 << 30,
                file_path: file_path.to_string_lossy().into(),
                sha256: "0".repeat(64),
                mounts: Vec::new(),
                facts: Facts {
                    origin: Origin::Manual,
                    ..Facts::imported(created_at, None)
                },
                locations: Vec::new(),
            }
        })
        .collect();
    fs::write(
        root.join("snapshots.json"),
        serde_json::to_vec(&list).unwrap(),
    )
    .unwrap();
    // The catalog is made afresh each run: its root must not be remembered between runs
    // (an initialised root that loses its mark is refused, see `state_dir`).
    let config = appsnap::config::Config {
        backup_root: root.to_path_buf(),
        state_dir: root.join(".bench-state"),
        ..Default::default()
    };
    appsnap::manager::BackupManager::open(config).await.unwrap()
}
