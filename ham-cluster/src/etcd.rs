//! A blocking client of etcd v3's JSON gateway (`/v3/...`, etcd 3.4 and later): leases, puts,
//! guarded transactions, prefix reads and a prefix watch. Keys and values travel in base64,
//! 64-bit numbers as strings; both are hidden here.
//!
//! Endpoints are tried in order, the box's own member first: a request that cannot reach
//! one (refused, timed out) goes to the next, and the first that answered is tried first
//! next time. An answer with an error (no leader, a lease not found) is an answer: it is
//! not tried elsewhere.

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// What went wrong talking to etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// No endpoint could be reached (each one's error, in order).
    Unreachable(String),
    /// An endpoint answered with an error (etcd's message), e.g. no leader.
    Answer(String),
    /// The lease is gone (expired or revoked).
    LeaseGone,
    /// An answer this client does not understand.
    Bad(String),
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Unreachable(why) => write!(f, "no etcd endpoint answered: {why}"),
            EtcdError::Answer(why) => write!(f, "etcd: {why}"),
            EtcdError::LeaseGone => write!(f, "etcd: the lease expired or was revoked"),
            EtcdError::Bad(why) => write!(f, "etcd answered something unexpected: {why}"),
        }
    }
}

impl std::error::Error for EtcdError {}

/// A key and its value, with the revisions etcd keeps for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub lease: u64,
}

/// One change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    Delete { key: String, revision: u64 },
}

/// The client: endpoints (`http://host:port`) and the time each request may take.
pub struct Etcd {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    timeout: Duration,
    /// The endpoint that answered last.
    preferred: AtomicUsize,
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// The first key after every key that starts with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // the whole key space
}

/// A 64-bit number etcd sends as a string (or leaves out when it is 0).
fn num(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn kv_of(v: &Value) -> Result<Kv, EtcdError> {
    let key = v["key"]
        .as_str()
        .and_then(|k| B64.decode(k).ok())
        .ok_or_else(|| EtcdError::Bad(format!("a key-value without a key: {v}")))?;
    let value = match v["value"].as_str() {
        Some(s) => B64
            .decode(s)
            .map_err(|e| EtcdError::Bad(format!("a value not in base64: {e}")))?,
        None => Vec::new(),
    };
    Ok(Kv {
        key: String::from_utf8_lossy(&key).into_owned(),
        value,
        create_revision: num(&v["create_revision"]),
        mod_revision: num(&v["mod_revision"]),
        lease: num(&v["lease"]),
    })
}

/// An error etcd put in its answer (`{"error": "...", "code": N}`), if any.
fn answer_error(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    let msg = e
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| e.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| e.to_string());
    Some(msg)
}

