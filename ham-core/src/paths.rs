//! Where an instance's things are, in one place for the daemon, `hamctl` and the SDK: the
//! defaults, the names of its shared-memory objects, the files in its run directory, and
//! reading `[ham] name` and `run_dir` from a configuration file (all a client needs of it).

use std::path::{Path, PathBuf};

/// ham's configuration file when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/ham/ham.toml";
/// `[ham] run_dir` when not given.
pub const DEFAULT_RUN_DIR: &str = "/run/ham";
/// `[ham] log_dir` when not given.
pub const DEFAULT_LOG_DIR: &str = "/var/log/ham";
/// `[ham] state_dir` when not given: what survives a reboot (durable checkpoints).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ham";

/// The state segment of instance `name`.
pub fn state_segment(name: &str) -> String {
    format!("/ham.{name}.state")
}

/// The client segment (heartbeat slots, detector ring) of instance `name`.
pub fn client_segment(name: &str) -> String {
    format!("/ham.{name}.client")
}

/// The heartbeat page of attachment `slot` of instance `name`.
pub fn beat_page(name: &str, slot: u32) -> String {
    format!("/ham.{name}.hb.{slot}")
}

/// Lane `n` of instance `name` (`ham_core::lane`), made for the process `pid` (started at
/// `start`, in clock ticks after boot) of user `uid`: the name is how a successor knows
/// whose the lane is.
pub fn lane(name: &str, pid: u32, start: u64, uid: u32, n: u64) -> String {
    format!("/ham.{name}.lane.{pid}.{start}.{uid}.{n}")
}

/// The owner (pid, start, uid) and number of a lane of instance `name`, from the name of
/// its file under `/dev/shm` (no leading slash); `None` for any other file.
pub fn parse_lane(name: &str, file: &str) -> Option<(u32, u64, u32, u64)> {
    let rest = file
        .strip_prefix("ham.")?
        .strip_prefix(name)?
        .strip_prefix(".lane.")?;
    let mut it = rest.split('.');
    let parsed = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    it.next().is_none().then_some(parsed)
}

/// The checkpoint store (`ham_core::pss`) of the entity in `slot` of instance `name`.
pub fn pss_region(name: &str, slot: u32) -> String {
    format!("/ham.{name}.pss.{slot}")
}

/// The message queue (`ham_core::mts`) of the entity in `slot` of instance `name`.
pub fn mts_queue(name: &str, slot: u32) -> String {
    format!("/ham.{name}.mts.{slot}")
}

/// The file of entity `entity`'s durable message queue.
pub fn mts_file(state_dir: &Path, name: &str, entity: &str) -> PathBuf {
    state_dir
        .join(name)
        .join("mts")
        .join(format!("{entity}.mts"))
}

/// The file of entity `entity`'s durable checkpoints.
pub fn pss_file(state_dir: &Path, name: &str, entity: &str) -> PathBuf {
    state_dir
        .join(name)
        .join("pss")
        .join(format!("{entity}.pss"))
}

/// The control socket.
pub fn socket(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.sock"))
}

/// The pid file.
pub fn pid_file(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.pid"))
}

/// The sd_notify socket.
pub fn notify_socket(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.notify"))
}

/// `[ham] name` and `run_dir` of a configuration file, read without the rest of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceKeys {
    pub name: String,
    /// As written (relative to the file's folder if not absolute); `None`: the default.
    pub run_dir: Option<String>,
}

/// Reads `[ham] name` and `run_dir` from a configuration file's text, written (as every
/// example and the README write them) as `key = "string"` or `key = 'string'` lines in a
/// `[ham]` table. Anything else of the file is not looked at. An error says what was not
/// found or not understood, with its line; the daemon's full parser is the judge of the
/// rest.
pub fn instance_keys(text: &str) -> Result<InstanceKeys, String> {
    let mut in_ham = false;
    let mut seen_ham = false;
    let (mut name, mut run_dir) = (None, None);
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            let header = line.split('#').next().unwrap_or("").trim();
            in_ham = header == "[ham]";
            seen_ham |= in_ham;
            continue;
        }
        if !in_ham || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let key = key
            .strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .unwrap_or(key);
        let slot = match key {
            "name" => &mut name,
            "run_dir" => &mut run_dir,
            _ => continue,
        };
        let value = string_value(value.trim())
            .ok_or_else(|| format!("line {}: `{key}` is not a one-line string", n + 1))?;
        *slot = Some(value);
    }
    if !seen_ham {
        return Err("no [ham] table".into());
    }
    Ok(InstanceKeys {
        name: name.ok_or("no [ham] name")?,
        run_dir,
    })
}

