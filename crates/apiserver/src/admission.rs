//! Which admission plugins run (`--enable-admission-plugins`,
//! `--disable-admission-plugins`, upstream's names and defaults), and the pod changes of
//! the ServiceAccount plugin: the `kube-api-access-<x>` projected volume with the
//! account's token, the cluster's CA bundle and the namespace, mounted in every
//! container at [`TOKEN_MOUNT_PATH`].

use serde_json::{json, Value};

/// The admission plugins ferrokube implements, all enabled by default as upstream.
pub const PLUGINS: [&str; 3] = ["DefaultTolerationSeconds", "Priority", "ServiceAccount"];

/// Where the ServiceAccount plugin mounts the account's credentials.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The prefix of the projected volume's name.
const VOLUME_PREFIX: &str = "kube-api-access-";

/// The lifetime the plugin asks tokens for (upstream's "warn-only" bound-token lifetime,
/// which kube-apiserver may extend).
pub const TOKEN_SECONDS: i64 = 3607;

/// The annotation marking a kubelet's mirror of a static pod.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The plugins switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plugins {
    pub default_ingress_class: bool,
    pub default_toleration_seconds: bool,
    pub priority: bool,
    pub service_account: bool,
}

impl Default for Plugins {
    fn default() -> Self {
        Plugins {
            default_ingress_class: true,
            default_toleration_seconds: true,
            priority: true,
            service_account: true,
        }
    }
}

/// Every admission plugin upstream kube-apiserver knows. `--enable-admission-plugins`
/// may name any of them (kubeadm names NodeRestriction, for one); the ones ferrokube does
/// not implement are reported at start and do not run.
pub const UPSTREAM_PLUGINS: [&str; 36] = [
    "AlwaysAdmit",
    "AlwaysDeny",
    "AlwaysPullImages",
    "CertificateApproval",
    "CertificateSigning",
    "CertificateSubjectRestriction",
    "ClusterTrustBundleAttest",
    "DefaultIngressClass",
    "DefaultStorageClass",
    "DefaultTolerationSeconds",
    "DenyServiceExternalIPs",
    "EventRateLimit",
    "ExtendedResourceToleration",
    "ImagePolicyWebhook",
    "LimitPodHardAntiAffinityTopology",
    "LimitRanger",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionWebhook",
    "NamespaceAutoProvision",
    "NamespaceExists",
    "NamespaceLifecycle",
    "NodeRestriction",
    "OwnerReferencesPermissionEnforcement",
    "PersistentVolumeClaimResize",
    "PodNodeSelector",
    "PodSecurity",
    "PodTolerationRestriction",
    "Priority",
    "ResourceQuota",
    "RuntimeClass",
    "ServiceAccount",
    "StorageObjectInUseProtection",
    "TaintNodesByCondition",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionWebhook",
    "PodTopologyLabels",
];

/// Plugins that are part of ferrokube's request path and cannot be switched off
/// (NamespaceLifecycle: no new objects in a missing or terminating namespace).
const BUILT_IN: [&str; 1] = ["NamespaceLifecycle"];

/// Admission flags that cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("{flag} plugin {name:?} is unknown")]
    Unknown { flag: &'static str, name: String },
    #[error("[{}] in enable-admission-plugins and disable-admission-plugins overlapped", .0.join(" "))]
    Overlap(Vec<String>),
}

