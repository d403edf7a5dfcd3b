//! The pod network: the kubelet as a CNI runtime (the CNI spec's exec protocol). It
//! reads the first network configuration in the CNI configuration directory, runs its
//! plugins in order to attach a pod's network namespace (ADD, each plugin given the
//! previous one's result) and in reverse to detach it (DEL). When the directory has no
//! configuration and the Node has a `podCIDR`, the kubelet writes one for Debian's
//! standard plugins: `bridge` with `host-local` addresses from the podCIDR (state under
//! the kubelet's root) and `portmap` for hostPorts. The node is Ready once a
//! configuration and its plugins are there.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// Where configurations and plugins are.
#[derive(Debug, Clone)]
pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// State of the generated configuration's address allocator.
    pub data_dir: PathBuf,
}

/// The name of the configuration the kubelet writes.
pub const GENERATED: &str = "10-ferrokube.conflist";

/// A loaded network configuration list.
#[derive(Debug, Clone)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

impl Cni {
    /// The first configuration (by file name), as a list.
    pub fn load(&self) -> Result<NetworkList, String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .map_err(|e| format!("{}: {e}", self.conf_dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect();
        files.sort();
        let path = files
            .first()
            .ok_or("no networks found in the CNI configuration directory")?;
        let v: Value = serde_json::from_slice(&std::fs::read(path).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let name = v["name"].as_str().unwrap_or("cni").to_string();
        let cni_version = v["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
        let plugins = match v.get("plugins").and_then(Value::as_array) {
            Some(p) => p.clone(),
            None => vec![v.clone()],
        };
        Ok(NetworkList {
            name,
            cni_version,
            plugins,
        })
    }

    /// `None` when pods can be networked, else why not (the node's NotReady message).
    pub fn readiness(&self) -> Option<String> {
        match self.load() {
            Err(_) => Some("cni plugin not initialized".into()),
            Ok(list) => list
                .plugins
                .iter()
                .filter_map(|p| p["type"].as_str())
                .find(|t| !self.bin_dir.join(t).exists())
                .map(|t| {
                    format!(
                        "failed to find plugin \"{t}\" in path [{}]",
                        self.bin_dir.display()
                    )
                }),
        }
    }

    /// Writes the kubelet's own configuration for a podCIDR, unless one exists.
    pub fn ensure_config(&self, pod_cidr: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.conf_dir)?;
        if self.load().is_ok() {
            return Ok(());
        }
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "ferrokube",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": self.data_dir}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        let tmp = self.conf_dir.join(".ferrokube.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&conf)?)?;
        std::fs::rename(tmp, self.conf_dir.join(GENERATED))
    }

    fn exec(
        &self,
        command: &str,
        id: &str,
        netns: &Path,
        ifname: &str,
        conf: &Value,
    ) -> Result<Value, String> {
        let ty = conf["type"].as_str().ok_or("a plugin without a type")?;
        let mut child = Command::new(self.bin_dir.join(ty))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.bin_dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{ty}: {e}"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(&serde_json::to_vec(conf).expect("JSON"))
            .map_err(|e| format!("{ty}: {e}"))?;
        let out = child.wait_with_output().map_err(|e| format!("{ty}: {e}"))?;
        let result: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let msg = result["msg"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            return Err(format!("plugin type=\"{ty}\" failed ({command}): {msg}"));
        }
        Ok(result)
    }

    fn plugin_conf(
        list: &NetworkList,
        plugin: &Value,
        prev: Option<&Value>,
        runtime: &Value,
    ) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = json!(list.name);
        conf["cniVersion"] = json!(list.cni_version);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
            let mut rc = serde_json::Map::new();
            for (cap, on) in caps {
                if on == &json!(true) {
                    if let Some(v) = runtime.get(cap) {
                        rc.insert(cap.clone(), v.clone());
                    }
                }
            }
            if !rc.is_empty() {
                conf["runtimeConfig"] = Value::Object(rc);
            }
        }
        conf
    }

    /// Attaches a pod's network namespace; returns its addresses. `port_mappings` are the
    /// pod's hostPorts (`{hostPort, containerPort, protocol}`).
    pub fn add(
        &self,
        id: &str,
        netns: &Path,
        port_mappings: &[Value],
    ) -> Result<Vec<IpAddr>, String> {
        let list = self.load()?;
        let runtime = json!({"portMappings": port_mappings});
        let mut prev: Option<Value> = None;
        for p in &list.plugins {
            let conf = Self::plugin_conf(&list, p, prev.as_ref(), &runtime);
            let result = self.exec("ADD", id, netns, "eth0", &conf)?;
            prev = Some(result);
        }
        Ok(prev
            .as_ref()
            .and_then(|r| r["ips"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
            .collect())
    }

    /// Detaches a pod's network namespace (frees its addresses); errors are logged.
    pub fn del(&self, id: &str, netns: &Path, port_mappings: &[Value]) {
        let Ok(list) = self.load() else { return };
        let runtime = json!({"portMappings": port_mappings});
        for p in list.plugins.iter().rev() {
            let conf = Self::plugin_conf(&list, p, None, &runtime);
            if let Err(e) = self.exec("DEL", id, netns, "eth0", &conf) {
                tracing::warn!(pod = id, "{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_and_readiness() {
        let dir = tempfile::tempdir().unwrap();
        let cni = Cni {
            conf_dir: dir.path().join("net.d"),
            bin_dir: dir.path().join("bin"),
            data_dir: dir.path().join("networks"),
        };
        assert_eq!(
            cni.readiness().as_deref(),
            Some("cni plugin not initialized")
        );
        cni.ensure_config("10.244.1.0/24").unwrap();
        let list = cni.load().unwrap();
        assert_eq!(
            list.plugins[0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.1.0/24"
        );
        assert!(cni
            .readiness()
            .unwrap()
            .contains("failed to find plugin \"bridge\""));
        std::fs::create_dir_all(&cni.bin_dir).unwrap();
        for p in ["bridge", "portmap"] {
            std::fs::write(cni.bin_dir.join(p), "").unwrap();
        }
        assert_eq!(cni.readiness(), None);
        let conf = Cni::plugin_conf(
            &list,
            &list.plugins[1],
            None,
            &json!({"portMappings": [{"hostPort": 80}]}),
        );
        assert_eq!(conf["runtimeConfig"]["portMappings"][0]["hostPort"], 80);
        assert_eq!(conf["name"], "ferrokube");
    }
}
