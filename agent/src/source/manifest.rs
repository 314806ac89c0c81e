//! Manifest files -> model: what `kubectl apply -f` would create, read offline.
//!
//! Reads files and directories (recursively, `*.yaml`, `*.yml`, `*.json`, in sorted path
//! order, so results never depend on the file system), multi-document YAML, JSON, and
//! `kind: List` / `*List` wrappers. Namespaces, Pods, NetworkPolicies, Services and
//! EndpointSlices are converted by [`super::convert`]; other kinds are skipped with a notice.
//!
//! Manifests often describe pods that were never scheduled, so a pod without any address gets
//! one from [`LAB_RANGE_V4`], deterministically (sorted by namespace/name, skipping addresses
//! in use), with a notice: `matrix`, `explain` and `lab` then agree on every address.
//! Likewise a Service that would get a cluster IP gets one from
//! [`super::convert::service::LAB_SERVICE_RANGE_V4`], and a Service with a selector and no
//! EndpointSlice in the manifests gets the endpoints the EndpointSlice controller would compute
//! (see [`super::convert::service::complete_for_manifests`]).
//!
//! Origins in messages are `path#N`, N being the 1-based document number in the file, with
//! ` items[i]` appended for list members.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::api::networking::v1 as netv1;
use serde::Deserialize;
use serde_json::Value;

use super::convert::{convert, service, Objects, SourceError, Sourced};
use crate::model::Cluster;

/// `("examples/NAME", contents)`.
macro_rules! example {
    ($name:literal) => {
        (
            concat!("examples/", $name),
            include_str!(concat!("../../../examples/", $name)),
        )
    };
}

/// What a skipped kind's notice says.
const READ_KINDS: &str = "netward reads Namespace, Pod, NetworkPolicy, Service and EndpointSlice";

/// Addresses given to pods that have none (the usual kind/kubeadm pod CIDR).
pub const LAB_RANGE_V4: &str = "10.244.0.0/16";

/// The result of loading manifests.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub cluster: Cluster,
    /// One line each: skipped kinds, duplicates, assigned addresses...
    pub notices: Vec<String>,
    /// Everything wrong with the input (unreadable files, parse errors, invalid objects).
    pub errors: Vec<SourceError>,
    /// Some file or document could not be read at all, so the model misses objects (possibly
    /// policies: results computed from it may be more open than the real cluster).
    pub incomplete: bool,
}

/// Load every manifest under `paths` (files, directories, or `-` for standard input).
pub fn load<P: AsRef<Path>>(paths: &[P]) -> Loaded {
    let mut reader = Reader::default();
    for path in paths {
        let path = path.as_ref();
        if path == Path::new("-") {
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => reader.text("<stdin>", &text, false),
                Err(e) => reader.fail("<stdin>", format!("cannot read: {e}")),
            }
            continue;
        }
        match files(path) {
            Ok(files) => {
                for f in files {
                    reader.file(&f);
                }
            }
            Err(e) => reader.fail(&path.display().to_string(), e),
        }
    }
    reader.finish()
}

/// Load manifests from a string (tests, embedded examples). `origin` names it in messages.
pub fn load_str(origin: &str, text: &str) -> Loaded {
    load_texts(&[(origin, text)])
}

/// Load several in-memory manifests as if they were files, in the given order.
pub fn load_texts(texts: &[(&str, &str)]) -> Loaded {
    let mut reader = Reader::default();
    for (origin, text) in texts {
        reader.text(origin, text, origin.ends_with(".json"));
    }
    reader.finish()
}

/// The bundled `examples/` directory, compiled into the binary so that `netward matrix` and
/// the lab work without any file (a test keeps this list equal to the directory).
pub const EXAMPLES: &[(&str, &str)] = &[
    example!("00-cluster.yaml"),
    example!("10-default-deny.yaml"),
    example!("20-allow-dns.yaml"),
    example!("30-three-tier.yaml"),
    example!("40-monitoring.yaml"),
    example!("50-external-egress.yaml"),
    example!("60-metadata-block.yaml"),
    example!("70-tenant-isolation.yaml"),
    example!("80-orders-postgres.yaml"),
    example!("90-services.yaml"),
];

/// The bundled examples, loaded.
pub fn load_examples() -> Loaded {
    load_texts(EXAMPLES)
}

/// The manifest files a path stands for: itself if a file, else the matching files below it,
/// sorted.
fn files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: cannot list directory: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let p = entry.path();
            // Symlinked directories are not followed (no cycles); symlinked files are read.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(p);
            } else if p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err("no *.yaml, *.yml or *.json files in this directory".into());
    }
    Ok(out)
}

