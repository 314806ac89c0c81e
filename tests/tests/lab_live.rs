//! Pods come, change and go while the lab runs: the daemon creates, recreates and removes
//! them live, enforced from their first packet, and the pods that stay keep their verdicts
//! throughout (a denied peer never passes, an allowed one never breaks).
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use netward::lab::probe::{self, Target};
use netward::lab::{netns, LabPod};
use netward::model::Protocol::{Tcp, Udp};
use netward_tests::lab::{pod_yaml, Scenario};
use netward_tests::require_root;

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: l, name: server}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80}]
"#;

fn tcp80(from: &LabPod, to: &LabPod, dst: &str) -> bool {
    let target = Target {
        port: 80,
        protocol: Tcp,
    };
    probe::probe_pair(
        from,
        to,
        dst.parse().unwrap(),
        target,
        Duration::from_millis(700),
    )
    .unwrap()
}

fn exists(pod: &LabPod) -> bool {
    netns::exists(&pod.netns) || Path::new("/sys/class/net").join(&pod.host_veth).exists()
}

#[test]
fn pods_added_changed_and_removed_live_without_a_window_for_the_others() {
    require_root!();
    let mut lab = Scenario::new("live")
        .namespace("l", &[])
        .pod("l/client", &[("app", "client")], &["10.220.0.1"], &[])
        .pod(
            "l/server",
            &[("app", "server")],
            &["10.220.0.2"],
            &[("", 80, "TCP")],
        )
        .pod("l/intruder", &[], &["10.220.0.3"], &[])
        .file("policy.yaml", POLICY)
        .up();
    let (client, server, intruder) = (
        lab.pod("l/client").clone(),
        lab.pod("l/server").clone(),
        lab.pod("l/intruder").clone(),
    );
    assert!(tcp80(&client, &server, "10.220.0.2"));
    assert!(!tcp80(&intruder, &server, "10.220.0.2"));

    let stop = AtomicBool::new(false);
    let (intruded, broken, rounds) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    std::thread::scope(|s| {
        // The pods that stay, probed all along the edits below.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                rounds.fetch_add(1, Ordering::Relaxed);
                if tcp80(&intruder, &server, "10.220.0.2") {
                    intruded.fetch_add(1, Ordering::Relaxed);
                }
                if !tcp80(&client, &server, "10.220.0.2") {
                    broken.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Two new pods: one the policy admits, one it does not.
            lab.edit(
                "new.yaml",
                &[
                    pod_yaml(
                        "l/newcomer",
                        &[("app", "client")],
                        &["10.220.0.4"],
                        &[("", 80, "TCP")],
                    ),
                    pod_yaml("l/stranger", &[], &["10.220.0.5"], &[("", 80, "TCP")]),
                ]
                .concat(),
            );
            let newcomer = lab.pod("l/newcomer").clone();
            let stranger = lab.pod("l/stranger").clone();
            assert!(
                tcp80(&newcomer, &server, "10.220.0.2"),
                "newcomer -> server"
            );
            assert!(
                !tcp80(&stranger, &server, "10.220.0.2"),
                "stranger -> server"
            );
            // New pods are not isolated: their servers answer.
            assert!(
                tcp80(&client, &newcomer, "10.220.0.4"),
                "client -> newcomer"
            );
            assert!(
                tcp80(&server, &stranger, "10.220.0.5"),
                "server -> stranger"
            );

            // A label change admits the stranger; the newcomer moves to another address and
            // declares a UDP port.
            lab.edit(
                "new.yaml",
                &[
                    pod_yaml(
                        "l/newcomer",
                        &[("app", "client")],
                        &["10.220.0.6"],
                        &[("", 80, "TCP"), ("", 5353, "UDP")],
                    ),
                    pod_yaml(
                        "l/stranger",
                        &[("app", "client")],
                        &["10.220.0.5"],
                        &[("", 80, "TCP")],
                    ),
                ]
                .concat(),
            );
            assert!(
                tcp80(&stranger, &server, "10.220.0.2"),
                "relabelled stranger -> server"
            );
            let moved = lab.pod("l/newcomer").clone();
            assert_eq!(
                moved.ips,
                ["10.220.0.6".parse::<std::net::IpAddr>().unwrap()]
            );
            assert!(
                !tcp80(&client, &moved, "10.220.0.4"),
                "old address still routed"
            );
            assert!(
                tcp80(&client, &moved, "10.220.0.6"),
                "client -> moved newcomer"
            );
            assert!(
                tcp80(&moved, &server, "10.220.0.2"),
                "moved newcomer -> server"
            );
            let udp = Target {
                port: 5353,
                protocol: Udp,
            };
            let t = Duration::from_millis(700);
            assert!(
                probe::probe_pair(&client, &moved, moved.ips[0], udp, t).unwrap(),
                "the new UDP port is served"
            );

            // Both go: nothing of them stays, their addresses are unreachable.
            lab.remove("new.yaml");
            assert!(lab.state.pod("l/newcomer").is_none());
            assert!(!exists(&moved) && !exists(&stranger), "pods left behind");
            assert!(!tcp80(&client, &moved, "10.220.0.6"));
            assert!(!tcp80(&client, &stranger, "10.220.0.5"));
        }));
        stop.store(true, Ordering::Relaxed);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
    assert!(rounds.load(Ordering::Relaxed) >= 3, "too few probe rounds");
    assert_eq!(
        intruded.load(Ordering::Relaxed),
        0,
        "a denied pod reached the server while pods changed"
    );
    assert_eq!(
        broken.load(Ordering::Relaxed),
        0,
        "an allowed connection failed while pods changed"
    );
    // The remaining pods still work, the daemon still enforces.
    assert!(tcp80(&client, &server, "10.220.0.2"));
    assert!(!tcp80(&intruder, &server, "10.220.0.2"));
}
