//! The control loop: wait until every watch store has listed, then on each change (a short
//! trailing debounce that coalesces bursts, bounded by a maximum wait) apply the converted
//! watch events to the persistent model, compile the Plan for this node, install it through the [`Enforcer`],
//! and attach/detach pod veths. It is the only caller of the enforcer.
//!
//! Enforcement is never dropped: nothing is applied before all stores are ready; a failed
//! build or apply keeps the previous Plan in force (and is retried); kube's reflector swaps a
//! relist in at once so a store never looks empty mid-relist; and a Plan that would come from
//! an empty namespace store (a cluster always has namespaces) is refused.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use tokio::sync::{broadcast, watch};

use super::enforce::Enforcer;
use super::metrics::Metrics;
use super::routes::{Device, HostRoutes};
use super::status::{EndpointStatus, FlowEvent, PlanSize, Status, WatchStatus};
use crate::k8s::{Model, Watchers};
use crate::plan::Plan;

/// The Plan in force, as published to observers (tests, status).
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub generation: u64,
    pub plan: Option<Arc<Plan>>,
}

/// State shared between the control loop, the HTTP server and the control socket.
pub struct Shared {
    pub status: RwLock<Status>,
    pub metrics: Metrics,
    pub events: broadcast::Sender<FlowEvent>,
    heartbeat: Mutex<Instant>,
    applied_tx: watch::Sender<Applied>,
}

impl Shared {
    pub fn new(node: &str) -> Arc<Shared> {
        let (events, _) = broadcast::channel(4096);
        let (applied_tx, _) = watch::channel(Applied::default());
        Arc::new(Shared {
            status: RwLock::new(Status {
                node: node.to_string(),
                ..Default::default()
            }),
            metrics: Metrics::new(),
            events,
            heartbeat: Mutex::new(Instant::now()),
            applied_tx,
        })
    }

    pub fn status(&self) -> Status {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update_status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.write().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn ready(&self) -> bool {
        self.status.read().unwrap_or_else(|e| e.into_inner()).ready
    }

    /// Whether the control loop made progress recently.
    pub fn alive(&self, within: Duration) -> bool {
        self.heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            < within
    }

    fn beat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Follow the Plan in force.
    pub fn applied(&self) -> watch::Receiver<Applied> {
        self.applied_tx.subscribe()
    }
}

/// Tunables of the loop.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// Quiet period: a rebuild starts once no change arrived for this long...
    pub debounce: Duration,
    /// ...or once this long has passed since the first pending change.
    pub max_wait: Duration,
    /// Re-scan routes for new/removed veths and refresh counters this often.
    pub rescan: Duration,
    /// Read verdict events this often.
    pub events: Duration,
    /// Retry a failed sync after this long.
    pub retry: Duration,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            debounce: Duration::from_millis(5),
            max_wait: Duration::from_millis(50),
            rescan: Duration::from_secs(2),
            events: Duration::from_millis(100),
            retry: Duration::from_secs(1),
        }
    }
}

pub struct Controller<E: Enforcer> {
    node: String,
    watchers: Watchers,
    enforcer: E,
    shared: Arc<Shared>,
    cfg: LoopConfig,
    applied: Option<Arc<Plan>>,
    generation: u64,
    /// veth name -> ifindex, for veths this agent attached.
    attached: BTreeMap<String, u32>,
    /// endpoint key -> device, from the last route scan.
    devices: HashMap<String, Device>,
    /// The model, patched by the watch events.
    model: Model,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl<E: Enforcer> Controller<E> {
    pub fn new(
        node: &str,
        watchers: Watchers,
        enforcer: E,
        shared: Arc<Shared>,
        cfg: LoopConfig,
    ) -> Self {
        let datapath = enforcer.describe();
        shared.update_status(|s| s.datapath = datapath);
        Controller {
            node: node.to_string(),
            watchers,
            enforcer,
            shared,
            cfg,
            applied: None,
            generation: 0,
            attached: BTreeMap::new(),
            devices: HashMap::new(),
            model: Model::default(),
        }
    }

    /// Run until the task is dropped.
    pub async fn run(mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            self.shared.beat();
            match tokio::time::timeout(Duration::from_secs(5), self.watchers.wait_ready()).await {
                Ok(()) => break,
                Err(_) => {
                    let sizes = self.watchers.sizes();
                    tracing::info!(waited = ?start.elapsed(), ?sizes, "waiting for the initial lists");
                    self.refresh_observations();
                }
            }
        }
        // The stores are ready just before their InitDone reaches the model.
        while !self.model.ready() {
            match self.watchers.events.recv().await {
                Some(e) => self.model.apply(e),
                None => anyhow::bail!("the watch tasks stopped"),
            }
        }
        tracing::info!(elapsed = ?start.elapsed(), sizes = ?self.watchers.sizes(), "all watch stores listed");
        let changes = self.watchers.changes.clone();
        let mut rescan = tokio::time::interval(self.cfg.rescan);
        let mut events = tokio::time::interval(self.cfg.events);
        loop {
            self.shared.beat();
            tokio::select! {
                _ = changes.changed() => {
                    let first = changes.pending().unwrap_or_else(Instant::now);
                    loop {
                        let seen = changes.seq();
                        tokio::time::sleep(self.cfg.debounce).await;
                        if changes.seq() == seen || first.elapsed() >= self.cfg.max_wait {
                            break;
                        }
                    }
                    let since = changes.take();
                    self.sync(since).await;
                }
                _ = rescan.tick() => {
                    if self.applied.is_some() {
                        self.reconcile_attachments().await;
                        if let Err(e) = self.enforcer.recheck_direct() {
                            tracing::warn!(error = format!("{e:#}"), "checking the veths' tc hooks failed");
                        }
                    }
                    self.refresh_observations();
                }
                _ = events.tick() => self.forward_events(),
            }
        }
    }

