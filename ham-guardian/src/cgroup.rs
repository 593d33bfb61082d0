//! Each entity's processes in a cgroup (v2) of its own, so that what an entity's process
//! leaves behind (`sh -c "daemon &"`, a `setsid` daemonizer) is still the entity's: killed
//! with it (SIGKILL to every process in the cgroup), never left running past a stop or a shutdown, never a second
//! copy beside a restarted one.
//!
//! Layout: `<base>/ham.<instance>/<entity>`, where `<base>` is the cgroup ham runs in (from
//! `/proc/PID/cgroup`, under the cgroup2 mount found in `/proc/self/mountinfo`) or the
//! directory `[ham] cgroup` names. A process enters its entity's cgroup between its fork
//! and its release (it runs nothing before), created there by `clone3(CLONE_INTO_CGROUP)`
//! (or moved, on an older kernel). Where there is no writable v2 hierarchy, ham falls back
//! to process groups, and says so.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::config::{CgroupLimits, CgroupMode};

/// What [`Cgroups::open`] found: the cgroups, none (off), or why there are none.
pub type Opened = Result<Option<Cgroups>, String>;

/// An instance's cgroups.
#[derive(Debug)]
pub struct Cgroups {
    /// `<base>/ham.<instance>`.
    dir: PathBuf,
    /// Controllers available to the entities' cgroups (`cgroup.controllers` of `dir`,
    /// once enabled in its `cgroup.subtree_control`).
    controllers: Vec<String>,
    /// `dir`, open (`O_PATH`): what an entity's restart opens there (its directory for
    /// `clone3`, its `cgroup.procs`) is found from here, one name deep, not walked to from
    /// `/` through the cgroup mount each time.
    at: OwnedFd,
}

/// The cgroup2 mount point, from mountinfo(5): the field after ` - ` is the type.
fn cgroup2_mount() -> Option<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        let f: Vec<&str> = left.split_whitespace().collect();
        // 3: the mount's root within the hierarchy, 4: where it is mounted.
        Some((PathBuf::from(f.get(4)?), (*f.get(3)?).to_owned()))
    })
}

/// The v2 cgroup of process `pid` (`0::/path` in cgroups(7)), as a directory.
fn cgroup_dir_of(pid: &str) -> Option<PathBuf> {
    let (mount, root) = cgroup2_mount()?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let rel = path.strip_prefix(root.as_str()).unwrap_or(path);
    Some(mount.join(rel.trim_start_matches('/')))
}

/// Where instance `instance`'s cgroups are, for a HAM with pid `pid` (`"self"` for this
/// process): what `hamctl status` looks at. `None` when cgroups are off or not found.
pub fn instance_dir(mode: &CgroupMode, instance: &str, pid: &str) -> Option<PathBuf> {
    let base = match mode {
        CgroupMode::Off => return None,
        CgroupMode::Auto => cgroup_dir_of(pid)?,
        CgroupMode::Under(dir) => dir.clone(),
    };
    Some(base.join(format!("ham.{instance}")))
}

