//! The allocator, set once when a process starts.
//!
//! glibc gives each thread that allocates under contention an arena of its own, up to 8
//! per core. A copy to a repository runs rustic's pipeline: many threads, each passing
//! megabytes of chunks and packs to the next. Memory freed in one arena is not reused by
//! another, so peak RSS grows with the number of arenas, not with the work. Measured
//! (`appsnap-bench --offsite`, 300 MB, release build, 2 cores): 316 MB peak with glibc's
//! default, 202 MB with 2 arenas, at the same speed. A fixed `mmap` threshold was also
//! tried: 180 MB, but the copy took twice as long (each chunk buffer became an `mmap`).

/// Limits glibc's malloc arenas to the number of CPUs (at least 2), unless the operator
/// chose a limit (`MALLOC_ARENA_MAX`, or `arena_max` in `GLIBC_TUNABLES`). Call it first
/// in `main`, before any thread starts; elsewhere than glibc it does nothing.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        if chosen {
            return;
        }
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cpus.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt sets one of malloc's parameters; it takes no pointer and is
        // called before other threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}
