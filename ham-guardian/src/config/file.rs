//! A whole configuration file (and run-time definitions after it), read and checked.

use super::*;

pub(super) fn parse_with(
    file: &Path,
    text: &str,
    strict: bool,
    runtime_from: usize,
) -> Result<Config, ConfigError> {
    let ctx = Ctx {
        file,
        text,
        dir: file.parent().unwrap_or(Path::new("/")).to_owned(),
        strict,
        runtime_from,
    };
    let raw: RawFile = recover::deserialize(&ctx).map_err(ConfigError::all)?;
    let ham = raw.ham.get_ref();
    let instance = Instance {
        name: instance_name(&ctx, &ham.name)?,
        run_dir: ham
            .run_dir
            .as_ref()
            .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), |d| ctx.path(d.get_ref())),
        log_dir: ham
            .log_dir
            .as_ref()
            .map_or_else(|| PathBuf::from(DEFAULT_LOG_DIR), |d| ctx.path(d.get_ref())),
        state_dir: ham.state_dir.as_ref().map_or_else(
            || PathBuf::from(DEFAULT_STATE_DIR),
            |d| ctx.path(d.get_ref()),
        ),
        cores_dir: cores_dir(
            &ctx,
            ham.cores_dir.as_ref(),
            ham.state_dir.as_ref(),
            &ham.name,
        ),
        cgroup: cgroup_mode(&ctx, ham.cgroup.as_ref())?,
    };
    // Syslog: `/dev/log` unless configured; "" turns it off.
    let syslog = match &ham.syslog {
        None => Some(PathBuf::from(DEFAULT_SYSLOG)),
        Some(p) if p.get_ref().is_empty() => None,
        Some(p) => Some(ctx.path(p.get_ref())),
    };
    let max_entities = match &ham.max_entities {
        None => DEFAULT_MAX_ENTITIES,
        Some(m) if (1..=MAX_ENTITIES_LIMIT).contains(m.get_ref()) => *m.get_ref(),
        Some(m) => {
            return Err(ctx.err(
                Some(m.span()),
                Some("ham.max_entities".into()),
                format!("must be between 1 and {MAX_ENTITIES_LIMIT}"),
            ));
        }
    };
    let liveness_timeout_ns = match &ham.liveness_timeout {
        None => duration::parse_ns(DEFAULT_LIVENESS_TIMEOUT).expect("default parses"),
        Some(t) => {
            let ns = duration::parse_ns(t.get_ref())
                .map_err(|why| ctx.err(Some(t.span()), Some("ham.liveness_timeout".into()), why))?;
            if ns < MIN_LIVENESS_TIMEOUT_NS {
                return Err(ctx.err(
                    Some(t.span()),
                    Some("ham.liveness_timeout".into()),
                    "must be at least 20ms",
                ));
            }
            ns
        }
    };
    let client_gid = match &ham.client_group {
        None => None,
        Some(g) => Some(
            resolve_group(g.get_ref())
                .map_err(|why| ctx.err(Some(g.span()), Some("ham.client_group".into()), why))?,
        ),
    };
    let heartbeat_grid_ns = match &ham.heartbeat_grid {
        None => 0,
        Some(t) => duration::parse_ns(t.get_ref())
            .map_err(|why| ctx.err(Some(t.span()), Some("ham.heartbeat_grid".into()), why))?,
    };
    let ring_slots = match &ham.ring_slots {
        None => DEFAULT_RING_SLOTS,
        Some(n) if (2..=1 << 20).contains(n.get_ref()) && n.get_ref().is_power_of_two() => {
            *n.get_ref()
        }
        Some(n) => {
            return Err(ctx.err(
                Some(n.span()),
                Some("ham.ring_slots".into()),
                "must be a power of two between 2 and 1048576",
            ));
        }
    };
    let ring_abandon_after_ns = match &ham.ring_abandon_after {
        None => DEFAULT_RING_ABANDON_AFTER_NS,
        Some(t) => duration::parse_ns(t.get_ref())
            .map_err(|why| ctx.err(Some(t.span()), Some("ham.ring_abandon_after".into()), why))?,
    };
    if raw.entity.len() > max_entities as usize {
        return Err(ctx.err(
            Some(raw.entity[max_entities as usize].span()),
            Some("entity".into()),
            format!(
                "{} entities configured but ham.max_entities is {max_entities}",
                raw.entity.len()
            ),
        ));
    }

    // Each entity is checked on its own: the errors of all of them are told in one pass.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut entities = Vec::with_capacity(raw.entity.len());
    let mut errors = Vec::new();
    for (i, e) in raw.entity.iter().enumerate() {
        let ent = match entity(&ctx, i, e.get_ref()) {
            Ok(ent) => ent,
            Err(err) => {
                errors.push(err);
                continue;
            }
        };
        if let Some(first) = seen.insert(ent.name.clone(), i) {
            let (line, _) = line_col(text, raw.entity[first].get_ref().name.span().start);
            errors.push(ctx.err(
                Some(e.get_ref().name.span()),
                Some(format!("entity[{i}].name")),
                format!(
                    "duplicate entity name `{}` (first defined on line {line})",
                    ent.name
                ),
            ));
        }
        entities.push(ent);
    }
    if !errors.is_empty() {
        return Err(ConfigError::all(errors));
    }
    resolve_after(&ctx, &raw.entity, &mut entities)?;
    let groups = groups(&ctx, &raw.group, &mut entities)?;
    // Once, not per entity: 10,000 entities took seconds to parse when it was rebuilt for
    // each of them.
    let names: Vec<String> = entities.iter().map(|e| e.name.clone()).collect();
    for (i, e) in raw.entity.iter().enumerate() {
        if let Some(c) = e.get_ref().condition.get(MAX_CONDITIONS) {
            return Err(ctx.err(
                Some(c.span()),
                Some(format!("entity[{i}].condition")),
                format!("at most {MAX_CONDITIONS} conditions per entity"),
            ));
        }
        // Names of other entities, as their indices.
        let resolve = |key: &str, list: &[Spanned<String>]| -> Result<Vec<usize>, ConfigError> {
            list.iter()
                .map(|r| {
                    names.iter().position(|n| n == r.get_ref()).ok_or_else(|| {
                        ctx.err(
                            Some(r.span()),
                            Some(format!("entity[{i}].{key}")),
                            format!("no entity named `{}`", r.get_ref()),
                        )
                    })
                })
                .collect()
        };
        // Written only when given: an entity that lists neither stays at rest.
        let raise_from = resolve("raise_from", &e.get_ref().raise_from)?;
        if !raise_from.is_empty() {
            entities[i].rare.raise_from = raise_from;
        }
        let accept_from = resolve("accept_from", &e.get_ref().accept_from)?;
        if !accept_from.is_empty() {
            entities[i].rare.accept_from = accept_from;
        }
        entities[i].conditions = e
            .get_ref()
            .condition
            .iter()
            .enumerate()
            .map(|(n, c)| {
                if let Some(t) = &c.get_ref().entity {
                    return Err(ctx.err(
                        Some(t.span()),
                        Some(format!("entity[{i}].condition[{n}].entity")),
                        "a condition inside an entity's table belongs to that entity",
                    ));
                }
                condition(&ctx, &format!("entity[{i}].condition[{n}]"), c, &names)
            })
            .collect::<Result<_, _>>()?;
    }
    // Top-level conditions go after the entity's own, in the order written.
    for (n, c) in raw.condition.iter().enumerate() {
        let key = format!("condition[{n}]");
        let Some(target) = &c.get_ref().entity else {
            return Err(ctx.err(
                Some(c.span()),
                Some(format!("{key}.entity")),
                "a top-level condition names its `entity`",
            ));
        };
        let Some(i) = names.iter().position(|x| x == target.get_ref()) else {
            return Err(ctx.err(
                Some(target.span()),
                Some(format!("{key}.entity")),
                format!("no entity named `{}`", target.get_ref()),
            ));
        };
        let cond = condition(&ctx, &key, c, &names)?;
        entities[i].conditions.push(cond);
        if entities[i].conditions.len() > MAX_CONDITIONS {
            return Err(ctx.err(
                Some(c.span()),
                Some(key),
                format!("at most {MAX_CONDITIONS} conditions per entity"),
            ));
        }
    }

    let device_restart = match raw.device.as_ref().and_then(|d| d.restart_command.as_ref()) {
        None => None,
        Some(cmd) => {
            let key = Some("device.restart_command".to_owned());
            let Some(program) = cmd.get_ref().first() else {
                return Err(ctx.err(Some(cmd.span()), key, "command is empty"));
            };
            let search = std::env::var("PATH").unwrap_or_default();
            let path = match ctx.program(program, cmd.span().start, &search) {
                Ok(p) => p,
                Err(why) => return Err(ctx.err(Some(cmd.span()), key, why)),
            };
            Some((path, cmd.get_ref().clone()))
        }
    };

    // What the cluster places needs a cluster, and must stop within a third of its lease
    // (ham stops it before the lease can expire: see docs/ARCHITECTURE.md).
    let lease_ttl_ns = raw
        .cluster
        .as_ref()
        .map(|c| cluster(&ctx, c.get_ref()).map(|c| c.lease_ttl_ns))
        .transpose()?;
    for (i, e) in raw.entity.iter().enumerate() {
        let (Some(kind), Some(ent)) = (&e.get_ref().placement, entities.get(i)) else {
            continue;
        };
        let Some(ttl) = lease_ttl_ns else {
            return Err(ctx.err(
                Some(kind.span()),
                Some(format!("entity[{i}].placement")),
                "placement needs a [cluster] table",
            ));
        };
        if ent.stop_timeout_ns > ttl / 3 {
            return Err(ctx.err(
                Some(kind.span()),
                Some(format!("entity[{i}].stop_timeout")),
                format!(
                    "a placed entity must stop within a third of cluster.lease_ttl ({}), \
                     so that ham stops it before its lease can expire; stop_timeout is {}",
                    duration::format_ns(ttl / 3),
                    duration::format_ns(ent.stop_timeout_ns)
                ),
            ));
        }
        if let Some(p) = e
            .get_ref()
            .preferred
            .iter()
            .find(|p| !cluster_name_ok(p.get_ref()))
        {
            return Err(ctx.err(
                Some(p.span()),
                Some(format!("entity[{i}].preferred")),
                "a node name: 1 to 64 letters, digits, `-`, `_` or `.`",
            ));
        }
    }
    let cluster = match &raw.cluster {
        None => None,
        Some(c) => {
            let cl = cluster(&ctx, c.get_ref())?;
            for own in [CLUSTER_AGENT_ENTITY, CLUSTER_FENCE_ENTITY] {
                if let Some(e) = raw
                    .entity
                    .iter()
                    .find(|e| e.get_ref().name.get_ref() == own)
                {
                    return Err(ctx.err(
                        Some(e.get_ref().name.span()),
                        Some("entity.name".into()),
                        format!("`{own}` is an entity ham adds for [cluster]"),
                    ));
                }
            }
            entities.push(agent_entity(
                &ctx,
                entities.len(),
                &cl,
                CLUSTER_AGENT_ENTITY,
                &[],
            )?);
            entities.push(agent_entity(
                &ctx,
                entities.len(),
                &cl,
                CLUSTER_FENCE_ENTITY,
                &["--fence"],
            )?);
            Some(cl)
        }
    };

    let watchdog = raw
        .watchdog
        .as_ref()
        .map(|w| watchdog(&ctx, w, liveness_timeout_ns))
        .transpose()?;
    let metrics = match &raw.metrics {
        None => None,
        Some(m) => {
            let interval = m
                .interval
                .as_ref()
                .map_or(DEFAULT_METRICS_INTERVAL, |i| i.get_ref());
            let ns = duration::parse_ns(interval).map_err(|why| {
                ctx.err(
                    m.interval.as_ref().map(|i| i.span()),
                    Some("metrics.interval".into()),
                    why,
                )
            })?;
            if ns < 100_000_000 {
                return Err(ctx.err(
                    m.interval.as_ref().map(|i| i.span()),
                    Some("metrics.interval".into()),
                    "at least 100ms",
                ));
            }
            if m.textfile.get_ref().is_empty() {
                return Err(ctx.err(
                    Some(m.textfile.span()),
                    Some("metrics.textfile".into()),
                    "an empty path",
                ));
            }
            Some((ctx.path(m.textfile.get_ref()), ns))
        }
    };

    Ok(Config {
        path: file.to_owned(),
        instance,
        syslog,
        max_entities,
        liveness_timeout_ns,
        device_restart,
        client_gid,
        heartbeat_grid_ns,
        ring_slots,
        cores_keep: ham.cores_keep.as_ref().map_or(4, |k| (*k.get_ref()).max(1)),
        cores_max_bytes: ham
            .cores_max_bytes
            .as_ref()
            .map_or(1 << 30, |b| *b.get_ref()),
        ring_abandon_after_ns,
        entities,
        groups,
        cluster,
        watchdog,
        metrics,
    })
}

