//! `--console`: the web console's apps page as a browser gets it, over a real socket
//! from the real router, at 50 apps and 10,000 snapshots (the catalog's files empty,
//! Docker asked for its apps for real): the time to the last byte, median and best of
//! `runs`, and the page's weight with its assets (HTML, CSS, script, icon, uncompressed).
//! Goals (issue 25): under 200 ms, under 150 KB.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use crate::api::median;

pub fn run(dir: &Path, runs: usize) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let manager = rt.block_on(crate::catalog_10k(&dir.join("root"), 50));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = appsnap::api::router(manager);
    rt.spawn(async move { axum::serve(listener, app).await });

    let get = |path: &str| -> Vec<u8> {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{path}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
        let body = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        answer.split_off(body)
    };
    get("/"); // the first request pays for Docker's first answer and the page's allocations
    let mut times = Vec::new();
    let mut html = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        html = get("/");
        times.push(t.elapsed().as_secs_f64());
    }
    let rows = String::from_utf8_lossy(&html).matches("<tr>").count();
    assert!(rows > 50, "the page lists the 50 apps ({rows} rows)");
    let weight = html.len()
        + get("/assets/console.css").len()
        + get("/assets/console.js").len()
        + get("/assets/favicon.svg").len();
    times.sort_by(f64::total_cmp);
    println!(
        "console apps page, 50 apps / 10,000 snapshots: median {:.1} ms, best {:.1} ms over {runs} runs (goal < 200 ms); \
         weight with its assets {:.1} KB (goal < 150 KB)",
        median(times.clone()) * 1e3,
        times[0] * 1e3,
        weight as f64 / 1000.0
    );
}
