//! Link settings of the binaries (nothing is generated).
//!
//! Relative relocations are packed (DT_RELR) where the C library can apply
//! them: the position-independent binary carries ~75,000 of them, 1.8 MB as
//! plain `RELA` entries that the loader reads at every start, and that stay
//! resident. Packed, they take 16 KB: the worker starts with ~2 MiB less
//! resident memory (BENCHMARKS.md, "Batches bounded in bytes, packed
//! relocations").
//!
//! glibc applies DT_RELR from 2.36 on, and such a binary refuses to start on an
//! older one ("version `GLIBC_ABI_DT_RELR' not found"). So the flag is given
//! only to native builds on glibc ≥ 2.36 (Debian 12, Ubuntu 24.04, the
//! Dockerfile's images); a binary built there and meant for an older system
//! (RHEL 9 and Amazon Linux 2023 ship 2.34) is built with
//! `WFM_PORTABLE_LINK=1`, or on that system.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WFM_PORTABLE_LINK");
    let native = env::var("HOST").ok() == env::var("TARGET").ok();
    let portable = env::var_os("WFM_PORTABLE_LINK").is_some_and(|v| v != "0");
    if native && !portable && host_glibc().is_some_and(|version| version >= (2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The version of the glibc this build script runs on (the target's, in a
/// native build).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn host_glibc() -> Option<(u32, u32)> {
    unsafe extern "C" {
        fn gnu_get_libc_version() -> *const std::ffi::c_char;
    }
    // SAFETY: glibc returns a static, NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) };
    let mut parts = version.to_str().ok()?.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn host_glibc() -> Option<(u32, u32)> {
    None
}
