//! An in-process Kubernetes API server for tests: no cluster can run on these machines, so the
//! agent's kube-rs watchers are exercised against this instead.
//!
//! It speaks the real protocol to kube's unmodified client (plain HTTP on 127.0.0.1):
//!
//! * LIST of `/api/v1/namespaces`, `/api/v1/pods`, `/api/v1/services`,
//!   `/apis/networking.k8s.io/v1/networkpolicies` and
//!   `/apis/discovery.k8s.io/v1/endpointslices` (all but namespaces also under
//!   `.../namespaces/{ns}/...`), with `resourceVersion`,
//!   pagination (`limit` / `continue`, served from a snapshot like etcd does), and `410 Gone`
//!   for a continue token older than the last compaction;
//! * WATCH (`watch=true&resourceVersion=N`) as newline-delimited JSON `ADDED` / `MODIFIED` /
//!   `DELETED` / `BOOKMARK` events, `ERROR` events carrying a `Status` with code 410 when
//!   `N` is older than the compacted history, `timeoutSeconds`, and streaming lists
//!   (`sendInitialEvents=true`, ending with the `k8s.io/initial-events-end` bookmark);
//! * one cluster-wide, monotonically increasing resourceVersion; objects are serialised by
//!   k8s-openapi (the control API takes typed objects).
//!
//! Tests drive it through [`ApiServer`]: create/update/delete objects, [`ApiServer::expire`]
//! (compaction: open watches get a 410 and must relist), [`ApiServer::drop_connections`],
//! [`ApiServer::set_down`] (a network cut: connections are refused/reset) and
//! [`ApiServer::restart`] (all streams closed, watch history lost).
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

/// The resource kinds this server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Service,
    EndpointSlice,
}

impl Kind {
    fn from_kind(kind: &str) -> Option<Kind> {
        match kind {
            "Namespace" => Some(Kind::Namespace),
            "Pod" => Some(Kind::Pod),
            "NetworkPolicy" => Some(Kind::NetworkPolicy),
            "Service" => Some(Kind::Service),
            "EndpointSlice" => Some(Kind::EndpointSlice),
            _ => None,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service => "v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace)
    }

    /// The plural resource name in paths.
    fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
        }
    }

    const ALL: [Kind; 5] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Service,
        Kind::EndpointSlice,
    ];

    /// Parse a request path into (kind, namespace filter).
    fn route(path: &str) -> Option<(Kind, Option<String>)> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        // `/api/v1/...` for the core group, `/apis/{group}/v1/...` for the others.
        let (group, rest) = match parts.as_slice() {
            ["api", "v1", rest @ ..] => ("v1", rest),
            ["apis", group, "v1", rest @ ..] => (*group, rest),
            _ => return None,
        };
        let (ns, plural) = match rest {
            [plural] => (None, *plural),
            ["namespaces", ns, plural] => (Some(ns.to_string()), *plural),
            _ => return None,
        };
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.plural() == plural && k.api_version().trim_end_matches("/v1") == group)?;
        (kind.namespaced() || ns.is_none()).then_some((kind, ns))
    }
}

/// Watch event types of the wire protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change in the history (the watch cache).
#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    kind: Kind,
    namespace: Option<String>,
    ty: EventType,
    object: Arc<Value>,
}

/// What the broadcast channel carries to open watches.
#[derive(Clone, Debug)]
enum Signal {
    Event(Arc<Event>),
    /// Compaction: every open watch gets a 410 ERROR event and ends.
    Expire,
}

type Key = (Option<String>, String);

/// A LIST snapshot kept for `continue` tokens.
struct Snapshot {
    rv: u64,
    items: Arc<Vec<Arc<Value>>>,
}

struct State {
    rv: u64,
    /// Oldest resourceVersion a watch may start from; older ones get 410.
    oldest_rv: u64,
    objects: BTreeMap<Kind, BTreeMap<Key, Arc<Value>>>,
    history: Vec<Arc<Event>>,
    snapshots: HashMap<u64, Snapshot>,
    next_snapshot: u64,
    next_uid: u64,
}

struct Shared {
    state: Mutex<State>,
    signals: broadcast::Sender<Signal>,
    /// Bumped to close every open connection.
    kill: watch::Sender<u64>,
    down: AtomicBool,
    bookmark_interval_ms: AtomicU64,
    requests: AtomicU64,
    watches: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle to a running test API server; the server stops when the handle is dropped.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.kill.send_modify(|e| *e += 1);
    }
}

