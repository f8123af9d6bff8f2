//! `--browse`: a snapshot browsed the way a user does, through the manager, cold cache:
//! one folder's first page, a name search, the first byte of a file near 100 KB (against
//! `tar -xzf --to-stdout`, which inflates everything before it), a partial restore in
//! place of a ~10 MB folder (containers stopped and started for real; the settle window
//! is 0 here), and what the entry index costs (its size against the archive's, the time
//! its writing takes against the backup's).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Instant;

use appsnap::archive::index::{self, EntryKind, Index};
use appsnap::catalog::Origin;
use appsnap::manager::{BackupManager, Download, PathsTarget, Selection};

use crate::api::{App, bare_stop_start, cold, median, print_steps, steps_of};
use crate::{generate, human};

/// The file a user fetches alone: of the thousand files closest to 100 KB, the one
/// half-way through the archive.
pub(crate) fn small_file_half_way(index: &Index) -> index::EntryRef<'_> {
    let mut by_offset: Vec<index::EntryRef> = index
        .iter()
        .unwrap()
        .filter(|e| e.kind == EntryKind::File)
        .collect();
    by_offset.sort_by_key(|e| e.size.abs_diff(100_000));
    by_offset.truncate(1000);
    by_offset.sort_by_key(|e| e.header_offset);
    by_offset[by_offset.len() / 2]
}

