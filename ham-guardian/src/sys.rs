//! The system calls no safe wrapper covers. Each `unsafe` block states its invariant.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

pub mod kernel;
mod notify;
mod pidfd;
mod proc_connector;

pub use notify::{NotifyMessage, recv_notify};
pub use pidfd::{pidfd_exit_status, pidfd_info_exit_supported};
pub use proc_connector::ProcConnector;

/// Bytes written on the socket `fd` that its peer has not read yet (`SIOCOUTQ`, which is
/// `TIOCOUTQ`'s number; 0 when the kernel does not say).
pub fn unread_bytes(fd: impl AsFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one c_int through the pointer, which points to `n`, alive and
    // writable for the call; the descriptor is borrowed, so open.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCOUTQ, &raw mut n) };
    if r == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

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

// ---------------------------------------------------------------------------------------------
// Spawning with a release handshake
// ---------------------------------------------------------------------------------------------

/// Everything a child needs, prepared before `fork` so the child allocates nothing.
pub struct SpawnSpec {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
    uid: Option<u32>,
    gid: Option<u32>,
    /// `(source, target)`: the child gets `source` as fd `target` (without CLOEXEC).
    fds: Vec<(OwnedFd, RawFd)>,
    /// The cgroup (a directory descriptor) the child is created in (`clone3` with
    /// `CLONE_INTO_CGROUP`), if any.
    cgroup: Option<OwnedFd>,
    new_process_group: bool,
    exec_if_orphaned: bool,
    /// RLIMIT_CORE raised to its highest (the entity's `cores`).
    core_unlimited: bool,
    released_in: ReleaseRecord,
    /// `NAME=` and room for a pid: an environment variable the child sets to its own pid
    /// before `execve` (`WATCHDOG_PID`, which only the child can know).
    own_pid_var: Option<Vec<u8>>,
}

/// Where a forked child whose parent died before releasing it looks to decide whether it
/// was released all the same (the parent records the release before it happens).
#[derive(Clone, Copy)]
enum ReleaseRecord {
    /// Nowhere: an orphaned child never runs its program.
    None,
    /// An entity's record: released if it says `Running` with the child's pid.
    Entity(*const ham_core::layout::EntitySlot),
    /// A condition run's journal record: released if its command is `pid`, released.
    Run(*const ham_core::journal::RunSlot),
}

fn cstr(s: &str, what: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

impl SpawnSpec {
    pub fn new(
        path: &std::path::Path,
        argv: &[String],
        env: &[(String, String)],
    ) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        // A bare program name (a run-time definition's, not looked for when it was
        // defined) is looked up in the `PATH` it runs with now.
        let found;
        let path = if !path.as_os_str().is_empty() && !path.as_os_str().as_bytes().contains(&b'/') {
            let search = env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var("PATH").ok())
                .unwrap_or_default();
            found = search
                .split(':')
                .filter(|d| !d.is_empty())
                .map(|d| std::path::Path::new(d).join(path))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("`{}` not found in PATH ({search})", path.display()),
                    )
                })?;
            found.as_path()
        } else {
            path
        };
        Ok(Self {
            path: CString::new(path.as_os_str().as_bytes()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte")
            })?,
            argv: argv
                .iter()
                .map(|a| cstr(a, "argument"))
                .collect::<io::Result<_>>()?,
            envp: env
                .iter()
                .map(|(k, v)| cstr(&format!("{k}={v}"), "environment"))
                .collect::<io::Result<_>>()?,
            cwd: None,
            uid: None,
            gid: None,
            fds: Vec::new(),
            new_process_group: false,
            core_unlimited: false,
            exec_if_orphaned: false,
            released_in: ReleaseRecord::None,
            cgroup: None,
            own_pid_var: None,
        })
    }
    pub fn cwd(&mut self, dir: &std::path::Path) -> io::Result<&mut Self> {
        use std::os::unix::ffi::OsStrExt;
        self.cwd =
            Some(CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "cwd contains a NUL byte")
            })?);
        Ok(self)
    }
    pub fn user(&mut self, uid: Option<u32>, gid: Option<u32>) -> &mut Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    /// Gives the child `fd` as descriptor number `target`.
    pub fn fd(&mut self, fd: OwnedFd, target: RawFd) -> &mut Self {
        self.fds.push((fd, target));
        self
    }
    /// The child may dump a core of any size (RLIMIT_CORE at its hard limit, unlimited if
    /// this process may raise it).
    pub fn core_unlimited(&mut self) -> &mut Self {
        self.core_unlimited = true;
        self
    }

    pub fn new_process_group(&mut self) -> &mut Self {
        self.new_process_group = true;
        self
    }
    /// Runs the program even if the parent dies before releasing the child (for a Guardian,
    /// which then finds its HAM gone and takes over).
    pub fn exec_if_orphaned(&mut self) -> &mut Self {
        self.exec_if_orphaned = true;
        self
    }

    /// If the parent dies before releasing the child, the child runs its program only if
    /// `slot` (in the state segment, mapped shared and so the same in the child) already
    /// says `Running` with the child's pid: the release was recorded, and a successor
    /// will count the child's death. The mapping must outlive the fork (it is the HAM's
    /// state segment, mapped for the HAM's lifetime).
    pub fn released_in(&mut self, slot: &ham_core::layout::EntitySlot) -> &mut Self {
        self.released_in = ReleaseRecord::Entity(slot);
        self
    }

    /// Creates the child directly in the cgroup `dir` (an `O_DIRECTORY` descriptor):
    /// `clone3(CLONE_INTO_CGROUP)`, Linux 5.7, which costs nothing more than a fork, where
    /// moving it afterwards (`cgroup.procs`) can take milliseconds. [`Pending::in_cgroup`]
    /// says whether it worked (the caller moves the child otherwise).
    pub fn into_cgroup(&mut self, dir: OwnedFd) -> &mut Self {
        self.cgroup = Some(dir);
        self
    }

    /// [`released_in`](Self::released_in) for a command of a condition run: it runs if
    /// its journal record `slot` says the command was released.
    pub fn released_in_run(&mut self, slot: &ham_core::journal::RunSlot) -> &mut Self {
        self.released_in = ReleaseRecord::Run(slot);
        self
    }

    /// Forks a child that prepares itself (process group, empty signal mask, SIGPIPE at its
    /// default, descriptors, folder, user) and then waits, before `execve`, until
    /// [`Pending::release`] is called. If this process dies first the child sees the end of
    /// the release pipe and exits with status [`NOT_RELEASED`] without running anything:
    /// a program never runs unless its pid was recorded first.
    /// Gives the child `name=` its own pid in its environment.
    pub fn env_own_pid(&mut self, name: &str) -> &mut Self {
        let mut v = format!("{name}=").into_bytes();
        // Ten digits for any pid, and the terminating NUL.
        v.extend_from_slice(&[0u8; 11]);
        self.own_pid_var = Some(v);
        self
    }

    pub fn fork(mut self) -> io::Result<Pending> {
        let (go_r, go_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (st_r, st_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|e| e.as_ptr()).collect();
        let own_pid = match self.own_pid_var.as_mut() {
            Some(v) => {
                let at = v.len() - 11;
                envp.push(v.as_ptr().cast());
                // SAFETY: `at` is within `v` (its last 11 bytes are the digits' room).
                unsafe { v.as_mut_ptr().add(at) }
            }
            None => std::ptr::null_mut(),
        };
        envp.push(std::ptr::null());
        let fds: Vec<(RawFd, RawFd)> = self.fds.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect();
        let raw = ChildRaw {
            path: self.path.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: self.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            uid: self.uid,
            gid: self.gid,
            fds: &fds,
            new_process_group: self.new_process_group,
            exec_if_orphaned: self.exec_if_orphaned,
            core_unlimited: self.core_unlimited,
            nofile_soft: NOFILE_SOFT.load(std::sync::atomic::Ordering::Relaxed),
            released_in: self.released_in,
            go_r: go_r.as_raw_fd(),
            go_w: go_w.as_raw_fd(),
            st_r: st_r.as_raw_fd(),
            st_w: st_w.as_raw_fd(),
            own_pid,
        };
        // SAFETY: fork has no memory-safety preconditions. In the child we call only
        // `child_after_fork`, which performs async-signal-safe system calls on pointers
        // prepared above (they stay valid: the child's copy of memory is not freed) and
        // never returns.
        let (pid, in_cgroup) = match &self.cgroup {
            // clone3(CLONE_INTO_CGROUP) came with 5.7; before, the caller moves the child.
            // SAFETY: as for the fork below.
            Some(_) if !kernel::at_least(5, 7) => (unsafe { libc::fork() }, false),
            Some(dir) => match clone_into_cgroup(dir) {
                Ok(pid) => (pid, true),
                // Not supported here (or not that cgroup): an ordinary fork.
                // SAFETY: as for the fork below.
                Err(_) => (unsafe { libc::fork() }, false),
            },
            // SAFETY: see above.
            None => (unsafe { libc::fork() }, false),
        };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see above; we are the child of a fork.
            unsafe { child_after_fork(&raw) }
        }
        drop(go_r);
        drop(st_w);
        // The child is not reaped until we reap it, so the pidfd names exactly it.
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid).expect("fork returned a positive pid"),
            rustix::process::PidfdFlags::empty(),
        )?;
        Ok(Pending {
            pid,
            pidfd,
            go: go_w,
            status: st_r,
            in_cgroup,
        })
    }
}