type Body = BoxBody<Bytes, Infallible>;

impl ApiServer {
    /// Start on 127.0.0.1 with a random port (needs a tokio runtime).
    pub async fn start() -> Result<ApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (signals, _) = broadcast::channel(1 << 16);
        let (kill, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1,
                oldest_rv: 1,
                objects: BTreeMap::new(),
                history: Vec::new(),
                snapshots: HashMap::new(),
                next_snapshot: 1,
                next_uid: 1,
            }),
            signals,
            kill,
            down: AtomicBool::new(false),
            bookmark_interval_ms: AtomicU64::new(1000),
            requests: AtomicU64::new(0),
            watches: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(ApiServer {
            addr,
            shared,
            accept,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client configured for this server.
    pub fn client(&self) -> Result<kube::Client> {
        let config = kube::Config::new(self.url().parse()?);
        Ok(kube::Client::try_from(config)?)
    }

    /// A kubeconfig file content pointing at this server (for the agent binary).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.url()
        )
    }

    /// How often open watches get a BOOKMARK (when they asked for bookmarks).
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.shared
            .bookmark_interval_ms
            .store(every.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Requests served so far (LIST and WATCH).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// WATCH requests started so far.
    pub fn watches(&self) -> u64 {
        self.shared.watches.load(Ordering::Relaxed)
    }

    /// Create or replace an object (ADDED or MODIFIED); returns its new resourceVersion.
    pub fn apply<K>(&self, object: &K) -> Result<u64>
    where
        K: k8s_openapi::Resource + Serialize,
    {
        let kind =
            Kind::from_kind(K::KIND).ok_or_else(|| anyhow!("kind {} is not served", K::KIND))?;
        let mut value = serde_json::to_value(object)?;
        value["apiVersion"] = json!(K::API_VERSION);
        value["kind"] = json!(K::KIND);
        let key = object_key(kind, &value)?;
        let mut st = self.shared.lock();
        let existing = st.objects.get(&kind).and_then(|m| m.get(&key)).cloned();
        let ty = match &existing {
            Some(_) => EventType::Modified,
            None => EventType::Added,
        };
        let uid = match existing
            .as_ref()
            .and_then(|o| o["metadata"]["uid"].as_str())
        {
            Some(uid) => uid.to_string(),
            None => {
                st.next_uid += 1;
                format!("00000000-0000-4000-8000-{:012x}", st.next_uid)
            }
        };
        st.rv += 1;
        let rv = st.rv;
        value["metadata"]["uid"] = json!(uid);
        value["metadata"]["resourceVersion"] = json!(rv.to_string());
        let value = Arc::new(value);
        st.objects
            .entry(kind)
            .or_default()
            .insert(key.clone(), value.clone());
        self.record(&mut st, kind, key.0, ty, value);
        Ok(rv)
    }

    /// Delete an object (DELETED); error if absent.
    pub fn delete<K>(&self, namespace: Option<&str>, name: &str) -> Result<u64>
    where
        K: k8s_openapi::Resource,
    {
        let kind =
            Kind::from_kind(K::KIND).ok_or_else(|| anyhow!("kind {} is not served", K::KIND))?;
        let key = (namespace.map(str::to_string), name.to_string());
        let mut st = self.shared.lock();
        let Some(old) = st.objects.get_mut(&kind).and_then(|m| m.remove(&key)) else {
            bail!("{} {:?}/{} not found", K::KIND, namespace, name);
        };
        st.rv += 1;
        let rv = st.rv;
        let mut value = (*old).clone();
        value["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(&mut st, kind, key.0, EventType::Deleted, Arc::new(value));
        Ok(rv)
    }

    /// The stored object, typed.
    pub fn get<K>(&self, namespace: Option<&str>, name: &str) -> Option<K>
    where
        K: k8s_openapi::Resource + serde::de::DeserializeOwned,
    {
        let kind = Kind::from_kind(K::KIND)?;
        let key = (namespace.map(str::to_string), name.to_string());
        let st = self.shared.lock();
        let v = st.objects.get(&kind)?.get(&key)?;
        serde_json::from_value((**v).clone()).ok()
    }

    /// Read-modify-write of a stored object.
    pub fn update<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        f: impl FnOnce(&mut K),
    ) -> Result<u64>
    where
        K: k8s_openapi::Resource + Serialize + serde::de::DeserializeOwned,
    {
        let mut obj: K = self
            .get(namespace, name)
            .ok_or_else(|| anyhow!("{} {:?}/{} not found", K::KIND, namespace, name))?;
        f(&mut obj);
        self.apply(&obj)
    }

    fn record(
        &self,
        st: &mut State,
        kind: Kind,
        namespace: Option<String>,
        ty: EventType,
        object: Arc<Value>,
    ) {
        let event = Arc::new(Event {
            rv: st.rv,
            kind,
            namespace,
            ty,
            object,
        });
        st.history.push(event.clone());
        // Sent under the lock so that watches see events in resourceVersion order.
        let _ = self.shared.signals.send(Signal::Event(event));
    }

    /// Compaction: forget the history up to now. Open watches receive an ERROR event with a
    /// 410 Status and end; watches and continue tokens from older versions get 410.
    pub fn expire(&self) {
        let mut st = self.shared.lock();
        st.history.clear();
        st.oldest_rv = st.rv;
        st.snapshots.clear();
        let _ = self.shared.signals.send(Signal::Expire);
    }

    /// Close every open connection abruptly (no error event), as a cut TCP connection would.
    pub fn drop_connections(&self) {
        self.shared.kill.send_modify(|e| *e += 1);
    }

    /// A network cut: while down, new connections are reset at once and open ones are closed.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.drop_connections();
        }
    }

    /// An API server restart: every stream closes and the watch history is lost (clients that
    /// resume from an older resourceVersion get 410 and relist). Objects and the
    /// resourceVersion survive, as they do in etcd.
    pub fn restart(&self) {
        {
            let mut st = self.shared.lock();
            st.history.clear();
            st.oldest_rv = st.rv;
            st.snapshots.clear();
        }
        self.drop_connections();
    }
}

