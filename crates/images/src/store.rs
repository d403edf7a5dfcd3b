//! The node's image store: blobs by digest under `<root>/blobs/sha256/`, image records
//! under `<root>/images/`, and each layer unpacked once under `<root>/layers/<digest>/`
//! in overlayfs form (whiteouts as 0/0 character devices, opaque directories marked
//! with `trusted.overlay.opaque`), ready to be stacked per container.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::reference::Reference;
use crate::registry::{sha256, Credentials, Endpoint, Registry, DOCKER_LIST, OCI_INDEX};
use crate::Error;

/// A pulled image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Image {
    /// The reference it was pulled as (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// The digest of its (platform) manifest: the image ID kubectl shows as `imageID`.
    pub digest: String,
    /// The digest of its config blob.
    pub config_digest: String,
    /// Layer blob digests, lowest first.
    pub layers: Vec<String>,
}

/// Registry mirrors, like containerd's hosts configuration: a registry name (or `*`
/// for every registry) mapped to the endpoints tried first, in order. With `fallback`
/// off the registry itself is never contacted — how nodes without outside access (and
/// every test here) are configured.
#[derive(Debug, Clone)]
pub struct Mirrors {
    pub map: HashMap<String, Vec<Endpoint>>,
    pub fallback: bool,
}

impl Default for Mirrors {
    fn default() -> Self {
        Mirrors {
            map: HashMap::new(),
            fallback: true,
        }
    }
}

impl Mirrors {
    /// Parses `registry=endpoint[,endpoint...]` entries (`docker.io=http://127.0.0.1:5000`,
    /// `*=http://127.0.0.1:5000`).
    pub fn parse(entries: &[String]) -> Result<Mirrors, Error> {
        let mut map = HashMap::new();
        for e in entries {
            let (reg, eps) = e
                .split_once('=')
                .ok_or_else(|| Error::Registry(format!("mirror {e:?} is not registry=endpoint")))?;
            let eps = eps
                .split(',')
                .map(Endpoint::parse)
                .collect::<Result<Vec<_>, _>>()?;
            map.insert(reg.to_string(), eps);
        }
        Ok(Mirrors {
            map,
            fallback: true,
        })
    }

    /// The endpoints for a registry, mirrors first.
    fn for_registry(&self, r: &Reference) -> Vec<Endpoint> {
        let mut eps = self
            .map
            .get(&r.registry)
            .or_else(|| self.map.get("*"))
            .cloned()
            .unwrap_or_default();
        if self.fallback {
            let host = r.endpoint_host().to_string();
            let loopback = host.starts_with("127.")
                || host.starts_with("localhost")
                || host.starts_with("[::1]");
            eps.push(Endpoint {
                scheme: if loopback { "http" } else { "https" }.into(),
                host,
            });
        }
        eps
    }
}

/// The store.
pub struct ImageStore {
    root: PathBuf,
    mirrors: Mirrors,
    /// Held while layers are unpacked (or removed), so that concurrent users of one
    /// layer never see it half done.
    layers_lock: std::sync::Mutex<()>,
    /// Pulls under way: blobs they wrote are not recorded yet, so removal waits.
    pulls: std::sync::atomic::AtomicUsize,
}

/// Counts a pull as under way while it lives.
struct PullGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for PullGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("{}: {e}", path.display()))
}

/// Writes a file atomically (temporary name, then rename).
/// Bytes a file or directory tree takes on disk (symbolic links not followed).
fn disk_usage(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    let mut total = m.blocks() * 512;
    if m.is_dir() {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            total += disk_usage(&e.path());
        }
    }
    total
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, data).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

