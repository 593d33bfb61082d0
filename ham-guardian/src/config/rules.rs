//! Recovery policies, back-offs, conditions, actions, groups and start order, as the configuration file writes them.

use super::*;

pub(super) fn policy(ctx: &Ctx, i: usize, p: &Spanned<RawPolicy>) -> Result<Recovery, ConfigError> {
    use ham_core::engine::{Escalation, Policy, Stage, StageAction, Window};
    let r = p.get_ref();
    let key = |k: &str| Some(format!("entity[{i}].policy.{k}"));
    let dur = |v: &Option<Spanned<String>>, k: &str, default: u64| -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(t) => {
                duration::parse_ns(t.get_ref()).map_err(|why| ctx.err(Some(t.span()), key(k), why))
            }
        }
    };
    let positive = |v: &Option<Spanned<u32>>, k: &str, default: u32| -> Result<u32, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) if *n.get_ref() > 0 => Ok(*n.get_ref()),
            Some(n) => Err(ctx.err(Some(n.span()), key(k), "must be at least 1")),
        }
    };
    let kind = r.kind.get_ref().as_str();
    // Keys that belong to another kind are mistakes, not options to ignore.
    let allowed: &[&str] = match kind {
        "immediate" => &[],
        "switch" => &["exits", "within", "hold_off", "holdoffs", "holdoffs_within"],
        "intensity" => &["max", "within", "then"],
        "stages" => &["stages", "secondary"],
        other => {
            return Err(ctx.err(
                Some(r.kind.span()),
                key("kind"),
                format!(
                    "unknown policy kind `{other}` (use \"switch\", \"stages\", \"intensity\" or \"immediate\")"
                ),
            ));
        }
    };
    let present: [(&str, Option<std::ops::Range<usize>>); 9] = [
        ("exits", r.exits.as_ref().map(|v| v.span())),
        ("within", r.within.as_ref().map(|v| v.span())),
        ("hold_off", r.hold_off.as_ref().map(|v| v.span())),
        ("holdoffs", r.holdoffs.as_ref().map(|v| v.span())),
        (
            "holdoffs_within",
            r.holdoffs_within.as_ref().map(|v| v.span()),
        ),
        ("max", r.max.as_ref().map(|v| v.span())),
        ("then", r.then.as_ref().map(|v| v.span())),
        ("stages", r.stages.as_ref().map(|v| v.span())),
        ("secondary", r.secondary.as_ref().map(|v| v.span())),
    ];
    for (k, span) in present {
        if let Some(span) = span {
            if !allowed.contains(&k) {
                return Err(ctx.err(
                    Some(span),
                    key(k),
                    format!("`{k}` does not apply to a policy of kind \"{kind}\""),
                ));
            }
        }
    }
    let preset = Policy::switch_preset();
    let Policy::Switch {
        exits: p_exits,
        hold_off: p_hold,
        holdoffs: p_holdoffs,
    } = preset
    else {
        unreachable!("the preset is a switch policy")
    };
    Ok(match kind {
        "immediate" => Recovery::Immediate,
        "switch" => Recovery::Engine(Policy::Switch {
            exits: Window {
                count: positive(&r.exits, "exits", p_exits.count)?,
                within: dur(&r.within, "within", p_exits.within)?,
            },
            hold_off: dur(&r.hold_off, "hold_off", p_hold)?,
            holdoffs: Window {
                count: positive(&r.holdoffs, "holdoffs", p_holdoffs.count)?,
                within: dur(&r.holdoffs_within, "holdoffs_within", p_holdoffs.within)?,
            },
        }),
        "intensity" => {
            Recovery::Engine(Policy::Intensity {
                max: r.max.as_ref().map_or(1, |m| *m.get_ref()),
                within: dur(&r.within, "within", 5_000_000_000)?,
                then: match r.then.as_ref().map(|t| (t.get_ref().as_str(), t.span())) {
                    None | Some(("give-up", _)) => Escalation::GiveUp,
                    Some(("device-restart", _)) => Escalation::DeviceRestart,
                    Some((other, span)) => {
                        return Err(ctx.err(
                        Some(span),
                        key("then"),
                        format!("unknown escalation `{other}` (use \"give-up\" or \"device-restart\")"),
                    ));
                    }
                },
            })
        }
        _ => {
            let stages = |v: &Option<Spanned<Vec<RawStage>>>,
                          k: &str|
             -> Result<Vec<Stage>, ConfigError> {
                let Some(list) = v else { return Ok(Vec::new()) };
                list.get_ref()
                    .iter()
                    .enumerate()
                    .map(|(n, st)| {
                        let sk = |f: &str| key(&format!("{k}[{n}].{f}"));
                        let action = match st.action.get_ref().as_str() {
                            "stateful-restart" => StageAction::StatefulRestart,
                            "stateless-restart" => StageAction::StatelessRestart,
                            "device-restart" => StageAction::DeviceRestart,
                            other => {
                                return Err(ctx.err(
                                    Some(st.action.span()),
                                    sk("action"),
                                    format!("unknown stage action `{other}` (use \"stateful-restart\", \"stateless-restart\" or \"device-restart\")"),
                                ));
                            }
                        };
                        let min_lifetime = match &st.min_lifetime {
                            None => 0,
                            Some(t) => duration::parse_ns(t.get_ref())
                                .map_err(|why| ctx.err(Some(t.span()), sk("min_lifetime"), why))?,
                        };
                        Ok(Stage {
                            action,
                            retries: *st.retries.get_ref(),
                            min_lifetime,
                        })
                    })
                    .collect()
            };
            let primary = stages(&r.stages, "stages")?;
            if primary.is_empty() {
                return Err(ctx.err(
                    Some(p.span()),
                    key("stages"),
                    "a policy of kind \"stages\" needs at least one stage",
                ));
            }
            Recovery::Engine(Policy::Stages {
                primary,
                secondary: stages(&r.secondary, "secondary")?,
            })
        }
    })
}