fn object_key(kind: Kind, value: &Value) -> Result<Key> {
    let meta = &value["metadata"];
    let name = meta["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| anyhow!("{}: metadata.name is required", kind.kind()))?;
    let ns = meta["namespace"].as_str().filter(|n| !n.is_empty());
    match (kind.namespaced(), ns) {
        (true, None) => bail!("{} {name}: metadata.namespace is required", kind.kind()),
        (false, Some(_)) => bail!(
            "{} {name}: cluster-scoped, metadata.namespace must be empty",
            kind.kind()
        ),
        _ => Ok((ns.map(str::to_string), name.to_string())),
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if shared.down.load(Ordering::SeqCst) {
            // Reset rather than a graceful close: SO_LINGER 0 then drop (a zero linger
            // never blocks, which is what the deprecation warns about).
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            drop(stream);
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut kill = shared.kill.subscribe();
            let svc_shared = shared.clone();
            let conn = http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| {
                    let shared = svc_shared.clone();
                    async move { Ok::<_, Infallible>(handle(shared, req)) }
                }),
            );
            tokio::select! {
                _ = conn => {}
                _ = kill.changed() => {}
            }
        });
    }
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("valid response")
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn error(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(status, status_object(status.as_u16(), reason, message))
}

/// Query parameters the server understands.
#[derive(Default, Debug)]
struct Query {
    watch: bool,
    resource_version: Option<String>,
    limit: Option<usize>,
    continue_token: Option<String>,
    bookmarks: bool,
    timeout: Option<u64>,
    send_initial_events: bool,
}

fn parse_query(q: &str) -> Result<Query> {
    let mut out = Query::default();
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        match &*k {
            "watch" => out.watch = v == "true" || v == "1",
            "resourceVersion" => {
                out.resource_version = Some(v.into_owned()).filter(|s| !s.is_empty())
            }
            "resourceVersionMatch" => {}
            "limit" => out.limit = Some(v.parse().context("limit")?).filter(|l| *l > 0),
            "continue" => out.continue_token = Some(v.into_owned()).filter(|s| !s.is_empty()),
            "allowWatchBookmarks" => out.bookmarks = v == "true",
            "timeoutSeconds" => out.timeout = Some(v.parse().context("timeoutSeconds")?),
            "sendInitialEvents" => out.send_initial_events = v == "true",
            "labelSelector" | "fieldSelector" if !v.is_empty() => {
                bail!("{k} is not supported by the test API server")
            }
            _ => {}
        }
    }
    Ok(out)
}

fn handle(shared: Arc<Shared>, req: hyper::Request<Incoming>) -> Response<Body> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    if req.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "only GET is served",
        );
    }
    let Some((kind, ns)) = Kind::route(req.uri().path()) else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no route for {}", req.uri().path()),
        );
    };
    let query = match parse_query(req.uri().query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &format!("{e:#}")),
    };
    if query.watch {
        shared.watches.fetch_add(1, Ordering::Relaxed);
        watch_response(shared, kind, ns, query)
    } else {
        list_response(&shared, kind, ns, query)
    }
}

