//! The kubelet's configuration: upstream's `KubeletConfiguration` file
//! (`kubelet.config.k8s.io/v1beta1`, the fields this kubelet uses) with flags on top.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;

/// `KubeletConfiguration`, the fields this kubelet reads (unknown fields are ignored,
/// as upstream does in its lenient decoding of the file).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KubeletConfiguration {
    pub static_pod_path: Option<PathBuf>,
    pub max_pods: u32,
    pub cgroup_driver: String,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    pub node_status_update_frequency: String,
    pub node_lease_duration_seconds: i32,
    /// Hard eviction thresholds by signal (`memory.available: 100Mi`, `nodefs.available:
    /// 10%`, ...); upstream's defaults fill in the signals not named.
    pub eviction_hard: std::collections::BTreeMap<String, String>,
    /// Where container logs go (`/var/log/pods`).
    pub pod_logs_dir: PathBuf,
    /// A container's log is rotated at this size (a quantity, `10Mi` by default).
    pub container_log_max_size: String,
    /// Log files kept per container, the current one included (5 by default).
    pub container_log_max_files: u32,
    /// Image GC starts at this disk usage (85), and frees down to the low one (80).
    #[serde(rename = "imageGCHighThresholdPercent")]
    pub image_gc_high_threshold_percent: i32,
    #[serde(rename = "imageGCLowThresholdPercent")]
    pub image_gc_low_threshold_percent: i32,
    /// Images younger than this are never collected (`2m`).
    #[serde(rename = "imageMinimumGCAge")]
    pub image_minimum_gc_age: String,
    /// The address and port the kubelet's server listens on (`0.0.0.0`, 10250).
    pub address: String,
    pub port: u16,
    /// The server's certificate and key; self-signed under the root directory if unset.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    pub authentication: Authentication,
}

/// `authentication`: who may call the kubelet's server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Authentication {
    pub x509: X509Authentication,
}

/// `authentication.x509`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct X509Authentication {
    /// Client certificates must chain to this CA (the kubeconfig's CA when unset).
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
}

impl Default for KubeletConfiguration {
    fn default() -> Self {
        KubeletConfiguration {
            static_pod_path: None,
            max_pods: 110,
            cgroup_driver: "cgroupfs".into(),
            cluster_dns: vec![],
            cluster_domain: "cluster.local".into(),
            node_status_update_frequency: "10s".into(),
            node_lease_duration_seconds: 40,
            eviction_hard: Default::default(),
            pod_logs_dir: PathBuf::from("/var/log/pods"),
            container_log_max_size: "10Mi".into(),
            container_log_max_files: 5,
            image_gc_high_threshold_percent: 85,
            image_gc_low_threshold_percent: 80,
            image_minimum_gc_age: "2m".into(),
            address: "0.0.0.0".into(),
            port: 10250,
            tls_cert_file: None,
            tls_private_key_file: None,
            authentication: Authentication::default(),
        }
    }
}

impl KubeletConfiguration {
    /// Reads a configuration file; its `kind` must be `KubeletConfiguration`.
    pub fn load(path: &Path) -> Result<KubeletConfiguration, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let raw: serde_json::Value = serde_norway::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        if raw.get("kind").and_then(|k| k.as_str()) != Some("KubeletConfiguration") {
            return Err(Error::Config(format!(
                "{}: kind must be KubeletConfiguration",
                path.display()
            )));
        }
        serde_json::from_value(raw).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// `containerLogMaxSize` in bytes, and `containerLogMaxFiles`, checked as upstream
    /// validates them.
    pub fn log_rotation(&self) -> Result<(u64, u32), Error> {
        let size = ferrokube_api::quantity::Quantity::parse(&self.container_log_max_size)
            .ok()
            .map(|q| q.value())
            .filter(|v| *v > 0)
            .ok_or_else(|| {
                Error::Config(format!(
                    "containerLogMaxSize: invalid quantity {:?}",
                    self.container_log_max_size
                ))
            })?;
        if self.container_log_max_files < 2 {
            return Err(Error::Config(format!(
                "containerLogMaxFiles: {} must be at least 2",
                self.container_log_max_files
            )));
        }
        Ok((
            u64::try_from(size).unwrap_or(u64::MAX),
            self.container_log_max_files,
        ))
    }