pub(super) fn backoff(
    ctx: &Ctx,
    i: usize,
    b: &Spanned<RawBackoff>,
) -> Result<ham_core::engine::Backoff, ConfigError> {
    use ham_core::engine::Backoff;
    let r = b.get_ref();
    let key = |k: &str| Some(format!("entity[{i}].backoff.{k}"));
    let dur =
        |v: &Option<Spanned<String>>, k: &str, default: Option<u64>| -> Result<u64, ConfigError> {
            match (v, default) {
                (Some(t), _) => duration::parse_ns(t.get_ref())
                    .map_err(|why| ctx.err(Some(t.span()), key(k), why)),
                (None, Some(d)) => Ok(d),
                (None, None) => Err(ctx.err(Some(b.span()), key(k), format!("`{k}` is required"))),
            }
        };
    let misplaced = |v: &Option<Spanned<String>>, k: &str, kind: &str| -> Result<(), ConfigError> {
        match v {
            Some(t) => Err(ctx.err(
                Some(t.span()),
                key(k),
                format!("`{k}` does not apply to a back-off of kind \"{kind}\""),
            )),
            None => Ok(()),
        }
    };
    let reset_after = dur(&r.reset_after, "reset_after", Some(60_000_000_000))?;
    match r.kind.get_ref().as_str() {
        "fixed" => {
            misplaced(&r.initial, "initial", "fixed")?;
            misplaced(&r.max, "max", "fixed")?;
            Ok(Backoff::Fixed {
                delay: dur(&r.delay, "delay", None)?,
                reset_after,
            })
        }
        "exponential" => {
            misplaced(&r.delay, "delay", "exponential")?;
            Ok(Backoff::Exponential {
                initial: dur(&r.initial, "initial", Some(100_000_000))?,
                max: dur(&r.max, "max", Some(30_000_000_000))?,
                reset_after,
            })
        }
        other => Err(ctx.err(
            Some(r.kind.span()),
            key("kind"),
            format!("unknown back-off kind `{other}` (use \"fixed\" or \"exponential\")"),
        )),
    }
}