impl Etcd {
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Etcd {
            endpoints,
            agent,
            timeout,
            preferred: AtomicUsize::new(0),
        }
    }

    /// The endpoints in the order to try now.
    fn order(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        (0..n).map(move |k| (first + k) % n)
    }

    /// POSTs `body` to `path` on the first endpoint that answers; its JSON answer.
    fn post(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let body = body.to_string();
        let mut failed = Vec::new();
        for i in self.order() {
            let url = format!("{}{path}", self.endpoints[i]);
            match self
                .agent
                .post(&url)
                .content_type("application/json")
                .send(&body)
            {
                Ok(mut r) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    let text = r
                        .body_mut()
                        .read_to_string()
                        .map_err(|e| EtcdError::Bad(format!("{url}: {e}")))?;
                    let v: Value = serde_json::from_str(&text)
                        .map_err(|e| EtcdError::Bad(format!("{url}: {e}: {text}")))?;
                    if let Some(why) = answer_error(&v) {
                        if why.contains("requested lease not found") {
                            return Err(EtcdError::LeaseGone);
                        }
                        return Err(EtcdError::Answer(why));
                    }
                    return Ok(v);
                }
                Err(e) => failed.push(format!(
                    "{}: {}",
                    self.endpoints[i],
                    Self::why(&e, self.timeout)
                )),
            }
        }
        Err(EtcdError::Unreachable(failed.join("; ")))
    }

    /// A failed request, as an operator reads it.
    fn why(e: &ureq::Error, within: Duration) -> String {
        match e {
            ureq::Error::Timeout(_) => format!("no answer within {} ms", within.as_millis()),
            other => other.to_string(),
        }
    }

    /// A new lease of `ttl_s` seconds: its id.
    pub fn grant(&self, ttl_s: u64) -> Result<u64, EtcdError> {
        let v = self.post("/v3/lease/grant", &json!({ "TTL": ttl_s.to_string() }))?;
        match num(&v["ID"]) {
            0 => Err(EtcdError::Bad(format!("a lease without an id: {v}"))),
            id => Ok(id),
        }
    }

    /// Renews `lease`: the TTL etcd gives it again.
    pub fn keepalive(&self, lease: u64) -> Result<u64, EtcdError> {
        let v = self.post("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        // The gateway streams the answer: `{"result": {...}}`.
        let r = v.get("result").unwrap_or(&v);
        match num(&r["TTL"]) {
            0 => Err(EtcdError::LeaseGone),
            ttl => Ok(ttl),
        }
    }

    /// Revokes `lease` (its keys go at once).
    pub fn revoke(&self, lease: u64) -> Result<(), EtcdError> {
        self.post("/v3/lease/revoke", &json!({ "ID": lease.to_string() }))
            .map(|_| ())
    }

    /// Puts `key` = `value`, attached to `lease` (0: none): the revision it made.
    pub fn put(&self, key: &str, value: &[u8], lease: u64) -> Result<u64, EtcdError> {
        let mut req = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        if lease != 0 {
            req["lease"] = json!(lease.to_string());
        }
        let v = self.post("/v3/kv/put", &req)?;
        Ok(num(&v["header"]["revision"]))
    }

    /// Puts `key` only if it does not exist: `Some(revision)` (its create revision) if this
    /// call made it, `None` if it was there.
    pub fn create(&self, key: &str, value: &[u8], lease: u64) -> Result<Option<u64>, EtcdError> {
        self.create_with(key, value, lease, None)
    }

    /// [`create`](Self::create), putting `also` (a key, no lease) in the same transaction.
    fn create_with(
        &self,
        key: &str,
        value: &[u8],
        lease: u64,
        also: Option<&str>,
    ) -> Result<Option<u64>, EtcdError> {
        let mut put = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        if lease != 0 {
            put["lease"] = json!(lease.to_string());
        }
        let mut ops = vec![json!({ "request_put": put })];
        if let Some(k) = also {
            ops.push(json!({ "request_put": { "key": b64(k.as_bytes()), "value": b64(value) } }));
        }
        let v = self.post(
            "/v3/kv/txn",
            &json!({
                "compare": [{ "key": b64(key.as_bytes()), "target": "CREATE",
                              "result": "EQUAL", "create_revision": "0" }],
                "success": ops,
            }),
        )?;
        Ok(if v["succeeded"].as_bool() == Some(true) {
            Some(num(&v["header"]["revision"]))
        } else {
            None
        })
    }

    /// [`create`](Self::create), and in the same transaction `marker` (no lease): the mark
    /// that the key is held, which only [`release`](Self::release) takes away. A key that
    /// is gone while its mark is there was not handed over: its lease ended.
    pub fn claim(
        &self,
        key: &str,
        value: &[u8],
        lease: u64,
        marker: &str,
    ) -> Result<Option<u64>, EtcdError> {
        self.create_with(key, value, lease, Some(marker))
    }

    /// Hands `key` over: deletes it and its `marker` if its create revision is
    /// `create_revision` (it is still the one this node claimed). Whether it did.
    pub fn release(
        &self,
        key: &str,
        create_revision: u64,
        marker: &str,
    ) -> Result<bool, EtcdError> {
        self.txn_guarded(key, create_revision, &[], &[key, marker])
    }

    /// Deletes `key` if its create revision is `create_revision` (it is still the one this
    /// node made): whether it did.
    pub fn delete_if_created_at(&self, key: &str, create_revision: u64) -> Result<bool, EtcdError> {
        let v = self.post(
            "/v3/kv/txn",
            &json!({
                "compare": [{ "key": b64(key.as_bytes()), "target": "CREATE",
                              "result": "EQUAL",
                              "create_revision": create_revision.to_string() }],
                "success": [{ "request_delete_range": { "key": b64(key.as_bytes()) } }],
            }),
        )?;
        Ok(v["succeeded"].as_bool() == Some(true))
    }

    /// A transaction that runs only while `guard`'s create revision is `create_revision`
    /// (it is still the key this node made, e.g. the master's): puts, then deletes.
    /// Whether it ran.
    pub fn txn_guarded(
        &self,
        guard: &str,
        create_revision: u64,
        puts: &[(&str, &[u8])],
        deletes: &[&str],
    ) -> Result<bool, EtcdError> {
        let mut ops: Vec<Value> = puts
            .iter()
            .map(|(k, v)| json!({ "request_put": { "key": b64(k.as_bytes()), "value": b64(v) } }))
            .collect();
        ops.extend(
            deletes
                .iter()
                .map(|k| json!({ "request_delete_range": { "key": b64(k.as_bytes()) } })),
        );
        let v = self.post(
            "/v3/kv/txn",
            &json!({
                "compare": [{ "key": b64(guard.as_bytes()), "target": "CREATE",
                              "result": "EQUAL",
                              "create_revision": create_revision.to_string() }],
                "success": ops,
            }),
        )?;
        Ok(v["succeeded"].as_bool() == Some(true))
    }

    /// One key (a linearizable read), if it exists.
    pub fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let v = self.post("/v3/kv/range", &json!({ "key": b64(key.as_bytes()) }))?;
        match v["kvs"].as_array().and_then(|a| a.first()) {
            Some(kv) => kv_of(kv).map(Some),
            None => Ok(None),
        }
    }

    /// Every key under `prefix` (a linearizable read), and the revision it was read at.
    pub fn range_prefix(&self, prefix: &str) -> Result<(u64, Vec<Kv>), EtcdError> {
        let v = self.post(
            "/v3/kv/range",
            &json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix)) }),
        )?;
        let rev = num(&v["header"]["revision"]);
        let kvs = match v["kvs"].as_array() {
            Some(a) => a.iter().map(kv_of).collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok((rev, kvs))
    }

    /// Watches `prefix` from revision `from`, for at most `last` (then the stream ends and
    /// the caller reads the whole prefix again: a gap or a compaction costs one read).
    /// Calls `each` with every batch of events; stops early when it returns false.
    pub fn watch_prefix(
        &self,
        prefix: &str,
        from: u64,
        last: Duration,
        mut each: impl FnMut(Vec<Event>) -> bool,
    ) -> Result<(), EtcdError> {
        let req = json!({ "create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": from.to_string(),
        }})
        .to_string();
        let mut failed = Vec::new();
        for i in self.order() {
            let url = format!("{}/v3/watch", self.endpoints[i]);
            let sent = self
                .agent
                .post(&url)
                .config()
                .timeout_global(Some(last))
                .build()
                .content_type("application/json")
                .send(&req);
            let mut r = match sent {
                Ok(r) => r,
                Err(e) => {
                    failed.push(format!("{}: {}", self.endpoints[i], Self::why(&e, last)));
                    continue;
                }
            };
            self.preferred.store(i, Ordering::Relaxed);
            let reader = r.body_mut().as_reader();
            return read_watch(BufReader::new(reader), &mut each);
        }
        Err(EtcdError::Unreachable(failed.join("; ")))
    }

    /// The time each request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Reads a watch's lines (`{"result": {...}}` each) until the stream ends or `each` says stop.
