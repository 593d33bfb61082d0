//! Collecting an entity's core files (`cores = true`; see `crate::cores`).

use super::*;
use crate::cores::Pattern;

/// The signals whose default action dumps a core.
const DUMPING: [i32; 10] = [
    libc::SIGQUIT,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGSEGV,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGSYS,
];

impl Daemon {
    /// Entity `i`'s process `pid` was killed by `signal`: if that dumps a core, the core is
    /// moved into `cores_dir` (on a thread of its own: a core may be large, and the loop
    /// never waits for a disk).
    pub(super) fn collect_core(&mut self, i: EntityId, pid: i32, signal: i32) {
        let e = &self.entities[i];
        if !e.cfg.cores || !DUMPING.contains(&signal) {
            return;
        }
        let name = e.cfg.name.clone();
        let pattern = match Pattern::of_system() {
            Ok(p) => p,
            Err(err) => {
                say!(self, "{name}: cannot read core_pattern: {err}");
                return;
            }
        };
        if let Pattern::Pipe(prog) = &pattern {
            say!(
                self,
                "{name}: pid {pid} killed by signal {signal}: its core is handled by the \
                 system (core_pattern is a pipe to {prog})"
            );
            return;
        }
        // The command name the kernel knew it by: its executable's, 15 bytes at most.
        let comm: String = e
            .cfg
            .exec_path
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(15).collect())
            .unwrap_or_default();
        let uid = e.cfg.uid.unwrap_or(self.my_uid);
        let gid = e
            .cfg
            .gid
            .unwrap_or_else(|| rustix::process::getegid().as_raw());
        let cwd = e.cfg.rare.cwd.clone().unwrap_or_else(|| {
            std::env::current_dir().unwrap_or_else(|_| std::path::PathBuf::from("/"))
        });
        let from = match pattern.core_path(pid, &comm, uid, gid, signal, &cwd) {
            Ok(p) => p,
            Err(why) => {
                say!(self, "{name}: cannot tell where its core went: {why}");
                return;
            }
        };
        let dir = self.cfg.instance.cores_dir.clone();
        let (keep, max) = (self.cfg.cores_keep as usize, self.cfg.cores_max_bytes);
        let core = crate::cores::core_name(pid, signal, unix_ns() / 1_000_000);
        let instance = self.cfg.instance.name.clone();
        let entity = name.clone();
        // The loop hears of a collected core (its `core` conditions fire then).
        let news = match &self.core_news {
            Some(n) => Some(n.clone()),
            None => match CoreNews::start(&self.epoll) {
                Ok(n) => Some(self.core_news.insert(n).clone()),
                Err(err) => {
                    say!(self, "{name}: its core conditions cannot fire: {err}");
                    None
                }
            },
        };
        let spawned = std::thread::Builder::new()
            .name("ham-core".into())
            .spawn(move || {
                let said = |msg: std::fmt::Arguments| crate::log::ham(&instance, msg);
                if !from.exists() {
                    said(format_args!(
                        "{entity}: pid {pid} (signal {signal}) left no core at {}",
                        from.display()
                    ));
                    return;
                }
                match crate::cores::collect(&from, &dir, &entity, &core, keep, max) {
                    Ok(to) => {
                        said(format_args!(
                            "{entity}: core of pid {pid} in {}",
                            to.display()
                        ));
                        if let Some(n) = news {
                            n.tell(i, entity, to);
                        }
                    }
                    Err(err) => said(format_args!(
                        "{entity}: cannot collect the core {}: {err}",
                        from.display()
                    )),
                }
            });
        if let Err(err) = spawned {
            say!(self, "{name}: cannot collect its core: {err}");
        }
    }
}

/// Collected cores, from their threads to the loop: a list and an eventfd it watches.
#[derive(Clone)]
pub(super) struct CoreNews {
    done: std::sync::Arc<std::sync::Mutex<Vec<(EntityId, String, std::path::PathBuf)>>>,
    fd: std::sync::Arc<OwnedFd>,
}

impl CoreNews {
    fn start(epoll: &OwnedFd) -> io::Result<Self> {
        let fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        epoll::add(
            epoll,
            &fd,
            Token::CoreCollected.data(),
            epoll::EventFlags::IN,
        )?;
        Ok(Self {
            done: Default::default(),
            fd: std::sync::Arc::new(fd),
        })
    }

    fn tell(&self, i: EntityId, entity: String, path: std::path::PathBuf) {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((i, entity, path));
        let _ = rustix::io::write(&*self.fd, &1u64.to_ne_bytes());
    }
}

impl Daemon {
    /// Cores were collected: their entities' `core` conditions fire (`HAM_CORE`).
    pub(super) fn on_core_collected(&mut self) {
        let Some(n) = &self.core_news else { return };
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&*n.fd, &mut buf);
        let done = std::mem::take(&mut *n.done.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, entity, path) in done {
            // Still that entity (not removed meanwhile).
            if self.entities.get(i).is_some_and(|e| e.cfg.name == entity) {
                let event = crate::actions::Event::Core {
                    path: path.display().to_string(),
                };
                self.fire(i, event, None);
            }
        }
    }
}