pub(super) fn condition(
    ctx: &Ctx,
    key: &str,
    c: &Spanned<RawCondition>,
    names: &[String],
) -> Result<crate::actions::Condition, ConfigError> {
    use crate::actions::{Condition, Trigger};
    let r = c.get_ref();
    let mut trigger = Trigger::parse(r.on.get_ref()).ok_or_else(|| {
        ctx.err(
            Some(r.on.span()),
            Some(format!("{key}.on")),
            format!(
                "unknown condition `{}` (use \"death\", \"abnormal-death\", \"restart\", \"raise\", \"state\", \"attach\", \"detach\", \"heartbeat-missed-low\", \"heartbeat-missed-high\", \"any\", \"exits-within\", \"restarts-within\" or \"lifetime-shorter\")",
                r.on.get_ref()
            ),
        )
    })?;
    let need = |what: &str| {
        ctx.err(
            Some(r.on.span()),
            Some(format!("{key}.{what}")),
            format!("`on = \"{}\"` needs `{what}`", r.on.get_ref()),
        )
    };
    let window = |trigger: &str| -> Result<(u32, u64), ConfigError> {
        let count = r.count.as_ref().ok_or_else(|| need("count"))?;
        let max = ham_core::engine::STAMPS as u32;
        if !(1..=max).contains(count.get_ref()) {
            return Err(ctx.err(
                Some(count.span()),
                Some(format!("{key}.count")),
                format!("`{trigger}` counts 1 to {max} events"),
            ));
        }
        let within = r.within.as_ref().ok_or_else(|| need("within"))?;
        let ns = duration::parse_ns(within.get_ref())
            .map_err(|why| ctx.err(Some(within.span()), Some(format!("{key}.within")), why))?;
        Ok((*count.get_ref(), ns))
    };
    match &mut trigger {
        Trigger::ExitsWithin { count, within } | Trigger::RestartsWithin { count, within } => {
            (*count, *within) = window(r.on.get_ref())?;
        }
        Trigger::LifetimeShorter { than } => {
            let t = r.than.as_ref().ok_or_else(|| need("than"))?;
            *than = duration::parse_ns(t.get_ref())
                .map_err(|why| ctx.err(Some(t.span()), Some(format!("{key}.than")), why))?;
        }
        _ => {}
    }
    if let Trigger::State { from, to } = &mut trigger {
        *from = r.from.as_ref().map(|v| *v.get_ref());
        *to = r.to.as_ref().map(|v| *v.get_ref());
    } else if let Some(span) = r
        .from
        .as_ref()
        .map(|v| v.span())
        .or_else(|| r.to.as_ref().map(|v| v.span()))
    {
        return Err(ctx.err(
            Some(span),
            Some(key.to_owned()),
            "`from` and `to` apply to `on = \"state\"` only",
        ));
    }
    if let Trigger::Raise {
        class,
        severity,
        rtype,
    } = &mut trigger
    {
        *class = r.class.as_ref().map(|c| c.get_ref().clone());
        *severity = r.severity.as_ref().map(|s| *s.get_ref());
        *rtype = r.rtype.as_ref().map(|s| *s.get_ref());
    } else if let Some(span) = r
        .class
        .as_ref()
        .map(|v| v.span())
        .or_else(|| r.severity.as_ref().map(|v| v.span()))
    {
        return Err(ctx.err(
            Some(span),
            Some(key.to_owned()),
            "`class` and `severity` apply to `on = \"raise\"` only",
        ));
    }
    let actions = r
        .action
        .iter()
        .enumerate()
        .map(|(n, a)| action(ctx, &format!("{key}.action[{n}]"), a, names))
        .collect::<Result<Vec<_>, _>>()?;
    // The run journal records a run's place as one byte per list, eight lists deep.
    fn too_big(list: &[crate::actions::Action], depth: usize) -> bool {
        list.len() > 255
            || depth >= ham_core::journal::MAX_DEPTH
            || list.iter().any(|a| too_big(&a.on_fail, depth + 1))
    }
    if too_big(&actions, 0) {
        return Err(ctx.err(
            Some(c.span()),
            Some(key.to_owned()),
            format!(
                "at most 255 actions per list, and fail lists nested at most {} deep",
                ham_core::journal::MAX_DEPTH - 1
            ),
        ));
    }
    if r.nowait {
        fn waits(a: &crate::actions::Action) -> bool {
            matches!(
                a.kind,
                crate::actions::ActionKind::WaitFor { .. }
                    | crate::actions::ActionKind::Delay { .. }
            ) || a.on_fail.iter().any(waits)
        }
        if let Some(n) = actions.iter().position(waits) {
            return Err(ctx.err(
                Some(r.action[n].span()),
                Some(format!("{key}.action[{n}]")),
                "a `nowait` condition cannot have a `waitfor` or `delay` action (QNX: EINVAL)",
            ));
        }
    }
    Ok(Condition {
        name: r.name.as_ref().map(|n| n.get_ref().clone()),
        enabled: r.enabled && !r.removed,
        removed: r.removed,
        trigger,
        actions,
        rearm: r.rearm.unwrap_or(true),
        independent: r.independent || r.nowait,
        nowait: r.nowait,
    })
}