/// `[watchdog]`: a timeout in whole seconds (the device's unit), long enough that a
/// takeover — the Guardian fencing a hung HAM after `liveness_timeout` — never lets it
/// fire.
fn watchdog(
    ctx: &Ctx,
    w: &Spanned<RawWatchdog>,
    liveness_timeout_ns: u64,
) -> Result<WatchdogConfig, ConfigError> {
    let raw = w.get_ref();
    if raw.device.get_ref().is_empty() {
        return Err(ctx.err(
            Some(raw.device.span()),
            Some("watchdog.device".into()),
            "an empty path",
        ));
    }
    let timeout_ns = match &raw.timeout {
        None => duration::parse_ns(DEFAULT_WATCHDOG_TIMEOUT).expect("default parses"),
        Some(t) => {
            let key = Some("watchdog.timeout".to_owned());
            let ns = duration::parse_ns(t.get_ref())
                .map_err(|why| ctx.err(Some(t.span()), key.clone(), why))?;
            if ns == 0 || ns % 1_000_000_000 != 0 {
                return Err(ctx.err(
                    Some(t.span()),
                    key,
                    "whole seconds, at least 1s (a watchdog device counts in seconds)",
                ));
            }
            if ns < 2 * liveness_timeout_ns {
                return Err(ctx.err(
                    Some(t.span()),
                    key,
                    format!(
                        "at least twice ham.liveness_timeout ({}), so that a takeover does not \
                         let the device reset the box",
                        duration::format_ns(2 * liveness_timeout_ns)
                    ),
                ));
            }
            ns
        }
    };
    if timeout_ns < 2 * liveness_timeout_ns {
        return Err(ctx.err(
            Some(w.span()),
            Some("watchdog.timeout".into()),
            format!(
                "the default ({DEFAULT_WATCHDOG_TIMEOUT}) is less than twice ham.liveness_timeout; \
                 set a longer timeout"
            ),
        ));
    }
    Ok(WatchdogConfig {
        device: ctx.path(raw.device.get_ref()),
        timeout_ns,
        magic_close: raw.magic_close.unwrap_or(true),
    })
}

