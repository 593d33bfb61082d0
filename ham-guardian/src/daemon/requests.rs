//! Control requests: one per connection, authorised by `authz::may`.

use super::*;

impl Daemon {
    pub(super) fn handle(&mut self, req: Request, stream: UnixStream, peer: Peer) {
        if !matches!(req, Request::Ping) {
            failpoint::hit("control:request");
        }
        verbose(
            &self.cfg.instance.name,
            format_args!("request from pid {} (uid {}): {req:?}", peer.pid, peer.uid),
        );
        if self.shutdown.is_some() && !matches!(req, Request::Ping | Request::Shutdown) {
            reply(stream, &Response::err("ham is shutting down"));
            return;
        }
        // Who may ask what: one rule (`authz::may`). A process may define conditions and
        // actions on the entity it is; what they may hold (nothing that runs a command,
        // signals or acts on another entity: that would run with ham's privileges) is
        // checked on the parsed result, in `may_add`.
        let grant = self.with_caller(peer, |c| authz::may(c, &req));
        let own_entity = match grant {
            Ok(authz::Grant::Entity(name)) => Some(name),
            Ok(_) => None,
            Err((errno, why)) => {
                say!(
                    self,
                    "refused a request from uid {} (pid {})",
                    peer.uid,
                    peer.pid
                );
                reply(stream, &Response::errno(errno, why));
                return;
            }
        };
        let entity = match &req {
            Request::Start { entity }
            | Request::Stop { entity }
            | Request::Restart { entity }
            | Request::Attach { entity, .. }
            | Request::Detach { entity }
            | Request::Ready { entity }
            | Request::PssOpen { entity }
            | Request::PssSync { entity }
            | Request::PssRead { entity, .. }
            | Request::MtsSend { to: entity, .. }
            | Request::MtsRecv { entity, .. }
            | Request::MtsAck { entity, .. }
            | Request::ClusterPlace { entity, .. }
            | Request::ClusterUnplace { entity }
            | Request::Raise { entity, .. } => match self.entities.id_of(entity) {
                Some(i) => Some(i),
                None => {
                    reply(
                        stream,
                        &Response::errno(libc::ENOENT, format!("no entity named `{entity}`")),
                    );
                    return;
                }
            },
            _ => None,
        };
        match (req, entity) {
            (Request::Ping, _) => reply(stream, &Response::ok("pong")),
            // Taken by the connection before it gets here (`conns.rs`); asked on a session
            // already, it is one.
            (Request::Session, _) => reply(stream, &Response::ok("session")),
            (Request::ClusterReport { state }, _) => {
                let r = self.cluster_report(*state);
                reply(stream, &r);
            }
            (Request::ClusterStatus, _) => reply(stream, &self.cluster_status()),
            (Request::ClusterPlace { .. } | Request::ClusterUnplace { .. }, Some(i))
                if self.entities[i].cfg.rare.placement.is_none() =>
            {
                let name = &self.entities[i].cfg.name;
                reply(
                    stream,
                    &Response::errno(libc::EINVAL, format!("`{name}` has no placement")),
                );
            }
            (Request::ClusterPlace { token, .. }, Some(i)) => self.cluster_place(i, token, stream),
            (Request::ClusterUnplace { .. }, Some(i)) => self.cluster_unplace(i, stream),
            (Request::ClusterSet { key, value }, _) => self.cluster_set(key, value, stream),
            (Request::ClusterNext, _) => self.cluster_next(stream),
            (Request::ClusterSwitchover, _) => self.cluster_switchover(Some(stream)),
            (Request::ClusterDone { id, error }, _) => {
                self.cluster_done(id, error);
                reply(stream, &Response::ok("noted"));
            }
            (
                Request::ClusterApply {
                    key,
                    value,
                    origin,
                    revision,
                },
                _,
            ) => {
                let r = self.cluster_apply(&key, &value, &origin, revision);
                reply(stream, &r);
            }
            (Request::Start { .. } | Request::Restart { .. }, Some(i))
                if self.entities[i].cfg.rare.placement.is_some() =>
            {
                let name = &self.entities[i].cfg.name;
                reply(
                    stream,
                    &Response::errno(
                        libc::EBUSY,
                        format!("`{name}` runs where the cluster places it (placement)"),
                    ),
                );
            }
            (Request::Hello, _) => {
                self.ring_used |= self.clients.is_some();
                match &self.clients {
                    Some(c) => {
                        let mut r = Response::ok(format!("hello pid {}", peer.pid));
                        r.token = Some(ham_core::client::client_token(
                            c.key,
                            peer.pid as u32,
                            peer.uid,
                        ));
                        r.peer = Some((peer.pid, peer.uid));
                        // The bell, so that the client's pushes wake the loop directly.
                        r.bell = Some(c.bell_id);
                        reply_with_fd(stream, &r, Some(&c.bell));
                    }
                    None => reply(
                        stream,
                        &Response::err("this ham has no client segment (see its log)"),
                    ),
                }
            }
            (Request::Lane, _) => {
                let (r, fd) = self.open_lane(peer);
                reply_with_fd(stream, &r, fd.as_ref());
            }
            (
                Request::Attach {
                    pid,
                    period_ns,
                    missed_low,
                    missed_high,
                    ..
                },
                Some(i),
            ) => {
                let spec = ham_core::layout::HeartbeatSpec {
                    period_ns,
                    missed_low,
                    missed_high,
                };
                let (r, page) = self.attach(i, peer, pid, spec);
                reply_with_fd(stream, &r, page.as_ref());
            }
            (Request::PssOpen { .. }, Some(i)) => {
                let (r, fd) = self.pss_open(i, peer);
                reply_with_fd(stream, &r, fd.as_ref());
            }
            (Request::PssSync { .. }, Some(i)) => self.pss_sync(i, peer, stream),
            (Request::MtsSend { key, data, .. }, Some(i)) => {
                self.mts_send_answer(i, peer, key, &data, stream)
            }
            (Request::MtsRecv { wait_ns, .. }, Some(i)) => self.mts_recv(i, peer, wait_ns, stream),
            (Request::MtsAck { id, .. }, Some(i)) => {
                let r = self.mts_ack(i, peer, id);
                reply(stream, &r);
            }
            (Request::PssRead { key, .. }, Some(i)) => {
                let r = self.pss_read(i, key, peer);
                reply(stream, &r);
            }
            (Request::Detach { .. }, Some(i)) => {
                let r = self.detach(i, peer);
                reply(stream, &r);
            }
            (
                Request::Lookup {
                    entity,
                    condition,
                    action,
                },
                _,
            ) => {
                let found = match (condition, action) {
                    (None, _) => self
                        .entities
                        .id_of(&entity)
                        .is_some()
                        .then_some(())
                        .ok_or(format!("no entity `{entity}`")),
                    (Some(c), a) => self
                        .condition_index(&entity, &c)
                        .map_err(|(_, m)| m)
                        .and_then(|(i, k)| match a {
                            None => Ok(()),
                            Some(a) => self.entities[i].cfg.conditions[k]
                                .actions
                                .iter()
                                .any(|x| x.name.as_deref() == Some(a.as_str()) && !x.removed)
                                .then_some(())
                                .ok_or(format!("no action `{a}`")),
                        }),
                };
                match found {
                    Ok(()) => reply(stream, &Response::ok("found")),
                    Err(m) => reply(stream, &Response::errno(libc::ENOENT, m)),
                }
            }
            (Request::Verbose { op, value }, _) => {
                use ham_core::protocol::VerboseOp;
                let now = crate::log::verbosity();
                let next = match op {
                    VerboseOp::Get => now,
                    VerboseOp::Set => value.max(0) as u32,
                    VerboseOp::Incr => now.saturating_add(value.max(1) as u32),
                    VerboseOp::Decr => now.saturating_sub(value.max(1) as u32),
                };
                if next != now {
                    crate::log::set_verbosity(next);
                    self.wrote(self.writer.set_verbosity(next));
                }
                let mut r = Response::ok(format!("verbosity {next}"));
                r.flags = Some(next);
                reply(stream, &r);
            }
            (Request::Define { change }, _) => {
                let r = self.define(change, own_entity.as_deref());
                reply(stream, &r);
            }
            (Request::Subscribe { topic, signal }, _) => {
                self.subscribe(topic, signal, peer, stream)
            }
            (Request::Ready { .. }, Some(i)) => {
                let e = &self.entities[i];
                let name = e.cfg.name.clone();
                // The process itself, a helper it runs (`ham-client ready` from a script),
                // root or ham's user.
                if let Err((errno, why)) = self.with_caller(peer, |c| authz::may_ready(c, &name)) {
                    reply(stream, &Response::errno(errno, why));
                } else if e.rec.state != EntityState::Running {
                    reply(stream, &Response::err(format!("`{name}` is not running")));
                } else {
                    if !e.ready {
                        say!(self, "{name}: ready (SDK)");
                        self.on_ready(i);
                    }
                    reply(stream, &Response::ok(format!("`{name}` is ready")));
                }
            }
            (
                Request::Raise {
                    class,
                    severity,
                    value,
                    ..
                },
                Some(i),
            ) => {
                let n = self.raise(i, &class, (severity, value, 0), 0);
                reply(
                    stream,
                    &Response::ok(format!("raised; {n} condition(s) matched")),
                );
            }
            (Request::Shutdown, _) => self.begin_shutdown(Some(stream)),
            (Request::Upgrade { binary }, _) => self.begin_upgrade(binary, stream),
            (Request::DeviceRestart { enabled }, _) => match self.set_device_restart(enabled) {
                Ok(()) => reply(
                    stream,
                    &Response::ok(format!(
                        "device restart {}",
                        if enabled { "enabled" } else { "disabled" }
                    )),
                ),
                Err(e) => reply(stream, &Response::err(e)),
            },
            (Request::Stop { .. }, Some(i)) => {
                self.record(i, None, "operator", "stop", "asked");
                self.entities[i].waiters.push((stream, WaitFor::Down));
                self.begin_stop(i, Wanted::Down);
                self.answer_waiters(i);
            }
            (Request::Start { .. }, Some(i)) => {
                let e = &mut self.entities[i];
                e.waiters.push((stream, WaitFor::Up));
                if matches!(
                    e.rec.state,
                    EntityState::Stopped
                        | EntityState::Exited
                        | EntityState::Backoff
                        | EntityState::HeldOff
                ) {
                    // An operator start begins the policy's count afresh.
                    e.rec.policy = engine::decide_operator_start(&e.rec.policy);
                    self.record(i, None, "operator", "start", "asked");
                }
                let why = lifecycle::Why::new("operator", "started as asked");
                self.step(i, ham_core::lifecycle::Input::Start, &why);
            }
            (Request::Restart { .. }, Some(i)) => {
                self.record(i, None, "operator", "restart", "asked");
                self.entities[i].waiters.push((stream, WaitFor::Up));
                self.begin_stop(i, Wanted::Restart);
            }
            (_, None) => reply(stream, &Response::err("request needs an entity")),
        }
    }