impl ImageStore {
    pub fn open(root: &Path, mirrors: Mirrors) -> Result<ImageStore, Error> {
        for d in ["blobs/sha256", "images", "layers"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| io(&p, e))?;
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
            mirrors,
            layers_lock: std::sync::Mutex::new(()),
            pulls: Default::default(),
        })
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex(digest))
    }

    fn record_path(&self, reference: &Reference) -> PathBuf {
        self.root
            .join("images")
            .join(hex(&sha256(reference.full().as_bytes())))
    }

    /// A blob already in the store.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, Error> {
        let p = self.blob_path(digest);
        std::fs::read(&p).map_err(|e| io(&p, e))
    }

    /// Stores a blob, checking its digest.
    pub fn put_blob(&self, digest: &str, data: &[u8]) -> Result<(), Error> {
        let got = sha256(data);
        if got != digest {
            return Err(Error::Digest(format!("blob {digest} has digest {got}")));
        }
        let p = self.blob_path(digest);
        if !p.exists() {
            write_atomic(&p, data)?;
        }
        Ok(())
    }

    /// The image recorded for a reference, if pulled before (`IfNotPresent`).
    pub fn get(&self, reference: &str) -> Result<Option<Image>, Error> {
        let r = Reference::parse(reference)?;
        let p = self.record_path(&r);
        match std::fs::read(&p) {
            Ok(b) => {
                let img: Image = serde_json::from_slice(&b)?;
                // Present only when whole: every layer unpacked or its blob kept.
                let whole = self.blob_path(&img.config_digest).exists()
                    && img.layers.iter().all(|l| {
                        self.root
                            .join("layers")
                            .join(hex(l))
                            .join(".unpacked")
                            .exists()
                            || self.blob_path(l).exists()
                    });
                Ok(whole.then_some(img))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p, e)),
        }
    }

    /// Records an image under a reference.
    pub fn record(&self, reference: &Reference, image: &Image) -> Result<(), Error> {
        write_atomic(&self.record_path(reference), &serde_json::to_vec(image)?)
    }

    /// Every recorded image.
    pub fn list(&self) -> Result<Vec<Image>, Error> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let p = e.map_err(|e| io(&dir, e))?.path();
            if p.extension().is_some() {
                continue;
            }
            if let Ok(b) = std::fs::read(&p) {
                if let Ok(img) = serde_json::from_slice(&b) {
                    out.push(img);
                }
            }
        }
        Ok(out)
    }

    /// How many pulls are under way.
    pub fn pulls_under_way(&self) -> usize {
        self.pulls.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// When the image under `reference` was recorded (pulled or imported).
    pub fn recorded_at(&self, reference: &str) -> Option<std::time::SystemTime> {
        let r = Reference::parse(reference).ok()?;
        std::fs::metadata(self.record_path(&r))
            .ok()?
            .modified()
            .ok()
    }

    /// The filesystem the store is on: (capacity, available) in bytes.
    pub fn fs_usage(&self) -> Result<(u64, u64), Error> {
        let st = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| Error::Io(format!("statvfs {}: {e}", self.root.display())))?;
        let frag = st.fragment_size();
        Ok((st.blocks() * frag, st.blocks_available() * frag))
    }

    /// Removes the image whose manifest digest is `digest` (every reference recorded
    /// for it), then the blobs and unpacked layers no remaining image needs. Returns the
    /// bytes freed.
    pub fn remove(&self, digest: &str) -> Result<u64, Error> {
        let _guard = self
            .layers_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.pulls.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Err(Error::Io("a pull is under way; removal waits".into()));
        }
        let dir = self.root.join("images");
        for e in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let p = e.map_err(|e| io(&dir, e))?.path();
            let img: Option<Image> = std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if img.is_some_and(|i| i.digest == digest) {
                std::fs::remove_file(&p).map_err(|e| io(&p, e))?;
            }
        }
        let mut needed = std::collections::HashSet::new();
        for img in self.list()? {
            needed.insert(hex(&img.digest).to_string());
            needed.insert(hex(&img.config_digest).to_string());
            needed.extend(img.layers.iter().map(|l| hex(l).to_string()));
        }
        let mut freed = 0;
        for sub in ["blobs/sha256", "layers"] {
            let dir = self.root.join(sub);
            for e in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
                let e = e.map_err(|e| io(&dir, e))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if needed.contains(&name) || name.contains(".tmp") {
                    continue;
                }
                let p = e.path();
                freed += disk_usage(&p);
                let removed = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                removed.map_err(|e| io(&p, e))?;
            }
        }
        Ok(freed)
    }

    /// Endpoints for a registry: its mirrors, then (with fallback) the registry itself,
    /// over plain HTTP for loopback registries and HTTPS otherwise.
    fn endpoints(&self, r: &Reference) -> Vec<Endpoint> {
        self.mirrors.for_registry(r)
    }

    /// Pulls an image: the manifest (resolving a list to linux/amd64 or this machine's
    /// architecture), the config and the layers, verified by digest; records it.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<Credentials>,
    ) -> Result<Image, Error> {
        let r = Reference::parse(reference)?;
        self.pulls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _pulling = PullGuard(&self.pulls);
        let mut last = None;
        for ep in self.endpoints(&r) {
            let mut reg = Registry::new(ep.clone(), credentials.clone());
            match self.pull_from(&mut reg, &r).await {
                Ok(img) => {
                    self.record(&r, &img)?;
                    return Ok(img);
                }
                Err(e) => {
                    tracing::debug!(endpoint = %ep.host, "pulling {reference}: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Registry(format!("no endpoint for {reference}"))))
    }

    async fn pull_from(&self, reg: &mut Registry, r: &Reference) -> Result<Image, Error> {
        let (mut body, mut media, mut digest) = reg.manifest(&r.repository, r.object()).await?;
        if media.starts_with(OCI_INDEX) || media.starts_with(DOCKER_LIST) {
            let index: Value = serde_json::from_slice(&body)?;
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                a => a,
            };
            let chosen = index["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
                .and_then(|m| m["digest"].as_str())
                .ok_or_else(|| Error::NotFound(format!("no linux/{arch} image in {}", r.full())))?
                .to_string();
            (body, media, digest) = reg.manifest(&r.repository, &chosen).await?;
        }
        let _ = media;
        let manifest: Value = serde_json::from_slice(&body)?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| Error::Registry("manifest without a config".into()))?
            .to_string();
        let layers: Vec<String> = manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["digest"].as_str().map(String::from))
            .collect();
        self.put_blob(&digest, &body)?;
        for d in std::iter::once(&config_digest).chain(&layers) {
            if !self.blob_path(d).exists() {
                let data = reg.blob(&r.repository, d).await?;
                self.put_blob(d, &data)?;
            }
        }
        Ok(Image {
            reference: r.full(),
            digest,
            config_digest,
            layers,
        })
    }

    /// The image config (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`).
    pub fn config(&self, image: &Image) -> Result<Value, Error> {
        Ok(serde_json::from_slice(
            &self.read_blob(&image.config_digest)?,
        )?)
    }

    /// Unpacks every layer (once) and returns their directories, lowest first.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, Error> {
        let _guard = self
            .layers_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = Vec::new();
        for d in &image.layers {
            let dir = self.root.join("layers").join(hex(d));
            let done = dir.join(".unpacked");
            let rootfs = dir.join("rootfs");
            if !done.exists() {
                if rootfs.exists() {
                    std::fs::remove_dir_all(&rootfs).map_err(|e| io(&rootfs, e))?;
                }
                std::fs::create_dir_all(&rootfs).map_err(|e| io(&rootfs, e))?;
                let blob = self.read_blob(d)?;
                unpack_layer(&blob, &rootfs)?;
                std::fs::write(&done, d).map_err(|e| io(&done, e))?;
            }
            out.push(rootfs);
        }
        Ok(out)
    }

    /// Stores a pushed-style image (manifest, config and layers given as blobs) under a
    /// reference, as `scripts/images` and image imports do.
    pub fn import(
        &self,
        reference: &str,
        manifest: &[u8],
        blobs: &[(String, Bytes)],
    ) -> Result<Image, Error> {
        let r = Reference::parse(reference)?;
        for (d, b) in blobs {
            self.put_blob(d, b)?;
        }
        let digest = sha256(manifest);
        self.put_blob(&digest, manifest)?;
        let m: Value = serde_json::from_slice(manifest)?;
        let img = Image {
            reference: r.full(),
            digest,
            config_digest: m["config"]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            layers: m["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["digest"].as_str().map(String::from))
                .collect(),
        };
        self.record(&r, &img)?;
        Ok(img)
    }
}

impl ImageStore {
    /// Imports an OCI image layout directory (`oci-layout`, `index.json`, `blobs/`): the
    /// manifest tagged `reference`'s tag (annotation `org.opencontainers.image.ref.name`),
    /// else the first, stored under `reference`.
    pub fn import_oci_layout(&self, dir: &Path, reference: &str) -> Result<Image, Error> {
        let r = Reference::parse(reference)?;
        let read = |p: PathBuf| std::fs::read(&p).map_err(|e| io(&p, e));
        let index: Value = serde_json::from_slice(&read(dir.join("index.json"))?)?;
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        let tag = r.tag.clone().unwrap_or_default();
        let chosen = manifests
            .iter()
            .find(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag.as_str())
            })
            .or(manifests.first())
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| Error::NotFound(format!("no manifest in {}", dir.display())))?
            .to_string();
        let blob = |d: &str| read(dir.join("blobs/sha256").join(hex(d)));
        let manifest = blob(&chosen)?;
        let m: Value = serde_json::from_slice(&manifest)?;
        let mut blobs = Vec::new();
        for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten()) {
            let d = d["digest"]
                .as_str()
                .ok_or_else(|| Error::Layer("a blob without a digest".into()))?;
            blobs.push((d.to_string(), Bytes::from(blob(d)?)));
        }
        self.import(reference, &manifest, &blobs)
    }

    /// Imports a `docker save` archive; every image in it is recorded under its tags
    /// (`RepoTags`). Returns the images.
    pub fn import_docker_archive(&self, archive: &Path) -> Result<Vec<Image>, Error> {
        let file = std::fs::File::open(archive).map_err(|e| io(archive, e))?;
        let mut entries: HashMap<String, Vec<u8>> = HashMap::new();
        let mut tar = tar::Archive::new(file);
        for e in tar.entries().map_err(|e| Error::Layer(e.to_string()))? {
            let mut e = e.map_err(|e| Error::Layer(e.to_string()))?;
            let name = e
                .path()
                .map_err(|e| Error::Layer(e.to_string()))?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data)
                .map_err(|e| Error::Layer(e.to_string()))?;
            entries.insert(name, data);
        }
        let manifest: Value = serde_json::from_slice(
            entries
                .get("manifest.json")
                .ok_or_else(|| Error::Layer("no manifest.json in the archive".into()))?,
        )?;
        let mut out = Vec::new();
        for img in manifest.as_array().into_iter().flatten() {
            let get = |name: &str| {
                entries
                    .get(name)
                    .cloned()
                    .ok_or_else(|| Error::Layer(format!("{name} is missing from the archive")))
            };
            let config = get(img["Config"].as_str().unwrap_or_default())?;
            let mut blobs = vec![(sha256(&config), Bytes::from(config.clone()))];
            let mut layers = Vec::new();
            for l in img["Layers"].as_array().into_iter().flatten() {
                let data = get(l.as_str().unwrap_or_default())?;
                let d = sha256(&data);
                layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": data.len()}));
                blobs.push((d, Bytes::from(data)));
            }
            let m = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": crate::registry::OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[0].0, "size": config.len()},
                "layers": layers,
            }))?;
            for tag in img["RepoTags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                out.push(self.import(tag, &m, &blobs)?);
            }
        }
        Ok(out)
    }
}