/// A TOML basic (`"…"`, with escapes) or literal (`'…'`) string followed only by a comment.
fn string_value(v: &str) -> Option<String> {
    let mut chars = v.chars();
    let quote = chars.next()?;
    let mut out = String::new();
    match quote {
        '\'' => {
            for c in chars.by_ref() {
                if c == '\'' {
                    return rest_is_comment(chars.as_str()).then_some(out);
                }
                out.push(c);
            }
            None
        }
        '"' => {
            while let Some(c) = chars.next() {
                match c {
                    '"' => return rest_is_comment(chars.as_str()).then_some(out),
                    '\\' => out.push(match chars.next()? {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        'e' => '\u{1b}',
                        '"' => '"',
                        '\\' => '\\',
                        'u' => unicode(&mut chars, 4)?,
                        'U' => unicode(&mut chars, 8)?,
                        _ => return None,
                    }),
                    c => out.push(c),
                }
            }
            None
        }
        _ => None,
    }
}

fn unicode(chars: &mut std::str::Chars, digits: usize) -> Option<char> {
    let hex: String = chars.take(digits).collect();
    (hex.len() == digits)
        .then(|| u32::from_str_radix(&hex, 16).ok())
        .flatten()
        .and_then(char::from_u32)
}

fn rest_is_comment(rest: &str) -> bool {
    let rest = rest.trim_start();
    rest.is_empty() || rest.starts_with('#')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_keys_are_read_from_the_ham_table_only() {
        let text = "# a comment\n[ham]\nname = \"demo\"   # the instance\nrun_dir = 'run'\n\n\
                    [[entity]]\nname = \"web\"\nrun_dir = \"elsewhere\"\n";
        assert_eq!(
            instance_keys(text),
            Ok(InstanceKeys {
                name: "demo".into(),
                run_dir: Some("run".into())
            })
        );
        let text = "[[entity]]\nname = \"web\"\n[ham] # main\nname = \"a\\u0062c\"\n";
        assert_eq!(instance_keys(text).unwrap().name, "abc");
        assert_eq!(instance_keys(text).unwrap().run_dir, None);
    }

    #[test]
    fn a_lanes_owner_is_read_back_from_its_name_and_only_its_instances() {
        let n = lane("demo", 42, 1234, 1000, 7);
        assert_eq!(n, "/ham.demo.lane.42.1234.1000.7");
        assert_eq!(parse_lane("demo", &n[1..]), Some((42, 1234, 1000, 7)));
        assert_eq!(parse_lane("dem", &n[1..]), None, "another instance's");
        assert_eq!(parse_lane("demo", "ham.demo.hb.3"), None);
        assert_eq!(parse_lane("demo", "ham.demo.lane.42.1234.1000"), None);
        assert_eq!(parse_lane("demo", "ham.demo.lane.42.1234.1000.7.8"), None);
        assert_eq!(parse_lane("demo", "ham.demo.lane.x.1234.1000.7"), None);
        let dotted = lane("a.lane.1", 1, 2, 3, 4);
        assert_eq!(parse_lane("a", &dotted[1..]), None);
        assert_eq!(parse_lane("a.lane.1", &dotted[1..]), Some((1, 2, 3, 4)));
    }

    #[test]
    fn what_cannot_be_read_is_said() {
        assert_eq!(
            instance_keys("[x]\nname = \"a\"\n"),
            Err("no [ham] table".into())
        );
        assert_eq!(
            instance_keys("[ham]\nrun_dir = \"r\"\n"),
            Err("no [ham] name".into())
        );
        let e = instance_keys("[ham]\nname = \"\"\"multi\n\"\"\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("`name`"), "{e}");
        assert!(instance_keys("[ham]\nname = 42\n").is_err());
        assert!(instance_keys("[ham]\nname = \"a\" trailing\n").is_err());
    }
}