    /// Rebuild, compile, install; `since` is when the first unprocessed change was seen.
    pub async fn sync(&mut self, since: Option<Instant>) {
        let t0 = Instant::now();
        self.model.applied = 0;
        while let Ok(e) = self.watchers.events.try_recv() {
            self.model.apply(e);
        }
        if self.model.explicit_namespaces() == 0 && self.applied.is_some() {
            tracing::warn!("the namespace store is empty; keeping the Plan in force");
            self.fail("refused a Plan built from an empty namespace store".into());
            return;
        }
        let cluster = self.model.cluster();
        let convert_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let plan = Arc::new(crate::compiler::compile(cluster, Some(&self.node)));
        let compile_secs = t1.elapsed().as_secs_f64();
        let policy_errors: Vec<String> = cluster
            .policies
            .iter()
            .flat_map(|p| p.errors.iter().map(move |e| format!("{}: {e}", p.key())))
            .collect();
        let service_errors: Vec<String> = self.model.service_errors().cloned().collect();
        if self.applied.as_ref().is_some_and(|a| **a == *plan) {
            self.shared
                .metrics
                .observe_sync("unchanged", Some(compile_secs), None);
            self.shared.update_status(|s| {
                s.policy_errors = policy_errors;
                s.service_errors = service_errors;
            });
            return;
        }
        match self.enforcer.apply(&plan) {
            Ok(generation) => {
                let latency = since.map(|s| s.elapsed().as_secs_f64());
                self.generation = generation;
                self.applied = Some(plan.clone());
                let size = PlanSize::from(plan.stats());
                self.shared
                    .metrics
                    .observe_sync("applied", Some(compile_secs), latency);
                self.shared.metrics.set_plan(&size, generation);
                self.shared.metrics.set_ready(true);
                self.shared.update_status(|s| {
                    s.ready = true;
                    s.generation = generation;
                    s.last_sync_unix = Some(unix_now());
                    s.last_sync_latency_ms = latency.map(|l| l * 1e3);
                    s.last_convert_ms = Some(convert_secs * 1e3);
                    s.last_compile_ms = Some(compile_secs * 1e3);
                    s.last_error = None;
                    s.plan = size;
                    s.policy_errors = policy_errors;
                    s.service_errors = service_errors;
                });
                tracing::info!(
                    generation,
                    endpoints = plan.endpoints.len(),
                    ipcache = plan.ipcache.len(),
                    policy = plan.policy.len(),
                    convert_ms = convert_secs * 1e3,
                    compile_ms = compile_secs * 1e3,
                    latency_ms = latency.map(|l| l * 1e3),
                    "Plan applied"
                );
                self.shared.applied_tx.send_replace(Applied {
                    generation,
                    plan: Some(plan),
                });
                self.reconcile_attachments().await;
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "applying the Plan failed; the previous Plan stays in force"
                );
                self.fail(format!("{e:#}"));
            }
        }
    }

    fn fail(&mut self, message: String) {
        self.shared.metrics.observe_sync("failed", None, None);
        self.shared.update_status(|s| s.last_error = Some(message));
        let changes = self.watchers.changes.clone();
        let retry = self.cfg.retry;
        tokio::spawn(async move {
            tokio::time::sleep(retry).await;
            changes.mark();
        });
    }

    /// Attach to the veth of every local endpoint that has a host route; detach from veths
    /// whose endpoint is gone.
    async fn reconcile_attachments(&mut self) {
        let Some(plan) = self.applied.clone() else {
            return;
        };
        let routes = match HostRoutes::scan().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "route scan failed");
                return;
            }
        };
        let mut devices = HashMap::new();
        for ep in &plan.endpoints {
            if let Some(d) = ep.ips.iter().find_map(|ip| routes.device(*ip)) {
                devices.insert(ep.key(), d.clone());
            }
        }
        let wanted: BTreeMap<String, u32> = devices
            .values()
            .map(|d| (d.name.clone(), d.ifindex))
            .collect();
        for (name, ifindex) in &wanted {
            if self.attached.get(name) == Some(ifindex) {
                continue;
            }
            match self.enforcer.attach(name) {
                Ok(()) => {
                    tracing::info!(veth = %name, ifindex, "attached");
                    self.attached.insert(name.clone(), *ifindex);
                }
                Err(e) => tracing::warn!(veth = %name, error = format!("{e:#}"), "attach failed"),
            }
        }
        let gone: Vec<String> = self
            .attached
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            match self.enforcer.detach(&name) {
                Ok(()) => tracing::info!(veth = %name, "detached"),
                Err(e) => {
                    tracing::debug!(veth = %name, error = format!("{e:#}"), "detach (veth probably gone)")
                }
            }
            self.attached.remove(&name);
        }
        self.detach_stale(&wanted);
        self.devices = devices;
        let endpoints: Vec<EndpointStatus> = plan
            .endpoints
            .iter()
            .map(|ep| {
                let dev = self.devices.get(&ep.key());
                EndpointStatus {
                    namespace: ep.namespace.clone(),
                    name: ep.name.clone(),
                    ips: ep.ips.clone(),
                    veth: dev.map(|d| d.name.clone()),
                    ifindex: dev.map(|d| d.ifindex),
                    attached: dev.is_some_and(|d| self.attached.contains_key(&d.name)),
                    isolated_ingress: ep.isolated_ingress,
                    isolated_egress: ep.isolated_egress,
                    subject_class: ep.subject_class,
                }
            })
            .collect();
        self.shared.metrics.set_attached(self.attached.len());
        self.shared.update_status(|s| s.endpoints = endpoints);
    }

    /// Detach links on interfaces that are not local pods' veths now. The datapath adopts
    /// every pinned link at startup (enforcement never lapses across a restart), including
    /// those on interfaces whose pod went away while no agent ran: the interface may live on,
    /// be renamed or be reused for something else, and would keep enforcing a Plan that no
    /// longer describes it. Runs after each reconcile, once `wanted` is known from a Plan and
    /// the routes.
    fn detach_stale(&mut self, wanted: &BTreeMap<String, u32>) {
        let attached = match self.enforcer.attached() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "listing attached interfaces failed"
                );
                return;
            }
        };
        for ifindex in attached {
            if wanted.values().any(|w| *w == ifindex) {
                continue;
            }
            match self.enforcer.detach_index(ifindex) {
                Ok(()) => tracing::info!(
                    ifindex,
                    "detached a link left on an interface that is no local pod's veth"
                ),
                Err(e) => tracing::warn!(
                    ifindex,
                    error = format!("{e:#}"),
                    "detaching a stale link failed"
                ),
            }
            self.attached.retain(|_, i| *i != ifindex);
        }
    }

    /// Counters, map fill and watch statistics into status and metrics.
    fn refresh_observations(&mut self) {
        let counters = self.enforcer.counters();
        let maps = self.enforcer.map_fill();
        let sizes = self.watchers.sizes();
        let stats = &self.watchers.stats;
        self.shared.metrics.set_watches(stats, &sizes);
        let watches: Vec<WatchStatus> = sizes
            .iter()
            .map(|(r, n)| WatchStatus {
                resource: r.as_str().to_string(),
                objects: *n,
                restarts: stats.restarts(*r),
                errors: stats.errors(*r),
            })
            .collect();
        if let (Ok(c), Ok(m)) = (&counters, &maps) {
            self.shared.metrics.set_datapath(c, m);
        }
        self.shared.update_status(|s| {
            s.watches = watches;
            if let Ok(c) = counters {
                s.counters = c;
            }
            if let Ok(m) = maps {
                s.maps = m;
            }
        });
    }

    /// Verdict events to `monitor` subscribers, with pod names filled in.
    fn forward_events(&mut self) {
        match self.enforcer.poll_events() {
            Ok(events) => {
                for mut e in events {
                    e.src_pod = e
                        .src_pod
                        .or_else(|| self.model.pods_by_ip().get(&e.src).cloned());
                    e.dst_pod = e
                        .dst_pod
                        .or_else(|| self.model.pods_by_ip().get(&e.dst).cloned());
                    let _ = self.shared.events.send(e);
                }
            }
            Err(e) => tracing::debug!(error = format!("{e:#}"), "reading events failed"),
        }
    }
}