fn write(path: &Path, what: &str) -> io::Result<()> {
    std::fs::write(path, what)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl Cgroups {
    /// Sets up the instance's cgroup directory; `Err` says why ham falls back to process
    /// groups (`Ok(None)`: cgroups are off).
    pub fn open(mode: &CgroupMode, instance: &str) -> Opened {
        if *mode == CgroupMode::Off {
            return Ok(None);
        }
        let dir = instance_dir(mode, instance, "self")
            .ok_or("no cgroup v2 hierarchy (none in /proc/self/mountinfo)")?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Offer the entities whatever controllers the parent lets this directory have.
        let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let mut controllers = Vec::new();
        for c in available.split_whitespace() {
            if write(&dir.join("cgroup.subtree_control"), &format!("+{c}")).is_ok() {
                controllers.push(c.to_owned());
            }
        }
        let at = rustix::fs::open(
            &dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Some(Self {
            dir,
            controllers,
            at,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Entity `name`'s cgroup.
    pub fn entity_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Makes entity `name`'s cgroup and writes its limits; returns the limits that could not
    /// be applied (their controller is not available here), as `key: why`.
    pub fn prepare(&self, name: &str, limits: &CgroupLimits) -> io::Result<Vec<String>> {
        let dir = self.entity_dir(name);
        std::fs::create_dir_all(&dir)?;
        let mut not_applied = Vec::new();
        for (key, controller, file, value) in [
            ("memory_max", "memory", "memory.max", limits.memory_max),
            ("pids_max", "pids", "pids.max", limits.pids_max),
            ("cpu_weight", "cpu", "cpu.weight", limits.cpu_weight),
        ] {
            let Some(v) = value else { continue };
            if !self.controllers.iter().any(|c| c == controller) {
                not_applied.push(format!(
                    "{key}: no {controller} controller in {}",
                    self.dir.display()
                ));
            } else if let Err(e) = write(&dir.join(file), &v.to_string()) {
                not_applied.push(format!("{key}: {e}"));
            }
        }
        Ok(not_applied)
    }

    /// Whether process `pid` is in entity `name`'s cgroup (or one below it).
    pub fn holds(&self, name: &str, pid: i32) -> bool {
        cgroup_dir_of(&pid.to_string()).is_some_and(|d| d.starts_with(self.entity_dir(name)))
    }

    /// Entity `name`'s cgroup directory, open (`O_DIRECTORY`), for `clone3`.
    pub fn open_dir(&self, name: &str) -> io::Result<std::os::fd::OwnedFd> {
        Ok(rustix::fs::openat(
            &self.at,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// Entity `name`'s `cgroup.procs`, open for reading.
    fn open_procs(&self, name: &str) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &self.at,
            format!("{name}/cgroup.procs"),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// Moves `pid` into entity `name`'s cgroup (its children follow it).
    pub fn enter(&self, name: &str, pid: i32) -> io::Result<()> {
        write(
            &self.entity_dir(name).join("cgroup.procs"),
            &pid.to_string(),
        )
    }

    /// Moves the processes of a removed entity `name` (its main process `pid` and what
    /// else is in its cgroup) out, into the instance's `~detached` cgroup: no longer
    /// supervised, and not killed with whatever later takes that name.
    pub fn release(&self, name: &str, pid: i32) -> io::Result<()> {
        let dir = self.dir.join("~detached");
        std::fs::create_dir_all(&dir)?;
        let mut pids = self.pids(name);
        if !pids.contains(&pid) {
            pids.push(pid);
        }
        for p in pids {
            write(&dir.join("cgroup.procs"), &p.to_string())?;
        }
        Ok(())
    }

    /// The longest line of `cgroup.procs`: a pid (at most 2^22, 7 digits) and a newline,
    /// with room to spare.
    const MAX_PID_LINE: usize = 16;

    /// The live processes in entity `name`'s cgroup (`cgroup.procs`).
    fn pids(&self, name: &str) -> Vec<i32> {
        let Ok(fd) = self.open_procs(name) else {
            return Vec::new();
        };
        // Read to the end by hand: `read_to_string` first asks the size (`statx`) and the
        // position (`lseek`), two system calls a cgroup file answers with nothing useful.
        // A read that leaves room for another line was the end: the kernel fills a read of
        // a cgroup file with lines until the buffer is full or the lines run out (at every
        // restart, the cgroup holds only the new child: one read, not two).
        let mut text = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n @ 1..) = rustix::io::read(&fd, &mut buf) {
            text.extend_from_slice(&buf[..n]);
            if n + Self::MAX_PID_LINE <= buf.len() {
                break;
            }
        }
        String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether any process is in entity `name`'s cgroup: one open, one short read, at
    /// every death (not the whole list, and no statx).
    pub fn populated(&self, name: &str) -> bool {
        let Ok(fd) = self.open_procs(name) else {
            return false;
        };
        let mut buf = [0u8; 16];
        matches!(rustix::io::read(&fd, &mut buf), Ok(n) if n > 0)
    }

    /// [`kill`](Self::kill), sparing `keep` (a new process of the entity's, not released
    /// yet): one read of `cgroup.procs` when it holds nothing else.
    pub fn kill_but(&self, name: &str, keep: i32) -> io::Result<()> {
        for _ in 0..16 {
            let pids: Vec<i32> = self.pids(name).into_iter().filter(|&p| p != keep).collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        Ok(())
    }

    /// SIGKILLs every process in entity `name`'s cgroup, in passes until a pass finds none
    /// (a process forking meanwhile has its child in the next pass; at most 16 passes).
    ///
    /// Not `cgroup.kill`: on this kernel (6.18) a write to it went on killing processes
    /// that entered the cgroup afterwards — the entity's next process, and the next, each
    /// killed at once — for as long as the killed ones were not all gone.
    pub fn kill(&self, name: &str) -> io::Result<()> {
        // No process has pid 0: nothing spared.
        self.kill_but(name, 0)
    }

    /// Kills what is in entity `name`'s cgroup and waits (up to `timeout_ms`) until it is
    /// empty: before an entity whose record was lost is started again, so that it never
    /// runs twice. Whether it is empty.
    pub fn kill_and_wait(&self, name: &str, timeout_ms: u64) -> bool {
        if !self.populated(name) {
            return true;
        }
        let _ = self.kill(name);
        let deadline = crate::mono_ns() + timeout_ms * 1_000_000;
        while self.populated(name) {
            if crate::mono_ns() > deadline {
                return false;
            }
            // SIGKILLed processes go within a scheduling round or two.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        true
    }

    /// Removes the entities' cgroups and the instance's, at the end of a shutdown: what is
    /// still in one (a process that left its entity's main process) is killed first. A
    /// cgroup that cannot be removed stays, and is reported. `progress` is called before
    /// each cgroup (the HAM says it is alive: 10,000 of them take seconds).
    pub fn remove_all(&self, mut progress: impl FnMut()) -> Vec<String> {
        let mut left = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                progress();
                if e.path().is_dir() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // Detached processes are not ham's to stop (their folder stays while
                    // they run).
                    if name != "~detached" {
                        self.kill_and_wait(&name, 500);
                    }
                    if let Err(err) = std::fs::remove_dir(e.path()) {
                        left.push(format!("{}: {err}", e.path().display()));
                    }
                }
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
        left
    }
}
