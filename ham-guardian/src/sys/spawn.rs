//! Starting a program with a release handshake: the child prepares itself, then waits
//! before `execve` until the parent has recorded its pid (see `daemon::spawn`).
//!
//! On x86-64 the child is created by `clone3(CLONE_VM)`, as `posix_spawn` creates one: it
//! shares this process's memory on a stack of its own, so nothing is copied for it (no
//! page tables, no page copied on write) and its `execve` has nothing to unmap. A spawn
//! then costs the same whatever the size of the HAM. Sharing memory binds the child:
//! - it makes raw system calls only: no libc function (they write `errno`, in this
//!   thread's TLS, which the child shares) and nothing that allocates;
//! - everything it reads (paths, arguments, descriptors, its stack) is owned by the
//!   [`Pending`] until the child is past `execve` or dead, which the end of its status
//!   pipe says: a `Pending` dropped unreleased waits for that too;
//! - it starts with every signal blocked (blocked here around the `clone3`) and sets
//!   every signal that has a handler here back to its default before it unblocks any,
//!   so no handler of this process ever runs on the child's stack;
//! - the kernel gives it no rseq area and no robust-futex list (`CLONE_VM`), so it writes
//!   into this process's memory only what it is told to (its pid, for `env_own_pid`).
//!
//! Where the kernel has `close_range(CLOSE_RANGE_UNSHARE)` (5.9) the child also shares our
//! descriptor table (`CLONE_FILES`) and, before it touches any descriptor, takes a table
//! of its own holding only our descriptors below the highest it needs. The kernel would
//! otherwise copy our whole table into every child (a pidfd per entity: 10,000 at 10,000
//! entities), and the child's `execve` would close each copy again. Long-lived descriptors
//! (pidfds) are kept high ([`high_fd`]) so that what a child needs lies below them. Until
//! the child says on its status pipe that it has its own table, our copies of its pipe
//! ends stay open: closed earlier, they would be closed for the child too.
//!
//! A HAM killed while the child waits takes only its own threads down: the child keeps
//! the memory alive, reads the end of the release pipe and decides as before (exit, or
//! run if the release was recorded). A HAM that dumps core or is chosen by the OOM killer
//! takes the child with it (the kernel kills every process sharing that memory); the
//! child then dies before running anything, or after its release was recorded, and a
//! successor counts that death like any other.
//!
//! Elsewhere (another architecture, or a kernel or seccomp filter that refuses `clone3`)
//! the child is forked; the same child code runs in its copy of memory.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::kernel;

/// A descriptor a child is given: one of the spec's own, or one that outlives any child.
enum FdSource {
    Owned(OwnedFd),
    Static(BorrowedFd<'static>),
}

impl AsRawFd for FdSource {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Self::Owned(fd) => fd.as_raw_fd(),
            Self::Static(fd) => fd.as_raw_fd(),
        }
    }
}