/// A cluster or node name: it goes into etcd keys.
fn cluster_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn cluster(ctx: &Ctx, c: &RawCluster) -> Result<ClusterConfig, ConfigError> {
    for (key, v) in [("cluster.name", &c.name), ("cluster.node", &c.node)] {
        if !cluster_name_ok(v.get_ref()) {
            return Err(ctx.err(
                Some(v.span()),
                Some(key.into()),
                "must be 1 to 64 letters, digits, `-`, `_` or `.`",
            ));
        }
    }
    if c.endpoints.get_ref().is_empty() {
        return Err(ctx.err(
            Some(c.endpoints.span()),
            Some("cluster.endpoints".into()),
            "at least one etcd client URL (this box's own member first)",
        ));
    }
    let mut endpoints = Vec::new();
    for e in c.endpoints.get_ref() {
        let url = e.get_ref().trim_end_matches('/');
        let Some(rest) = url.strip_prefix("http://") else {
            let why = if url.starts_with("https://") {
                "TLS is not supported yet: use etcd's plain client URL on a trusted network"
            } else {
                "must be an etcd client URL, `http://host:port`"
            };
            return Err(ctx.err(Some(e.span()), Some("cluster.endpoints".into()), why));
        };
        if rest.is_empty() || rest.contains('/') {
            return Err(ctx.err(
                Some(e.span()),
                Some("cluster.endpoints".into()),
                "must be `http://host:port`, with no path",
            ));
        }
        endpoints.push(url.to_owned());
    }
    let lease_ttl_ns = match &c.lease_ttl {
        None => duration::parse_ns(DEFAULT_LEASE_TTL).expect("default parses"),
        Some(t) => {
            let ns = duration::parse_ns(t.get_ref())
                .map_err(|why| ctx.err(Some(t.span()), Some("cluster.lease_ttl".into()), why))?;
            if ns < MIN_LEASE_TTL_NS || ns % 1_000_000_000 != 0 {
                return Err(ctx.err(
                    Some(t.span()),
                    Some("cluster.lease_ttl".into()),
                    "must be a whole number of seconds, at least 2s (etcd's leases count in seconds)",
                ));
            }
            ns
        }
    };
    // As long as the lease by default: the owner of a key whose lease etcd ended early is
    // gone by then, as if the lease had run its course.
    let lock_delay_ns = match &c.lock_delay {
        None => lease_ttl_ns,
        Some(t) => duration::parse_ns(t.get_ref())
            .map_err(|why| ctx.err(Some(t.span()), Some("cluster.lock_delay".into()), why))?,
    };
    let agent = match &c.agent {
        Some(a) => {
            let search = std::env::var("PATH").unwrap_or_default();
            ctx.program(a.get_ref(), a.span().start, &search)
                .map_err(|why| ctx.err(Some(a.span()), Some("cluster.agent".into()), why))?
        }
        None => {
            let beside = std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join(CLUSTER_AGENT_ENTITY)))
                .unwrap_or_else(|| PathBuf::from(CLUSTER_AGENT_ENTITY));
            if ctx.strict && !is_executable(&beside) {
                return Err(ctx.err(
                    None,
                    Some("cluster.agent".into()),
                    format!(
                        "no agent at {} (build it: cargo build -p ham-cluster; or set \
                         cluster.agent)",
                        beside.display()
                    ),
                ));
            }
            beside
        }
    };
    let supervisor = match &c.role {
        None => false,
        Some(r) if r.get_ref() == "supervisor" => true,
        Some(r) if r.get_ref() == "member" => false,
        Some(r) => {
            return Err(ctx.err(
                Some(r.span()),
                Some("cluster.role".into()),
                "must be \"supervisor\" or \"member\"",
            ));
        }
    };
    Ok(ClusterConfig {
        supervisor,
        name: c.name.get_ref().clone(),
        node: c.node.get_ref().clone(),
        endpoints,
        lease_ttl_ns,
        lock_delay_ns,
        agent,
    })
}