/// A layer's tar stream, whatever its compression (gzip, zstd or none).
fn decompressed(blob: &[u8]) -> Result<Box<dyn Read + '_>, Error> {
    Ok(match blob {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(blob)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(
            zstd::stream::read::Decoder::new(blob).map_err(|e| Error::Layer(e.to_string()))?,
        ),
        _ => Box::new(blob),
    })
}

/// Unpacks a layer into `dest` in overlayfs form.
pub fn unpack_layer(blob: &[u8], dest: &Path) -> Result<(), Error> {
    let mut archive = tar::Archive::new(decompressed(blob)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(true);
    for entry in archive.entries().map_err(|e| Error::Layer(e.to_string()))? {
        let mut entry = entry.map_err(|e| Error::Layer(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| Error::Layer(e.to_string()))?
            .into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(Error::Layer(format!(
                "entry {} leaves the layer",
                path.display()
            )));
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let parent = path.parent().unwrap_or(Path::new(""));
        if name == ".wh..wh..opq" {
            let dir = dest.join(parent);
            std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
            set_opaque(&dir)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let target = dest.join(parent).join(hidden);
            if let Some(p) = target.parent() {
                std::fs::create_dir_all(p).map_err(|e| io(p, e))?;
            }
            let _ = std::fs::remove_file(&target);
            whiteout(&target)?;
            continue;
        }
        entry.unpack_in(dest).map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|c| c.to_string())
                .unwrap_or_default();
            Error::Layer(format!("{}: {e} {cause}", path.display()))
        })?;
    }
    Ok(())
}