pub(super) fn action(
    ctx: &Ctx,
    key: &str,
    a: &Spanned<RawAction>,
    names: &[String],
) -> Result<crate::actions::Action, ConfigError> {
    use crate::actions::{Action, ActionKind};
    let r = a.get_ref();
    let k = |f: &str| Some(format!("{key}.{f}"));
    let need = |what: &str| {
        ctx.err(
            Some(a.span()),
            k(what),
            format!("`do = \"{}\"` needs `{what}`", r.act.get_ref()),
        )
    };
    let dur = |v: &Spanned<String>, f: &str| {
        duration::parse_ns(v.get_ref()).map_err(|why| ctx.err(Some(v.span()), k(f), why))
    };
    // An entity named by an action, or (absent) the condition's own.
    let target = |t: Option<&Spanned<String>>| -> Result<Option<usize>, ConfigError> {
        t.map(|t| {
            names.iter().position(|n| n == t.get_ref()).ok_or_else(|| {
                ctx.err(
                    Some(t.span()),
                    k("entity"),
                    format!("no entity named `{}`", t.get_ref()),
                )
            })
        })
        .transpose()
    };
    let kind = match r.act.get_ref().as_str() {
        "execute" => {
            let cmd = r.command.as_ref().ok_or_else(|| need("command"))?;
            let Some(program) = cmd.get_ref().first() else {
                return Err(ctx.err(Some(cmd.span()), k("command"), "command is empty"));
            };
            let search = std::env::var("PATH").unwrap_or_default();
            let path = match ctx.program(program, cmd.span().start, &search) {
                Ok(p) => p,
                Err(why) => return Err(ctx.err(Some(cmd.span()), k("command"), why)),
            };
            ActionKind::Execute {
                path,
                argv: cmd.get_ref().clone(),
                timeout_ns: match &r.timeout {
                    Some(t) => dur(t, "timeout")?,
                    None => 60_000_000_000,
                },
            }
        }
        "log" => ActionKind::Log {
            message: r
                .message
                .as_ref()
                .ok_or_else(|| need("message"))?
                .get_ref()
                .clone(),
        },
        "delay" => ActionKind::Delay {
            ns: dur(r.delay.as_ref().ok_or_else(|| need("delay"))?, "delay")?,
        },
        "signal" if r.pid.is_some() => {
            let pid = r.pid.as_ref().expect("checked");
            if *pid.get_ref() <= 0 {
                return Err(ctx.err(Some(pid.span()), k("pid"), "a pid is positive"));
            }
            let sig = r.signal.as_ref().ok_or_else(|| need("signal"))?;
            let signal = parse_signal(sig.get_ref())
                .map_err(|why| ctx.err(Some(sig.span()), k("signal"), why))?;
            ActionKind::SignalPid {
                pid: *pid.get_ref(),
                signal,
                value: r.value.as_ref().map_or(0, |v| *v.get_ref()),
            }
        }
        "signal" => {
            let target = r.entity.as_ref().ok_or_else(|| need("entity"))?;
            let entity = names
                .iter()
                .position(|n| n == target.get_ref())
                .ok_or_else(|| {
                    ctx.err(
                        Some(target.span()),
                        k("entity"),
                        format!("no entity named `{}`", target.get_ref()),
                    )
                })?;
            let sig = r.signal.as_ref().ok_or_else(|| need("signal"))?;
            let signal = parse_signal(sig.get_ref())
                .map_err(|why| ctx.err(Some(sig.span()), k("signal"), why))?;
            ActionKind::Signal { entity, signal }
        }
        "device-restart" => ActionKind::DeviceRestart,
        "notify" => {
            let topic = r.topic.as_ref().ok_or_else(|| need("topic"))?;
            if topic.get_ref().is_empty() || topic.get_ref() == "*" {
                return Err(ctx.err(
                    Some(topic.span()),
                    k("topic"),
                    "a topic is a non-empty name (`*` is for subscribers)",
                ));
            }
            ActionKind::Notify {
                topic: topic.get_ref().clone(),
                code: r.code.as_ref().map(|c| *c.get_ref()),
                value: r.value.as_ref().map(|v| *v.get_ref()),
            }
        }
        "heartbeat-healthy" => ActionKind::HeartbeatHealthy,
        "restart" => ActionKind::Restart {
            entity: target(r.entity.as_ref())?,
            command: match &r.command {
                None => None,
                Some(cmd) => {
                    let Some(program) = cmd.get_ref().first() else {
                        return Err(ctx.err(Some(cmd.span()), k("command"), "command is empty"));
                    };
                    let search = std::env::var("PATH").unwrap_or_default();
                    let path = match ctx.program(program, cmd.span().start, &search) {
                        Ok(p) => p,
                        Err(why) => return Err(ctx.err(Some(cmd.span()), k("command"), why)),
                    };
                    Some((path, cmd.get_ref().clone()))
                }
            },
        },
        "stop" => ActionKind::Stop {
            entity: target(r.entity.as_ref())?,
        },
        "hold-off" => ActionKind::HoldOff {
            entity: target(r.entity.as_ref())?,
            ns: dur(r.delay.as_ref().ok_or_else(|| need("delay"))?, "delay")?,
        },
        "waitfor" => ActionKind::WaitFor {
            path: ctx.path(r.path.as_ref().ok_or_else(|| need("path"))?.get_ref()),
            timeout_ns: dur(
                r.timeout.as_ref().ok_or_else(|| need("timeout"))?,
                "timeout",
            )?,
        },
        other => {
            return Err(ctx.err(
                Some(r.act.span()),
                k("do"),
                format!(
                    "unknown action `{other}` (use \"execute\", \"log\", \"delay\", \"waitfor\", \"signal\", \"notify\", \"heartbeat-healthy\", \"restart\", \"stop\", \"hold-off\" or \"device-restart\")"
                ),
            ));
        }
    };
    let on_fail = r
        .on_fail
        .iter()
        .enumerate()
        .map(|(n, f)| action(ctx, &format!("{key}.on_fail[{n}]"), f, names))
        .collect::<Result<_, _>>()?;
    Ok(Action {
        name: r.name.as_ref().map(|n| n.get_ref().clone()),
        enabled: r.enabled && !r.removed,
        removed: r.removed,
        kind,
        break_on_fail: r.break_on_fail,
        on_fail,
        run_now: r.run_now,
    })
}

