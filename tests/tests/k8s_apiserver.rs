//! The test API server against kube's real client, watcher and reflector: if these pass, the
//! agent's watchers meet the protocol they will meet in a cluster.
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use netward_tests::apiserver::ApiServer;

fn pod(ns: &str, name: &str, app: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            labels: Some([("app".to_string(), app.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A reflector over all pods, driven in the background.
fn pod_reflector(
    client: kube::Client,
    cfg: watcher::Config,
) -> (Store<Pod>, tokio::task::JoinHandle<()>) {
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(Api::<Pod>::all(client), cfg))
        .default_backoff()
        .for_each(|_| async {});
    (reader, tokio::spawn(stream))
}

fn labels_of(store: &Store<Pod>, name: &str) -> Option<String> {
    store
        .state()
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .and_then(|p| p.metadata.labels.as_ref()?.get("app").cloned())
}

#[tokio::test]
async fn list_paginates_from_a_consistent_snapshot() {
    let server = ApiServer::start().await.unwrap();
    for i in 0..1203 {
        server.apply(&pod("a", &format!("p{i:04}"), "x")).unwrap();
    }
    let api = Api::<Pod>::all(server.client().unwrap());
    let first = api.list(&ListParams::default().limit(500)).await.unwrap();
    assert_eq!(first.items.len(), 500);
    let token = first.metadata.continue_.clone().expect("continue token");
    let rv = first.metadata.resource_version.clone().unwrap();
    // A change between pages is not seen by the paginated list (snapshot semantics).
    server.apply(&pod("a", "zzz-late", "x")).unwrap();
    let mut names: Vec<String> = first
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    let mut token = Some(token);
    while let Some(t) = token {
        let page = api
            .list(&ListParams::default().limit(500).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(page.metadata.resource_version.as_deref(), Some(rv.as_str()));
        names.extend(page.items.iter().map(|p| p.metadata.name.clone().unwrap()));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
    }
    assert_eq!(names.len(), 1203);
    assert!(!names.contains(&"zzz-late".to_string()));
    // The items are full k8s-openapi objects.
    assert_eq!(first.items[0].metadata.labels.as_ref().unwrap()["app"], "x");
    assert!(first.items[0].metadata.uid.is_some());

    // After compaction the old continue token is gone: 410.
    server.expire();
    let err = api
        .list(&ListParams::default().limit(500).continue_token("1:500"))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => assert_eq!(s.code, 410, "{s:?}"),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn raw_watch_replays_history_and_expires_with_410() {
    let server = ApiServer::start().await.unwrap();
    let rv0 = server.apply(&namespace("a")).unwrap();
    server.apply(&namespace("b")).unwrap();
    server
        .update::<Namespace>(None, "a", |n| {
            n.metadata.labels = Some([("team".to_string(), "x".to_string())].into())
        })
        .unwrap();
    server.delete::<Namespace>(None, "b").unwrap();
    let api = Api::<Namespace>::all(server.client().unwrap());
    let stream = api
        .watch(&WatchParams::default(), &rv0.to_string())
        .await
        .unwrap();
    let events: Vec<_> = stream.take(3).collect().await;
    let kinds: Vec<String> = events
        .into_iter()
        .map(|e| match e.unwrap() {
            WatchEvent::Added(n) => format!("ADDED {}", n.metadata.name.unwrap()),
            WatchEvent::Modified(n) => format!("MODIFIED {}", n.metadata.name.unwrap()),
            WatchEvent::Deleted(n) => format!("DELETED {}", n.metadata.name.unwrap()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["ADDED b", "MODIFIED a", "DELETED b"]);

    // Watching from a compacted version: an ERROR event with a 410 Status.
    server.expire();
    let mut stream = api
        .watch(&WatchParams::default(), &rv0.to_string())
        .await
        .unwrap()
        .boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Error(s) => assert_eq!(s.code, 410),
        other => panic!("expected a 410 error event, got {other:?}"),
    }

    // An open watch is told 410 when the history is compacted.
    let rv = server.resource_version();
    let mut stream = api
        .watch(&WatchParams::default(), &rv.to_string())
        .await
        .unwrap()
        .boxed();
    server.apply(&namespace("c")).unwrap();
    assert!(matches!(
        stream.next().await.unwrap().unwrap(),
        WatchEvent::Added(_)
    ));
    server.expire();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Error(s) => assert_eq!(s.code, 410),
        other => panic!("expected a 410 error event, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_sends_bookmarks_with_the_latest_version() {
    let server = ApiServer::start().await.unwrap();
    server.set_bookmark_interval(Duration::from_millis(50));
    let rv = server.apply(&namespace("a")).unwrap();
    let api = Api::<Pod>::all(server.client().unwrap());
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &rv.to_string())
        .await
        .unwrap()
        .boxed();
    // A namespace change is not a pod event, but the pod watch's bookmark moves past it.
    let later = server.apply(&namespace("b")).unwrap();
    loop {
        match stream.next().await.unwrap().unwrap() {
            WatchEvent::Bookmark(b) if b.metadata.resource_version == later.to_string() => break,
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn reflector_follows_changes_and_survives_expiry_cuts_and_restarts() {
    let server = ApiServer::start().await.unwrap();
    for i in 0..700 {
        server.apply(&pod("a", &format!("p{i}"), "v0")).unwrap();
    }
    let (store, task) = pod_reflector(server.client().unwrap(), watcher::Config::default());
    tokio::time::timeout(Duration::from_secs(20), store.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    eventually("initial list of 700 pods", || store.state().len() == 700).await;

    server
        .update::<Pod>(Some("a"), "p1", |p| {
            p.metadata.labels = Some([("app".to_string(), "v1".to_string())].into())
        })
        .unwrap();
    server.delete::<Pod>(Some("a"), "p2").unwrap();
    eventually("modify + delete", || {
        labels_of(&store, "p1").as_deref() == Some("v1") && store.state().len() == 699
    })
    .await;

    // Compaction: the watcher gets 410, relists, and sees changes made meanwhile.
    let lists_before = server.requests() - server.watches();
    server.expire();
    server.apply(&pod("a", "after-expiry", "v0")).unwrap();
    eventually("relist after 410", || {
        server.requests() - server.watches() > lists_before
    })
    .await;
    eventually("change after expiry", || {
        labels_of(&store, "after-expiry").is_some()
    })
    .await;

    // A network cut: a change made while the server is unreachable arrives after it heals.
    server.set_down(true);
    server
        .update::<Pod>(Some("a"), "p3", |p| {
            p.metadata.labels = Some([("app".to_string(), "cut".to_string())].into())
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store.state().len(),
        700,
        "the store keeps its content during a cut"
    );
    server.set_down(false);
    eventually("change made during the cut", || {
        labels_of(&store, "p3").as_deref() == Some("cut")
    })
    .await;

    // Restart: streams close, history is lost; the watcher resumes (410 -> relist).
    server.restart();
    server.delete::<Pod>(Some("a"), "p4").unwrap();
    eventually("delete after restart", || store.state().len() == 699).await;

    task.abort();
}

#[tokio::test]
async fn streaming_list_initial_events_end_marks_ready() {
    let server = ApiServer::start().await.unwrap();
    for i in 0..30 {
        server.apply(&pod("b", &format!("s{i}"), "x")).unwrap();
    }
    let (store, task) = pod_reflector(
        server.client().unwrap(),
        watcher::Config::default().streaming_lists(),
    );
    tokio::time::timeout(Duration::from_secs(20), store.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    eventually("30 pods by streaming list", || store.state().len() == 30).await;
    server.apply(&pod("b", "s99", "y")).unwrap();
    eventually("live event", || {
        labels_of(&store, "s99").as_deref() == Some("y")
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn every_resource_and_namespaced_paths() {
    let server = ApiServer::start().await.unwrap();
    server.apply(&namespace("a")).unwrap();
    server.apply(&pod("a", "p", "x")).unwrap();
    server.apply(&pod("b", "q", "x")).unwrap();
    let np = NetworkPolicy {
        metadata: ObjectMeta {
            namespace: Some("a".into()),
            name: Some("deny".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    server.apply(&np).unwrap();
    let client = server.client().unwrap();
    let pols = Api::<NetworkPolicy>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(pols.items.len(), 1);
    let in_a = Api::<Pod>::namespaced(client.clone(), "a")
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(in_a.items.len(), 1);
    assert_eq!(
        Api::<Namespace>::all(client.clone())
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    server.apply(&service("a", "web")).unwrap();
    server
        .apply(&slice("a", "web-1", "web", "10.0.0.1"))
        .unwrap();
    server
        .apply(&slice("b", "web-2", "web", "10.0.0.2"))
        .unwrap();
    assert_eq!(
        Api::<Service>::namespaced(client.clone(), "a")
            .list(&Default::default())
            .await
            .unwrap()
            .items[0]
            .spec
            .as_ref()
            .unwrap()
            .cluster_ip
            .as_deref(),
        Some("10.96.0.10")
    );
    let slices = Api::<EndpointSlice>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(slices.items.len(), 2);
    let in_b = Api::<EndpointSlice>::namespaced(client.clone(), "b")
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(
        in_b.items[0].endpoints.as_ref().unwrap()[0].addresses,
        ["10.0.0.2"]
    );
    assert!(Api::<Service>::namespaced(client, "b")
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
    // Bad input is refused with a clear error.
    assert!(server.apply(&pod("", "nameless-ns", "x")).is_err());
}

fn service(ns: &str, name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn slice(ns: &str, name: &str, service: &str, ip: &str) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            labels: Some(
                [(
                    "kubernetes.io/service-name".to_string(),
                    service.to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(vec![Endpoint {
            addresses: vec![ip.into()],
            ..Default::default()
        }]),
        ports: None,
    }
}

/// Services and EndpointSlices are watched like the other kinds: changes, deletes, and a relist
/// after 410 Gone.
#[tokio::test]
async fn endpoint_slice_reflector_follows_changes_and_expiry() {
    let server = ApiServer::start().await.unwrap();
    server
        .apply(&slice("a", "web-1", "web", "10.0.0.1"))
        .unwrap();
    let (reader, writer) = reflector::store::<EndpointSlice>();
    let task = tokio::spawn(
        reflector::reflector(
            writer,
            watcher(
                Api::<EndpointSlice>::all(server.client().unwrap()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .for_each(|_| async {}),
    );
    tokio::time::timeout(Duration::from_secs(20), reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    let address = |name: &str| {
        reader
            .state()
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .and_then(|s| s.endpoints.as_ref()?.first()?.addresses.first().cloned())
    };
    assert_eq!(address("web-1").as_deref(), Some("10.0.0.1"));
    server
        .update::<EndpointSlice>(Some("a"), "web-1", |s| {
            s.endpoints.as_mut().unwrap()[0].addresses = vec!["10.0.0.9".into()]
        })
        .unwrap();
    eventually("modified slice", || {
        address("web-1").as_deref() == Some("10.0.0.9")
    })
    .await;
    server.expire();
    server.delete::<EndpointSlice>(Some("a"), "web-1").unwrap();
    server
        .apply(&slice("a", "web-2", "web", "10.0.0.2"))
        .unwrap();
    eventually("changes after 410", || {
        address("web-1").is_none() && address("web-2").is_some()
    })
    .await;
    task.abort();
}
