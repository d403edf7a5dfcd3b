//! The built-in resources the API server serves, as upstream kube-apiserver describes them
//! in discovery: group/version, kind, plural and singular names, scope, short names,
//! categories, verbs, subresources, and the storage prefix.

/// Verbs of an ordinary resource.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Namespaces cannot be deleted as a collection.
const NAMESPACE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// One resource in one group/version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group; empty for the core ("legacy") group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// Lower-case plural, as in URLs (`pods`).
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub subresources: &'static [&'static str],
    /// Where objects live under `/registry/` (upstream's etcd layout).
    pub storage_prefix: &'static str,
}

impl ResourceInfo {
    /// `v1` for the core group, `apps/v1` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `deployments.apps`, as in upstream messages (`deployments.apps "x" not found`).
    pub fn qualified_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// Table row with upstream's defaults: all verbs, storage under the plural name.
#[allow(clippy::too_many_arguments)] // one positional row per resource reads best as a table
const fn res(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
) -> ResourceInfo {
    ResourceInfo {
        group,
        version,
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        categories,
        verbs: ALL_VERBS,
        subresources,
        storage_prefix: plural,
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];
const STATUS: &[&str] = &["status"];
const STATUS_SCALE: &[&str] = &["scale", "status"];

/// Every built-in resource, in discovery order within each group.
pub static BUILTIN: &[ResourceInfo] = &[
    // core/v1
    res(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        NONE,
        NONE,
    ),
    ResourceInfo {
        storage_prefix: "services/endpoints",
        ..res(
            "",
            "v1",
            "Endpoints",
            "endpoints",
            "endpoints",
            true,
            &["ep"],
            NONE,
            NONE,
        )
    },
    res(
        "",
        "v1",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        NONE,
        NONE,
    ),
    res(
        "",
        "v1",
        "LimitRange",
        "limitranges",
        "limitrange",
        true,
        &["limits"],
        NONE,
        NONE,
    ),
    ResourceInfo {
        verbs: NAMESPACE_VERBS,
        ..res(
            "",
            "v1",
            "Namespace",
            "namespaces",
            "namespace",
            false,
            &["ns"],
            NONE,
            &["finalize", "status"],
        )
    },
    ResourceInfo {
        storage_prefix: "minions",
        ..res(
            "",
            "v1",
            "Node",
            "nodes",
            "node",
            false,
            &["no"],
            NONE,
            &["proxy", "status"],
        )
    },
    res(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        true,
        &["pvc"],
        NONE,
        STATUS,
    ),
    res(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        false,
        &["pv"],
        NONE,
        STATUS,
    ),
    res(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
        ALL,
        &[
            "attach",
            "binding",
            "ephemeralcontainers",
            "eviction",
            "exec",
            "log",
            "portforward",
            "proxy",
            "status",
        ],
    ),
    res(
        "",
        "v1",
        "PodTemplate",
        "podtemplates",
        "podtemplate",
        true,
        NONE,
        NONE,
        NONE,
    ),
    ResourceInfo {
        storage_prefix: "controllers",
        ..res(
            "",
            "v1",
            "ReplicationController",
            "replicationcontrollers",
            "replicationcontroller",
            true,
            &["rc"],
            ALL,
            STATUS_SCALE,
        )
    },
    res(
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        "resourcequota",
        true,
        &["quota"],
        NONE,
        STATUS,
    ),
    res(
        "", "v1", "Secret", "secrets", "secret", true, NONE, NONE, NONE,
    ),
    res(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        NONE,
        &["token"],
    ),
    ResourceInfo {
        storage_prefix: "services/specs",
        ..res(
            "",
            "v1",
            "Service",
            "services",
            "service",
            true,
            &["svc"],
            ALL,
            &["proxy", "status"],
        )
    },
    // apps/v1
    res(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        true,
        NONE,
        NONE,
        NONE,
    ),
    res(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        true,
        &["ds"],
        ALL,
        STATUS,
    ),
    res(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        ALL,
        STATUS_SCALE,
    ),
    res(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        ALL,
        STATUS_SCALE,
    ),
    res(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        true,
        &["sts"],
        ALL,
        STATUS_SCALE,
    ),
    // autoscaling/v2
    res(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        true,
        &["hpa"],
        ALL,
        STATUS,
    ),
    // autoscaling/v1 (the same objects, converted: `ferrokube_api::hpa`)
    res(
        "autoscaling",
        "v1",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        true,
        &["hpa"],
        ALL,
        STATUS,
    ),
    // batch/v1
    res(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        "cronjob",
        true,
        &["cj"],
        ALL,
        STATUS,
    ),
    res("batch", "v1", "Job", "jobs", "job", true, NONE, ALL, STATUS),
    // certificates.k8s.io/v1
    res(
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        "certificatesigningrequest",
        false,
        &["csr"],
        NONE,
        &["approval", "status"],
    ),
    // coordination.k8s.io/v1
    res(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        true,
        NONE,
        NONE,
        NONE,
    ),
    // discovery.k8s.io/v1
    res(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        NONE,
        NONE,
        NONE,
    ),
    // events.k8s.io/v1 (the same objects as core events)
    res(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        NONE,
        NONE,
    ),
    // networking.k8s.io/v1
    res(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        "ingressclass",
        false,
        NONE,
        NONE,
        NONE,
    ),
    ResourceInfo {
        storage_prefix: "ingress",
        ..res(
            "networking.k8s.io",
            "v1",
            "Ingress",
            "ingresses",
            "ingress",
            true,
            &["ing"],
            NONE,
            STATUS,
        )
    },
    res(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        true,
        &["netpol"],
        NONE,
        NONE,
    ),
    // policy/v1
    res(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        true,
        &["pdb"],
        NONE,
        STATUS,
    ),
    // rbac.authorization.k8s.io/v1
    res(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        NONE,
        NONE,
        NONE,
    ),
    res(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
        NONE,
        NONE,
        NONE,
    ),
    res(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
        NONE,
        NONE,
        NONE,
    ),
    res(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        "role",
        true,
        NONE,
        NONE,
        NONE,
    ),
    // scheduling.k8s.io/v1
    res(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        "priorityclass",
        false,
        &["pc"],
        NONE,
        NONE,
    ),
    // storage.k8s.io/v1
    res(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        "storageclass",
        false,
        &["sc"],
        NONE,
        NONE,
    ),
    // apiextensions.k8s.io/v1
    ResourceInfo {
        storage_prefix: "apiextensions.k8s.io/customresourcedefinitions",
        ..res(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            "customresourcedefinition",
            false,
            &["crd", "crds"],
            &["api-extensions"],
            STATUS,
        )
    },
    // metrics.k8s.io/v1beta1: resource usage read from the kubelets, never stored (what
    // metrics-server serves upstream through the aggregation layer).
    metrics("NodeMetrics", "nodes", false),
    metrics("PodMetrics", "pods", true),
];

/// The group of the resource metrics API (`kubectl top`).
pub const METRICS_GROUP: &str = "metrics.k8s.io";

/// A resource of the metrics API: get and list only, nothing stored.
const fn metrics(kind: &'static str, plural: &'static str, namespaced: bool) -> ResourceInfo {
    ResourceInfo {
        verbs: &["get", "list"],
        storage_prefix: "",
        ..res(
            METRICS_GROUP,
            "v1beta1",
            kind,
            plural,
            "",
            namespaced,
            NONE,
            NONE,
            NONE,
        )
    }
}

/// A built-in resource by group and plural; panics on a name that is not built in
/// (callers name resources of their own code).
pub fn builtin(group: &str, plural: &str) -> ResourceInfo {
    *BUILTIN
        .iter()
        .find(|r| r.group == group && r.plural == plural)
        .unwrap_or_else(|| panic!("{plural}.{group} is not a built-in resource"))
}

/// A `&'static str` for a name learned at run time (custom resources), stored once per
/// distinct name.
pub fn intern(s: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .expect("intern lock");
    if let Some(n) = names.get(s) {
        return n;
    }
    let n: &'static str = Box::leak(s.to_string().into_boxed_str());
    names.insert(n);
    n
}

/// Looks resources up the ways clients name them.
#[derive(Debug, Clone)]
pub struct Registry {
    resources: Vec<ResourceInfo>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            resources: BUILTIN.to_vec(),
        }
    }
}

