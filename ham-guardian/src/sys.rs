//! The system calls no safe wrapper covers. Each `unsafe` block states its invariant.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

pub mod kernel;
mod notify;
mod pidfd;
mod proc_connector;
pub mod robust;
pub mod sched;
mod spawn;

pub use notify::{NotifyMessage, recv_notify};
pub use pidfd::{pidfd_exit_status, pidfd_info_exit_supported};
pub use proc_connector::ProcConnector;
pub(crate) use spawn::high_fd;
pub use spawn::{
    EXEC_FAILED, Execing, NOT_RELEASED, Pending, SpawnSpec, stock_pipes, warm_up as warm_up_spawns,
};

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

/// Gives back this process's mappings of its own binary and of its shared libraries once it
/// has started: what is used from here on is mapped again at its first use (a minor fault,
/// from the page cache); the rest (configuration parsing, the CLI, start-up) stops counting
/// in the process's footprint. The kernel maps a file 64 KiB around each fault (a whole
/// folio with large folios), so start-up alone left nearly all of the binary's 1.9 MiB of
/// code and read-only data mapped in each process of the pair, and the loop's own faults
/// mapped a megabyte back around the code it runs (and 0.3 MiB of libc in each). Where the
/// kernel can (see [`no_fault_around`]), the mappings are first registered so that a fault
/// maps its own page only. Dropped: each read-only, private mapping of `/proc/self/exe` or
/// of a library none of whose pages was ever written (`Anonymous: 0 kB` in smaps: relocated
/// read-only data after RELRO was written, and is kept). Best effort: on any failure nothing
/// changes.
pub fn unmap_startup_code() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Some(exe) = exe.to_str() else { return };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let ranges = unwritten_mappings(&smaps, exe);
    let _ = no_fault_around(&ranges);
    for &(start, end) in &ranges {
        // SAFETY: the range is one whole mapping of this process, as /proc/self/smaps
        // lists it: a private, read-only mapping of the binary or of a library, mapped for
        // the life of the process (nothing here unloads a library), none of whose pages was
        // ever written (no anonymous copy), and which nothing can write now (not writable).
        // Each page is therefore the file's, and MADV_DONTNEED changes no content: a thread
        // (or a CLONE_VM child) reading or running it meanwhile faults the same bytes back
        // in.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// Whether a mapped file is a shared library (the loader, libc, libgcc_s): named `*.so` or
/// `*.so.*`.
fn is_library(path: &str) -> bool {
    path.starts_with('/')
        && std::path::Path::new(path).file_name().is_some_and(|n| {
            let n = n.to_string_lossy();
            n.ends_with(".so") || n.contains(".so.")
        })
}

/// The private, read-only mappings of `exe` and of the shared libraries that `smaps` (this
/// process's) lists with no anonymous page: (start, end) of each.
fn unwritten_mappings(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    // (start, end) of the mapping being read, if it is one of the binary's read-only ones.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Anonymous:") {
            if let Some(range) = current.take()
                && kb.trim() == "0 kB"
            {
                found.push(range);
            }
            continue;
        }
        let mut f = line.split_ascii_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        else {
            continue; // a field line ("Rss: …"), not a mapping's
        };
        let ours = perms.len() == 4
            && perms.starts_with('r')
            && &perms[1..2] == "-"
            && perms.ends_with('p')
            && f.nth(3).is_some_and(|path| path == exe || is_library(path));
        current = ours.then_some((start, end));
    }
    found
}

