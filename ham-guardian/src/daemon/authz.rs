//! Who may ask what of ham: one function over the request and what is known of the caller
//! (the kernel's `SO_PEERCRED` pid and uid, and which entity's process it is). The
//! requests' own handlers then check only what depends on the moment (an attachment held by
//! another process, say).

use ham_core::protocol::{Change, Request, VerboseOp};

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Grant {
    /// Root or ham's user: anything.
    Operator,
    /// A client: the requests any member of the client group may make (the handlers check
    /// the rest: attaching only itself, detaching only its own attachment, …).
    Client,
    /// The process of entity `name` (or a helper it runs), defining on that entity: what it
    /// adds is checked on the parsed result to run nothing (`runtime::may_add`).
    Entity(String),
}

/// The caller.
pub(super) struct Caller<'a> {
    pub pid: i32,
    pub uid: u32,
    /// ham's own uid.
    pub ham_uid: u32,
    /// The pid of entity `name`'s process, if it runs.
    pub process_of: &'a dyn Fn(&str) -> Option<i32>,
    /// A process's parent.
    pub parent_of: &'a dyn Fn(i32) -> Option<i32>,
}

impl Caller<'_> {
    pub fn privileged(&self) -> bool {
        self.uid == 0 || self.uid == self.ham_uid
    }

    /// Whether the caller is entity `name`'s process, or a helper it runs (`ham-client` from
    /// a script).
    pub fn is_process_of(&self, name: &str) -> bool {
        (self.process_of)(name).is_some_and(|pid| {
            pid > 0 && (pid == self.pid || (self.parent_of)(self.pid) == Some(pid))
        })
    }
}

impl super::Daemon {
    /// The authorization view of `peer`: who it is, and which entity's process it is.
    pub(super) fn with_caller<T>(&self, peer: super::Peer, f: impl FnOnce(&Caller) -> T) -> T {
        let process_of = |name: &str| {
            self.entities
                .id_of(name)
                .map(|k| &self.entities[k].rec)
                .filter(|r| r.state.has_process())
                .map(|r| r.pid)
        };
        f(&Caller {
            pid: peer.pid,
            uid: peer.uid,
            ham_uid: self.my_uid,
            process_of: &process_of,
            parent_of: &crate::procfs::parent,
        })
    }
}

/// What `caller` may do with `req`, or why not (`EPERM` and a message).
pub(super) fn may(caller: &Caller, req: &Request) -> Result<Grant, (i32, String)> {
    if caller.privileged() {
        return Ok(Grant::Operator);
    }
    match req {
        Request::Ping
        | Request::Hello
        | Request::Lane
        | Request::Session
        | Request::Attach { .. }
        | Request::Detach { .. }
        | Request::Subscribe { .. }
        | Request::Ready { .. }
        | Request::Lookup { .. }
        | Request::PssOpen { .. }
        | Request::PssSync { .. }
        | Request::PssRead { .. }
        | Request::MtsSend { .. }
        | Request::MtsRecv { .. }
        | Request::MtsAck { .. }
        | Request::ClusterStatus
        | Request::Verbose {
            op: VerboseOp::Get, ..
        } => Ok(Grant::Client),
        // Only the agent ham runs for [cluster] reports what the cluster is.
        Request::ClusterReport { .. }
        | Request::ClusterPlace { .. }
        | Request::ClusterUnplace { .. }
        | Request::ClusterNext
        | Request::ClusterDone { .. }
        | Request::ClusterApply { .. }
            if caller.is_process_of(crate::config::CLUSTER_AGENT_ENTITY) =>
        {
            Ok(Grant::Entity(crate::config::CLUSTER_AGENT_ENTITY.into()))
        }
        Request::Define {
            change: Change::Condition { entity, .. } | Change::Action { entity, .. },
        } if caller.is_process_of(entity) => Ok(Grant::Entity(entity.clone())),
        _ => Err((
            libc::EPERM,
            format!(
                "permission denied: uid {} is neither root nor the owner of this ham (uid {})",
                caller.uid, caller.ham_uid
            ),
        )),
    }
}

fn refused(why: String) -> Result<(), (i32, String)> {
    Err((libc::EPERM, format!("permission denied: {why}")))
}

/// Attaching process `target` (a heartbeat, a watch): a process attaches only itself.
pub(super) fn may_attach(caller: &Caller, target: i32) -> Result<(), (i32, String)> {
    if caller.privileged() || target == caller.pid {
        return Ok(());
    }
    refused(format!(
        "pid {} may attach only itself (or be root or ham's user)",
        caller.pid
    ))
}

/// Detaching entity `name`, attached by process `attached` (0: none): only that process.
pub(super) fn may_detach(caller: &Caller, name: &str, attached: i32) -> Result<(), (i32, String)> {
    if caller.privileged() || (attached > 0 && attached == caller.pid) {
        return Ok(());
    }
    refused(format!("pid {} is not attached to `{name}`", caller.pid))
}

/// Writing entity `name`'s checkpoint store, and reading its private keys: its process, or
/// a helper it runs.
pub(super) fn may_write_pss(caller: &Caller, name: &str) -> Result<(), (i32, String)> {
    if caller.privileged() || caller.is_process_of(name) {
        return Ok(());
    }
    refused(format!(
        "pid {} is not `{name}`: only its processes write its checkpoints",
        caller.pid
    ))
}

