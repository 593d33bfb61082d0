//! Core files (NX-OS's `show cores`): an entity with `cores = true` runs with RLIMIT_CORE
//! raised; when it dies by a signal, ham looks for the core the kernel wrote where
//! `/proc/sys/kernel/core_pattern` says (ham only reads that file, never writes it), moves it
//! to `<cores_dir>/<entity>/core.<pid>.<signal>.<unix ms>`, and keeps the newest
//! `cores_keep` within `cores_max_bytes` per entity. The folder is the record: `hamctl
//! cores` lists it, with no ham running.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where the kernel puts cores, as `core_pattern` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// A file pattern (`%p` and the like expanded for one process).
    File { pattern: String, uses_pid: bool },
    /// `|program …`: the system's core handler takes them (systemd-coredump, apport).
    Pipe(String),
}

impl Pattern {
    /// The machine's, read from `/proc/sys/kernel/core_pattern` and `core_uses_pid`.
    pub fn of_system() -> std::io::Result<Self> {
        let p = std::fs::read_to_string("/proc/sys/kernel/core_pattern")?;
        let uses_pid = std::fs::read_to_string("/proc/sys/kernel/core_uses_pid")
            .is_ok_and(|s| s.trim() == "1");
        Ok(Self::parse(p.trim_end_matches('\n'), uses_pid))
    }

    pub fn parse(p: &str, uses_pid: bool) -> Self {
        match p.strip_prefix('|') {
            Some(prog) => Pattern::Pipe(prog.trim().to_owned()),
            None => Pattern::File {
                pattern: p.to_owned(),
                uses_pid,
            },
        }
    }

    /// The file the kernel wrote the core of `pid` (command name `comm`, uid, signal) to,
    /// for a process whose working folder was `cwd`; `Err` names a specifier it cannot know
    /// afterwards (`%t`, the dump's time, among them).
    pub fn core_path(
        &self,
        pid: i32,
        comm: &str,
        uid: u32,
        gid: u32,
        signal: i32,
        cwd: &Path,
    ) -> Result<PathBuf, String> {
        let Pattern::File { pattern, uses_pid } = self else {
            return Err("core_pattern is a pipe".into());
        };
        let mut out = String::new();
        let mut has_pid = false;
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => out.push('%'),
                Some('p' | 'P' | 'i' | 'I') => {
                    has_pid = true;
                    out.push_str(&pid.to_string());
                }
                Some('u') => out.push_str(&uid.to_string()),
                Some('g') => out.push_str(&gid.to_string()),
                Some('s') => out.push_str(&signal.to_string()),
                Some('e') => out.push_str(comm),
                Some('h') => out.push_str(&rustix::system::uname().nodename().to_string_lossy()),
                Some(x) => return Err(format!("core_pattern `{pattern}` uses %{x}")),
                None => {}
            }
        }
        if *uses_pid && !has_pid {
            out.push_str(&format!(".{pid}"));
        }
        let p = PathBuf::from(out);
        Ok(if p.is_absolute() { p } else { cwd.join(p) })
    }
}

/// One collected core, as `hamctl cores` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Core {
    pub entity: String,
    pub pid: i32,
    pub signal: i32,
    pub time_unix_ms: u64,
    pub bytes: u64,
    pub path: PathBuf,
}

/// The name a collected core gets.
pub fn core_name(pid: i32, signal: i32, unix_ms: u64) -> String {
    format!("core.{pid}.{signal}.{unix_ms}")
}