/// Makes a fault in each of `ranges` (whole read-only mappings of the binary or of a library)
/// map its own page, not the 64 KiB around it: the code a long-lived loop runs is scattered
/// through the binary, and fault-around mapped about a megabyte of code around the few
/// hundred KiB it runs. The kernel faults around in every mapping but those registered with a userfaultfd
/// for write-protection (`uffd_disable_fault_around`); with `UFFD_FEATURE_WP_ASYNC` (Linux
/// 6.7) any mapping can be, and a write fault would be resolved by the kernel itself, with no
/// handler. These mappings are not writable, so none happens: the registration only turns
/// fault-around off. The userfaultfd must stay open (closing it unregisters), so it is kept
/// for the life of the process; `UFFD_USER_MODE_ONLY` needs no privilege. Where the kernel
/// refuses, nothing changes (the mappings fault around as before). Returns whether every
/// range was registered.
fn no_fault_around(ranges: &[(usize, usize)]) -> bool {
    // From linux/userfaultfd.h (the libc crate does not have the newer ones). The ioctl
    // numbers are the generic encoding (x86, Arm, RISC-V); where they differ the ioctl
    // fails and nothing changes.
    const UFFD_USER_MODE_ONLY: libc::c_int = 1;
    const UFFD_API: u64 = 0xaa;
    const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
    const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
    // _IOWR(0xaa, 0x3f, struct uffdio_api) and _IOWR(0xaa, 0x00, struct uffdio_register).
    const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
    const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
    #[repr(C)]
    struct UffdioApi {
        api: u64,
        features: u64,
        ioctls: u64,
    }
    #[repr(C)]
    struct UffdioRegister {
        start: u64,
        len: u64,
        mode: u64,
        ioctls: u64,
    }
    static UFFD: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    let uffd = UFFD.get_or_init(|| {
        // SAFETY: userfaultfd(2) takes flags and returns a new descriptor or -1; no memory
        // is passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a descriptor just returned by the kernel, owned by no one else.
        let fd = spawn::high_fd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one struct uffdio_api (24 bytes, the layout
        // above) through the pointer, which points to `api`, alive and writable for the
        // call; the descriptor is open (owned above).
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &raw mut api) };
        (r == 0 && api.features & UFFD_FEATURE_WP_ASYNC != 0).then_some(fd)
    });
    let Some(uffd) = uffd else { return false };
    let mut all = true;
    for &(start, end) in ranges {
        let mut reg = UffdioRegister {
            start: start as u64,
            len: (end - start) as u64,
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one struct uffdio_register (32 bytes,
        // the layout above) through the pointer, which points to `reg`, alive and writable
        // for the call. It changes no memory: it marks the range's mapping, which is whole
        // and read-only, so that a write fault there would be resolved by the kernel (none
        // can happen) and a read fault maps its page alone.
        all &= unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &raw mut reg) } == 0;
    }
    all
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
pub(crate) static NOFILE_SOFT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// RLIMIT_NOFILE's hard limit as ham found it (ham never changes it), so that a child sets
/// its limit without reading it first.
pub(crate) static NOFILE_HARD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `setrlimit(RLIMIT_NOFILE)`: raises the soft limit on descriptors to the hard one (ham
/// holds a pidfd per entity, and the Guardian a copy of each), remembering the soft limit
/// it found for the processes it starts. Returns (found, now).
pub fn raise_nofile() -> (u64, u64) {
    let Ok((soft, hard)) = rlimit_nofile() else {
        return (0, 0);
    };
    NOFILE_SOFT.store(soft, std::sync::atomic::Ordering::Relaxed);
    NOFILE_HARD.store(hard, std::sync::atomic::Ordering::Relaxed);
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

/// A mapping the SIGBUS handler grows back: where, how long, and the descriptor plus one
/// (0: the entry is free).
struct Guarded {
    base: std::sync::atomic::AtomicUsize,
    len: std::sync::atomic::AtomicUsize,
    fd1: std::sync::atomic::AtomicI32,
}

/// Mappings guarded: the client segment's in the first entry; then a lane's or a heartbeat
/// page's each (one per lane ham allows, one per entity a segment can hold).
const GUARDS: usize = 1 + crate::config::LANES_MAX + 65_536;
/// The table, made at the first guard. Zeroed memory from the allocator (fresh pages for a
/// table this size), so only the entries used cost memory: as a static it sat in `.bss`,
/// and the HAM and the Guardian each carried 70 KiB more of it resident.
static GUARDED: std::sync::OnceLock<Box<[Guarded]>> = std::sync::OnceLock::new();

fn guard_table() -> &'static [Guarded] {
    GUARDED.get_or_init(|| {
        let layout = std::alloc::Layout::array::<Guarded>(GUARDS).expect("a table that fits");
        // SAFETY: the layout is non-zero in size. All-zero bytes are a valid `Guarded` (three
        // atomic integers; 0: a free entry), so the zeroed allocation holds GUARDS valid
        // values, and it is owned by the Box made from it (allocated with this layout by the
        // global allocator, as Box<[Guarded]> frees it).
        unsafe {
            let p = std::alloc::alloc_zeroed(layout).cast::<Guarded>();
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, GUARDS))
        }
    })
}
/// Where the search for a free entry starts.
static GUARD_HINT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
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
    set_guard(0, base, len, fd);
    set_sigbus_handler()
}

fn set_guard(i: usize, base: usize, len: usize, fd: RawFd) {
    use std::sync::atomic::Ordering::SeqCst;
    let g = &guard_table()[i];
    // Out of the handler's sight while it changes (the handler only runs on the thread
    // that touches the mapping, the loop's, which is the one changing it: this is for
    // clarity, not a race).
    g.fd1.store(0, SeqCst);
    g.base.store(base, SeqCst);
    g.len.store(len, SeqCst);
    g.fd1.store(fd.saturating_add(1).max(0), SeqCst);
}

/// An entry of the SIGBUS guard's table, given back when dropped. Its owner drops it before
/// the mapping and the descriptor it names (declare it first: fields drop in order).
#[derive(Debug)]
pub struct Guard(usize);

impl Drop for Guard {
    fn drop(&mut self) {
        set_guard(self.0, 0, 0, -1);
    }
}

