//! Pod volumes as upstream's kubelet lays them out under
//! `<pod dir>/volumes/kubernetes.io~<plugin>/<name>`: emptyDir (disk, or tmpfs for
//! `medium: Memory`), hostPath (with its `type` checks), configMap, secret (on tmpfs),
//! downwardAPI and projected volumes written the way upstream's atomic writer does
//! (a `..<timestamp>` directory, a `..data` link swapped atomically, top-level links
//! through it, so a refresh is seen whole and `subPath` mounts keep the old files), and
//! persistentVolumeClaims (the bound PV's hostPath or local path, or an NFS mount).
//! Then each container's mounts, with `subPath`/`subPathExpr` and `readOnly`.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, Pod, Secret,
    ServiceAccountTokenProjection, Volume,
};

use crate::env::Context;

/// A volume that cannot be set up: upstream's `FailedMount` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume \"{volume}\" : {message}")]
pub struct MountError {
    pub volume: String,
    pub message: String,
}

/// The API objects a pod's volumes read, by name (`None`: not found).
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub config_maps: HashMap<String, Option<ConfigMap>>,
    pub secrets: HashMap<String, Option<Secret>>,
    /// PVC name → its bound PersistentVolume (`None`: unbound or missing).
    pub claims: HashMap<String, Option<PersistentVolume>>,
    /// Service-account tokens by (audience, expirationSeconds); audience empty: the
    /// API server's own.
    pub tokens: HashMap<TokenKey, String>,
}

/// What a projected `serviceAccountToken` asks for: its audience and lifetime.
pub type TokenKey = (String, i64);

/// What a projection asks for (upstream's defaults: the API's audience, an hour).
fn token_key(t: &ServiceAccountTokenProjection) -> TokenKey {
    (
        t.audience.clone().unwrap_or_default(),
        t.expiration_seconds.unwrap_or(3600),
    )
}

/// The service-account tokens a pod's projected volumes ask for.
pub fn token_requests(pod: &Pod) -> Vec<TokenKey> {
    let mut out: Vec<TokenKey> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .flat_map(|v| v.projected.iter().flat_map(|p| p.sources.iter().flatten()))
        .filter_map(|src| src.service_account_token.as_ref())
        .map(token_key)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The ConfigMaps, Secrets and PVCs a pod's volumes name.
pub fn references(pod: &Pod) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut cms, mut secrets, mut claims) = (Vec::new(), Vec::new(), Vec::new());
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(c) = &v.config_map {
            cms.push(c.name.clone());
        }
        if let Some(s) = &v.secret {
            secrets.extend(s.secret_name.clone());
        }
        if let Some(c) = &v.persistent_volume_claim {
            claims.push(c.claim_name.clone());
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &src.config_map {
                cms.push(c.name.clone());
            }
            if let Some(s) = &src.secret {
                secrets.push(s.name.clone());
            }
        }
    }
    for l in [&mut cms, &mut secrets, &mut claims] {
        l.sort();
        l.dedup();
    }
    (cms, secrets, claims)
}

/// Whether any volume of the pod is refreshed from API objects (and so worth
/// re-reading now and then).
pub fn has_api_backed(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| {
            v.config_map.is_some()
                || v.secret.is_some()
                || v.projected.is_some()
                || v.downward_api.is_some()
        })
}

fn plugin(v: &Volume) -> Option<&'static str> {
    Some(if v.empty_dir.is_some() {
        "empty-dir"
    } else if v.config_map.is_some() {
        "configmap"
    } else if v.secret.is_some() {
        "secret"
    } else if v.downward_api.is_some() {
        "downward-api"
    } else if v.projected.is_some() {
        "projected"
    } else {
        return None;
    })
}

/// Where a pod-managed volume lives.
pub fn volume_dir(pod_dir: &Path, plugin: &str, name: &str) -> PathBuf {
    pod_dir
        .join("volumes")
        .join(format!("kubernetes.io~{plugin}"))
        .join(name)
}