pub fn run(dir: &Path, size: u64, runs: usize) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    let app = App::create();
    let input = generate(&app.mountpoint, size);
    let config = appsnap::config::Config {
        backup_root: dir.join("root"),
        state_dir: dir.join("state"),
        mode: appsnap::config::BackupMode::Stop,
        restore_settle_secs: 0,
        ..appsnap::config::Config::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut manager = rt
        .block_on(BackupManager::open(config.clone()))
        .expect("open the manager");

    cold();
    let t = Instant::now();
    let snap = rt.block_on(async {
        let started = manager
            .start_backup(&app.project, Origin::Manual, None)
            .await
            .expect("backup starts");
        started.done.await.unwrap().expect("backup")
    });
    let backup_secs = t.elapsed().as_secs_f64();
    let archive = Path::new(&snap.file_path).to_path_buf();
    let index_path = index::path_for(&archive);
    let index = Index::load(&index_path).expect("the backup wrote the index");
    // What writing it costs (sort, compress, fsync), as the backup does it: the entries
    // pushed in the tar stream's order, then written.
    let mut in_tar_order: Vec<index::EntryRef> = index.iter().unwrap().collect();
    in_tar_order.sort_by_key(|e| e.header_offset);
    let mut builder = index::Builder::default();
    for e in &in_tar_order {
        builder.push(e);
    }
    drop(in_tar_order);
    let t = Instant::now();
    builder
        .write(&dir.join("again.index"), &index.sha256, &index.members)
        .unwrap();
    let index_secs = t.elapsed().as_secs_f64();
    let index_bytes = fs::metadata(&index_path).unwrap().len();
    println!(
        "snapshot of {} in one volume: {} entries, archive {}, backup {backup_secs:.2}s; \
         entry index {} ({:.2} % of the archive), written in {index_secs:.3}s ({:.2} % of \
         the backup)",
        human(input),
        index.len(),
        human(snap.size_bytes),
        human(index_bytes),
        100.0 * index_bytes as f64 / snap.size_bytes as f64,
        100.0 * index_secs / backup_secs
    );

    // What to ask for: the folder with the most children, a name that a few entries
    // hold, a ~100 KB file half-way through the archive, a folder of ~10 MB.
    let mut children: HashMap<&[u8], usize> = HashMap::new();
    let mut bytes_below: HashMap<&[u8], u64> = HashMap::new();
    for e in index.iter().unwrap() {
        *children.entry(index::split(e.path).0).or_default() += 1;
        if e.kind == EntryKind::File {
            let mut p: &[u8] = e.path;
            while let Some(i) = p.iter().rposition(|&b| b == b'/') {
                p = &p[..i];
                *bytes_below.entry(p).or_default() += e.size;
            }
        }
    }
    let (big, n) = children
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(f, n)| (String::from_utf8_lossy(f).into_owned(), *n))
        .unwrap();
    let file = small_file_half_way(&index);
    let file_path = String::from_utf8_lossy(file.path).into_owned();
    let name = String::from_utf8_lossy(file.split().1).into_owned();
    let query = name[..name.len().min(6)].to_string();
    let (folder, folder_bytes) = bytes_below
        .iter()
        .filter(|(f, _)| f.iter().filter(|&&b| b == b'/').count() >= 2)
        .min_by_key(|(_, b)| b.abs_diff(10 << 20))
        .map(|(f, b)| (String::from_utf8_lossy(f).into_owned(), *b))
        .unwrap();
    let id = snap.snapshot_id.clone();

    // Another folder, for a listing once the index is in memory.
    let other = String::from_utf8_lossy(file.split().0).into_owned();
    let (mut first_list, mut list, mut search, mut first_byte, mut tar_first, mut found) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        0,
    );
    for run in 0..runs {
        // A manager just opened: the first listing reads the index from the disk.
        drop(manager);
        manager = rt
            .block_on(BackupManager::open(config.clone()))
            .expect("open the manager");
        cold();
        let t = Instant::now();
        let page = rt
            .block_on(manager.files(&id, None, &big, None, None, 1000))
            .unwrap();
        first_list.push(t.elapsed().as_secs_f64());
        assert_eq!(page.entries.len(), n.min(1000));
        let t = Instant::now();
        rt.block_on(manager.files(&id, None, &other, None, None, 1000))
            .unwrap();
        list.push(t.elapsed().as_secs_f64());

        cold();
        let t = Instant::now();
        let hits = rt
            .block_on(manager.files(&id, None, "", Some(&query), None, 1000))
            .unwrap();
        search.push(t.elapsed().as_secs_f64());
        found = hits.entries.len();

        for tool in [run % 2, 1 - run % 2] {
            cold();
            let t = Instant::now();
            if tool == 0 {
                let Download::File(content) = rt
                    .block_on(manager.file_content(&id, None, &file_path, None))
                    .unwrap()
                else {
                    panic!("a file")
                };
                let mut reader = content.reader;
                let mut byte = [0u8; 1];
                reader.read_exact(&mut byte).unwrap();
                first_byte.push(t.elapsed().as_secs_f64());
            } else {
                crate::sh(&format!(
                    "tar -xzf {} --to-stdout '{file_path}' | head -c 1 > /dev/null",
                    archive.display()
                ));
                tar_first.push(t.elapsed().as_secs_f64());
            }
        }
    }
    println!(
        "list the largest folder ({n} entries, first page of 1000), the snapshot's first \
         listing (its index read from the disk): {:.1} ms; a later listing of another \
         folder: {:.2} ms; name search \"{query}\" over the snapshot ({found} hits): {:.1} ms",
        median(first_list) * 1e3,
        median(list) * 1e3,
        median(search) * 1e3
    );
    let (ours, peer) = (median(first_byte), median(tar_first));
    println!(
        "first byte of a {} file half-way through (the index in memory, the archive's \
         pages not): {:.1} ms, `tar -xzf --to-stdout` {:.2}s ({:.0}x)",
        human(file.size),
        ours * 1e3,
        peer,
        peer / ours
    );

    // A partial restore of the ~10 MB folder, in place.
    let bare = bare_stop_start(&app, runs);
    let (mut restores, mut downs, mut steps) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        cold();
        let selection = Selection {
            paths: vec![folder.clone()],
            target: PathsTarget::InPlace,
        };
        let t = Instant::now();
        let (restored, timed) = rt.block_on(async {
            let started = manager
                .start_restore_paths(&app.project, &id, &selection)
                .await
                .expect("partial restore starts");
            let timed = tokio::spawn(steps_of(started.job.clone()));
            let restored = started.done.await.unwrap().expect("partial restore");
            (restored, timed.await.unwrap())
        });
        steps.push(timed);
        restores.push(t.elapsed().as_secs_f64());
        downs.push(restored.downtime_ms as f64 / 1e3);
    }
    println!(
        "partial restore in place of a {} folder: {:.2}s, app down {:.2}s (a bare docker stop \
         + start: {bare:.2}s); beyond the stop and start: {:.2}s",
        human(folder_bytes),
        median(restores.clone()),
        median(downs),
        median(restores) - bare
    );
    print_steps("partial restore", &steps.iter().collect::<Vec<_>>());
    drop(manager);
    drop(rt);
    drop(app);
    if std::env::var_os("APPSNAP_BENCH_KEEP").is_none() {
        let _ = fs::remove_dir_all(dir);
    }
}
