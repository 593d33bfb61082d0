//! `hamctl`'s command line.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::{Generate, lexopt_error, negative_number};
use crate::control::Request;

/// What `hamctl` was asked.
#[derive(Debug, PartialEq)]
pub enum Command {
    Help,
    Version,
    Generate(GenerateKind),
    Status {
        json: bool,
        tree: bool,
    },
    Log {
        entity: Option<String>,
        json: bool,
    },
    Pss {
        entity: String,
        json: bool,
    },
    Cores {
        entity: Option<String>,
        json: bool,
    },
    /// `metrics`: the status as Prometheus text.
    Metrics,
    /// `upgrade [--binary PATH]`.
    Upgrade {
        binary: Option<PathBuf>,
    },
    /// `logs ENTITY`: its captured output.
    Logs {
        entity: String,
        lines: usize,
        follow: bool,
    },
    /// `cluster status`: what this node knows of its cluster.
    ClusterStatus {
        json: bool,
    },
    /// A request to the running ham.
    Send(Request),
}

/// [`Generate`] as data that compares (for tests).
#[derive(Debug, PartialEq)]
pub enum GenerateKind {
    Completions(String),
    Man,
}

impl GenerateKind {
    pub fn to_generate(&self) -> Generate {
        match self {
            GenerateKind::Completions(s) => Generate::Completions(s.clone()),
            GenerateKind::Man => Generate::Man,
        }
    }
}

#[derive(Debug)]
pub struct Args {
    pub config: PathBuf,
    pub timeout: Duration,
    pub command: Command,
}

/// Parses `hamctl`'s arguments (without the program name); `env_config` is `$HAM_CONFIG`.
/// The error is the usage message's first line.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env_config: Option<OsString>,
) -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let (mut config, mut timeout) = (None, Duration::from_secs(60));
    let (mut json, mut tree, mut generate, mut help) = (false, false, None, false);
    let mut version = false;
    let (mut follow, mut lines) = (false, None::<usize>);
    let mut binary: Option<PathBuf> = None;
    let mut cluster = false;
    let mut words: Vec<String> = Vec::new();
    while let Some(arg) = p.next().map_err(lexopt_error)? {
        match arg {
            Short('h') | Long("help") => help = true,
            Short('V') | Long("version") => version = true,
            Short('f') | Long("follow") => follow = true,
            Long("binary") => binary = Some(PathBuf::from(p.value().map_err(lexopt_error)?)),
            Short('n') | Long("lines") => {
                let v = p
                    .value()
                    .map_err(lexopt_error)?
                    .string()
                    .map_err(lexopt_error)?;
                lines = Some(
                    v.parse()
                        .map_err(|_| format!("--lines: `{v}` is not a number of lines"))?,
                );
            }
            Short('c') | Long("config") => {
                config = Some(PathBuf::from(p.value().map_err(lexopt_error)?))
            }
            Long("timeout") => {
                let v = p
                    .value()
                    .map_err(lexopt_error)?
                    .string()
                    .map_err(lexopt_error)?;
                let ns = ham_core::duration::parse_ns(&v).map_err(|e| format!("--timeout: {e}"))?;
                timeout = Duration::from_nanos(ns);
            }
            Long("json") => json = true,
            Long("tree") => tree = true,
            Long("cluster") => cluster = true,
            Long("man") => generate = Some(GenerateKind::Man),
            Long("completions") => {
                let sh = p
                    .value()
                    .map_err(lexopt_error)?
                    .string()
                    .map_err(lexopt_error)?;
                generate = Some(GenerateKind::Completions(sh));
            }
            Short(d) if d.is_ascii_digit() => {
                words.push(negative_number(&mut p, d).map_err(lexopt_error)?)
            }
            Value(v) => words.push(v.string().map_err(lexopt_error)?),
            _ => return Err(lexopt_error(arg.unexpected())),
        }
    }
    let config = config
        .or_else(|| env_config.map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG));
    let command = if help
        || (words.is_empty() && generate.is_none() && !version && !json && !tree && !cluster)
    {
        // `hamctl` alone: the help, as asked for.
        Command::Help
    } else if version {
        Command::Version
    } else if let Some(g) = generate {
        Command::Generate(g)
    } else {
        command(&words, json, tree, cluster)?
    };
    let command = match command {
        Command::Logs { entity, .. } => Command::Logs {
            entity,
            lines: lines.unwrap_or(10),
            follow,
        },
        _ if follow || lines.is_some() => {
            return Err("-f and -n are options of logs".into());
        }
        Command::Upgrade { .. } => Command::Upgrade { binary },
        _ if binary.is_some() => return Err("--binary is an option of upgrade".into()),
        c => c,
    };
    Ok(Args {
        config,
        timeout,
        command,
    })
}