    /// Answers the requests waiting on entity `i` whose condition now holds.
    pub(super) fn answer_waiters(&mut self, i: EntityId) {
        let e = &mut self.entities[i];
        if e.waiters.is_empty() {
            return;
        }
        // Released, its `execve` not known yet: still starting, as far as waiters go.
        let state = match e.exec {
            Some(_) => EntityState::Starting,
            None => e.rec.state,
        };
        let name = e.cfg.name.clone();
        let pid = e.rec.pid;
        let spawn_error = e.last_spawn_error.clone();
        let wanted = e.wanted;
        let mut keep = Vec::new();
        for (stream, want) in e.waiters.drain(..) {
            let answer = match (want, state) {
                (WaitFor::Down, EntityState::Stopped | EntityState::Exited) => {
                    Some(Response::ok(format!("{name} stopped")))
                }
                (WaitFor::Down, EntityState::Running | EntityState::Starting)
                    if wanted != Wanted::Down =>
                {
                    Some(Response::err(format!(
                        "{name} was started again before it stopped"
                    )))
                }
                (WaitFor::Up, EntityState::Running) => {
                    Some(Response::ok(format!("{name} running as pid {pid}")))
                }
                (WaitFor::Up, EntityState::Backoff) => Some(Response::err(format!(
                    "{name}: {}; ham keeps retrying",
                    spawn_error.as_deref().unwrap_or("cannot start")
                ))),
                (WaitFor::Up, EntityState::Stopped | EntityState::Exited)
                    if wanted == Wanted::Down =>
                {
                    Some(Response::err(format!(
                        "{name} was stopped before it started"
                    )))
                }
                _ => None,
            };
            match answer {
                Some(r) => reply(stream, &r),
                None => keep.push((stream, want)),
            }
        }
        e.waiters = keep;
    }
}
