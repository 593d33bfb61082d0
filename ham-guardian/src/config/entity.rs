//! One `[[entity]]` table, resolved and checked.

use super::*;

pub(super) fn entity(ctx: &Ctx, i: usize, e: &RawEntity) -> Result<EntityConfig, ConfigError> {
    let key = |k: &str| Some(format!("entity[{i}].{k}"));
    let name = e.name.get_ref();
    // A free entry, only among run-time definitions.
    let free = is_free_entry(name)
        && e.attach_only
        && (!ctx.strict || e.name.span().start >= ctx.runtime_from);
    let name_ok = free
        || !name.is_empty()
            && name.len() <= NAME_MAX
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c))
            // It names folders (cgroup, output, cores): never the one above or this one.
            && name != "."
            && name != "..";
    if !name_ok {
        return Err(ctx.err(
            Some(e.name.span()),
            key("name"),
            format!(
                "entity name `{name}` must be 1 to {NAME_MAX} characters of A-Z a-z 0-9 - _ . @ : \
                 (and not `.` or `..`)"
            ),
        ));
    }

    let command = match (&e.command, e.attach_only) {
        (Some(c), false) => c,
        (None, true) => &Spanned::new(0..0, Vec::new()),
        (Some(c), true) => {
            return Err(ctx.err(
                Some(c.span()),
                key("command"),
                "an `attach_only` entity has no `command`: a process attaches itself",
            ));
        }
        (None, false) => {
            return Err(ctx.err(
                Some(e.name.span()),
                key("command"),
                "missing `command` (or `attach_only = true` for a process that attaches itself)",
            ));
        }
    };
    let argv = command.get_ref().clone();
    let program = match argv.first() {
        Some(p) => p.clone(),
        None if e.attach_only => String::new(),
        None => {
            return Err(ctx.err(Some(command.span()), key("command"), "command is empty"));
        }
    };
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(ctx.err(
            Some(command.span()),
            key("command"),
            "command contains a NUL byte",
        ));
    }

    for (k, v) in &e.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(ctx.err(
                Some(e.name.span()),
                key("env"),
                format!("environment variable `{k}` has an invalid name or value"),
            ));
        }
    }
    let search_path = e
        .env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let exec_path = match ctx.program(&program, command.span().start, &search_path) {
        _ if e.attach_only => PathBuf::new(),
        Ok(p) => p,
        Err(why) => return Err(ctx.err(Some(command.span()), key("command"), why)),
    };

    let cwd = match &e.cwd {
        None => None,
        Some(c) => {
            let p = ctx.path(c.get_ref());
            if ctx.strict && !p.is_dir() {
                return Err(ctx.err(
                    Some(c.span()),
                    key("cwd"),
                    format!("{} is not a directory", p.display()),
                ));
            }
            Some(p)
        }
    };

    let (mut uid, mut gid) = (None, None);
    if let Some(u) = &e.user {
        match nix::unistd::User::from_name(u.get_ref()) {
            Ok(Some(user)) => {
                uid = Some(user.uid.as_raw());
                gid = Some(user.gid.as_raw());
            }
            Ok(None) => {
                return Err(ctx.err(
                    Some(u.span()),
                    key("user"),
                    format!("no such user `{}`", u.get_ref()),
                ));
            }
            Err(err) => {
                return Err(ctx.err(
                    Some(u.span()),
                    key("user"),
                    format!("cannot look up user: {err}"),
                ));
            }
        }
    }
    if let Some(g) = &e.group {
        gid = Some(
            resolve_group(g.get_ref()).map_err(|why| ctx.err(Some(g.span()), key("group"), why))?,
        );
    }

    let stop_signal = match &e.stop_signal {
        None => libc::SIGTERM,
        Some(s) => parse_signal(s.get_ref())
            .map_err(|why| ctx.err(Some(s.span()), key("stop_signal"), why))?,
    };
    let stop_timeout_ns = match &e.stop_timeout {
        None => duration::parse_ns(DEFAULT_STOP_TIMEOUT).expect("default parses"),
        Some(t) => duration::parse_ns(t.get_ref())
            .map_err(|why| ctx.err(Some(t.span()), key("stop_timeout"), why))?,
    };
    let restart = match &e.restart {
        None => RestartMode::default(),
        Some(r) => RestartMode::parse(r.get_ref()).ok_or_else(|| {
            ctx.err(
                Some(r.span()),
                key("restart"),
                format!(
                    "unknown restart mode `{}` (use \"always\", \"on-failure\" or \"never\")",
                    r.get_ref()
                ),
            )
        })?,
    };
    let output = match &e.output {
        None => Output::Inherit,
        Some(o) if o.get_ref() == "inherit" => Output::Inherit,
        Some(o) if o.get_ref() == "log" => {
            let max_bytes =
                e.output_max_bytes
                    .as_ref()
                    .map_or(Ok(DEFAULT_OUTPUT_MAX_BYTES), |b| match *b.get_ref() {
                        n if n >= 4096 => Ok(n),
                        _ => Err(ctx.err(
                            Some(b.span()),
                            key("output_max_bytes"),
                            "at least 4096 bytes",
                        )),
                    })?;
            Output::Log(OutputLog {
                max_bytes,
                keep: e
                    .output_keep
                    .as_ref()
                    .map_or(DEFAULT_OUTPUT_KEEP, |k| *k.get_ref()),
                syslog: e.output_syslog.as_ref().is_some_and(|s| *s.get_ref()),
            })
        }
        Some(o) if o.get_ref().is_empty() => {
            return Err(ctx.err(Some(o.span()), key("output"), "output path is empty"));
        }
        Some(o) => {
            let p = ctx.path(o.get_ref());
            match p.parent() {
                Some(dir) if dir.is_dir() || !ctx.strict => Output::File(p),
                _ => {
                    return Err(ctx.err(
                        Some(o.span()),
                        key("output"),
                        format!("the folder of {} does not exist", p.display()),
                    ));
                }
            }
        }
    };

    for (given, name) in [
        (
            e.output_max_bytes.as_ref().map(|v| v.span()),
            "output_max_bytes",
        ),
        (e.output_keep.as_ref().map(|v| v.span()), "output_keep"),
        (e.output_syslog.as_ref().map(|v| v.span()), "output_syslog"),
    ] {
        if let (Some(span), false) = (given, matches!(output, Output::Log(_))) {
            return Err(ctx.err(
                Some(span),
                key(name),
                format!("{name} goes with output = \"log\""),
            ));
        }
    }

    let policy = match &e.policy {
        None => Recovery::Engine(ham_core::engine::Policy::switch_preset()),
        Some(p) => policy(ctx, i, p)?,
    };

    let ready_after_ns = match &e.ready_after {
        None => 0,
        Some(t) => duration::parse_ns(t.get_ref())
            .map_err(|why| ctx.err(Some(t.span()), key("ready_after"), why))?,
    };

    let backoff = match &e.backoff {
        None => None,
        Some(b) => Some(backoff(ctx, i, b)?),
    };

    let notify_access = match &e.notify_access {
        None => NotifyAccess::Main,
        Some(a) if !e.notify => {
            return Err(ctx.err(
                Some(a.span()),
                key("notify_access"),
                "`notify_access` needs `notify = true`",
            ));
        }
        Some(a) => match a.get_ref().as_str() {
            "main" => NotifyAccess::Main,
            "exec" => NotifyAccess::Exec,
            "all" => NotifyAccess::All,
            other => {
                return Err(ctx.err(
                    Some(a.span()),
                    key("notify_access"),
                    format!("unknown notify_access `{other}` (use \"main\", \"exec\" or \"all\")"),
                ));
            }
        },
    };

    let watchdog_ns = match &e.watchdog {
        None => None,
        Some(_) if !e.notify => {
            return Err(ctx.err(
                e.watchdog.as_ref().map(|w| w.span()),
                key("watchdog"),
                "`watchdog` needs `notify = true` (the process pets it with WATCHDOG=1)",
            ));
        }
        Some(w) => Some(
            duration::parse_ns(w.get_ref())
                .map_err(|why| ctx.err(Some(w.span()), key("watchdog"), why))?,
        ),
    };

    if let Some(w) = &e.cpu_weight {
        if !(1..=10_000).contains(w.get_ref()) {
            return Err(ctx.err(
                Some(w.span()),
                key("cpu_weight"),
                "must be between 1 and 10000 (cgroup v2 cpu.weight)",
            ));
        }
    }
    let pss = match &e.pss_max {
        None => DEFAULT_PSS,
        Some(p) => {
            let m = p.get_ref();
            let bytes_max = m.bytes.unwrap_or(DEFAULT_PSS.bytes_max);
            let geo = ham_core::pss::Geometry {
                keys: m.keys.unwrap_or(DEFAULT_PSS.keys),
                bytes_max,
                // A value may take the whole quota, up to 4 KiB unless said.
                value_max: m
                    .value
                    .unwrap_or(DEFAULT_PSS.value_max.min(bytes_max))
                    .next_multiple_of(8),
            };
            geo.validate()
                .map_err(|why| ctx.err(Some(p.span()), key("pss_max"), why))?;
            geo
        }
    };
    let mts = ham_core::mts::Shape {
        capacity: e
            .mts_queue
            .as_ref()
            .map_or(DEFAULT_MTS.capacity, |q| *q.get_ref()),
        message_max: e
            .mts_message_max
            .as_ref()
            .map_or(DEFAULT_MTS.message_max, |m| m.get_ref().next_multiple_of(8)),
    };
    if let Err(why) = mts.validate() {
        let span = e
            .mts_queue
            .as_ref()
            .map(|q| q.span())
            .or(e.mts_message_max.as_ref().map(|m| m.span()));
        return Err(ctx.err(span, key("mts_queue"), why));
    }
    let limits = CgroupLimits {
        memory_max: e.memory_max.as_ref().map(|v| *v.get_ref()),
        pids_max: e.pids_max.as_ref().map(|v| *v.get_ref()),
        cpu_weight: e.cpu_weight.as_ref().map(|v| *v.get_ref()),
    };

    let placement = placement(ctx, e, &key)?;

    Ok(EntityConfig {
        cores: e.cores,
        mts_durable: e.mts_durable,
        attach_only: e.attach_only,
        wait_ready: e.wait_ready || e.notify,
        notify: e.notify,
        notify_access,
        conditions: Vec::new(), // resolved once every name is known
        after: Vec::new(),      // resolved once every name is known
        group: None,            // likewise
        ready_after_ns,
        policy,
        name: name.clone(),
        argv,
        exec_path,
        rare: Cold::new(RareSettings {
            placement,
            mts,
            accept_from: Vec::new(), // resolved once every name is known
            pss,
            limits,
            raise_from: Vec::new(), // resolved once every name is known
            watchdog_ns,
            backoff,
            env: e.env.clone(),
            cwd,
        }),
        uid,
        gid,
        stop_signal,
        stop_timeout_ns,
        restart,
        output,
    })
}