impl Plugins {
    /// The defaults with the flags' changes: names to enable (every plugin ferrokube
    /// implements is on by default, so these only need to be upstream names) and names
    /// to disable. Also returns a warning for each named plugin that does not run.
    pub fn from_flags(
        enable: &[String],
        disable: &[String],
    ) -> Result<(Plugins, Vec<String>), FlagError> {
        let enable: Vec<&str> = enable
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .collect();
        let disable: Vec<&str> = disable
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .collect();
        for (flag, names) in [
            ("enable-admission-plugins", &enable),
            ("disable-admission-plugins", &disable),
        ] {
            if let Some(n) = names.iter().find(|n| !UPSTREAM_PLUGINS.contains(n)) {
                return Err(FlagError::Unknown {
                    flag,
                    name: n.to_string(),
                });
            }
        }
        let mut overlap: Vec<String> = enable
            .iter()
            .filter(|n| disable.contains(n))
            .map(|n| n.to_string())
            .collect();
        if !overlap.is_empty() {
            overlap.sort();
            overlap.dedup();
            return Err(FlagError::Overlap(overlap));
        }
        let mut warnings: Vec<String> = enable
            .iter()
            .filter(|n| !PLUGINS.contains(n) && !BUILT_IN.contains(n))
            .map(|n| {
                format!("admission plugin {n:?} is not implemented by ferrokube and does not run")
            })
            .collect();
        warnings.extend(disable.iter().filter(|n| BUILT_IN.contains(n)).map(|n| {
            format!("admission plugin {n:?} is built into ferrokube's request path and stays on")
        }));
        let off = |n: &str| disable.contains(&n);
        Ok((
            Plugins {
                default_ingress_class: !off("DefaultIngressClass"),
                default_toleration_seconds: !off("DefaultTolerationSeconds"),
                priority: !off("Priority"),
                service_account: !off("ServiceAccount"),
            },
            warnings,
        ))
    }
}

