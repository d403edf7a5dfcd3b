//! A container's environment as upstream's kubelet makes it: `envFrom` sources, then
//! `env` in order (values with `$(VAR)` references expanded; `fieldRef`,
//! `resourceFieldRef`, `configMapKeyRef` and `secretKeyRef` resolved), then the service
//! variables (`<SVC>_SERVICE_HOST`, docker-link style `<SVC>_PORT_...`) not already
//! set. Also the `$(VAR)` expansion of `command` and `args`.
//!
//! Everything here is pure: the ConfigMaps, Secrets and Services it reads are fetched
//! beforehand (see [`references`]).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use ferrokube_api::quantity::Quantity as Parsed;

/// Why a container's configuration cannot be made (`CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The ConfigMaps and Secrets of the pod's namespace a container refers to, by name:
/// `None` when it does not exist. Secret values are their decoded bytes as text.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    pub secrets: HashMap<String, Option<BTreeMap<String, String>>>,
}

/// The ConfigMap and Secret names a container's `env` and `envFrom` refer to.
pub fn references(c: &Container) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for f in c.env_from.iter().flatten() {
        if let Some(r) = &f.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &f.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else { continue };
        if let Some(r) = &from.config_map_key_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &from.secret_key_ref {
            secrets.push(r.name.clone());
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// What else a container's environment is made from.
pub struct Context<'a> {
    pub pod: &'a Pod,
    pub node_ip: &'a str,
    pub pod_ips: &'a [String],
    /// The node's allocatable resources: the value of an unset limit.
    pub allocatable: &'a BTreeMap<String, Quantity>,
    /// Every Service the kubelet knows of (all namespaces).
    pub services: &'a [std::sync::Arc<Service>],
    pub sources: &'a Sources,
}

/// A resolved environment, in order, with the `envFrom` keys skipped as invalid names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Environment {
    pub vars: Vec<(String, String)>,
    /// (source, keys) for the `InvalidEnvironmentVariableNames` event.
    pub skipped: Vec<(String, Vec<String>)>,
}

/// Upstream's `IsEnvVarName`: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
fn is_env_var_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || "-._".contains(c))
        && chars.all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// Resolves container `c`'s environment.
pub fn resolve(c: &Container, cx: &Context) -> Result<Environment, ConfigError> {
    let ns = cx.pod.metadata.namespace.as_deref().unwrap_or("default");
    let services = service_env(cx.pod, cx.services);
    let mut out = Environment::default();
    // Declared variables by name, in the order first set.
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| match vars
        .iter_mut()
        .find(|(name, _)| *name == k)
    {
        Some(slot) => slot.1 = v,
        None => vars.push((k, v)),
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, source) = if let Some(r) = &from.config_map_ref {
            match cx.sources.config_maps.get(&r.name).cloned().flatten() {
                Some(d) => (d, format!("configMap {ns}/{}", r.name)),
                None if r.optional == Some(true) => continue,
                None => return Err(ConfigError(format!("configmap \"{}\" not found", r.name))),
            }
        } else if let Some(r) = &from.secret_ref {
            match cx.sources.secrets.get(&r.name).cloned().flatten() {
                Some(d) => (d, format!("secret {ns}/{}", r.name)),
                None if r.optional == Some(true) => continue,
                None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
            }
        } else {
            continue;
        };
        let mut invalid = Vec::new();
        for (k, v) in data {
            let k = format!("{prefix}{k}");
            if is_env_var_name(&k) {
                set(&mut vars, k, v);
            } else {
                invalid.push(k);
            }
        }
        if !invalid.is_empty() {
            out.skipped.push((source, invalid));
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                field_value(cx, f)?
            } else if let Some(r) = &from.resource_field_ref {
                resource_value(cx, c, r)?
            } else if let Some(r) = &from.config_map_key_ref {
                match key_value(&cx.sources.config_maps, &r.name, &r.key) {
                    Lookup::Found(v) => v,
                    _ if r.optional == Some(true) => continue,
                    Lookup::NoObject => {
                        return Err(ConfigError(format!("configmap \"{}\" not found", r.name)))
                    }
                    Lookup::NoKey => {
                        return Err(ConfigError(format!(
                            "couldn't find key {} in ConfigMap {ns}/{}",
                            r.key, r.name
                        )))
                    }
                }
            } else if let Some(r) = &from.secret_key_ref {
                match key_value(&cx.sources.secrets, &r.name, &r.key) {
                    Lookup::Found(v) => v,
                    _ if r.optional == Some(true) => continue,
                    Lookup::NoObject => {
                        return Err(ConfigError(format!("secret \"{}\" not found", r.name)))
                    }
                    Lookup::NoKey => {
                        return Err(ConfigError(format!(
                            "couldn't find key {} in Secret {ns}/{}",
                            r.key, r.name
                        )))
                    }
                }
            } else {
                String::new()
            }
        } else {
            let v = e.value.clone().unwrap_or_default();
            expand(&v, |name| {
                vars.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .or_else(|| services.get(name).cloned())
            })
        };
        set(&mut vars, e.name.clone(), value);
    }
    for (k, v) in services {
        if !vars.iter().any(|(name, _)| *name == k) {
            vars.push((k, v));
        }
    }
    out.vars = vars;
    Ok(out)
}

