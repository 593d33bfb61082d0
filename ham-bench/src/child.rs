//! `ham-bench-child`: the supervised dummy service of the restart benchmarks (the Rust
//! counterpart of the peers' `anchor-child.c`).
//!
//! The first statement of `main` reads CLOCK_MONOTONIC. The process then writes one line
//! `"<id> <pid> <mono_ns>\n"` (shorter than PIPE_BUF, so atomic) to the report FIFO and
//! sleeps in `pause()` forever.
//!
//! * id: `argv[1]`, else the base name of the working directory (s6 and runsv run `./run`
//!   in the service directory, and `./run` can be a symlink to this binary);
//! * FIFO: `argv[2]`, else `$ANCHOR_FIFO`; with neither, nothing is reported.
//!
//! It also signals s6 readiness when `./notification-fd` exists in its folder, after
//! the stamp has been taken and reported.
//!
//! `#![no_main]`: the C `main` is ours, so no Rust runtime set-up runs before the stamp.
#![no_main]

use std::ffi::{CStr, CString, c_char, c_int};

#[unsafe(no_mangle)]
extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes into it.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let stamp = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;

    let arg = |i: c_int| -> Option<&CStr> {
        if i >= argc || argv.is_null() {
            return None;
        }
        // SAFETY: the C runtime passes `argc` valid pointers in `argv`, each to a
        // NUL-terminated string that lives as long as the process; `i < argc`.
        Some(unsafe { CStr::from_ptr(*argv.add(i as usize)) })
    };

    let id: Vec<u8> = match arg(1) {
        Some(s) => s.to_bytes().to_vec(),
        None => std::env::current_dir()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.as_encoded_bytes().to_vec()))
            .unwrap_or_else(|| b"unknown".to_vec()),
    };
    let fifo: Option<CString> = match arg(2) {
        Some(s) => Some(s.to_owned()),
        None => {
            std::env::var_os("ANCHOR_FIFO").and_then(|v| CString::new(v.into_encoded_bytes()).ok())
        }
    };

    if let Some(fifo) = fifo {
        let mut line = id;
        line.extend_from_slice(format!(" {} {stamp}\n", std::process::id()).as_bytes());
        // SAFETY: `fifo` is a NUL-terminated path; open has no other preconditions.
        let fd = unsafe {
            libc::open(
                fifo.as_ptr(),
                libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: `line` is a live buffer of `line.len()` bytes; `fd` is ours and is
            // closed exactly once.
            unsafe {
                libc::write(fd, line.as_ptr().cast(), line.len());
                libc::close(fd);
            }
        }
    }

    // s6-supervise runs `./run SERVICENAME`, so readiness cannot hinge on argc: notify
    // whenever the working folder has a `notification-fd` (only an s6 service folder does).
    notify_s6_readiness();
    loop {
        // SAFETY: pause(2) has no preconditions; it returns only after a caught signal.
        unsafe { libc::pause() };
    }
}

/// s6 readiness: `./notification-fd` names the descriptor to write a newline to.
fn notify_s6_readiness() {
    let Ok(text) = std::fs::read_to_string("notification-fd") else {
        return;
    };
    if let Ok(fd) = text.trim().parse::<c_int>() {
        // SAFETY: writing one byte from a static buffer to a descriptor number; an invalid
        // descriptor only makes write fail with EBADF.
        unsafe { libc::write(fd, b"\n".as_ptr().cast(), 1) };
    }
}
