//! Starting an instance (cold or warm) and promoting a Guardian: building the daemon.

use super::*;

impl Daemon {
    /// `ham -c FILE`: refuses if the instance runs; starts warm from a valid segment whose
    /// HAM and Guardian are both gone, cold otherwise.
    pub fn start(cfg: Config, config_text: String) -> Result<Self, DaemonError> {
        check_kernel()?;
        let inst = cfg.instance.clone();
        std::fs::create_dir_all(&inst.run_dir).map_err(io_ctx(format!(
            "creating run_dir {}",
            inst.run_dir.display()
        )))?;
        let seg_name = inst.segment_name();
        // A name someone else created (`/dev/shm` is world-writable) is refused, never used,
        // replaced or trusted; so is a client segment name.
        ham_core::segment::probe_foreign(&seg_name, ham_core::segment::STATE_MODE)?;
        ham_core::segment::probe_foreign(
            &ham_core::paths::client_segment(&inst.name),
            ham_core::client::CLIENT_MODE,
        )?;
        let needed = cfg.max_entities.max(cfg.entities.len() as u32);
        let mut warm = None;
        match Segment::open(&seg_name, Access::ReadOnly) {
            Ok(old) => {
                let h = old.header().snapshot();
                for (pid, st) in [
                    (h.ham_pid, h.ham_start_time),
                    (h.guardian_pid, h.guardian_start_time),
                ] {
                    if procfs::is_alive(pid, st) && procfs::is_mine(pid) {
                        return Err(DaemonError::AlreadyRunning {
                            name: inst.name.clone(),
                            pid: h.ham_pid,
                        });
                    }
                }
                if old.capacity() < cfg.entities.len() as u32 {
                    log(
                        &inst.name,
                        format_args!(
                            "cold start: the segment {seg_name} holds {} entities, the configuration {}",
                            old.capacity(),
                            cfg.entities.len()
                        ),
                    );
                    stop_recorded_processes(&inst.name, &old);
                    Segment::unlink(&seg_name)?;
                } else {
                    drop(old);
                    warm = Some(Segment::open(&seg_name, Access::ReadWrite)?);
                }
            }
            Err(SegmentError::NotFound { .. }) => {
                log(
                    &inst.name,
                    format_args!("cold start: no segment {seg_name}"),
                );
            }
            Err(e @ SegmentError::Foreign { .. }) => return Err(e.into()),
            Err(e) => {
                // A segment this ham cannot read may be a live instance's of another
                // version: never replace it under a ham that still answers.
                if std::os::unix::net::UnixStream::connect(inst.socket_path()).is_ok() {
                    return Err(DaemonError::Unreadable {
                        name: inst.name.clone(),
                        why: e.to_string(),
                    });
                }
                log(
                    &inst.name,
                    format_args!(
                        "cold start: the segment {seg_name} is invalid ({e}); replacing it"
                    ),
                );
                Segment::unlink(&seg_name)?;
            }
        }
        let me = std::process::id() as i32;
        let my_start = procfs::start_time(me).unwrap_or(0);
        sys::set_title(&format!("ham: HAM {}", inst.name));
        let (seg, flags) = match warm {
            Some(seg) => {
                let h = seg.header().snapshot();
                log(
                    &inst.name,
                    format_args!(
                        "warm start: re-adopting the segment {seg_name} (epoch {}, ham pid {} gone)",
                        h.epoch, h.ham_pid
                    ),
                );
                (seg, FLAG_WARM_START | ham_core::layout::FLAG_ADOPTING)
            }
            None => (Segment::create(&seg_name, needed, unix_ns())?, 0),
        };
        let older = seg.needs_migration();
        let writer = SegmentWriter::take(seg, me, my_start)?;
        if let Some(v) = older {
            log(
                &inst.name,
                format_args!(
                    "segment {seg_name} migrated from layout {v} to {}",
                    ham_core::layout::LAYOUT_VERSION
                ),
            );
        }
        // The device-restart switch survives warm starts (header) and cold ones (log_dir).
        let old_flags = writer.segment().header().flags();
        let off = old_flags & FLAG_DEVICE_RESTART_OFF != 0 || device_restart_marker(&cfg).exists();
        writer.set_flags(flags | if off { FLAG_DEVICE_RESTART_OFF } else { 0 })?;
        writer.set_guardian(0, 0)?;
        let sockets = Sockets {
            listener: bind_socket(&inst.socket_path(), cfg.client_gid)?,
            notify: bind_notify(&inst.notify_path())?,
            watchdog: match &cfg.watchdog {
                Some(w) => Some(watchdog::open(&inst.name, w)?),
                None => None,
            },
        };
        Self::build(cfg, config_text, writer, sockets, Origin::Started, None)
    }