/// `clone3(2)` with `CLONE_INTO_CGROUP`, otherwise like `fork`: the child starts in the
/// cgroup `dir`. Returns the child's pid in the parent, 0 in the child.
fn clone_into_cgroup(dir: &OwnedFd) -> io::Result<i32> {
    /// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2, 88 bytes).
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: dir.as_raw_fd() as u64,
    };
    // SAFETY: clone3 reads `size` bytes of `args`, which outlives the call; without
    // CLONE_VM the child gets a copy of our memory, as with fork, and the caller runs only
    // async-signal-safe code in it (`child_after_fork`).
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as i32)
}

/// Exit status of a child whose parent died before releasing it.
pub const NOT_RELEASED: i32 = 125;
/// Exit status of a child whose preparation or `execve` failed.
pub const EXEC_FAILED: i32 = 127;

struct ChildRaw<'a> {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    uid: Option<u32>,
    gid: Option<u32>,
    fds: &'a [(RawFd, RawFd)],
    new_process_group: bool,
    exec_if_orphaned: bool,
    core_unlimited: bool,
    /// RLIMIT_NOFILE's soft limit for the child (0: as it is).
    nofile_soft: u64,
    /// The record that says whether an orphaned child was released (see `released_in`).
    released_in: ReleaseRecord,
    go_r: RawFd,
    go_w: RawFd,
    st_r: RawFd,
    st_w: RawFd,
    /// Where the child writes its pid in decimal, NUL-terminated (11 bytes of room), or
    /// null.
    own_pid: *mut u8,
}

