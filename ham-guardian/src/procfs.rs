//! What `/proc` tells about a process.

use std::path::Path;

/// The start time of `pid` (field 22 of `/proc/PID/stat`, clock ticks since boot), or
/// `None` if there is no such process. With the pid it names one process: a reused pid has
/// a different start time.
pub fn start_time(pid: i32) -> Option<u64> {
    start_time_in(Path::new("/proc"), pid)
}

fn start_time_in(proc_root: &Path, pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_start_time(&stat)
}

/// Parses field 22 from the text of `/proc/PID/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")" come field 3 (state) onwards: field 22 is the 20th of those.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// True if `pid` runs (and is not a zombie) and started at `start_time`.
pub fn is_alive(pid: i32, start_time: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_ascii_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x")) && parse_start_time(&stat) == Some(start_time)
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
    fn our_own_start_time_is_stable() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert!(is_alive(me, t));
        assert!(!is_alive(me, t + 1));
        assert!(!is_alive(0, t));
    }
}