/// A stream cut by its time limit ends without an error.
fn read_watch(
    mut r: BufReader<impl Read>,
    each: &mut impl FnMut(Vec<Event>) -> bool,
) -> Result<(), EtcdError> {
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // The time limit (or the endpoint going away) ends a watch: read again.
            Err(_) => return Ok(()),
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(text)
            .map_err(|e| EtcdError::Bad(format!("watch: {e}: {text}")))?;
        if let Some(why) = answer_error(&v) {
            return Err(EtcdError::Answer(why));
        }
        let res = v.get("result").unwrap_or(&v);
        if res["canceled"].as_bool() == Some(true) {
            let why = res["cancel_reason"].as_str().unwrap_or("canceled");
            return Err(EtcdError::Answer(format!("watch canceled: {why}")));
        }
        let Some(evs) = res["events"].as_array() else {
            continue; // the created notice, or a progress notice
        };
        let mut batch = Vec::with_capacity(evs.len());
        for e in evs {
            let kv = kv_of(&e["kv"])?;
            if e["type"].as_str() == Some("DELETE") {
                batch.push(Event::Delete {
                    key: kv.key,
                    revision: kv.mod_revision,
                });
            } else {
                batch.push(Event::Put(kv));
            }
        }
        if !each(batch) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_after_its_last_key() {
        assert_eq!(prefix_end("/ham/c/"), b"/ham/c0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn watch_lines_become_events() {
        let key = b64(b"/ham/c/members/a");
        let val = b64(b"{}");
        let text = format!(
            "{{\"result\":{{\"header\":{{\"revision\":\"5\"}},\"created\":true}}}}\n\
             {{\"result\":{{\"events\":[{{\"kv\":{{\"key\":\"{key}\",\"value\":\"{val}\",\
             \"create_revision\":\"4\",\"mod_revision\":\"6\",\"lease\":\"77\"}}}},\
             {{\"type\":\"DELETE\",\"kv\":{{\"key\":\"{key}\",\"mod_revision\":\"7\"}}}}]}}}}\n"
        );
        let mut seen = Vec::new();
        read_watch(BufReader::new(text.as_bytes()), &mut |b| {
            seen.extend(b);
            true
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                Event::Put(Kv {
                    key: "/ham/c/members/a".into(),
                    value: b"{}".to_vec(),
                    create_revision: 4,
                    mod_revision: 6,
                    lease: 77,
                }),
                Event::Delete {
                    key: "/ham/c/members/a".into(),
                    revision: 7
                }
            ]
        );
    }

    #[test]
    fn a_canceled_watch_is_an_error_naming_why() {
        let text = "{\"result\":{\"canceled\":true,\"cancel_reason\":\"mvcc: required revision has been compacted\"}}\n";
        let e = read_watch(BufReader::new(text.as_bytes()), &mut |_| true).unwrap_err();
        assert!(e.to_string().contains("compacted"), "{e}");
    }
}
