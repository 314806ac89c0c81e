//! The lab without enforcement: namespaces, addresses, routes and servers carry real TCP,
//! UDP and SCTP between pods, over IPv4 and IPv6; `lab down` leaves nothing behind.
use std::time::Duration;

use netward::lab::probe::{self, Family, Target};
use netward::lab::{netns, topology};
use netward::model::Protocol::{Sctp, Tcp, Udp};
use netward_tests::lab::{cluster, is_root, pod, TestLab};

#[test]
fn pods_reach_each_other_on_every_protocol_and_down_cleans_up() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let c = cluster(vec![
        pod(
            "a/client",
            &[("app", "client")],
            &["10.201.0.1", "fd10:201::1"],
            &[("", 80, Tcp)],
        ),
        pod(
            "b/server",
            &[("app", "server")],
            &["10.201.0.2", "fd10:201::2"],
            &[("http", 80, Tcp), ("dns", 53, Udp), ("", 9000, Sctp)],
        ),
    ]);
    let lab = TestLab::up("topo", &[], &c, false).expect("lab up");
    let (client, server) = (lab.pod("a/client"), lab.pod("b/server"));
    let t = Duration::from_millis(800);
    for dst in &server.ips {
        for target in [
            Target {
                port: 80,
                protocol: Tcp,
            },
            Target {
                port: 53,
                protocol: Udp,
            },
            Target {
                port: 9000,
                protocol: Sctp,
            },
        ] {
            assert!(
                probe::probe_pair(client, server, *dst, target, t).unwrap(),
                "{target:?} to {dst} not reached"
            );
        }
    }
    // No server on 81: the RST still proves arrival; SCTP to a port nobody probes is still
    // an INIT that arrives. A probe to an address nobody owns must fail.
    assert!(probe::probe_pair(
        client,
        server,
        server.ips[0],
        Target {
            port: 81,
            protocol: Tcp
        },
        t
    )
    .unwrap());
    let nobody = "10.201.0.99".parse().unwrap();
    assert!(!probe::probe_pair(
        client,
        server,
        nobody,
        Target {
            port: 80,
            protocol: Tcp
        },
        t
    )
    .unwrap());

    // Whole matrix, both directions, over both families of the dual-stack pods.
    let target = Target {
        port: 80,
        protocol: Tcp,
    };
    let obs = probe::observe(&lab.state, target, None, Default::default());
    assert_eq!(obs.len(), 4, "{obs:?}");
    assert!(obs.iter().all(|o| o.reached), "{obs:?}");
    let reports = probe::probe(&lab.state, &c, target, None, Default::default()).unwrap();
    let families: Vec<Family> = reports.iter().map(|r| r.family).collect();
    assert_eq!(families, [Family::IPv4, Family::IPv6]);
    for r in &reports {
        assert_eq!(r.matrix.values().map(|row| row.len()).sum::<usize>(), 2);
        assert!(r.differences.is_empty(), "{r:?}");
    }

    let name = lab.name.clone();
    let (ns, veth) = (server.netns.clone(), server.host_veth.clone());
    drop(lab);
    assert!(!netns::exists(&ns));
    assert!(
        topology::links_with_prefix(&name.veth_prefix()).is_empty(),
        "{veth} left behind"
    );
    assert!(!name.state_dir().exists());
}

#[test]
fn two_labs_run_side_by_side_and_the_same_addresses_are_refused() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let c1 = cluster(vec![
        pod("x/p1", &[], &["10.202.0.1"], &[("", 80, Tcp)]),
        pod("x/p2", &[], &["10.202.0.2"], &[("", 80, Tcp)]),
    ]);
    let c2 = cluster(vec![
        pod("x/p1", &[], &["10.203.0.1"], &[("", 80, Tcp)]),
        pod("x/p2", &[], &["10.203.0.2"], &[("", 80, Tcp)]),
    ]);
    let l1 = TestLab::up("side1", &[], &c1, false).unwrap();
    let l2 = TestLab::up("side2", &[], &c2, false).unwrap();
    let err = TestLab::up("side3", &[], &c1, false)
        .err()
        .expect("same addresses refused");
    assert!(err.to_string().contains("10.202.0.1"), "{err:#}");
    for l in [&l1, &l2] {
        let obs = probe::observe(
            &l.state,
            Target {
                port: 80,
                protocol: Tcp,
            },
            None,
            Default::default(),
        );
        assert!(obs.iter().all(|o| o.reached), "{obs:?}");
    }
}