/// A file a volume holds: contents and mode.
type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// Sets up (or refreshes) every volume of the pod; returns each volume's host path.
pub fn setup(
    pod_dir: &Path,
    pod: &Pod,
    objects: &Objects,
    cx: &Context,
) -> Result<BTreeMap<String, PathBuf>, MountError> {
    let mut out = BTreeMap::new();
    let spec = pod.spec.clone().unwrap_or_default();
    let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group);
    for v in spec.volumes.iter().flatten() {
        let fail = |message: String| MountError {
            volume: v.name.clone(),
            message,
        };
        let path = if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            check_host_path(&p, h.type_.as_deref().unwrap_or("")).map_err(fail)?;
            p
        } else if let Some(c) = &v.persistent_volume_claim {
            claim_path(pod_dir, &v.name, &c.claim_name, objects).map_err(fail)?
        } else if let Some(plugin) = plugin(v) {
            let dir = volume_dir(pod_dir, plugin, &v.name);
            std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
            match plugin {
                "empty-dir" => {
                    let e = v.empty_dir.as_ref().expect("empty-dir");
                    if e.medium.as_deref() == Some("Memory") {
                        mount_tmpfs(&dir, e.size_limit.as_ref().map(|q| q.0.as_str()))
                            .map_err(|e| fail(e.to_string()))?;
                    }
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                        .map_err(|e| fail(e.to_string()))?;
                }
                _ => {
                    if plugin == "secret" || plugin == "projected" {
                        // Secrets never touch the disk, as upstream.
                        mount_tmpfs(&dir, None).map_err(|e| fail(e.to_string()))?;
                    }
                    let payload = payload(v, objects, cx).map_err(fail)?;
                    write_atomic(&dir, &payload, fs_group.map(|g| g as u32))
                        .map_err(|e| fail(e.to_string()))?;
                }
            }
            dir
        } else {
            // Volume types this kubelet does not handle are refused, never ignored.
            return Err(fail("unsupported volume type".into()));
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// Upstream's hostPath `type` checks.
fn check_host_path(p: &Path, ty: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt as _;
    let shown = p.display();
    let meta = std::fs::metadata(p);
    let is =
        |f: &dyn Fn(&std::fs::FileType) -> bool| meta.as_ref().is_ok_and(|m| f(&m.file_type()));
    match ty {
        "" => Ok(()),
        "DirectoryOrCreate" if meta.is_err() => std::fs::create_dir_all(p)
            .and_then(|()| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)))
            .map_err(|e| e.to_string()),
        "FileOrCreate" if meta.is_err() => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        "Directory" | "DirectoryOrCreate" if !is(&|t| t.is_dir()) => Err(format!(
            "hostPath type check failed: {shown} is not a directory"
        )),
        "File" | "FileOrCreate" if !is(&|t| t.is_file()) => {
            Err(format!("hostPath type check failed: {shown} is not a file"))
        }
        "Socket" if !is(&|t| t.is_socket()) => Err(format!(
            "hostPath type check failed: {shown} is not a socket file"
        )),
        "CharDevice" if !is(&|t| t.is_char_device()) => Err(format!(
            "hostPath type check failed: {shown} is not a character device"
        )),
        "BlockDevice" if !is(&|t| t.is_block_device()) => Err(format!(
            "hostPath type check failed: {shown} is not a block device"
        )),
        "Directory" | "DirectoryOrCreate" | "File" | "FileOrCreate" | "Socket" | "CharDevice"
        | "BlockDevice" => Ok(()),
        other => Err(format!("invalid HostPathType {other:?}")),
    }
}