impl Registry {
    /// The built-in resources plus `custom` ones (served custom resource versions).
    pub fn with_custom(custom: impl IntoIterator<Item = ResourceInfo>) -> Registry {
        let mut resources = BUILTIN.to_vec();
        resources.extend(custom);
        Registry { resources }
    }

    /// All resources, in discovery order.
    pub fn resources(&self) -> &[ResourceInfo] {
        &self.resources
    }

    /// The resource served at `/apis/<group>/<version>/<plural>` (or `/api/v1/<plural>`).
    pub fn by_path(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceInfo> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// The resource for a kind in a group/version (what a manifest's `apiVersion`/`kind`
    /// names).
    pub fn by_kind(&self, group: &str, version: &str, kind: &str) -> Option<&ResourceInfo> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
    }

    /// Resources that a plural, singular or short name (as typed after `kubectl get`)
    /// names, core group first (kubectl resolves `ev` to core events before
    /// events.k8s.io ones).
    pub fn by_name(&self, name: &str) -> Vec<&ResourceInfo> {
        let name = name.to_ascii_lowercase();
        self.resources
            .iter()
            .filter(|r| {
                r.plural == name || r.singular == name || r.short_names.contains(&name.as_str())
            })
            .collect()
    }

    /// Resources in a category (`kubectl get all`).
    pub fn in_category(&self, category: &str) -> Vec<&ResourceInfo> {
        self.resources
            .iter()
            .filter(|r| r.categories.contains(&category))
            .collect()
    }