/// The child side of [`SpawnSpec::fork`].
///
/// # Safety
/// Must be called only in the child of a `fork`, with every pointer in `c` valid.
unsafe fn child_after_fork(c: &ChildRaw) -> ! {
    // SAFETY: only async-signal-safe system calls, on descriptors and NUL-terminated
    // strings prepared by the parent before fork; nothing allocates.
    unsafe {
        let fail = |st_w: RawFd| -> ! {
            let e = *libc::__errno_location();
            let b = e.to_ne_bytes();
            libc::write(st_w, b.as_ptr().cast(), b.len());
            libc::_exit(EXEC_FAILED)
        };
        // Our copies of the parent's ends: without closing go_w, the parent's death would
        // never look like an end of file.
        libc::close(c.go_w);
        libc::close(c.st_r);
        if c.new_process_group && libc::setpgid(0, 0) != 0 {
            fail(c.st_w);
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            fail(c.st_w);
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // The descriptor limit ham was started with, not the one it raised for itself.
        if c.nofile_soft > 0 {
            let mut lim: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur = c.nofile_soft.min(lim.rlim_max);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
        if c.core_unlimited {
            let mut lim = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_CORE, &lim) != 0
                && libc::getrlimit(libc::RLIMIT_CORE, &mut lim) == 0
            {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_CORE, &lim);
            }
        }
        // Move every source above the targets first, so no dup2 clobbers a later source
        // (above the highest target, not at a fixed number a low limit may not allow).
        let mut moved = [0 as RawFd; 16];
        let n = c.fds.len().min(moved.len());
        let floor = c.fds.iter().map(|&(_, t)| t + 1).max().unwrap_or(0);
        for (i, (src, _)) in c.fds.iter().take(n).enumerate() {
            let fd = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, floor);
            if fd < 0 {
                fail(c.st_w);
            }
            moved[i] = fd;
        }
        for (i, (_, target)) in c.fds.iter().take(n).enumerate() {
            if libc::dup2(moved[i], *target) < 0 {
                fail(c.st_w);
            }
        }
        if !c.cwd.is_null() && libc::chdir(c.cwd) != 0 {
            fail(c.st_w);
        }
        // Raw system calls, not glibc's setgroups/setgid/setuid: those change the ids of
        // every thread glibc knows of (its "setxid" broadcast), and after a raw `clone3`
        // glibc still lists the parent's threads (the doorbell thread): the child waited
        // for them for ever, before its execve, and the HAM with it. Here there is only
        // this thread, so the per-thread system call is the whole process.
        if let Some(gid) = c.gid {
            if libc::getuid() == 0 {
                libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>());
            }
            if libc::syscall(libc::SYS_setgid, gid) != 0 {
                fail(c.st_w);
            }
        }
        if let Some(uid) = c.uid {
            if libc::syscall(libc::SYS_setuid, uid) != 0 {
                fail(c.st_w);
            }
        }
        // Wait for the parent to record our pid.
        let mut b = 0u8;
        loop {
            let r = libc::read(c.go_r, (&raw mut b).cast(), 1);
            if r == 1 {
                break;
            }
            if r < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if c.exec_if_orphaned {
                break;
            }
            // Our HAM died before releasing us: run only if it had already recorded the
            // release (then a successor counts our death like any other).
            // SAFETY: the pointers of `released_in` point into the state segment's shared
            // mapping, inherited by fork at the same address (see `released_in`).
            let released = match c.released_in {
                ReleaseRecord::None => false,
                ReleaseRecord::Entity(slot) => (*slot).says_running(libc::getpid()),
                ReleaseRecord::Run(slot) => (*slot).says_released(libc::getpid()),
            };
            if released {
                break;
            }
            libc::_exit(NOT_RELEASED);
        }
        if !c.own_pid.is_null() {
            // Our pid, in decimal, into the room the parent left (our copy of its memory).
            let mut digits = [0u8; 10];
            let mut n = libc::getpid() as u32;
            let mut k = digits.len();
            loop {
                k -= 1;
                digits[k] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            let len = digits.len() - k;
            std::ptr::copy_nonoverlapping(digits.as_ptr().add(k), c.own_pid, len);
            *c.own_pid.add(len) = 0;
        }
        libc::execve(c.path, c.argv, c.envp);
        fail(c.st_w)
    }
}