#[derive(Default)]
struct Reader {
    objects: Objects,
    notices: Vec<String>,
    errors: Vec<SourceError>,
    incomplete: bool,
}

impl Reader {
    fn fail(&mut self, origin: &str, message: String) {
        self.incomplete = true;
        self.errors.push(SourceError {
            origin: origin.to_string(),
            object: None,
            field: None,
            message,
        });
    }

    fn file(&mut self, path: &Path) {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let json = path.extension().is_some_and(|e| e == "json");
                self.text(&origin, &text, json);
            }
            Err(e) => self.fail(&origin, format!("cannot read: {e}")),
        }
    }

    fn text(&mut self, origin: &str, text: &str, json: bool) {
        if json {
            // serde_json gives better messages for JSON than the YAML parser would.
            match serde_json::from_str::<Value>(text) {
                Ok(v) => self.document(&format!("{origin}#1"), v),
                Err(e) => self.fail(&format!("{origin}#1"), format!("invalid JSON: {e}")),
            }
            return;
        }
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let doc_origin = format!("{origin}#{}", i + 1);
            match Value::deserialize(doc) {
                Ok(v) => self.document(&doc_origin, v),
                Err(e) => {
                    self.fail(&doc_origin, format!("invalid YAML: {e}"));
                    // The YAML stream cannot be resumed after a syntax error.
                    break;
                }
            }
        }
    }

    fn document(&mut self, origin: &str, v: Value) {
        if v.is_null() {
            return; // empty document, e.g. a trailing `---`
        }
        let Some(obj) = v.as_object() else {
            self.fail(
                origin,
                "expected a Kubernetes object (a mapping with apiVersion and kind)".into(),
            );
            return;
        };
        let text = |key: &str| {
            obj.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (kind, api_version) = (text("kind"), text("apiVersion"));
        if kind.is_empty() || api_version.is_empty() {
            self.fail(origin, "missing apiVersion or kind".into());
            return;
        }
        if kind.ends_with("List") {
            match obj.get("items").map(|i| i.as_array()) {
                Some(Some(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        self.document(&format!("{origin} items[{i}]"), item.clone());
                    }
                }
                Some(None) => self.fail(origin, format!("{kind}: items must be a list")),
                None => {} // an empty list
            }
            return;
        }
        let expected = match kind.as_str() {
            "Namespace" | "Pod" | "Service" => "v1",
            "NetworkPolicy" => "networking.k8s.io/v1",
            "EndpointSlice" => "discovery.k8s.io/v1",
            _ => {
                self.notices.push(format!(
                    "{origin}: skipped {kind} ({api_version}): {READ_KINDS}"
                ));
                return;
            }
        };
        if api_version != expected {
            self.fail(
                origin,
                format!(
                    "{kind} with apiVersion {api_version:?} is not supported; use {expected:?}"
                ),
            );
            return;
        }
        let parsed = match kind.as_str() {
            "Namespace" => serde_json::from_value::<corev1::Namespace>(v)
                .map(|o| self.objects.namespaces.push(Sourced::new(o, origin))),
            "Pod" => serde_json::from_value::<corev1::Pod>(v)
                .map(|o| self.objects.pods.push(Sourced::new(o, origin))),
            "Service" => serde_json::from_value::<corev1::Service>(v)
                .map(|o| self.objects.services.push(Sourced::new(o, origin))),
            "EndpointSlice" => serde_json::from_value::<discoveryv1::EndpointSlice>(v)
                .map(|o| self.objects.endpoint_slices.push(Sourced::new(o, origin))),
            _ => serde_json::from_value::<netv1::NetworkPolicy>(v)
                .map(|o| self.objects.policies.push(Sourced::new(o, origin))),
        };
        if let Err(e) = parsed {
            self.fail(origin, format!("invalid {kind}: {e}"));
        }
    }

    fn finish(self) -> Loaded {
        let converted = convert(&self.objects);
        let mut loaded = Loaded {
            cluster: converted.cluster,
            notices: self.notices,
            errors: self.errors,
            incomplete: self.incomplete,
        };
        loaded.notices.extend(converted.notices);
        loaded.errors.extend(converted.errors);
        // A pod whose address is invalid keeps none: its error is reported, and a made-up
        // address would hide it.
        let bad_address: BTreeSet<String> = loaded
            .errors
            .iter()
            .filter(|e| {
                e.field
                    .as_deref()
                    .is_some_and(|f| f.starts_with("status.podIP"))
            })
            .filter_map(|e| {
                e.object
                    .as_deref()?
                    .strip_prefix("Pod ")
                    .map(str::to_string)
            })
            .collect();
        assign_lab_addresses(&mut loaded.cluster, &bad_address, &mut loaded.notices);
        // After pods have addresses: selector endpoints need them.
        service::complete_for_manifests(
            &mut loaded.cluster,
            &converted.service_drafts,
            &mut loaded.notices,
        );
        for ns in loaded.cluster.services.iter().map(|s| s.namespace.clone()) {
            loaded
                .cluster
                .namespaces
                .entry(ns.clone())
                .or_insert_with(|| super::convert::convert_namespace_named(&ns));
        }
        loaded
    }
}

