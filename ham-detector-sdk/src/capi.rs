//! The QNX-compatible C API (`include/ham.h`): QNX 6.6 `ha/ham.h`'s names, argument order,
//! constants and return conventions (`NULL` / `-1` with `errno` set on failure), over the
//! Rust SDK. `docs/PORTING-FROM-QNX.md` says what each function does here.
//!
//! Handles are heap objects naming what they refer to (entity / condition / action names);
//! they stay valid across a HAM takeover because names, not connections, identify things.
//! Every function is safe to call from several threads.
#![allow(unsafe_code)]
#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]
// QNX's parameter names are kept in the header even where ham ignores the argument.
#![allow(unused_variables)]

use std::ffi::{CStr, c_char, c_int, c_uint};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::{Change, Client, ControlCommand, Error, Heartbeat};

/// Condition types (QNX `COND*`).
pub const CONDANY: c_int = 0;
pub const CONDDEATH: c_int = 1;
pub const CONDDETACH: c_int = 2;
pub const CONDRESTART: c_int = 3;
pub const CONDHBEATMISSEDLOW: c_int = 4;
pub const CONDHBEATMISSEDHIGH: c_int = 5;
pub const CONDABNORMALDEATH: c_int = 6;
pub const CONDATTACH: c_int = 7;
pub const CONDSTATE: c_int = 8;
pub const CONDRAISE: c_int = 9;
/// The lowest and highest condition types.
pub const CONDMIN: c_int = CONDANY;
pub const CONDMAX: c_int = CONDRAISE;
/// Wildcards of state and raise conditions.
pub const CONDSTATEANY: c_uint = 0;
pub const CONDRAISETYPEANY: c_uint = 0;
pub const CONDRAISECLASSANY: c_uint = 0;
pub const CONDRAISESEVERITYANY: c_uint = 0;
/// Condition flags.
pub const HREARMAFTERRESTART: c_uint = 0x1;
pub const HCONDINDEPENDENT: c_uint = 0x2;
pub const HCONDNOWAIT: c_uint = 0x4;
pub const HCONDOTHER: c_uint = 0x8;
pub const HCONDKEEPONEMPTY: c_uint = 0x10;
/// Action flags.
pub const HACTIONDONOW: c_uint = 0x2;
pub const HACTIONBREAKONFAIL: c_uint = 0x4;
pub const HACTIONKEEPONFAIL: c_uint = 0x8;
/// Entity flag (accepted and ignored: a run-time entity stays defined when its process
/// dies; `ham_detach` removes it).
pub const HENTITYKEEPONDEATH: c_uint = 0x2;
/// State-condition flags: `fromstate` / `tostate` are bit sets, or their inverses (not
/// supported: `ham_condition_state` fails with `EOPNOTSUPP`).
pub const HCONDSTATEFROMSET: c_uint = 0x1000;
pub const HCONDSTATETOSET: c_uint = 0x2000;
pub const HCONDSTATEFROMINV: c_uint = 0x4000;
pub const HCONDSTATETOINV: c_uint = 0x8000;
/// Apply a control command to what the item holds as well (`ham_entity_control` always
/// does: it reaches every run-time condition of the entity).
pub const HRECURSE: c_uint = 0x0010_0000;
/// `ham_*_control` commands.
pub const HENABLE: c_int = 1;
pub const HDISABLE: c_int = 2;
pub const HADDFLAGS: c_int = 3;
pub const HREMOVEFLAGS: c_int = 4;
pub const HSETFLAGS: c_int = 5;
pub const HGETFLAGS: c_int = 6;
/// `ham_verbose` operations.
pub const VERBOSE_SET_INCR: c_int = 1;
pub const VERBOSE_SET_DECR: c_int = 2;
pub const VERBOSE_SET: c_int = 3;
pub const VERBOSE_GET: c_int = 4;
/// QNX's shortest heartbeat period, in nanoseconds (1 s). ham accepts periods down to
/// 1 ms (`HAM_HBEAT_FLOOR`).
pub const HAMHBEATMIN: u64 = 1_000_000_000;
/// The shortest heartbeat period ham accepts, in nanoseconds (1 ms).
pub const HAM_HBEAT_FLOOR: u64 = 1_000_000;
/// The local node (the only one for now).
pub const ND_LOCAL_NODE: c_int = 0;

/// A handle: what it names (an entity; its condition; that condition's action). As in
/// QNX, entity, condition and action handles are one type underneath, so C code may keep
/// them in one variable type.
#[derive(Default)]
pub struct __ham_lib_handle {
    entity: String,
    condition: String,
    action: String,
}
/// An entity handle.
pub type ham_entity_t = __ham_lib_handle;
/// A condition handle.
pub type ham_condition_t = __ham_lib_handle;
/// An action handle.
pub type ham_action_t = __ham_lib_handle;

struct State {
    client: Option<Client>,
    connections: u32,
    states: std::collections::BTreeMap<String, u32>,
}

static STATE: Mutex<State> = Mutex::new(State {
    client: None,
    connections: 0,
    states: std::collections::BTreeMap::new(),
});

/// This process's self-attachments, apart from `STATE` so that `ham_heartbeat` never waits
/// behind a call talking to ham.
static HEARTBEATS: Mutex<Vec<(String, Heartbeat)>> = Mutex::new(Vec::new());

/// This process's entity's checkpoint store, opened on the first `ham_pss_*` call.
static PSS: Mutex<Option<crate::Pss>> = Mutex::new(None);

/// Pulse channels opened with `ham_pulse_open` (each a subscription, by its descriptor).
static PULSES: Mutex<Vec<crate::Subscription>> = Mutex::new(Vec::new());

fn set_errno(e: c_int) {
    // SAFETY: `__errno_location` returns the calling thread's errno slot, valid for the
    // thread's lifetime; writing an int there is what setting errno means.
    unsafe { *libc::__errno_location() = e };
}

fn errno_of(e: &Error) -> c_int {
    match e {
        Error::Refused { errno: Some(n), .. } => *n,
        Error::Refused { .. } => libc::EINVAL,
        Error::Connect { .. } | Error::Segment(_) | Error::Config { .. } => libc::EBADF,
        Error::Push(_) => libc::EAGAIN,
        Error::Io(_) | Error::BadAnswer(_) | Error::NoAnswer => libc::EIO,
        Error::Pss(e) => {
            use ham_core::pss::PssError as P;
            match e {
                P::BadKey(_) | P::TooLarge { .. } => libc::EINVAL,
                P::TooManyKeys { .. } | P::OverQuota { .. } => libc::ENOSPC,
                P::Busy { .. } => libc::EBUSY,
                P::Unstable(_) => libc::EAGAIN,
            }
        }
    }
}

/// Runs `f` with the connection (made on first use if `ham_connect` was not called).
fn with_client<T>(f: impl FnOnce(&Client) -> Result<T, Error>) -> Result<T, c_int> {
    let mut st = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if st.client.is_none() {
        st.client = Some(Client::connect().map_err(|e| errno_of(&e))?);
    }
    // Without ham_connect the connection is made on first use and kept (a detector that
    // raises in a loop must not reconnect each time); ham_disconnect to zero drops it.
    f(st.client.as_ref().expect("connected above")).map_err(|e| errno_of(&e))
}

/// A NUL-terminated string argument; `None` (EINVAL) for NULL or non-UTF-8.
unsafe fn arg(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller passes a NUL-terminated string that outlives this call (the C
    // API's contract, as in QNX).
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .ok()
        .map(str::to_owned)
}

/// An optional string argument: `Ok(None)` for NULL, `EINVAL` for non-UTF-8.
unsafe fn opt_arg(p: *const c_char) -> Result<Option<String>, c_int> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: as `arg` (not NULL here).
    unsafe { arg(p) }.map(Some).ok_or(libc::EINVAL)
}

