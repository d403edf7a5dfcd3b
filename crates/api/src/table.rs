//! Server-side printing: the `Table` columns and cells upstream's printers produce for
//! each kind (`kubectl get` shows what the server sends). Columns with priority 1 appear
//! only with `-o wide`. Kinds without a printer get `Name` and `Age` (custom resources
//! `Name` and `Age` too, unless they declare additionalPrinterColumns).

use serde_json::{json, Value};

use crate::meta::{age, labels, metadata, name};

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub format: &'static str,
    pub priority: i32,
}

const fn col(name: &'static str) -> Column {
    Column {
        name,
        ty: "string",
        format: "",
        priority: 0,
    }
}
const fn wide(name: &'static str) -> Column {
    Column {
        name,
        ty: "string",
        format: "",
        priority: 1,
    }
}
const fn int(name: &'static str) -> Column {
    Column {
        name,
        ty: "integer",
        format: "",
        priority: 0,
    }
}
const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    priority: 0,
};

impl Column {
    /// The `columnDefinitions` entry.
    pub fn definition(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.ty,
            "format": self.format,
            "description": description(self.name),
            "priority": self.priority,
        })
    }
}

fn description(column: &str) -> &'static str {
    match column {
        "Name" => "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
        "Age" => "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
        _ => "",
    }
}