    /// A Guardian taking over: the old HAM is dead (or fenced and dead). `seg`: the state
    /// segment as the Guardian opened it (read-write); `cgroups`: what the Guardian found of
    /// the entities' cgroups (`None`: looked for now).
    pub fn promote(
        cfg: Config,
        config_text: String,
        sockets: Sockets,
        passed: HashMap<u32, Passed>,
        from: Option<(i32, bool)>,
        seg: Result<Segment, SegmentError>,
        found: Found,
    ) -> Result<Self, DaemonError> {
        let seg_name = cfg.instance.segment_name();
        let seg = match seg {
            Ok(seg) => seg,
            Err(e @ (SegmentError::BadMagic { .. } | SegmentError::Geometry { .. })) => {
                // Corrupted under us: the HAM we watched is dead, so no one else can be
                // using it. Start cold in its place rather than leave the box unsupervised;
                // each entity's cgroup keeps a copy that still runs from running twice.
                log(
                    &cfg.instance.name,
                    format_args!(
                        "the segment {seg_name} is unreadable ({e}): taking over cold with a \
                         new one"
                    ),
                );
                Segment::unlink(&seg_name)?;
                let needed = cfg.max_entities.max(cfg.entities.len() as u32);
                Segment::create(&seg_name, needed, unix_ns())?
            }
            Err(e) => return Err(e.into()),
        };
        let me = std::process::id() as i32;
        // A new Guardian first: if this process dies anywhere in the takeover, that one
        // finds its parent gone and takes over in turn.
        // The output pipes handed over, to the next Guardian from its first moment.
        let mut ends: HashMap<u32, (Option<&OwnedFd>, Option<&OwnedFd>)> = HashMap::new();
        for (key, p) in &passed {
            let slot = key & !(3 << 30);
            if *key == handoff::pipe_key(slot, handoff::PIPE_READ) {
                ends.entry(slot).or_default().0 = Some(&p.pidfd);
            } else if *key == handoff::pipe_key(slot, handoff::PIPE_WRITE) {
                ends.entry(slot).or_default().1 = Some(&p.pidfd);
            }
        }
        let pipes: Vec<(u32, &OwnedFd, &OwnedFd)> = ends
            .into_iter()
            .filter_map(|(s, e)| Some((s, e.0?, e.1?)))
            .collect();
        let self_exe = Path::new("/proc/self/exe");
        let bell = passed.get(&handoff::BELL_KEY).map(|p| &p.pidfd);
        // Held before its execve until the entities that died with the HAM are started
        // again (`run`), or for a bounded time: if this process dies, it runs at once.
        let prepared = match found.successor {
            Some(p) => Ok(p),
            None => prepare_guardian(&cfg, &config_text, &sockets, self_exe),
        };
        let started =
            prepared.and_then(|p| start_guardian(p, &cfg, &pipes, bell, GuardianStart::Held));
        let guardian = match started {
            Ok(g) => Some(g),
            Err(e) => {
                log(
                    &cfg.instance.name,
                    format_args!("cannot start a guardian yet: {e}"),
                );
                None
            }
        };
        let older = seg.needs_migration();
        let writer = SegmentWriter::take(seg, me, procfs::own_start_time().unwrap_or(0))?;
        if let Some(v) = older {
            log(
                &cfg.instance.name,
                format_args!(
                    "segment {seg_name} migrated from layout {v} to {}",
                    ham_core::layout::LAYOUT_VERSION
                ),
            );
        }
        failpoint::hit("promote:after-epoch");
        writer.bump_ham_failures()?;
        // The device-restart switch, as `start` keeps it (a new segment has only the marker).
        let off = if device_restart_marker(&cfg).exists() {
            FLAG_DEVICE_RESTART_OFF
        } else {
            0
        };
        let flags = writer.segment().header().flags();
        writer.set_flags(
            flags
                | FLAG_WARM_START
                | ham_core::layout::FLAG_TOOK_OVER
                | ham_core::layout::FLAG_ADOPTING
                | off,
        )?;
        match &guardian {
            Some(g) => writer.set_guardian(g.pid, g.start_time)?,
            None => writer.set_guardian(0, 0)?,
        }
        log(
            &cfg.instance.name,
            format_args!(
                "guardian pid {me} promoted to HAM (epoch {})",
                writer.epoch()
            ),
        );
        sockets
            .listener
            .set_nonblocking(true)
            .map_err(io_ctx("socket O_NONBLOCK"))?;
        let mut d = Self::build(
            cfg,
            config_text,
            writer,
            sockets,
            Origin::Promoted {
                passed,
                from,
                dead: found.dead,
            },
            found.cgroups,
        )?;
        d.guardian.proc = guardian;
        // Read before a migration rewrote them: of no use then.
        d.pre_read = found.pre_read.filter(|_| older.is_none());
        Ok(d)
    }