/// A forked child waiting to be released into `execve`.
pub struct Pending {
    pub pid: i32,
    pub pidfd: OwnedFd,
    go: OwnedFd,
    status: OwnedFd,
    /// Created in the cgroup [`SpawnSpec::into_cgroup`] named.
    pub in_cgroup: bool,
}

impl Pending {
    /// Lets the child run its program and waits until `execve` succeeded (the status
    /// pipe closes) or failed (the child reports errno and exits with [`EXEC_FAILED`]).
    pub fn release(self) -> Result<(i32, OwnedFd), (io::Error, OwnedFd)> {
        // A child that already failed has closed its end; EPIPE is then expected.
        let _ = rustix::io::write(&self.go, b"g");
        drop(self.go);
        let mut buf = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match rustix::io::read(&self.status, &mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err((e.into(), self.pidfd)),
            }
        }
        if got == 0 {
            Ok((self.pid, self.pidfd))
        } else {
            Err((
                io::Error::from_raw_os_error(i32::from_ne_bytes(buf)),
                self.pidfd,
            ))
        }
    }
}

/// Whether `fd` is readable now (a look, no wait): a pidfd whose process exited, a
/// listener with a connection waiting.
pub fn readable(fd: &impl AsFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    matches!(
        rustix::event::poll(&mut fds, Some(&rustix::time::Timespec::default())),
        Ok(n) if n > 0
    )
}

/// Takes ownership of a descriptor inherited across `execve` (the Guardian's handoff fds),
/// after checking it is open, and marks it close-on-exec.
pub fn take_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only queries the descriptor table; an unused number gives EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above), was given to this process for exactly
    // this purpose by its parent, and nothing else in the process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    Ok(owned)
}