/// Everything a child needs, prepared before it is created so the child allocates nothing.
pub struct SpawnSpec {
    path: CString,
    argv: Vec<CString>,
    /// The environment every child shares (see [`SpawnSpec::env_shared`]), then this one's.
    env_shared: Vec<&'static std::ffi::CStr>,
    envp: Vec<CString>,
    cwd: Option<CString>,
    uid: Option<u32>,
    gid: Option<u32>,
    /// `(source, target)`: the child gets `source` as fd `target` (without CLOEXEC).
    fds: Vec<(FdSource, RawFd)>,
    /// The cgroup (a directory descriptor) the child is created in (`clone3` with
    /// `CLONE_INTO_CGROUP`), if any.
    cgroup: Option<OwnedFd>,
    new_process_group: bool,
    exec_if_orphaned: bool,
    /// Nanoseconds after which a child not yet released runs its program all the same
    /// (0: it waits for ever). See [`SpawnSpec::release_within`].
    release_within_ns: u64,
    /// The release and status pipes, if made ahead ([`SpawnSpec::make_pipes_now`]).
    pipes: Option<Pipes>,
    /// Moved off our CPU until released (see [`apart`]).
    apart: bool,
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
            env_shared: Vec::new(),
            cwd: None,
            uid: None,
            gid: None,
            fds: Vec::new(),
            new_process_group: false,
            core_unlimited: false,
            exec_if_orphaned: false,
            release_within_ns: 0,
            apart: true,
            released_in: ReleaseRecord::None,
            cgroup: None,
            own_pid_var: None,
            pipes: None,
        })
    }
    /// Makes the child's release and status pipes now rather than at [`fork`](Self::fork):
    /// a spec prepared long before its fork (the next Guardian's, made while a Guardian
    /// watches) keeps two system calls off the takeover that forks it.
    pub fn make_pipes_now(&mut self) -> io::Result<&mut Self> {
        if self.pipes.is_none() {
            self.pipes = Some(Pipes::new()?);
        }
        Ok(self)
    }
    /// Whether the child is moved off our CPU until its release (the default; see
    /// [`apart`]). Not worth it while other children start: they would all queue on the
    /// other CPUs, held there until each has run once.
    pub fn apart(&mut self, yes: bool) -> &mut Self {
        self.apart = yes;
        self
    }

    /// Puts `vars` (`NAME=value`, built once and never freed) first in the environment,
    /// before the variables given to [`SpawnSpec::new`]: an environment every child
    /// inherits is not formatted again for each.
    pub fn env_shared(
        &mut self,
        vars: impl IntoIterator<Item = &'static std::ffi::CStr>,
    ) -> &mut Self {
        self.env_shared = vars.into_iter().collect();
        self
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
        self.fds.push((FdSource::Owned(fd), target));
        self
    }
    /// [`fd`](Self::fd) for a descriptor open for as long as this process runs (`/dev/null`
    /// for every child's input): given as it is, not duplicated for the child and closed
    /// again at each spawn.
    pub fn fd_static(&mut self, fd: &'static OwnedFd, target: RawFd) -> &mut Self {
        self.fds.push((FdSource::Static(fd.as_fd()), target));
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

    /// The child runs its program `ns` nanoseconds after it was created if it was not
    /// released by then, as if released (with [`exec_if_orphaned`](Self::exec_if_orphaned):
    /// a process that must run whatever its parent does, held back only while the parent
    /// is busy; see [`Pending::hold`]).
    pub fn release_within(&mut self, ns: u64) -> &mut Self {
        self.release_within_ns = ns;
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

    /// Gives the child `name=` its own pid in its environment.
    pub fn env_own_pid(&mut self, name: &str) -> &mut Self {
        let mut v = format!("{name}=").into_bytes();
        // Ten digits for any pid, and the terminating NUL.
        v.extend_from_slice(&[0u8; 11]);
        self.own_pid_var = Some(v);
        self
    }

    /// Creates a child that prepares itself (process group, signals at their defaults,
    /// descriptors, limits, folder, user) and then waits, before `execve`, until
    /// [`Pending::release`] is called. If this process dies first the child sees the end
    /// of the release pipe and exits with status [`NOT_RELEASED`] without running anything,
    /// unless its record says it was released: a program never runs unless its pid was
    /// recorded first.
    pub fn fork(self) -> io::Result<Pending> {
        self.create(true)
    }

    /// [`fork`](Self::fork), sharing memory with the child only if `share` (and the kernel
    /// lets us): the tests run both ways.
    fn create(mut self, share: bool) -> io::Result<Pending> {
        let Pipes {
            go_r,
            go_w,
            st_r,
            st_w,
        } = match self.pipes.take() {
            Some(p) => p,
            None => Pipes::take_spare().map_or_else(Pipes::new, Ok)?,
        };
        let share_files = share && can_share_files();
        let prepared = Prepared::new(self, &go_r, &go_w, &st_r, &st_w, share_files);
        let raw: *const ChildRaw = &raw const prepared.raw;
        let want_cgroup = prepared.spec.cgroup.as_ref().map(AsRawFd::as_raw_fd);
        // Every signal blocked across the clone: the child starts with them all blocked.
        let all = SigMask::block_all()?;
        let before = boottime_ns();
        let made = share
            .then(|| shared_memory_child(raw, want_cgroup))
            .flatten();
        let made = match made {
            Some(r) => r,
            None => forked_child(raw, want_cgroup),
        };
        let after = boottime_ns();
        drop(all);
        let made = made?;
        if let Some(ours) = prepared.affinity.as_deref() {
            apart::move_off_this_cpu(made.pid, ours);
        }
        let pidfd = match made.pidfd {
            Some(fd) => fd,
            // The child is not reaped until we reap it, so the pidfd names exactly it. If
            // it cannot be had, the child is let go unreleased (it exits) and waited for.
            None => match rustix::process::pidfd_open(
                rustix::process::Pid::from_raw(made.pid).expect("fork returned a positive pid"),
                rustix::process::PidfdFlags::empty(),
            ) {
                Ok(fd) => fd,
                Err(e) => {
                    // A forked child has a table of its own and never shares ours.
                    drop((go_r, st_w));
                    drop(Child::new(go_w, st_r, prepared, made.stack, None));
                    return Err(e.into());
                }
            },
        };
        let pidfd = high_fd(pidfd);
        // Our copies of the child's ends. A child sharing our table needs them there until
        // it has a table of its own (it says so on the status pipe): kept until then, with
        // a pidfd to see it die first (see `Child::pump`).
        let shared = if share_files {
            match pidfd.try_clone() {
                Ok(watch) => Some(SharedTable {
                    _go_r: go_r,
                    _st_w: st_w,
                    watch,
                }),
                Err(e) => {
                    // Without one the child's end could not be told: let it go unreleased
                    // (it exits) and wait for that: killed, waited for (then it holds no
                    // table), and only then our copies closed.
                    let _ =
                        rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
                    let _ = rustix::process::waitid(
                        rustix::process::WaitId::PidFd(pidfd.as_fd()),
                        rustix::process::WaitIdOptions::EXITED,
                    );
                    drop((go_r, st_w));
                    drop(Child::new(go_w, st_r, prepared, made.stack, None));
                    return Err(e);
                }
            }
        } else {
            drop((go_r, st_w));
            None
        };
        let child = Child::new(go_w, st_r, prepared, made.stack, shared);
        Ok(Pending {
            pid: made.pid,
            pidfd,
            start_time: start_time_between(before, after),
            in_cgroup: made.in_cgroup,
            child,
        })
    }
}

/// A child's release pipe (it reads `go_r`) and status pipe (it writes `st_w`), all four
/// ends close-on-exec.
struct Pipes {
    go_r: OwnedFd,
    go_w: OwnedFd,
    st_r: OwnedFd,
    st_w: OwnedFd,
}

thread_local! {
    /// One set of pipes made ahead by [`stock_pipes`], for the next child.
    static SPARE_PIPES: std::cell::Cell<Option<Pipes>> = const { std::cell::Cell::new(None) };
}

/// Makes the pipes of the next child now, if none are made ahead, so that its start does
/// not (two `pipe2` calls: about 20 µs of the restart's path on the test machine). For a
/// loop about to sleep: four descriptors kept, all close-on-exec like the rest of ours.
pub fn stock_pipes() {
    SPARE_PIPES.with(|spare| {
        let have = spare.take();
        spare.set(have.or_else(|| Pipes::new().ok()));
    });
}

impl Pipes {
    fn take_spare() -> Option<Self> {
        SPARE_PIPES.with(std::cell::Cell::take)
    }

    fn new() -> io::Result<Self> {
        let (go_r, go_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // Non-blocking: a child sharing our table first says it has its own, and the loop
        // reads that without waiting for the rest (see `Execing::ready`).
        let (st_r, st_w) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        Ok(Self {
            go_r,
            go_w,
            st_r,
            st_w,
        })
    }
}

/// The memory a child reads until it is past `execve`: the spec (strings, descriptors) and
/// the tables of pointers into it. Boxed, so that its address does not change while the
/// child holds it.
struct Prepared {
    spec: SpawnSpec,
    /// Kept for the pointers in `raw`, never read here.
    _argv: Vec<*const libc::c_char>,
    _envp: Vec<*const libc::c_char>,
    _fds: Vec<(RawFd, RawFd)>,
    /// The CPUs the child may run on once released (ours when it was created), if it is
    /// to be moved off our CPU until then (see [`apart`]).
    affinity: Option<Box<libc::cpu_set_t>>,
    raw: ChildRaw,
}

impl Prepared {
    fn new(
        mut spec: SpawnSpec,
        go_r: &OwnedFd,
        go_w: &OwnedFd,
        st_r: &OwnedFd,
        st_w: &OwnedFd,
        share_files: bool,
    ) -> Box<Self> {
        let mut argv: Vec<*const libc::c_char> = spec.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = spec
            .env_shared
            .iter()
            .map(|e| e.as_ptr())
            .chain(spec.envp.iter().map(|e| e.as_ptr()))
            .collect();
        let own_pid = match spec.own_pid_var.as_mut() {
            Some(v) => {
                let at = v.len() - 11;
                envp.push(v.as_ptr().cast());
                // SAFETY: `at` is within `v` (its last 11 bytes are the digits' room).
                unsafe { v.as_mut_ptr().add(at) }
            }
            None => std::ptr::null_mut(),
        };
        envp.push(std::ptr::null());
        // A child that runs on its own once a bound has passed (`release_within`) could
        // run before we move it, and never get our CPUs back: not moved.
        let affinity = (spec.apart && spec.release_within_ns == 0)
            .then(apart::our_cpus)
            .flatten()
            .map(Box::new);
        let fds: Vec<(RawFd, RawFd)> = spec.fds.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect();
        // The child keeps our descriptors below the first one above all it needs (the
        // standard three at least); the rest of our table (a pidfd per entity) it never
        // copies.
        let unshare_below = if share_files {
            fds.iter()
                .map(|&(src, _)| src)
                .chain([go_r.as_raw_fd(), st_w.as_raw_fd(), 2])
                .max()
                .map_or(0, |m| m as u32 + 1)
        } else {
            0
        };
        // The pointers point into heap buffers (the CStrings', the vectors'), which moving
        // `spec` and the vectors into the box below does not move.
        let raw = ChildRaw {
            path: spec.path.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: spec.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            uid: spec.uid,
            gid: spec.gid,
            fds: fds.as_ptr(),
            nfds: fds.len().min(MAX_FDS),
            new_process_group: spec.new_process_group,
            exec_if_orphaned: spec.exec_if_orphaned,
            release_within_ns: spec.release_within_ns,
            core_unlimited: spec.core_unlimited,
            nofile_soft: super::NOFILE_SOFT.load(Ordering::Relaxed),
            nofile_hard: super::NOFILE_HARD.load(Ordering::Relaxed),
            reset_signals: reset_signals(),
            released_in: spec.released_in,
            go_r: go_r.as_raw_fd(),
            go_w: go_w.as_raw_fd(),
            st_r: st_r.as_raw_fd(),
            st_w: st_w.as_raw_fd(),
            own_pid,
            unshare_below,
            affinity: affinity
                .as_deref()
                .map_or(std::ptr::null(), |m| m as *const libc::cpu_set_t),
        };
        Box::new(Self {
            spec,
            _argv: argv,
            _envp: envp,
            _fds: fds,
            affinity,
            raw,
        })
    }
}

/// `CLOCK_BOOTTIME` now, in nanoseconds: the clock of a process's start time.
fn boottime_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// The start time (field 22 of `/proc/PID/stat`) of a process created between `before`
/// and `after` (`CLOCK_BOOTTIME`), when both fall in the same clock tick; `None` otherwise
/// (about once in a hundred spawns: then it is read from `/proc`).
///
/// The kernel stamps a new task with the boot-time clock inside `clone3`
/// (`start_boottime`), and `/proc` shows it in ticks of `USER_HZ`, truncated
/// (`nsec_to_clock_t`), offset by the reader's time namespace as `CLOCK_BOOTTIME` is here.
/// So two readings of that clock around the call that fall in one tick name the tick
/// exactly, with no `/proc` lookup on the spawn's path.
fn start_time_between(before: u64, after: u64) -> Option<u64> {
    static TICK_NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let tick = *TICK_NS.get_or_init(|| {
        // SAFETY: sysconf only reads a system parameter.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // Exact only where a tick is a whole number of nanoseconds (USER_HZ 100).
        match u64::try_from(hz) {
            Ok(hz) if hz > 0 && 1_000_000_000 % hz == 0 => 1_000_000_000 / hz,
            _ => 0,
        }
    });
    (tick > 0 && before <= after && before / tick == after / tick).then(|| before / tick)
}

/// A child waiting for its release is moved off the CPU its parent runs on, where the
/// parent has another: it prepares itself and starts its program there, in parallel,
/// instead of waiting for the parent (which goes on after the release: the Guardian's
/// pidfd, the logs, the next death) to leave the CPU. A kernel that packs tasks onto few
/// CPUs (as this benchmark's virtual machine does) placed the new child on its parent's
/// CPU in two restarts out of three, where it waited 160 µs at the median before it ran.
/// The child takes its parent's CPUs back once released, before `execve`.
mod apart {
    /// The CPUs we may run on, if there are two or more.
    pub(super) fn our_cpus() -> Option<libc::cpu_set_t> {
        // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let r = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
            (r == 0 && libc::CPU_COUNT(&set) >= 2).then_some(set)
        }
    }

    /// Moves waiting child `pid` to `ours` less the CPU we run on now (nothing if that
    /// leaves none). A failure leaves it where it is: only where it runs first changes.
    pub(super) fn move_off_this_cpu(pid: i32, ours: &libc::cpu_set_t) {
        // SAFETY: sched_getcpu reads the CPU number (vDSO); the set is plain data, copied;
        // sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it, on a child of ours
        // (not reaped, so `pid` is it).
        unsafe {
            let cpu = libc::sched_getcpu();
            if cpu < 0 || cpu as usize >= libc::CPU_SETSIZE as usize {
                return;
            }
            let mut away = *ours;
            libc::CPU_CLR(cpu as usize, &mut away);
            if libc::CPU_COUNT(&away) == 0 {
                return;
            }
            libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &away);
        }
    }
}