/// An entity ham adds for [cluster]: the agent, or (`--fence`) the fence keeper, both the
/// agent's program. Restarted at once, stopped quickly.
fn agent_entity(
    ctx: &Ctx,
    i: usize,
    c: &ClusterConfig,
    name: &str,
    args: &[&str],
) -> Result<EntityConfig, ConfigError> {
    let argv: Vec<String> = std::iter::once(c.agent.to_string_lossy().into_owned())
        .chain(args.iter().map(|a| a.to_string()))
        .map(|a| toml_string(&a))
        .collect();
    let text = format!(
        "name = {}\ncommand = [{}]\nstop_timeout = \"2s\"\n",
        toml_string(name),
        argv.join(", ")
    );
    let raw: RawEntity = toml::from_str(&text).map_err(|e| {
        ctx.err(
            None,
            Some("cluster".into()),
            format!("the agent's entity: {e}"),
        )
    })?;
    // Its program was checked above; errors point into this text, not the file's.
    let own = Ctx {
        file: ctx.file,
        text: &text,
        dir: ctx.dir.clone(),
        strict: false,
        runtime_from: usize::MAX,
    };
    entity(&own, i, &raw)
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

pub(super) fn is_executable(p: &Path) -> bool {
    p.is_file() && rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok()
}

pub(super) fn resolve_program(
    ctx: &Ctx,
    program: &str,
    search_path: &str,
) -> Result<PathBuf, String> {
    if program.contains('/') {
        let p = ctx.path(program);
        if !p.exists() {
            return Err(format!("executable {} does not exist", p.display()));
        }
        if !is_executable(&p) {
            return Err(format!("{} is not an executable file", p.display()));
        }
        return Ok(p);
    }
    search_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| is_executable(p))
        .ok_or_else(|| format!("executable `{program}` not found in PATH ({search_path})"))
}