fn command(words: &[String], json: bool, tree: bool, cluster: bool) -> Result<Command, String> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let (name, rest) = match w.split_first() {
        Some((n, r)) => (*n, r),
        None => return Err("no command given".into()),
    };
    if cluster && name != "device-restart" {
        return Err(format!(
            "--cluster is an option of device-restart, not of {name}"
        ));
    }
    if tree && name != "status" {
        return Err(format!("--tree is an option of status, not of {name}"));
    }
    if json && !matches!(name, "status" | "log" | "pss" | "cores" | "cluster") {
        return Err(format!(
            "--json is an option of status, log, pss, cores and cluster status, not of {name}"
        ));
    }
    let entity = |what: &str| match rest {
        [e] => Ok(e.to_string()),
        [] => Err(format!("{what}: which entity? (hamctl {what} ENTITY)")),
        _ => Err(format!("{what} takes one ENTITY")),
    };
    let none = |c: Command| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(format!("{name} takes no arguments"))
        }
    };
    Ok(match name {
        "status" if json && tree => return Err("status takes --json or --tree, not both".into()),
        "status" => none(Command::Status { json, tree })?,
        "metrics" => none(Command::Metrics)?,
        "upgrade" => none(Command::Upgrade { binary: None })?,
        "logs" => Command::Logs {
            entity: entity("logs")?,
            lines: 10,
            follow: false,
        },
        "log" => match rest {
            [] => Command::Log { entity: None, json },
            [e] => Command::Log {
                entity: Some(e.to_string()),
                json,
            },
            _ => return Err("log takes at most one ENTITY".into()),
        },
        "cores" => match rest {
            [] => Command::Cores { entity: None, json },
            [e] => Command::Cores {
                entity: Some(e.to_string()),
                json,
            },
            _ => return Err("cores takes at most one ENTITY".into()),
        },
        "pss" => Command::Pss {
            entity: entity("pss")?,
            json,
        },
        "cluster" => match rest {
            ["status"] => Command::ClusterStatus { json },
            ["switchover"] if !json => Command::Send(Request::ClusterSwitchover),
            ["set", key, value] if !json => Command::Send(Request::ClusterSet {
                key: key.to_string(),
                value: value.to_string(),
            }),
            _ => {
                return Err("cluster takes status [--json], set KEY VALUE, or switchover".into());
            }
        },
        "start" => Command::Send(Request::Start {
            entity: entity("start")?,
        }),
        "stop" => Command::Send(Request::Stop {
            entity: entity("stop")?,
        }),
        "restart" => Command::Send(Request::Restart {
            entity: entity("restart")?,
        }),
        "shutdown" => none(Command::Send(Request::Shutdown))?,
        "ping" => none(Command::Send(Request::Ping))?,
        "device-restart" => match (rest, cluster) {
            (["enable"], false) => Command::Send(Request::DeviceRestart { enabled: true }),
            (["disable"], false) => Command::Send(Request::DeviceRestart { enabled: false }),
            // Through the cluster's master, to every node.
            (["enable" | "disable"], true) => Command::Send(Request::ClusterSet {
                key: "device-restart".into(),
                value: format!("{}d", rest[0]),
            }),
            _ => return Err("device-restart takes enable or disable".into()),
        },
        "raise" => match rest {
            [e, class, more @ ..] if more.len() <= 2 => {
                let severity = match more.first().map(|s| s.parse::<u32>()) {
                    None => 0,
                    Some(Ok(s)) => s,
                    Some(Err(_)) => return Err("SEVERITY must be a whole number ≥ 0".into()),
                };
                let value = match more.get(1).map(|s| s.parse::<i64>()) {
                    None => 0,
                    Some(Ok(v)) => v,
                    Some(Err(_)) => return Err("VALUE must be a whole number".into()),
                };
                Command::Send(Request::Raise {
                    entity: e.to_string(),
                    class: class.to_string(),
                    severity,
                    value,
                })
            }
            _ => return Err("raise takes ENTITY CLASS [SEVERITY [VALUE]]".into()),
        },
        other => return Err(format!("unknown command `{other}`")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::HAMCTL;

    fn parse_words(s: &str) -> Result<Args, String> {
        parse(s.split_whitespace().map(OsString::from), None)
    }

    /// Every command the help describes is one the parser takes, with each of its forms.
    #[test]
    fn every_described_command_parses() {
        for c in HAMCTL.commands {
            let sample = c
                .args
                .replace("[--json|--tree]", "")
                .replace("enable|disable [--cluster]", "enable --cluster")
                .replace("enable|disable", "enable")
                .replace(
                    "status [--json] | set KEY VALUE | switchover",
                    "status --json",
                )
                .replace("[ENTITY] [--json]", "x --json")
                .replace("ENTITY [--json]", "x --json")
                .replace("[SEVERITY [VALUE]]", "2 -5")
                .replace("[-n N] [-f]", "-n 5 -f")
                .replace("[--binary PATH]", "--binary /usr/sbin/ham")
                .replace("ENTITY", "x")
                .replace("CLASS", "overheat");
            let line = format!("{} {sample}", c.name);
            assert!(
                parse_words(&line).is_ok(),
                "`{line}`: {:?}",
                parse_words(&line)
            );
        }
        let described: Vec<&str> = HAMCTL.commands.iter().map(|c| c.name).collect();
        for w in [
            "status",
            "start",
            "stop",
            "restart",
            "shutdown",
            "device-restart",
            "log",
            "raise",
            "pss",
            "cores",
            "cluster",
            "ping",
        ] {
            assert!(described.contains(&w), "{w} is not in the help");
        }
    }

    #[test]
    fn cluster_wide_settings_go_through_cluster_set() {
        let set = |k: &str, v: &str| {
            Command::Send(Request::ClusterSet {
                key: k.into(),
                value: v.into(),
            })
        };
        assert_eq!(
            parse_words("device-restart disable --cluster")
                .unwrap()
                .command,
            set("device-restart", "disabled")
        );
        assert_eq!(
            parse_words("--cluster device-restart enable")
                .unwrap()
                .command,
            set("device-restart", "enabled")
        );
        assert_eq!(
            parse_words("cluster set verbosity 2").unwrap().command,
            set("verbosity", "2")
        );
        assert_eq!(
            parse_words("device-restart disable").unwrap().command,
            Command::Send(Request::DeviceRestart { enabled: false })
        );
        let e = parse_words("stop x --cluster").unwrap_err();
        assert!(
            e.contains("--cluster is an option of device-restart"),
            "{e}"
        );
        assert!(parse_words("cluster set verbosity").is_err());
    }

    #[test]
    fn options_anywhere_and_with_equals() {
        let a = parse_words("stop web -c /tmp/h.toml --timeout=5s").unwrap();
        assert_eq!(a.config, PathBuf::from("/tmp/h.toml"));
        assert_eq!(a.timeout, Duration::from_secs(5));
        assert_eq!(
            a.command,
            Command::Send(Request::Stop {
                entity: "web".into()
            })
        );
        let a = parse_words("--json status").unwrap();
        assert_eq!(
            a.command,
            Command::Status {
                json: true,
                tree: false
            }
        );
    }

    #[test]
    fn a_negative_value_is_a_word() {
        let a = parse_words("raise web overheat 3 -40").unwrap();
        assert_eq!(
            a.command,
            Command::Send(Request::Raise {
                entity: "web".into(),
                class: "overheat".into(),
                severity: 3,
                value: -40
            })
        );
    }

    #[test]
    fn the_config_comes_from_the_option_then_the_environment() {
        let a = parse(["ping".into()], Some("/env.toml".into())).unwrap();
        assert_eq!(a.config, PathBuf::from("/env.toml"));
        let a = parse(
            ["ping".into(), "-c".into(), "/opt.toml".into()],
            Some("/env.toml".into()),
        )
        .unwrap();
        assert_eq!(a.config, PathBuf::from("/opt.toml"));
        let a = parse(["ping".into()], None).unwrap();
        assert_eq!(a.config, PathBuf::from(crate::config::DEFAULT_CONFIG));
    }

    #[test]
    fn logs_takes_lines_and_follow() {
        assert_eq!(
            parse_words("logs w -n 5 -f").unwrap().command,
            Command::Logs {
                entity: "w".into(),
                lines: 5,
                follow: true
            }
        );
        assert_eq!(
            parse_words("logs w").unwrap().command,
            Command::Logs {
                entity: "w".into(),
                lines: 10,
                follow: false
            }
        );
        assert!(parse_words("status -f").is_err());
        assert!(parse_words("logs w -n many").is_err());
    }

    #[test]
    fn bad_command_lines_say_why() {
        for (line, why) in [
            ("--json", "no command"),
            ("frobnicate", "unknown command `frobnicate`"),
            ("stop", "stop: which entity? (hamctl stop ENTITY)"),
            ("stop a b", "stop takes one ENTITY"),
            ("ping now", "ping takes no arguments"),
            (
                "stop x --json",
                "--json is an option of status, log, pss, cores and cluster status",
            ),
            ("pss", "pss: which entity?"),
            ("log --tree", "--tree is an option of status"),
            ("status --json --tree", "not both"),
            ("raise x c high", "SEVERITY must be a whole number"),
            ("raise x c 1 2 3", "raise takes ENTITY CLASS"),
            (
                "device-restart maybe",
                "device-restart takes enable or disable",
            ),
            ("--timeout soon ping", "--timeout"),
            ("--bogus ping", "--bogus"),
            ("ping -c", "missing argument"),
        ] {
            let e = parse_words(line).expect_err(line);
            assert!(e.contains(why), "`{line}`: {e}");
        }
    }

    #[test]
    fn help_and_generation_need_no_command() {
        assert_eq!(parse_words("--help").unwrap().command, Command::Help);
        assert_eq!(parse_words("stop x -h").unwrap().command, Command::Help);
        assert_eq!(
            parse_words("--man").unwrap().command,
            Command::Generate(GenerateKind::Man)
        );
        assert_eq!(
            parse_words("--completions bash").unwrap().command,
            Command::Generate(GenerateKind::Completions("bash".into()))
        );
    }
}