/// What creating the child gave.
struct Made {
    pid: i32,
    /// From `CLONE_PIDFD`; `None` when forked (the caller opens one).
    pidfd: Option<OwnedFd>,
    in_cgroup: bool,
    /// The stack a child sharing our memory runs on.
    stack: Option<Stack>,
}

/// `clone3` refused `CLONE_VM` here once (no clone3, or a seccomp filter): fork from then on.
static SHARED_REFUSED: AtomicBool = AtomicBool::new(false);

/// A child could not get a table of its own once (`close_range` refused): children copy
/// ours from then on.
static SHARE_FILES_REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether a child may be created sharing our descriptor table and then keep only the
/// low part of it (see `ChildRaw::unshare_below`). The kernel copies a process's whole
/// table into each child it creates, and the child's `execve` then closes each copy
/// (close-on-exec): with a pidfd per entity, that grew a restart from 0.8 ms at 100
/// entities to 2.9 ms at 10,000. `close_range` with `CLOSE_RANGE_UNSHARE` came with 5.9.
fn can_share_files() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if SHARE_FILES_REFUSED.load(Ordering::Relaxed) {
        return false;
    }
    *PROBED.get_or_init(|| {
        // A range with no descriptor in it: closes nothing, and fails only where the
        // call is unknown or filtered.
        let top = i32::MAX as u32;
        kernel::at_least(5, 9)
            // SAFETY: close_range on a range no descriptor can be in changes nothing.
            && unsafe { libc::syscall(libc::SYS_close_range, top, top, 0) } == 0
    })
}

/// Descriptors kept for as long as a child lives (pidfds) go at or above this number, where
/// the limit allows it, so that what a new child needs sits below them and it copies none
/// of them (see [`can_share_files`]).
const HIGH_FDS: u64 = 1024;

/// `fd` moved at or above [`HIGH_FDS`] (or left where it is, if the limit on descriptors is
/// too low for that to leave room below).
pub(crate) fn high_fd(fd: OwnedFd) -> OwnedFd {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let limit = *LIMIT.get_or_init(|| super::rlimit_nofile().map_or(0, |(soft, _)| soft));
    if limit < 4 * HIGH_FDS || fd.as_raw_fd() as u64 >= HIGH_FDS {
        return fd;
    }
    match rustix::io::fcntl_dupfd_cloexec(&fd, HIGH_FDS as RawFd) {
        Ok(high) => high,
        Err(_) => fd,
    }
}

/// Creates the child sharing our memory (see the module's comment), into the cgroup `dir`
/// if one is given and the kernel can. `None`: not possible here, fork instead.
#[cfg(target_arch = "x86_64")]
fn shared_memory_child(raw: *const ChildRaw, dir: Option<RawFd>) -> Option<io::Result<Made>> {
    if SHARED_REFUSED.load(Ordering::Relaxed) {
        return None;
    }
    let stack = Stack::take().ok()?;
    // SAFETY: `raw` points into a live Prepared (the caller's contract), not written
    // meanwhile.
    let share_files = unsafe { (*raw).unshare_below } > 0;
    let cgroup = dir.filter(|_| kernel::at_least(5, 7));
    let both = [cgroup, None];
    // Into the cgroup first; where that is refused, outside it (the caller moves it).
    let attempts = if cgroup.is_some() {
        &both[..]
    } else {
        &both[1..]
    };
    let mut last = 0;
    for dir in attempts {
        let mut pidfd: libc::c_int = -1;
        let args = CloneArgs {
            flags: CLONE_VM
                | CLONE_PIDFD
                | if dir.is_some() { CLONE_INTO_CGROUP } else { 0 }
                | if share_files { CLONE_FILES } else { 0 },
            pidfd: (&raw mut pidfd) as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.lowest() as u64,
            stack_size: stack.size() as u64,
            cgroup: dir.map_or(0, |d| d as u64),
            ..CloneArgs::default()
        };
        // SAFETY: `args` is a valid clone_args whose stack is `stack`, a mapping of our own
        // that nothing else uses and that the caller keeps (in the Pending) until the child
        // is past execve or dead; `raw` points into a Prepared the caller keeps as long. The
        // child runs `child_main` on that stack, which makes raw system calls only (see the
        // module's comment); signals are blocked around this call by the caller.
        let r = unsafe { clone3_shared(&args, shared_child_entry, raw) };
        if r > 0 {
            // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor, ours alone.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            return Some(Ok(Made {
                pid: r as i32,
                pidfd: Some(pidfd),
                in_cgroup: dir.is_some(),
                stack: Some(stack),
            }));
        }
        last = -r;
    }
    stack.give_back();
    match last as i32 {
        // Not to be had here: fork, now and from now on.
        libc::ENOSYS | libc::EPERM | libc::EINVAL => {
            SHARED_REFUSED.store(true, Ordering::Relaxed);
            None
        }
        // The limits a fork would meet too (pids, memory).
        e => Some(Err(io::Error::from_raw_os_error(e))),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn shared_memory_child(_: *const ChildRaw, _: Option<RawFd>) -> Option<io::Result<Made>> {
    None
}

/// Forks the child (into the cgroup `dir` with `clone3(CLONE_INTO_CGROUP)` where the
/// kernel can).
fn forked_child(raw: *const ChildRaw, dir: Option<RawFd>) -> io::Result<Made> {
    // clone3(CLONE_INTO_CGROUP) came with 5.7; before, the caller moves the child.
    let (pid, in_cgroup) = match dir.filter(|_| kernel::at_least(5, 7)) {
        Some(dir) => match clone_into_cgroup(dir) {
            Ok(pid) => (pid, true),
            // Not supported here (or not that cgroup): an ordinary fork.
            // SAFETY: as for the fork below.
            Err(_) => (unsafe { libc::fork() }, false),
        },
        // SAFETY: fork has no memory-safety preconditions. In the child we call only
        // `child_main`, which makes raw system calls on pointers prepared before (they
        // stay valid: the child's copy of memory is not freed) and never returns.
        None => (unsafe { libc::fork() }, false),
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; we are the child of a fork and `raw` points into the
        // Prepared our copy of memory holds.
        unsafe { child_main(&*raw) }
    }
    Ok(Made {
        pid,
        pidfd: None,
        in_cgroup,
        stack: None,
    })
}

const CLONE_VM: u64 = libc::CLONE_VM as u64;
const CLONE_FILES: u64 = libc::CLONE_FILES as u64;
const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2, 88 bytes).
#[repr(C)]
#[derive(Default)]
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

/// `clone3(2)` with `CLONE_INTO_CGROUP`, otherwise like `fork`: the child starts in the
/// cgroup `dir`. Returns the child's pid in the parent, 0 in the child.
fn clone_into_cgroup(dir: RawFd) -> io::Result<i32> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 reads `size` bytes of `args`, which outlives the call; without
    // CLONE_VM the child gets a copy of our memory, as with fork, and the caller runs only
    // `child_main` in it.
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