/// A claim's volume: the bound PV's hostPath or local path, or its NFS export mounted
/// under the pod.
fn claim_path(
    pod_dir: &Path,
    volume: &str,
    claim: &str,
    objects: &Objects,
) -> Result<PathBuf, String> {
    let pv = objects
        .claims
        .get(claim)
        .cloned()
        .flatten()
        .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" is not bound"))?;
    let spec = pv.spec.unwrap_or_default();
    if let Some(h) = &spec.host_path {
        let p = PathBuf::from(&h.path);
        check_host_path(&p, h.type_.as_deref().unwrap_or(""))?;
        return Ok(p);
    }
    if let Some(l) = &spec.local {
        let p = PathBuf::from(&l.path);
        if !p.exists() {
            return Err(format!("path \"{}\" does not exist", l.path));
        }
        return Ok(p);
    }
    if let Some(n) = &spec.nfs {
        let dir = volume_dir(pod_dir, "nfs", volume);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        if !crate::runtime::rootfs::is_mounted(&dir) {
            let mut cmd = std::process::Command::new("mount");
            cmd.args(["-t", "nfs"]);
            if n.read_only == Some(true) {
                cmd.args(["-o", "ro"]);
            }
            let out = cmd
                .arg(format!("{}:{}", n.server, n.path))
                .arg(&dir)
                .output()
                .map_err(|e| format!("mount failed: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "mount failed: {}\nMounting command: mount\nMounting arguments: -t nfs {}:{} {}\nOutput: {}",
                    out.status,
                    n.server,
                    n.path,
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        return Ok(dir);
    }
    Err(format!(
        "persistentvolume \"{}\" has a volume source this kubelet cannot mount",
        pv.metadata.name.unwrap_or_default()
    ))
}

fn mount_tmpfs(dir: &Path, size: Option<&str>) -> std::io::Result<()> {
    if crate::runtime::rootfs::is_mounted(dir) {
        return Ok(());
    }
    let size = match size {
        Some(q) => Some(
            ferrokube_api::quantity::Quantity::parse(q)
                .map_err(|_| std::io::Error::other(format!("invalid sizeLimit {q:?}")))?
                .value(),
        ),
        None => None,
    };
    let opts = size.map(|b| format!("size={b}"));
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        opts.as_deref(),
    )
    .map_err(std::io::Error::from)
}

/// Bytes a directory tree takes on disk (symlinks not followed).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => m.blocks() * 512 + disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The eviction message when a disk-backed emptyDir holds more than its `sizeLimit`
/// (upstream's wording), else `None`.
pub fn over_limit(pod_dir: &Path, pod: &Pod) -> Option<String> {
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(e) = &v.empty_dir else { continue };
        let Some(limit) = &e.size_limit else { continue };
        if e.medium.as_deref() == Some("Memory") {
            continue; // the tmpfs is that size: writes fail first
        }
        let Ok(bytes) = ferrokube_api::quantity::Quantity::parse(&limit.0).map(|q| q.value())
        else {
            continue;
        };
        let used = disk_usage(&volume_dir(pod_dir, "empty-dir", &v.name));
        if i128::from(used) > bytes {
            return Some(format!(
                "Usage of EmptyDir volume \"{}\" exceeds the limit \"{}\". ",
                v.name, limit.0
            ));
        }
    }
    None
}

/// Unmounts what a pod's volumes mounted (tmpfs, NFS); the files go with the pod dir.
pub fn teardown(pod_dir: &Path) {
    let root = pod_dir.join("volumes");
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = format!("{}/", root.display());
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = crate::runtime::rootfs::unmount(Path::new(p));
    }
}

