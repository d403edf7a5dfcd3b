//! The node's image store against a real registry (Debian's docker-registry on
//! loopback): pushes from `ferrokube-image`, pulls through a mirror with no fallback to
//! any outside registry, manifest lists resolved to this platform, layers unpacked,
//! unknown images and corrupted blobs refused.

use bytes::Bytes;
use ferrokube_images::registry::{sha256, OCI_INDEX};
use ferrokube_images::{Endpoint, Error, ImageStore, Mirrors, Registry};
use integration_tests::registry::LocalRegistry;

fn store(root: &std::path::Path, reg: &LocalRegistry) -> ImageStore {
    let mut m = Mirrors::parse(&[format!("*={}", reg.endpoint())]).unwrap();
    m.fallback = false;
    ImageStore::open(root, m).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_through_a_local_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::start(&dir.path().join("registry"));
    reg.push_busybox(&["latest", "1.35"]);
    let s = store(&dir.path().join("node"), &reg);
    // An unmodified name (`busybox`) resolves through the mirror.
    let img = s.pull("busybox", None).await.unwrap();
    assert_eq!(img.reference, "docker.io/library/busybox:latest");
    assert_eq!(s.get("busybox").unwrap(), Some(img.clone()));
    let cfg = s.config(&img).unwrap();
    assert_eq!(cfg["config"]["Cmd"][0], "sh");
    let layers = s.layer_dirs(&img).unwrap();
    let bb = layers[0].join("bin/busybox");
    use std::os::unix::fs::PermissionsExt;
    assert!(std::fs::metadata(&bb).unwrap().permissions().mode() & 0o111 != 0);
    assert_eq!(
        std::fs::read_link(layers[0].join("bin/sh"))
            .unwrap()
            .to_str(),
        Some("busybox")
    );
    // Both tags are the same image.
    let same = s
        .pull("docker.io/library/busybox:1.35", None)
        .await
        .unwrap();
    assert_eq!(same.digest, img.digest);
    // A pinned digest works too.
    let pinned = s
        .pull(&format!("busybox@{}", img.digest), None)
        .await
        .unwrap();
    assert_eq!(pinned.layers, img.layers);

    // A manifest list resolves to this machine's platform.
    let mut client = Registry::new(Endpoint::parse(&reg.endpoint()).unwrap(), None);
    let arch = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    let other = if arch == "amd64" { "arm64" } else { "amd64" };
    // The other platform's manifest: the same content with an annotation.
    let (mine, media, _) = client
        .manifest("library/busybox", &img.digest)
        .await
        .unwrap();
    let mut theirs: serde_json::Value = serde_json::from_slice(&mine).unwrap();
    theirs["annotations"] = serde_json::json!({"platform": other});
    let theirs = serde_json::to_vec(&theirs).unwrap();
    let their_digest = client
        .push_manifest(
            "library/busybox",
            "other-arch",
            &media,
            Bytes::from(theirs.clone()),
        )
        .await
        .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": media, "digest": their_digest, "size": theirs.len(), "platform": {"os": "linux", "architecture": other}},
            {"mediaType": media, "digest": img.digest, "size": mine.len(), "platform": {"os": "linux", "architecture": arch}},
        ]})).unwrap();
    client
        .push_manifest("library/busybox", "multi", OCI_INDEX, Bytes::from(index))
        .await
        .unwrap();
    let multi = s.pull("busybox:multi", None).await.unwrap();
    assert_eq!(multi.digest, img.digest);

    // Unknown images, and no outside registry is ever tried.
    let err = s.pull("registry.k8s.io/nosuch:1", None).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");

    // A corrupted blob is refused by digest.
    let layer_hex = img.layers[0].trim_start_matches("sha256:");
    let blob = reg
        .dir
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&layer_hex[..2])
        .join(layer_hex)
        .join("data");
    let mut data = std::fs::read(&blob).unwrap();
    let n = data.len();
    data[n / 2] ^= 0xff;
    std::fs::write(&blob, &data).unwrap();
    let fresh = store(&dir.path().join("node2"), &reg);
    let err = fresh.pull("busybox", None).await.unwrap_err();
    assert!(matches!(err, Error::Digest(_)), "{err}");
    assert_eq!(sha256(b"x").len(), 71);
}