/// `clone3(args)`; the child (return value 0) calls `entry(arg)` on the stack `args` names
/// and never comes back here. Returns the child's pid, or a negative errno.
///
/// # Safety
/// `args` must name a stack of at least a few pages that nothing else uses while the child
/// runs on it, and `entry` must never return; with `CLONE_VM` the child shares all memory,
/// so `entry` must obey the rules of the module's comment.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_shared(
    args: &CloneArgs,
    entry: unsafe extern "C" fn(*const ChildRaw) -> !,
    arg: *const ChildRaw,
) -> isize {
    let r: isize;
    // SAFETY: the caller's contract. In the parent this is one system call (rcx and r11
    // clobbered, as by any). In the child the kernel has set rsp to the top of the new
    // stack (16-byte aligned: a mapping's end), so `call` leaves it as a function entry
    // expects; rbp is cleared to end frame-pointer walks; r12 and r13, preserved across
    // the system call, carry the argument and the entry point.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 as isize => r,
            in("rdi") std::ptr::from_ref(args),
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    r
}

/// Where a child sharing our memory starts.
///
/// # Safety
/// Only as the entry point [`clone3_shared`] calls, with a pointer into a live [`Prepared`].
#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn shared_child_entry(raw: *const ChildRaw) -> ! {
    // SAFETY: the caller's contract.
    unsafe { child_main(&*raw) }
}

/// This thread's signal mask, blocked entirely while this lives and restored after.
struct SigMask(libc::sigset_t);

impl SigMask {
    fn block_all() -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask write only into
        // the sets passed, which live across the calls.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            let r = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            Ok(Self(old))
        }
    }
}