/// Give every pod without an address (hostNetwork pods and pods in `skip` excepted) the next
/// free address of [`LAB_RANGE_V4`], in (namespace, name) order.
fn assign_lab_addresses(cluster: &mut Cluster, skip: &BTreeSet<String>, notices: &mut Vec<String>) {
    let range: Ipv4Net = LAB_RANGE_V4.parse().expect("valid lab range");
    let used: BTreeSet<IpAddr> = cluster.pods.iter().flat_map(|p| p.ips.clone()).collect();
    let mut free = range.hosts().filter(|ip| !used.contains(&IpAddr::V4(*ip)));
    for pod in cluster
        .pods
        .iter_mut()
        .filter(|p| p.ips.is_empty() && !p.host_network && !skip.contains(&p.key()))
    {
        match free.next() {
            Some(ip) => {
                pod.ips.push(IpAddr::V4(ip));
                notices.push(format!(
                    "Pod {}: no status.podIP; assigned {ip} from the lab range {LAB_RANGE_V4}",
                    pod.key()
                ));
            }
            None => notices.push(format!(
                "Pod {}: no status.podIP and the lab range {LAB_RANGE_V4} is exhausted; the pod has no address",
                pod.key()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str =
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n  labels: {env: prod}\n";

    fn pod(name: &str, ip: Option<&str>) -> String {
        let status = ip
            .map(|ip| format!("status:\n  podIP: {ip}\n"))
            .unwrap_or_default();
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: prod\nspec:\n  containers: []\n{status}")
    }

    /// A fresh directory under the system temp dir.
    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("netward-manifest-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn multi_document_yaml_with_other_kinds_and_empty_documents() {
        let text = format!(
            "{NS}---\n{}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\n---\n",
            pod("a", Some("10.0.0.1"))
        );
        let l = load_str("x.yaml", &text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert!(!l.incomplete);
        assert_eq!(l.cluster.pods.len(), 1);
        assert_eq!(l.cluster.namespaces["prod"].labels["env"], "prod");
        assert_eq!(l.notices, vec!["x.yaml#3: skipped Deployment (apps/v1): netward reads Namespace, Pod, NetworkPolicy, Service and EndpointSlice"]);
    }

    #[test]
    fn lists_and_json() {
        let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "prod"}, "status": {"podIP": "10.0.0.1"}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": "prod"}, "spec": {"podSelector": {}}}
        ]}"#;
        let l = load_str("x.json", json);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(l.cluster.pods[0].key(), "prod/a");
        assert_eq!(l.cluster.policies[0].origin, "x.json#1 items[1]");
        let yaml = "apiVersion: v1\nkind: PodList\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: b, namespace: prod}\n";
        let l = load_str("y.yaml", yaml);
        assert_eq!(l.cluster.pods[0].key(), "prod/b");
    }

    #[test]
    fn parse_errors_name_file_and_document() {
        let l = load_str(
            "bad.yaml",
            &format!("{NS}---\nkind: Pod\nmetadata: [unclosed\n"),
        );
        assert!(l.incomplete);
        assert_eq!(l.errors.len(), 1);
        assert_eq!(l.errors[0].origin, "bad.yaml#2");
        assert!(
            l.errors[0].message.contains("invalid YAML"),
            "{}",
            l.errors[0]
        );
        // The namespace before the bad document is still read.
        assert!(l.cluster.namespaces.contains_key("prod"));

        let l = load_str("bad.json", "{\"kind\": ");
        assert!(l.incomplete);
        assert_eq!(l.errors[0].origin, "bad.json#1");

        let l = load_str(
            "t.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: 5}\n",
        );
        assert!(l.incomplete);
        assert!(
            l.errors[0].message.starts_with("invalid Pod"),
            "{}",
            l.errors[0]
        );
    }

    #[test]
    fn wrong_api_version_and_missing_kind_are_errors() {
        let l = load_str("a.yaml", "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: x}\n---\nfoo: bar\n---\n- 1\n");
        assert_eq!(l.errors.len(), 3, "{:?}", l.errors);
        assert!(l.errors[0].message.contains("networking.k8s.io/v1"));
        assert_eq!(l.errors[1].origin, "a.yaml#2");
        assert_eq!(l.errors[2].origin, "a.yaml#3");
        assert!(l.incomplete);
    }

    #[test]
    fn validation_errors_do_not_make_the_load_incomplete() {
        let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 0}]\n";
        let l = load_str("np.yaml", np);
        assert!(!l.incomplete);
        assert_eq!(l.errors.len(), 1);
        assert_eq!(
            l.errors[0]
                .to_string()
                .split(": ")
                .take(3)
                .collect::<Vec<_>>(),
            [
                "np.yaml#1",
                "NetworkPolicy prod/p",
                "spec.ingress[0].ports[0].port"
            ]
        );
    }

    #[test]
    fn pods_without_ip_get_lab_addresses_deterministically() {
        let text = [pod("c", None), pod("a", Some("10.244.0.1")), pod("b", None), "apiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: prod}\nspec: {hostNetwork: true, containers: []}\n".to_string()]
            .join("---\n");
        let l = load_str("p.yaml", &text);
        let ips: Vec<String> = l
            .cluster
            .pods
            .iter()
            .map(|p| format!("{}={:?}", p.name, p.ips))
            .collect();
        assert_eq!(
            ips,
            ["a=[10.244.0.1]", "b=[10.244.0.2]", "c=[10.244.0.3]", "h=[]"]
        );
        assert!(l.notices.iter().any(|n| {
            n == "Pod prod/b: no status.podIP; assigned 10.244.0.2 from the lab range 10.244.0.0/16"
        }));
    }

    #[test]
    fn directories_are_walked_recursively_in_sorted_order() {
        let dir = tempdir("walk");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("b.yaml"), pod("x", Some("10.0.0.2"))).unwrap();
        std::fs::write(dir.join("a.yml"), pod("x", Some("10.0.0.1"))).unwrap();
        std::fs::write(
            dir.join("sub/c.json"),
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"other"}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("notes.md"), "not a manifest").unwrap();
        let l = load(&[&dir]);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        // b.yaml is read after a.yml, so its definition of prod/x wins.
        assert_eq!(
            l.cluster.pods[0].ips,
            vec!["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        assert!(l.notices.iter().any(|n| n.contains("defined again")));
        assert!(l.cluster.namespaces.contains_key("other"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn embedded_examples_are_the_examples_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let on_disk: Vec<(String, String)> = files(Path::new(dir))
            .unwrap()
            .iter()
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                (
                    format!("examples/{name}"),
                    std::fs::read_to_string(p).unwrap(),
                )
            })
            .collect();
        let embedded: Vec<(String, String)> = EXAMPLES
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        assert_eq!(embedded, on_disk, "update EXAMPLES in manifest.rs");
        let a = load_examples();
        let b = load(&[dir]);
        assert_eq!(a.cluster.pods, b.cluster.pods);
        assert_eq!(a.cluster.namespaces, b.cluster.namespaces);
        assert_eq!(a.cluster.policies.len(), b.cluster.policies.len());
    }

    #[test]
    fn bundled_examples_load_cleanly() {
        let l = load(&[concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")]);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert!(l.notices.is_empty(), "{:?}", l.notices);
        assert_eq!(l.cluster.pods.len(), 12);
        assert_eq!(l.cluster.namespaces.len(), 7);
        assert!(l.cluster.pods.iter().all(|p| p.ips.len() == 1));
        assert!(l.cluster.policies.iter().all(|p| p.errors.is_empty()));
    }

    #[test]
    fn missing_path_and_empty_directory_are_errors() {
        let l = load(&["/nonexistent/netward.yaml"]);
        assert!(l.incomplete);
        assert!(l.errors[0]
            .to_string()
            .starts_with("/nonexistent/netward.yaml: cannot read"));
        let dir = tempdir("empty");
        let l = load(&[&dir]);
        assert!(l.incomplete);
        assert!(l.errors[0].message.contains("no *.yaml"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