/// The columns for a kind.
pub fn columns(kind: &str) -> Vec<Column> {
    let age = col("Age");
    match kind {
        "Pod" => vec![
            NAME,
            col("Ready"),
            col("Status"),
            col("Restarts"),
            age,
            wide("IP"),
            wide("Node"),
            wide("Nominated Node"),
            wide("Readiness Gates"),
        ],
        "Namespace" => vec![NAME, col("Status"), age],
        "Service" => vec![
            NAME,
            col("Type"),
            col("Cluster-IP"),
            col("External-IP"),
            col("Port(s)"),
            age,
            wide("Selector"),
        ],
        "Endpoints" => vec![NAME, col("Endpoints"), age],
        "EndpointSlice" => vec![
            NAME,
            col("AddressType"),
            col("Ports"),
            col("Endpoints"),
            age,
        ],
        "ConfigMap" => vec![NAME, int("Data"), age],
        "Secret" => vec![NAME, col("Type"), int("Data"), age],
        "ServiceAccount" => vec![NAME, int("Secrets"), age],
        // As metrics-server prints them.
        "NodeMetrics" | "PodMetrics" => vec![NAME, col("CPU"), col("Memory"), col("Window")],
        "Node" => vec![
            NAME,
            col("Status"),
            col("Roles"),
            age,
            col("Version"),
            wide("Internal-IP"),
            wide("External-IP"),
            wide("OS-Image"),
            wide("Kernel-Version"),
            wide("Container-Runtime"),
        ],
        "Deployment" => vec![
            NAME,
            col("Ready"),
            int("Up-to-date"),
            int("Available"),
            age,
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        "ReplicaSet" | "ReplicationController" => vec![
            NAME,
            int("Desired"),
            int("Current"),
            int("Ready"),
            age,
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        "DaemonSet" => vec![
            NAME,
            int("Desired"),
            int("Current"),
            int("Ready"),
            int("Up-to-date"),
            int("Available"),
            col("Node Selector"),
            age,
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        "StatefulSet" => vec![NAME, col("Ready"), age, wide("Containers"), wide("Images")],
        "Job" => vec![
            NAME,
            col("Status"),
            col("Completions"),
            col("Duration"),
            age,
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        "CronJob" => vec![
            NAME,
            col("Schedule"),
            col("Timezone"),
            col("Suspend"),
            int("Active"),
            col("Last Schedule"),
            age,
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        "Event" => vec![
            col("Last Seen"),
            col("Type"),
            col("Reason"),
            col("Object"),
            wide("Subobject"),
            wide("Source"),
            col("Message"),
            wide("First Seen"),
            wide("Count"),
            wide("Name"),
        ],
        "PersistentVolume" => vec![
            NAME,
            col("Capacity"),
            col("Access Modes"),
            col("Reclaim Policy"),
            col("Status"),
            col("Claim"),
            col("StorageClass"),
            col("VolumeAttributesClass"),
            col("Reason"),
            age,
            wide("VolumeMode"),
        ],
        "PersistentVolumeClaim" => vec![
            NAME,
            col("Status"),
            col("Volume"),
            col("Capacity"),
            col("Access Modes"),
            col("StorageClass"),
            col("VolumeAttributesClass"),
            age,
            wide("VolumeMode"),
        ],
        "StorageClass" => vec![
            NAME,
            col("Provisioner"),
            col("ReclaimPolicy"),
            col("VolumeBindingMode"),
            col("AllowVolumeExpansion"),
            age,
        ],
        "Ingress" => vec![
            NAME,
            col("Class"),
            col("Hosts"),
            col("Address"),
            col("Ports"),
            age,
        ],
        "IngressClass" => vec![NAME, col("Controller"), col("Parameters"), age],
        "Lease" => vec![NAME, col("Holder"), age],
        "PriorityClass" => vec![NAME, int("Value"), col("Global-Default"), age],
        "HorizontalPodAutoscaler" => vec![
            NAME,
            col("Reference"),
            col("Targets"),
            col("MinPods"),
            int("MaxPods"),
            int("Replicas"),
            age,
        ],
        "Role" | "ClusterRole" | "LimitRange" | "CustomResourceDefinition" => {
            vec![NAME, col("Created At")]
        }
        "RoleBinding" | "ClusterRoleBinding" => vec![
            NAME,
            col("Role"),
            age,
            wide("Users"),
            wide("Groups"),
            wide("ServiceAccounts"),
        ],
        "ResourceQuota" => vec![NAME, age, col("Request"), col("Limit")],
        "PodDisruptionBudget" => vec![
            NAME,
            col("Min Available"),
            col("Max Unavailable"),
            int("Allowed Disruptions"),
            age,
        ],
        "ControllerRevision" => vec![NAME, col("Controller"), int("Revision"), age],
        "NetworkPolicy" => vec![NAME, col("Pod-Selector"), age],
        _ => vec![NAME, age],
    }
}

fn s(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn n(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

fn join_map(m: Option<&Value>) -> String {
    m.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// A label selector as upstream prints it (`app=web,tier in (a,b)`).
fn selector_text(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return "<none>".into();
    };
    let mut parts = vec![];
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        parts.extend(
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())),
        );
    }
    for e in arr(sel, "/matchExpressions") {
        let key = s(e, "/key");
        let vals: Vec<String> = arr(e, "/values")
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        parts.push(match s(e, "/operator").as_str() {
            "In" => format!("{key} in ({})", vals.join(",")),
            "NotIn" => format!("{key} notin ({})", vals.join(",")),
            "Exists" => key,
            "DoesNotExist" => format!("!{key}"),
            op => format!("{key} {op}"),
        });
    }
    if parts.is_empty() && sel.get("matchLabels").is_none() && sel.get("matchExpressions").is_none()
    {
        // A plain map (ReplicationController, Service).
        return or_none(join_map(Some(sel)));
    }
    or_none(parts.join(","))
}

fn containers_and_images(spec: &Value) -> (String, String) {
    let cs = arr(spec, "/containers");
    let names: Vec<String> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<String> = cs.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// The cells of one row, in [`columns`] order.
pub fn cells(kind: &str, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let created = metadata(obj)
        .and_then(|m| m.get("creationTimestamp"))
        .and_then(Value::as_str);
    let age = age(created, now);
    let nm = name(obj).to_string();
    match kind {
        "Pod" => pod_cells(obj, nm, age, now),
        "Namespace" => vec![json!(nm), json!(s(obj, "/status/phase")), json!(age)],
        "Service" => {
            let ty = s(obj, "/spec/type");
            let cluster_ip = if ty == "ExternalName" {
                "<none>".to_string()
            } else {
                or_none(s(obj, "/spec/clusterIP"))
            };
            let mut external: Vec<String> = arr(obj, "/spec/externalIPs")
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            for ing in arr(obj, "/status/loadBalancer/ingress") {
                let ip = s(ing, "/ip");
                external.push(if ip.is_empty() {
                    s(ing, "/hostname")
                } else {
                    ip
                });
            }
            let external = match ty.as_str() {
                "ExternalName" => s(obj, "/spec/externalName"),
                "LoadBalancer" if external.is_empty() => "<pending>".into(),
                _ => or_none(external.join(",")),
            };
            let ports: Vec<String> = arr(obj, "/spec/ports")
                .iter()
                .map(|p| {
                    let np = n(p, "/nodePort");
                    let proto = s(p, "/protocol");
                    if np > 0 {
                        format!("{}:{np}/{proto}", n(p, "/port"))
                    } else {
                        format!("{}/{proto}", n(p, "/port"))
                    }
                })
                .collect();
            vec![
                json!(nm),
                json!(ty),
                json!(cluster_ip),
                json!(external),
                json!(or_none(ports.join(","))),
                json!(age),
                json!(selector_text(obj.pointer("/spec/selector"))),
            ]
        }
        "Endpoints" => {
            let mut eps = vec![];
            for sub in arr(obj, "/subsets") {
                let ports = arr(sub, "/ports");
                for a in arr(sub, "/addresses") {
                    if ports.is_empty() {
                        eps.push(s(a, "/ip"));
                    }
                    for p in ports {
                        eps.push(format!("{}:{}", s(a, "/ip"), n(p, "/port")));
                    }
                }
            }
            vec![json!(nm), json!(or_none(truncated(&eps))), json!(age)]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = arr(obj, "/ports")
                .iter()
                .map(|p| n(p, "/port").to_string())
                .collect();
            let addrs: Vec<String> = arr(obj, "/endpoints")
                .iter()
                .flat_map(|e| arr(e, "/addresses").iter())
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            vec![
                json!(nm),
                json!(s(obj, "/addressType")),
                json!(if ports.is_empty() {
                    "<unset>".into()
                } else {
                    ports.join(",")
                }),
                json!(if addrs.is_empty() {
                    "<unset>".into()
                } else {
                    truncated(&addrs)
                }),
                json!(age),
            ]
        }
        "ConfigMap" => {
            let count = obj
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + obj
                    .get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![json!(nm), json!(count), json!(age)]
        }
        "Secret" => {
            let count = obj
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            vec![json!(nm), json!(s(obj, "/type")), json!(count), json!(age)]
        }
        "ServiceAccount" => vec![json!(nm), json!(arr(obj, "/secrets").len()), json!(age)],
        "NodeMetrics" => vec![
            json!(nm),
            json!(s(obj, "/usage/cpu")),
            json!(s(obj, "/usage/memory")),
            json!(s(obj, "/window")),
        ],
        "PodMetrics" => {
            // The pod's usage: its containers' added up.
            let total = |r: &str| {
                let sum: i128 = arr(obj, "/containers")
                    .iter()
                    .filter_map(|c| {
                        crate::quantity::Quantity::parse(&s(c, &format!("/usage/{r}"))).ok()
                    })
                    .map(|q| if r == "cpu" { q.nanos() } else { q.value() })
                    .sum();
                if r == "cpu" {
                    format!("{sum}n")
                } else {
                    format!("{}Ki", sum / 1024)
                }
            };
            vec![
                json!(nm),
                json!(total("cpu")),
                json!(total("memory")),
                json!(s(obj, "/window")),
            ]
        }
        "Node" => {
            let ready = arr(obj, "/status/conditions")
                .iter()
                .find(|c| s(c, "/type") == "Ready")
                .map(|c| s(c, "/status"));
            let mut status = vec![match ready.as_deref() {
                Some("True") => "Ready",
                _ => "NotReady",
            }
            .to_string()];
            if obj.pointer("/spec/unschedulable") == Some(&json!(true)) {
                status.push("SchedulingDisabled".into());
            }
            let mut roles: Vec<String> = labels(obj)
                .keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .filter(|r| !r.is_empty())
                .map(String::from)
                .collect();
            if let Some(r) = labels(obj).get("kubernetes.io/role") {
                roles.push(r.clone());
            }
            let addr = |ty: &str| {
                or_none(
                    arr(obj, "/status/addresses")
                        .iter()
                        .find(|a| s(a, "/type") == ty)
                        .map(|a| s(a, "/address"))
                        .unwrap_or_default(),
                )
            };
            vec![
                json!(nm),
                json!(status.join(",")),
                json!(or_none(roles.join(","))),
                json!(age),
                json!(s(obj, "/status/nodeInfo/kubeletVersion")),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(or_unknown(s(obj, "/status/nodeInfo/osImage"))),
                json!(or_unknown(s(obj, "/status/nodeInfo/kernelVersion"))),
                json!(or_unknown(s(
                    obj,
                    "/status/nodeInfo/containerRuntimeVersion"
                ))),
            ]
        }
        "Deployment" => {
            let (c, i) =
                containers_and_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                json!(nm),
                json!(format!(
                    "{}/{}",
                    n(obj, "/status/readyReplicas"),
                    n(obj, "/spec/replicas")
                )),
                json!(n(obj, "/status/updatedReplicas")),
                json!(n(obj, "/status/availableReplicas")),
                json!(age),
                json!(c),
                json!(i),
                json!(selector_text(obj.pointer("/spec/selector"))),
            ]
        }
        "ReplicaSet" | "ReplicationController" => {
            let (c, i) =
                containers_and_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                json!(nm),
                json!(n(obj, "/spec/replicas")),
                json!(n(obj, "/status/replicas")),
                json!(n(obj, "/status/readyReplicas")),
                json!(age),
                json!(c),
                json!(i),
                json!(selector_text(obj.pointer("/spec/selector"))),
            ]
        }
        "DaemonSet" => {
            let (c, i) =
                containers_and_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                json!(nm),
                json!(n(obj, "/status/desiredNumberScheduled")),
                json!(n(obj, "/status/currentNumberScheduled")),
                json!(n(obj, "/status/numberReady")),
                json!(n(obj, "/status/updatedNumberScheduled")),
                json!(n(obj, "/status/numberAvailable")),
                json!(or_none(join_map(
                    obj.pointer("/spec/template/spec/nodeSelector")
                ))),
                json!(age),
                json!(c),
                json!(i),
                json!(selector_text(obj.pointer("/spec/selector"))),
            ]
        }
        "StatefulSet" => {
            let (c, i) =
                containers_and_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                json!(nm),
                json!(format!(
                    "{}/{}",
                    n(obj, "/status/readyReplicas"),
                    n(obj, "/spec/replicas")
                )),
                json!(age),
                json!(c),
                json!(i),
            ]
        }
        "Job" => job_cells(obj, nm, age, now),
        "CronJob" => {
            let (c, i) = containers_and_images(
                obj.pointer("/spec/jobTemplate/spec/template/spec")
                    .unwrap_or(&Value::Null),
            );
            let last = obj
                .pointer("/status/lastScheduleTime")
                .and_then(Value::as_str);
            vec![
                json!(nm),
                json!(s(obj, "/spec/schedule")),
                json!(or_none(s(obj, "/spec/timeZone"))),
                json!(if obj.pointer("/spec/suspend") == Some(&json!(true)) {
                    "True"
                } else {
                    "False"
                }),
                json!(arr(obj, "/status/active").len()),
                json!(if last.is_some() {
                    crate::meta::age(last, now)
                } else {
                    "<none>".into()
                }),
                json!(age),
                json!(c),
                json!(i),
                json!(selector_text(
                    obj.pointer("/spec/jobTemplate/spec/selector")
                )),
            ]
        }
        "Event" => {
            let last = obj
                .get("lastTimestamp")
                .and_then(Value::as_str)
                .or_else(|| obj.get("eventTime").and_then(Value::as_str))
                .or(created);
            let first = obj
                .get("firstTimestamp")
                .and_then(Value::as_str)
                .or(created);
            let count = n(obj, "/count");
            let last_seen = crate::meta::age(last, now);
            let last_seen = if count > 1 {
                format!(
                    "{last_seen} (x{count} over {})",
                    crate::meta::age(first, now)
                )
            } else {
                last_seen
            };
            let io = obj.get("involvedObject").unwrap_or(&Value::Null);
            let source = {
                let c = s(obj, "/source/component");
                let h = s(obj, "/source/host");
                if c.is_empty() {
                    s(obj, "/reportingComponent")
                } else if h.is_empty() {
                    c
                } else {
                    format!("{c}, {h}")
                }
            };
            vec![
                json!(last_seen),
                json!(s(obj, "/type")),
                json!(s(obj, "/reason")),
                json!(format!(
                    "{}/{}",
                    s(io, "/kind").to_ascii_lowercase(),
                    s(io, "/name")
                )),
                json!(s(io, "/fieldPath")),
                json!(source),
                json!(s(obj, "/message").trim().to_string()),
                json!(crate::meta::age(first, now)),
                json!(count),
                json!(nm),
            ]
        }
        "PersistentVolume" => {
            let claim = match obj.pointer("/spec/claimRef") {
                Some(c) => format!("{}/{}", s(c, "/namespace"), s(c, "/name")),
                None => String::new(),
            };
            vec![
                json!(nm),
                json!(s(obj, "/spec/capacity/storage")),
                json!(access_modes(arr(obj, "/spec/accessModes"))),
                json!(s(obj, "/spec/persistentVolumeReclaimPolicy")),
                json!(s(obj, "/status/phase")),
                json!(claim),
                json!(s(obj, "/spec/storageClassName")),
                json!(or_unset(s(obj, "/spec/volumeAttributesClassName"))),
                json!(s(obj, "/status/reason")),
                json!(age),
                json!(s(obj, "/spec/volumeMode")),
            ]
        }
        "PersistentVolumeClaim" => vec![
            json!(nm),
            json!(s(obj, "/status/phase")),
            json!(s(obj, "/spec/volumeName")),
            json!(s(obj, "/status/capacity/storage")),
            json!(access_modes(arr(obj, "/status/accessModes"))),
            json!(s(obj, "/spec/storageClassName")),
            json!(or_unset(s(obj, "/spec/volumeAttributesClassName"))),
            json!(age),
            json!(s(obj, "/spec/volumeMode")),
        ],
        "StorageClass" => {
            let default = metadata(obj)
                .and_then(|m| m.get("annotations"))
                .and_then(|a| a.get("storageclass.kubernetes.io/is-default-class"))
                == Some(&json!("true"));
            vec![
                json!(if default {
                    format!("{nm} (default)")
                } else {
                    nm
                }),
                json!(s(obj, "/provisioner")),
                json!(s(obj, "/reclaimPolicy")),
                json!(s(obj, "/volumeBindingMode")),
                json!(obj.get("allowVolumeExpansion") == Some(&json!(true))),
                json!(age),
            ]
        }
        "Ingress" => {
            let hosts: Vec<String> = arr(obj, "/spec/rules")
                .iter()
                .map(|r| s(r, "/host"))
                .filter(|h| !h.is_empty())
                .collect();
            let addrs: Vec<String> = arr(obj, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| {
                    let ip = s(i, "/ip");
                    if ip.is_empty() {
                        s(i, "/hostname")
                    } else {
                        ip
                    }
                })
                .collect();
            let ports = if arr(obj, "/spec/tls").is_empty() {
                "80"
            } else {
                "80, 443"
            };
            vec![
                json!(nm),
                json!(or_none(s(obj, "/spec/ingressClassName"))),
                json!(if hosts.is_empty() {
                    "*".into()
                } else {
                    hosts.join(",")
                }),
                json!(addrs.join(",")),
                json!(ports),
                json!(age),
            ]
        }
        "IngressClass" => vec![
            json!(nm),
            json!(s(obj, "/spec/controller")),
            json!(or_none(s(obj, "/spec/parameters/name"))),
            json!(age),
        ],
        "Lease" => vec![json!(nm), json!(s(obj, "/spec/holderIdentity")), json!(age)],
        "PriorityClass" => vec![
            json!(nm),
            json!(n(obj, "/value")),
            json!(obj.get("globalDefault") == Some(&json!(true))),
            json!(age),
        ],
        "HorizontalPodAutoscaler" => vec![
            json!(nm),
            json!(format!(
                "{}/{}",
                s(obj, "/spec/scaleTargetRef/kind"),
                s(obj, "/spec/scaleTargetRef/name")
            )),
            json!(hpa_targets(obj)),
            json!(obj
                .pointer("/spec/minReplicas")
                .map_or("<unset>".into(), |v| v.to_string())),
            json!(n(obj, "/spec/maxReplicas")),
            json!(n(obj, "/status/currentReplicas")),
            json!(age),
        ],
        "Role" | "ClusterRole" | "LimitRange" | "CustomResourceDefinition" => {
            vec![json!(nm), json!(created.unwrap_or_default())]
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects = |k: &str| {
                arr(obj, "/subjects")
                    .iter()
                    .filter(|x| s(x, "/kind") == k)
                    .map(|x| {
                        let ns = s(x, "/namespace");
                        if k == "ServiceAccount" {
                            format!("{ns}/{}", s(x, "/name"))
                        } else {
                            s(x, "/name")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                json!(nm),
                json!(format!(
                    "{}/{}",
                    s(obj, "/roleRef/kind"),
                    s(obj, "/roleRef/name")
                )),
                json!(age),
                json!(subjects("User")),
                json!(subjects("Group")),
                json!(subjects("ServiceAccount")),
            ]
        }
        "ResourceQuota" => {
            let pairs = |limits: bool| {
                let hard = obj
                    .pointer("/status/hard")
                    .or_else(|| obj.pointer("/spec/hard"))
                    .and_then(Value::as_object);
                let mut out = vec![];
                for (k, v) in hard.into_iter().flatten() {
                    if k.starts_with("limits.") != limits {
                        continue;
                    }
                    let used = obj
                        .pointer(&format!("/status/used/{}", k.replace('/', "~1")))
                        .and_then(Value::as_str)
                        .unwrap_or("0");
                    out.push(format!("{k}: {used}/{}", v.as_str().unwrap_or_default()));
                }
                out.join(", ")
            };
            vec![
                json!(nm),
                json!(age),
                json!(pairs(false)),
                json!(pairs(true)),
            ]
        }
        "PodDisruptionBudget" => {
            let show = |p: &str| {
                obj.pointer(p)
                    .map(|v| v.as_str().map(String::from).unwrap_or(v.to_string()))
                    .unwrap_or("N/A".into())
            };
            vec![
                json!(nm),
                json!(show("/spec/minAvailable")),
                json!(show("/spec/maxUnavailable")),
                json!(n(obj, "/status/disruptionsAllowed")),
                json!(age),
            ]
        }
        "ControllerRevision" => {
            let owner = metadata(obj)
                .and_then(|m| m.get("ownerReferences"))
                .and_then(Value::as_array)
                .and_then(|o| o.iter().find(|r| r.get("controller") == Some(&json!(true))))
                .map(|o| {
                    let api = s(o, "/apiVersion");
                    let group = api.split_once('/').map(|(g, _)| g).unwrap_or("");
                    let kind = s(o, "/kind").to_ascii_lowercase();
                    let kind = if group.is_empty() {
                        kind
                    } else {
                        format!("{kind}.{group}")
                    };
                    format!("{kind}/{}", s(o, "/name"))
                })
                .unwrap_or("<none>".into());
            vec![
                json!(nm),
                json!(owner),
                json!(n(obj, "/revision")),
                json!(age),
            ]
        }
        "NetworkPolicy" => {
            let sel = selector_text(obj.pointer("/spec/podSelector"));
            vec![json!(nm), json!(sel), json!(age)]
        }
        _ => vec![json!(nm), json!(age)],
    }
}

fn or_unknown(s: String) -> String {
    if s.is_empty() {
        "<unknown>".into()
    } else {
        s
    }
}

fn or_unset(s: String) -> String {
    if s.is_empty() {
        "<unset>".into()
    } else {
        s
    }
}

/// Up to three entries then `+ N more...`, as upstream shortens endpoint lists.
fn truncated(items: &[String]) -> String {
    if items.len() <= 3 {
        items.join(",")
    } else {
        format!("{} + {} more...", items[..3].join(","), items.len() - 3)
    }
}

fn access_modes(modes: &[Value]) -> String {
    let mut out = vec![];
    for (full, short) in [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ] {
        if modes.iter().any(|m| m.as_str() == Some(full)) {
            out.push(short);
        }
    }
    out.join(",")
}

fn hpa_targets(obj: &Value) -> String {
    let metrics = arr(obj, "/spec/metrics");
    if metrics.is_empty() {
        return "<none>".into();
    }
    let current = arr(obj, "/status/currentMetrics");
    let parts: Vec<String> = metrics
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let name = s(m, "/resource/name");
            let target = m.pointer("/resource/target").unwrap_or(&Value::Null);
            let cur = current.get(i);
            if let Some(u) = target.get("averageUtilization") {
                let c = cur
                    .and_then(|c| c.pointer("/resource/current/averageUtilization"))
                    .map_or("<unknown>".into(), |v| format!("{v}%"));
                format!("{name}: {c}/{u}%")
            } else {
                let t = s(target, "/averageValue");
                let c = cur
                    .and_then(|c| c.pointer("/resource/current/averageValue"))
                    .and_then(Value::as_str)
                    .unwrap_or("<unknown>")
                    .to_string();
                format!("{name}: {c}/{t}")
            }
        })
        .collect();
    parts.join(", ")
}

fn job_cells(obj: &Value, nm: String, age: String, now: jiff::Timestamp) -> Vec<Value> {
    let (c, i) = containers_and_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
    let completions = match obj.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{}/{c}", n(obj, "/status/succeeded")),
        None => {
            let p = n(obj, "/spec/parallelism");
            if p > 1 {
                format!("{}/1 of {p}", n(obj, "/status/succeeded"))
            } else {
                format!("{}/1", n(obj, "/status/succeeded"))
            }
        }
    };
    let start = obj.pointer("/status/startTime").and_then(Value::as_str);
    let end = obj
        .pointer("/status/completionTime")
        .and_then(Value::as_str);
    let duration = match (
        start.and_then(crate::meta::parse_time),
        end.and_then(crate::meta::parse_time),
    ) {
        (Some(s), Some(e)) => crate::meta::human_duration(e.as_second() - s.as_second()),
        (Some(s), None) => crate::meta::human_duration(now.as_second() - s.as_second()),
        _ => String::new(),
    };
    let conds = arr(obj, "/status/conditions");
    let has = |t: &str| {
        conds
            .iter()
            .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
    };
    let status = if has("Failed") {
        "Failed"
    } else if has("Complete") {
        "Complete"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if obj.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else {
        "Running"
    };
    vec![
        json!(nm),
        json!(status),
        json!(completions),
        json!(duration),
        json!(age),
        json!(c),
        json!(i),
        json!(selector_text(obj.pointer("/spec/selector"))),
    ]
}

/// The pod's status column, computed as upstream's printer does: the phase or reason,
/// overridden by init-container progress, a waiting or terminated container's reason,
/// and `Terminating` for pods being deleted.
pub fn pod_status(pod: &Value) -> String {
    let mut reason = s(pod, "/status/phase");
    let r = s(pod, "/status/reason");
    if !r.is_empty() {
        reason = r;
    }
    let init_specs = arr(pod, "/spec/initContainers");
    let mut initializing = false;
    for (i, c) in arr(pod, "/status/initContainerStatuses").iter().enumerate() {
        let sidecar = init_specs
            .get(i)
            .is_some_and(|sc| s(sc, "/restartPolicy") == "Always");
        if let Some(t) = c.pointer("/state/terminated") {
            if n(t, "/exitCode") == 0 {
                continue;
            }
            let tr = s(t, "/reason");
            reason = if !tr.is_empty() {
                format!("Init:{tr}")
            } else if n(t, "/signal") != 0 {
                format!("Init:Signal:{}", n(t, "/signal"))
            } else {
                format!("Init:ExitCode:{}", n(t, "/exitCode"))
            };
            initializing = true;
        } else if sidecar && c.get("started") == Some(&json!(true)) {
            continue;
        } else if let Some(w) = c.pointer("/state/waiting") {
            let wr = s(w, "/reason");
            if !wr.is_empty() && wr != "PodInitializing" {
                reason = format!("Init:{wr}");
            } else {
                reason = format!("Init:{i}/{}", init_specs.len());
            }
            initializing = true;
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
            initializing = true;
        }
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in arr(pod, "/status/containerStatuses").iter().rev() {
            if let Some(w) = c.pointer("/state/waiting") {
                let wr = s(w, "/reason");
                if !wr.is_empty() {
                    reason = wr;
                }
            } else if let Some(t) = c.pointer("/state/terminated") {
                let tr = s(t, "/reason");
                reason = if !tr.is_empty() {
                    tr
                } else if n(t, "/signal") != 0 {
                    format!("Signal:{}", n(t, "/signal"))
                } else {
                    format!("ExitCode:{}", n(t, "/exitCode"))
                };
            } else if c.get("ready") == Some(&json!(true)) && c.pointer("/state/running").is_some()
            {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            let ready_cond = arr(pod, "/status/conditions")
                .iter()
                .any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True");
            reason = if ready_cond { "Running" } else { "NotReady" }.into();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if s(pod, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    reason
}

fn pod_cells(pod: &Value, nm: String, age: String, now: jiff::Timestamp) -> Vec<Value> {
    let specs = arr(pod, "/spec/containers");
    let statuses = arr(pod, "/status/containerStatuses");
    let mut ready = statuses
        .iter()
        .filter(|c| c.get("ready") == Some(&json!(true)))
        .count();
    let mut total = specs.len();
    let mut restarts = statuses.iter().map(|c| n(c, "/restartCount")).sum::<i64>();
    let mut last_restart: Option<i64> = statuses
        .iter()
        .filter_map(|c| c.pointer("/lastState/terminated/finishedAt"))
        .filter_map(Value::as_str)
        .filter_map(crate::meta::parse_time)
        .map(|t| t.as_second())
        .max();
    // Sidecar init containers count towards readiness and restarts.
    let init_specs = arr(pod, "/spec/initContainers");
    for (i, c) in arr(pod, "/status/initContainerStatuses").iter().enumerate() {
        if init_specs
            .get(i)
            .is_some_and(|sc| s(sc, "/restartPolicy") == "Always")
        {
            total += 1;
            if c.get("ready") == Some(&json!(true)) {
                ready += 1;
            }
        }
        restarts += n(c, "/restartCount");
        if let Some(t) = c
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            .and_then(crate::meta::parse_time)
        {
            last_restart = Some(last_restart.map_or(t.as_second(), |l| l.max(t.as_second())));
        }
    }
    let restarts = match last_restart {
        Some(t) if restarts > 0 => format!(
            "{restarts} ({} ago)",
            crate::meta::human_duration(now.as_second() - t)
        ),
        _ => restarts.to_string(),
    };
    let ips: Vec<String> = arr(pod, "/status/podIPs")
        .iter()
        .map(|p| s(p, "/ip"))
        .collect();
    let ip = if ips.is_empty() {
        or_none(s(pod, "/status/podIP"))
    } else {
        ips.join(",")
    };
    let gates = arr(pod, "/spec/readinessGates");
    let gates = if gates.is_empty() {
        "<none>".into()
    } else {
        let conds = arr(pod, "/status/conditions");
        let ok = gates
            .iter()
            .filter(|g| {
                conds
                    .iter()
                    .any(|c| s(c, "/type") == s(g, "/conditionType") && s(c, "/status") == "True")
            })
            .count();
        format!("{ok}/{}", gates.len())
    };
    vec![
        json!(nm),
        json!(format!("{ready}/{total}")),
        json!(pod_status(pod)),
        json!(restarts),
        json!(age),
        json!(ip),
        json!(or_none(s(pod, "/spec/nodeName"))),
        json!(or_none(s(pod, "/status/nominatedNodeName"))),
        json!(gates),
    ]
}

/// A `PartialObjectMetadata` for a row's `object` (what kubectl reads namespaces and
/// labels from).
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// One table row.
pub fn row(kind: &str, obj: &Value, now: jiff::Timestamp, include: Include) -> Value {
    let object = match include {
        Include::None => Value::Null,
        Include::Metadata => partial_metadata(obj),
        Include::Object => obj.clone(),
    };
    json!({"cells": cells(kind, obj, now), "object": object})
}

/// What a row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> jiff::Timestamp {
        "2026-01-01T00:10:00Z".parse().unwrap()
    }

    #[test]
    fn every_row_matches_its_columns() {
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        for kind in [
            "Pod",
            "Namespace",
            "Service",
            "Endpoints",
            "EndpointSlice",
            "ConfigMap",
            "Secret",
            "ServiceAccount",
            "Node",
            "Deployment",
            "ReplicaSet",
            "ReplicationController",
            "DaemonSet",
            "StatefulSet",
            "Job",
            "CronJob",
            "Event",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "StorageClass",
            "Ingress",
            "IngressClass",
            "Lease",
            "PriorityClass",
            "HorizontalPodAutoscaler",
            "Role",
            "RoleBinding",
            "ResourceQuota",
            "PodDisruptionBudget",
            "ControllerRevision",
            "NetworkPolicy",
            "Widget",
        ] {
            assert_eq!(columns(kind).len(), cells(kind, &obj, t0()).len(), "{kind}");
        }
    }

    #[test]
    fn pod_rows_read_like_kubectl() {
        let pod = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 2,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"finishedAt": "2026-01-01T00:09:00Z"}}}
            ]}
        });
        let c = cells("Pod", &pod, t0());
        assert_eq!(c[1], "1/2");
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "2 (60s ago)");
        assert_eq!(c[4], "10m");
        assert_eq!(c[5], "10.0.0.5");
        let init = json!({"spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"state": {"terminated": {"exitCode": 0}}},
                {"state": {"running": {}}}]}});
        assert_eq!(pod_status(&init), "Init:1/2");
    }

    #[test]
    fn service_rows() {
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort",
            "clusterIP": "10.96.0.7", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}],
            "selector": {"app": "web"}}});
        let c = cells("Service", &svc, t0());
        assert_eq!(
            c[1..5],
            [
                json!("NodePort"),
                json!("10.96.0.7"),
                json!("<none>"),
                json!("80:30080/TCP")
            ]
        );
        assert_eq!(c[6], "app=web");
    }
}