/// `placement` and its options (checked against `[cluster]` once the whole file is read).
fn placement(
    ctx: &Ctx,
    e: &RawEntity,
    key: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Placement>, ConfigError> {
    let Some(kind) = &e.placement else {
        for (name, set) in [
            ("preferred", !e.preferred.is_empty()),
            ("fail_back", e.fail_back),
            ("preferred_only", e.preferred_only),
            ("count", e.count.is_some()),
        ] {
            if set {
                return Err(ctx.err(
                    Some(e.name.span()),
                    key(name),
                    format!("`{name}` goes with `placement` (one-of-n or m-of-n)"),
                ));
            }
        }
        return Ok(None);
    };
    let count = match (kind.get_ref().as_str(), &e.count) {
        ("one-of-n", None) => 1,
        ("one-of-n", Some(c)) => {
            return Err(ctx.err(
                Some(c.span()),
                key("count"),
                "`count` goes with placement = \"m-of-n\"",
            ));
        }
        ("m-of-n", Some(c)) if (1..=64).contains(c.get_ref()) => *c.get_ref(),
        ("m-of-n", Some(c)) => {
            return Err(ctx.err(Some(c.span()), key("count"), "must be between 1 and 64"));
        }
        ("m-of-n", None) => {
            return Err(ctx.err(
                Some(kind.span()),
                key("count"),
                "placement = \"m-of-n\" needs `count` (how many nodes run it)",
            ));
        }
        _ => {
            return Err(ctx.err(
                Some(kind.span()),
                key("placement"),
                "must be \"one-of-n\" or \"m-of-n\"",
            ));
        }
    };
    if e.preferred_only && e.preferred.is_empty() {
        return Err(ctx.err(
            Some(kind.span()),
            key("preferred_only"),
            "preferred_only needs a `preferred` list",
        ));
    }
    Ok(Some(Placement {
        count,
        preferred: e.preferred.iter().map(|p| p.get_ref().clone()).collect(),
        fail_back: e.fail_back,
        preferred_only: e.preferred_only,
    }))
}
