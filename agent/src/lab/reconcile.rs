//! What changes on the node when the manifests' pods change: the difference between the
//! lab's current pods and the pods the manifests ask for.
//!
//! A pod whose addresses change is removed and created again (its routes, neighbors and the
//! ipcache entries of its old addresses must all go); a pod whose declared ports change keeps
//! its namespace and veth, only its servers change; a label change touches nothing here (the
//! Plan follows it).
use super::{LabPod, LabState};

/// Pods to remove (as they are now) and to create (as they will be), and pods whose servers
/// change (`ports_changed`). A readdressed pod appears in both `remove` and `create`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub remove: Vec<LabPod>,
    pub create: Vec<LabPod>,
    pub ports_changed: Vec<LabPod>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.create.is_empty() && self.ports_changed.is_empty()
    }
}

/// The difference from `current` to `desired` (both laid out by [`LabState::desired`], so a
/// pod present in both has the same index and names).
pub fn diff(current: &LabState, desired: &LabState) -> Diff {
    let mut d = Diff::default();
    for old in &current.pods {
        match desired.pod(&old.key) {
            None => d.remove.push(old.clone()),
            Some(new) if new.ips != old.ips || new.netns != old.netns => {
                d.remove.push(old.clone());
                d.create.push(new.clone());
            }
            Some(new) if new.ports != old.ports => d.ports_changed.push(new.clone()),
            Some(_) => {}
        }
    }
    for new in &desired.pods {
        if current.pod(&new.key).is_none() {
            d.create.push(new.clone());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::LabName;
    use crate::model::{Cluster, ContainerPort, Pod, Protocol};

    fn pod(key: &str, ip: &str, port: u16) -> Pod {
        let (namespace, name) = key.split_once('/').unwrap();
        Pod {
            namespace: namespace.into(),
            name: name.into(),
            labels: Default::default(),
            ips: vec![ip.parse().unwrap()],
            node: None,
            host_network: false,
            ports: vec![ContainerPort {
                name: None,
                port,
                protocol: Protocol::Tcp,
            }],
        }
    }

    fn cluster(pods: Vec<Pod>) -> Cluster {
        Cluster {
            pods,
            ..Default::default()
        }
    }

    #[test]
    fn pods_keep_their_index_and_new_ones_fill_gaps() {
        let name = LabName::new("t").unwrap();
        let s0 = LabState::layout(
            &name,
            vec![],
            &cluster(vec![
                pod("a/x", "10.0.0.1", 80),
                pod("a/y", "10.0.0.2", 80),
                pod("a/z", "10.0.0.3", 80),
            ]),
        )
        .unwrap();
        assert_eq!(
            s0.pods.iter().map(|p| p.index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        // y goes, w comes (takes y's slot), z changes port, x changes address.
        let s1 = s0
            .desired(&cluster(vec![
                pod("a/x", "10.0.0.9", 80),
                pod("a/w", "10.0.0.4", 80),
                pod("a/z", "10.0.0.3", 81),
            ]))
            .unwrap();
        let idx = |s: &LabState, k: &str| s.pod(k).unwrap().index;
        assert_eq!(idx(&s1, "a/x"), 0);
        assert_eq!(idx(&s1, "a/w"), 1);
        assert_eq!(idx(&s1, "a/z"), 2);
        let d = diff(&s0, &s1);
        let keys = |v: &[LabPod]| v.iter().map(|p| p.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&d.remove), ["a/x", "a/y"]);
        assert_eq!(keys(&d.create), ["a/x", "a/w"]);
        assert_eq!(keys(&d.ports_changed), ["a/z"]);
        assert!(diff(&s1, &s1).is_empty());
    }

    #[test]
    fn two_pods_with_one_address_are_refused() {
        let name = LabName::new("t").unwrap();
        let err = LabState::layout(
            &name,
            vec![],
            &cluster(vec![pod("a/x", "10.0.0.1", 80), pod("b/y", "10.0.0.1", 80)]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("a/x and b/y"), "{err}");
    }
}