    /// The image GC policy, checked as upstream validates it.
    pub fn image_gc(&self) -> Result<crate::image_gc::Policy, Error> {
        let (high, low) = (
            self.image_gc_high_threshold_percent,
            self.image_gc_low_threshold_percent,
        );
        for (name, flag, v) in [
            (
                "imageGCHighThresholdPercent",
                "--image-gc-high-threshold",
                high,
            ),
            (
                "imageGCLowThresholdPercent",
                "--image-gc-low-threshold",
                low,
            ),
        ] {
            if !(0..=100).contains(&v) {
                return Err(Error::Config(format!(
                    "invalid configuration: {name} ({flag}) {v} must be between 0 and 100, inclusive"
                )));
            }
        }
        if low >= high && high < 100 {
            return Err(Error::Config(format!(
                "invalid configuration: imageGCLowThresholdPercent (--image-gc-low-threshold) {low} must be less than imageGCHighThresholdPercent (--image-gc-high-threshold) {high}"
            )));
        }
        let min_age = parse_duration(&self.image_minimum_gc_age).ok_or_else(|| {
            Error::Config(format!(
                "imageMinimumGCAge: invalid duration {:?}",
                self.image_minimum_gc_age
            ))
        })?;
        Ok(crate::image_gc::Policy {
            high_percent: high as u8,
            low_percent: low as u8,
            min_age,
        })
    }

    /// The status update period.
    pub fn status_period(&self) -> std::time::Duration {
        parse_duration(&self.node_status_update_frequency)
            .unwrap_or(std::time::Duration::from_secs(10))
    }
}

/// Parses a Go duration (`90s`, `1m30s`, `1h0m0s`, `0s`).
pub use ferrokube_api::meta::parse_go_duration as parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_upstream_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yaml");
        std::fs::write(
            &p,
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nstaticPodPath: /etc/kubernetes/manifests\nmaxPods: 50\nclusterDNS:\n- 10.96.0.10\nnodeStatusUpdateFrequency: 5s\nauthentication:\n  anonymous:\n    enabled: false\n",
        )
        .unwrap();
        let c = KubeletConfiguration::load(&p).unwrap();
        assert_eq!(c.image_gc_high_threshold_percent, 85);
        assert_eq!(
            c.static_pod_path.as_deref(),
            Some(Path::new("/etc/kubernetes/manifests"))
        );
        assert_eq!((c.max_pods, c.cluster_dns[0].as_str()), (50, "10.96.0.10"));
        assert_eq!(c.status_period(), std::time::Duration::from_secs(5));
        std::fs::write(
            &p,
            "kind: KubeletConfiguration\nimageGCHighThresholdPercent: 90\nimageGCLowThresholdPercent: 10\nimageMinimumGCAge: 1m\npodLogsDir: /logs\ncontainerLogMaxSize: 1Mi\ncontainerLogMaxFiles: 3\n",
        )
        .unwrap();
        let c = KubeletConfiguration::load(&p).unwrap();
        let gc = c.image_gc().unwrap();
        assert_eq!((gc.high_percent, gc.low_percent), (90, 10));
        assert_eq!(gc.min_age, std::time::Duration::from_secs(60));
        assert_eq!(c.pod_logs_dir, Path::new("/logs"));
        assert_eq!(c.log_rotation().unwrap(), (1 << 20, 3));
        std::fs::write(&p, "kind: Other\n").unwrap();
        assert!(KubeletConfiguration::load(&p).is_err());
    }

    #[test]
    fn image_gc_and_log_rotation_are_validated() {
        let c = KubeletConfiguration::default();
        let p = c.image_gc().unwrap();
        assert_eq!((p.high_percent, p.low_percent), (85, 80));
        assert_eq!(p.min_age, std::time::Duration::from_secs(120));
        assert_eq!(c.log_rotation().unwrap(), (10 << 20, 5));
        let with = |f: &dyn Fn(&mut KubeletConfiguration)| {
            let mut c = KubeletConfiguration::default();
            f(&mut c);
            c
        };
        let err = with(&|c| c.image_gc_low_threshold_percent = 90)
            .image_gc()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("must be less than imageGCHighThresholdPercent"),
            "{err}"
        );
        assert!(with(&|c| c.image_gc_high_threshold_percent = 101)
            .image_gc()
            .is_err());
        assert!(with(&|c| c.image_minimum_gc_age = "soon".into())
            .image_gc()
            .is_err());
        let p = with(&|c| c.image_minimum_gc_age = "1m30s".into())
            .image_gc()
            .unwrap();
        assert_eq!(p.min_age, std::time::Duration::from_secs(90));
        assert!(with(&|c| c.container_log_max_size = "ten".into())
            .log_rotation()
            .is_err());
        assert!(with(&|c| c.container_log_max_files = 1)
            .log_rotation()
            .is_err());
    }
}