/// Resolves `[[group]]` tables; an entity belongs to one group at most.
pub(super) fn groups(
    ctx: &Ctx,
    raw: &[Spanned<RawGroup>],
    entities: &mut [EntityConfig],
) -> Result<Vec<Group>, ConfigError> {
    let mut out: Vec<Group> = Vec::new();
    for (g, rg) in raw.iter().enumerate() {
        let r = rg.get_ref();
        let key = |k: &str| Some(format!("group[{g}].{k}"));
        if out.iter().any(|o| o.name == *r.name.get_ref()) {
            return Err(ctx.err(
                Some(r.name.span()),
                key("name"),
                format!("duplicate group name `{}`", r.name.get_ref()),
            ));
        }
        let strategy = match r
            .strategy
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("one_for_one", _)) => Strategy::OneForOne,
            Some(("one_for_all", _)) => Strategy::OneForAll,
            Some(("rest_for_one", _)) => Strategy::RestForOne,
            Some((other, span)) => {
                return Err(ctx.err(
                    Some(span),
                    key("strategy"),
                    format!(
                        "unknown strategy `{other}` (use \"one_for_one\", \"one_for_all\" or \"rest_for_one\")"
                    ),
                ));
            }
        };
        let mut members = Vec::new();
        for (n, m) in r.members.get_ref().iter().enumerate() {
            let mk = Some(format!("group[{g}].members[{n}]"));
            let Some(i) = entities.iter().position(|e| e.name == *m.get_ref()) else {
                return Err(ctx.err(
                    Some(m.span()),
                    mk,
                    format!("no entity named `{}`", m.get_ref()),
                ));
            };
            if let Some(other) = entities[i].group {
                let other = if other == g {
                    r.name.get_ref().clone()
                } else {
                    out[other].name.clone()
                };
                return Err(ctx.err(
                    Some(m.span()),
                    mk,
                    format!("`{}` is already a member of group `{other}`", m.get_ref()),
                ));
            }
            entities[i].group = Some(g);
            members.push(i);
        }
        out.push(Group {
            name: r.name.get_ref().clone(),
            strategy,
            members,
        });
    }
    Ok(out)
}