    /// The group/versions served, core first, each once, in discovery order.
    pub fn group_versions(&self) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<(&'static str, &'static str)> = Vec::new();
        for r in &self.resources {
            if !out.contains(&(r.group, r.version)) {
                out.push((r.group, r.version));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_group_version() {
        let reg = Registry::default();
        for (i, a) in reg.resources().iter().enumerate() {
            for b in &reg.resources()[i + 1..] {
                let same_gv = a.group == b.group && a.version == b.version;
                assert!(!(same_gv && a.plural == b.plural), "{} twice", a.plural);
                assert!(!(same_gv && a.kind == b.kind), "{} twice", a.kind);
            }
            assert_eq!(a.plural, a.plural.to_ascii_lowercase());
        }
    }

    #[test]
    fn lookups_resolve_like_kubectl() {
        let reg = Registry::default();
        let po = reg.by_name("po");
        assert_eq!(po.len(), 1);
        assert_eq!(po[0].kind, "Pod");
        assert_eq!(reg.by_name("deploy")[0].api_version(), "apps/v1");
        assert_eq!(
            reg.by_name("Deployment")[0].qualified_name(),
            "deployments.apps"
        );
        // Core events come before events.k8s.io events.
        let ev = reg.by_name("ev");
        assert_eq!((ev[0].group, ev[1].group), ("", "events.k8s.io"));
        assert_eq!(reg.by_kind("", "v1", "Service").unwrap().plural, "services");
        assert!(reg.by_path("apps", "v1", "pods").is_none());
        assert!(!reg.by_name("namespaces")[0]
            .verbs
            .contains(&"deletecollection"));
        assert!(reg.by_name("crd")[0].short_names.contains(&"crds"));
    }

    #[test]
    fn category_all_is_upstreams() {
        let reg = Registry::default();
        let mut all: Vec<&str> = reg.in_category("all").iter().map(|r| r.plural).collect();
        all.sort_unstable();
        // (HorizontalPodAutoscalers are served in two versions.)
        all.dedup();
        assert_eq!(
            all,
            [
                "cronjobs",
                "daemonsets",
                "deployments",
                "horizontalpodautoscalers",
                "jobs",
                "pods",
                "replicasets",
                "replicationcontrollers",
                "services",
                "statefulsets"
            ]
        );
    }

    #[test]
    fn group_versions_start_with_core() {
        let gvs = Registry::default().group_versions();
        assert_eq!(gvs[0], ("", "v1"));
        assert!(gvs.contains(&("apps", "v1")));
        assert_eq!(gvs.iter().filter(|g| g.0 == "apps").count(), 1);
    }
}
