//! The "bare" floor: the least a restarting supervisor can do. One process; SIGCHLD is
//! blocked and taken with `sigwaitinfo`, then `waitpid(-1, WNOHANG)` until empty, and each
//! reaped child is started again at once with `posix_spawn` (glibc: a vfork-style
//! clone + execve), its signal mask cleared. No delay, no throttle, no logging, no state
//! beyond the slot → pid table. Not a supervisor anyone should run — the floor.
//!
//! Run as `ham-bench __bare-sup N CHILD FIFO`: starts `CHILD svcNNN FIFO` for NNN = 001..N,
//! with this process's environment. SIGTERM/SIGINT: SIGTERM to every child, wait for all of
//! them, exit 0.

use std::ffi::{CString, c_char};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use crate::stamps::service_id;

fn cstring(b: &[u8]) -> CString {
    CString::new(b).expect("no NUL inside arguments or the environment")
}

/// NULL-terminated pointer array over `v` (which must outlive it).
fn ptrs(v: &[CString]) -> Vec<*mut c_char> {
    v.iter()
        .map(|s| s.as_ptr() as *mut c_char)
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect()
}

struct Spawner {
    path: CString,
    attr: libc::posix_spawnattr_t,
    _args: Vec<Vec<CString>>,
    argvs: Vec<Vec<*mut c_char>>,
    _env: Vec<CString>,
    envp: Vec<*mut c_char>,
}

impl Spawner {
    fn new(n: usize, child: &Path, fifo: &Path) -> Self {
        let path = cstring(child.as_os_str().as_bytes());
        let args: Vec<Vec<CString>> = (0..n)
            .map(|i| {
                vec![
                    path.clone(),
                    cstring(service_id(i).as_bytes()),
                    cstring(fifo.as_os_str().as_bytes()),
                ]
            })
            .collect();
        let argvs = args.iter().map(|a| ptrs(a)).collect();
        let env: Vec<CString> = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring(&kv)
            })
            .collect();
        let envp = ptrs(&env);
        // SAFETY: posix_spawnattr_t is plain data; posix_spawnattr_init initialises it
        // before any other use.
        let mut attr: libc::posix_spawnattr_t = unsafe { std::mem::zeroed() };
        // SAFETY: `attr` and the sigsets are valid and initialised by the *init/*emptyset
        // calls before use. Cleared mask: the child must not inherit our blocked SIGCHLD/
        // SIGTERM. Default SIGPIPE: Rust ignores it in this process.
        unsafe {
            libc::posix_spawnattr_init(&mut attr);
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::posix_spawnattr_setsigmask(&mut attr, &empty);
            let mut def: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut def);
            libc::sigaddset(&mut def, libc::SIGPIPE);
            libc::posix_spawnattr_setsigdefault(&mut attr, &def);
            libc::posix_spawnattr_setflags(
                &mut attr,
                (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
            );
        }
        Self {
            path,
            attr,
            _args: args,
            argvs,
            _env: env,
            envp,
        }
    }

    fn spawn(&self, i: usize) -> i32 {
        loop {
            let mut pid: libc::pid_t = 0;
            // SAFETY: `path` is NUL-terminated; `argvs[i]` and `envp` are NULL-terminated
            // arrays of pointers into CStrings owned by `self`; `attr` is initialised; no
            // file actions (null).
            let r = unsafe {
                libc::posix_spawn(
                    &mut pid,
                    self.path.as_ptr(),
                    std::ptr::null(),
                    &self.attr,
                    self.argvs[i].as_ptr(),
                    self.envp.as_ptr(),
                )
            };
            if r == 0 {
                return pid;
            }
            eprintln!(
                "bare-sup: posix_spawn: {}",
                std::io::Error::from_raw_os_error(r)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub fn run(n: usize, child: &Path, fifo: &Path) -> ! {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid; sigprocmask only
    // changes this (single-threaded) process's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let sp = Spawner::new(n, child, fifo);
    let mut pids: Vec<i32> = (0..n).map(|i| sp.spawn(i)).collect();
    loop {
        // SAFETY: `set` is initialised; a null siginfo pointer is allowed.
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if sig == libc::SIGCHLD {
            loop {
                let mut status = 0;
                // SAFETY: `status` is a valid, writable int; WNOHANG never blocks.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if let Some(i) = pids.iter().position(|&p| p == pid) {
                    pids[i] = sp.spawn(i);
                }
            }
        } else if sig == libc::SIGTERM || sig == libc::SIGINT {
            for &p in &pids {
                crate::sys::kill(p, libc::SIGTERM);
            }
            loop {
                // SAFETY: a null status pointer is allowed; blocks until a child exits.
                let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) };
                if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    break;
                }
            }
            std::process::exit(0);
        }
    }
}
