//! Defaulting as upstream's `SetDefaults_*` functions do it for the built-in kinds: the
//! fields a user leaves out and reads back filled in (`restartPolicy: Always`,
//! `imagePullPolicy`, `type: ClusterIP`, a Deployment's rolling-update strategy, ...).
//! Values that need the cluster (a Service's cluster IP, a Job's selector) are filled in
//! by the API server, not here.

use serde_json::{json, Map, Value};

/// Sets `obj[key]` to `value` unless it is already present and not null.
fn default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    match obj.get(key) {
        Some(v) if !v.is_null() => {}
        _ => {
            obj.insert(key.to_string(), value);
        }
    }
}

/// The object at `obj[key]`, created empty when absent.
fn object<'a>(obj: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    default(obj, key, json!({}));
    obj.get_mut(key)?.as_object_mut()
}

fn each_object<'a>(
    obj: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    obj.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// Fills in upstream's defaults for an object of `kind` (in the kind's only served
/// version). Unknown kinds are left alone.
pub fn apply(kind: &str, obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    match kind {
        "Pod" => {
            if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
                pod_spec(spec);
            }
        }
        "PodTemplate" => template(o, "template"),
        "ReplicationController" => {
            let Some(spec) = object(o, "spec") else {
                return;
            };
            // The selector and the controller's labels default to the template's labels.
            let labels = spec
                .get("template")
                .and_then(|t| t.pointer("/metadata/labels"))
                .cloned();
            if let Some(labels) = labels {
                default(spec, "selector", labels.clone());
                if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                    default(meta, "labels", labels);
                }
            }
            let spec = object(o, "spec").expect("just made");
            default(spec, "replicas", json!(1));
            default(spec, "minReadySeconds", json!(0));
            template(spec, "template");
        }
        "ReplicaSet" => {
            let Some(spec) = object(o, "spec") else {
                return;
            };
            default(spec, "replicas", json!(1));
            template(spec, "template");
        }
        "Deployment" => {
            let Some(spec) = object(o, "spec") else {
                return;
            };
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = object(spec, "strategy").expect("just made");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                let ru = object(strategy, "rollingUpdate").expect("just made");
                default(ru, "maxUnavailable", json!("25%"));
                default(ru, "maxSurge", json!("25%"));
            }
            template(spec, "template");
        }
        "DaemonSet" => {
            let Some(spec) = object(o, "spec") else {
                return;
            };
            default(spec, "revisionHistoryLimit", json!(10));
            let strategy = object(spec, "updateStrategy").expect("just made");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                let ru = object(strategy, "rollingUpdate").expect("just made");
                default(ru, "maxUnavailable", json!(1));
                default(ru, "maxSurge", json!(0));
            }
            template(spec, "template");
        }
        "StatefulSet" => {
            let Some(spec) = object(o, "spec") else {
                return;
            };
            default(spec, "replicas", json!(1));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            default(spec, "revisionHistoryLimit", json!(10));
            let strategy = object(spec, "updateStrategy").expect("just made");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                let ru = object(strategy, "rollingUpdate").expect("just made");
                default(ru, "partition", json!(0));
            }
            let retention = object(spec, "persistentVolumeClaimRetentionPolicy").expect("made");
            default(retention, "whenDeleted", json!("Retain"));
            default(retention, "whenScaled", json!("Retain"));
            for claim in each_object(spec, "volumeClaimTemplates") {
                if let Some(cs) = object(claim, "spec") {
                    default(cs, "volumeMode", json!("Filesystem"));
                }
                default(claim, "status", json!({"phase": "Pending"}));
            }
            template(spec, "template");
        }
        "Job" => {
            if let Some(spec) = object(o, "spec") {
                job_spec(spec);
            }
        }
        "CronJob" => {
            let Some(spec) = object(o, "spec") else {
                return;
            };
            default(spec, "concurrencyPolicy", json!("Allow"));
            default(spec, "suspend", json!(false));
            default(spec, "successfulJobsHistoryLimit", json!(3));
            default(spec, "failedJobsHistoryLimit", json!(1));
            let jt = object(spec, "jobTemplate").expect("just made");
            if let Some(js) = object(jt, "spec") {
                job_spec(js);
            }
        }
        "Service" => {
            if let Some(spec) = object(o, "spec") {
                service_spec(spec);
            }
        }
        "Namespace" => {
            let spec = object(o, "spec").expect("just made");
            default(spec, "finalizers", json!(["kubernetes"]));
            let status = object(o, "status").expect("just made");
            default(status, "phase", json!("Active"));
        }
        "Secret" => default(o, "type", json!("Opaque")),
        "PersistentVolumeClaim" => {
            if let Some(spec) = object(o, "spec") {
                default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        "PersistentVolume" => {
            if let Some(spec) = object(o, "spec") {
                default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
                default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        "PriorityClass" => default(o, "preemptionPolicy", json!("PreemptLowerPriority")),
        "StorageClass" => {
            default(o, "reclaimPolicy", json!("Delete"));
            default(o, "volumeBindingMode", json!("Immediate"));
        }
        "HorizontalPodAutoscaler" => {
            if let Some(spec) = object(o, "spec") {
                default(spec, "minReplicas", json!(1));
                // autoscaling/v2: no metrics means 80% CPU utilization.
                if spec
                    .get("metrics")
                    .and_then(Value::as_array)
                    .is_none_or(|m| m.is_empty())
                {
                    spec.insert(
                        "metrics".into(),
                        json!([{"type": "Resource", "resource": {"name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 80}}}]),
                    );
                }
                // A behavior given is completed with upstream's defaults.
                if let Some(b) = spec.get_mut("behavior").and_then(Value::as_object_mut) {
                    // (scaleDown's window stays unset: the controller's
                    // --horizontal-pod-autoscaler-downscale-stabilization applies.)
                    for (dir, window, policies) in [
                        (
                            "scaleUp",
                            Some(0),
                            json!([{"type": "Pods", "value": 4, "periodSeconds": 15},
                                   {"type": "Percent", "value": 100, "periodSeconds": 15}]),
                        ),
                        (
                            "scaleDown",
                            None,
                            json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
                        ),
                    ] {
                        let rules = b.entry(dir).or_insert_with(|| json!({})).as_object_mut();
                        if let Some(r) = rules {
                            if let Some(w) = window {
                                default(r, "stabilizationWindowSeconds", json!(w));
                            }
                            default(r, "selectPolicy", json!("Max"));
                            default(r, "policies", policies);
                        }
                    }
                }
            }
        }
        "NetworkPolicy" => {
            if let Some(spec) = object(o, "spec") {
                let egress = spec.contains_key("egress");
                default(
                    spec,
                    "policyTypes",
                    if egress {
                        json!(["Ingress", "Egress"])
                    } else {
                        json!(["Ingress"])
                    },
                );
                for rule in each_object(spec, "ingress") {
                    for p in each_object(rule, "ports") {
                        default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
        _ => {}
    }
}

fn template(spec: &mut Map<String, Value>, key: &str) {
    if let Some(t) = spec.get_mut(key).and_then(Value::as_object_mut) {
        if let Some(ps) = t.get_mut("spec").and_then(Value::as_object_mut) {
            pod_spec(ps);
        }
    }
}

fn job_spec(spec: &mut Map<String, Value>) {
    let (has_c, has_p) = (
        spec.get("completions").is_some_and(|v| !v.is_null()),
        spec.get("parallelism").is_some_and(|v| !v.is_null()),
    );
    if !has_c && !has_p {
        spec.insert("completions".into(), json!(1));
    }
    default(spec, "parallelism", json!(1));
    default(spec, "backoffLimit", json!(6));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    if spec.get("podFailurePolicy").is_none() {
        default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    } else {
        default(spec, "podReplacementPolicy", json!("Failed"));
    }
    template(spec, "template");
}

/// Defaults of a pod spec, shared by pods and every workload's template.
pub fn pod_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    let host_network = spec.get("hostNetwork") == Some(&json!(true));
    for key in ["initContainers", "containers", "ephemeralContainers"] {
        for c in each_object(spec, key) {
            container(c, host_network);
        }
    }
    for v in each_object(spec, "volumes") {
        volume(v);
    }
}

fn container(c: &mut Map<String, Value>, host_network: bool) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    default(c, "imagePullPolicy", json!(pull_policy(image)));
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    for p in each_object(c, "ports") {
        default(p, "protocol", json!("TCP"));
        if host_network {
            if let Some(cp) = p.get("containerPort").cloned() {
                default(p, "hostPort", cp);
            }
        }
    }
    for e in each_object(c, "env") {
        if let Some(fr) = e
            .get_mut("valueFrom")
            .and_then(|v| v.get_mut("fieldRef"))
            .and_then(Value::as_object_mut)
        {
            default(fr, "apiVersion", json!("v1"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            default(p, "timeoutSeconds", json!(1));
            default(p, "periodSeconds", json!(10));
            default(p, "successThreshold", json!(1));
            default(p, "failureThreshold", json!(3));
            handler(p);
        }
    }
    if let Some(lc) = c.get_mut("lifecycle").and_then(Value::as_object_mut) {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = lc.get_mut(hook).and_then(Value::as_object_mut) {
                handler(h);
            }
        }
    }
}

fn handler(h: &mut Map<String, Value>) {
    if let Some(g) = h.get_mut("httpGet").and_then(Value::as_object_mut) {
        default(g, "path", json!("/"));
        default(g, "scheme", json!("HTTP"));
    }
    if let Some(g) = h.get_mut("grpc").and_then(Value::as_object_mut) {
        default(g, "service", json!(""));
    }
}

fn volume(v: &mut Map<String, Value>) {
    for (source, mode) in [("configMap", 420), ("secret", 420), ("downwardAPI", 420)] {
        if let Some(s) = v.get_mut(source).and_then(Value::as_object_mut) {
            default(s, "defaultMode", json!(mode));
        }
    }
    if let Some(p) = v.get_mut("projected").and_then(Value::as_object_mut) {
        default(p, "defaultMode", json!(420));
    }
    if let Some(h) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
        default(h, "type", json!(""));
    }
    let known = [
        "emptyDir",
        "hostPath",
        "configMap",
        "secret",
        "downwardAPI",
        "projected",
        "persistentVolumeClaim",
        "nfs",
        "csi",
        "ephemeral",
        "iscsi",
        "local",
    ];
    if v.len() == 1 && v.contains_key("name") && !known.iter().any(|k| v.contains_key(*k)) {
        // A volume with no source is an emptyDir (upstream's SetDefaults_Volume).
        v.insert("emptyDir".into(), json!({}));
    }
}

/// Upstream's image pull policy default: `Always` for `:latest` or no tag, else
/// `IfNotPresent`. A digest counts as a tag.
pub fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn service_spec(spec: &mut Map<String, Value>) {
    default(spec, "type", json!("ClusterIP"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    default(spec, "sessionAffinity", json!("None"));
    if spec.get("sessionAffinity") == Some(&json!("ClientIP")) {
        let cfg = object(spec, "sessionAffinityConfig").expect("just made");
        let ip = object(cfg, "clientIP").expect("just made");
        default(ip, "timeoutSeconds", json!(10800));
    }
    if ty != "ExternalName" {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    for p in each_object(spec, "ports") {
        default(p, "protocol", json!("TCP"));
        if let Some(port) = p.get("port").cloned() {
            default(p, "targetPort", port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_follows_the_tag() {
        assert_eq!(pull_policy("nginx"), "Always");
        assert_eq!(pull_policy("nginx:latest"), "Always");
        assert_eq!(pull_policy("nginx:1.25"), "IfNotPresent");
        assert_eq!(pull_policy("127.0.0.1:5000/busybox"), "Always");
        assert_eq!(pull_policy("127.0.0.1:5000/busybox:1"), "IfNotPresent");
        assert_eq!(pull_policy("busybox@sha256:abc"), "IfNotPresent");
    }

    #[test]
    fn pod_and_deployment_defaults() {
        let mut pod = json!({"spec": {"containers": [{"name": "c", "image": "nginx",
            "ports": [{"containerPort": 80}],
            "livenessProbe": {"httpGet": {"port": 80}}}],
            "volumes": [{"name": "v"}]}});
        apply("Pod", &mut pod);
        let s = &pod["spec"];
        assert_eq!(s["restartPolicy"], "Always");
        assert_eq!(s["terminationGracePeriodSeconds"], 30);
        assert_eq!(s["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(s["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(s["containers"][0]["livenessProbe"]["httpGet"]["path"], "/");
        assert_eq!(s["containers"][0]["livenessProbe"]["failureThreshold"], 3);
        assert_eq!(s["volumes"][0]["emptyDir"], json!({}));

        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "a:1"}]}}}});
        apply("Deployment", &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        // Set values are kept.
        let mut d = json!({"spec": {"replicas": 0, "strategy": {"type": "Recreate"}}});
        apply("Deployment", &mut d);
        assert_eq!(d["spec"]["replicas"], 0);
        assert!(d["spec"]["strategy"].get("rollingUpdate").is_none());
    }

    #[test]
    fn service_and_job_defaults() {
        let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
        apply("Service", &mut svc);
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(svc["spec"]["sessionAffinity"], "None");
        let mut job = json!({"spec": {"parallelism": 2}});
        apply("Job", &mut job);
        assert!(job["spec"].get("completions").is_none());
        assert_eq!(job["spec"]["backoffLimit"], 6);
        let mut rc =
            json!({"metadata": {}, "spec": {"template": {"metadata": {"labels": {"app": "x"}}}}});
        apply("ReplicationController", &mut rc);
        assert_eq!(rc["spec"]["selector"], json!({"app": "x"}));
        assert_eq!(rc["metadata"]["labels"], json!({"app": "x"}));
    }
}