/// Guards one more mapping its client can shrink (a lane, a heartbeat page: the client
/// holds a descriptor it can `ftruncate`), as [`guard_mapping`] does the client segment.
/// `None` when every entry is taken (there is one per lane ham allows and one per entity).
pub fn guard_more(base: usize, len: usize, fd: RawFd) -> io::Result<Option<Guard>> {
    use std::sync::atomic::Ordering::SeqCst;
    let hint = GUARD_HINT.load(SeqCst).clamp(1, GUARDS - 1);
    let Some(i) = (hint..GUARDS)
        .chain(1..hint)
        .find(|&i| guard_table()[i].fd1.load(SeqCst) == 0)
    else {
        return Ok(None);
    };
    set_guard(i, base, len, fd);
    GUARD_HINT.store(i + 1, SeqCst);
    set_sigbus_handler()?;
    Ok(Some(Guard(i)))
}

fn set_sigbus_handler() -> io::Result<()> {
    static SET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SET.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        use std::sync::atomic::Ordering::SeqCst;
        // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; si_addr is
        // the faulting address for SIGBUS.
        let addr = unsafe { (*info).si_addr() } as usize;
        // The table exists: a guard was set before the handler was.
        let table = GUARDED.get().map_or(&[][..], |t| &t[..]);
        let hit = table.iter().find_map(|g| {
            let (base, len, fd1) = (g.base.load(SeqCst), g.len.load(SeqCst), g.fd1.load(SeqCst));
            (fd1 > 0 && addr >= base && addr < base + len).then_some((base, len, fd1 - 1))
        });
        if let Some((base, len, fd)) = hit {
            let page = addr & !(4095usize);
            // SAFETY: ftruncate and fallocate are plain system calls on the mapping's
            // descriptor, kept open by its owner (the ClientSegment, a lane) for as long as
            // the guard is set.
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
            // SAFETY: MAP_FIXED over one page of our own mapping of the client segment or
            // a lane, which only ham's atomics read; nothing holds a reference into that
            // page across this handler.
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
    spawn::dispositions_changed();
    SET.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

// -- sd_notify datagrams ------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unwritten_read_only_private_mappings_of_the_binary_and_libraries_are_dropped() {
        let smaps = "\
5600-5700 r--p 00000000 fe:00 11 /opt/ham/bin/ham
Rss:                 192 kB
Anonymous:             0 kB
5700-5800 r-xp 00057000 fe:00 11 /opt/ham/bin/ham
Anonymous:             0 kB
5800-5900 r--p 001dc000 fe:00 11 /opt/ham/bin/ham
Anonymous:            44 kB
5900-5a00 rw-p 001e6000 fe:00 11 /opt/ham/bin/ham
Anonymous:             8 kB
6000-6100 r-xp 00028000 fe:00 12 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
6100-6200 r--p 00000000 fe:00 13 /usr/share/zoneinfo/UTC
Anonymous:             0 kB
6150-6160 r--p 00000000 fe:00 15 /run/app/data.sock
Anonymous:             0 kB
6200-6300 r--s 00000000 00:1b 14 /dev/shm/ham.t.state
Anonymous:             0 kB
6300-6400 rw-p 00000000 00:00 0 
Anonymous:             4 kB
6400-6500 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
6500-6600 r-xp 00000000 fe:00 11 /opt/ham/bin/ham (deleted)
Anonymous:             0 kB
";
        assert_eq!(
            unwritten_mappings(smaps, "/opt/ham/bin/ham"),
            vec![
                (0x5600, 0x5700),
                (0x5700, 0x5800),
                (0x6000, 0x6100),
                (0x6500, 0x6600)
            ]
        );
    }

    #[test]
    fn a_registered_mapping_maps_only_the_pages_touched() {
        // A private, read-only mapping of a 1 MiB file (smaller than a huge page, which a
        // fault may map whole), one byte read every 64 KiB: faulted around, each read maps
        // 16 pages; registered, one.
        let path = std::env::temp_dir().join(format!("ham-fault-around-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let len = 1usize << 20;
        // SAFETY: a new private, read-only mapping of `len` bytes of an open file; it is
        // only read below, and unmapped before the end of the test.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        let start = at as usize;
        let registered = no_fault_around(&[(start, start + len)]);
        for off in (0..len).step_by(64 << 10) {
            // SAFETY: inside the mapping made above, readable.
            let b = unsafe { std::ptr::read_volatile((start + off) as *const u8) };
            assert_eq!(b, 7);
        }
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let head = format!("{start:x}-");
        let rss_kb: u64 = smaps
            .lines()
            .skip_while(|l| !l.starts_with(&head))
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .expect("the mapping is listed with its Rss");
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(at, len) };
        let touched = (len / (64 << 10)) as u64 * 4;
        if registered {
            assert_eq!(rss_kb, touched, "one page per read, no fault-around");
        } else {
            // Before 6.7 the kernel has no asynchronous write-protection: nothing to check.
            assert!(
                !kernel::at_least(6, 7),
                "the kernel refused the registration"
            );
            eprintln!("skipped: no UFFD_FEATURE_WP_ASYNC before Linux 6.7");
        }
    }
}
