//! Static pods: pod manifests in the kubelet's `staticPodPath`, run by this kubelet
//! whatever the API says, each shown in the API as a mirror pod. As upstream: a static
//! pod is named `<name>-<node>`, its uid is a hash of the manifest and the node (so an
//! edited manifest is a new pod, and the old one stops), and its mirror carries the
//! `kubernetes.io/config.mirror` annotation and is re-created when someone deletes it.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The annotations upstream puts on static and mirror pods.
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

/// Whether an API pod is a mirror of a static pod.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CONFIG_MIRROR))
}

/// Reads the manifests in `dir` (`.yaml`, `.yml`, `.json`; others and hidden files are
/// ignored) as pods for `node`. A manifest that does not parse is skipped with a warning.
pub fn read(dir: &Path, node: &str) -> Vec<Pod> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        if name.starts_with('.') || !matches!(ext, "yaml" | "yml" | "json") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match parse(&text, node) {
            Ok(p) => out.push(p),
            Err(e) => tracing::warn!(manifest = %path.display(), "static pod manifest: {e}"),
        }
    }
    out
}

/// One manifest as this node's static pod.
pub fn parse(text: &str, node: &str) -> Result<Pod, String> {
    let mut v: Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    if v.get("kind").and_then(Value::as_str) != Some("Pod") {
        return Err("the manifest is not a Pod".into());
    }
    let base = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or("the manifest has no metadata.name")?
        .to_string();
    ferrokube_api::defaults::apply("Pod", &mut v);
    let hash = {
        let d = Sha256::digest(format!("{node}\n{text}").as_bytes());
        d.iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let meta = v["metadata"]
        .as_object_mut()
        .ok_or("metadata is not an object")?;
    meta.insert("name".into(), Value::String(format!("{base}-{node}")));
    if meta
        .get("namespace")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        meta.insert("namespace".into(), "default".into());
    }
    meta.insert("uid".into(), Value::String(hash.clone()));
    let ann = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(a) = ann.as_object_mut() {
        a.insert(CONFIG_SOURCE.into(), "file".into());
        a.insert(CONFIG_HASH.into(), Value::String(hash));
    }
    v["spec"]["nodeName"] = Value::String(node.into());
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// The mirror pod of a static pod: the same pod for the API, marked as a mirror.
pub fn mirror_of(pod: &Pod) -> Pod {
    let mut m = pod.clone();
    let hash = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_HASH).cloned())
        .unwrap_or_default();
    m.metadata.uid = None;
    m.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CONFIG_MIRROR.into(), hash);
    m.status = None;
    m
}

/// The static pod's hash (its uid).
pub fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(CONFIG_HASH)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_node_pods() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n";
        let p = parse(text, "node-1").unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            p.spec.as_ref().unwrap().node_name.as_deref(),
            Some("node-1")
        );
        assert_eq!(
            p.spec.as_ref().unwrap().restart_policy.as_deref(),
            Some("Always")
        );
        let uid = p.metadata.uid.clone().unwrap();
        assert_eq!(hash_of(&p), Some(uid.as_str()));
        // An edited manifest is another pod.
        let edited = parse(&text.replace("busybox", "busybox:1"), "node-1").unwrap();
        assert_ne!(edited.metadata.uid, p.metadata.uid);
        let m = mirror_of(&p);
        assert!(is_mirror(&m) && m.metadata.uid.is_none());
        assert!(parse("kind: Service\nmetadata: {name: x}\n", "n").is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.yaml"), text).unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), text).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert_eq!(read(dir.path(), "node-1").len(), 1);
    }
}