/// Sending a message to entity `to`: root or ham's user (the sender is then named by its
/// uid), or the process of an entity `to` accepts messages from (`accept_from`), or a helper
/// it runs. Answers the sender's name.
pub(super) fn may_send<'n>(
    caller: &Caller,
    to: &str,
    accept_from: impl IntoIterator<Item = &'n str>,
) -> Result<String, (i32, String)> {
    if let Some(name) = accept_from.into_iter().find(|n| caller.is_process_of(n)) {
        return Ok(name.to_owned());
    }
    if caller.privileged() {
        return Ok(format!("uid {}", caller.uid));
    }
    Err((
        libc::EPERM,
        format!(
            "permission denied: pid {} is not the process of an entity `{to}` accepts \
             messages from (accept_from)",
            caller.pid
        ),
    ))
}

/// Receiving and acknowledging entity `name`'s messages: its process, or a helper it runs.
pub(super) fn may_receive(caller: &Caller, name: &str) -> Result<(), (i32, String)> {
    if caller.privileged() || caller.is_process_of(name) {
        return Ok(());
    }
    refused(format!(
        "pid {} is not `{name}`: only its processes receive its messages",
        caller.pid
    ))
}

/// Saying entity `name` is ready: its process, or a helper it runs.
pub(super) fn may_ready(caller: &Caller, name: &str) -> Result<(), (i32, String)> {
    if caller.privileged() || caller.is_process_of(name) {
        return Ok(());
    }
    refused(format!("pid {} is not `{name}`", caller.pid))
}

/// A detector's event on entity `name`: from its process, or the process of an entity its
/// `raise_from` names (a refused event is dropped and counted, not answered).
pub(super) fn may_raise<'n>(
    caller: &Caller,
    name: &'n str,
    raise_from: impl IntoIterator<Item = &'n str>,
) -> bool {
    caller.privileged()
        || std::iter::once(name)
            .chain(raise_from)
            .any(|n| (caller.process_of)(n).is_some_and(|p| p > 0 && p == caller.pid))
}

/// An unprivileged requester (`limit`: the entity it is) may touch only its own entity.
pub(super) fn may_touch(limit: Option<&str>, entity: &str) -> Result<(), (i32, String)> {
    match limit {
        Some(own) if own != entity => Err((
            libc::EPERM,
            format!("permission denied: `{entity}` is not the caller's entity"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    /// Entity `web` runs as pid 100; pid 101 is its child; 200 is someone else.
    fn caller(pid: i32, uid: u32) -> Caller<'static> {
        Caller {
            pid,
            uid,
            ham_uid: 0,
            process_of: &|name| (name == "web").then_some(100),
            parent_of: &|pid| match pid {
                101 => Some(100),
                _ => Some(1),
            },
        }
    }

    fn condition(entity: &str) -> Request {
        Request::Define {
            change: Change::Condition {
                entity: entity.into(),
                table: Map::new(),
            },
        }
    }

    #[test]
    fn root_may_do_anything_and_an_outsider_only_what_a_client_may() {
        let root = caller(200, 0);
        for req in [
            Request::Shutdown,
            Request::Stop {
                entity: "web".into(),
            },
            condition("db"),
            Request::DeviceRestart { enabled: false },
            Request::Upgrade {
                binary: "/tmp/evil".into(),
            },
        ] {
            assert_eq!(may(&root, &req), Ok(Grant::Operator), "{req:?}");
            let (errno, _) = may(&caller(200, 65534), &req).unwrap_err();
            assert_eq!(errno, libc::EPERM, "{req:?}");
        }
        for req in [
            Request::Ping,
            Request::Hello,
            Request::Lane,
            Request::Session,
            Request::Ready {
                entity: "web".into(),
            },
            Request::Verbose {
                op: VerboseOp::Get,
                value: 0,
            },
        ] {
            assert_eq!(may(&caller(200, 65534), &req), Ok(Grant::Client), "{req:?}");
        }
        let set = Request::Verbose {
            op: VerboseOp::Set,
            value: 3,
        };
        assert!(may(&caller(200, 65534), &set).is_err());
    }

    #[test]
    fn an_entity_and_its_helpers_may_define_on_that_entity_only() {
        for pid in [100, 101] {
            let c = caller(pid, 65534);
            assert_eq!(may(&c, &condition("web")), Ok(Grant::Entity("web".into())));
            assert!(may(&c, &condition("db")).is_err());
            assert!(
                may(
                    &c,
                    &Request::Stop {
                        entity: "web".into()
                    }
                )
                .is_err()
            );
        }
        assert!(may(&caller(200, 65534), &condition("web")).is_err());
    }

    #[test]
    fn attach_detach_ready_and_raise_are_the_callers_own() {
        let (web, child, other, root) = (
            caller(100, 65534),
            caller(101, 65534),
            caller(200, 65534),
            caller(200, 0),
        );
        assert!(may_attach(&other, 200).is_ok());
        assert_eq!(may_attach(&other, 100).unwrap_err().0, libc::EPERM);
        assert!(may_attach(&root, 100).is_ok());
        assert!(may_detach(&web, "web", 100).is_ok());
        assert!(may_detach(&other, "web", 100).is_err());
        assert!(
            may_detach(&other, "web", 0).is_err(),
            "nothing attached: not anyone's"
        );
        assert!(may_ready(&web, "web").is_ok() && may_ready(&child, "web").is_ok());
        assert!(may_ready(&other, "web").is_err());
        assert!(may_raise(&web, "web", []));
        assert!(!may_raise(&other, "db", []));
        assert!(may_raise(&web, "db", ["web"]), "db lists web in raise_from");
        assert!(may_raise(&root, "db", []));
        assert!(
            !may_raise(&child, "web", []),
            "a raise comes from the process itself"
        );
    }
}
