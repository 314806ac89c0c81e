//! The lab daemon (the agent) restarts under an iperf3 stream: pinned maps and links keep
//! enforcing, so the stream never breaks and a denied peer never gets through meanwhile.
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netward::model::Protocol::Tcp;
use netward_tests::lab::Scenario;
use netward_tests::require_root;

#[test]
fn daemon_restart_under_iperf3_breaks_nothing_and_opens_nothing() {
    require_root!();
    let mut lab = Scenario::new("restart")
        .namespace("r", &[])
        .pod("r/client", &[("app", "client")], &["10.218.0.1"], &[])
        .pod("r/server", &[("app", "server")], &["10.218.0.2"], &[])
        .pod("r/intruder", &[("app", "intruder")], &["10.218.0.3"], &[])
        .file(
            "policy.yaml",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: r, name: server}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 5201}]
"#,
        )
        .up();
    let server_ip = lab.pod("r/server").ips[0].to_string();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.pod("r/server").netns,
            "iperf3",
            "-s",
            "-p",
            "5201",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(700));

    // The intruder knocks all along; none of its SYNs may pass.
    let stop = Arc::new(AtomicBool::new(false));
    let (passed, tries) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let knocker = std::thread::scope(|s| {
        let h = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                tries.fetch_add(1, Ordering::Relaxed);
                if lab.reach("r/intruder", "r/server", 5201, Tcp) {
                    passed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let client = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.pod("r/client").netns,
                "iperf3",
                "-c",
                &server_ip,
            ])
            .args(["-p", "5201", "-t", "8", "-i", "0.5", "-J"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("iperf3 client");
        std::thread::sleep(Duration::from_secs(2));
        let hard = lab.restart_daemon(true);
        std::thread::sleep(Duration::from_secs(1));
        let soft = lab.restart_daemon(false);
        let out = client.wait_with_output().expect("iperf3 client");
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
        (out, hard, soft)
    });
    let (knocker, hard, soft) = knocker;
    hard.expect("restart after SIGKILL");
    soft.expect("restart after SIGTERM");
    let _ = server.kill();
    let _ = server.wait();
    let json: serde_json::Value = serde_json::from_slice(&knocker.stdout).expect("iperf3 JSON");
    assert!(knocker.status.success(), "iperf3 failed: {}", json["error"]);
    let intervals = json["intervals"].as_array().expect("intervals");
    assert!(
        intervals.len() >= 15,
        "stream cut short: {} intervals",
        intervals.len()
    );
    for (i, iv) in intervals.iter().enumerate() {
        let bps = iv["sum"]["bits_per_second"].as_f64().unwrap_or(0.0);
        assert!(bps > 0.0, "interval {i}: the stream stalled");
    }
    assert!(tries.load(Ordering::Relaxed) > 5);
    assert_eq!(
        passed.load(Ordering::Relaxed),
        0,
        "a denied connection passed during restarts"
    );
    // The new daemon follows edits: removing the policy opens the intruder's way.
    lab.remove("policy.yaml");
    assert!(lab.reach("r/intruder", "r/server", 5201, Tcp));
}