enum Lookup {
    Found(String),
    NoObject,
    NoKey,
}

fn key_value(
    objects: &HashMap<String, Option<BTreeMap<String, String>>>,
    name: &str,
    key: &str,
) -> Lookup {
    match objects.get(name).and_then(|o| o.as_ref()) {
        None => Lookup::NoObject,
        Some(data) => data.get(key).cloned().map_or(Lookup::NoKey, Lookup::Found),
    }
}

/// A `fieldRef` value: the pod fields upstream allows in env and downward API files.
pub fn field_value(cx: &Context, f: &ObjectFieldSelector) -> Result<String, ConfigError> {
    let m = &cx.pod.metadata;
    let spec = cx.pod.spec.as_ref();
    let path = f.field_path.as_str();
    let subscript = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(String::from)
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(m.labels.as_ref()),
        "metadata.annotations" => format_map(m.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => cx.node_ip.to_string(),
        "status.podIP" => cx.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => cx.pod_ips.join(","),
        _ => {
            if let Some(k) = subscript("metadata.labels") {
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = subscript("metadata.annotations") {
                m.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(ConfigError(format!("unsupported fieldPath: {path}")));
            }
        }
    })
}

/// `key="value"` lines, sorted, as the downward API writes labels and annotations.
fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `resourceFieldRef` value: the named container's request or limit (an unset limit
/// is the node's allocatable amount) divided by the divisor, rounded up.
pub fn resource_value(
    cx: &Context,
    current: &Container,
    r: &ResourceFieldSelector,
) -> Result<String, ConfigError> {
    let spec = cx.pod.spec.clone().unwrap_or_default();
    let c = match r.container_name.as_deref() {
        None | Some("") => current.clone(),
        Some(name) => spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .cloned()
            .ok_or_else(|| ConfigError(format!("container {name} not found")))?,
    };
    let (kind, resource) = r
        .resource
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("unsupported container resource : {}", r.resource)))?;
    let res = c.resources.clone().unwrap_or_default();
    let given = match kind {
        "limits" => res.limits.as_ref().and_then(|l| l.get(resource)).cloned(),
        "requests" => res.requests.as_ref().and_then(|l| l.get(resource)).cloned(),
        _ => {
            return Err(ConfigError(format!(
                "unsupported container resource : {}",
                r.resource
            )))
        }
    };
    let value = match (kind, given) {
        (_, Some(q)) => Some(q),
        ("limits", None) => cx.allocatable.get(resource).cloned(),
        _ => None,
    };
    let parse = |q: &Quantity| {
        Parsed::parse(&q.0).map_err(|_| ConfigError(format!("invalid quantity {:?}", q.0)))
    };
    let value = match value {
        Some(q) => parse(&q)?,
        None => Parsed::parse("0").expect("0 is a quantity"),
    };
    let divisor = match &r.divisor {
        Some(d) if d.0 != "0" && !d.0.is_empty() => parse(d)?,
        _ => Parsed::parse("1").expect("1 is a quantity"),
    };
    let n = if resource == "cpu" {
        ceil_div(value.milli_value(), divisor.milli_value().max(1))
    } else {
        ceil_div(value.nanos(), divisor.nanos().max(1))
    };
    Ok(n.to_string())
}

fn ceil_div(a: i128, b: i128) -> i128 {
    (a + b - 1).div_euclid(b)
}