/// The files of a configMap, secret, downwardAPI or projected volume.
fn payload(v: &Volume, objects: &Objects, cx: &Context) -> Result<Payload, String> {
    let mut files = Payload::new();
    if let Some(c) = &v.config_map {
        let mode = c.default_mode.unwrap_or(0o644) as u32;
        keyed_files(
            &mut files,
            Keyed::ConfigMap,
            &c.name,
            c.items.as_deref(),
            c.optional,
            mode,
            objects,
        )?;
    } else if let Some(s) = &v.secret {
        let mode = s.default_mode.unwrap_or(0o644) as u32;
        let name = s.secret_name.clone().unwrap_or_default();
        keyed_files(
            &mut files,
            Keyed::Secret,
            &name,
            s.items.as_deref(),
            s.optional,
            mode,
            objects,
        )?;
    } else if let Some(d) = &v.downward_api {
        let mode = d.default_mode.unwrap_or(0o644) as u32;
        downward_files(&mut files, d.items.as_deref().unwrap_or_default(), mode, cx)?;
    } else if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(0o644) as u32;
        for src in p.sources.iter().flatten() {
            if let Some(c) = &src.config_map {
                keyed_files(
                    &mut files,
                    Keyed::ConfigMap,
                    &c.name,
                    c.items.as_deref(),
                    c.optional,
                    mode,
                    objects,
                )?;
            }
            if let Some(s) = &src.secret {
                keyed_files(
                    &mut files,
                    Keyed::Secret,
                    &s.name,
                    s.items.as_deref(),
                    s.optional,
                    mode,
                    objects,
                )?;
            }
            if let Some(d) = &src.downward_api {
                downward_files(&mut files, d.items.as_deref().unwrap_or_default(), mode, cx)?;
            }
            if let Some(t) = &src.service_account_token {
                let key = token_key(t);
                let token = objects
                    .tokens
                    .get(&key)
                    .ok_or_else(|| format!("no service account token for audience {:?}", key.0))?;
                files.insert(t.path.clone(), (token.clone().into_bytes(), mode));
            }
            if src.cluster_trust_bundle.is_some() {
                return Err("clusterTrustBundle projections are not supported".into());
            }
        }
    }
    Ok(files)
}

/// Keys to files: every key, or the listed items (each key must exist unless optional).
fn key_files(
    files: &mut Payload,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: u32,
    missing_key: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    match items {
        None | Some([]) => {
            for (k, v) in data {
                files.insert(k.clone(), (v.clone(), mode));
            }
        }
        Some(items) => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => {
                        let m = it.mode.map_or(mode, |m| m as u32);
                        files.insert(it.path.clone(), (v.clone(), m));
                    }
                    None if optional => {}
                    None => return Err(missing_key(&it.key)),
                }
            }
        }
    }
    Ok(())
}

/// A ConfigMap's data and binary data as bytes, if it exists.
fn config_map_data(objects: &Objects, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let cm = objects.config_maps.get(name).cloned().flatten()?;
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    Some(data)
}

/// A Secret's data, if it exists.
fn secret_data(objects: &Objects, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let s = objects.secrets.get(name).cloned().flatten()?;
    Some(
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
    )
}

/// The kinds of object a volume takes keys from.
#[derive(Clone, Copy)]
enum Keyed {
    ConfigMap,
    Secret,
}

/// The files for the keys of a ConfigMap or Secret (all, or the listed `items`); a
/// missing object or key is an error unless `optional`, worded as upstream.
fn keyed_files(
    files: &mut Payload,
    kind: Keyed,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    mode: u32,
    objects: &Objects,
) -> Result<(), String> {
    let optional = optional == Some(true);
    let data = match kind {
        Keyed::ConfigMap => config_map_data(objects, name),
        Keyed::Secret => secret_data(objects, name),
    };
    let Some(data) = data else {
        return match (optional, kind) {
            (true, _) => Ok(()),
            (false, Keyed::ConfigMap) => Err(format!("configmap \"{name}\" not found")),
            (false, Keyed::Secret) => Err(format!("secret \"{name}\" not found")),
        };
    };
    key_files(files, &data, items, optional, mode, &|k| match kind {
        Keyed::ConfigMap => format!("configmap references non-existent config key: {k}"),
        Keyed::Secret => format!("references non-existent secret key: {k}"),
    })
}

fn downward_files(
    files: &mut Payload,
    items: &[DownwardAPIVolumeFile],
    mode: u32,
    cx: &Context,
) -> Result<(), String> {
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            crate::env::field_value(cx, f).map_err(|e| e.0)?
        } else if let Some(r) = &it.resource_field_ref {
            let name = r.container_name.clone().unwrap_or_default();
            let spec = cx.pod.spec.clone().unwrap_or_default();
            let c = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .find(|c| c.name == name)
                .cloned()
                .ok_or_else(|| format!("container {name:?} not found"))?;
            crate::env::resource_value(cx, &c, r).map_err(|e| e.0)?
        } else {
            continue;
        };
        files.insert(
            it.path.clone(),
            (value.into_bytes(), it.mode.map_or(mode, |m| m as u32)),
        );
    }
    Ok(())
}

