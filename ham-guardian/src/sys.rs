//! The system calls no safe wrapper covers. Each `unsafe` block states its invariant.
#![allow(unsafe_code)]

use std::io;

/// The pid of a child that has exited and is waiting to be reaped, without reaping it
/// (`waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT)`). `Ok(None)` when there is none.
pub fn peek_exited_child() -> io::Result<Option<i32>> {
    // SAFETY: siginfo_t is plain data for which all-zero is a valid value; waitid writes
    // into it and nothing else.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t that outlives the call.
    let r = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r == -1 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ECHILD) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: waitid returned 0 and filled `info` for a SIGCHLD-class event (or left it
    // zeroed with WNOHANG), so reading si_pid is reading the field the kernel wrote.
    let pid = unsafe { info.si_pid() };
    Ok((pid != 0).then_some(pid))
}

/// Makes `cmd`'s child start with an empty signal mask and SIGPIPE at its default
/// disposition. ham blocks the signals it reads through its signalfd and ignores SIGPIPE;
/// without this a supervised program would inherit both and could not be stopped with
/// SIGTERM. (std's spawn keeps the parent's mask.)
pub fn reset_signals_in_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // sigemptyset, sigprocmask and signal, all async-signal-safe; it touches no memory
    // shared with other threads and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        });
    }
}
