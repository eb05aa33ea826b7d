//! The `wfm-worker` binary. The program is [`wfm_worker::entry`].
#![forbid(unsafe_code)]

/// jemalloc instead of glibc's malloc: each delivery's ~2 KB body is
/// allocated on lapin's I/O thread and freed on a runtime thread, and glibc
/// serves that size from its large bins after consolidating its fast bins;
/// jemalloc's thread caches and size classes cost ~1.2 µs less worker CPU per
/// checkin (BENCHMARKS.md, "jemalloc"). Its run-time options are compiled in
/// from `.cargo/config.toml` (one arena, for the RSS budget) and can be
/// overridden with `_RJEM_MALLOC_CONF`.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    wfm_worker::entry::main()
}