/// `WDIOC_SETTIMEOUT` (`_IOWR('W', 6, int)`, linux/watchdog.h): asks a watchdog device for a
/// timeout of `secs`; returns the timeout it chose. Fails (ENOTTY) on anything that is not a
/// watchdog device.
pub fn watchdog_set_timeout(fd: &impl AsRawFd, secs: i32) -> io::Result<i32> {
    const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;
    let mut v: libc::c_int = secs;
    // SAFETY: WDIOC_SETTIMEOUT reads and writes one c_int through the pointer, which points
    // at `v`, alive and exclusively borrowed for the call; other drivers reject the request
    // number without touching memory.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            WDIOC_SETTIMEOUT as _,
            &mut v as *mut libc::c_int,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Names this process as `ps` and `top` show it: `comm` (what `top` and `pidof` match) is
/// `ham`, and the command line becomes `title`, written over the original arguments in
/// place (setproctitle's way) when it fits in them; otherwise the command line is left as
/// it is. Returns whether the title was written.
pub fn set_title(title: &str) -> bool {
    let _ = rustix::thread::set_name(c"ham");
    let Some((start, end)) = crate::procfs::own_args_area() else {
        return false;
    };
    let len = end.saturating_sub(start);
    if start == 0 || title.len() + 1 > len || title.as_bytes().contains(&0) {
        return false;
    }
    let mut bytes = vec![0u8; len];
    bytes[..title.len()].copy_from_slice(title.as_bytes());
    // SAFETY: [arg_start, arg_end) is the block of argument strings the kernel copied onto
    // this process's stack at execve: mapped, writable, owned by this process for its life
    // and never freed. Nothing else writes it; readers (std::env::args, which reads the
    // NUL-terminated strings through the saved argv pointers) see NUL-terminated text
    // before and after, since the block ends with NULs. `bytes` is exactly `len` long.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), start as *mut u8, len);
    }
    true
}