    pub(super) fn build(
        cfg: Config,
        config_text: String,
        mut writer: SegmentWriter,
        sockets: Sockets,
        mut origin: Origin,
        cgroups: Option<crate::cgroup::Opened>,
    ) -> Result<Self, DaemonError> {
        let Sockets {
            listener,
            notify,
            watchdog: hw_watchdog,
        } = sockets;
        notify
            .set_nonblocking(true)
            .map_err(io_ctx("notify socket O_NONBLOCK"))?;
        let inst = cfg.instance.clone();
        if cfg!(debug_assertions) {
            writer.set_hook(Some(failpoint::hit));
        }
        // Signals are blocked before anything else exists, so none is lost and none kills us.
        let signals = signalfd().map_err(io_ctx("signalfd"))?;
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(io_ctx("PR_SET_CHILD_SUBREAPER"))?;

        log_kernel(&inst.name);
        // Where exit statuses come from: what the predecessor found, in a takeover (the same
        // kernel and rights; probing the connector costs a netlink socket and an RCU
        // callback that the entities waiting for the takeover need not wait for).
        let found = writer.segment().header().snapshot().exit_sources;
        if found == 0 || !matches!(origin, Origin::Promoted { .. }) {
            let mut sources = EXIT_SOURCE_WAITID;
            if sys::pidfd_info_exit_supported() {
                sources |= EXIT_SOURCE_PIDFD_INFO;
            }
            if ProcConnector::open().is_ok() {
                sources |= EXIT_SOURCE_PROC_CONNECTOR;
            }
            writer.set_exit_sources(sources)?;
        }

        let me = std::process::id();
        // A takeover writes them once it has taken over (`run`): creating two files can take
        // a millisecond that the entities waiting for it need not wait.
        if !matches!(origin, Origin::Promoted { .. }) {
            write_pid_files(&cfg)
                .map_err(io_ctx(format!("writing {}", inst.pid_path().display())))?;
        }

        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io_ctx("epoll_create"))?;
        let timerfd = rustix::time::timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )
        .map_err(io_ctx("timerfd_create"))?;
        let add = |fd: std::os::fd::BorrowedFd, tok: Token| {
            epoll::add(&epoll, fd, tok.data(), epoll::EventFlags::IN).map_err(io_ctx("epoll_ctl"))
        };
        add(signals.as_fd(), Token::Signal)?;
        add(timerfd.as_fd(), Token::Timer)?;
        add(listener.as_fd(), Token::Listen)?;
        add(notify.as_fd(), Token::Notify)?;

        let capacity = writer.segment().capacity();
        log(
            &inst.name,
            format_args!(
                "pid {me}, epoch {}, {} entities, segment {} ({} KiB), socket {}",
                writer.epoch(),
                cfg.entities.len(),
                inst.segment_name(),
                segment_size(capacity) / 1024,
                inst.socket_path().display()
            ),
        );
        if let Ok((limit, _)) = sys::rlimit_nofile() {
            // The HAM holds a pidfd per running entity (two while a command of its runs)
            // and ~32 of its own; the Guardian a pidfd per entity. Control connections and
            // subscriptions take what is left (each is capped, none is reserved).
            let room = limit.saturating_sub(32) / 2;
            log(
                &inst.name,
                format_args!(
                    "descriptors: limit {limit}, room for about {room} running entities (fewer \
                     while up to {} control connections are open){}",
                    conns::CONN_MAX,
                    if (cfg.entities.len() as u64) > room {
                        " — fewer than this configuration has: raise RLIMIT_NOFILE's hard limit"
                    } else {
                        ""
                    }
                ),
            );
        }
        let tick_ns = cfg.liveness_timeout_ns.max(1);
        let (plog, err) = ProcessLog::open(inst.process_log_path());
        if let Some(e) = err {
            log(
                &inst.name,
                format_args!(
                    "cannot open the process log {}: {e}; going on without it",
                    inst.process_log_path().display()
                ),
            );
        }
        let syslog = Syslog::new(cfg.syslog.clone());
        // The client-token key: made once per segment, kept by every successor.
        let mut key = writer.segment().header().client_key();
        if key == [0, 0] {
            key = random_key().map_err(io_ctx("getrandom (the client-token key)"))?;
            writer.set_client_key(key)?;
        }
        let warm = writer.segment().header().flags() & FLAG_WARM_START != 0;
        // What the header says now is a predecessor's deadline (a takeover, a warm start):
        // this HAM's first turn must replace it, even with no deadline of its own (0), or
        // the Guardian waits for a turn after a deadline no one has any more, and fences it.
        let inherited_deadline = writer.segment().header().deadline();
        // The log verbosity a predecessor was told to use.
        let v = writer.segment().header().verbosity();
        if v > 0 {
            crate::log::set_verbosity((v - 1) as u32);
        }
        // The predecessor's bell (SDK clients hold it), if it handed one over.
        let bell = match &mut origin {
            Origin::Promoted { passed, .. } => {
                passed.remove(&crate::handoff::BELL_KEY).map(|p| p.pidfd)
            }
            _ => None,
        };
        // A takeover's are set up once the entities that died with the HAM are started
        // again (`run`).
        let (opened, takeover_bell) = if matches!(origin, Origin::Promoted { .. }) {
            (Ok(None), Some(bell))
        } else {
            let c = Clients::open(&cfg, &origin, warm, key, &writer, bell);
            (c.map(Some), None)
        };
        let clients = match opened {
            Ok(c) => c,
            Err(e) => {
                log(
                    &inst.name,
                    format_args!(
                        "cannot set up the client segment: {e}; going on without SDK clients"
                    ),
                );
                None
            }
        };
        let cgroups =
            cgroups.unwrap_or_else(|| crate::cgroup::Cgroups::open(&inst.cgroup, &inst.name));
        let cgroups = match cgroups {
            Ok(Some(cg)) => {
                log(
                    &inst.name,
                    format_args!(
                        "each entity's processes are tracked in a cgroup under {}",
                        cg.dir().display()
                    ),
                );
                Some(cg)
            }
            Ok(None) => None,
            Err(why) => {
                log(
                    &inst.name,
                    format_args!(
                        "no cgroups ({why}): entities are tracked by process group, and a \
                         process that leaves its group is not stopped with its entity"
                    ),
                );
                None
            }
        };
        let metrics = cfg.metrics.as_ref().and_then(|(path, every)| {
            crate::metrics::Textfile::start(
                inst.name.clone(),
                inst.segment_name(),
                path.clone(),
                std::time::Duration::from_nanos(*every),
            )
            .inspect_err(|e| {
                log(
                    &inst.name,
                    format_args!("cannot start the metrics writer: {e}; going on without it"),
                )
            })
            .ok()
        });
        Ok(Self {
            systemd: systemd::Manager::from_env(),
            logger: None,
            upgrade: None,
            leftovers: None,
            trimmed_after_start: false,
            pre_read: None,
            metrics,
            clients,
            takeover_bell,
            subscribers: HashMap::new(),
            next_sub: 0,
            defs: toml::Table::new(),
            committer: None,
            core_news: None,
            hw_watchdog: hw_watchdog.map(|fd| watchdog::Hw { fd, next: 0 }),
            my_uid: rustix::process::geteuid().as_raw(),
            config_text,
            writer,
            epoll,
            signals,
            timers: timers::Timers::new(timerfd, tick_ns),
            listener,
            notify,
            conns: HashMap::new(),
            accept_paused: false,
            ring_used: false,
            published_deadline: inherited_deadline,
            cgroups,
            deferred: Default::default(),
            hb_due: Default::default(),
            monitors: Default::default(),
            spawn_budget: SPAWNS_PER_TURN,
            limited: conns::RateLimit::default(),
            cluster: None,
            fence_at: 0,
            fence_lease: 0,
            execing: Vec::new(),
            deaths_in_turn: 0,
            restart_unsaid: None,
            cluster_work: Default::default(),
            next_conn: 0,
            entities: Default::default(),
            shutdown: None,
            stops_left: false,
            guardian: Default::default(),
            proc_conn: None,
            exit_cache: HashMap::new(),
            exit_watch: None,
            patches: Vec::new(),
            unreaped: Vec::new(),
            reaped_recently: Default::default(),
            sweep_left_to: 0,
            sweep_at: None,
            dead_pidfds: Vec::new(),
            origin: Some(origin),
            plog,
            syslog,
            runs: Default::default(),
            cfg,
        })
    }
}

