//! Pod workers: the kubelet's reconcile loop for the pods bound to its node. Each sync
//! reads the pod from the informer cache and the containers' state from disk (shim exit
//! records and runc), starts or restarts containers as the restart policy says (with
//! upstream's back-off), terminates pods being deleted within their grace period, cleans
//! up pods that are gone, and posts the pod status. State lives under the kubelet's
//! root, so a restarted kubelet picks running containers back up.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrokube_client::{Api, Client, Patch, Store};
use ferrokube_images::{Image, ImageStore};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, Preconditions};
use serde_json::{json, Value};

use crate::network::Cni;
use crate::runtime::bundle::{self, ContainerSpec};
use crate::runtime::rootfs;
use crate::runtime::runc::Runc;
use crate::runtime::shim::{self, Exit, ShimArgs};
use crate::{cgroups, sandbox, static_pods};
use ferrokube_client::events::{Kind, Recorder};

/// Back-off of restarts: 10 s doubling up to 5 minutes, as upstream.
fn backoff(restarts: u32) -> Duration {
    Duration::from_secs(
        10u64
            .saturating_mul(1 << restarts.clamp(1, 6).saturating_sub(1))
            .min(300),
    )
}

/// Everything the pod workers need.
pub struct Pods {
    pub client: Client,
    pub node: String,
    pub node_ip: String,
    pub root: PathBuf,
    pub images: Arc<ImageStore>,
    pub runc: Runc,
    /// The kubelet binary, run as `kubelet shim ...`.
    pub shim_exe: PathBuf,
    /// Where pod cgroups go (`--cgroup-root`): `<root>/kubepods/<qos>/pod<uid>`.
    pub cgroup_root: String,
    /// The static pod manifests (`staticPodPath`).
    pub static_pod_path: Option<PathBuf>,
    /// The pod network.
    pub cni: Option<Arc<Cni>>,
    /// Cluster DNS servers and domain (`clusterDNS`, `clusterDomain`).
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// Where container logs go (`podLogsDir`, `/var/log/pods` by default).
    pub pod_logs_dir: PathBuf,
    /// Every Service, for the containers' service variables (watched by the kubelet).
    pub services: Option<Store<Service>>,
    /// The node's allocatable resources (unset limits in `resourceFieldRef`).
    pub allocatable: BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    /// Container log rotation: size in bytes and files kept.
    pub log_max_size: u64,
    pub log_max_files: u32,
    /// Per pod: its volumes' host paths and when they were last refreshed from the API.
    volumes: std::sync::Mutex<HashMap<String, (Instant, VolumePaths)>>,
    /// Service-account tokens by (pod uid, audience, lifetime): the token, when to renew
    /// it and when it expires.
    tokens: std::sync::Mutex<HashMap<TokenCacheKey, CachedToken>>,
    /// Per pod: when its emptyDir usage was last measured against the size limits.
    usage_checked: std::sync::Mutex<HashMap<String, Instant>>,
    /// Pods whose recorded network was found attached since this kubelet started.
    network_checked: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Repeating events by subject (`<uid>/` for a pod, `<uid>/<container>`): the last
    /// message reported and when, so that a sync every second does not repeat it.
    reported: std::sync::Mutex<HashMap<String, (String, Instant)>>,
    /// Per running container (by id): its probe results.
    probes: std::sync::Mutex<HashMap<String, crate::probes::State>>,
    /// Per container being stopped (by id): when its grace period ends.
    killing: std::sync::Mutex<HashMap<String, Instant>>,
    /// Per container: when it may restart, and why it waits.
    waiting: std::sync::Mutex<HashMap<String, (Instant, String)>>,
    /// The pod workers: per pod UID, a generation and the channel its latest spec (or
    /// `None`: the pod is gone) goes to.
    workers: std::sync::Mutex<HashMap<String, (u64, PodSender)>>,
    next_worker: std::sync::atomic::AtomicU64,
    /// The `burstable` QoS cgroup's shares as last written.
    burstable_shares: std::sync::Mutex<Option<u64>>,
    events: Recorder,
}

/// A service-account token of a pod: (pod uid, audience, lifetime in seconds).
type TokenCacheKey = (String, String, i64);

/// A service-account token the kubelet holds for a pod.
#[derive(Clone)]
struct CachedToken {
    token: String,
    renew: Instant,
    expires: Instant,
}

/// A pod's volumes by name: their host paths.
type VolumePaths = BTreeMap<String, PathBuf>;

type PodSender = tokio::sync::watch::Sender<Option<Arc<Pod>>>;

/// How often a pod worker syncs its pod when nothing changes (container exits, probes,
/// back-off expiry and grace periods are noticed on these).
const RESYNC: Duration = Duration::from_secs(1);

/// How often the volumes backed by API objects (configMap, secret, projected,
/// downwardAPI) are refreshed: "within about a minute" as upstream.
const VOLUME_REFRESH: Duration = Duration::from_secs(10);

/// How often a container waiting out its restart back-off is reported (`BackOff`).
const BACKOFF_REPORT: Duration = Duration::from_secs(10);

/// How often the same pod failure is reported again as an event.
const REPORT_AGAIN: Duration = Duration::from_secs(60);

/// What is known about one container's latest attempt.
#[derive(Debug, Clone)]
enum Attempt {
    None,
    Running { id: String, started: String },
    Exited { id: String, exit: Exit },
}

impl Pods {
    pub fn new(
        client: Client,
        node: &str,
        node_ip: &str,
        root: &Path,
        images: Arc<ImageStore>,
    ) -> Pods {
        Pods {
            events: Recorder::new(client.clone(), node),
            client,
            node: node.into(),
            node_ip: node_ip.into(),
            root: root.to_path_buf(),
            images,
            runc: Runc::new(&root.join("runc")),
            shim_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("kubelet")),
            cgroup_root: String::new(),
            static_pod_path: None,
            cni: None,
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
            pod_logs_dir: PathBuf::from("/var/log/pods"),
            services: None,
            allocatable: BTreeMap::new(),
            log_max_size: 10 << 20,
            log_max_files: 5,
            waiting: Default::default(),
            probes: Default::default(),
            killing: Default::default(),
            volumes: Default::default(),
            reported: Default::default(),
            usage_checked: Default::default(),
            network_checked: Default::default(),
            tokens: Default::default(),
            workers: Default::default(),
            next_worker: Default::default(),
            burstable_shares: Default::default(),
        }
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    fn container_dir(&self, uid: &str, name: &str) -> PathBuf {
        self.pod_dir(uid).join("containers").join(name)
    }

    /// The directory of one attempt of a container: its bundle, exit file, markers.
    fn attempt_dir(&self, uid: &str, name: &str, attempt: u32) -> PathBuf {
        self.container_dir(uid, name).join(attempt.to_string())
    }

    /// Attempts of a container, oldest first (directory names are attempt numbers).
    fn attempts(&self, uid: &str, name: &str) -> Vec<u32> {
        let mut a: Vec<u32> = std::fs::read_dir(self.container_dir(uid, name))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        a.sort_unstable();
        a
    }

    fn container_id(uid: &str, name: &str, attempt: u32) -> String {
        format!("{}-{name}-{attempt}", &uid[..uid.len().min(8)])
    }

    /// The attempt a container id names, if it is one of this container's.
    fn attempt_of(uid: &str, name: &str, id: &str) -> Option<u32> {
        let attempt: u32 = id.rsplit_once('-')?.1.parse().ok()?;
        (Self::container_id(uid, name, attempt) == id).then_some(attempt)
    }

    /// The bundle of a container attempt, by its runc id, once its process runs (the
    /// shim's attach socket is there only once runc has started the container; a kubelet
    /// restarted meanwhile may see a container still starting); `None` if it never does
    /// within `limit`.
    pub async fn started_bundle(
        &self,
        uid: &str,
        name: &str,
        id: &str,
        limit: Duration,
    ) -> Option<PathBuf> {
        let attempt = Self::attempt_of(uid, name, id)?;
        let dir = self.attempt_dir(uid, name, attempt);
        let bundle = dir.join("bundle");
        let b = bundle.clone();
        let runs = tokio::task::spawn_blocking(move || {
            shim::wait_running(&b, &dir.join("exit.json"), limit)
        })
        .await
        .unwrap_or(false);
        runs.then_some(bundle)
    }