/// An overlayfs whiteout: a 0/0 character device.
fn whiteout(path: &Path) -> Result<(), Error> {
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .map_err(|e| Error::Layer(format!("whiteout {}: {e}", path.display())))
}

/// An overlayfs opaque directory.
fn set_opaque(dir: &Path) -> Result<(), Error> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| Error::Layer(e.to_string()))?;
    let rc = unsafe {
        nix::libc::setxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc != 0 {
        return Err(Error::Layer(format!(
            "opaque {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            // Raw names, so tests can make hostile archives the builder would refuse.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn layers_unpack_with_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let blob = layer(&[
            ("etc/hosts", b"x"),
            ("etc/.wh.passwd", b""),
            ("var/.wh..wh..opq", b""),
        ]);
        unpack_layer(&blob, dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("etc/hosts")).unwrap(), b"x");
        use std::os::unix::fs::FileTypeExt;
        let wh = std::fs::symlink_metadata(dir.path().join("etc/passwd")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert!(dir.path().join("var").is_dir());
        let escape = layer(&[("../evil", b"x")]);
        assert!(unpack_layer(&escape, dir.path()).is_err());
    }

    #[test]
    fn blobs_are_checked_and_images_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), Mirrors::default()).unwrap();
        assert!(store.put_blob("sha256:00", b"x").is_err());
        let l = layer(&[("bin/sh", b"#!")]);
        let ld = sha256(&l);
        let cfg = br#"{"config":{"Cmd":["sh"]}}"#;
        let cd = sha256(cfg);
        let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": crate::registry::OCI_MANIFEST,
            "config": {"digest": cd, "size": cfg.len()}, "layers": [{"digest": ld, "size": l.len()}]})).unwrap();
        let img = store
            .import(
                "example.com/x:1",
                &manifest,
                &[
                    (cd.clone(), Bytes::from(cfg.to_vec())),
                    (ld.clone(), Bytes::from(l)),
                ],
            )
            .unwrap();
        assert_eq!(store.get("example.com/x:1").unwrap(), Some(img.clone()));
        assert_eq!(store.config(&img).unwrap()["config"]["Cmd"][0], "sh");
        let dirs = store.layer_dirs(&img).unwrap();
        assert_eq!(std::fs::read(dirs[0].join("bin/sh")).unwrap(), b"#!");
        assert!(store.get("example.com/y:1").unwrap().is_none());

        // The same image as an OCI layout and as a `docker save` archive.
        let layout = dir.path().join("layout");
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        let raw_layer = {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o755);
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            b.append_data(&mut h, "bin/sh", &b"#!"[..]).unwrap();
            b.into_inner().unwrap()
        };
        let rd = sha256(&raw_layer);
        let m2 = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": crate::registry::OCI_MANIFEST,
            "config": {"digest": cd, "size": cfg.len()}, "layers": [{"digest": rd, "size": raw_layer.len()}]})).unwrap();
        let md = sha256(&m2);
        for (d, data) in [(&cd, &cfg[..]), (&rd, &raw_layer[..]), (&md, &m2[..])] {
            std::fs::write(layout.join("blobs/sha256").join(hex(d)), data).unwrap();
        }
        std::fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        std::fs::write(layout.join("index.json"), serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
            "manifests": [{"digest": md, "size": m2.len(), "annotations": {"org.opencontainers.image.ref.name": "v2"}}]})).unwrap()).unwrap();
        let imported = store
            .import_oci_layout(&layout, "example.com/laid:v2")
            .unwrap();
        assert_eq!(imported.digest, md);
        assert_eq!(
            std::fs::read(store.layer_dirs(&imported).unwrap()[0].join("bin/sh")).unwrap(),
            b"#!"
        );

        let archive = dir.path().join("saved.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        for (name, data) in [
            ("manifest.json", serde_json::to_vec(&serde_json::json!([{"Config": "cfg.json", "RepoTags": ["saved:1"], "Layers": ["l1/layer.tar"]}])).unwrap()),
            ("cfg.json", cfg.to_vec()),
            ("l1/layer.tar", raw_layer.clone()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.finish().unwrap();
        drop(b);
        let saved = store.import_docker_archive(&archive).unwrap();
        assert_eq!(saved[0].reference, "docker.io/library/saved:1");
        assert!(store.get("saved:1").unwrap().is_some());
        let mut m = Mirrors::parse(&["*=http://127.0.0.1:5000".to_string()]).unwrap();
        let r = Reference::parse("registry.k8s.io/pause").unwrap();
        assert_eq!(m.for_registry(&r).len(), 2, "mirror, then the registry");
        m.fallback = false;
        let eps = m.for_registry(&r);
        assert_eq!((eps.len(), eps[0].host.as_str()), (1, "127.0.0.1:5000"));
    }
}