/// Says which kernel ham acts on, and each fallback that is in use on it.
fn log_kernel(instance: &str) {
    use sys::kernel;
    let (real, acting) = (kernel::running(), kernel::acting());
    let mut fallbacks = Vec::new();
    if !kernel::at_least(5, 7) {
        fallbacks.push(
            "each entity is moved into its cgroup after fork (clone3 into a cgroup needs 5.7)",
        );
    }
    if !kernel::at_least(6, 15) {
        fallbacks.push(
            "a process that dies while no HAM is its parent has its exit status from the proc \
             connector, or unknown (PIDFD_INFO_EXIT needs 6.15)",
        );
    }
    let as_ = if acting < real {
        format!(
            ", acting as {}.{} ({})",
            acting.0,
            acting.1,
            kernel::COMPAT_ENV
        )
    } else {
        String::new()
    };
    log(
        instance,
        format_args!(
            "kernel {}.{}{as_}{}{}",
            real.0,
            real.1,
            if fallbacks.is_empty() { "" } else { ": " },
            fallbacks.join("; ")
        ),
    );
}

/// Refuses a kernel older than ham needs, saying why.
pub(crate) fn check_kernel() -> Result<(), DaemonError> {
    let (have, need) = (sys::kernel::running(), sys::kernel::MINIMUM);
    if have < need {
        return Err(DaemonError::Io {
            what: format!(
                "ham needs Linux {}.{} or later (pidfd_open, waitid(P_PIDFD)); this is {}.{}",
                need.0, need.1, have.0, have.1
            ),
            source: io::Error::from_raw_os_error(libc::ENOSYS),
        });
    }
    Ok(())
}