/// Whether `rel` is a relative path that stays inside its base.
fn is_contained(rel: &str) -> bool {
    let p = Path::new(rel);
    !rel.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Writes `files` into `dir` as upstream's atomic writer does; unchanged payloads are
/// left alone.
pub fn write_atomic(dir: &Path, files: &Payload, gid: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::symlink;
    for path in files.keys() {
        if !is_contained(path) || path.starts_with("..") {
            return Err(std::io::Error::other(format!("invalid path {path:?}")));
        }
    }
    let data_link = dir.join("..data");
    // The current payload, when there is one.
    if let Ok(current) = std::fs::read_link(&data_link) {
        let cur = dir.join(&current);
        let same = files.iter().all(|(p, (bytes, mode))| {
            let f = cur.join(p);
            std::fs::read(&f).is_ok_and(|b| b == *bytes)
                && std::fs::metadata(&f).is_ok_and(|m| m.permissions().mode() & 0o7777 == *mode)
        }) && count_files(&cur) == files.len();
        if same {
            return Ok(());
        }
    }
    let stamp = jiff::Timestamp::now()
        .strftime("%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let ts_name = format!("..{stamp}");
    let ts = dir.join(&ts_name);
    std::fs::create_dir_all(&ts)?;
    std::fs::set_permissions(&ts, std::fs::Permissions::from_mode(0o755))?;
    for (p, (bytes, mode)) in files {
        let f = ts.join(p);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&f, bytes)?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode))?;
        if let Some(g) = gid {
            nix::unistd::chown(&f, None, Some(nix::unistd::Gid::from_raw(g)))?;
        }
    }
    let old = std::fs::read_link(&data_link).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&ts_name, &tmp)?;
    std::fs::rename(&tmp, &data_link)?;
    // Top-level names link through `..data`; names no longer in the payload go.
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| Path::new(p).components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(top), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old.filter(|o| *o != Path::new(&ts_name)) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// A container's mounts: (destination, host source, read-only), with `subPath` and
/// `subPathExpr` (expanded from the container's environment) resolved inside the
/// volume.
pub fn mounts(
    c: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    env: &[(String, String)],
) -> Result<Vec<(String, PathBuf, bool)>, String> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let base = volumes.get(&m.name).ok_or_else(|| {
            format!(
                "cannot find volume \"{}\" to mount into container \"{}\"",
                m.name, c.name
            )
        })?;
        let sub = match (&m.sub_path, &m.sub_path_expr) {
            (Some(s), _) if !s.is_empty() => Some(s.clone()),
            (_, Some(e)) if !e.is_empty() => {
                Some(crate::env::expand_args(std::slice::from_ref(e), env).remove(0))
            }
            _ => None,
        };
        let source = match sub {
            None => base.clone(),
            Some(sub) => {
                if !is_contained(&sub) {
                    return Err(format!(
                        "subPath {sub:?} must be a relative path without '..'"
                    ));
                }
                let p = base.join(&sub);
                if std::fs::symlink_metadata(&p).is_err() {
                    std::fs::create_dir_all(&p).map_err(|e| format!("subPath {sub}: {e}"))?;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777))
                        .map_err(|e| format!("subPath {sub}: {e}"))?;
                }
                // Followed to the real file (a configMap key's current version), which
                // must stay inside the volume.
                let real = p
                    .canonicalize()
                    .map_err(|e| format!("subPath {sub}: {e}"))?;
                let root = base
                    .canonicalize()
                    .map_err(|e| format!("volume {}: {e}", m.name))?;
                if !real.starts_with(&root) {
                    return Err(format!(
                        "subpath \"{}\" not within volume path \"{}\"",
                        real.display(),
                        root.display()
                    ));
                }
                real
            }
        };
        out.push((m.mount_path.clone(), source, m.read_only.unwrap_or(false)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_swap_the_data_link_and_keep_subpath_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut files = Payload::new();
        files.insert("a".into(), (b"one".to_vec(), 0o644));
        files.insert("sub/b".into(), (b"two".to_vec(), 0o600));
        write_atomic(d, &files, None).unwrap();
        assert_eq!(std::fs::read(d.join("a")).unwrap(), b"one");
        assert_eq!(std::fs::read(d.join("sub/b")).unwrap(), b"two");
        assert_eq!(
            std::fs::read_link(d.join("a")).unwrap(),
            Path::new("..data/a")
        );
        let mode = std::fs::metadata(d.join("sub/b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let first = std::fs::read_link(d.join("..data")).unwrap();
        // Unchanged: nothing rewritten.
        write_atomic(d, &files, None).unwrap();
        assert_eq!(std::fs::read_link(d.join("..data")).unwrap(), first);
        // A subPath-style reference to the old file.
        let pinned = d.join("a").canonicalize().unwrap();
        files.insert("a".into(), (b"uno".to_vec(), 0o644));
        files.remove("sub/b");
        write_atomic(d, &files, None).unwrap();
        assert_ne!(std::fs::read_link(d.join("..data")).unwrap(), first);
        assert_eq!(std::fs::read(d.join("a")).unwrap(), b"uno");
        assert!(
            std::fs::symlink_metadata(d.join("sub")).is_err(),
            "gone keys go"
        );
        assert!(!pinned.exists(), "the old version is removed");
        assert!(write_atomic(
            d,
            &Payload::from([("../x".to_string(), (vec![], 0o644))]),
            None
        )
        .is_err());
    }

    #[test]
    fn host_path_types_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(check_host_path(dir.path(), "Directory").is_ok());
        assert_eq!(
            check_host_path(&file, "Directory").unwrap_err(),
            format!(
                "hostPath type check failed: {} is not a directory",
                file.display()
            )
        );
        assert!(check_host_path(&file, "File").is_ok());
        assert!(check_host_path(&dir.path().join("missing"), "File").is_err());
        let made = dir.path().join("made/deeper");
        assert!(check_host_path(&made, "DirectoryOrCreate").is_ok());
        assert!(made.is_dir());
        let made_file = dir.path().join("new-file");
        assert!(check_host_path(&made_file, "FileOrCreate").is_ok());
        assert!(made_file.is_file());
        assert!(check_host_path(&file, "Socket")
            .unwrap_err()
            .contains("is not a socket file"));
        assert!(check_host_path(Path::new("/dev/null"), "CharDevice").is_ok());
        assert!(check_host_path(&file, "Bogus").is_err());
        assert!(check_host_path(&dir.path().join("anything"), "").is_ok());
    }

    #[test]
    fn sub_paths_stay_inside_their_volume() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        std::os::unix::fs::symlink("/etc", vol.join("escape")).unwrap();
        let volumes = BTreeMap::from([("v".to_string(), vol.clone())]);
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "volumeMounts": [
                {"name": "v", "mountPath": "/data"},
                {"name": "v", "mountPath": "/one", "subPathExpr": "$(POD)/logs", "readOnly": true}
            ]
        }))
        .unwrap();
        let env = vec![("POD".to_string(), "p1".to_string())];
        let m = mounts(&c, &volumes, &env).unwrap();
        assert_eq!(m[0], ("/data".to_string(), vol.clone(), false));
        assert_eq!(m[1].1, vol.canonicalize().unwrap().join("p1/logs"));
        assert!(m[1].2);
        assert!(vol.join("p1/logs").is_dir(), "a missing subPath is made");
        let bad = |sub: &str| {
            let mut c = c.clone();
            c.volume_mounts = Some(vec![serde_json::from_value(
                serde_json::json!({"name": "v", "mountPath": "/x", "subPath": sub}),
            )
            .unwrap()]);
            mounts(&c, &volumes, &env).unwrap_err()
        };
        assert!(bad("escape").contains("not within volume path"));
        assert!(bad("../up").contains("without '..'"));
        assert!(bad("/abs").contains("without '..'"));
    }
}
