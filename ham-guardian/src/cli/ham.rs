//! `ham`'s command line.

use std::ffi::OsString;
use std::path::PathBuf;

use super::hamctl::GenerateKind;
use super::lexopt_error;

/// What `ham` was asked.
#[derive(Debug, PartialEq)]
pub enum Mode {
    Help,
    Version,
    /// `--layouts`: the segment layouts this binary runs on (its own, then those it
    /// migrates), for `hamctl upgrade`.
    Layouts,
    Generate(GenerateKind),
    /// Run the instance the file describes.
    Run(PathBuf),
    /// `--wait-running`: as `Run`, once nothing runs the instance any more.
    RunWhenGone(PathBuf),
    /// Validate the file and exit.
    Check(PathBuf),
    /// Internal: the Guardian role, as a HAM starts it (`daemon::guardian_link`), with the
    /// HAM's pid and start time.
    Guardian(PathBuf, i32, u64),
}

/// Parses `ham`'s arguments (without the program name); `env_config` is `$HAM_CONFIG`.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env_config: Option<OsString>,
) -> Result<Mode, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut config: Option<PathBuf> = None;
    let (mut check, mut guardian, mut wait) = (false, false, false);
    let (mut ham_pid, mut ham_start) = (None, None);
    let mut early = None;
    while let Some(arg) = p.next().map_err(lexopt_error)? {
        match arg {
            Short('h') | Long("help") => early = early.or(Some(Mode::Help)),
            Short('V') | Long("version") => early = early.or(Some(Mode::Version)),
            Long("layouts") => early = early.or(Some(Mode::Layouts)),
            Long("man") => early = early.or(Some(Mode::Generate(GenerateKind::Man))),
            Long("completions") => {
                let sh = p
                    .value()
                    .map_err(lexopt_error)?
                    .string()
                    .map_err(lexopt_error)?;
                early = early.or(Some(Mode::Generate(GenerateKind::Completions(sh))));
            }
            Short('c') | Long("config") | Long("check-config") => {
                check |= arg == Long("check-config");
                let v = p.value().map_err(lexopt_error)?;
                if config.replace(PathBuf::from(v)).is_some() {
                    return Err("only one configuration file may be given".into());
                }
            }
            Long("guardian") => guardian = true,
            Long("wait-running") => wait = true,
            Long("ham-pid") => {
                let v = p
                    .value()
                    .map_err(lexopt_error)?
                    .string()
                    .map_err(lexopt_error)?;
                ham_pid = Some(
                    v.parse::<i32>()
                        .map_err(|_| format!("--ham-pid: `{v}` is not a pid"))?,
                );
            }
            Long("ham-start") => {
                let v = p
                    .value()
                    .map_err(lexopt_error)?
                    .string()
                    .map_err(lexopt_error)?;
                ham_start = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("--ham-start: `{v}` is not a start time"))?,
                );
            }
            Value(v) => return Err(format!("unexpected argument `{}`", v.to_string_lossy())),
            _ => return Err(lexopt_error(arg.unexpected())),
        }
    }
    if let Some(m) = early {
        return Ok(m);
    }
    let path = config
        .or_else(|| env_config.map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG));
    Ok(match (guardian, ham_pid, ham_start) {
        (true, Some(pid), Some(start)) => Mode::Guardian(path, pid, start),
        (true, ..) => return Err("--guardian needs --ham-pid and --ham-start".into()),
        (false, None, None) if check && wait => {
            return Err("--wait-running goes with --config, not --check-config".into());
        }
        (false, None, None) if check => Mode::Check(path),
        (false, None, None) if wait => Mode::RunWhenGone(path),
        (false, None, None) => Mode::Run(path),
        (false, ..) => return Err("--ham-pid and --ham-start go with --guardian".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(s: &str) -> Result<Mode, String> {
        parse(s.split_whitespace().map(OsString::from), None)
    }

    #[test]
    fn modes() {
        assert_eq!(
            parse_words("-c a.toml").unwrap(),
            Mode::Run("a.toml".into())
        );
        assert_eq!(
            parse_words("--config=a.toml").unwrap(),
            Mode::Run("a.toml".into())
        );
        assert_eq!(
            parse_words("--check-config a.toml").unwrap(),
            Mode::Check("a.toml".into())
        );
        assert_eq!(
            parse(Vec::<OsString>::new(), Some("/e.toml".into())).unwrap(),
            Mode::Run("/e.toml".into())
        );
        assert_eq!(
            parse_words("--guardian -c a.toml --ham-pid 10 --ham-start 99").unwrap(),
            Mode::Guardian("a.toml".into(), 10, 99)
        );
        assert_eq!(parse_words("-V").unwrap(), Mode::Version);
        assert_eq!(
            parse_words("-c a.toml --wait-running").unwrap(),
            Mode::RunWhenGone("a.toml".into())
        );
        assert!(parse_words("--check-config a.toml --wait-running").is_err());
        assert_eq!(parse_words("-c a.toml --help").unwrap(), Mode::Help);
        assert_eq!(
            parse_words("--man").unwrap(),
            Mode::Generate(GenerateKind::Man)
        );
    }

    #[test]
    fn bad_command_lines_say_why() {
        for (line, why) in [
            ("-c a -c b", "only one configuration file"),
            ("run", "unexpected argument `run`"),
            ("--bogus", "--bogus"),
            ("-c", "missing argument"),
            ("--guardian -c a", "--guardian needs --ham-pid"),
            ("--ham-pid 3", "go with --guardian"),
            ("--guardian --ham-pid x --ham-start 1", "`x` is not a pid"),
        ] {
            let e = parse_words(line).expect_err(line);
            assert!(e.contains(why), "`{line}`: {e}");
        }
    }
}