/// Returns the heap's free memory to the kernel (glibc `malloc_trim(0)`): parsing the
/// configuration leaves freed pages behind that a long-lived supervisor should not keep.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `sigqueue(3)`: `signal` with an integer value to `pid`.
pub fn sigqueue(pid: i32, signal: i32, value: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let val = libc::sigval {
        sival_ptr: value as isize as *mut libc::c_void,
    };
    // SAFETY: sigqueue takes plain values (the sigval union is passed by value, here its
    // pointer member carrying the integer, as glibc's sigval_t is laid out); no memory is
    // shared with the call.
    let r = unsafe { libc::sigqueue(pid, signal, val) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The client segment's mapping, for the SIGBUS handler: base, length, descriptor.
/// RLIMIT_NOFILE's soft limit as ham found it: every process ham starts gets it back.
static NOFILE_SOFT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `setrlimit(RLIMIT_NOFILE)`: raises the soft limit on descriptors to the hard one (ham
/// holds a pidfd per entity, and the Guardian a copy of each), remembering the soft limit
/// it found for the processes it starts. Returns (found, now).
pub fn raise_nofile() -> (u64, u64) {
    let Ok((soft, hard)) = rlimit_nofile() else {
        return (0, 0);
    };
    NOFILE_SOFT.store(soft, std::sync::atomic::Ordering::Relaxed);
    let lim = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we pass by reference.
    if soft < hard && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        return (soft, hard);
    }
    (soft, soft)
}

/// `getrlimit(RLIMIT_NOFILE)`: (soft, hard).
pub fn rlimit_nofile() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass by reference.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

static GUARD_BASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static GUARD_LEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static GUARD_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
/// Times the handler grew the object back (read by the loop to repair the header).
pub static GUARD_REPAIRS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Pages of the client segment the handler replaced by private zero pages, there being no
/// memory for them (read by the loop, which says so).
pub static GUARD_LOST_PAGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Any client may shrink the client segment (it is a file it can write), and a shrunk
/// mapping raises SIGBUS in whoever touches it. For the HAM that must not be fatal: this
/// handler grows the object back to its size (`ftruncate`, async-signal-safe) when the
/// faulting address is inside `[base, base + len)`, and the access is retried on zeroed pages
/// (the ring's consumer then repairs what it finds, and counts it). Any other SIGBUS is
/// re-raised with the default action.
pub fn guard_mapping(base: usize, len: usize, fd: RawFd) -> io::Result<()> {
    use std::sync::atomic::Ordering::SeqCst;
    GUARD_BASE.store(base, SeqCst);
    GUARD_LEN.store(len, SeqCst);
    GUARD_FD.store(fd, SeqCst);
    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        use std::sync::atomic::Ordering::SeqCst;
        // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; si_addr is
        // the faulting address for SIGBUS.
        let addr = unsafe { (*info).si_addr() } as usize;
        let (base, len, fd) = (
            GUARD_BASE.load(SeqCst),
            GUARD_LEN.load(SeqCst),
            GUARD_FD.load(SeqCst),
        );
        if fd >= 0 && addr >= base && addr < base + len {
            let page = addr & !(4095usize);
            // SAFETY: ftruncate and fallocate are plain system calls on the segment's
            // descriptor, kept open by the ClientSegment for as long as the guard is set.
            let grown = unsafe {
                libc::ftruncate(fd, len as libc::off_t) == 0
                    && libc::fallocate(fd, 0, (page - base) as libc::off_t, 4096) == 0
            };
            if grown {
                GUARD_REPAIRS.fetch_add(1, SeqCst);
                return; // the faulting access runs again, on the grown object
            }
            // No memory left for the page (/dev/shm full): put a private zero page in its
            // place, so the access completes instead of faulting for ever; the ring's
            // consumer reads zeros there (nothing published) and the loop says so.
            // SAFETY: MAP_FIXED over one page of our own mapping of the client segment,
            // which only ham's atomics read; nothing holds a reference into that page
            // across this handler.
            let p = unsafe {
                libc::mmap(
                    page as *mut libc::c_void,
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                GUARD_LOST_PAGES.fetch_add(1, SeqCst);
                return;
            }
        }
        // SAFETY: resetting SIGBUS to its default and raising it again is what an
        // unhandled SIGBUS would have done.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
    // SAFETY: a zeroed sigaction is a valid starting value; the handler above is an
    // `extern "C"` function of the SA_SIGINFO signature, and only async-signal-safe calls
    // (atomics, ftruncate, signal, raise) happen in it.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

// -- sd_notify datagrams ------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(script: &str) -> SpawnSpec {
        SpawnSpec::new(
            std::path::Path::new("/bin/sh"),
            &["sh".into(), "-c".into(), script.into()],
            &[("PATH".into(), "/usr/bin:/bin".into())],
        )
        .unwrap()
    }

    fn wait_status(pidfd: &OwnedFd) -> rustix::process::WaitIdStatus {
        rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn released_child_runs_its_program() {
        let p = spec("exit 7").fork().unwrap();
        let (_, pidfd) = p.release().map_err(|(e, _)| e).unwrap();
        assert_eq!(wait_status(&pidfd).exit_status(), Some(7));
    }

    #[test]
    fn unreleased_child_never_runs_its_program() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let p = spec(&format!("touch {}", marker.display())).fork().unwrap();
        let Pending {
            pidfd, go, status, ..
        } = p;
        drop(go); // as if ham died before releasing it
        drop(status);
        assert_eq!(wait_status(&pidfd).exit_status(), Some(NOT_RELEASED));
        assert!(!marker.exists());
    }

    #[test]
    fn exec_failure_is_reported() {
        let p = SpawnSpec::new(std::path::Path::new("/nonexistent/x"), &["x".into()], &[])
            .unwrap()
            .fork()
            .unwrap();
        let (err, pidfd) = p.release().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(wait_status(&pidfd).exit_status(), Some(EXEC_FAILED));
    }

    #[test]
    fn exit_status_of_a_reaped_process_through_its_pidfd() {
        if !pidfd_info_exit_supported() {
            return; // nothing to check on this kernel; ham falls back (status "unknown")
        }
        let p = spec("exit 9").fork().unwrap();
        let (_, pidfd) = p.release().map_err(|(e, _)| e).unwrap();
        let copy = pidfd.try_clone().unwrap();
        wait_status(&pidfd); // reaped here, as another process (init) would
        assert_eq!(pidfd_exit_status(&copy).unwrap(), Some(9 << 8));
    }
}