impl Drop for SigMask {
    fn drop(&mut self) {
        // SAFETY: restores the set saved by block_all, which this owns.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

/// A child's stack: an anonymous mapping with a guard page below it. Up to
/// [`Stack::SPARES`] are kept for the next spawns, so that a restart, or each of a storm's
/// (whose children are many at once before their `execve`), does not map, fault in and
/// unmap one: an unmapping of memory this process's other threads share interrupts the
/// other CPUs to flush their TLBs.
struct Stack {
    base: usize,
    len: usize,
}

// SAFETY: a Stack is a mapping of its own, owned by whoever holds the value; nothing about
// it is tied to the thread that made it.
unsafe impl Send for Stack {}

/// The stacks kept for the next spawns (at most [`Stack::SPARES`]).
static SPARE_STACKS: std::sync::Mutex<Vec<Stack>> = std::sync::Mutex::new(Vec::new());

impl Stack {
    /// The child's frames are small (no allocation, a few locals), even unoptimised.
    const SIZE: usize = 128 * 1024;
    const GUARD: usize = 4096;
    /// A child touches one page of its stack: 16 spares hold 64 KiB of memory (and 2 MiB
    /// of address space).
    const SPARES: usize = 16;

    fn take() -> io::Result<Self> {
        if let Some(s) = SPARE_STACKS.lock().ok().and_then(|mut g| g.pop()) {
            return Ok(s);
        }
        let len = Self::SIZE + Self::GUARD;
        // SAFETY: a new private anonymous mapping, at an address the kernel chooses; no
        // existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let s = Self {
            base: base as usize,
            len,
        };
        // SAFETY: the lowest page of the mapping just made, ours alone.
        if unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    /// The lowest address the child may use (above the guard page).
    fn lowest(&self) -> usize {
        self.base + Self::GUARD
    }

    fn size(&self) -> usize {
        self.len - Self::GUARD
    }

    /// Keeps it for a next spawn (or unmaps it, if as many as are kept are kept already).
    fn give_back(self) {
        if let Ok(mut g) = SPARE_STACKS.lock()
            && g.len() < Self::SPARES
        {
            g.push(self);
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours (made in `take`) and no child runs on it any more:
        // a Stack is dropped or given back only once its child is past execve or dead.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

/// Exit status of a child whose parent died before releasing it.
pub const NOT_RELEASED: i32 = 125;
/// Exit status of a child whose preparation or `execve` failed.
pub const EXEC_FAILED: i32 = 127;

/// Descriptors a child is given at most.
const MAX_FDS: usize = 16;

struct ChildRaw {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    uid: Option<u32>,
    gid: Option<u32>,
    fds: *const (RawFd, RawFd),
    nfds: usize,
    new_process_group: bool,
    exec_if_orphaned: bool,
    release_within_ns: u64,
    core_unlimited: bool,
    /// RLIMIT_NOFILE's soft limit for the child (0: as it is), and the hard limit (0:
    /// unknown: read it).
    nofile_soft: u64,
    nofile_hard: u64,
    /// The signals (bit `sig - 1`) the child sets back to their default: those the parent
    /// handles, and SIGPIPE (see [`reset_signals`]).
    reset_signals: u64,
    /// The record that says whether an orphaned child was released (see `released_in`).
    released_in: ReleaseRecord,
    go_r: RawFd,
    go_w: RawFd,
    st_r: RawFd,
    st_w: RawFd,
    /// Where the child writes its pid in decimal, NUL-terminated (11 bytes of room), or
    /// null.
    own_pid: *mut u8,
    /// 0, or the child was created sharing our descriptor table (`CLONE_FILES`): its first
    /// act is `close_range(unshare_below, ~0, CLOSE_RANGE_UNSHARE)`, which gives it a table
    /// of its own holding only our descriptors below this number (every one it needs is),
    /// and then it says so on the status pipe ([`UNSHARED`], or [`UNSHARE_FAILED`]).
    unshare_below: u32,
    /// Null, or the CPUs the child takes back once released, before `execve`: the parent
    /// may have moved it off its own CPU meanwhile (see [`apart`]).
    affinity: *const libc::cpu_set_t,
}

/// The first byte a child created sharing our descriptor table writes on its status pipe
/// once it has a table of its own: from then on closing our copies of its ends is ours to
/// do (before, it would close them for the child too).
const UNSHARED: u8 = b'U';
/// The first byte when the child could not get a table of its own; an errno follows, and
/// the child exits without running anything.
const UNSHARE_FAILED: u8 = b'F';

/// The raw system calls a child makes: the kernel's return value, a negative errno on
/// failure, and nothing written anywhere else (no `errno`).
mod raw {
    /// A system call with up to four arguments.
    ///
    /// # Safety
    /// As the system call `n`'s own: pointers passed must be valid for what it does.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) unsafe fn sc(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
        let r: isize;
        // SAFETY: the caller's contract; `syscall` clobbers rcx and r11 and nothing else.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") n as isize => r,
                in("rdi") a,
                in("rsi") b,
                in("rdx") c,
                in("r10") d,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack, preserves_flags),
            );
        }
        r
    }

    /// Elsewhere the child is forked (its own copy of memory), so libc's `syscall`, which
    /// writes `errno`, is as good.
    ///
    /// # Safety
    /// As the system call `n`'s own.
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn sc(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
        // SAFETY: the caller's contract.
        unsafe {
            let r = libc::syscall(n, a, b, c, d);
            if r == -1 {
                -(*libc::__errno_location() as isize)
            } else {
                r as isize
            }
        }
    }
}

/// The kernel's `struct sigaction` on x86-64, for resetting handlers to their default.
#[cfg(target_arch = "x86_64")]
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// The size of the kernel's signal set on x86-64 (64 signals).
#[cfg(target_arch = "x86_64")]
const SIGSETSIZE: usize = 8;

/// The signals a child sets back to its default (bit `sig - 1`): every one this process
/// handles (a handler of ours must never run in a child that shares our memory), and
/// SIGPIPE, which ham ignores for itself; an ignored signal otherwise stays ignored across
/// execve, as under any supervisor. Read from the kernel once (64 `rt_sigaction`s) and kept:
/// ham sets handlers only before its first spawn and in `sys::guard_mapping`, which calls
/// [`dispositions_changed`]. Debug builds read them again at every spawn and check.
fn reset_signals() -> u64 {
    let known = RESET_SIGNALS.load(Ordering::Acquire);
    let mask = if known == 0 {
        let m = read_reset_signals();
        RESET_SIGNALS.store(m, Ordering::Release);
        m
    } else {
        known
    };
    debug_assert_eq!(
        mask,
        read_reset_signals(),
        "a signal disposition changed without dispositions_changed()"
    );
    mask
}

/// The cached [`reset_signals`] (0: not read yet; never 0 once read, SIGPIPE is in it).
static RESET_SIGNALS: AtomicU64 = AtomicU64::new(0);

/// Reads now what a first spawn would (the dispositions, 64 system calls; the kernel's
/// version) and maps a stack: a Guardian does this while it watches, so that the takeover's
/// first fork, the next Guardian's, does not.
pub fn warm_up() {
    let _ = reset_signals();
    let _ = super::kernel::acting();
    // A stack for the first child, mapped now (address space only until a child runs on
    // it), not in the takeover that forks it.
    if let Ok(s) = Stack::take() {
        s.give_back();
    }
}

/// A handler was set or removed: [`reset_signals`] reads the dispositions again.
pub(crate) fn dispositions_changed() {
    RESET_SIGNALS.store(read_reset_signals(), Ordering::Release);
}

/// Reads every signal's disposition from the kernel (the raw system call: glibc's
/// `sigaction` refuses its own internal signals, which have handlers too).
fn read_reset_signals() -> u64 {
    // SIGPIPE, and glibc's two internal signals (32 and 33), whose handlers it sets when
    // the first thread starts, whenever that is: always set back (a default set again is
    // no change, and no one ignores them).
    let mut mask = 1u64 << (libc::SIGPIPE - 1) | 1 << 31 | 1 << 32;
    #[cfg(target_arch = "x86_64")]
    for sig in 1..=64usize {
        if sig == libc::SIGKILL as usize || sig == libc::SIGSTOP as usize {
            continue;
        }
        let mut old = KernelSigaction::default();
        // SAFETY: rt_sigaction writes one kernel sigaction into `old`, alive on this stack
        // for the call, and changes nothing.
        let r = unsafe {
            raw::sc(
                libc::SYS_rt_sigaction,
                sig,
                0,
                (&raw mut old) as usize,
                SIGSETSIZE,
            )
        };
        if r == 0 && old.handler != libc::SIG_DFL && old.handler != libc::SIG_IGN {
            mask |= 1 << (sig - 1);
        }
    }
    mask
}

/// In the child: the signals of `reset` (see [`reset_signals`]) back to their default.
/// Signals are all blocked until just before execve, so no handler of the parent's runs in
/// the child meanwhile.
///
/// # Safety
/// Only in a new child, which makes raw system calls only.
#[cfg(target_arch = "x86_64")]
unsafe fn signals_to_defaults(reset: u64) {
    let dfl = KernelSigaction::default();
    for sig in 1..=64usize {
        if reset & (1 << (sig - 1)) != 0 {
            // SAFETY: rt_sigaction reads `dfl`, alive on this stack for the call.
            unsafe {
                raw::sc(
                    libc::SYS_rt_sigaction,
                    sig,
                    (&raw const dfl) as usize,
                    0,
                    SIGSETSIZE,
                );
            }
        }
    }
}

/// Elsewhere the child is forked: a handler of the parent's would run on the child's own
/// copy of memory, so only SIGPIPE needs its default back.
///
/// # Safety
/// Only in a forked child.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn signals_to_defaults(_reset: u64) {
    // SAFETY: signal() changes one disposition of this (forked) process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// In the child, just before execve: the program starts with no signal blocked.
///
/// # Safety
/// Only in a new child.
unsafe fn unblock_signals() {
    #[cfg(target_arch = "x86_64")]
    {
        let empty = 0u64;
        // SAFETY: rt_sigprocmask reads one kernel signal set, alive for the call.
        unsafe {
            raw::sc(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK as usize,
                (&raw const empty) as usize,
                0,
                SIGSETSIZE,
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: a forked child's own mask; the set is alive for the call.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// The child's side of [`SpawnSpec::fork`]: prepare, wait for the release, `execve`.
///
/// # Safety
/// Must be called only in a new child (forked, or sharing memory on a stack of its own),
/// with every pointer in `c` valid until it is past `execve` or dead.
unsafe fn child_main(c: &ChildRaw) -> ! {
    use libc::{
        SYS_chdir, SYS_close, SYS_close_range, SYS_dup3, SYS_execve, SYS_exit_group, SYS_fcntl,
        SYS_getpid, SYS_getuid, SYS_ppoll, SYS_prlimit64, SYS_read, SYS_setgid, SYS_setgroups,
        SYS_setpgid, SYS_setuid, SYS_write,
    };
    use raw::sc;
    // SAFETY: raw system calls only, on descriptors, strings and tables the parent keeps
    // valid for us (see the module's comment); nothing allocates or touches TLS.
    unsafe {
        let fail = |err: isize| -> ! {
            let b = (-err as i32).to_ne_bytes();
            sc(SYS_write, c.st_w as usize, b.as_ptr() as usize, b.len(), 0);
            loop {
                sc(SYS_exit_group, EXEC_FAILED as usize, 0, 0, 0);
            }
        };
        if c.unshare_below > 0 {
            // A table of our own, before anything touches a descriptor: until then every
            // close or dup here would be the parent's too. Only the descriptors below
            // `unshare_below` are copied (the kernel copies none above when the range to
            // close runs to the end), not one per entity.
            let r = sc(
                SYS_close_range,
                c.unshare_below as usize,
                !0u32 as usize,
                libc::CLOSE_RANGE_UNSHARE as usize,
                0,
            );
            if r < 0 {
                let e = (-r as i32).to_ne_bytes();
                let b = [UNSHARE_FAILED, e[0], e[1], e[2], e[3]];
                sc(SYS_write, c.st_w as usize, b.as_ptr() as usize, b.len(), 0);
                loop {
                    sc(SYS_exit_group, EXEC_FAILED as usize, 0, 0, 0);
                }
            }
            let b = [UNSHARED];
            sc(SYS_write, c.st_w as usize, b.as_ptr() as usize, 1, 0);
        }
        // Our copies of the parent's ends: without closing go_w, the parent's death would
        // never look like an end of file.
        sc(SYS_close, c.go_w as usize, 0, 0, 0);
        sc(SYS_close, c.st_r as usize, 0, 0, 0);
        if c.new_process_group {
            let r = sc(SYS_setpgid, 0, 0, 0, 0);
            if r < 0 {
                fail(r);
            }
        }
        signals_to_defaults(c.reset_signals);
        // The descriptor limit ham was started with, not the one it raised for itself.
        if c.nofile_soft > 0 && c.nofile_hard > 0 {
            let lim = [c.nofile_soft.min(c.nofile_hard), c.nofile_hard];
            sc(
                SYS_prlimit64,
                0,
                libc::RLIMIT_NOFILE as usize,
                lim.as_ptr() as usize,
                0,
            );
        } else if c.nofile_soft > 0 {
            let mut lim = [0u64; 2];
            let r = sc(
                SYS_prlimit64,
                0,
                libc::RLIMIT_NOFILE as usize,
                0,
                lim.as_mut_ptr() as usize,
            );
            if r == 0 {
                lim[0] = c.nofile_soft.min(lim[1]);
                sc(
                    SYS_prlimit64,
                    0,
                    libc::RLIMIT_NOFILE as usize,
                    lim.as_ptr() as usize,
                    0,
                );
            }
        }
        if c.core_unlimited {
            let mut lim = [libc::RLIM_INFINITY, libc::RLIM_INFINITY];
            let core = libc::RLIMIT_CORE as usize;
            if sc(SYS_prlimit64, 0, core, lim.as_ptr() as usize, 0) != 0
                && sc(SYS_prlimit64, 0, core, 0, lim.as_mut_ptr() as usize) == 0
            {
                lim[0] = lim[1];
                sc(SYS_prlimit64, 0, core, lim.as_ptr() as usize, 0);
            }
        }
        // Move every source above the targets first, so no dup clobbers a later source
        // (above the highest target, not at a fixed number a low limit may not allow).
        let fds = std::slice::from_raw_parts(c.fds, c.nfds);
        let mut moved = [0 as RawFd; MAX_FDS];
        let floor = fds.iter().map(|&(_, t)| t + 1).max().unwrap_or(0);
        for (m, &(src, _)) in moved.iter_mut().zip(fds) {
            let fd = sc(
                SYS_fcntl,
                src as usize,
                libc::F_DUPFD_CLOEXEC as usize,
                floor as usize,
                0,
            );
            if fd < 0 {
                fail(fd);
            }
            *m = fd as RawFd;
        }
        for (&m, &(_, target)) in moved.iter().zip(fds) {
            // `m` is above every target, so never equal to `target` (which dup3 refuses).
            let r = sc(SYS_dup3, m as usize, target as usize, 0, 0);
            if r < 0 {
                fail(r);
            }
        }
        if !c.cwd.is_null() {
            let r = sc(SYS_chdir, c.cwd as usize, 0, 0, 0);
            if r < 0 {
                fail(r);
            }
        }
        // Per-thread system calls, not glibc's setgroups/setgid/setuid: those change the
        // ids of every thread glibc knows of (its "setxid" broadcast), and glibc still lists
        // the parent's threads here (the doorbell thread): the child would wait for them
        // for ever. This child is a process of one thread, so the call is the whole process.
        if let Some(gid) = c.gid {
            if sc(SYS_getuid, 0, 0, 0, 0) == 0 {
                sc(SYS_setgroups, 0, 0, 0, 0);
            }
            let r = sc(SYS_setgid, gid as usize, 0, 0, 0);
            if r < 0 {
                fail(r);
            }
        }
        if let Some(uid) = c.uid {
            let r = sc(SYS_setuid, uid as usize, 0, 0, 0);
            if r < 0 {
                fail(r);
            }
        }
        // Held back for at most `release_within_ns`: then we run as if released. The kernel
        // counts the time left down in `ts` across an interruption.
        let mut timed_out = false;
        if c.release_within_ns != 0 {
            let ns = c.release_within_ns;
            let mut ts = libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            };
            let mut pfd = libc::pollfd {
                fd: c.go_r,
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                // No signal mask (null): the fifth argument is then not read.
                let r = sc(
                    SYS_ppoll,
                    (&raw mut pfd) as usize,
                    1,
                    (&raw mut ts) as usize,
                    0,
                );
                if r == -(libc::EINTR as isize) {
                    continue;
                }
                timed_out = r == 0;
                break;
            }
        }
        // Wait for the parent to record our pid.
        let mut b = 0u8;
        loop {
            if timed_out {
                break;
            }
            let r = sc(SYS_read, c.go_r as usize, (&raw mut b) as usize, 1, 0);
            if r == 1 {
                break;
            }
            if r == -(libc::EINTR as isize) {
                continue;
            }
            if c.exec_if_orphaned {
                break;
            }
            // Our HAM died before releasing us: run only if it had already recorded the
            // release (then a successor counts our death like any other).
            // SAFETY: the pointers of `released_in` point into the state segment's shared
            // mapping, which is ours too (shared, or inherited by fork at the same address;
            // see `released_in`).
            let pid = sc(SYS_getpid, 0, 0, 0, 0) as i32;
            let released = match c.released_in {
                ReleaseRecord::None => false,
                ReleaseRecord::Entity(slot) => (*slot).says_running(pid),
                ReleaseRecord::Run(slot) => (*slot).says_released(pid),
            };
            if released {
                break;
            }
            loop {
                sc(SYS_exit_group, NOT_RELEASED as usize, 0, 0, 0);
            }
        }
        if !c.affinity.is_null() {
            // Our parent's CPUs again (it moved us off its own before the release, which
            // came after): the program runs where the parent may run.
            sc(
                libc::SYS_sched_setaffinity,
                0,
                std::mem::size_of::<libc::cpu_set_t>(),
                c.affinity as usize,
                0,
            );
        }
        if !c.own_pid.is_null() {
            // Our pid, in decimal, into the room the parent left.
            let mut digits = [0u8; 10];
            let mut n = sc(SYS_getpid, 0, 0, 0, 0) as u32;
            let mut k = digits.len();
            loop {
                k -= 1;
                digits[k] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 || k == 0 {
                    break;
                }
            }
            let len = digits.len() - k;
            std::ptr::copy_nonoverlapping(digits.as_ptr().add(k), c.own_pid, len);
            *c.own_pid.add(len) = 0;
        }
        unblock_signals();
        let r = sc(
            SYS_execve,
            c.path as usize,
            c.argv as usize,
            c.envp as usize,
            0,
        );
        fail(r)
    }
}

/// A child waiting to be released into `execve`.
pub struct Pending {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// Its start time as `/proc/PID/stat` shows it, when known without reading it (see
    /// `start_time_between`).
    pub start_time: Option<u64>,
    /// Created in the cgroup [`SpawnSpec::into_cgroup`] named.
    pub in_cgroup: bool,
    child: Child,
}

/// A released child whose `execve` was not waited for ([`Pending::release_detached`]).
/// Dropped, it waits until the child is past `execve` or dead (it holds what the child
/// reads until then).
pub struct Execing {
    child: Child,
}

impl AsFd for Execing {
    /// The status pipe's read end: readable (or hung up) once the child is past `execve`
    /// or dead, so that [`Execing::finish`] no longer waits.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.child.status.as_fd()
    }
}

impl Execing {
    /// Reads what the status pipe says without waiting: whether the child is past `execve`
    /// or dead ([`Execing::finish`] then does not wait). A child that shared our
    /// descriptor table first says it has its own, which is not that: the pipe then stays
    /// quiet until the `execve`.
    pub fn ready(&mut self) -> bool {
        // An error reading it is told by `finish` (which reads again).
        self.child.pump(false).unwrap_or(true)
    }

    /// Waits at most `ns` for what [`ready`](Self::ready) tells: the child past `execve` or
    /// dead.
    pub fn ready_within(&mut self, ns: u64) -> bool {
        let end = ham_core::clock::mono_ns() + ns;
        loop {
            if self.ready() {
                return true;
            }
            let now = ham_core::clock::mono_ns();
            if now >= end {
                return false;
            }
            let left = end - now;
            let ts = rustix::event::Timespec {
                tv_sec: (left / 1_000_000_000) as i64,
                tv_nsec: (left % 1_000_000_000) as i64,
            };
            let mut fds = [rustix::event::PollFd::new(
                &self.child.status,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return false,
            }
        }
    }

    /// Waits until the child is past `execve` or dead: `Err` with the errno of a failed
    /// preparation or `execve`.
    pub fn finish(mut self) -> io::Result<()> {
        self.release();
        match self.child.wait_done()? {
            (_, 0) => Ok(()),
            (buf, _) => Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf))),
        }
    }
}

/// The parent's ends of the handshake and what the child reads meanwhile. Dropped, it lets
/// the child go (unreleased: it exits, unless its record says it was released) and waits
/// until the child is past execve or dead before it frees any of it.
struct Child {
    go: Option<OwnedFd>,
    /// The status pipe's read end (non-blocking).
    status: OwnedFd,
    prepared: Option<Box<Prepared>>,
    stack: Option<Stack>,
    /// While a child created sharing our descriptor table has not said it has its own.
    shared: Option<SharedTable>,
    /// The errno the child wrote, as far as read (`got` bytes).
    errno: [u8; 4],
    got: usize,
    /// The status pipe reached its end: past execve, or dead.
    done: bool,
}

/// What a child sharing our descriptor table needs there until it has a table of its own.
struct SharedTable {
    /// Our copies of the child's ends: closed now they would be the child's too.
    _go_r: OwnedFd,
    _st_w: OwnedFd,
    /// The child's pidfd: a child that dies before it says anything holds no table (ours
    /// then needs no care), and only our copy of its end keeps the status pipe open.
    watch: OwnedFd,
}

impl Child {
    fn new(
        go: OwnedFd,
        status: OwnedFd,
        prepared: Box<Prepared>,
        stack: Option<Stack>,
        shared: Option<SharedTable>,
    ) -> Self {
        Self {
            go: Some(go),
            status,
            prepared: Some(prepared),
            stack,
            shared,
            errno: [0; 4],
            got: 0,
            done: false,
        }
    }