/// The cores collected under `cores_dir` (of `entity` only, if given), oldest first.
pub fn list(cores_dir: &Path, entity: Option<&str>) -> Vec<Core> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(cores_dir) else {
        return out;
    };
    for d in dirs.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        if entity.is_some_and(|e| e != name) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(d.path()) else {
            continue;
        };
        for f in files.flatten() {
            let file = f.file_name().to_string_lossy().into_owned();
            let parts: Vec<&str> = file.split('.').collect();
            let ["core", pid, signal, ms] = parts.as_slice() else {
                continue;
            };
            let (Ok(pid), Ok(signal), Ok(ms)) = (pid.parse(), signal.parse(), ms.parse()) else {
                continue;
            };
            out.push(Core {
                entity: name.clone(),
                pid,
                signal,
                time_unix_ms: ms,
                bytes: f.metadata().map_or(0, |m| m.len()),
                path: f.path(),
            });
        }
    }
    out.sort_by_key(|c| (c.time_unix_ms, c.pid));
    out
}

/// Moves the core at `from` into `<cores_dir>/<entity>/` (rename, or copy and remove across
/// file systems), then removes the entity's oldest cores beyond `keep` or `max_bytes`.
/// Runs on a thread of its own: a core may be large.
pub fn collect(
    from: &Path,
    cores_dir: &Path,
    entity: &str,
    name: &str,
    keep: usize,
    max_bytes: u64,
) -> std::io::Result<PathBuf> {
    let dir = cores_dir.join(entity);
    std::fs::create_dir_all(&dir)?;
    let to = dir.join(name);
    if std::fs::rename(from, &to).is_err() {
        std::fs::copy(from, &to)?;
        std::fs::remove_file(from)?;
    }
    let mut mine = list(cores_dir, Some(entity));
    let mut total: u64 = mine.iter().map(|c| c.bytes).sum();
    while mine.len() > keep.max(1) || (total > max_bytes && mine.len() > 1) {
        let old = mine.remove(0);
        total -= old.bytes;
        let _ = std::fs::remove_file(&old.path);
    }
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_expand_as_the_kernel_does() {
        let cwd = Path::new("/srv/app");
        let p = Pattern::parse("core", false);
        assert_eq!(
            p.core_path(42, "app", 0, 0, 11, cwd).unwrap(),
            Path::new("/srv/app/core")
        );
        let p = Pattern::parse("core", true);
        assert_eq!(
            p.core_path(42, "app", 0, 0, 11, cwd).unwrap(),
            Path::new("/srv/app/core.42")
        );
        let p = Pattern::parse("/var/crash/%e.%p.%s.%%", true);
        assert_eq!(
            p.core_path(42, "app", 0, 0, 11, cwd).unwrap(),
            Path::new("/var/crash/app.42.11.%")
        );
        let p = Pattern::parse("/tmp/core-%t", false);
        assert!(
            p.core_path(42, "app", 0, 0, 11, cwd)
                .unwrap_err()
                .contains("%t")
        );
        assert_eq!(
            Pattern::parse("|/usr/lib/systemd/systemd-coredump %P", false),
            Pattern::Pipe("/usr/lib/systemd/systemd-coredump %P".into())
        );
    }

    #[test]
    fn collected_cores_are_listed_and_the_oldest_go_beyond_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let cores = dir.path().join("cores");
        for (k, size) in [(1u64, 10usize), (2, 10), (3, 10)] {
            let from = dir.path().join(format!("core{k}"));
            std::fs::write(&from, vec![0u8; size]).unwrap();
            collect(
                &from,
                &cores,
                "app",
                &core_name(100 + k as i32, 11, k),
                2,
                1000,
            )
            .unwrap();
            assert!(!from.exists());
        }
        let l = list(&cores, Some("app"));
        assert_eq!(
            l.iter().map(|c| c.pid).collect::<Vec<_>>(),
            [102, 103],
            "keep 2"
        );
        assert_eq!((l[0].signal, l[0].bytes), (11, 10));
        // Over the byte limit: the oldest go, the newest stays.
        let from = dir.path().join("big");
        std::fs::write(&from, vec![0u8; 25]).unwrap();
        collect(&from, &cores, "app", &core_name(104, 6, 9), 5, 30).unwrap();
        assert_eq!(
            list(&cores, None).iter().map(|c| c.pid).collect::<Vec<_>>(),
            [104]
        );
    }
}