/// 128 random bits (the client-token key), or the reason there are none: a predictable
/// key would let any client pass for root.
pub(super) fn random_key() -> io::Result<[u64; 2]> {
    let mut b = [0u8; 16];
    let mut got = 0;
    while got < b.len() {
        match rustix::rand::getrandom(&mut b[got..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let key = [
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(b[8..].try_into().expect("8 bytes")),
    ];
    if key == [0, 0] {
        return Err(io::Error::other("getrandom gave zeros"));
    }
    Ok(key)
}

/// The file whose presence says device restarts are switched off, across cold starts.
pub(super) fn device_restart_marker(cfg: &Config) -> std::path::PathBuf {
    cfg.instance
        .log_dir
        .join(format!("{}.device-restart-disabled", cfg.instance.name))
}

/// Binds the sd_notify socket (mode 0666 so entities running as other users can notify;
/// senders are identified by their credentials, not by the path).
pub(super) fn bind_notify(path: &Path) -> Result<std::os::unix::net::UnixDatagram, DaemonError> {
    if path.exists() {
        std::fs::remove_file(path).map_err(io_ctx(format!("removing stale {}", path.display())))?;
    }
    let sock = std::os::unix::net::UnixDatagram::bind(path)
        .map_err(io_ctx(format!("binding {}", path.display())))?;
    rustix::net::sockopt::set_socket_passcred(&sock, true).map_err(io_ctx("SO_PASSCRED"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(io_ctx(format!("chmod {}", path.display())))?;
    Ok(sock)
}

pub(super) fn bind_socket(
    path: &Path,
    client_gid: Option<u32>,
) -> Result<UnixListener, DaemonError> {
    // Only reached once no live HAM owns this instance, so an existing socket is stale.
    if path.exists() {
        std::fs::remove_file(path).map_err(io_ctx(format!("removing stale {}", path.display())))?;
    }
    let listener =
        UnixListener::bind(path).map_err(io_ctx(format!("binding {}", path.display())))?;
    // 0660: ham's user and the client group may connect; each request is then checked
    // against the peer's credentials (operator requests need root or ham's user).
    if let Some(gid) = client_gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(io_ctx(format!("chown {}", path.display())))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io_ctx(format!("chmod {}", path.display())))?;
    listener
        .set_nonblocking(true)
        .map_err(io_ctx("socket O_NONBLOCK"))?;
    Ok(listener)
}

/// The pid file (what `hamctl upgrade` waits on) and the note of the configuration file
/// this HAM runs.
pub(super) fn write_pid_files(cfg: &Config) -> std::io::Result<()> {
    let inst = &cfg.instance;
    std::fs::write(inst.pid_path(), format!("{}\n", std::process::id()))?;
    let _ = std::fs::write(inst.config_note_path(), format!("{}\n", cfg.path.display()));
    Ok(())
}