/// Resolves `after` names to indices; refuses unknown names, self-references and cycles.
pub(super) fn resolve_after(
    ctx: &Ctx,
    raw: &[Spanned<RawEntity>],
    entities: &mut [EntityConfig],
) -> Result<(), ConfigError> {
    let index: HashMap<&str, usize> = raw
        .iter()
        .enumerate()
        .map(|(i, e)| (e.get_ref().name.get_ref().as_str(), i))
        .collect();
    for (i, e) in raw.iter().enumerate() {
        for (n, dep) in e.get_ref().after.iter().enumerate() {
            let key = Some(format!("entity[{i}].after[{n}]"));
            match index.get(dep.get_ref().as_str()) {
                Some(&j) if j == i => {
                    return Err(ctx.err(Some(dep.span()), key, "an entity cannot wait for itself"));
                }
                Some(&j) => entities[i].after.push(j),
                None => {
                    return Err(ctx.err(
                        Some(dep.span()),
                        key,
                        format!("no entity named `{}`", dep.get_ref()),
                    ));
                }
            }
        }
    }
    // Depth-first search for a cycle: 0 unvisited, 1 on the path, 2 done.
    fn visit(
        i: usize,
        es: &[EntityConfig],
        mark: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[i] = 1;
        path.push(i);
        for &j in &es[i].after {
            if mark[j] == 1 {
                let from = path.iter().position(|&k| k == j).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(j);
                return Some(cycle);
            }
            if mark[j] == 0 {
                if let Some(c) = visit(j, es, mark, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        mark[i] = 2;
        None
    }
    let mut mark = vec![0u8; entities.len()];
    for i in 0..entities.len() {
        if mark[i] == 0 {
            if let Some(cycle) = visit(i, entities, &mut mark, &mut Vec::new()) {
                let names: Vec<&str> = cycle.iter().map(|&k| entities[k].name.as_str()).collect();
                let first = cycle[0];
                let span = raw[first].get_ref().after.first().map(|a| a.span());
                return Err(ctx.err(
                    span,
                    Some(format!("entity[{first}].after")),
                    format!("`after` makes a cycle: {}", names.join(" → ")),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn parse_signal(s: &SignalSpec) -> Result<i32, String> {
    match s {
        SignalSpec::Number(n) => i32::try_from(*n)
            .ok()
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(|| format!("signal number {n} is out of range (1-64)")),
        SignalSpec::Name(name) => {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            full.parse::<nix::sys::signal::Signal>()
                .map(|s| s as i32)
                .map_err(|_| format!("unknown signal `{name}`"))
        }
    }
}