    fn attempt_state(&self, uid: &str, name: &str, attempt: u32) -> Attempt {
        let dir = self.attempt_dir(uid, name, attempt);
        let id = Self::container_id(uid, name, attempt);
        let exit_file = dir.join("exit.json");
        if let Some(exit) = shim::read_exit(&exit_file) {
            return Attempt::Exited { id, exit };
        }
        // No exit recorded: running, unless its shim is gone (killed, or the machine
        // rebooted) — or never came (the kubelet died while starting it).
        let alive = match shim::shim_alive(&exit_file, &id) {
            Some(alive) => alive,
            None => std::fs::metadata(dir.join("started"))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(60)),
        };
        if !alive {
            // Nobody watches the container any more: end it, as containerd does.
            if let Err(e) = self.runc.delete(&id) {
                tracing::warn!(container = %id, "removing a container whose shim is gone: {e}");
            }
            return Attempt::Exited {
                id,
                exit: shim::record_lost(&exit_file),
            };
        }
        let started = std::fs::read_to_string(dir.join("started")).unwrap_or_default();
        Attempt::Running { id, started }
    }

    fn latest(&self, uid: &str, name: &str) -> (u32, Attempt) {
        match self.attempts(uid, name).last() {
            Some(&n) => (n, self.attempt_state(uid, name, n)),
            None => (0, Attempt::None),
        }
    }

    /// The image of a container, pulled as its policy says (with upstream's events).
    async fn image(&self, pod: &Pod, c: &Container) -> Result<Image, (String, String)> {
        let name = c.image.clone().unwrap_or_default();
        let policy = c.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
        let present = self
            .images
            .get(&name)
            .map_err(|e| ("InvalidImageName".to_string(), e.to_string()))?;
        let ev = |kind, reason: &'static str, msg: String| {
            let c = c.name.clone();
            async move { self.events.pod(pod, Some(&c), kind, reason, &msg).await }
        };
        match (policy, present) {
            ("Never", Some(img)) | ("IfNotPresent", Some(img)) => {
                ev(
                    Kind::Normal,
                    "Pulled",
                    format!("Container image \"{name}\" already present on machine"),
                )
                .await;
                Ok(img)
            }
            ("Never", None) => {
                let msg =
                    format!("Container image \"{name}\" is not present with pull policy of Never");
                ev(Kind::Warning, "ErrImageNeverPull", msg.clone()).await;
                Err(("ErrImageNeverPull".into(), msg))
            }
            _ => {
                let credentials = self.pull_credentials(pod, &name).await;
                ev(Kind::Normal, "Pulling", format!("Pulling image \"{name}\"")).await;
                let t = Instant::now();
                let mut result = Err(ferrokube_images::Error::Unauthorized(String::new()));
                // Each matching credential in turn, as upstream does; none: anonymous.
                let attempts: Vec<Option<ferrokube_images::Credentials>> = if credentials.is_empty()
                {
                    vec![None]
                } else {
                    credentials.into_iter().map(Some).collect()
                };
                for c in attempts {
                    result = self.images.pull(&name, c).await;
                    if result.is_ok() {
                        break;
                    }
                }
                match result {
                    Ok(img) => {
                        let took = format!("{:.3}s", t.elapsed().as_secs_f64());
                        ev(
                            Kind::Normal,
                            "Pulled",
                            format!("Successfully pulled image \"{name}\" in {took} ({took} including waiting)"),
                        )
                        .await;
                        Ok(img)
                    }
                    Err(e) => {
                        let msg = format!("Failed to pull image \"{name}\": {e}");
                        ev(Kind::Warning, "Failed", msg.clone()).await;
                        ev(Kind::Warning, "Failed", "Error: ErrImagePull".into()).await;
                        Err((
                            "ErrImagePull".to_string(),
                            format!("failed to pull image \"{name}\": {e}"),
                        ))
                    }
                }
            }
        }
    }

    /// The registry credentials for an image from the pod's `imagePullSecrets`
    /// (`kubernetes.io/dockerconfigjson` and `kubernetes.io/dockercfg` Secrets), most
    /// specific first; a Warning event names the Secrets that could not be read.
    async fn pull_credentials(&self, pod: &Pod, image: &str) -> Vec<ferrokube_images::Credentials> {
        let names: Vec<String> = pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .into_iter()
            .flatten()
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Vec::new();
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.client.clone(), ns);
        let mut configs = Vec::new();
        let mut failed = Vec::new();
        for n in &names {
            match api.get(n).await {
                Ok(secret) => {
                    let key = match secret.type_.as_deref() {
                        Some("kubernetes.io/dockerconfigjson") => ".dockerconfigjson",
                        Some("kubernetes.io/dockercfg") => ".dockercfg",
                        _ => continue,
                    };
                    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
                        configs.push(v.0.clone());
                    }
                }
                Err(e) => {
                    tracing::debug!(secret = %n, "image pull secret: {e}");
                    failed.push(n.clone());
                }
            }
        }
        if !failed.is_empty() {
            let msg = format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                failed.join(", ")
            );
            self.events
                .pod(
                    pod,
                    None,
                    Kind::Warning,
                    "FailedToRetrieveImagePullSecret",
                    &msg,
                )
                .await;
        }
        let Ok(reference) = ferrokube_images::Reference::parse(image) else {
            return Vec::new();
        };
        ferrokube_images::credentials::for_image(&configs, &reference).unwrap_or_else(|e| {
            tracing::warn!(pod = ?pod.metadata.name, "image pull secrets: {e}");
            Vec::new()
        })
    }

    /// The pod's `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`, written under its
    /// directory as upstream's kubelet writes them, as bind mounts.
    fn etc_files(&self, pod: &Pod) -> std::io::Result<Vec<(String, PathBuf, bool)>> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let dir = self.pod_dir(&uid).join("etc");
        std::fs::create_dir_all(&dir)?;
        let host_network = spec.host_network.unwrap_or(false);
        let hostname = spec
            .hostname
            .clone()
            .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
        let mut binds = Vec::new();
        // hosts
        if !host_network {
            let mut hosts = String::from("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
            for ip in self.pod_ips(&uid) {
                match &spec.subdomain {
                    Some(sub) if !sub.is_empty() => hosts.push_str(&format!(
                        "{ip}\t{hostname}.{sub}.{ns}.svc.{}\t{hostname}\n",
                        self.cluster_domain
                    )),
                    _ => hosts.push_str(&format!("{ip}\t{hostname}\n")),
                }
            }
            if let Some(aliases) = &spec.host_aliases {
                hosts.push_str("\n# Entries added by HostAliases.\n");
                for a in aliases {
                    hosts.push_str(&format!(
                        "{}\t{}\n",
                        a.ip,
                        a.hostnames.clone().unwrap_or_default().join("\t")
                    ));
                }
            }
            std::fs::write(dir.join("hosts"), hosts)?;
            binds.push(("/etc/hosts".to_string(), dir.join("hosts"), false));
            std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
            binds.push(("/etc/hostname".to_string(), dir.join("hostname"), false));
        }
        // resolv.conf
        let policy = spec
            .dns_policy
            .clone()
            .unwrap_or_else(|| "ClusterFirst".into());
        let cluster =
            (policy == "ClusterFirst" && !host_network) || policy == "ClusterFirstWithHostNet";
        let mut servers: Vec<String> = Vec::new();
        let mut searches: Vec<String> = Vec::new();
        let mut options: Vec<String> = Vec::new();
        if cluster && !self.cluster_dns.is_empty() {
            servers = self.cluster_dns.clone();
            let d = &self.cluster_domain;
            searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
            options.push("ndots:5".into());
        } else if policy != "None" {
            // Default (and ClusterFirst without cluster DNS, as upstream falls back): the
            // node's resolver settings.
            let node = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            for l in node.lines() {
                let mut w = l.split_whitespace();
                match w.next() {
                    Some("nameserver") => servers.extend(w.next().map(String::from)),
                    Some("search") => searches.extend(w.map(String::from)),
                    Some("options") => options.extend(w.map(String::from)),
                    _ => {}
                }
            }
        }
        if let Some(cfg) = &spec.dns_config {
            servers.extend(cfg.nameservers.clone().unwrap_or_default());
            searches.extend(cfg.searches.clone().unwrap_or_default());
            for o in cfg.options.iter().flatten() {
                let name = o.name.clone().unwrap_or_default();
                options.retain(|x| x.split(':').next() != Some(name.as_str()));
                options.push(match &o.value {
                    Some(v) => format!("{name}:{v}"),
                    None => name,
                });
            }
        }
        let mut resolv = String::new();
        if !searches.is_empty() {
            resolv.push_str(&format!("search {}\n", searches.join(" ")));
        }
        for s in servers.iter().take(3) {
            resolv.push_str(&format!("nameserver {s}\n"));
        }
        if !options.is_empty() {
            resolv.push_str(&format!("options {}\n", options.join(" ")));
        }
        std::fs::write(dir.join("resolv.conf"), resolv)?;
        binds.push((
            "/etc/resolv.conf".to_string(),
            dir.join("resolv.conf"),
            false,
        ));
        Ok(binds)
    }

    /// The hostPorts of a pod, as CNI port mappings.
    fn port_mappings(pod: &Pod) -> Vec<Value> {
        pod.spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let host = p.host_port?;
                Some(json!({"hostPort": host, "containerPort": p.container_port,
                            "protocol": p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase()}))
            })
            .collect()
    }

    /// Attaches the pod's network namespace to the pod network, once; the addresses are
    /// kept in `network.json` under the pod's directory. After a restart the kubelet
    /// checks, once per pod, that a recorded attachment still stands: when the node's
    /// network was rebuilt meanwhile (its namespace recreated, the pod's interface gone
    /// with it), the sandbox is attached again, as upstream recreates a sandbox whose
    /// network is gone.
    fn attach_network(&self, pod: &Pod, uid: &str, netns: &Path) -> Result<(), String> {
        let record = self.pod_dir(uid).join("network.json");
        let Some(cni) = &self.cni else { return Ok(()) };
        if record.exists() {
            if self
                .network_checked
                .lock()
                .expect("network lock")
                .contains(uid)
            {
                return Ok(());
            }
            match sandbox::has_pod_interface(netns) {
                Ok(false) => {
                    tracing::warn!(pod = uid, "the pod's network is gone; attaching it again");
                    cni.del(uid, netns, &Self::port_mappings(pod));
                    let _ = std::fs::remove_file(&record);
                }
                Ok(true) => {
                    self.network_checked
                        .lock()
                        .expect("network lock")
                        .insert(uid.to_string());
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(pod = uid, "checking the pod's network: {e}");
                    return Ok(());
                }
            }
        }
        if let Some(why) = cni.readiness() {
            return Err(format!("network is not ready: {why}"));
        }
        let ips = cni.add(uid, netns, &Self::port_mappings(pod))?;
        std::fs::create_dir_all(self.pod_dir(uid)).map_err(|e| e.to_string())?;
        let ips: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        std::fs::write(
            &record,
            serde_json::to_vec(&json!({"ips": ips, "ports": Self::port_mappings(pod)}))
                .unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
        // Attached just now: nothing to check until the kubelet restarts.
        self.network_checked
            .lock()
            .expect("network lock")
            .insert(uid.to_string());
        Ok(())
    }

    fn pod_ips(&self, uid: &str) -> Vec<String> {
        std::fs::read(self.pod_dir(uid).join("network.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["ips"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    }

    /// Starts a container's next attempt.
    /// Container `c`'s environment (`env`, `envFrom`, service variables), with the
    /// ConfigMaps and Secrets it names read from the API; what cannot be resolved is a
    /// `CreateContainerConfigError`.
    async fn environment(
        &self,
        pod: &Pod,
        c: &Container,
    ) -> Result<Vec<(String, String)>, (String, String)> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let config_error = |m: String| ("CreateContainerConfigError".to_string(), m);
        let (cms, secrets) = crate::env::references(c);
        let mut sources = crate::env::Sources::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
        for name in cms {
            let cm = cm_api
                .get_opt(&name)
                .await
                .map_err(|e| config_error(e.to_string()))?;
            sources
                .config_maps
                .insert(name, cm.map(|cm| cm.data.unwrap_or_default()));
        }
        let secret_api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        for name in secrets {
            let secret = secret_api
                .get_opt(&name)
                .await
                .map_err(|e| config_error(e.to_string()))?;
            let data = secret.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect()
            });
            sources.secrets.insert(name, data);
        }
        let services = self.services.as_ref().map(|s| s.list()).unwrap_or_default();
        let pod_ips = self.pod_addresses(pod);
        let cx = crate::env::Context {
            pod,
            node_ip: &self.node_ip,
            pod_ips: &pod_ips,
            allocatable: &self.allocatable,
            services: &services,
            sources: &sources,
        };
        let env = crate::env::resolve(c, &cx).map_err(|e| config_error(e.0))?;
        for (source, keys) in &env.skipped {
            let msg = format!(
                "Keys [{}] from the EnvFrom {source} were skipped since they are considered invalid environment variable names.",
                keys.join(", ")
            );
            self.events
                .pod(
                    pod,
                    Some(&c.name),
                    Kind::Warning,
                    "InvalidEnvironmentVariableNames",
                    &msg,
                )
                .await;
        }
        Ok(env.vars)
    }

    async fn start(
        &self,
        pod: &Pod,
        c: &Container,
        attempt: u32,
        netns: &Path,
        infra: i32,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Result<(), (String, String)> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let img = self.image(pod, c).await?;
        let cfg = self
            .images
            .config(&img)
            .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;
        let layers = self
            .images
            .layer_dirs(&img)
            .map_err(|e| ("CreateContainerError".to_string(), e.to_string()))?;
        let strs = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        };
        let entry = strs(&cfg["config"]["Entrypoint"]);
        let cmd = strs(&cfg["config"]["Cmd"]);
        let environment = self.environment(pod, c).await?;
        let args = match (&c.command, &c.args) {
            (Some(command), args) => crate::env::expand_args(
                &command
                    .iter()
                    .chain(args.iter().flatten())
                    .cloned()
                    .collect::<Vec<_>>(),
                &environment,
            ),
            (None, Some(args)) => entry
                .iter()
                .cloned()
                .chain(crate::env::expand_args(args, &environment))
                .collect(),
            (None, None) => entry.iter().chain(cmd.iter()).cloned().collect::<Vec<_>>(),
        };
        if args.is_empty() {
            return Err(("CreateContainerError".into(), "no command specified".into()));
        }
        // The image's variables, overridden by the container's.
        let mut env = strs(&cfg["config"]["Env"]);
        for (k, v) in &environment {
            env.retain(|x| x.split_once('=').map_or(x.as_str(), |(n, _)| n) != k.as_str());
            env.push(format!("{k}={v}"));
        }
        let cwd = c
            .working_dir
            .clone()
            .or_else(|| cfg["config"]["WorkingDir"].as_str().map(String::from))
            .unwrap_or_else(|| "/".into());
        let id = Self::container_id(&uid, &c.name, attempt);
        let dir = self.attempt_dir(&uid, &c.name, attempt);
        let bundle_dir = dir.join("bundle");
        let memory_limit = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .and_then(|q| ferrokube_api::quantity::Quantity::parse(&q.0).ok())
            .map(|q| q.value() as i64);
        // Who the process runs as: the image's user, overridden by the securityContexts.
        let psc = pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone())
            .unwrap_or_default();
        let csc = c.security_context.clone().unwrap_or_default();
        let (mut uid_n, mut gid_n) =
            image_user(cfg["config"]["User"].as_str().unwrap_or_default(), &layers);
        if let Some(u) = csc.run_as_user.or(psc.run_as_user) {
            uid_n = u as u32;
        }
        if let Some(g) = csc.run_as_group.or(psc.run_as_group) {
            gid_n = g as u32;
        }
        if csc.run_as_non_root.or(psc.run_as_non_root) == Some(true) && uid_n == 0 {
            let who = format!(
                "(pod: \"{}_{}({uid})\", container: {})",
                pod.metadata.name.as_deref().unwrap_or_default(),
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                c.name
            );
            let msg = if csc.run_as_user.or(psc.run_as_user).is_some() {
                format!("container's runAsUser breaks non-root policy {who}")
            } else {
                format!("container has runAsNonRoot and image will run as root {who}")
            };
            return Err(("CreateContainerConfigError".into(), msg));
        }
        let mut additional_gids: Vec<u32> = psc
            .supplemental_groups
            .iter()
            .flatten()
            .map(|g| *g as u32)
            .collect();
        if let Some(fs) = psc.fs_group {
            additional_gids.push(fs as u32);
        }
        let capabilities = csc.capabilities.as_ref().map(|caps| {
            bundle::capabilities(
                &caps.add.clone().unwrap_or_default(),
                &caps.drop.clone().unwrap_or_default(),
            )
        });
        // CPU: shares from the request (2 at least, as upstream), quota from the limit.
        let milli = |which: &str| {
            c.resources
                .as_ref()
                .and_then(|r| {
                    if which == "requests" {
                        r.requests.as_ref()
                    } else {
                        r.limits.as_ref()
                    }
                })
                .and_then(|m| m.get("cpu"))
                .and_then(|q| ferrokube_api::quantity::Quantity::parse(&q.0).ok())
                .map(|q| q.milli_value() as i64)
        };
        let cpu_shares = Some(
            milli("requests")
                .or(milli("limits"))
                .map_or(2, |m| ((m * 1024) / 1000).max(2)) as u64,
        );
        let cpu_quota = milli("limits").map(|m| (m * 100).max(1000));
        let mut binds = self.etc_files(pod).map_err(|e| {
            (
                "CreateContainerError".to_string(),
                format!("pod /etc files: {e}"),
            )
        })?;
        // The termination message file (`terminationMessagePath`), written by the
        // container, read by the kubelet when it ends.
        let message_path = c
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        if !message_path.is_empty() {
            let file = dir.join("termination-log");
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&file, b""))
                .and_then(|()| {
                    use std::os::unix::fs::PermissionsExt as _;
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))
                })
                .map_err(|e| {
                    (
                        "CreateContainerError".to_string(),
                        format!("termination message file: {e}"),
                    )
                })?;
            binds.push((message_path, file, false));
        }
        binds.extend(
            crate::volumes::mounts(c, volumes, &environment)
                .map_err(|e| ("CreateContainerConfigError".to_string(), e))?,
        );
        let spec = ContainerSpec {
            binds,
            args,
            env,
            cwd,
            hostname: pod.metadata.name.clone().unwrap_or_default(),
            tty: c.tty.unwrap_or(false),
            net_ns: (!netns.as_os_str().is_empty()).then(|| netns.to_path_buf()),
            host_network: pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
            cgroups_path: format!("{}/{id}", self.pod_cgroup_of(pod)),
            memory_limit,
            cpu_shares,
            cpu_quota,
            uid: uid_n,
            gid: gid_n,
            ipc_ns: Some(PathBuf::from(format!("/proc/{infra}/ns/ipc"))),
            uts_ns: Some(PathBuf::from(format!("/proc/{infra}/ns/uts"))),
            pid_ns: pod
                .spec
                .as_ref()
                .and_then(|s| s.share_process_namespace)
                .unwrap_or(false)
                .then(|| PathBuf::from(format!("/proc/{infra}/ns/pid"))),
            additional_gids,
            capabilities,
            no_new_privileges: csc.allow_privilege_escalation == Some(false),
            privileged: csc.privileged.unwrap_or(false),
            readonly_rootfs: csc.read_only_root_filesystem.unwrap_or(false),
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| ("CreateContainerError".to_string(), e.to_string()))?;
        bundle::write(&bundle_dir, &spec)
            .map_err(|e| ("CreateContainerError".to_string(), e.to_string()))?;
        rootfs::mount_overlay(
            &layers,
            &dir.join("upper"),
            &dir.join("work"),
            &bundle_dir.join("rootfs"),
        )
        .map_err(|e| {
            (
                "CreateContainerError".to_string(),
                format!("root filesystem: {e}"),
            )
        })?;
        std::fs::write(
            dir.join("image"),
            format!("{}\n{}", img.reference, img.digest),
        )
        .ok();
        std::fs::write(dir.join("started"), ferrokube_time_now()).ok();
        let log_dir = self.log_dir(pod, &c.name);
        std::fs::create_dir_all(&log_dir).ok();
        let a = ShimArgs {
            runc_root: self.runc.root.clone(),
            id,
            bundle: bundle_dir,
            log: log_dir.join(format!("{attempt}.log")),
            exit_file: dir.join("exit.json"),
            log_max_size: self.log_max_size,
            log_max_files: self.log_max_files,
            stdin: c.stdin.unwrap_or(false),
            stdin_once: c.stdin_once.unwrap_or(false),
        };
        let status = std::process::Command::new(&self.shim_exe)
            .arg("shim")
            .args(a.to_args())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| ("RunContainerError".to_string(), e.to_string()))?;
        if !status.success() {
            return Err(("RunContainerError".into(), "the shim did not start".into()));
        }
        // As CRI's StartContainer: done once runc has started the process (or it has
        // already ended), so the status never says running before it runs.
        let (bundle_dir, exit_file) = (a.bundle.clone(), a.exit_file.clone());
        let _ = tokio::task::spawn_blocking(move || {
            shim::wait_running(&bundle_dir, &exit_file, Duration::from_secs(10))
        })
        .await;
        self.events
            .pod(
                pod,
                Some(&c.name),
                Kind::Normal,
                "Created",
                &format!("Created container {}", c.name),
            )
            .await;
        self.events
            .pod(
                pod,
                Some(&c.name),
                Kind::Normal,
                "Started",
                &format!("Started container {}", c.name),
            )
            .await;
        Ok(())
    }

    /// Where a container's logs go (`<podLogsDir>/<ns>_<name>_<uid>/<container>`).
    pub fn log_dir(&self, pod: &Pod, container: &str) -> PathBuf {
        let m = &pod.metadata;
        self.log_dir_of(
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
            m.uid.as_deref().unwrap_or_default(),
            container,
        )
    }

    fn log_dir_of(&self, namespace: &str, pod: &str, uid: &str, container: &str) -> PathBuf {
        self.pod_logs_dir
            .join(format!("{namespace}_{pod}_{uid}"))
            .join(container)
    }

    /// A pod's cgroup, by the QoS class its status gives.
    fn pod_cgroup_of(&self, pod: &Pod) -> String {
        let qos = pod
            .status
            .as_ref()
            .and_then(|s| s.qos_class.as_deref())
            .unwrap_or("BestEffort");
        cgroups::pod_cgroup(
            &self.cgroup_root,
            qos,
            pod.metadata.uid.as_deref().unwrap_or_default(),
        )
    }

    /// The running containers of the pods this kubelet runs (app containers and
    /// sidecars), with their cgroups: what [`crate::stats`] measures.
    pub fn running_containers(&self) -> Vec<crate::stats::Running> {
        let pods: Vec<Arc<Pod>> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|(_, tx)| tx.borrow().clone())
            .collect();
        let mut out = Vec::new();
        for pod in pods {
            let Some(spec) = &pod.spec else { continue };
            let m = &pod.metadata;
            let uid = m.uid.clone().unwrap_or_default();
            let cgroup = self.pod_cgroup_of(&pod);
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            for c in sidecars.chain(&spec.containers) {
                if let Some(id) = self.running_id(&uid, &c.name) {
                    out.push(crate::stats::Running {
                        namespace: m.namespace.clone().unwrap_or_default(),
                        pod: m.name.clone().unwrap_or_default(),
                        uid: uid.clone(),
                        container: c.name.clone(),
                        cgroup: format!("{cgroup}/{id}"),
                        id,
                    });
                }
            }
        }
        out
    }

    /// The runc id of a container's running attempt.
    pub fn running_id(&self, uid: &str, container: &str) -> Option<String> {
        match self.latest(uid, container) {
            (_, Attempt::Running { id, .. }) => Some(id),
            _ => None,
        }
    }

    /// The log file of a container attempt, by the container ID its status reports
    /// (`runc://<id>`; the latest attempt when empty), and the file its exit is recorded
    /// in.
    pub fn attempt_log(
        &self,
        namespace: &str,
        pod: &str,
        uid: &str,
        container: &str,
        container_id: &str,
    ) -> Result<(PathBuf, PathBuf), String> {
        let not_found = || format!("container \"{container}\" in pod \"{pod}\" is not available");
        let attempt = if container_id.is_empty() {
            *self.attempts(uid, container).last().ok_or_else(not_found)?
        } else {
            let id = container_id.strip_prefix("runc://").unwrap_or(container_id);
            Self::attempt_of(uid, container, id).ok_or_else(not_found)?
        };
        Ok((
            self.log_dir_of(namespace, pod, uid, container)
                .join(format!("{attempt}.log")),
            self.attempt_dir(uid, container, attempt).join("exit.json"),
        ))
    }

    /// The network namespace of a pod running here: `Some(None)` when it uses the
    /// node's (hostNetwork), `None` when the pod is not here.
    pub fn pod_netns(&self, uid: &str) -> Option<Option<PathBuf>> {
        if !self.pod_dir(uid).is_dir() {
            return None;
        }
        let ns = sandbox::netns_path(&self.root, uid);
        Some(rootfs::is_mounted(&ns).then_some(ns))
    }

    /// Removes a finished attempt's container and mount.
    fn remove_attempt(&self, uid: &str, name: &str, attempt: u32) {
        let id = Self::container_id(uid, name, attempt);
        self.probes.lock().expect("lock").remove(&id);
        self.killing.lock().expect("lock").remove(&id);
        let _ = self.runc.delete(&id);
        let dir = self.attempt_dir(uid, name, attempt);
        let _ = rootfs::unmount(&dir.join("bundle/rootfs"));
    }

    /// Everything of a pod gone from this node: containers, mounts, cgroups, netns, files.
    pub fn cleanup(&self, uid: &str) {
        let containers = self.pod_dir(uid).join("containers");
        for c in std::fs::read_dir(&containers)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = c.file_name().to_string_lossy().into_owned();
            for a in self.attempts(uid, &name) {
                self.remove_attempt(uid, &name, a);
            }
        }
        if let (Some(cni), Ok(b)) = (
            &self.cni,
            std::fs::read(self.pod_dir(uid).join("network.json")),
        ) {
            let ports = serde_json::from_slice::<Value>(&b)
                .ok()
                .and_then(|v| v["ports"].as_array().cloned())
                .unwrap_or_default();
            cni.del(uid, &sandbox::netns_path(&self.root, uid), &ports);
        }
        sandbox::stop_infra(&self.pod_dir(uid));
        let _ = sandbox::remove_netns(&self.root, uid);
        for qos in ["Guaranteed", "Burstable", "BestEffort"] {
            cgroups::remove_pod(&cgroups::pod_cgroup(&self.cgroup_root, qos, uid));
        }
        crate::volumes::teardown(&self.pod_dir(uid));
        self.volumes.lock().expect("lock").remove(uid);
        self.network_checked.lock().expect("lock").remove(uid);
        self.tokens
            .lock()
            .expect("lock")
            .retain(|(u, _, _), _| u != uid);
        self.reported
            .lock()
            .expect("lock")
            .retain(|k, _| !k.starts_with(&format!("{uid}/")));
        let _ = std::fs::remove_dir_all(self.pod_dir(uid));
        // Its logs: `<ns>_<name>_<uid>`.
        let suffix = format!("_{uid}");
        for d in std::fs::read_dir(&self.pod_logs_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            if d.file_name().to_string_lossy().ends_with(&suffix) {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }

    /// One pass over every pod of this node.
    /// Hands every pod of this node (from the API, and static pods) to its pod worker,
    /// starting workers for new pods and telling those of vanished pods to clean up. Pods
    /// are synced in parallel, so that one slow pod (an image pull, a grace period)
    /// never holds up the others.
    pub async fn dispatch(self: &Arc<Self>, store: &Store<Pod>) {
        let pods = store.list();
        let mut live = std::collections::HashSet::new();
        // Static pods first: they run whatever the API says; their mirrors show them.
        let statics = self
            .static_pod_path
            .as_deref()
            .map(|d| static_pods::read(d, &self.node))
            .unwrap_or_default();
        let hashes: std::collections::HashSet<&str> =
            statics.iter().filter_map(static_pods::hash_of).collect();
        for mirror in pods.iter().filter(|p| static_pods::is_mirror(p)) {
            let hash = mirror
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(static_pods::CONFIG_MIRROR))
                .map(String::as_str)
                .unwrap_or_default();
            if !hashes.contains(hash) && store.has_synced() {
                self.delete_mirror(mirror).await;
            }
        }
        for sp in &statics {
            let uid = sp.metadata.uid.clone().unwrap_or_default();
            live.insert(uid.clone());
            let key = format!(
                "{}/{}",
                sp.metadata.namespace.as_deref().unwrap_or_default(),
                sp.metadata.name.as_deref().unwrap_or_default()
            );
            let mirror = store.get(&key);
            let mut running = sp.clone();
            if let Some(m) = &mirror {
                if static_pods::is_mirror(m) {
                    running.status = m.status.clone();
                }
            }
            if store.has_synced() {
                self.ensure_mirror(sp, mirror.as_deref()).await;
            }
            self.deliver(&uid, Some(Arc::new(running)));
        }
        for pod in &pods {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(self.node.as_str())
                || static_pods::is_mirror(pod)
            {
                continue;
            }
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            live.insert(uid.clone());
            self.deliver(&uid, Some(pod.clone()));
        }
        // The QoS classes' cgroups: BestEffort gets the least CPU weight, Burstable what its
        // pods request together.
        let burstable: i64 = statics
            .iter()
            .map(|p| p as &Pod)
            .chain(
                pods.iter()
                    .filter(|p| {
                        p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                            == Some(self.node.as_str())
                            && !static_pods::is_mirror(p)
                            && p.metadata.deletion_timestamp.is_none()
                    })
                    .map(|p| p.as_ref()),
            )
            .filter(|p| p.status.as_ref().and_then(|s| s.qos_class.as_deref()) == Some("Burstable"))
            .map(|p| cgroups::pod_resources(p).cpu_request_milli)
            .sum();
        let shares = cgroups::milli_to_shares(burstable);
        let mut last = self
            .burstable_shares
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *last != Some(shares) {
            let root = self.cgroup_root.trim_end_matches('/');
            let written = cgroups::set_cpu_shares(&format!("{root}/kubepods/burstable"), shares)
                .and_then(|_| {
                    cgroups::set_cpu_shares(
                        &format!("{root}/kubepods/besteffort"),
                        cgroups::MIN_SHARES,
                    )
                });
            match written {
                Ok(()) => *last = Some(shares),
                Err(e) => tracing::warn!("QoS cgroups: {e}"),
            }
        }
        drop(last);
        if !store.has_synced() {
            return;
        }
        // Pods deleted from the API (or manifests removed): their workers clean up.
        let gone: Vec<String> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|uid| !live.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.deliver(&uid, None);
        }
        // Pods that went while the kubelet was away have no worker: clean up here.
        for d in std::fs::read_dir(self.root.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let uid = d.file_name().to_string_lossy().into_owned();
            let has_worker = self
                .workers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&uid);
            if !live.contains(&uid) && !has_worker {
                tracing::info!(%uid, "cleaning up a pod that is gone");
                self.cleanup(&uid);
            }
        }
    }

    /// Gives a pod's worker its latest spec (`None`: the pod is gone), starting the
    /// worker when there is none.
    fn deliver(self: &Arc<Self>, uid: &str, pod: Option<Arc<Pod>>) {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, tx)) = workers.get(uid) {
            tx.send_replace(pod);
            return;
        }
        if pod.is_none() {
            return;
        }
        let generation = self
            .next_worker
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::watch::channel(pod);
        workers.insert(uid.to_string(), (generation, tx));
        tokio::spawn(self.clone().work(uid.to_string(), generation, rx));
    }

    /// A pod worker: syncs its pod whenever the spec changes and every second; when the
    /// pod is gone, cleans up what is left of it and ends.
    async fn work(
        self: Arc<Self>,
        uid: String,
        generation: u64,
        mut rx: tokio::sync::watch::Receiver<Option<Arc<Pod>>>,
    ) {
        loop {
            let current = rx.borrow_and_update().clone();
            let Some(pod) = current else { break };
            // A sync runs runc, CNI plugins and file work: blocking calls, so the worker
            // takes a thread of its own for it and the runtime's threads stay free.
            let result = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(self.sync(&pod))
            });
            if let Err(e) = result {
                tracing::warn!(pod = ?pod.metadata.name, "sync: {e}");
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
        if rx.borrow().is_none() {
            tracing::info!(%uid, "cleaning up a pod that is gone");
            tokio::task::block_in_place(|| self.cleanup(&uid));
        }
        // A pod back meanwhile (a static pod's manifest restored) gets a new worker at
        // the next dispatch.
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if workers.get(&uid).is_some_and(|(g, _)| *g == generation) {
            workers.remove(&uid);
        }
    }

    /// Makes the API show a static pod: creates its mirror, replaces a stale or deleted
    /// one.
    async fn ensure_mirror(&self, sp: &Pod, current: Option<&Pod>) {
        let ns = sp.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        if let Some(m) = current {
            if !static_pods::is_mirror(m) {
                tracing::warn!(pod = ?sp.metadata.name, "a pod that is not our mirror has the static pod's name");
                return;
            }
            let hash = m
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(static_pods::CONFIG_MIRROR));
            let fresh = hash.map(String::as_str) == static_pods::hash_of(sp)
                && m.metadata.deletion_timestamp.is_none();
            if fresh {
                return;
            }
            self.delete_mirror(m).await;
            return;
        }
        if let Err(e) = api.create(&static_pods::mirror_of(sp)).await {
            if !e.is_conflict() {
                tracing::warn!(pod = ?sp.metadata.name, "creating the mirror pod: {e}");
            }
        }
    }

    /// Deletes a mirror pod at once (its static pod is not affected).
    async fn delete_mirror(&self, m: &Pod) {
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            m.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let opts = DeleteOptions {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: m.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        if let Err(e) = api
            .delete(m.metadata.name.as_deref().unwrap_or_default(), Some(&opts))
            .await
        {
            if !e.is_not_found() && !e.is_conflict() {
                tracing::warn!(pod = ?m.metadata.name, "deleting the mirror pod: {e}");
            }
        }
    }

    async fn sync(&self, pod: &Pod) -> Result<(), crate::Error> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            return self.terminate(pod, &api).await;
        }
        if let Ok(msg) = std::fs::read_to_string(self.pod_dir(&uid).join("evicted")) {
            return self.evicted(pod, &api, &msg).await;
        }
        let host_network = spec.host_network.unwrap_or(false);
        // No runtime, no new sandbox: the pod waits, as upstream's do while the runtime
        // is down.
        if !self.pod_dir(&uid).join("infra.pid").exists() {
            if let Some(why) = crate::runtime::runc::missing() {
                let msg = format!("Failed to create pod sandbox: container runtime is down: {why}");
                return self
                    .cannot_start(pod, &api, &spec, &uid, "FailedCreatePodSandBox", msg)
                    .await;
            }
        }
        let netns = if host_network {
            PathBuf::new()
        } else {
            let netns = sandbox::create_netns(&self.root, &uid)
                .map_err(|e| crate::Error::Runtime(format!("pod network namespace: {e}")))?;
            if let Err(msg) = self.attach_network(pod, &uid, &netns) {
                let msg = format!("Failed to create pod sandbox: {msg}");
                return self
                    .cannot_start(pod, &api, &spec, &uid, "FailedCreatePodSandBox", msg)
                    .await;
            }
            netns
        };
        let hostname = if host_network {
            self.node.clone()
        } else {
            spec.hostname.clone().unwrap_or_else(|| name.clone())
        };
        let infra = sandbox::ensure_infra(
            &self.pod_dir(&uid),
            (!host_network).then_some(netns.as_path()),
            &self.shim_exe,
            &hostname,
        )
        .map_err(|e| crate::Error::Runtime(format!("pod infra process: {e}")))?;
        // The pod's cgroup, sized once (a pod's resources do not change), with the infra
        // process in it.
        let marker = self.pod_dir(&uid).join("cgroup");
        if !marker.exists() {
            let cgroup = self.pod_cgroup_of(pod);
            cgroups::ensure_pod(
                &cgroup,
                &cgroups::pod_resources(pod),
                &[infra.unsigned_abs()],
            )
            .map_err(|e| crate::Error::Runtime(format!("pod cgroup {cgroup}: {e}")))?;
            std::fs::write(&marker, &cgroup).ok();
        }
        let volumes = match self.volumes(pod, &uid).await {
            Ok(v) => v,
            Err(msg) => {
                return self
                    .cannot_start(pod, &api, &spec, &uid, "FailedMount", msg)
                    .await
            }
        };
        // emptyDir size limits, measured every so often; over one, the pod is evicted.
        let due = self
            .usage_checked
            .lock()
            .expect("lock")
            .get(&uid)
            .is_none_or(|at| at.elapsed() >= VOLUME_REFRESH);
        if due {
            self.usage_checked
                .lock()
                .expect("lock")
                .insert(uid.clone(), Instant::now());
            if let Some(msg) = crate::volumes::over_limit(&self.pod_dir(&uid), pod) {
                std::fs::write(self.pod_dir(&uid).join("evicted"), &msg).ok();
                self.events
                    .pod(pod, None, Kind::Warning, "Evicted", &msg)
                    .await;
                return self.evicted(pod, &api, &msg).await;
            }
        }
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        // Init containers in order: each regular one must complete before the next
        // starts; a sidecar (restartPolicy: Always) must have started.
        let mut initialized = true;
        let mut init_statuses = Vec::new();
        for c in spec.init_containers.iter().flatten() {
            let sidecar = c.restart_policy.as_deref() == Some("Always");
            if !initialized {
                let restarts = self.attempts(&uid, &c.name).len().saturating_sub(1) as u32;
                init_statuses.push(self.waiting_status(c, restarts, "PodInitializing", ""));
                continue;
            }
            let own = if sidecar {
                "Always"
            } else if policy == "Never" {
                "Never"
            } else {
                "OnFailure"
            };
            let st = self
                .sync_container(pod, c, own, &netns, infra, &volumes)
                .await;
            let done = if sidecar {
                st["state"].get("running").is_some() && st["started"] == true
            } else {
                st["state"]["terminated"]["exitCode"] == 0
            };
            initialized &= done;
            init_statuses.push(st);
        }
        let mut statuses = Vec::new();
        for c in &spec.containers {
            if initialized {
                statuses.push(
                    self.sync_container(pod, c, &policy, &netns, infra, &volumes)
                        .await,
                );
            } else {
                let restarts = self.attempts(&uid, &c.name).len().saturating_sub(1) as u32;
                statuses.push(self.waiting_status(c, restarts, "PodInitializing", ""));
            }
        }
        self.post_status(pod, &api, &policy, statuses, initialized, init_statuses)
            .await
    }

    /// Syncs one container under `policy` (the pod's, or an init container's own):
    /// starts or restarts it when due, runs its probes while it runs; its status.
    #[allow(clippy::too_many_arguments)]
    async fn sync_container(
        &self,
        pod: &Pod,
        c: &Container,
        policy: &str,
        netns: &Path,
        infra: i32,
        volumes: &VolumePaths,
    ) -> Value {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let (n, state) = self.latest(&uid, &c.name);
        let key = format!("{uid}/{}", c.name);
        let restart = match &state {
            Attempt::None => true,
            Attempt::Running { .. } => false,
            Attempt::Exited { exit, .. } => match policy {
                "Always" => true,
                "OnFailure" => exit.exit_code != 0,
                _ => false,
            },
        };
        if restart {
            let next = if matches!(state, Attempt::None) {
                0
            } else {
                n + 1
            };
            let wait = self.waiting.lock().expect("lock").get(&key).cloned();
            let due = wait.as_ref().is_none_or(|(at, _)| Instant::now() >= *at);
            // Reported about as often as upstream's pod workers retry (every 10 s), not
            // on every one-second sync.
            if !due && next > 0 && self.report_due(&key, "BackOff", BACKOFF_REPORT) {
                let msg = format!(
                    "Back-off restarting failed container {} in pod {name}_{ns}({uid})",
                    c.name
                );
                self.events
                    .pod(pod, Some(&c.name), Kind::Warning, "BackOff", &msg)
                    .await;
            }
            if due {
                if next > 0 {
                    self.remove_attempt(&uid, &c.name, n);
                }
                match self.start(pod, c, next, netns, infra, volumes).await {
                    Ok(()) => {
                        self.post_start(pod, c, next).await;
                        // The next restart, if any, waits out the back-off.
                        self.waiting.lock().expect("lock").insert(
                            key.clone(),
                            (
                                Instant::now() + backoff(next + 1),
                                "CrashLoopBackOff".into(),
                            ),
                        );
                    }
                    Err((reason, message)) => {
                        tracing::warn!(pod = %name, container = %c.name, "{reason}: {message}");
                        // As upstream: image errors by their reason (the pull's own
                        // event already said it for ErrImagePull), others by message.
                        let shown = match reason.as_str() {
                            "ErrImagePull" => None,
                            "ErrImageNeverPull" | "InvalidImageName" => Some(&reason),
                            _ => Some(&message),
                        };
                        if let Some(shown) = shown {
                            self.events
                                .pod(
                                    pod,
                                    Some(&c.name),
                                    Kind::Warning,
                                    "Failed",
                                    &format!("Error: {shown}"),
                                )
                                .await;
                        }
                        let back = if reason == "ErrImagePull" {
                            "ImagePullBackOff"
                        } else {
                            reason.as_str()
                        };
                        self.waiting.lock().expect("lock").insert(
                            key.clone(),
                            (Instant::now() + backoff(next + 1), back.to_string()),
                        );
                        return self.waiting_status(c, n, &reason, &message);
                    }
                }
            }
        }
        if let (n, Attempt::Running { id, .. }) = self.latest(&uid, &c.name) {
            self.probe(pod, c, &id, n).await;
        }
        let mut st = self.container_status(pod, c, policy);
        if st["state"].get("running").is_some() {
            let id = st["containerID"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("runc://")
                .to_string();
            let probes = self.probes.lock().expect("lock");
            // Before the prober has seen it: a container without startup and readiness
            // probes is started and ready as soon as it runs.
            let unprobed = c.startup_probe.is_none() && c.readiness_probe.is_none();
            let (started, ready) = probes
                .get(&id)
                .map_or((c.startup_probe.is_none(), unprobed), |p| {
                    (p.started, p.ready)
                });
            st["started"] = json!(started);
            st["ready"] = json!(ready);
        }
        st
    }

    /// A pod's addresses: the node's for `hostNetwork` pods, else those CNI gave it.
    fn pod_addresses(&self, pod: &Pod) -> Vec<String> {
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if host_network {
            return vec![self.node_ip.clone()];
        }
        self.pod_ips(pod.metadata.uid.as_deref().unwrap_or_default())
    }

    /// The address probes and HTTP hooks reach a pod at.
    fn probe_ip(&self, pod: &Pod) -> String {
        self.pod_addresses(pod)
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// Runs the container's due probes (startup first, then liveness and readiness) and
    /// acts on their verdicts: readiness, or a restart-causing kill. A container being
    /// killed is only killed harder once its grace period is over.
    async fn probe(&self, pod: &Pod, c: &Container, id: &str, attempt: u32) {
        use crate::probes::{Kind as P, State, Timing, Verdict};
        let killing = self.killing.lock().expect("lock").get(id).copied();
        if let Some(deadline) = killing {
            if Instant::now() >= deadline {
                let _ = self.runc.kill(id, "KILL");
            }
            return;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = self.attempt_dir(&uid, &c.name, attempt);
        if !shim::running_file(&dir.join("bundle")).exists() {
            return; // runc has not started it yet
        }
        let started_at = std::fs::metadata(dir.join("started"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .and_then(|ago| Instant::now().checked_sub(ago))
            .unwrap_or_else(Instant::now);
        let pod_ip = self.probe_ip(pod);
        let mut state = self
            .probes
            .lock()
            .expect("lock")
            .get(id)
            .cloned()
            .unwrap_or_else(|| State::new(c.startup_probe.is_none()));
        let now = Instant::now();
        for (kind, probe) in [
            (P::Startup, &c.startup_probe),
            (P::Liveness, &c.liveness_probe),
            (P::Readiness, &c.readiness_probe),
        ] {
            let Some(probe) = probe else { continue };
            if (kind == P::Startup) == state.started {
                continue;
            }
            let t = Timing::of(probe);
            if !state.due(kind, &t, started_at, now) {
                continue;
            }
            let outcome = match crate::probes::probe_action(probe, c, &pod_ip) {
                Ok(action) => crate::probes::run(&action, &self.runc, id, t.timeout).await,
                Err(e) => Err(e),
            };
            if let Err(msg) = &outcome {
                let text = format!("{} probe failed: {msg}", kind.title());
                self.events
                    .pod(pod, Some(&c.name), Kind::Warning, "Unhealthy", &text)
                    .await;
            }
            match (kind, state.record(kind, &t, outcome.is_ok(), now)) {
                (P::Startup, Verdict::Succeeded) => state.started = true,
                (P::Readiness, Verdict::Succeeded) => state.ready = true,
                (P::Readiness, Verdict::Failed) => state.ready = false,
                (P::Startup | P::Liveness, Verdict::Failed) => {
                    state.ready = false;
                    self.probes
                        .lock()
                        .expect("lock")
                        .insert(id.to_string(), state);
                    let why = format!(
                        "Container {} failed {} probe, will be restarted",
                        c.name,
                        kind.title().to_ascii_lowercase()
                    );
                    let grace = probe.termination_grace_period_seconds;
                    self.kill_container(pod, c, id, &why, grace).await;
                    return;
                }
                _ => {}
            }
        }
        if c.readiness_probe.is_none() {
            state.ready = state.started;
        }
        self.probes
            .lock()
            .expect("lock")
            .insert(id.to_string(), state);
    }

    /// The pod's grace period for stopping a container.
    fn grace(pod: &Pod, given: Option<i64>) -> Duration {
        let secs = given
            .or_else(|| {
                pod.spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }

    /// Stops a running container as upstream does: the `Killing` event, its preStop
    /// hook (within the grace period), SIGTERM; SIGKILL follows when the grace period
    /// ends (see [`Pods::probe`]) unless it exited.
    async fn kill_container(
        &self,
        pod: &Pod,
        c: &Container,
        id: &str,
        why: &str,
        grace: Option<i64>,
    ) {
        let grace = Self::grace(pod, grace);
        let deadline = Instant::now() + grace;
        self.killing
            .lock()
            .expect("lock")
            .insert(id.to_string(), deadline);
        self.events
            .pod(pod, Some(&c.name), Kind::Normal, "Killing", why)
            .await;
        self.pre_stop(pod, c, id, grace).await;
        let signal = if Instant::now() >= deadline {
            "KILL"
        } else {
            "TERM"
        };
        let _ = self.runc.kill(id, signal);
    }

    /// A lifecycle hook's failure, worded as upstream's handler runner words it.
    fn hook_failure(pod: &Pod, c: &Container, action: &crate::probes::Action, err: &str) -> String {
        let who = format!(
            "{}_{}({})",
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.uid.as_deref().unwrap_or_default()
        );
        match action {
            crate::probes::Action::Exec(argv) => format!(
                "Exec lifecycle hook ([{}]) for Container \"{}\" in Pod \"{who}\" failed - error: {err}, message: \"\"",
                argv.join(" "),
                c.name
            ),
            crate::probes::Action::Http { path, .. } => format!(
                "HTTP lifecycle hook ({path}) for Container \"{}\" in Pod \"{who}\" failed - error: {err}",
                c.name
            ),
            _ => format!("lifecycle hook for Container \"{}\" in Pod \"{who}\" failed - error: {err}", c.name),
        }
    }

    /// Runs the container's postStart hook; a failure kills the container.
    async fn post_start(&self, pod: &Pod, c: &Container, attempt: u32) {
        let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) else {
            return;
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let id = Self::container_id(&uid, &c.name, attempt);
        let dir = self.attempt_dir(&uid, &c.name, attempt);
        if !shim::wait_running(
            &dir.join("bundle"),
            &dir.join("exit.json"),
            Duration::from_secs(30),
        ) {
            return; // it never ran: its status says why
        }
        let outcome = match crate::probes::hook_action(h, c, &self.probe_ip(pod)) {
            Ok(action) => crate::probes::run(&action, &self.runc, &id, Self::grace(pod, None))
                .await
                .map_err(|e| Self::hook_failure(pod, c, &action, &e)),
            Err(e) => Err(e),
        };
        if let Err(msg) = outcome {
            self.events
                .pod(
                    pod,
                    Some(&c.name),
                    Kind::Warning,
                    "FailedPostStartHook",
                    &msg,
                )
                .await;
            self.kill_container(pod, c, &id, "FailedPostStartHook", None)
                .await;
        }
    }

    /// Runs the container's preStop hook, for at most `grace`.
    async fn pre_stop(&self, pod: &Pod, c: &Container, id: &str, grace: Duration) {
        let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else {
            return;
        };
        let outcome = match crate::probes::hook_action(h, c, &self.probe_ip(pod)) {
            Ok(action) => crate::probes::run(&action, &self.runc, id, grace)
                .await
                .map_err(|e| Self::hook_failure(pod, c, &action, &e)),
            Err(e) => Err(e),
        };
        if let Err(msg) = outcome {
            self.events
                .pod(pod, Some(&c.name), Kind::Warning, "FailedPreStopHook", &msg)
                .await;
        }
    }

    /// An evicted pod: its containers killed at once and never restarted, the pod
    /// `Failed` with reason `Evicted` and a DisruptionTarget condition, as upstream's
    /// eviction manager leaves it (the pod object stays).
    async fn evicted(&self, pod: &Pod, api: &Api<Pod>, msg: &str) -> Result<(), crate::Error> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let all: Vec<&Container> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .collect();
        for c in &all {
            if let (_, Attempt::Running { id, .. }) = self.latest(&uid, &c.name) {
                let _ = self.runc.kill(&id, "KILL");
            }
        }
        let mut statuses: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| self.container_status(pod, c, "Never"))
            .collect();
        statuses.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        for st in &mut statuses {
            st["ready"] = json!(false);
        }
        let now = ferrokube_time_now();
        let prev = pod.status.clone().unwrap_or_default();
        let mut conditions: Vec<Value> = prev
            .conditions
            .iter()
            .flatten()
            .filter(|c| c.type_ != "DisruptionTarget")
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .collect();
        for c in &mut conditions {
            if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                if c["status"] != "False" {
                    c["lastTransitionTime"] = json!(now);
                }
                c["status"] = json!("False");
                c["reason"] = json!("PodFailed");
            }
        }
        conditions.push(
            json!({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                               "message": msg, "lastProbeTime": null, "lastTransitionTime": now}),
        );
        let status = json!({"phase": "Failed", "reason": "Evicted", "message": msg,
                            "conditions": conditions, "containerStatuses": statuses});
        let old = serde_json::to_value(&prev).unwrap_or_default();
        if old["phase"] == "Failed"
            && old["reason"] == "Evicted"
            && strip_times(&old["containerStatuses"]) == strip_times(&status["containerStatuses"])
        {
            return Ok(());
        }
        api.patch_status(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
        Ok(())
    }

    /// Whether `message` about `subject` is due to be reported: it differs from the last
    /// one, or that was `every` ago or more. Records it when due.
    fn report_due(&self, subject: &str, message: &str, every: Duration) -> bool {
        let mut reported = self.reported.lock().expect("lock");
        let fresh = reported
            .get(subject)
            .is_some_and(|(m, at)| m == message && at.elapsed() < every);
        if !fresh {
            reported.insert(subject.to_string(), (message.to_string(), Instant::now()));
        }
        !fresh
    }

    /// A pod that cannot start its containers yet (no sandbox, volumes that cannot be
    /// set up): the event (`reason`, repeated at most every minute for the same
    /// message), and containers waiting in `ContainerCreating`, as upstream shows them.
    async fn cannot_start(
        &self,
        pod: &Pod,
        api: &Api<Pod>,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        uid: &str,
        reason: &str,
        msg: String,
    ) -> Result<(), crate::Error> {
        if self.report_due(&format!("{uid}/"), &msg, REPORT_AGAIN) {
            self.events
                .pod(pod, None, Kind::Warning, reason, &msg)
                .await;
        }
        let policy = spec.restart_policy.as_deref().unwrap_or("Always");
        let initialized = spec.init_containers.as_ref().is_none_or(|i| i.is_empty());
        let waiting = |c: &Container| {
            let restarts = self.attempts(uid, &c.name).len().saturating_sub(1) as u32;
            let reason = if initialized {
                "ContainerCreating"
            } else {
                "PodInitializing"
            };
            self.waiting_status(c, restarts, reason, "")
        };
        let statuses = spec.containers.iter().map(waiting).collect();
        let init_statuses = spec.init_containers.iter().flatten().map(waiting).collect();
        self.post_status(pod, api, policy, statuses, initialized, init_statuses)
            .await?;
        Err(crate::Error::Runtime(msg))
    }

    /// The pod's volumes, set up or refreshed from the API when due; their host paths.
    async fn volumes(&self, pod: &Pod, uid: &str) -> Result<BTreeMap<String, PathBuf>, String> {
        if let Some((at, paths)) = self.volumes.lock().expect("lock").get(uid) {
            if at.elapsed() < VOLUME_REFRESH || !crate::volumes::has_api_backed(pod) {
                return Ok(paths.clone());
            }
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let (cms, secrets, claims) = crate::volumes::references(pod);
        let mut objects = crate::volumes::Objects::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
        for name in cms {
            let cm = cm_api.get_opt(&name).await.map_err(|e| e.to_string())?;
            objects.config_maps.insert(name, cm);
        }
        let secret_api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        for name in secrets {
            let secret = secret_api.get_opt(&name).await.map_err(|e| e.to_string())?;
            objects.secrets.insert(name, secret);
        }
        let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        let pv_api: Api<PersistentVolume> = Api::all(self.client.clone());
        for name in claims {
            let pvc = pvc_api
                .get_opt(&name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("persistentvolumeclaim \"{name}\" not found"))?;
            let bound = pvc
                .spec
                .and_then(|s| s.volume_name)
                .filter(|v| !v.is_empty());
            let pv = match bound {
                Some(v) => pv_api.get_opt(&v).await.map_err(|e| e.to_string())?,
                None => None,
            };
            objects.claims.insert(name, pv);
        }
        for key in crate::volumes::token_requests(pod) {
            let token = self.service_account_token(pod, &key).await?;
            objects.tokens.insert(key, token);
        }
        let services = Vec::new();
        let sources = crate::env::Sources::default();
        let pod_ips = self.pod_addresses(pod);
        let cx = crate::env::Context {
            pod,
            node_ip: &self.node_ip,
            pod_ips: &pod_ips,
            allocatable: &self.allocatable,
            services: &services,
            sources: &sources,
        };
        let paths = crate::volumes::setup(&self.pod_dir(uid), pod, &objects, &cx)
            .map_err(|e| e.to_string())?;
        self.volumes
            .lock()
            .expect("lock")
            .insert(uid.to_string(), (Instant::now(), paths.clone()));
        Ok(paths)
    }

    /// A token of the pod's service account bound to the pod, for an audience and
    /// lifetime: requested from the API (TokenRequest) and requested again once 80% of
    /// its lifetime or a day has passed, as upstream's token manager does. When renewal
    /// fails the cached token serves on until it expires.
    async fn service_account_token(
        &self,
        pod: &Pod,
        key: &crate::volumes::TokenKey,
    ) -> Result<String, String> {
        let m = &pod.metadata;
        let uid = m.uid.clone().unwrap_or_default();
        let cache_key = (uid.clone(), key.0.clone(), key.1);
        let cached = self.tokens.lock().expect("lock").get(&cache_key).cloned();
        if let Some(c) = &cached {
            if Instant::now() < c.renew {
                return Ok(c.token.clone());
            }
        }
        let ns = m.namespace.clone().unwrap_or_default();
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "default".into());
        let audiences: Vec<&str> = if key.0.is_empty() {
            vec![]
        } else {
            vec![key.0.as_str()]
        };
        let request = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": audiences,
                "expirationSeconds": key.1,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": m.name, "uid": uid},
            },
        });
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), &ns);
        let requested = Instant::now();
        let answer = match api.create_subresource(&account, "token", &request).await {
            Ok(a) => a,
            Err(e) => match cached {
                Some(c) if requested < c.expires => {
                    tracing::warn!(pod = ?m.name, account, "token renewal failed, the current token stays until it expires: {e}");
                    return Ok(c.token);
                }
                _ => return Err(format!("failed to fetch token: {e}")),
            },
        };
        let token = answer["status"]["token"]
            .as_str()
            .ok_or("failed to fetch token: the answer has no token")?
            .to_string();
        let lifetime = Duration::from_secs(key.1.max(0) as u64);
        let cached = CachedToken {
            token: token.clone(),
            renew: requested + (lifetime * 4 / 5).min(Duration::from_secs(24 * 3600)),
            expires: requested + lifetime,
        };
        self.tokens.lock().expect("lock").insert(cache_key, cached);
        Ok(token)
    }

    fn waiting_status(&self, c: &Container, restarts: u32, reason: &str, message: &str) -> Value {
        let mut waiting = json!({"reason": reason});
        if !message.is_empty() {
            waiting["message"] = json!(message);
        }
        json!({"name": c.name, "image": c.image, "imageID": "", "ready": false, "started": false,
               "restartCount": restarts, "state": {"waiting": waiting}})
    }

    /// A terminated state; its message is the runtime's error, else what the container
    /// wrote to its termination message file, else (`FallbackToLogsOnError`, failed)
    /// the end of its log, as upstream.
    #[allow(clippy::too_many_arguments)]
    fn terminated(
        &self,
        pod: &Pod,
        c: &Container,
        attempt: u32,
        id: &str,
        exit: &Exit,
        started: &str,
    ) -> Value {
        let reason = if exit.lost {
            "Unknown"
        } else if exit.error.is_some() {
            "StartError"
        } else if exit.oom_killed {
            "OOMKilled"
        } else if exit.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let mut t = json!({"exitCode": exit.exit_code, "reason": reason, "startedAt": exit.started_at.as_deref().map(trim_time).unwrap_or_else(|| trim_time(started)),
                           "finishedAt": trim_time(&exit.finished_at), "containerID": format!("runc://{id}")});
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let written = std::fs::read(
            self.attempt_dir(&uid, &c.name, attempt)
                .join("termination-log"),
        )
        .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
        .unwrap_or_default();
        let fallback = c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
            && exit.exit_code != 0;
        let message = if let Some(e) = &exit.error {
            Some(e.clone())
        } else if !written.is_empty() {
            Some(written)
        } else if fallback {
            let log = self.log_dir(pod, &c.name).join(format!("{attempt}.log"));
            Some(shim::log_tail(&log, 80, 2048)).filter(|m| !m.is_empty())
        } else {
            None
        };
        if let Some(m) = message {
            t["message"] = json!(m);
        }
        if let Some(s) = exit.signal {
            t["signal"] = json!(s);
        }
        json!({"terminated": t})
    }

    fn container_status(&self, pod: &Pod, c: &Container, policy: &str) -> Value {
        let uid = &pod.metadata.uid.clone().unwrap_or_default();
        let attempts = self.attempts(uid, &c.name);
        let n = attempts.last().copied().unwrap_or(0);
        let dir = self.container_dir(uid, &c.name).join(n.to_string());
        let image = std::fs::read_to_string(dir.join("image")).unwrap_or_default();
        let mut lines = image.lines();
        let (image_ref, digest) = (
            lines.next().unwrap_or_default().to_string(),
            lines.next().unwrap_or_default().to_string(),
        );
        let repo = image_ref
            .rsplit_once(':')
            .map_or(image_ref.clone(), |(r, _)| r.to_string());
        let key = format!("{uid}/{}", c.name);
        let (state, ready, started, id) = match self.attempt_state(uid, &c.name, n) {
            Attempt::Running { id, started } => (
                json!({"running": {"startedAt": trim_time(&started)}}),
                true,
                true,
                id,
            ),
            Attempt::Exited { id, exit } => {
                let started = std::fs::read_to_string(dir.join("started")).unwrap_or_default();
                let restarting = self
                    .waiting
                    .lock()
                    .expect("lock")
                    .get(&key)
                    .is_some_and(|(at, _)| Instant::now() < *at);
                let term = self.terminated(pod, c, n, &id, &exit, &started);
                let restarts = policy == "Always" || (policy == "OnFailure" && exit.exit_code != 0);
                if restarting && restarts {
                    let msg = format!(
                        "back-off {} restarting failed container={} pod={}",
                        humantime(backoff(n + 1)),
                        c.name,
                        uid
                    );
                    (
                        json!({"waiting": {"reason": "CrashLoopBackOff", "message": msg}}),
                        false,
                        false,
                        id,
                    )
                } else {
                    (term, false, false, id)
                }
            }
            Attempt::None => (
                json!({"waiting": {"reason": "ContainerCreating"}}),
                false,
                false,
                String::new(),
            ),
        };
        let mut st = json!({
            "name": c.name,
            "image": c.image,
            "imageID": if digest.is_empty() { String::new() } else { format!("{repo}@{digest}") },
            "containerID": if id.is_empty() { Value::Null } else { json!(format!("runc://{id}")) },
            "ready": ready,
            "started": started,
            "restartCount": n,
            "state": state,
        });
        // The previous attempt, when there was one.
        if n > 0 {
            if let Attempt::Exited { id, exit } = self.attempt_state(uid, &c.name, n - 1) {
                let prev_dir = self.container_dir(uid, &c.name).join((n - 1).to_string());
                let started = std::fs::read_to_string(prev_dir.join("started")).unwrap_or_default();
                st["lastState"] = self.terminated(pod, c, n - 1, &id, &exit, &started);
            }
        }
        if st["state"].get("waiting").is_some() {
            if let Attempt::Exited { id, exit } = self.attempt_state(uid, &c.name, n) {
                let started = std::fs::read_to_string(dir.join("started")).unwrap_or_default();
                st["lastState"] = self.terminated(pod, c, n, &id, &exit, &started);
            }
        }
        if st["containerID"].is_null() {
            st.as_object_mut().expect("object").remove("containerID");
        }
        st
    }

    async fn post_status(
        &self,
        pod: &Pod,
        api: &Api<Pod>,
        policy: &str,
        statuses: Vec<Value>,
        initialized: bool,
        init_statuses: Vec<Value>,
    ) -> Result<(), crate::Error> {
        // As upstream: container statuses by name, init containers in spec order.
        let mut statuses = statuses;
        statuses.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        // A regular init container that failed for good fails the pod.
        let init_failed = init_statuses.iter().any(|s| {
            s["state"]["terminated"].is_object() && s["state"]["terminated"]["exitCode"] != 0
        }) && policy == "Never";
        let running = statuses
            .iter()
            .filter(|s| s["state"].get("running").is_some())
            .count();
        let terminated: Vec<&Value> = statuses
            .iter()
            .filter_map(|s| s["state"].get("terminated"))
            .collect();
        let all = statuses.len();
        let phase = if init_failed {
            "Failed"
        } else if !initialized {
            "Pending"
        } else if terminated.len() == all && all > 0 && policy != "Always" {
            if terminated.iter().all(|t| t["exitCode"] == 0) {
                "Succeeded"
            } else if policy == "Never" {
                "Failed"
            } else {
                // OnFailure: the failed ones restart.
                "Running"
            }
        } else if running > 0
            || statuses
                .iter()
                .any(|s| s["restartCount"].as_u64().unwrap_or(0) > 0)
        {
            "Running"
        } else {
            "Pending"
        };
        // Sidecars (init containers still running) count towards readiness.
        let sidecars: Vec<&Value> = init_statuses
            .iter()
            .filter(|s| s["state"].get("running").is_some())
            .collect();
        let all_ready = initialized
            && all > 0
            && statuses.iter().all(|s| s["ready"] == true)
            && sidecars.iter().all(|s| s["ready"] == true);
        let now = ferrokube_time_now();
        let prev = pod.status.clone().unwrap_or_default();
        let prev_conditions: BTreeMap<String, Value> = prev
            .conditions
            .iter()
            .flatten()
            .map(|c| (c.type_.clone(), serde_json::to_value(c).unwrap_or_default()))
            .collect();
        let cond = |ty: &str, ok: bool| {
            let status = if ok { "True" } else { "False" };
            let since = prev_conditions
                .get(ty)
                .filter(|c| c["status"] == status)
                .and_then(|c| c.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| json!(now));
            let mut c = json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
            if !ok && ty == "Initialized" {
                let names: Vec<&str> = init_statuses
                    .iter()
                    .filter(|s| {
                        s["state"]["terminated"]["exitCode"] != 0
                            && s["state"].get("running").is_none()
                    })
                    .filter_map(|s| s["name"].as_str())
                    .collect();
                c["reason"] = json!("ContainersNotInitialized");
                c["message"] = json!(format!(
                    "containers with incomplete status: [{}]",
                    names.join(" ")
                ));
            }
            if !ok && (ty == "Ready" || ty == "ContainersReady") {
                let names: Vec<&str> = statuses
                    .iter()
                    .filter(|s| s["ready"] != true)
                    .filter_map(|s| s["name"].as_str())
                    .collect();
                c["reason"] = json!(if phase == "Succeeded" || phase == "Failed" {
                    "PodCompleted"
                } else {
                    "ContainersNotReady"
                });
                if c["reason"] == "ContainersNotReady" {
                    c["message"] = json!(format!(
                        "containers with unready status: [{}]",
                        names.join(" ")
                    ));
                }
            }
            c
        };
        let ips = self.pod_addresses(pod);
        let mut status = json!({
            "phase": phase,
            "hostIP": self.node_ip,
            "hostIPs": [{"ip": self.node_ip}],
            "startTime": prev.start_time.as_ref().map(|t| json!(t)).unwrap_or_else(|| json!(now)),
            "conditions": [
                cond("PodReadyToStartContainers", true),
                cond("Initialized", initialized),
                cond("Ready", all_ready),
                cond("ContainersReady", all_ready),
                cond("PodScheduled", true),
            ],
            "containerStatuses": statuses,
        });
        if !init_statuses.is_empty() {
            status["initContainerStatuses"] = json!(init_statuses);
        }
        if let Some(first) = ips.first() {
            status["podIP"] = json!(first);
            status["podIPs"] = json!(ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>());
        }
        // Only write when something other than timestamps changed.
        let old = serde_json::to_value(&prev).unwrap_or_default();
        let same = old["phase"] == status["phase"]
            && old["podIP"] == status["podIP"]
            && strip_times(&old["containerStatuses"]) == strip_times(&status["containerStatuses"])
            && strip_times(&old["initContainerStatuses"])
                == strip_times(&status["initContainerStatuses"])
            && strip_times(&old["conditions"]) == strip_times(&status["conditions"]);
        if same {
            return Ok(());
        }
        api.patch_status(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
        Ok(())
    }

    /// A pod being deleted: stop its containers (TERM, then KILL after the grace
    /// period), clean up, and remove the pod from the API.
    async fn terminate(&self, pod: &Pod, api: &Api<Pod>) -> Result<(), crate::Error> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .unwrap_or(30)
            .max(0) as u64;
        let deadline = pod
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(jiff::Timestamp::now);
        let overdue = jiff::Timestamp::now() >= deadline || grace == 0;
        let mut running = false;
        let spec = pod.spec.clone().unwrap_or_default();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            if let (_, Attempt::Running { id, .. }) = self.latest(&uid, &c.name) {
                running = true;
                let stopping = self.killing.lock().expect("lock").contains_key(&id);
                if overdue {
                    let _ = self.runc.kill(&id, "KILL");
                } else if !stopping {
                    // Once per container: the event, preStop, SIGTERM.
                    let why = format!("Stopping container {}", c.name);
                    self.kill_container(pod, c, &id, &why, Some(grace as i64))
                        .await;
                }
            }
        }
        if running {
            return Ok(());
        }
        self.cleanup(&uid);
        let opts = DeleteOptions {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api
            .delete(
                pod.metadata.name.as_deref().unwrap_or_default(),
                Some(&opts),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The image's `User` (`uid`, `uid:gid`, or a name looked up in the image's
/// `/etc/passwd`) as numbers; root when unset or unknown.
fn image_user(user: &str, layers: &[PathBuf]) -> (u32, u32) {
    if user.is_empty() {
        return (0, 0);
    }
    let (u, g) = user
        .split_once(':')
        .map_or((user, None), |(u, g)| (u, Some(g)));
    let passwd: String = layers
        .iter()
        .rev()
        .find_map(|l| std::fs::read_to_string(l.join("etc/passwd")).ok())
        .unwrap_or_default();
    let lookup = |name: &str| -> Option<(u32, u32)> {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.first() != Some(&name) {
                return None;
            }
            Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
        })
    };
    let (uid, pgid) = match u.parse::<u32>() {
        Ok(n) => (n, passwd_gid(&passwd, n).unwrap_or(0)),
        Err(_) => lookup(u).unwrap_or((0, 0)),
    };
    let gid = g.and_then(|g| g.parse().ok()).unwrap_or(pgid);
    (uid, gid)
}

fn passwd_gid(passwd: &str, uid: u32) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.get(2)?.parse::<u32>().ok()? != uid {
            return None;
        }
        f.get(3)?.parse().ok()
    })
}

fn strip_times(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "lastTransitionTime" | "lastProbeTime" | "lastHeartbeatTime" | "message"
                    )
                })
                .map(|(k, v)| (k.clone(), strip_times(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_times).collect()),
        other => other.clone(),
    }
}

fn ferrokube_time_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// RFC 3339 with whole seconds, as pod statuses carry times.
fn trim_time(t: &str) -> String {
    match t.parse::<jiff::Timestamp>() {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => t.trim().to_string(),
    }
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(4), Duration::from_secs(80));
        assert_eq!(backoff(5), Duration::from_secs(160));
        assert_eq!(backoff(9), Duration::from_secs(300));
    }
}