/// A handle argument; `None` for NULL.
unsafe fn handle<'a, T>(p: *mut T) -> Option<&'a T> {
    // SAFETY: a non-NULL handle was returned by this library and not yet freed (the
    // caller's contract).
    unsafe { p.as_ref() }
}

fn fail_ptr<T>(e: c_int) -> *mut T {
    set_errno(e);
    std::ptr::null_mut()
}

fn fail_int(e: c_int) -> c_int {
    set_errno(e);
    -1
}

fn int_result(r: Result<(), c_int>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => fail_int(e),
    }
}

fn local(nd: c_int) -> Result<(), c_int> {
    if nd == ND_LOCAL_NODE {
        Ok(())
    } else {
        Err(libc::EOPNOTSUPP) // other nodes come with the cluster
    }
}

/// `node` is NULL or a NUL-terminated string that outlives the call.
unsafe fn local_name(node: *const c_char) -> Result<(), c_int> {
    // SAFETY: the caller's contract above is `arg`'s.
    match unsafe { arg(node) } {
        None => Ok(()),
        Some(n) if n.is_empty() || n == "localhost" => Ok(()),
        Some(_) => Err(libc::EOPNOTSUPP),
    }
}

/// A QNX command line (`"/path/prog arg1 arg2"`) as argv, split as a POSIX shell splits
/// words (no expansion): `None` for an unterminated quote or escape.
fn split_line(line: &str) -> Option<Vec<String>> {
    shlex::split(line)
}

fn define(change: Change) -> Result<u32, c_int> {
    with_client(|c| c.define(change))
}

/// Frees a handle this library made (`Box::into_raw`); `NULL` is `EINVAL`.
unsafe fn free_handle<T>(h: *mut T) -> c_int {
    if h.is_null() {
        return fail_int(libc::EINVAL);
    }
    // SAFETY: a handle this library made with Box::into_raw and the caller has not freed
    // (the C API's contract).
    drop(unsafe { Box::from_raw(h) });
    0
}

/// A `_node` variant: `f` (the local call) if `node` (what `local_name` said of the node
/// name) is the local node.
fn on_node<T>(node: Result<(), c_int>, f: impl FnOnce() -> T, fail: fn(c_int) -> T) -> T {
    match node {
        Ok(()) => f(),
        Err(e) => fail(e),
    }
}

// -- connection --------------------------------------------------------------------------