fn parse_rv(s: &str) -> Option<u64> {
    s.parse().ok()
}

fn list_response(shared: &Shared, kind: Kind, ns: Option<String>, q: Query) -> Response<Body> {
    let mut st = shared.lock();
    let (rv, items, offset) = match &q.continue_token {
        Some(token) => {
            let parsed = token
                .split_once(':')
                .and_then(|(id, off)| Some((id.parse::<u64>().ok()?, off.parse::<usize>().ok()?)));
            let Some((id, offset)) = parsed else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid continue token",
                );
            };
            match st.snapshots.get(&id) {
                Some(s) => (s.rv, s.items.clone(), offset),
                None => {
                    return error(
                        StatusCode::GONE,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result.",
                    )
                }
            }
        }
        None => {
            if let Some(rv) = q.resource_version.as_deref().and_then(parse_rv) {
                if rv > st.rv {
                    return error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "Timeout",
                        &format!("Too large resource version: {rv}, current: {}", st.rv),
                    );
                }
            }
            let items: Vec<Arc<Value>> = st
                .objects
                .get(&kind)
                .map(|m| {
                    m.iter()
                        .filter(|((ons, _), _)| ns.is_none() || ons == &ns)
                        .map(|(_, v)| v.clone())
                        .collect()
                })
                .unwrap_or_default();
            (st.rv, Arc::new(items), 0)
        }
    };
    let end = q
        .limit
        .map_or(items.len(), |l| (offset + l).min(items.len()));
    let page: Vec<&Value> = items[offset.min(end)..end].iter().map(|v| &**v).collect();
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if end < items.len() {
        let id = match &q.continue_token {
            Some(t) => t
                .split_once(':')
                .and_then(|(id, _)| id.parse().ok())
                .unwrap_or(0),
            None => {
                let id = st.next_snapshot;
                st.next_snapshot += 1;
                st.snapshots.insert(
                    id,
                    Snapshot {
                        rv,
                        items: items.clone(),
                    },
                );
                id
            }
        };
        metadata["continue"] = json!(format!("{id}:{end}"));
        metadata["remainingItemCount"] = json!(items.len() - end);
    }
    full(
        StatusCode::OK,
        json!({
            "apiVersion": kind.api_version(),
            "kind": format!("{}List", kind.kind()),
            "metadata": metadata,
            "items": page,
        }),
    )
}

fn line(ty: &str, object: &Value) -> Bytes {
    let mut s = json!({ "type": ty, "object": object }).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if initial_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    line(
        "BOOKMARK",
        &json!({ "apiVersion": kind.api_version(), "kind": kind.kind(), "metadata": meta }),
    )
}