/// The annotation marking the IngressClass used by Ingresses that name none.
pub const DEFAULT_INGRESS_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// The DefaultIngressClass plugin's choice among IngressClasses: the default one (the
/// newest when several are marked, as upstream), if any.
pub fn default_ingress_class(classes: &[Value]) -> Option<&str> {
    classes
        .iter()
        .filter(|c| {
            c["metadata"]["annotations"][DEFAULT_INGRESS_CLASS_ANNOTATION].as_str() == Some("true")
        })
        .max_by(|a, b| {
            let created = |c: &Value| {
                c["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            };
            let name = |c: &'_ Value| c["metadata"]["name"].as_str().unwrap_or("").to_string();
            created(a)
                .cmp(&created(b))
                .then_with(|| name(b).cmp(&name(a)))
        })
        .and_then(|c| c["metadata"]["name"].as_str())
}

/// Why a mirror pod may not be admitted (upstream's checks: mirror pods reach no
/// credentials).
pub fn mirror_pod_refusal(pod: &Value) -> Option<&'static str> {
    let spec = &pod["spec"];
    if spec["serviceAccountName"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        return Some("a mirror pod may not reference service accounts");
    }
    let volumes = spec["volumes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    // Every volume source that names a secret (upstream's VisitPodSecretNames).
    let secret_volume = volumes.iter().any(|v| {
        v.get("secret").is_some()
            || v["projected"]["sources"]
                .as_array()
                .is_some_and(|s| s.iter().any(|p| p.get("secret").is_some()))
            || v["azureFile"].get("secretName").is_some()
            || v["csi"].get("nodePublishSecretRef").is_some()
            || [
                "cephfs",
                "cinder",
                "flexVolume",
                "rbd",
                "scaleIO",
                "iscsi",
                "storageos",
            ]
            .iter()
            .any(|k| v[*k].get("secretRef").is_some())
    });
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().map(Vec::as_slice).unwrap_or(&[]));
    let secret_env = containers.clone().any(|c| {
        c["env"].as_array().is_some_and(|env| {
            env.iter()
                .any(|e| e["valueFrom"].get("secretKeyRef").is_some())
        }) || c["envFrom"]
            .as_array()
            .is_some_and(|ef| ef.iter().any(|e| e.get("secretRef").is_some()))
    });
    let pull_secrets = spec["imagePullSecrets"]
        .as_array()
        .is_some_and(|s| !s.is_empty());
    if secret_volume || secret_env || pull_secrets {
        return Some("a mirror pod may not reference secrets");
    }
    let token_projection = volumes.iter().any(|v| {
        v["projected"]["sources"]
            .as_array()
            .is_some_and(|s| s.iter().any(|p| p.get("serviceAccountToken").is_some()))
    });
    if token_projection {
        return Some("a mirror pod may not use ServiceAccountToken volume projections");
    }
    None
}

/// Whether the account's token is mounted: the pod's
/// `automountServiceAccountToken` wins, then the account's, else yes.
pub fn should_automount(account: &Value, pod: &Value) -> bool {
    pod["spec"]["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| account["automountServiceAccountToken"].as_bool())
        .unwrap_or(true)
}

/// The ServiceAccount plugin's changes to a pod being created, once its account is
/// known: the token volume (named `kube-api-access-<suffix>` unless the pod already has
/// one) mounted read-only in every container without a mount at [`TOKEN_MOUNT_PATH`]
/// when `automount`, and the account's image pull secrets when the pod has none.
pub fn apply_service_account(pod: &mut Value, account: &Value, automount: bool, suffix: &str) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if automount {
        let existing = spec
            .get("volumes")
            .and_then(Value::as_array)
            .and_then(|vs| {
                vs.iter()
                    .filter_map(|v| v["name"].as_str())
                    .find(|n| n.starts_with(VOLUME_PREFIX))
            })
            .map(String::from);
        let volume = existing
            .clone()
            .unwrap_or_else(|| format!("{VOLUME_PREFIX}{suffix}"));
        let mut needed = false;
        for key in ["initContainers", "containers"] {
            let Some(containers) = spec.get_mut(key).and_then(Value::as_array_mut) else {
                continue;
            };
            for c in containers {
                let mounts = c
                    .as_object_mut()
                    .map(|c| c.entry("volumeMounts").or_insert(json!([])));
                let Some(mounts) = mounts.and_then(Value::as_array_mut) else {
                    continue;
                };
                if mounts
                    .iter()
                    .any(|m| m["mountPath"].as_str() == Some(TOKEN_MOUNT_PATH))
                {
                    continue;
                }
                mounts
                    .push(json!({"name": volume, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH}));
                needed = true;
            }
        }
        if existing.is_none() && needed {
            let volumes = spec.entry("volumes").or_insert(json!([]));
            if let Some(vs) = volumes.as_array_mut() {
                vs.push(token_volume(&volume));
            }
        }
    }
    let has_pull_secrets = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    if !has_pull_secrets {
        if let Some(secrets) = account["imagePullSecrets"]
            .as_array()
            .filter(|s| !s.is_empty())
        {
            spec.insert("imagePullSecrets".into(), json!(secrets));
        }
    }
}

/// The projected volume: the token, `ca.crt` from the `kube-root-ca.crt` ConfigMap and
/// the namespace, mode 0644.
fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[String]) -> Vec<String> {
        v.to_vec()
    }

    #[test]
    fn the_newest_default_ingress_class_is_chosen() {
        let class = |name: &str, created: &str, default: Option<&str>| {
            let mut c = json!({"metadata": {"name": name, "creationTimestamp": created}});
            if let Some(d) = default {
                c["metadata"]["annotations"] = json!({DEFAULT_INGRESS_CLASS_ANNOTATION: d});
            }
            c
        };
        assert_eq!(default_ingress_class(&[]), None);
        let plain = class("plain", "2026-01-01T00:00:00Z", None);
        let off = class("off", "2026-01-03T00:00:00Z", Some("false"));
        assert_eq!(default_ingress_class(&[plain.clone(), off.clone()]), None);
        let old = class("old", "2026-01-01T00:00:00Z", Some("true"));
        let new = class("new", "2026-01-02T00:00:00Z", Some("true"));
        let twin = class("a-twin", "2026-01-02T00:00:00Z", Some("true"));
        assert_eq!(
            default_ingress_class(&[new.clone(), plain, old.clone(), off]),
            Some("new")
        );
        // Created in the same second: the first name wins.
        assert_eq!(default_ingress_class(&[old, new, twin]), Some("a-twin"));
    }

    #[test]
    fn flags_switch_known_plugins_and_refuse_unknown_ones() {
        assert_eq!(
            Plugins::from_flags(&[], &[]).unwrap(),
            (Plugins::default(), vec![])
        );
        let (p, w) = Plugins::from_flags(&[], &names(&["ServiceAccount".into()])).unwrap();
        assert!(!p.service_account && p.priority && p.default_toleration_seconds);
        assert!(w.is_empty());
        let e = Plugins::from_flags(&names(&["NoSuch".into()]), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "enable-admission-plugins plugin \"NoSuch\" is unknown"
        );
        // kubeadm's flag: an upstream plugin ferrokube lacks is accepted with a warning.
        let (p, w) = Plugins::from_flags(&names(&["NodeRestriction".into()]), &[]).unwrap();
        assert_eq!(p, Plugins::default());
        assert_eq!(
            w,
            vec!["admission plugin \"NodeRestriction\" is not implemented by ferrokube and does not run"]
        );
        let e = Plugins::from_flags(
            &names(&["Priority".into(), "ServiceAccount".into()]),
            &names(&["ServiceAccount".into()]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "[ServiceAccount] in enable-admission-plugins and disable-admission-plugins overlapped"
        );
    }

    #[test]
    fn mounts_the_token_volume_in_every_container_once() {
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "i"}],
            "containers": [
                {"name": "a"},
                {"name": "b", "volumeMounts": [{"name": "own", "mountPath": TOKEN_MOUNT_PATH}]},
            ],
            "volumes": [{"name": "own", "emptyDir": {}}],
        }});
        apply_service_account(&mut pod, &json!({}), true, "x2z4q");
        let spec = &pod["spec"];
        assert_eq!(
            spec["initContainers"][0]["volumeMounts"][0],
            json!({"name": "kube-api-access-x2z4q", "readOnly": true, "mountPath": TOKEN_MOUNT_PATH})
        );
        assert_eq!(
            spec["containers"][0]["volumeMounts"][0]["name"],
            "kube-api-access-x2z4q"
        );
        // A container with its own mount at the path keeps it.
        assert_eq!(
            spec["containers"][1]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let vols = spec["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        assert_eq!(vols[1]["projected"]["defaultMode"], 420);
        assert_eq!(
            vols[1]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
        // Admitting again (an existing kube-api-access volume) adds nothing.
        let before = pod.clone();
        apply_service_account(&mut pod, &json!({}), true, "other");
        assert_eq!(pod, before);
    }

    #[test]
    fn automount_follows_pod_then_account() {
        let off = json!({"automountServiceAccountToken": false});
        let on = json!({"automountServiceAccountToken": true});
        assert!(should_automount(&json!({}), &json!({"spec": {}})));
        assert!(!should_automount(&off, &json!({"spec": {}})));
        assert!(should_automount(&off, &json!({"spec": on})));
        assert!(!should_automount(&on, &json!({"spec": off})));
        let mut pod = json!({"spec": {"containers": [{"name": "a"}]}});
        apply_service_account(
            &mut pod,
            &json!({"imagePullSecrets": [{"name": "reg"}]}),
            false,
            "x",
        );
        assert!(pod["spec"]["volumes"].is_null());
        assert!(pod["spec"]["containers"][0]["volumeMounts"].is_null());
        assert_eq!(pod["spec"]["imagePullSecrets"], json!([{"name": "reg"}]));
    }

    #[test]
    fn mirror_pods_reach_no_credentials() {
        let ok = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(mirror_pod_refusal(&ok), None);
        let sa = json!({"spec": {"serviceAccountName": "x"}});
        assert_eq!(
            mirror_pod_refusal(&sa),
            Some("a mirror pod may not reference service accounts")
        );
        let env = json!({"spec": {"containers": [{"name": "a",
            "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}});
        assert_eq!(
            mirror_pod_refusal(&env),
            Some("a mirror pod may not reference secrets")
        );
        for source in [
            json!({"cephfs": {"monitors": ["m"], "secretRef": {"name": "s"}}}),
            json!({"csi": {"driver": "d", "nodePublishSecretRef": {"name": "s"}}}),
            json!({"azureFile": {"secretName": "s", "shareName": "x"}}),
        ] {
            let mut v = source;
            v["name"] = json!("v");
            let pod = json!({"spec": {"volumes": [v]}});
            assert_eq!(
                mirror_pod_refusal(&pod),
                Some("a mirror pod may not reference secrets")
            );
        }
        let token = json!({"spec": {"volumes": [{"name": "t",
            "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}});
        assert_eq!(
            mirror_pod_refusal(&token),
            Some("a mirror pod may not use ServiceAccountToken volume projections")
        );
    }
}
