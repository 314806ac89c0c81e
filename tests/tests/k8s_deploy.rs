//! Every manifest under deploy/ parses strictly with the k8s-openapi types: each document is
//! deserialised into its typed struct and serialised back, and the result must equal the
//! input (an unknown or misspelled field disappears in the round trip and fails the test).
//! Then the properties the deployment relies on are checked on the typed objects.
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn documents(file: &str) -> Vec<Value> {
    let path = deploy_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Parse strictly: the typed round trip must reproduce the document exactly.
fn strict<K: DeserializeOwned + Serialize>(file: &str, doc: &Value) -> K {
    let typed: K = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: does not parse as its kind: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    if &back != doc {
        panic!(
            "{file}: fields lost or changed in the typed round trip (unknown or misspelled fields?)\n\
             input:  {doc:#}\nparsed: {back:#}"
        );
    }
    typed
}

const MANIFESTS: [&str; 6] = [
    "namespace.yaml",
    "serviceaccount.yaml",
    "clusterrole.yaml",
    "clusterrolebinding.yaml",
    "configmap.yaml",
    "daemonset.yaml",
];

#[test]
fn every_manifest_round_trips_through_its_typed_struct() {
    let mut kinds = Vec::new();
    for file in MANIFESTS {
        for doc in documents(file) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            match kind.as_str() {
                "Namespace" => drop(strict::<Namespace>(file, &doc)),
                "ServiceAccount" => drop(strict::<ServiceAccount>(file, &doc)),
                "ClusterRole" => drop(strict::<ClusterRole>(file, &doc)),
                "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(file, &doc)),
                "ConfigMap" => drop(strict::<ConfigMap>(file, &doc)),
                "DaemonSet" => drop(strict::<DaemonSet>(file, &doc)),
                other => panic!("{file}: unexpected kind {other:?}"),
            }
            kinds.push(kind);
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Namespace",
            "ServiceAccount"
        ]
    );
}

#[test]
fn the_strict_check_catches_a_misspelled_field() {
    let mut doc = documents("daemonset.yaml").remove(0);
    doc["spec"]["template"]["spec"]["hostNetwrok"] = Value::Bool(true);
    let r = std::panic::catch_unwind(|| strict::<DaemonSet>("daemonset.yaml", &doc));
    assert!(r.is_err(), "a misspelled field must fail the round trip");
}

#[test]
fn kustomization_lists_every_manifest() {
    let k: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let mut listed: Vec<String> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut want: Vec<String> = MANIFESTS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(k["kind"], "Kustomization");
}

#[test]
fn cluster_role_grants_only_read_access_to_the_watched_resources() {
    let role: ClusterRole = strict("clusterrole.yaml", &documents("clusterrole.yaml")[0]);
    let mut grants = Vec::new();
    for rule in role.rules.unwrap() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        let mut verbs = rule.verbs.clone();
        verbs.sort();
        assert_eq!(verbs, ["get", "list", "watch"], "read-only verbs");
        for g in rule.api_groups.unwrap() {
            for r in rule.resources.clone().unwrap() {
                grants.push(format!("{g}/{r}"));
            }
        }
    }
    grants.sort();
    assert_eq!(
        grants,
        [
            "/namespaces",
            "/pods",
            "/services",
            "discovery.k8s.io/endpointslices",
            "networking.k8s.io/networkpolicies"
        ]
    );
    let binding: ClusterRoleBinding = strict(
        "clusterrolebinding.yaml",
        &documents("clusterrolebinding.yaml")[0],
    );
    assert_eq!(binding.role_ref.name, "netward");
    let sa = &binding.subjects.unwrap()[0];
    assert_eq!(
        (sa.kind.as_str(), sa.name.as_str()),
        ("ServiceAccount", "netward")
    );
    assert_eq!(sa.namespace.as_deref(), Some("netward-system"));
}

#[test]
fn daemonset_runs_on_the_host_network_with_specific_capabilities() {
    let ds: DaemonSet = strict("daemonset.yaml", &documents("daemonset.yaml")[0]);
    let spec = ds.spec;
    let update = spec.update_strategy.unwrap();
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        serde_json::to_value(update.rolling_update.unwrap().max_unavailable).unwrap(),
        serde_json::json!(1)
    );
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("netward"));
    let agent = pod.containers.iter().find(|c| c.name == "agent").unwrap();
    let sc = agent.security_context.clone().unwrap();
    assert_eq!(sc.privileged, Some(false), "the agent is not privileged");
    let mut caps = sc.capabilities.unwrap().add.unwrap();
    caps.sort();
    for needed in ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"] {
        assert!(caps.iter().any(|c| c == needed), "capability {needed}");
    }
    let node = agent
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .unwrap();
    let field = node
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    for (probe, path) in [
        (&agent.liveness_probe, "/healthz"),
        (&agent.readiness_probe, "/readyz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
    }
    let res = agent.resources.as_ref().unwrap();
    assert!(res.requests.as_ref().unwrap().contains_key("cpu"));
    assert!(res.limits.as_ref().unwrap().contains_key("memory"));
    let mounts: Vec<&str> = agent
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(mounts.contains(&"/sys/fs/bpf") && mounts.contains(&"/sys/fs/cgroup"));
    // The settings the ConfigMap passes are options `netward agent` reads from the environment.
    let cm: ConfigMap = strict("configmap.yaml", &documents("configmap.yaml")[0]);
    let cmd =
        <netward::cli::agent::AgentArgs as clap::Args>::augment_args(clap::Command::new("agent"));
    let envs: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for key in cm.data.unwrap().keys() {
        assert!(
            key == "RUST_LOG" || envs.contains(key),
            "configmap key {key} is not an option of netward agent ({envs:?})"
        );
    }
}