/// Connects this process to ham (reference counted; `ham_disconnect` undoes one).
#[unsafe(no_mangle)]
pub extern "C" fn ham_connect(flags: c_uint) -> c_int {
    let mut st = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if st.client.is_none() {
        match Client::connect() {
            Ok(c) => st.client = Some(c),
            Err(e) => return fail_int(errno_of(&e)),
        }
    }
    st.connections += 1;
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn ham_connect_nd(nd: c_int, flags: c_uint) -> c_int {
    match local(nd) {
        Ok(()) => ham_connect(flags),
        Err(e) => fail_int(e),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_connect_node(nodename: *const c_char, flags: c_uint) -> c_int {
    on_node(
        // SAFETY: the caller's node name (NULL or a string), passed on.
        unsafe { local_name(nodename) },
        || ham_connect(flags),
        fail_int,
    )
}

#[unsafe(no_mangle)]
pub extern "C" fn ham_disconnect(flags: c_uint) -> c_int {
    let mut st = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if st.connections == 0 {
        return fail_int(libc::EBADF);
    }
    st.connections -= 1;
    if st.connections == 0 {
        st.client = None;
    }
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn ham_disconnect_nd(nd: c_int, flags: c_uint) -> c_int {
    match local(nd) {
        Ok(()) => ham_disconnect(flags),
        Err(e) => fail_int(e),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_disconnect_node(nodename: *const c_char, flags: c_uint) -> c_int {
    on_node(
        // SAFETY: the caller's node name (NULL or a string), passed on.
        unsafe { local_name(nodename) },
        || ham_disconnect(flags),
        fail_int,
    )
}

// -- entities ----------------------------------------------------------------------------

fn entity_handle(entity: String) -> *mut ham_entity_t {
    Box::into_raw(Box::new(ham_entity_t {
        entity,
        ..Default::default()
    }))
}

/// Watches a running process (`pid > 0`), or runs `line` and watches it (`pid <= 0`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_attach(
    ename: *const c_char,
    nd: c_int,
    pid: libc::pid_t,
    line: *const c_char,
    flags: c_uint,
) -> *mut ham_entity_t {
    if let Err(e) = local(nd) {
        return fail_ptr(e);
    }
    // SAFETY: as `arg`.
    let Some(name) = (unsafe { arg(ename) }) else {
        return fail_ptr(libc::EINVAL);
    };
    let command = if pid > 0 {
        None
    } else {
        // SAFETY: as `arg`.
        match unsafe { arg(line) }.and_then(|l| split_line(&l)) {
            Some(argv) if !argv.is_empty() => Some(argv),
            _ => return fail_ptr(libc::EINVAL),
        }
    };
    let change = Change::Entity {
        name: name.clone(),
        pid: (pid > 0).then_some(pid),
        command,
    };
    match define(change) {
        Ok(_) => entity_handle(name),
        Err(e) => fail_ptr(e),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_attach_node(
    ename: *const c_char,
    nodename: *const c_char,
    pid: libc::pid_t,
    line: *const c_char,
    flags: c_uint,
) -> *mut ham_entity_t {
    // SAFETY: the caller's pointers, passed on unchanged.
    on_node(
        // SAFETY: the caller's node name (NULL or a string), passed on.
        unsafe { local_name(nodename) },
        || unsafe { ham_attach(ename, ND_LOCAL_NODE, pid, line, flags) },
        fail_ptr,
    )
}

/// Attaches this process as `ename` (created as a self-attached entity if it does not
/// exist) with a heartbeat every `hp` ns; `hpdl` / `hpdh` missed beats fire
/// CONDHBEATMISSEDLOW / HIGH (0: never).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_attach_self(
    ename: *const c_char,
    hp: u64,
    hpdl: c_int,
    hpdh: c_int,
    flags: c_uint,
) -> *mut ham_entity_t {
    // SAFETY: as `arg`.
    let Some(name) = (unsafe { arg(ename) }) else {
        return fail_ptr(libc::EINVAL);
    };
    if hpdl < 0 || hpdh < 0 || (hpdh > 0 && hpdl > hpdh) || (hp > 0 && hp < HAM_HBEAT_FLOOR) {
        return fail_ptr(libc::EINVAL);
    }
    let hb = with_client(|c| {
        match c.define(Change::Entity {
            name: name.clone(),
            pid: None,
            command: None,
        }) {
            Ok(_)
            | Err(Error::Refused {
                errno: Some(libc::EEXIST),
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        let (lo, hi) = if hp == 0 {
            (0, 0)
        } else {
            (hpdl as u32, hpdh as u32)
        };
        c.attach_self(&name, Duration::from_nanos(hp.max(HAM_HBEAT_FLOOR)), lo, hi)
    });
    match hb {
        Ok(hb) => {
            let mut hbs = HEARTBEATS.lock().unwrap_or_else(|p| p.into_inner());
            hbs.retain(|(n, _)| *n != name);
            hbs.push((name.clone(), hb));
            entity_handle(name)
        }
        Err(e) => fail_ptr(e),
    }
}

fn detach(name: &str) -> c_int {
    int_result(with_client(|c| c.detach(name)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_detach(ehdl: *mut ham_entity_t, flags: c_uint) -> c_int {
    // SAFETY: as `handle`.
    match unsafe { handle(ehdl) } {
        Some(h) => detach(&h.entity),
        None => fail_int(libc::EINVAL),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_detach_self(ehdl: *mut ham_entity_t, flags: c_uint) -> c_int {
    // SAFETY: the caller's handle, passed on.
    let r = unsafe { ham_detach(ehdl, flags) };
    // SAFETY: as `handle` (ham_detach has just used it).
    if let (0, Some(h)) = (r, unsafe { handle(ehdl) }) {
        let mut hbs = HEARTBEATS.lock().unwrap_or_else(|p| p.into_inner());
        hbs.retain(|(n, _)| *n != h.entity);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_detach_name(nd: c_int, ename: *const c_char, flags: c_uint) -> c_int {
    if let Err(e) = local(nd) {
        return fail_int(e);
    }
    // SAFETY: as `arg`.
    match unsafe { arg(ename) } {
        Some(n) => detach(&n),
        None => fail_int(libc::EINVAL),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_detach_name_node(
    nodename: *const c_char,
    ename: *const c_char,
    flags: c_uint,
) -> c_int {
    // SAFETY: the caller's pointer, passed on.
    on_node(
        // SAFETY: the caller's node name (NULL or a string), passed on.
        unsafe { local_name(nodename) },
        || unsafe { ham_detach_name(ND_LOCAL_NODE, ename, flags) },
        fail_int,
    )
}

/// A placeholder entity: conditions and actions can be added before its process attaches.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_entity(
    ename: *const c_char,
    nd: c_int,
    flags: c_uint,
) -> *mut ham_entity_t {
    if let Err(e) = local(nd) {
        return fail_ptr(e);
    }
    // SAFETY: as `arg`.
    let Some(name) = (unsafe { arg(ename) }) else {
        return fail_ptr(libc::EINVAL);
    };
    match define(Change::Entity {
        name: name.clone(),
        pid: None,
        command: None,
    }) {
        Ok(_) => entity_handle(name),
        Err(e) => fail_ptr(e),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_entity_node(
    ename: *const c_char,
    nodename: *const c_char,
    flags: c_uint,
) -> *mut ham_entity_t {
    // SAFETY: the caller's pointer, passed on.
    on_node(
        // SAFETY: the caller's node name (NULL or a string), passed on.
        unsafe { local_name(nodename) },
        || unsafe { ham_entity(ename, ND_LOCAL_NODE, flags) },
        fail_ptr,
    )
}

fn lookup(entity: &str, condition: Option<&str>, action: Option<&str>) -> Result<(), c_int> {
    with_client(|c| c.lookup(entity, condition, action))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_entity_handle(
    nd: c_int,
    ename: *const c_char,
    flags: c_uint,
) -> *mut ham_entity_t {
    if let Err(e) = local(nd) {
        return fail_ptr(e);
    }
    // SAFETY: as `arg`.
    let Some(name) = (unsafe { arg(ename) }) else {
        return fail_ptr(libc::EINVAL);
    };
    match lookup(&name, None, None) {
        Ok(()) => entity_handle(name),
        Err(e) => fail_ptr(e),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_entity_handle_node(
    nodename: *const c_char,
    ename: *const c_char,
    flags: c_uint,
) -> *mut ham_entity_t {
    // SAFETY: the caller's pointer, passed on.
    on_node(
        // SAFETY: the caller's node name (NULL or a string), passed on.
        unsafe { local_name(nodename) },
        || unsafe { ham_entity_handle(ND_LOCAL_NODE, ename, flags) },
        fail_ptr,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_entity_handle_free(ehdl: *mut ham_entity_t) -> c_int {
    // SAFETY: the caller's handle, passed on.
    unsafe { free_handle(ehdl) }
}

// -- conditions --------------------------------------------------------------------------

fn cond_flags(t: &mut Map<String, Value>, flags: c_uint) {
    t.insert("rearm".into(), json!(flags & HREARMAFTERRESTART != 0));
    t.insert("independent".into(), json!(flags & HCONDINDEPENDENT != 0));
    t.insert("nowait".into(), json!(flags & HCONDNOWAIT != 0));
}

unsafe fn add_condition(
    ehdl: *mut ham_entity_t,
    cname: *const c_char,
    mut t: Map<String, Value>,
    flags: c_uint,
) -> *mut ham_condition_t {
    // SAFETY: as `handle` and `arg`.
    let (Some(h), Some(name)) = (unsafe { handle(ehdl) }, unsafe { arg(cname) }) else {
        return fail_ptr(libc::EINVAL);
    };
    t.insert("name".into(), json!(name));
    cond_flags(&mut t, flags);
    match define(Change::Condition {
        entity: h.entity.clone(),
        table: t,
    }) {
        Ok(_) => Box::into_raw(Box::new(ham_condition_t {
            entity: h.entity.clone(),
            condition: name,
            ..Default::default()
        })),
        Err(e) => fail_ptr(e),
    }
}

/// A condition of `type` (CONDDEATH, …; CONDSTATE and CONDRAISE have their own calls).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_condition(
    ehdl: *mut ham_entity_t,
    r#type: c_int,
    cname: *const c_char,
    flags: c_uint,
) -> *mut ham_condition_t {
    let on = match r#type {
        CONDANY => "any",
        CONDDEATH => "death",
        CONDDETACH => "detach",
        CONDRESTART => "restart",
        CONDHBEATMISSEDLOW => "heartbeat-missed-low",
        CONDHBEATMISSEDHIGH => "heartbeat-missed-high",
        CONDABNORMALDEATH => "abnormal-death",
        CONDATTACH => "attach",
        _ => return fail_ptr(libc::EINVAL),
    };
    let mut t = Map::new();
    t.insert("on".into(), json!(on));
    // SAFETY: the caller's pointers, passed on.
    unsafe { add_condition(ehdl, cname, t, flags) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_condition_state(
    ehdl: *mut ham_entity_t,
    cname: *const c_char,
    fromstate: c_uint,
    tostate: c_uint,
    flags: c_uint,
) -> *mut ham_condition_t {
    if flags & (HCONDSTATEFROMSET | HCONDSTATETOSET | HCONDSTATEFROMINV | HCONDSTATETOINV) != 0 {
        return fail_ptr(libc::EOPNOTSUPP);
    }
    let mut t = Map::new();
    t.insert("on".into(), json!("state"));
    if fromstate != CONDSTATEANY {
        t.insert("from".into(), json!(fromstate));
    }
    if tostate != CONDSTATEANY {
        t.insert("to".into(), json!(tostate));
    }
    // SAFETY: the caller's pointers, passed on.
    unsafe { add_condition(ehdl, cname, t, flags) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_condition_raise(
    ehdl: *mut ham_entity_t,
    cname: *const c_char,
    rtype: c_uint,
    rclass: c_uint,
    severity: c_uint,
    flags: c_uint,
) -> *mut ham_condition_t {
    let mut t = Map::new();
    t.insert("on".into(), json!("raise"));
    if rtype != CONDRAISETYPEANY {
        t.insert("rtype".into(), json!(rtype));
    }
    if rclass != CONDRAISECLASSANY {
        t.insert("class".into(), json!(rclass.to_string()));
    }
    if severity != CONDRAISESEVERITYANY {
        t.insert("severity".into(), json!(severity));
    }
    // SAFETY: the caller's pointers, passed on.
    unsafe { add_condition(ehdl, cname, t, flags) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_condition_remove(chdl: *mut ham_condition_t, flags: c_uint) -> c_int {
    // SAFETY: as `handle`.
    let Some(h) = (unsafe { handle(chdl) }) else {
        return fail_int(libc::EINVAL);
    };
    int_result(
        define(Change::Remove {
            entity: h.entity.clone(),
            condition: Some(h.condition.clone()),
            action: None,
            fail: None,
        })
        .map(|_| ()),
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_condition_handle(
    nd: c_int,
    ename: *const c_char,
    cname: *const c_char,
    flags: c_uint,
) -> *mut ham_condition_t {
    if let Err(e) = local(nd) {
        return fail_ptr(e);
    }
    // SAFETY: as `arg`.
    let (Some(entity), Some(condition)) = (unsafe { arg(ename) }, unsafe { arg(cname) }) else {
        return fail_ptr(libc::EINVAL);
    };
    match lookup(&entity, Some(&condition), None) {
        Ok(()) => Box::into_raw(Box::new(ham_condition_t {
            entity,
            condition,
            ..Default::default()
        })),
        Err(e) => fail_ptr(e),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_condition_handle_node(
    nodename: *const c_char,
    ename: *const c_char,
    cname: *const c_char,
    flags: c_uint,
) -> *mut ham_condition_t {
    // SAFETY: the caller's pointers, passed on.
    on_node(
        // SAFETY: the caller's node name (NULL or a string), passed on.
        unsafe { local_name(nodename) },
        || unsafe { ham_condition_handle(ND_LOCAL_NODE, ename, cname, flags) },
        fail_ptr,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_condition_handle_free(chdl: *mut ham_condition_t) -> c_int {
    // SAFETY: the caller's handle, passed on.
    unsafe { free_handle(chdl) }
}

// -- actions -----------------------------------------------------------------------------

fn action_flags(t: &mut Map<String, Value>, flags: c_uint) {
    t.insert("run_now".into(), json!(flags & HACTIONDONOW != 0));
    t.insert(
        "break_on_fail".into(),
        json!(flags & HACTIONBREAKONFAIL != 0),
    );
}

/// Adds an action table to a condition (or, with `fail_of`, to an action's fail list).
unsafe fn add_action(
    chdl: *mut ham_condition_t,
    aname: *const c_char,
    mut t: Map<String, Value>,
    flags: c_uint,
    fail_of: Option<String>,
) -> Result<ham_action_t, c_int> {
    // SAFETY: as `handle` and `arg`.
    let (Some(h), Some(name)) = (unsafe { handle(chdl) }, unsafe { arg(aname) }) else {
        return Err(libc::EINVAL);
    };
    t.insert("name".into(), json!(name));
    if fail_of.is_none() {
        action_flags(&mut t, flags);
    }
    define(Change::Action {
        entity: h.entity.clone(),
        condition: h.condition.clone(),
        fail_of,
        table: t,
    })?;
    Ok(ham_action_t {
        entity: h.entity.clone(),
        condition: h.condition.clone(),
        action: name,
    })
}

fn boxed(r: Result<ham_action_t, c_int>) -> *mut ham_action_t {
    match r {
        Ok(a) => Box::into_raw(Box::new(a)),
        Err(e) => fail_ptr(e),
    }
}

/// The tables of QNX's action kinds.
fn exec_table(kind: &str, line: Option<String>) -> Result<Map<String, Value>, c_int> {
    let argv = line.and_then(|l| split_line(&l)).unwrap_or_default();
    if argv.is_empty() {
        return Err(libc::EINVAL);
    }
    let mut t = Map::new();
    t.insert("do".into(), json!(kind));
    t.insert("command".into(), json!(argv));
    Ok(t)
}

/// A waitfor: for `path` to exist, at most `delay` ms; with no path (NULL, as QNX allows)
/// a plain delay of `delay` ms.
fn waitfor_table(
    path: Result<Option<String>, c_int>,
    delay: c_int,
) -> Result<Map<String, Value>, c_int> {
    let path = path?;
    if delay <= 0 {
        return Err(libc::EINVAL);
    }
    let mut t = Map::new();
    match path {
        Some(p) => {
            t.insert("do".into(), json!("waitfor"));
            t.insert("path".into(), json!(p));
            t.insert("timeout".into(), json!(format!("{delay}ms")));
        }
        None => {
            t.insert("do".into(), json!("delay"));
            t.insert("delay".into(), json!(format!("{delay}ms")));
        }
    }
    Ok(t)
}

fn signal_table(
    pid: libc::pid_t,
    signum: c_int,
    value: c_int,
) -> Result<Map<String, Value>, c_int> {
    if pid <= 0 || !(1..=64).contains(&signum) {
        return Err(libc::EINVAL);
    }
    let mut t = Map::new();
    t.insert("do".into(), json!("signal"));
    t.insert("pid".into(), json!(pid));
    t.insert("signal".into(), json!(signum));
    t.insert("value".into(), json!(value));
    Ok(t)
}

fn pulse_table(chid: c_int, code: c_int, value: c_int) -> Map<String, Value> {
    let mut t = Map::new();
    t.insert("do".into(), json!("notify"));
    t.insert("topic".into(), json!(format!("pulse:{chid}")));
    t.insert("code".into(), json!(code));
    t.insert("value".into(), json!(value));
    t
}

fn log_table(msg: Option<String>) -> Result<Map<String, Value>, c_int> {
    let mut t = Map::new();
    t.insert("do".into(), json!("log"));
    t.insert("message".into(), json!(msg.ok_or(libc::EINVAL)?));
    Ok(t)
}

/// Restarts the entity with `path` (a full command line) when its death condition fires.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_restart(
    chdl: *mut ham_condition_t,
    aname: *const c_char,
    path: *const c_char,
    flags: c_uint,
) -> *mut ham_action_t {
    // SAFETY: as `arg`; then the caller's pointers, passed on.
    boxed(
        exec_table("restart", unsafe { arg(path) })
            .and_then(|t| unsafe { add_action(chdl, aname, t, flags, None) }),
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_execute(
    chdl: *mut ham_condition_t,
    aname: *const c_char,
    path: *const c_char,
    flags: c_uint,
) -> *mut ham_action_t {
    // SAFETY: as `arg`; then the caller's pointers, passed on.
    boxed(
        exec_table("execute", unsafe { arg(path) })
            .and_then(|t| unsafe { add_action(chdl, aname, t, flags, None) }),
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_waitfor(
    chdl: *mut ham_condition_t,
    aname: *const c_char,
    path: *const c_char,
    delay: c_int,
    flags: c_uint,
) -> *mut ham_action_t {
    // SAFETY: as `arg`; then the caller's pointers, passed on.
    boxed(
        waitfor_table(unsafe { opt_arg(path) }, delay)
            .and_then(|t| unsafe { add_action(chdl, aname, t, flags, None) }),
    )
}

/// Sends `signum` with `value` to `topid` (`sigqueue`); `code` is not carried (Linux's
/// sigqueue has no code).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_notify_signal(
    chdl: *mut ham_condition_t,
    aname: *const c_char,
    nd: c_int,
    topid: libc::pid_t,
    signum: c_int,
    code: c_int,
    value: c_int,
    flags: c_uint,
) -> *mut ham_action_t {
    if let Err(e) = local(nd) {
        return fail_ptr(e);
    }
    // SAFETY: the caller's pointers, passed on.
    boxed(
        signal_table(topid, signum, value)
            .and_then(|t| unsafe { add_action(chdl, aname, t, flags, None) }),
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_notify_signal_node(
    chdl: *mut ham_condition_t,
    aname: *const c_char,
    nodename: *const c_char,
    topid: libc::pid_t,
    signum: c_int,
    code: c_int,
    value: c_int,
    flags: c_uint,
) -> *mut ham_action_t {
    // SAFETY: the caller's pointers, passed on.
    on_node(
        // SAFETY: the caller's node name (NULL or a string), passed on.
        unsafe { local_name(nodename) },
        || unsafe {
            ham_action_notify_signal(
                chdl,
                aname,
                ND_LOCAL_NODE,
                topid,
                signum,
                code,
                value,
                flags,
            )
        },
        fail_ptr,
    )
}

/// Linux has no pulses: the pulse (`pulsecode`, `value`) goes to the subscribers of topic
/// `pulse:<chid>`: C programs receive it with `ham_pulse_open(chid)` and
/// `ham_pulse_receive`; Rust ones with `Client::subscribe("pulse:7")`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_notify_pulse(
    chdl: *mut ham_condition_t,
    aname: *const c_char,
    nd: c_int,
    topid: c_int,
    chid: c_int,
    pulsecode: c_int,
    value: c_int,
    flags: c_uint,
) -> *mut ham_action_t {
    if let Err(e) = local(nd) {
        return fail_ptr(e);
    }
    // SAFETY: the caller's pointers, passed on.
    boxed(unsafe {
        add_action(
            chdl,
            aname,
            pulse_table(chid, pulsecode, value),
            flags,
            None,
        )
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_notify_pulse_node(
    chdl: *mut ham_condition_t,
    aname: *const c_char,
    nodename: *const c_char,
    topid: c_int,
    chid: c_int,
    pulsecode: c_int,
    value: c_int,
    flags: c_uint,
) -> *mut ham_action_t {
    // SAFETY: the caller's pointers, passed on.
    on_node(
        // SAFETY: the caller's node name (NULL or a string), passed on.
        unsafe { local_name(nodename) },
        || unsafe {
            ham_action_notify_pulse(
                chdl,
                aname,
                ND_LOCAL_NODE,
                topid,
                chid,
                pulsecode,
                value,
                flags,
            )
        },
        fail_ptr,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_heartbeat_healthy(
    chdl: *mut ham_condition_t,
    aname: *const c_char,
    flags: c_uint,
) -> *mut ham_action_t {
    let mut t = Map::new();
    t.insert("do".into(), json!("heartbeat-healthy"));
    // SAFETY: the caller's pointers, passed on.
    boxed(unsafe { add_action(chdl, aname, t, flags, None) })
}

/// Writes `msg` to ham's log and the process log (`attachprefix` and `verbosity` are
/// accepted: ham has one log).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_log(
    chdl: *mut ham_condition_t,
    aname: *const c_char,
    msg: *const c_char,
    attachprefix: c_uint,
    verbosity: c_int,
    flags: c_uint,
) -> *mut ham_action_t {
    // SAFETY: as `arg`; then the caller's pointers, passed on.
    boxed(
        log_table(unsafe { arg(msg) })
            .and_then(|t| unsafe { add_action(chdl, aname, t, flags, None) }),
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_remove(ahdl: *mut ham_action_t, flags: c_uint) -> c_int {
    // SAFETY: as `handle`.
    let Some(h) = (unsafe { handle(ahdl) }) else {
        return fail_int(libc::EINVAL);
    };
    int_result(
        define(Change::Remove {
            entity: h.entity.clone(),
            condition: Some(h.condition.clone()),
            action: Some(h.action.clone()),
            fail: None,
        })
        .map(|_| ()),
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_handle(
    nd: c_int,
    ename: *const c_char,
    cname: *const c_char,
    aname: *const c_char,
    flags: c_uint,
) -> *mut ham_action_t {
    if let Err(e) = local(nd) {
        return fail_ptr(e);
    }
    // SAFETY: as `arg`.
    let (Some(entity), Some(condition), Some(action)) =
        (unsafe { arg(ename) }, unsafe { arg(cname) }, unsafe {
            arg(aname)
        })
    else {
        return fail_ptr(libc::EINVAL);
    };
    match lookup(&entity, Some(&condition), Some(&action)) {
        Ok(()) => Box::into_raw(Box::new(ham_action_t {
            entity,
            condition,
            action,
        })),
        Err(e) => fail_ptr(e),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_handle_node(
    nodename: *const c_char,
    ename: *const c_char,
    cname: *const c_char,
    aname: *const c_char,
    flags: c_uint,
) -> *mut ham_action_t {
    // SAFETY: the caller's pointers, passed on.
    on_node(
        // SAFETY: the caller's node name (NULL or a string), passed on.
        unsafe { local_name(nodename) },
        || unsafe { ham_action_handle(ND_LOCAL_NODE, ename, cname, aname, flags) },
        fail_ptr,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_handle_free(ahdl: *mut ham_action_t) -> c_int {
    // SAFETY: the caller's handle, passed on.
    unsafe { free_handle(ahdl) }
}

// -- action-fail lists -------------------------------------------------------------------

unsafe fn add_fail(
    ahdl: *mut ham_action_t,
    aname: *const c_char,
    t: Result<Map<String, Value>, c_int>,
) -> c_int {
    // SAFETY: as `handle`.
    let Some(h) = (unsafe { handle(ahdl) }) else {
        return fail_int(libc::EINVAL);
    };
    let c = ham_condition_t {
        entity: h.entity.clone(),
        condition: h.condition.clone(),
        ..Default::default()
    };
    let cp = &c as *const ham_condition_t as *mut ham_condition_t;
    // SAFETY: `cp` points to `c`, alive for this call; the name is the caller's.
    int_result(
        t.and_then(|t| unsafe { add_action(cp, aname, t, 0, Some(h.action.clone())) })
            .map(|_| ()),
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_fail_execute(
    ahdl: *mut ham_action_t,
    aname: *const c_char,
    path: *const c_char,
    flags: c_uint,
) -> c_int {
    // SAFETY: as `arg`; then the caller's pointers, passed on.
    unsafe { add_fail(ahdl, aname, exec_table("execute", arg(path))) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_fail_waitfor(
    ahdl: *mut ham_action_t,
    aname: *const c_char,
    path: *const c_char,
    delay: c_int,
    flags: c_uint,
) -> c_int {
    // SAFETY: as `arg`; then the caller's pointers, passed on.
    unsafe { add_fail(ahdl, aname, waitfor_table(opt_arg(path), delay)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_fail_notify_signal(
    ahdl: *mut ham_action_t,
    aname: *const c_char,
    nd: c_int,
    topid: libc::pid_t,
    signum: c_int,
    code: c_int,
    value: c_int,
    flags: c_uint,
) -> c_int {
    if let Err(e) = local(nd) {
        return fail_int(e);
    }
    // SAFETY: the caller's pointers, passed on.
    unsafe { add_fail(ahdl, aname, signal_table(topid, signum, value)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_fail_notify_signal_node(
    ahdl: *mut ham_action_t,
    aname: *const c_char,
    nodename: *const c_char,
    topid: libc::pid_t,
    signum: c_int,
    code: c_int,
    value: c_int,
    flags: c_uint,
) -> c_int {
    // SAFETY: the caller's pointers, passed on.
    on_node(
        // SAFETY: the caller's node name (NULL or a string), passed on.
        unsafe { local_name(nodename) },
        || unsafe {
            ham_action_fail_notify_signal(
                ahdl,
                aname,
                ND_LOCAL_NODE,
                topid,
                signum,
                code,
                value,
                flags,
            )
        },
        fail_int,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_fail_notify_pulse(
    ahdl: *mut ham_action_t,
    aname: *const c_char,
    nd: c_int,
    topid: c_int,
    chid: c_int,
    pulsecode: c_int,
    value: c_int,
    flags: c_uint,
) -> c_int {
    if let Err(e) = local(nd) {
        return fail_int(e);
    }
    // SAFETY: the caller's pointers, passed on.
    unsafe { add_fail(ahdl, aname, Ok(pulse_table(chid, pulsecode, value))) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_fail_notify_pulse_node(
    ahdl: *mut ham_action_t,
    aname: *const c_char,
    nodename: *const c_char,
    topid: c_int,
    chid: c_int,
    pulsecode: c_int,
    value: c_int,
    flags: c_uint,
) -> c_int {
    // SAFETY: the caller's pointers, passed on.
    on_node(
        // SAFETY: the caller's node name (NULL or a string), passed on.
        unsafe { local_name(nodename) },
        || unsafe {
            ham_action_fail_notify_pulse(
                ahdl,
                aname,
                ND_LOCAL_NODE,
                topid,
                chid,
                pulsecode,
                value,
                flags,
            )
        },
        fail_int,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_fail_log(
    ahdl: *mut ham_action_t,
    aname: *const c_char,
    msg: *const c_char,
    attachprefix: c_uint,
    verbosity: c_int,
    flags: c_uint,
) -> c_int {
    // SAFETY: as `arg`; then the caller's pointers, passed on.
    unsafe { add_fail(ahdl, aname, log_table(arg(msg))) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_fail_remove(
    ahdl: *mut ham_action_t,
    aname: *const c_char,
    flags: c_uint,
) -> c_int {
    // SAFETY: as `handle` and `arg`.
    let (Some(h), Some(name)) = (unsafe { handle(ahdl) }, unsafe { arg(aname) }) else {
        return fail_int(libc::EINVAL);
    };
    int_result(
        define(Change::Remove {
            entity: h.entity.clone(),
            condition: Some(h.condition.clone()),
            action: Some(h.action.clone()),
            fail: Some(name),
        })
        .map(|_| ()),
    )
}

// -- heartbeats, detectors, control, stop -----------------------------------------------

/// "I am alive", for every entity this process attached itself to (one atomic store
/// each). Always succeeds, as in QNX.
#[unsafe(no_mangle)]
pub extern "C" fn ham_heartbeat() -> c_int {
    let hbs = HEARTBEATS.lock().unwrap_or_else(|p| p.into_inner());
    for (_, hb) in hbs.iter() {
        hb.beat();
    }
    0
}

/// Reports that the entity went to `tostate` (from the last state this process reported,
/// `CONDSTATEANY` at first).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_entity_condition_state(
    ehdl: *mut ham_entity_t,
    tostate: c_uint,
    flags: c_uint,
) -> c_int {
    // SAFETY: as `handle`.
    let Some(h) = (unsafe { handle(ehdl) }) else {
        return fail_int(libc::EINVAL);
    };
    let from = {
        let mut st = STATE.lock().unwrap_or_else(|p| p.into_inner());
        st.states
            .insert(h.entity.clone(), tostate)
            .unwrap_or(CONDSTATEANY)
    };
    int_result(with_client(|c| c.state(&h.entity, from, tostate)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_entity_condition_raise(
    ehdl: *mut ham_entity_t,
    rtype: c_uint,
    rclass: c_uint,
    severity: c_uint,
    flags: c_uint,
) -> c_int {
    // SAFETY: as `handle`.
    let Some(h) = (unsafe { handle(ehdl) }) else {
        return fail_int(libc::EINVAL);
    };
    int_result(with_client(|c| {
        c.raise_typed(&h.entity, rtype, rclass, severity)
    }))
}

fn control(
    entity: String,
    condition: Option<String>,
    action: Option<String>,
    command: c_int,
    flags: c_uint,
) -> c_int {
    let command = match command {
        HENABLE => ControlCommand::Enable,
        HDISABLE => ControlCommand::Disable,
        HADDFLAGS => ControlCommand::AddFlags,
        HREMOVEFLAGS => ControlCommand::RemoveFlags,
        HSETFLAGS => ControlCommand::SetFlags,
        HGETFLAGS => ControlCommand::GetFlags,
        _ => return fail_int(libc::EINVAL),
    };
    let get = command == ControlCommand::GetFlags;
    match define(Change::Control {
        entity,
        condition,
        action,
        command,
        flags,
    }) {
        Ok(f) if get => f as c_int,
        Ok(_) => 0,
        Err(e) => fail_int(e),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_entity_control(
    ehdl: *mut ham_entity_t,
    command: c_int,
    flags: c_uint,
) -> c_int {
    // SAFETY: as `handle`.
    match unsafe { handle(ehdl) } {
        Some(h) => control(h.entity.clone(), None, None, command, flags),
        None => fail_int(libc::EINVAL),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_condition_control(
    chdl: *mut ham_condition_t,
    command: c_int,
    flags: c_uint,
) -> c_int {
    // SAFETY: as `handle`.
    match unsafe { handle(chdl) } {
        Some(h) => control(
            h.entity.clone(),
            Some(h.condition.clone()),
            None,
            command,
            flags,
        ),
        None => fail_int(libc::EINVAL),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_action_control(
    ahdl: *mut ham_action_t,
    command: c_int,
    flags: c_uint,
) -> c_int {
    // SAFETY: as `handle`.
    match unsafe { handle(ahdl) } {
        Some(h) => control(
            h.entity.clone(),
            Some(h.condition.clone()),
            Some(h.action.clone()),
            command,
            flags,
        ),
        None => fail_int(libc::EINVAL),
    }
}

/// Stops ham (every entity, then the HAM and its Guardian): root or ham's user only.
#[unsafe(no_mangle)]
pub extern "C" fn ham_stop() -> c_int {
    int_result(with_client(|c| c.shutdown()))
}

#[unsafe(no_mangle)]
pub extern "C" fn ham_stop_nd(nd: c_int) -> c_int {
    match local(nd) {
        Ok(()) => ham_stop(),
        Err(e) => fail_int(e),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_stop_node(nodename: *const c_char) -> c_int {
    on_node(
        // SAFETY: the caller's node name (NULL or a string), passed on.
        unsafe { local_name(nodename) },
        || ham_stop(),
        fail_int,
    )
}

/// ham's log verbosity (0 quiet, 1 normal, 2 and up also every request): `VERBOSE_GET`
/// returns it, `VERBOSE_SET` sets it to `value`, `VERBOSE_SET_INCR` / `_DECR` move it by
/// `value` (at least 1); returns the level now in force. Changing it needs root or ham's user.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_verbose(nodename: *const c_char, op: c_int, value: c_int) -> c_int {
    use ham_core::protocol::VerboseOp;
    // SAFETY: the caller's node name (NULL or a string), passed on.
    if let Err(e) = unsafe { local_name(nodename) } {
        return fail_int(e);
    }
    let op = match op {
        VERBOSE_GET => VerboseOp::Get,
        VERBOSE_SET => VerboseOp::Set,
        VERBOSE_SET_INCR => VerboseOp::Incr,
        VERBOSE_SET_DECR => VerboseOp::Decr,
        _ => return fail_int(libc::EINVAL),
    };
    match with_client(|c| c.verbose(op, value)) {
        Ok(level) => level as c_int,
        Err(e) => fail_int(e),
    }
}

/// A pulse, as `ham_pulse_receive` gives it: what `ham_action_notify_pulse` sent (QNX's
/// `_pulse` code and value) and about what (the entity, its pid, the condition).
#[repr(C)]
pub struct ham_pulse_t {
    /// The channel (`chid`) it was sent to.
    pub chid: c_int,
    /// The action's `pulsecode`.
    pub code: c_int,
    /// The action's `value`.
    pub value: c_int,
    /// The entity's pid when its condition fired (0 if it had none).
    pub pid: libc::pid_t,
    /// The entity's name, NUL-terminated.
    pub entity: [c_char; 64],
    /// The condition that fired (`death`, `heartbeat-missed-high`, …), NUL-terminated.
    pub condition: [c_char; 64],
}

/// Opens pulse channel `chid`: returns a descriptor that polls readable (`poll`, `select`,
/// `epoll`) when a pulse sent to `chid` by a `ham_action_notify_pulse` action can be read
/// with `ham_pulse_receive`. Linux has no QNX channels; this is how a C client gets them.
/// The descriptor keeps its number across a HAM takeover. `-1` and `errno` on failure.
#[unsafe(no_mangle)]
pub extern "C" fn ham_pulse_open(chid: c_int, flags: c_uint) -> c_int {
    use std::os::fd::{AsFd, AsRawFd};
    match with_client(|c| c.subscribe(&format!("pulse:{chid}"))) {
        Ok(sub) => {
            let fd = sub.as_fd().as_raw_fd();
            PULSES.lock().unwrap_or_else(|p| p.into_inner()).push(sub);
            fd
        }
        Err(e) => fail_int(e),
    }
}

/// Reads one pulse from a descriptor `ham_pulse_open` gave, without waiting: 0 and
/// `*pulse` filled in; `-1` with `EAGAIN` if none has come (poll the descriptor), `EBADF`
/// for a descriptor that is not an open pulse channel, `EINVAL` for a NULL `pulse`. After a
/// takeover the descriptor reads as ended once: this call then reconnects (waiting up to
/// 10 s for the new HAM) and returns `EAGAIN`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_pulse_receive(
    fd: c_int,
    pulse: *mut ham_pulse_t,
    flags: c_uint,
) -> c_int {
    use std::os::fd::{AsFd, AsRawFd};
    if pulse.is_null() {
        return fail_int(libc::EINVAL);
    }
    let mut subs = PULSES.lock().unwrap_or_else(|p| p.into_inner());
    let Some(sub) = subs.iter_mut().find(|s| s.as_fd().as_raw_fd() == fd) else {
        return fail_int(libc::EBADF);
    };
    let n = match sub.try_recv() {
        Ok(Some(n)) => n,
        Ok(None) => return fail_int(libc::EAGAIN),
        Err(e) => return fail_int(errno_of(&e)),
    };
    let chid = sub
        .topic()
        .strip_prefix("pulse:")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut out = ham_pulse_t {
        chid,
        code: n.code.unwrap_or(0),
        value: n.value.unwrap_or(0),
        pid: n.pid,
        entity: [0; 64],
        condition: [0; 64],
    };
    for (dst, src) in [
        (&mut out.entity, &n.entity),
        (&mut out.condition, &n.condition),
    ] {
        for (d, b) in dst.iter_mut().zip(src.bytes().take(63)) {
            *d = b as c_char;
        }
    }
    // SAFETY: `pulse` is not NULL and points to a `ham_pulse_t` the caller owns.
    unsafe { pulse.write(out) };
    0
}

/// Closes a pulse channel `ham_pulse_open` opened (and its descriptor).
#[unsafe(no_mangle)]
pub extern "C" fn ham_pulse_close(fd: c_int) -> c_int {
    use std::os::fd::{AsFd, AsRawFd};
    let mut subs = PULSES.lock().unwrap_or_else(|p| p.into_inner());
    match subs.iter().position(|s| s.as_fd().as_raw_fd() == fd) {
        Some(k) => {
            drop(subs.swap_remove(k));
            0
        }
        None => fail_int(libc::EBADF),
    }
}

// ---------------------------------------------------------------------------------------------
// The checkpoint store (ham extensions, NX-OS's PSS; not in QNX)
// ---------------------------------------------------------------------------------------------

/// `ham_pss_put` flag: other entities may read the key (through ham).
pub const HAM_PSS_SHARED: c_uint = 1;
/// `ham_pss_put` flag: the key survives a reboot; the put returns once it is on disk.
pub const HAM_PSS_DURABLE: c_uint = 2;

/// Runs `f` with this process's entity's store (`HAM_ENTITY`), opened on first use.
fn with_pss<T>(f: impl FnOnce(&crate::Pss) -> Result<T, Error>) -> Result<T, c_int> {
    let mut pss = PSS.lock().unwrap_or_else(|p| p.into_inner());
    if pss.is_none() {
        *pss = Some(with_client(|c| c.pss_own())?);
    }
    f(pss.as_ref().expect("opened above")).map_err(|e| errno_of(&e))
}

/// Puts the `len` bytes at `value` under `key` in the checkpoint store of this process's
/// entity (`HAM_ENTITY`): all or nothing, whatever kills the process; no system call unless
/// `HAM_PSS_DURABLE`. `flags`: `HAM_PSS_SHARED`, `HAM_PSS_DURABLE`. 0, or `-1` and `errno`:
/// `EINVAL` (a NULL or bad key, a value larger than `pss_max.value`), `ENOSPC` (over
/// `pss_max.keys` or `.bytes`), `EPERM` (not an entity's process), `EBUSY` (another process
/// of the entity holds the store for over 2 s).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_pss_put(
    key: *const c_char,
    value: *const std::ffi::c_void,
    len: usize,
    flags: c_uint,
) -> c_int {
    // SAFETY: as `arg`.
    let Some(key) = (unsafe { arg(key) }) else {
        return fail_int(libc::EINVAL);
    };
    if value.is_null() && len > 0 {
        return fail_int(libc::EINVAL);
    }
    let bytes: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: the caller passes `len` readable bytes at `value` (checked non-NULL), that
        // stay valid for this call.
        unsafe { std::slice::from_raw_parts(value.cast::<u8>(), len) }
    };
    let scope = if flags & HAM_PSS_SHARED != 0 {
        crate::Scope::Shared
    } else {
        crate::Scope::Private
    };
    let durability = if flags & HAM_PSS_DURABLE != 0 {
        crate::Durability::Durable
    } else {
        crate::Durability::Volatile
    };
    int_result(with_pss(|p| p.put(&key, bytes, scope, durability)))
}

/// Copies the value of `key` in this process's entity's store into `buf` (at most `len`
/// bytes) and returns the value's length, which is more than `len` when `buf` was too
/// small (call again with a larger one). `-1` and `errno`: `ENOENT` (no such key),
/// `EINVAL`, `EPERM`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_pss_get(
    key: *const c_char,
    buf: *mut std::ffi::c_void,
    len: usize,
) -> isize {
    // SAFETY: as `arg`.
    let Some(key) = (unsafe { arg(key) }) else {
        return fail_int(libc::EINVAL) as isize;
    };
    match with_pss(|p| p.get(&key)) {
        Ok(Some(v)) => {
            // SAFETY: the caller passes `len` writable bytes at `buf` (or len 0).
            unsafe { copy_out(&v, buf, len) }
        }
        Ok(None) => fail_int(libc::ENOENT) as isize,
        Err(e) => fail_int(e) as isize,
    }
}

/// As `ham_pss_get`, for entity `ename`'s key, read through ham: another entity's shared
/// key (`EACCES` for a private one), or any key of this process's own entity.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_pss_get_entity(
    ename: *const c_char,
    key: *const c_char,
    buf: *mut std::ffi::c_void,
    len: usize,
) -> isize {
    // SAFETY: as `arg`, for both.
    let (Some(entity), Some(key)) = (unsafe { arg(ename) }, unsafe { arg(key) }) else {
        return fail_int(libc::EINVAL) as isize;
    };
    match with_client(|c| c.pss_read(&entity, Some(&key))) {
        Ok(items) => match items.into_iter().next() {
            // SAFETY: the caller passes `len` writable bytes at `buf` (or len 0).
            Some(it) => unsafe { copy_out(&it.value, buf, len) },
            None => fail_int(libc::ENOENT) as isize,
        },
        Err(e) => fail_int(e) as isize,
    }
}

/// Lists the keys of this process's entity's store into `buf` (at most `len` bytes): each
/// key followed by a NUL, in byte order. Returns the length the whole list takes, which is
/// more than `len` when `buf` was too small (call again with a larger one); 0 for an empty
/// store. `-1` and `errno`: `EPERM` (not an entity's process), `EINVAL`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_pss_keys(buf: *mut c_char, len: usize) -> isize {
    match with_pss(|p| Ok(p.keys())) {
        Ok(keys) => {
            let mut names: Vec<String> = keys.into_iter().map(|(k, _, _)| k).collect();
            names.sort();
            let mut list = Vec::new();
            for k in names {
                list.extend_from_slice(k.as_bytes());
                list.push(0);
            }
            // SAFETY: the caller passes `len` writable bytes at `buf` (or len 0).
            unsafe { copy_out(&list, buf.cast(), len) }
        }
        Err(e) => fail_int(e) as isize,
    }
}

/// Deletes `key` from this process's entity's store: 0, or `-1` and `errno` (`ENOENT`
/// when it was not there).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_pss_delete(key: *const c_char) -> c_int {
    // SAFETY: as `arg`.
    let Some(key) = (unsafe { arg(key) }) else {
        return fail_int(libc::EINVAL);
    };
    match with_pss(|p| p.delete(&key)) {
        Ok(true) => 0,
        Ok(false) => fail_int(libc::ENOENT),
        Err(e) => fail_int(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Message queues (ham extensions, NX-OS's MTS; not in QNX)
// ---------------------------------------------------------------------------------------------

/// Sends the `len` bytes at `buf` to entity `ename`'s queue (from the process of an entity in
/// its `accept_from`, or root). Returns ham's id for the message (> 0), or `-1` and `errno`:
/// `ENOSPC` (the queue is full: never blocks), `EMSGSIZE`, `EPERM`, `ENOENT`, `EINVAL`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_mts_send(
    ename: *const c_char,
    buf: *const std::ffi::c_void,
    len: usize,
) -> i64 {
    // SAFETY: as `arg`.
    let Some(to) = (unsafe { arg(ename) }) else {
        return i64::from(fail_int(libc::EINVAL));
    };
    if buf.is_null() && len > 0 {
        return i64::from(fail_int(libc::EINVAL));
    }
    let bytes: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: the caller passes `len` readable bytes at `buf` (checked non-NULL).
        unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }
    };
    match with_client(|c| c.send(&to, bytes)) {
        Ok(id) => i64::try_from(id).unwrap_or(i64::MAX),
        Err(e) => i64::from(fail_int(e)),
    }
}

/// Receives the oldest message of entity `ename`'s queue (this process must be the entity's),
/// waiting up to `wait_ms` for one: copies it into `buf` (at most `len` bytes), sets `*id`
/// and `*deliveries` (more than 1: its receiver died before acknowledging it), and returns
/// its length. The same message comes until `ham_mts_ack`. `-1` and `errno`: `EAGAIN` (none
/// came), `EPERM`, `ENOENT`, `EINVAL`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_mts_recv(
    ename: *const c_char,
    buf: *mut std::ffi::c_void,
    len: usize,
    wait_ms: c_uint,
    id: *mut u64,
    deliveries: *mut c_uint,
) -> isize {
    // SAFETY: as `arg`.
    let Some(entity) = (unsafe { arg(ename) }) else {
        return fail_int(libc::EINVAL) as isize;
    };
    let wait = Duration::from_millis(u64::from(wait_ms));
    match with_client(|c| c.recv(&entity, wait)) {
        Ok(Some(m)) => {
            if !id.is_null() {
                // SAFETY: a non-NULL `id` points to a writable u64 (the caller's contract).
                unsafe { *id = m.id };
            }
            if !deliveries.is_null() {
                // SAFETY: a non-NULL `deliveries` points to a writable unsigned int.
                unsafe { *deliveries = m.deliveries };
            }
            // SAFETY: the caller passes `len` writable bytes at `buf` (or len 0).
            unsafe { copy_out(&m.data, buf, len) }
        }
        Ok(None) => fail_int(libc::EAGAIN) as isize,
        Err(e) => fail_int(e) as isize,
    }
}

/// Message `id` of entity `ename`'s queue is handled: it leaves the queue. 0, or `-1` and
/// `errno` (`ENOENT`: no such message queued).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ham_mts_ack(ename: *const c_char, id: u64) -> c_int {
    // SAFETY: as `arg`.
    let Some(entity) = (unsafe { arg(ename) }) else {
        return fail_int(libc::EINVAL);
    };
    int_result(with_client(|c| c.ack(&entity, id)))
}

/// The value's bytes into `buf` (at most `len`); the value's length.
///
/// # Safety
/// `buf` is NULL with `len` 0, or points to `len` writable bytes.
unsafe fn copy_out(v: &[u8], buf: *mut std::ffi::c_void, len: usize) -> isize {
    let n = v.len().min(len);
    if n > 0 {
        if buf.is_null() {
            return fail_int(libc::EINVAL) as isize;
        }
        // SAFETY: `buf` has `len` ≥ `n` writable bytes (the contract above), and does not
        // overlap `v` (ours).
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), buf.cast::<u8>(), n) };
    }
    isize::try_from(v.len()).unwrap_or(isize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qnx_command_lines_split_like_a_shell() {
        let split = |l| split_line(l).expect("balanced");
        assert_eq!(split("/bin/prog -a  b"), ["/bin/prog", "-a", "b"]);
        assert_eq!(
            split(r#"/bin/sh -c "echo hi there" 'x y' a\ b 'a\b'"#),
            ["/bin/sh", "-c", "echo hi there", "x y", "a b", "a\\b"]
        );
        assert_eq!(split("  "), Vec::<String>::new());
        assert_eq!(split(r#""""#), [""]);
        assert_eq!(split_line(r#"/bin/prog "unterminated"#), None);
        assert_eq!(split_line(r#"/bin/prog \"#), None);
    }

    #[test]
    fn null_arguments_fail_with_einval_and_no_connection_is_made() {
        // SAFETY: NULL pointers are what is tested; the functions must not read them.
        unsafe {
            assert!(ham_attach(std::ptr::null(), 0, 0, std::ptr::null(), 0).is_null());
            assert_eq!(*libc::__errno_location(), libc::EINVAL);
            assert_eq!(ham_detach(std::ptr::null_mut(), 0), -1);
            assert_eq!(*libc::__errno_location(), libc::EINVAL);
            assert!(ham_condition(std::ptr::null_mut(), CONDDEATH, std::ptr::null(), 0).is_null());
            assert_eq!(ham_entity_handle_free(std::ptr::null_mut()), -1);
            assert!(ham_attach(c"x".as_ptr(), 5, 1, std::ptr::null(), 0).is_null());
            assert_eq!(*libc::__errno_location(), libc::EOPNOTSUPP);
        }
        assert_eq!(ham_heartbeat(), 0);
    }
}