/// Upstream's `$(VAR)` expansion: `$(NAME)` is replaced by `lookup(NAME)`, or left as it
/// is when that has nothing; `$$` is a literal `$`; anything else stays as written.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.chars().next() {
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(end) => {
                    let name = &after[1..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `command` and `args` with `$(VAR)` references to the container's environment
/// expanded.
pub fn expand_args(args: &[String], vars: &[(String, String)]) -> Vec<String> {
    let map: HashMap<&str, &str> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    args.iter()
        .map(|a| expand(a, |n| map.get(n).map(|v| v.to_string())))
        .collect()
}

/// The service variables for a pod: the services of its namespace (when
/// `enableServiceLinks` is not false) and the `kubernetes` service of `default`, each
/// with a cluster IP.
pub fn service_env(pod: &Pod, services: &[std::sync::Arc<Service>]) -> BTreeMap<String, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for s in services {
        let spec = s.spec.clone().unwrap_or_default();
        let ip = spec.cluster_ip.as_deref().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = s.metadata.name.clone().unwrap_or_default();
        let sns = s.metadata.namespace.as_deref().unwrap_or_default();
        if sns == "default" && name == "kubernetes" {
            chosen.entry(name).or_insert(s);
        } else if sns == ns && links {
            chosen.insert(name, s);
        }
    }
    let mut env = BTreeMap::new();
    for (name, s) in chosen {
        let spec = s.spec.clone().unwrap_or_default();
        let ip = spec.cluster_ip.unwrap_or_default();
        let prefix = name.to_ascii_uppercase().replace('-', "_");
        let ports = spec.ports.unwrap_or_default();
        env.insert(format!("{prefix}_SERVICE_HOST"), ip.clone());
        if let Some(first) = ports.first() {
            env.insert(format!("{prefix}_SERVICE_PORT"), first.port.to_string());
            let proto = first
                .protocol
                .as_deref()
                .unwrap_or("TCP")
                .to_ascii_lowercase();
            env.insert(
                format!("{prefix}_PORT"),
                format!("{proto}://{ip}:{}", first.port),
            );
        }
        for p in &ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                let pn = pn.to_ascii_uppercase().replace('-', "_");
                env.insert(format!("{prefix}_SERVICE_PORT_{pn}"), p.port.to_string());
            }
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let base = format!("{prefix}_PORT_{}_{}", p.port, proto.to_ascii_uppercase());
            let lower = proto.to_ascii_lowercase();
            env.insert(base.clone(), format!("{lower}://{ip}:{}", p.port));
            env.insert(format!("{base}_PROTO"), lower);
            env.insert(format!("{base}_PORT"), p.port.to_string());
            env.insert(format!("{base}_ADDR"), ip.clone());
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "VAR_A" => Some("A".into()),
            "VAR_EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_upstream() {
        // Cases from upstream's expansion tests.
        for (input, want) in [
            ("$(VAR_A)", "A"),
            ("___$(VAR_A)___", "___A___"),
            ("$(VAR_A)-$(VAR_A)", "A-A"),
            ("$(VAR_EMPTY)", ""),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$$(VAR_A)", "$(VAR_A)"),
            ("$$$(VAR_A)", "$A"),
            ("$$$$(VAR_A)", "$$(VAR_A)"),
            ("$(VAR_A", "$(VAR_A"),
            ("$VAR_A", "$VAR_A"),
            ("f000-$$VAR_A", "f000-$VAR_A"),
            ("foo\\$(VAR_A)bar", "foo\\Abar"),
            ("$", "$"),
            ("$()", "$()"),
            ("tail $", "tail $"),
        ] {
            assert_eq!(expand(input, lookup), want, "{input}");
        }
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns1", "uid": "u-1",
                         "labels": {"app": "web"}, "annotations": {"team": "a"}},
            "spec": spec,
        }))
        .unwrap()
    }

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> std::sync::Arc<Service> {
        std::sync::Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
                                          "spec": {"clusterIP": ip, "ports": ports}}))
            .unwrap(),
        )
    }

    #[test]
    fn env_sources_fields_resources_and_services() {
        let p = pod(json!({
            "nodeName": "n1", "serviceAccountName": "default",
            "containers": [{
                "name": "c", "image": "busybox",
                "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
                "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"},
                            {"secretRef": {"name": "absent", "optional": true}}],
                "env": [
                    {"name": "GREETING", "value": "hello $(CM_who) at $(MY_POD_IP) $$(X) $(NOPE)"},
                    {"name": "MY_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "LATE", "value": "$(MY_POD_IP)"},
                    {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "CPU_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                    {"name": "CPU_LIM", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "MEM_LIM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
                    {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nokey", "optional": true}}},
                    {"name": "SVC", "value": "$(WEB_SERVICE_HOST)"},
                    {"name": "CM_who", "value": "override"}
                ]
            }]
        }));
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        let mut sources = Sources::default();
        sources.config_maps.insert(
            "cm".into(),
            Some(BTreeMap::from([
                ("who".into(), "world".into()),
                ("bad key".into(), "x".into()),
            ])),
        );
        sources.secrets.insert(
            "s".into(),
            Some(BTreeMap::from([("password".into(), "pw".into())])),
        );
        sources.secrets.insert("absent".into(), None);
        let services = vec![
            svc(
                "ns1",
                "web-front",
                "10.96.0.20",
                json!([{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]),
            ),
            svc("ns1", "web", "10.96.0.21", json!([{"port": 8080}])),
            svc("ns1", "headless", "None", json!([{"port": 80}])),
            svc("other", "elsewhere", "10.96.0.22", json!([{"port": 80}])),
            svc(
                "default",
                "kubernetes",
                "10.96.0.1",
                json!([{"name": "https", "port": 443, "protocol": "TCP"}]),
            ),
        ];
        let allocatable = BTreeMap::from([("cpu".to_string(), Quantity("2".into()))]);
        let ips = vec!["10.244.0.5".to_string()];
        let cx = Context {
            pod: &p,
            node_ip: "172.30.0.2",
            pod_ips: &ips,
            allocatable: &allocatable,
            services: &services,
            sources: &sources,
        };
        let env = resolve(&c, &cx).unwrap();
        let get = |k: &str| {
            env.vars
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        // MY_POD_IP is declared after GREETING: not expanded, as upstream.
        assert_eq!(
            get("GREETING"),
            Some("hello world at $(MY_POD_IP) $(X) $(NOPE)")
        );
        assert_eq!(get("LATE"), Some("10.244.0.5"));
        assert_eq!(get("CM_who"), Some("override"));
        assert_eq!(get("NAME"), Some("p"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("NODE"), Some("n1"));
        assert_eq!(get("CPU_REQ"), Some("250"));
        assert_eq!(get("CPU_LIM"), Some("2"));
        assert_eq!(get("MEM_LIM"), Some("128"));
        assert_eq!(get("PASS"), Some("pw"));
        assert_eq!(get("OPT"), None);
        assert_eq!(get("SVC"), Some("10.96.0.21"));
        assert_eq!(get("WEB_FRONT_SERVICE_HOST"), Some("10.96.0.20"));
        assert_eq!(get("WEB_FRONT_SERVICE_PORT"), Some("80"));
        assert_eq!(get("WEB_FRONT_SERVICE_PORT_HTTP"), Some("80"));
        assert_eq!(get("WEB_FRONT_PORT"), Some("tcp://10.96.0.20:80"));
        assert_eq!(get("WEB_FRONT_PORT_53_UDP"), Some("udp://10.96.0.20:53"));
        assert_eq!(get("WEB_FRONT_PORT_53_UDP_PROTO"), Some("udp"));
        assert_eq!(get("WEB_FRONT_PORT_80_TCP_ADDR"), Some("10.96.0.20"));
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get("HEADLESS_SERVICE_HOST"), None);
        assert_eq!(get("ELSEWHERE_SERVICE_HOST"), None);
        assert_eq!(
            env.skipped,
            vec![(
                "configMap ns1/cm".to_string(),
                vec!["CM_bad key".to_string()]
            )]
        );
        let args = expand_args(&["echo $(NAME) $$(NAME) $(NOPE)".to_string()], &env.vars);
        assert_eq!(args, vec!["echo p $(NAME) $(NOPE)"]);

        // enableServiceLinks: false keeps only the kubernetes service.
        let mut p2 = p.clone();
        p2.spec.as_mut().unwrap().enable_service_links = Some(false);
        let vars = service_env(&p2, &services);
        assert!(vars.contains_key("KUBERNETES_SERVICE_HOST"));
        assert!(!vars.contains_key("WEB_SERVICE_HOST"));

        // Missing sources, as upstream words them.
        let with = |env: serde_json::Value| {
            let mut c = c.clone();
            c.env = serde_json::from_value(env).unwrap();
            c.env_from = None;
            resolve(&c, &cx).unwrap_err().0
        };
        assert_eq!(
            with(
                json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nokey"}}}])
            ),
            "couldn't find key nokey in ConfigMap ns1/cm"
        );
        assert_eq!(
            with(
                json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}])
            ),
            "configmap \"gone\" not found"
        );
        assert_eq!(
            with(
                json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "user"}}}])
            ),
            "couldn't find key user in Secret ns1/s"
        );
        assert_eq!(
            with(
                json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}])
            ),
            "secret \"absent\" not found"
        );
    }
}