    /// Reads what the status pipe has; waits for its end if `block`. Whether it reached its
    /// end (the child is past execve or dead).
    fn pump(&mut self, block: bool) -> io::Result<bool> {
        while !self.done {
            let mut b = [0u8; 8];
            match rustix::io::read(&self.status, &mut b) {
                Ok(0) => self.done = true,
                Ok(n) => {
                    let mut bytes = &b[..n];
                    if self.shared.take().is_some() {
                        // The first byte of a child that shared our table: it has its own
                        // now (or never will, and exits): our copies may go.
                        if bytes[0] != UNSHARED {
                            debug_assert_eq!(bytes[0], UNSHARE_FAILED);
                            SHARE_FILES_REFUSED.store(true, Ordering::Relaxed);
                        }
                        bytes = &bytes[1..];
                    }
                    for &x in bytes {
                        if self.got < 4 {
                            self.errno[self.got] = x;
                            self.got += 1;
                        }
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    if !block {
                        return Ok(false);
                    }
                    self.wait_readable()?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Sleeps until the status pipe has something, or (while the child shares our table)
    /// the child is dead: then our copies go, and the pipe ends.
    fn wait_readable(&mut self) -> io::Result<()> {
        use rustix::event::{PollFd, PollFlags, poll};
        let mut fds = [
            PollFd::new(&self.status, PollFlags::IN),
            PollFd::new(
                self.shared.as_ref().map_or(&self.status, |s| &s.watch),
                PollFlags::IN,
            ),
        ];
        let n = if self.shared.is_some() { 2 } else { 1 };
        match poll(&mut fds[..n], None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let died = n == 2 && !fds[1].revents().is_empty();
        if died && fds[0].revents().is_empty() {
            self.shared = None;
        }
        Ok(())
    }

    /// Reads the status pipe to its end: the child is past execve (the pipe is
    /// close-on-exec) or dead. Returns the bytes it wrote first (an errno, if it failed).
    fn wait_done(&mut self) -> io::Result<([u8; 4], usize)> {
        match self.pump(true) {
            Ok(_) => {
                // Only now is nothing of ours in use by the child.
                self.prepared.take();
                if let Some(s) = self.stack.take() {
                    s.give_back();
                }
                Ok((self.errno, self.got))
            }
            Err(e) => {
                // Whether the child still reads them is unknown: they are never freed.
                if let Some(p) = self.prepared.take() {
                    Box::leak(p);
                }
                if let Some(s) = self.stack.take() {
                    std::mem::forget(s);
                }
                // Nor is whether it still shares our table: our copies stay too.
                if let Some(s) = self.shared.take() {
                    std::mem::forget(s);
                }
                Err(e)
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.go.take();
        if self.prepared.is_some() {
            let _ = self.wait_done();
        }
    }
}

impl Pending {
    /// Lets the child run its program and waits until `execve` succeeded (the status
    /// pipe closes) or failed (the child reports errno and exits with [`EXEC_FAILED`]).
    pub fn release(self) -> Result<(i32, OwnedFd), (io::Error, OwnedFd)> {
        let (pid, pidfd, execing) = self.release_detached();
        match execing.finish() {
            Ok(()) => Ok((pid, pidfd)),
            Err(e) => Err((e, pidfd)),
        }
    }

    /// Lets the child run its program without waiting for its `execve`: the returned
    /// [`Execing`] says later how that went (and until then keeps what the child reads).
    pub fn release_detached(self) -> (i32, OwnedFd, Execing) {
        let (pid, pidfd, mut execing) = self.hold();
        execing.release();
        (pid, pidfd, execing)
    }

    /// Keeps the child waiting: [`Execing::release`] lets it go (and dropping the
    /// `Execing` does). A child spawned with [`SpawnSpec::release_within`] goes by itself
    /// when that time is up.
    pub fn hold(self) -> (i32, OwnedFd, Execing) {
        let Pending {
            pid, pidfd, child, ..
        } = self;
        (pid, pidfd, Execing { child })
    }
}

impl Execing {
    /// Lets a child held by [`Pending::hold`] run its program (nothing if it was released).
    pub fn release(&mut self) {
        let child = &mut self.child;
        let Some(go) = child.go.take() else {
            return;
        };
        // A child that already failed, or went by itself, has closed its end; EPIPE is then
        // expected.
        let _ = rustix::io::write(&go, b"g");
        // What a child sharing our table said meanwhile (that it has a table of its own),
        // so that the loop is woken only by its `execve`.
        if child.shared.is_some() {
            let _ = child.pump(false);
        }
    }

    /// Whether it waits to be released.
    pub fn held(&self) -> bool {
        self.child.go.is_some()
    }
}

impl Drop for Execing {
    /// Waiting for a held child's `execve` (as the child's own drop does) would never end.
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

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
        // On x86-64 the child shares our memory, unless this kernel refused it (then every
        // spawn forks, and says so here).
        if cfg!(target_arch = "x86_64") && !SHARED_REFUSED.load(Ordering::Relaxed) {
            assert!(p.child.stack.is_some(), "the child was forked");
        }
        let (_, pidfd) = p.release().map_err(|(e, _)| e).unwrap();
        assert_eq!(wait_status(&pidfd).exit_status(), Some(7));
    }

    #[test]
    fn a_held_child_runs_once_released() {
        let mut s = spec("exit 7");
        s.exec_if_orphaned();
        let (_, pidfd, mut execing) = s.fork().unwrap().hold();
        assert!(execing.held());
        // Still waiting: not exited (it cannot have run `exit 7` without its release).
        let st = rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
        )
        .unwrap();
        assert!(st.is_none(), "a held child ran");
        execing.release();
        assert!(!execing.held());
        execing.finish().unwrap();
        assert_eq!(wait_status(&pidfd).exit_status(), Some(7));
    }

    #[test]
    fn a_held_child_goes_by_itself_after_release_within() {
        let mut s = spec("exit 7");
        s.exec_if_orphaned().release_within(20_000_000);
        let (_, pidfd, execing) = s.fork().unwrap().hold();
        // Never released: it runs its program when the time is up.
        assert_eq!(wait_status(&pidfd).exit_status(), Some(7));
        assert!(execing.held());
        execing.finish().unwrap();
    }

    /// A start waited for as `vfork` would (see `Daemon::spawn`): the wait ends with the
    /// `execve`, and a child that does not get there (held here, as one someone stopped
    /// would be) holds its parent no longer than the bound.
    #[test]
    fn ready_within_ends_at_the_execve_or_at_its_bound() {
        let (_, pidfd, mut execing) = spec("exit 3").fork().unwrap().release_detached();
        assert!(
            execing.ready_within(10_000_000_000),
            "no execve within 10 s"
        );
        execing.finish().unwrap();
        assert_eq!(wait_status(&pidfd).exit_status(), Some(3));

        let mut s = spec("exit 4");
        s.exec_if_orphaned();
        let (_, pidfd, mut execing) = s.fork().unwrap().hold();
        assert!(
            !execing.ready_within(20_000_000),
            "a held child reached execve"
        );
        assert!(execing.held());
        execing.release();
        assert!(
            execing.ready_within(10_000_000_000),
            "no execve within 10 s"
        );
        execing.finish().unwrap();
        assert_eq!(wait_status(&pidfd).exit_status(), Some(4));
    }

    /// The pipes [`stock_pipes`] makes ahead serve the next child, once, and mean what a
    /// child's own would: released, it runs its program; dropped unreleased, it never does.
    #[test]
    fn pipes_made_ahead_serve_the_next_child_once() {
        let spare_go_w = || {
            SPARE_PIPES.with(|s| {
                let p = s.take();
                let fd = p.as_ref().map(|p| p.go_w.as_raw_fd());
                s.set(p);
                fd
            })
        };
        stock_pipes();
        let ahead = spare_go_w().expect("pipes made ahead");
        stock_pipes();
        assert_eq!(spare_go_w(), Some(ahead), "one set kept, not one per call");
        let p = spec("exit 5").fork().unwrap();
        assert_eq!(p.child.go.as_ref().map(AsRawFd::as_raw_fd), Some(ahead));
        assert_eq!(spare_go_w(), None, "taken by the fork");
        let (_, pidfd, mut execing) = p.release_detached();
        assert!(
            execing.ready_within(10_000_000_000),
            "no execve within 10 s"
        );
        execing.finish().unwrap();
        assert_eq!(wait_status(&pidfd).exit_status(), Some(5));

        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        stock_pipes();
        let p = spec(&format!("touch {}", marker.display())).fork().unwrap();
        assert_eq!(spare_go_w(), None, "taken by the fork");
        let Pending { pidfd, child, .. } = p;
        drop(child);
        assert_eq!(wait_status(&pidfd).exit_status(), Some(NOT_RELEASED));
        assert!(!marker.exists());
    }

    #[test]
    fn unreleased_child_never_runs_its_program() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let p = spec(&format!("touch {}", marker.display())).fork().unwrap();
        let Pending { pidfd, child, .. } = p;
        drop(child); // as if ham died before releasing it
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
    fn a_failed_preparation_names_its_errno() {
        let mut s = spec("exit 0");
        s.cwd(std::path::Path::new("/nonexistent/dir")).unwrap();
        let (err, pidfd) = s.fork().unwrap().release().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(wait_status(&pidfd).exit_status(), Some(EXEC_FAILED));
    }

    /// The parent blocks every signal around the child's creation and ignores SIGPIPE;
    /// the program must start with none blocked and SIGPIPE at its default.
    #[test]
    fn the_program_starts_with_no_signal_blocked_and_sigpipe_default() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("status");
        let mut s = SpawnSpec::new(
            std::path::Path::new("/bin/cat"),
            &["cat".into(), "/proc/self/status".into()],
            &[],
        )
        .unwrap();
        s.fd(std::fs::File::create(&out).unwrap().into(), 1);
        let (_, pidfd) = s.fork().unwrap().release().map_err(|(e, _)| e).unwrap();
        assert_eq!(wait_status(&pidfd).exit_status(), Some(0));
        let text = std::fs::read_to_string(&out).unwrap();
        let field = |name: &str| {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap();
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        assert_eq!(field("SigBlk:"), 0, "{text}");
        assert_eq!(field("SigIgn:") & (1 << (libc::SIGPIPE - 1)), 0, "{text}");
    }

    /// A spec whose pipes were made ahead (the next Guardian's) forks, holds and releases
    /// its child as any other, and a held child whose parent drops it unreleased does not
    /// run its program.
    #[test]
    fn pipes_made_ahead_hold_and_release_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ran");
        let mut s = spec(&format!("touch {}", out.display()));
        s.make_pipes_now().unwrap();
        let (_, pidfd) = s.fork().unwrap().release().map_err(|(e, _)| e).unwrap();
        assert_eq!(wait_status(&pidfd).exit_status(), Some(0));
        assert!(out.exists());
        std::fs::remove_file(&out).unwrap();
        let mut s = spec(&format!("touch {}", out.display()));
        s.make_pipes_now().unwrap();
        let p = s.fork().unwrap();
        let pidfd = p.pidfd.try_clone().unwrap();
        drop(p);
        assert_eq!(wait_status(&pidfd).exit_status(), Some(NOT_RELEASED));
        assert!(!out.exists(), "an unreleased child ran its program");
    }

    /// Each child gets its own pid in its environment, written by the child into memory it
    /// may share with this process, and spawns in a row reuse the kept stacks.
    #[test]
    fn children_in_a_row_each_see_their_own_pid() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("pid");
            let mut s = spec("printf %s \"$OWN_PID\"");
            s.env_own_pid("OWN_PID");
            s.fd(std::fs::File::create(&out).unwrap().into(), 1);
            let (pid, pidfd) = s.fork().unwrap().release().map_err(|(e, _)| e).unwrap();
            assert_eq!(wait_status(&pidfd).exit_status(), Some(0));
            assert_eq!(std::fs::read_to_string(&out).unwrap(), pid.to_string());
        }
    }

    /// The start time known from the clock around the clone is the one `/proc` shows (a
    /// successor adopts a process by pid and start time: a wrong one would not be adopted).
    #[test]
    fn the_start_time_known_at_the_clone_is_the_one_proc_shows() {
        let mut known = 0;
        for _ in 0..200 {
            let p = spec("exit 0").fork().unwrap();
            let from_proc = crate::procfs::start_time(p.pid);
            if let Some(st) = p.start_time {
                assert_eq!(Some(st), from_proc, "pid {}", p.pid);
                known += 1;
            }
            let (_, pidfd) = p.release().map_err(|(e, _)| e).unwrap();
            wait_status(&pidfd);
        }
        // Only a spawn across a tick's edge (10 ms) reads /proc.
        assert!(known >= 150, "known for {known} of 200");
    }

    /// A child released without waiting for its execve: it runs, and its failure is told
    /// when asked.
    #[test]
    fn a_detached_release_runs_the_program_and_tells_a_failure_later() {
        let (_, pidfd, execing) = spec("exit 4").fork().unwrap().release_detached();
        execing.finish().unwrap();
        assert_eq!(wait_status(&pidfd).exit_status(), Some(4));
        let p = SpawnSpec::new(std::path::Path::new("/nonexistent/x"), &["x".into()], &[])
            .unwrap()
            .fork()
            .unwrap();
        let (_, pidfd, execing) = p.release_detached();
        let err = execing.finish().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(wait_status(&pidfd).exit_status(), Some(EXEC_FAILED));
    }

    /// Where `clone3` refuses `CLONE_VM` the child is forked: the handshake holds the same.
    #[test]
    fn a_forked_child_keeps_the_handshake() {
        let (_, pidfd) = spec("exit 3")
            .create(false)
            .unwrap()
            .release()
            .map_err(|(e, _)| e)
            .unwrap();
        assert_eq!(wait_status(&pidfd).exit_status(), Some(3));

        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let p = spec(&format!("touch {}", marker.display()))
            .create(false)
            .unwrap();
        let Pending { pidfd, child, .. } = p;
        drop(child);
        assert_eq!(wait_status(&pidfd).exit_status(), Some(NOT_RELEASED));
        assert!(!marker.exists());

        let mut s = spec("exit 0");
        s.cwd(std::path::Path::new("/nonexistent/dir")).unwrap();
        let (err, pidfd) = s.create(false).unwrap().release().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(wait_status(&pidfd).exit_status(), Some(EXEC_FAILED));
    }

    #[test]
    fn exit_status_of_a_reaped_process_through_its_pidfd() {
        if !super::super::pidfd_info_exit_supported() {
            return; // nothing to check on this kernel; ham falls back (status "unknown")
        }
        let p = spec("exit 9").fork().unwrap();
        let (_, pidfd) = p.release().map_err(|(e, _)| e).unwrap();
        let copy = pidfd.try_clone().unwrap();
        wait_status(&pidfd); // reaped here, as another process (init) would
        assert_eq!(
            super::super::pidfd_exit_status(&copy).unwrap(),
            Some(9 << 8)
        );
    }

    /// A child created sharing our descriptor table keeps only what lies below the
    /// descriptors it needs: none of the many above them (a pidfd per entity in a HAM).
    #[test]
    fn a_child_copies_none_of_our_high_descriptors() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let limit = crate::sys::rlimit_nofile().unwrap().0;
        let base = (limit / 2).min(3000) as RawFd;
        // 200 descriptors far above anything a test opens.
        let high: Vec<OwnedFd> = (0..200)
            .map(|k| rustix::io::fcntl_dupfd_cloexec(&null, base + k).unwrap())
            .collect();
        let top = high.iter().map(AsRawFd::as_raw_fd).min().unwrap();
        let mut p = spec("exit 0").fork().unwrap();
        let share = can_share_files();
        // Until it has said it has a table of its own (a child that copied ours at its
        // creation says nothing, and has every descriptor).
        while p.child.shared.is_some() {
            p.child.wait_readable().unwrap();
            p.child.pump(false).unwrap();
        }
        let theirs: Vec<RawFd> = std::fs::read_dir(format!("/proc/{}/fd", p.pid))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        assert!(theirs.contains(&2), "{theirs:?}");
        let copied = theirs.iter().filter(|&&fd| fd >= top).count();
        if share {
            assert_eq!(
                copied, 0,
                "the child copied our high descriptors: {theirs:?}"
            );
        } else {
            assert_eq!(copied, high.len(), "{theirs:?}");
        }
        let (_, pidfd) = p.release().map_err(|(e, _)| e).unwrap();
        assert_eq!(wait_status(&pidfd).exit_status(), Some(0));
        // Its pidfd lies above what the next child needs, where the limit leaves room.
        if limit >= 4 * HIGH_FDS {
            assert!(
                pidfd.as_raw_fd() as u64 >= HIGH_FDS,
                "{}",
                pidfd.as_raw_fd()
            );
        }
        drop(high);
    }

    /// A child killed before it had a table of its own (while only our copies of its ends
    /// kept the status pipe open) still ends its spawn: nothing waits for it for ever.
    #[test]
    fn a_child_killed_at_its_creation_never_leaves_us_waiting() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..100 {
                let p = spec("exit 0").fork().unwrap();
                rustix::process::pidfd_send_signal(&p.pidfd, rustix::process::Signal::KILL)
                    .unwrap();
                let pidfd = match p.release() {
                    Ok((_, pidfd)) | Err((_, pidfd)) => pidfd,
                };
                let st = wait_status(&pidfd);
                // Killed, or (if it got that far first) its program ran and exited.
                assert!(
                    st.terminating_signal() == Some(libc::SIGKILL) || st.exit_status() == Some(0),
                    "{st:?}"
                );
            }
            tx.send(()).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(120))
            .expect("a spawn waited for ever for a child killed at its creation");
    }
}
