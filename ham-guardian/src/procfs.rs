//! What `/proc` tells about a process.

use std::path::Path;

/// The start time of `pid` (field 22 of `/proc/PID/stat`, clock ticks since boot), or
/// `None` if there is no such process. With the pid it names one process: a reused pid has
/// a different start time.
/// This process's start time, read once (it never changes): a takeover needs it twice,
/// and a Guardian reads it while it waits.
pub fn own_start_time() -> Option<u64> {
    static OWN: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| start_time(std::process::id() as i32))
}

pub fn start_time(pid: i32) -> Option<u64> {
    // On every spawn's path before the release: one open, one read, one close (not
    // read_to_string's statx and growing reads). A stat line is a few hundred bytes; one
    // that fills the buffer is read again whole.
    let mut buf = [0u8; 1024];
    let path = format!("/proc/{pid}/stat");
    let fd = rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    let n = rustix::io::read(&fd, &mut buf).ok()?;
    if n == buf.len() {
        return start_time_in(Path::new("/proc"), pid);
    }
    parse_start_time(std::str::from_utf8(&buf[..n]).ok()?)
}

fn start_time_in(proc_root: &Path, pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_start_time(&stat)
}

/// The text of `/proc/PID/stat`.
fn read_stat(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// Where this process's command line lies in its memory: `arg_start` and `arg_end`
/// (fields 48 and 49 of `/proc/self/stat`, Linux ≥ 3.5).
pub fn own_args_area() -> Option<(usize, usize)> {
    // Read once: the area never moves, and a Guardian that takes over retitles itself on
    // the path of the restarts it makes.
    static AREA: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();
    *AREA.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let start = field(&stat, 48)?.parse().ok()?;
        let end = field(&stat, 49)?.parse().ok()?;
        Some((start, end))
    })
}

/// Field `n` (numbered from 1, as proc(5) does) of a `/proc/PID/stat` text. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted from the last `)`.
fn field(stat: &str, n: usize) -> Option<&str> {
    debug_assert!(n >= 3, "fields 1 and 2 come before the command name's end");
    stat[stat.rfind(')')? + 1..]
        .split_ascii_whitespace()
        .nth(n - 3)
}

/// Parses field 22 (the start time) from the text of `/proc/PID/stat`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    field(stat, 22)?.parse().ok()
}

/// For a zombie `pid` that started at `start_time`: its wait status (field 52 of
/// `/proc/PID/stat`, readable until it is reaped). `None` if it is not such a zombie.
pub fn zombie_status(pid: i32, start_time: u64) -> Option<i32> {
    parse_zombie_status(&read_stat(pid)?, start_time)
}

fn parse_zombie_status(stat: &str, start_time: u64) -> Option<i32> {
    if parse_start_time(stat)? != start_time || field(stat, 3)? != "Z" {
        return None;
    }
    field(stat, 52)?.parse().ok()
}

/// The parent of `pid` (field 4 of `/proc/PID/stat`).
pub fn parent(pid: i32) -> Option<i32> {
    field(&read_stat(pid)?, 4)?.parse().ok()
}

/// True if `pid` runs (and is not a zombie) and started at `start_time`.
/// Whether `pid`, started at `start_time`, is stopped (`T`: by a signal; `t`: by a
/// tracer).
pub fn is_stopped(pid: i32, start_time: u64) -> bool {
    read_stat(pid).is_some_and(|stat| {
        matches!(field(&stat, 3), Some("T" | "t")) && parse_start_time(&stat) == Some(start_time)
    })
}

pub fn is_alive(pid: i32, start_time: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Some(stat) = read_stat(pid) else {
        return false;
    };
    !matches!(field(&stat, 3), Some("Z" | "X" | "x") | None)
        && parse_start_time(&stat) == Some(start_time)
}

/// Whether `pid` runs under this process's effective uid. With the segment proven ham's
/// own, its recorded pid and start time name this user's HAM or Guardian; the uid check
/// keeps a recorded pid that another user's process now holds from counting as running.
pub fn is_mine(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .is_ok_and(|m| m.uid() == rustix::process::geteuid().as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_field_22_past_a_hostile_comm() {
        let stat =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (x) S 1"), None);
    }

    #[test]
    fn a_zombies_status_is_field_52() {
        let mut f: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        f[0] = "Z".into();
        f[19] = "777".into(); // field 22
        f[49] = "32000".into(); // field 52: exit code 125
        let stat = format!("9 (x y) {}", f.join(" "));
        assert_eq!(parse_zombie_status(&stat, 777), Some(32000));
        assert_eq!(parse_zombie_status(&stat, 778), None);
        let running = stat.replace(") Z ", ") S ");
        assert_eq!(parse_zombie_status(&running, 777), None);
    }

    #[test]
    fn our_own_start_time_is_stable() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert!(is_alive(me, t));
        assert!(!is_alive(me, t + 1));
        assert!(!is_alive(0, t));
    }
}
