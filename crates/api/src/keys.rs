//! Where objects live in the store: `/registry/<prefix>/<namespace>/<name>` for namespaced
//! resources and `/registry/<prefix>/<name>` for cluster-scoped ones, with upstream's
//! prefixes (so `etcdctl get --prefix /registry/` reads like it does against a real
//! cluster). Custom resources live under `/registry/<group>/<plural>`.

use crate::registry::ResourceInfo;

/// Root of every object key.
pub const ROOT: &str = "/registry/";

/// The key of one object. `namespace` is ignored for cluster-scoped resources.
pub fn object_key(r: &ResourceInfo, namespace: &str, name: &str) -> String {
    if r.namespaced {
        format!("{ROOT}{}/{namespace}/{name}", r.storage_prefix)
    } else {
        format!("{ROOT}{}/{name}", r.storage_prefix)
    }
}

/// The key prefix of a list: every object of the resource, or those in one namespace.
/// It ends in `/`, so that `pods` never matches `podtemplates` and a namespace never
/// matches another that starts with its name.
pub fn list_prefix(r: &ResourceInfo, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if r.namespaced => format!("{ROOT}{}/{ns}/", r.storage_prefix),
        _ => format!("{ROOT}{}/", r.storage_prefix),
    }
}

/// The storage prefix of a custom resource.
pub fn custom_resource_prefix(group: &str, plural: &str) -> String {
    format!("{group}/{plural}")
}

/// The end of the key range covering every key that starts with `prefix` (etcd's
/// `range_end` for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range is open-ended.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;

    fn r(name: &str) -> ResourceInfo {
        *Registry::default().by_name(name)[0]
    }

    #[test]
    fn keys_follow_upstreams_etcd_layout() {
        assert_eq!(
            object_key(&r("pods"), "default", "web"),
            "/registry/pods/default/web"
        );
        assert_eq!(
            object_key(&r("svc"), "default", "kubernetes"),
            "/registry/services/specs/default/kubernetes"
        );
        assert_eq!(
            object_key(&r("ep"), "default", "kubernetes"),
            "/registry/services/endpoints/default/kubernetes"
        );
        assert_eq!(
            object_key(&r("nodes"), "ignored", "n1"),
            "/registry/minions/n1"
        );
        assert_eq!(
            object_key(&r("rc"), "ns", "x"),
            "/registry/controllers/ns/x"
        );
        assert_eq!(object_key(&r("ing"), "ns", "x"), "/registry/ingress/ns/x");
        assert_eq!(
            object_key(&r("deploy"), "ns", "x"),
            "/registry/deployments/ns/x"
        );
        assert_eq!(
            object_key(&r("crd"), "", "foos.example.com"),
            "/registry/apiextensions.k8s.io/customresourcedefinitions/foos.example.com"
        );
        assert_eq!(
            custom_resource_prefix("example.com", "foos"),
            "example.com/foos"
        );
    }

    #[test]
    fn list_prefixes_do_not_overlap() {
        let pods = list_prefix(&r("pods"), None);
        let templates = object_key(&r("podtemplates"), "default", "t");
        assert!(!templates.starts_with(&pods));
        let ns = list_prefix(&r("pods"), Some("kube"));
        assert!(!object_key(&r("pods"), "kube-system", "p").starts_with(&ns));
        let specs = list_prefix(&r("services"), None);
        assert!(!object_key(&r("endpoints"), "default", "e").starts_with(&specs));
        // Cluster-scoped resources ignore the namespace.
        assert_eq!(list_prefix(&r("nodes"), Some("x")), "/registry/minions/");
    }

    #[test]
    fn prefix_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff, 0xff]), vec![0]);
    }
}
