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
    /// A container's log is rotated at this size (a quantity, `10Mi` by default).
    pub container_log_max_size: String,
    /// Log files kept per container, the current one included (5 by default).
    pub container_log_max_files: u32,
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
            container_log_max_size: "10Mi".into(),
            container_log_max_files: 5,
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

    /// The status update period.
    pub fn status_period(&self) -> std::time::Duration {
        parse_duration(&self.node_status_update_frequency)
            .unwrap_or(std::time::Duration::from_secs(10))
    }
}

/// A Go duration with one unit (`10s`, `1m`, `500ms`).
fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n * 60),
        "h" => std::time::Duration::from_secs(n * 3600),
        _ => return None,
    })
}

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
        assert_eq!(
            c.static_pod_path.as_deref(),
            Some(Path::new("/etc/kubernetes/manifests"))
        );
        assert_eq!((c.max_pods, c.cluster_dns[0].as_str()), (50, "10.96.0.10"));
        assert_eq!(c.status_period(), std::time::Duration::from_secs(5));
        std::fs::write(&p, "kind: Other\n").unwrap();
        assert!(KubeletConfiguration::load(&p).is_err());
    }
}