fn watch_response(shared: Arc<Shared>, kind: Kind, ns: Option<String>, q: Query) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let matches = {
        let ns = ns.clone();
        move |e: &Event| e.kind == kind && (ns.is_none() || e.namespace == ns)
    };
    // Under the lock: the backlog and the subscription meet without a gap.
    let (backlog, mut signals, start_rv) = {
        let st = shared.lock();
        let requested = q
            .resource_version
            .as_deref()
            .and_then(parse_rv)
            .filter(|rv| *rv > 0);
        let mut backlog: Vec<Bytes> = Vec::new();
        match requested {
            Some(rv) if rv < st.oldest_rv => {
                let msg = format!("too old resource version: {rv} ({})", st.oldest_rv);
                backlog.push(line("ERROR", &status_object(410, "Expired", &msg)));
                return stream_response(backlog, None);
            }
            Some(rv) if !q.send_initial_events => {
                for e in st.history.iter().filter(|e| e.rv > rv && matches(e)) {
                    backlog.push(line(e.ty.as_str(), &e.object));
                }
            }
            _ => {
                // No version (or 0) / streaming list: synthetic ADDED for the current state.
                if let Some(m) = st.objects.get(&kind) {
                    for ((ons, _), v) in m {
                        if ns.is_none() || ons == &ns {
                            backlog.push(line("ADDED", v));
                        }
                    }
                }
                if q.send_initial_events {
                    backlog.push(bookmark(kind, st.rv, true));
                }
            }
        }
        (backlog, shared.signals.subscribe(), st.rv)
    };
    let bookmarks = q.bookmarks;
    let timeout = q.timeout.map(Duration::from_secs);
    let interval = Duration::from_millis(shared.bookmark_interval_ms.load(Ordering::Relaxed));
    tokio::spawn(async move {
        let mut seen_rv = start_rv;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let out = tokio::select! {
                s = signals.recv() => match s {
                    Ok(Signal::Event(e)) => {
                        seen_rv = e.rv;
                        if matches(&e) { Some(line(e.ty.as_str(), &e.object)) } else { None }
                    }
                    Ok(Signal::Expire) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let st = status_object(410, "Expired", "watch expired: history compacted");
                        let _ = tx.send(line("ERROR", &st)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if bookmarks => Some(bookmark(kind, seen_rv, false)),
                _ = until_deadline => return,
                _ = tx.closed() => return,
            };
            if let Some(b) = out {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
        }
    });
    stream_response(backlog, Some(rx))
}

fn stream_response(backlog: Vec<Bytes>, rx: Option<mpsc::Receiver<Bytes>>) -> Response<Body> {
    let head = futures::stream::iter(backlog.into_iter().map(|b| Ok(Frame::data(b))));
    let tail = futures::stream::unfold(rx, |rx| async move {
        let mut rx = rx?;
        let b = rx.recv().await?;
        Some((Ok(Frame::data(b)), Some(rx)))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(futures::StreamExt::chain(
            head, tail,
        ))))
        .expect("valid response")
}

/// Concise k8s-openapi objects for tests.
pub mod objects {
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, Namespace, Pod, PodIP, PodSpec, PodStatus, Service, ServicePort,
        ServiceSpec,
    };
    use k8s_openapi::api::discovery::v1::{
        Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
    };
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn labels(l: &[(&str, &str)]) -> Option<std::collections::BTreeMap<String, String>> {
        Some(
            l.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// A namespace with the API server's `kubernetes.io/metadata.name` label plus `l`.
    pub fn namespace(name: &str, l: &[(&str, &str)]) -> Namespace {
        let mut all = labels(l).unwrap_or_default();
        all.insert("kubernetes.io/metadata.name".into(), name.into());
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(all),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A running pod `ns/name` on `node` with address `ip` and TCP container ports
    /// `(name, port)` (empty name: unnamed).
    pub fn pod(key: &str, node: &str, ip: &str, l: &[(&str, &str)], ports: &[(&str, u16)]) -> Pod {
        let (ns, name) = key.split_once('/').expect("ns/name");
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: labels(l),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                containers: vec![Container {
                    name: "main".into(),
                    image: Some("registry.k8s.io/e2e-test-images/agnhost:2.47".into()),
                    ports: Some(
                        ports
                            .iter()
                            .map(|(n, p)| ContainerPort {
                                name: (!n.is_empty()).then(|| n.to_string()),
                                container_port: i32::from(*p),
                                protocol: Some("TCP".into()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                ..Default::default()
            }),
        }
    }

    /// A ClusterIP Service `ns/name` at `cluster_ip` with TCP ports `(name, port, targetPort)`
    /// selecting `selector` (the test writes the EndpointSlices itself).
    pub fn service(
        key: &str,
        cluster_ip: &str,
        selector: &[(&str, &str)],
        ports: &[(&str, u16, u16)],
    ) -> Service {
        let (ns, name) = key.split_once('/').expect("ns/name");
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                cluster_ip: Some(cluster_ip.into()),
                cluster_ips: Some(vec![cluster_ip.into()]),
                selector: labels(selector),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, port, target)| ServicePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: i32::from(*port),
                            target_port: Some(IntOrString::Int(i32::from(*target))),
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// An IPv4 EndpointSlice `ns/name` of Service `service` (same namespace): endpoints
    /// `(address, ready)` serving TCP ports `(name, port)`.
    pub fn endpoint_slice(
        key: &str,
        service: &str,
        endpoints: &[(&str, bool)],
        ports: &[(&str, u16)],
    ) -> EndpointSlice {
        let (ns, name) = key.split_once('/').expect("ns/name");
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: labels(&[("kubernetes.io/service-name", service)]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                endpoints
                    .iter()
                    .map(|(ip, ready)| Endpoint {
                        addresses: vec![ip.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(*ready),
                            serving: Some(*ready),
                            terminating: Some(false),
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, port)| EndpointPort {
                        name: Some(n.to_string()),
                        port: Some(i32::from(*port)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    /// A NetworkPolicy from YAML (apiVersion/kind may be left out).
    pub fn policy(yaml: &str) -> NetworkPolicy {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("policy YAML: {e}\n{yaml}"))
    }
}
