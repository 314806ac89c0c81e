//! The Kubernetes source: kube-rs reflectors for NetworkPolicies (all namespaces), Namespaces
//! and Pods (all pods: selectors and ipBlocks reach pods on other nodes; only this node's pods
//! become endpoints, which is the compiler's job), and Services and EndpointSlices (all
//! namespaces: egress to a Service's virtual address is decided against its endpoints).
//!
//! kube's watcher does the protocol work: paginated LIST, WATCH from the listed version,
//! bookmarks, and a relist on `410 Gone`; its reflector store buffers a relist and swaps it in
//! at once (a store never looks empty while relisting). This module adds what the agent needs
//! on top: one signal for "something changed, since when" (for debouncing and the sync latency
//! metric), readiness of all stores, counters of watch restarts and errors, and every
//! event converted once and sent to the control loop's event-driven [`Model`].
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::source::{Objects, Sourced};

pub mod model;
pub use model::{Model, ModelEvent, Object};

/// Origin recorded for objects read from the API server (appears in messages).
pub const ORIGIN: &str = "kubernetes";

/// The resources the agent watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    Namespaces,
    Pods,
    NetworkPolicies,
    Services,
    EndpointSlices,
}

/// Number of watched resources.
pub const RESOURCES: usize = 5;

impl Resource {
    pub const ALL: [Resource; RESOURCES] = [
        Resource::Namespaces,
        Resource::Pods,
        Resource::NetworkPolicies,
        Resource::Services,
        Resource::EndpointSlices,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Namespaces => "namespaces",
            Resource::Pods => "pods",
            Resource::NetworkPolicies => "networkpolicies",
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// "The stores changed": remembers when the oldest change not yet processed was seen, and
/// wakes the control loop.
#[derive(Default)]
pub struct ChangeSignal {
    since: Mutex<Option<Instant>>,
    /// Changes marked so far (to tell whether more arrived while debouncing).
    seq: AtomicU64,
    notify: Notify,
}

impl ChangeSignal {
    /// Record a change seen now.
    pub fn mark(&self) {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        since.get_or_insert_with(Instant::now);
        self.seq.fetch_add(1, Ordering::Release);
        drop(since);
        self.notify.notify_one();
    }

    /// Wait until a change is pending (returns at once if one already is).
    pub async fn changed(&self) {
        loop {
            if self.pending().is_some() {
                return;
            }
            self.notify.notified().await;
        }
    }

    /// Number of changes marked so far.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// When the oldest unprocessed change was seen, if any.
    pub fn pending(&self) -> Option<Instant> {
        *self.since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take the pending change: everything seen up to now is about to be processed.
    pub fn take(&self) -> Option<Instant> {
        self.since.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Per-resource watch counters (exported as metrics).
#[derive(Default)]
pub struct WatchStats {
    /// Relists after the first list (410 Gone, API server restart, reconnect after a cut).
    restarts: [AtomicU64; RESOURCES],
    /// Failed list/watch calls (the watcher retries with backoff).
    errors: [AtomicU64; RESOURCES],
    /// Objects applied or deleted by watch events.
    events: [AtomicU64; RESOURCES],
}

impl WatchStats {
    pub fn restarts(&self, r: Resource) -> u64 {
        self.restarts[r.index()].load(Ordering::Relaxed)
    }
    pub fn errors(&self, r: Resource) -> u64 {
        self.errors[r.index()].load(Ordering::Relaxed)
    }
    pub fn events(&self, r: Resource) -> u64 {
        self.events[r.index()].load(Ordering::Relaxed)
    }
}

/// The reflector stores, driven by background tasks (stopped on drop).
pub struct Watchers {
    pub namespaces: Store<Namespace>,
    pub pods: Store<Pod>,
    pub policies: Store<NetworkPolicy>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub changes: Arc<ChangeSignal>,
    pub stats: Arc<WatchStats>,
    /// Converted watch events, in order per resource, for [`Model::apply`]. Each is sent
    /// before the change is marked, so a taken change has its events here.
    pub events: UnboundedReceiver<ModelEvent>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Watchers {
    /// Start watching every resource cluster-wide.
    pub fn start(client: Client, config: watcher::Config) -> Watchers {
        let changes = Arc::new(ChangeSignal::default());
        let stats = Arc::new(WatchStats::default());
        let (tx, events) = unbounded_channel();
        let out = Outputs {
            changes: changes.clone(),
            stats: stats.clone(),
            tx,
        };
        let mut tasks = Vec::new();
        let namespaces = spawn_reflector(
            Api::<Namespace>::all(client.clone()),
            Resource::Namespaces,
            Object::namespace,
            config.clone(),
            &out,
            &mut tasks,
        );
        let pods = spawn_reflector(
            Api::<Pod>::all(client.clone()),
            Resource::Pods,
            Object::pod,
            config.clone(),
            &out,
            &mut tasks,
        );
        let policies = spawn_reflector(
            Api::<NetworkPolicy>::all(client.clone()),
            Resource::NetworkPolicies,
            Object::policy,
            config.clone(),
            &out,
            &mut tasks,
        );
        let services = spawn_reflector(
            Api::<Service>::all(client.clone()),
            Resource::Services,
            Object::service,
            config.clone(),
            &out,
            &mut tasks,
        );
        let endpoint_slices = spawn_reflector(
            Api::<EndpointSlice>::all(client),
            Resource::EndpointSlices,
            Object::endpoint_slice,
            config,
            &out,
            &mut tasks,
        );
        Watchers {
            namespaces,
            pods,
            policies,
            services,
            endpoint_slices,
            changes,
            stats,
            events,
            tasks,
        }
    }

    /// Whether every store has completed its first list.
    pub fn is_ready(&self) -> bool {
        // A store reports ready once its first InitDone was applied.
        futures::FutureExt::now_or_never(self.wait_ready()).is_some()
    }

    /// Wait until every store has completed its first list.
    pub async fn wait_ready(&self) {
        // The writers live as long as the tasks, which live as long as `self`.
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.policies.wait_until_ready().await;
        let _ = self.services.wait_until_ready().await;
        let _ = self.endpoint_slices.wait_until_ready().await;
    }

    /// Wait for readiness, up to `timeout`; names the stores still listing on failure.
    pub async fn wait_ready_for(&self, timeout: Duration) -> anyhow::Result<()> {
        if tokio::time::timeout(timeout, self.wait_ready())
            .await
            .is_ok()
        {
            return Ok(());
        }
        let mut missing = Vec::new();
        if futures::FutureExt::now_or_never(self.namespaces.wait_until_ready()).is_none() {
            missing.push("namespaces");
        }
        if futures::FutureExt::now_or_never(self.pods.wait_until_ready()).is_none() {
            missing.push("pods");
        }
        if futures::FutureExt::now_or_never(self.policies.wait_until_ready()).is_none() {
            missing.push("networkpolicies");
        }
        if futures::FutureExt::now_or_never(self.services.wait_until_ready()).is_none() {
            missing.push("services");
        }
        if futures::FutureExt::now_or_never(self.endpoint_slices.wait_until_ready()).is_none() {
            missing.push("endpointslices");
        }
        anyhow::bail!(
            "the initial list of {} did not complete within {timeout:?}",
            missing.join(", ")
        )
    }

    /// Number of objects per store.
    pub fn sizes(&self) -> [(Resource, usize); RESOURCES] {
        [
            (Resource::Namespaces, self.namespaces.len()),
            (Resource::Pods, self.pods.len()),
            (Resource::NetworkPolicies, self.policies.len()),
            (Resource::Services, self.services.len()),
            (Resource::EndpointSlices, self.endpoint_slices.len()),
        ]
    }

    /// A snapshot of the stores, ready for [`crate::source::convert`].
    pub fn objects(&self) -> Objects {
        fn sourced<K>(store: &Store<K>) -> Vec<Sourced<K>>
        where
            K: kube::Resource + Clone + 'static,
            K::DynamicType: std::hash::Hash + Eq + Clone,
        {
            store
                .state()
                .iter()
                .map(|o| Sourced::new((**o).clone(), ORIGIN))
                .collect()
        }
        Objects {
            namespaces: sourced(&self.namespaces),
            pods: sourced(&self.pods),
            policies: sourced(&self.policies),
            services: sourced(&self.services),
            endpoint_slices: sourced(&self.endpoint_slices),
        }
    }
}

/// Where a watch task reports.
#[derive(Clone)]
struct Outputs {
    changes: Arc<ChangeSignal>,
    stats: Arc<WatchStats>,
    tx: UnboundedSender<ModelEvent>,
}

fn spawn_reflector<K>(
    api: Api<K>,
    resource: Resource,
    to_object: fn(&K) -> Object,
    config: watcher::Config,
    out: &Outputs,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let Outputs { changes, stats, tx } = out.clone();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    tasks.push(tokio::spawn(async move {
        let i = resource.index();
        let mut listed = false;
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            // The receiver lives in `Watchers`, which aborts this task when dropped.
            match item {
                Ok(watcher::Event::Init) => {
                    let _ = tx.send(ModelEvent::Init(resource));
                    if listed {
                        stats.restarts[i].fetch_add(1, Ordering::Relaxed);
                        tracing::info!(resource = resource.as_str(), "relisting");
                    }
                }
                Ok(watcher::Event::InitApply(o)) => {
                    let _ = tx.send(ModelEvent::InitApply(to_object(&o)));
                }
                Ok(watcher::Event::InitDone) => {
                    // The store swapped in the complete list.
                    let _ = tx.send(ModelEvent::InitDone(resource));
                    listed = true;
                    changes.mark();
                }
                Ok(watcher::Event::Apply(o)) => {
                    let _ = tx.send(ModelEvent::Apply(to_object(&o)));
                    stats.events[i].fetch_add(1, Ordering::Relaxed);
                    changes.mark();
                }
                Ok(watcher::Event::Delete(o)) => {
                    let _ = tx.send(ModelEvent::Apply(to_object(&o).deleted()));
                    stats.events[i].fetch_add(1, Ordering::Relaxed);
                    changes.mark();
                }
                Err(e) => {
                    stats.errors[i].fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(resource = resource.as_str(), error = %e, "watch failed; retrying with backoff");
                }
            }
        }
    }));
    reader
}
