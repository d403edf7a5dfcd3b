//! `ferrokube-image`: builds an image from a directory (one layer) and pushes it to a
//! registry, or pulls an image into a node's image store.
//!
//! ```text
//! ferrokube-image build --rootfs DIR --registry http://127.0.0.1:5000 --name library/busybox \
//!     --tag latest --tag 1.35 --cmd sh
//! ferrokube-image pull --root /var/lib/kubelet/images --mirror docker.io=http://127.0.0.1:5000 busybox
//! ferrokube-image import --root /var/lib/kubelet/images saved.tar
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use ferrokube_images::registry::{sha256, OCI_MANIFEST};
use ferrokube_images::{Credentials, Endpoint, ImageStore, Mirrors, Registry};
use serde_json::json;

#[derive(Parser)]
#[command(name = "ferrokube-image", version, about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Builds a one-layer image from a directory and pushes it.
    Build {
        /// The image's root filesystem.
        #[arg(long)]
        rootfs: PathBuf,
        /// Registry endpoint (http://127.0.0.1:5000).
        #[arg(long)]
        registry: String,
        /// Repository (library/busybox).
        #[arg(long)]
        name: String,
        /// Tags to push (repeatable).
        #[arg(long = "tag", required = true)]
        tags: Vec<String>,
        /// The default command (repeatable, one word each).
        #[arg(long = "cmd")]
        cmd: Vec<String>,
        /// The entrypoint (repeatable, one word each).
        #[arg(long = "entrypoint")]
        entrypoint: Vec<String>,
        /// Environment (KEY=VALUE, repeatable).
        #[arg(long = "env")]
        env: Vec<String>,
        #[arg(long, default_value = "/")]
        workdir: String,
        /// Push as this registry user (USER:PASSWORD).
        #[arg(long)]
        user: Option<String>,
    },
    /// Makes a root filesystem for a dynamically linked program: the program at
    /// `/<name>` and the shared libraries `ldd` lists, at their paths.
    Rootfs {
        #[arg(long)]
        binary: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Imports an OCI image layout directory (as `--name`) or a `docker save` archive
    /// (under its own tags) into a node's image store.
    Import {
        #[arg(long)]
        root: PathBuf,
        /// The reference an OCI layout is stored as.
        #[arg(long)]
        name: Option<String>,
        path: PathBuf,
    },
    /// Pulls an image into a node's image store and unpacks its layers.
    Pull {
        #[arg(long)]
        root: PathBuf,
        /// registry=endpoint[,endpoint] (repeatable).
        #[arg(long = "mirror")]
        mirrors: Vec<String>,
        /// Never contact registries themselves, only their mirrors.
        #[arg(long)]
        no_fallback: bool,
        image: String,
    },
}

/// The directory as a gzipped tar layer (ownership root, modes kept, no host paths).
fn layer_of(dir: &PathBuf) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Deterministic);
    b.append_dir_all(".", dir)
        .with_context(|| format!("archiving {}", dir.display()))?;
    Ok(b.into_inner()?.finish()?)
}

#[tokio::main]
async fn main() {
    ferrokube_process::init();
    if let Err(e) = run().await {
        ferrokube_process::exit_with(&format!("{e:#}"));
    }
}

async fn run() -> Result<()> {
    match Args::parse().cmd {
        Cmd::Build {
            rootfs,
            registry,
            name,
            tags,
            cmd,
            entrypoint,
            env,
            workdir,
            user,
        } => {
            let layer = layer_of(&rootfs)?;
            // The uncompressed digest is the layer's diff ID.
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&layer[..]), &mut raw)?;
            let mut env = env;
            if !env.iter().any(|e| e.starts_with("PATH=")) {
                env.insert(
                    0,
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                );
            }
            let mut config = json!({
                "architecture": "amd64", "os": "linux",
                "config": {"Env": env, "WorkingDir": workdir},
                "rootfs": {"type": "layers", "diff_ids": [sha256(&raw)]},
            });
            if !cmd.is_empty() {
                config["config"]["Cmd"] = json!(cmd);
            }
            if !entrypoint.is_empty() {
                config["config"]["Entrypoint"] = json!(entrypoint);
            }
            let config = serde_json::to_vec(&config)?;
            let credentials = match user {
                Some(u) => {
                    let (username, password) =
                        u.split_once(':').context("--user must be USER:PASSWORD")?;
                    Some(Credentials {
                        username: username.into(),
                        password: password.into(),
                    })
                }
                None => None,
            };
            let mut reg = Registry::new(Endpoint::parse(&registry)?, credentials);
            let config_digest = reg.push_blob(&name, Bytes::from(config.clone())).await?;
            let layer_digest = reg.push_blob(&name, Bytes::from(layer.clone())).await?;
            let manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
            }))?;
            for tag in &tags {
                let d = reg
                    .push_manifest(&name, tag, OCI_MANIFEST, Bytes::from(manifest.clone()))
                    .await?;
                println!("{name}:{tag} {d}");
            }
        }
        Cmd::Rootfs { binary, out } => {
            let name = binary.file_name().context("--binary names no file")?;
            std::fs::create_dir_all(out.join("tmp"))?;
            std::fs::copy(&binary, out.join(name))
                .with_context(|| format!("copying {}", binary.display()))?;
            let ldd = std::process::Command::new("ldd")
                .arg(&binary)
                .output()
                .context("running ldd")?;
            for line in String::from_utf8_lossy(&ldd.stdout).lines() {
                // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
                // `/lib64/ld-linux-x86-64.so.2 (0x...)`
                let path = match line.split_once("=>") {
                    Some((_, rest)) => rest.split_whitespace().next(),
                    None => line.split_whitespace().next(),
                };
                let Some(path) = path.filter(|p| p.starts_with('/')) else {
                    continue;
                };
                let dest = out.join(path.trim_start_matches('/'));
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::copy(path, &dest).with_context(|| format!("copying {path}"))?;
            }
            println!("{}", out.display());
        }
        Cmd::Import { root, name, path } => {
            let store = ImageStore::open(&root, Mirrors::default())?;
            let images = if path.is_dir() {
                let name = name.context("an OCI layout needs --name")?;
                vec![store.import_oci_layout(&path, &name)?]
            } else {
                store.import_docker_archive(&path)?
            };
            for img in images {
                store.layer_dirs(&img)?;
                println!("{} {}", img.reference, img.digest);
            }
        }
        Cmd::Pull {
            root,
            mirrors,
            no_fallback,
            image,
        } => {
            let mut mirrors = Mirrors::parse(&mirrors)?;
            mirrors.fallback = !no_fallback;
            let store = ImageStore::open(&root, mirrors)?;
            let img = store.pull(&image, None).await?;
            let dirs = store.layer_dirs(&img)?;
            println!("{} {} ({} layers)", img.reference, img.digest, dirs.len());
        }
    }
    Ok(())
}
