//! `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`): the fields kube-proxy
//! reads, with upstream's defaults, decoded from its `--config` file.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;

/// A configuration that cannot be used, with upstream's field path in the message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// How the node's Service rules are programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Iptables,
    Nftables,
}

impl Mode {
    /// Upstream's mode names; empty means iptables on Linux.
    pub fn parse(s: &str) -> Result<Mode, ConfigError> {
        match s {
            "" | "iptables" => Ok(Mode::Iptables),
            "nftables" => Ok(Mode::Nftables),
            "ipvs" => Err(ConfigError(
                "mode: Unsupported value: \"ipvs\": this kube-proxy runs \"iptables\" or \"nftables\"".into(),
            )),
            other => Err(ConfigError(format!(
                "mode: Unsupported value: {other:?}: supported values: \"iptables\", \"nftables\""
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }
}

/// An IPv4 network (`10.244.0.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.trim().split_once('/')?;
        let prefix: u8 = p.parse().ok().filter(|p| *p <= 32)?;
        let addr: Ipv4Addr = a.parse().ok()?;
        let mask = Self::mask(prefix);
        Some(Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.addr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Everything kube-proxy runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub mode: Mode,
    pub kubeconfig: Option<String>,
    pub hostname_override: Option<String>,
    /// Pod network ranges: traffic from outside them to a cluster IP is masqueraded.
    pub cluster_cidrs: Vec<Cidr>,
    pub masquerade_all: bool,
    pub masquerade_bit: u32,
    pub sync_period: Duration,
    pub min_sync_period: Duration,
    /// iptables mode: NodePorts answer on 127.0.0.1 too (route_localnet).
    pub localhost_node_ports: bool,
    /// Addresses NodePorts answer on (CIDRs); empty: every local address.
    pub node_port_addresses: Vec<Cidr>,
    pub healthz_bind_address: Option<SocketAddr>,
    pub metrics_bind_address: Option<SocketAddr>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            mode: Mode::Iptables,
            kubeconfig: None,
            hostname_override: None,
            cluster_cidrs: Vec::new(),
            masquerade_all: false,
            masquerade_bit: 14,
            sync_period: Duration::from_secs(30),
            min_sync_period: Duration::from_secs(1),
            localhost_node_ports: true,
            node_port_addresses: Vec::new(),
            healthz_bind_address: Some(SocketAddr::from(([0, 0, 0, 0], 10256))),
            metrics_bind_address: Some(SocketAddr::from(([127, 0, 0, 1], 10249))),
        }
    }
}

impl ProxyConfig {
    /// The pod network traffic counts as local to (upstream's ClusterCIDR local
    /// detector), when `clusterCIDR` is set.
    pub fn local_source(&self) -> Option<String> {
        self.cluster_cidrs.first().map(|c| c.to_string())
    }

    /// NodePorts answer on every local address (no `nodePortAddresses`, or `0.0.0.0/0`).
    pub fn node_ports_on_all_addresses(&self) -> bool {
        self.node_port_addresses.is_empty()
            || self.node_port_addresses.iter().any(|c| c.prefix == 0)
    }

    /// The mark bit KUBE-MARK-MASQ sets (`0x4000` for the default bit 14).
    pub fn masquerade_mark(&self) -> String {
        format!("{:#x}", 1u32 << self.masquerade_bit)
    }
}

/// Parses `--cluster-cidr` / `clusterCIDR` (comma-separated; IPv6 ranges are ignored, the
/// proxy serves IPv4).
pub fn parse_cidrs(field: &str, s: &str) -> Result<Vec<Cidr>, ConfigError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.contains(':') {
            continue;
        }
        out.push(Cidr::parse(part).ok_or_else(|| {
            ConfigError(format!(
                "{field}: Invalid value: {part:?}: must be a valid CIDR"
            ))
        })?);
    }
    Ok(out)
}

/// `host:port` of a bind address; an empty string turns the endpoint off.
pub fn parse_bind(field: &str, s: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| ConfigError(format!("{field}: Invalid value: {s:?}: must be IP:port")))
}

fn duration(v: &Value, field: &str, default: Duration) -> Result<Duration, ConfigError> {
    match v.get(field.rsplit('.').next().unwrap_or(field)) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(s)) => ferrokube_api::meta::parse_go_duration(s)
            .ok_or_else(|| ConfigError(format!("{field}: Invalid value: {s:?}: invalid duration"))),
        Some(other) => Err(ConfigError(format!(
            "{field}: Invalid value: {other}: must be a duration"
        ))),
    }
}

/// Decodes a `KubeProxyConfiguration` file.
pub fn load(text: &str) -> Result<ProxyConfig, ConfigError> {
    let v: Value =
        serde_norway::from_str(text).map_err(|e| ConfigError(format!("decoding: {e}")))?;
    let api_version = v["apiVersion"].as_str().unwrap_or_default();
    let kind = v["kind"].as_str().unwrap_or_default();
    if api_version != "kubeproxy.config.k8s.io/v1alpha1" || kind != "KubeProxyConfiguration" {
        return Err(ConfigError(format!(
            "no kind {kind:?} is registered for version {api_version:?}: expected kubeproxy.config.k8s.io/v1alpha1 KubeProxyConfiguration"
        )));
    }
    let d = ProxyConfig::default();
    let mode = Mode::parse(v["mode"].as_str().unwrap_or_default())?;
    let section = match mode {
        Mode::Iptables => &v["iptables"],
        Mode::Nftables => &v["nftables"],
    };
    let prefix = mode.as_str();
    let masquerade_bit = match section.get("masqueradeBit") {
        None | Some(Value::Null) => d.masquerade_bit,
        Some(b) => b
            .as_u64()
            .filter(|b| *b <= 31)
            .map(|b| b as u32)
            .ok_or_else(|| {
                ConfigError(format!(
                    "{prefix}.masqueradeBit: Invalid value: {b}: must be within the range [0, 31]"
                ))
            })?,
    };
    let sync_period = duration(section, &format!("{prefix}.syncPeriod"), d.sync_period)?;
    let min_sync_period = duration(
        section,
        &format!("{prefix}.minSyncPeriod"),
        d.min_sync_period,
    )?;
    if sync_period.is_zero() {
        return Err(ConfigError(format!(
            "{prefix}.syncPeriod: Invalid value: \"0s\": must be greater than 0"
        )));
    }
    if min_sync_period > sync_period {
        return Err(ConfigError(format!(
            "{prefix}.minSyncPeriod: Invalid value: must be less than or equal to {prefix}.syncPeriod"
        )));
    }
    let mut node_port_addresses = Vec::new();
    for a in v["nodePortAddresses"].as_array().into_iter().flatten() {
        let s = a.as_str().unwrap_or_default();
        node_port_addresses.extend(parse_cidrs("nodePortAddresses", s)?);
    }
    let str_field = |f: &str| v[f].as_str().filter(|s| !s.is_empty()).map(String::from);
    match v["detectLocalMode"].as_str().unwrap_or_default() {
        "" | "ClusterCIDR" => {}
        other => {
            return Err(ConfigError(format!(
                "detectLocalMode: Unsupported value: {other:?}: supported values: \"ClusterCIDR\""
            )))
        }
    }
    Ok(ProxyConfig {
        mode,
        kubeconfig: v["clientConnection"]["kubeconfig"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from),
        hostname_override: str_field("hostnameOverride"),
        cluster_cidrs: parse_cidrs("clusterCIDR", v["clusterCIDR"].as_str().unwrap_or_default())?,
        masquerade_all: section["masqueradeAll"].as_bool().unwrap_or(false),
        masquerade_bit,
        sync_period,
        min_sync_period,
        localhost_node_ports: v["iptables"]["localhostNodePorts"]
            .as_bool()
            .unwrap_or(true),
        node_port_addresses,
        healthz_bind_address: match v.get("healthzBindAddress").and_then(Value::as_str) {
            None => d.healthz_bind_address,
            Some(s) => parse_bind("healthzBindAddress", s)?,
        },
        metrics_bind_address: match v.get("metricsBindAddress").and_then(Value::as_str) {
            None => d.metrics_bind_address,
            Some(s) => parse_bind("metricsBindAddress", s)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_fields() {
        let c = load(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: 10.244.0.0/16,fd00::/48
clientConnection: {kubeconfig: /var/lib/kube-proxy/kubeconfig.conf}
nftables: {minSyncPeriod: 2s, syncPeriod: 1m, masqueradeBit: 15}
nodePortAddresses: [10.0.0.0/8]
metricsBindAddress: 0.0.0.0:10249
",
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Nftables);
        assert_eq!(c.cluster_cidrs, vec![Cidr::parse("10.244.0.0/16").unwrap()]);
        assert_eq!(c.min_sync_period, Duration::from_secs(2));
        assert_eq!(c.sync_period, Duration::from_secs(60));
        assert_eq!(c.masquerade_mark(), "0x8000");
        assert_eq!(
            c.healthz_bind_address,
            Some("0.0.0.0:10256".parse().unwrap())
        );
        assert_eq!(
            c.metrics_bind_address,
            Some("0.0.0.0:10249".parse().unwrap())
        );
        assert_eq!(
            c.kubeconfig.as_deref(),
            Some("/var/lib/kube-proxy/kubeconfig.conf")
        );
        let d =
            load("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n")
                .unwrap();
        assert_eq!(d, ProxyConfig::default());
        assert_eq!(d.masquerade_mark(), "0x4000");
    }

    #[test]
    fn bad_configs_say_which_field() {
        let head = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
        for (body, want) in [
            ("mode: ipvs\n", "mode: Unsupported value: \"ipvs\""),
            ("mode: userspace\n", "mode: Unsupported value"),
            ("clusterCIDR: 10.244.0.0\n", "clusterCIDR: Invalid value"),
            (
                "iptables: {syncPeriod: 1s, minSyncPeriod: 5s}\n",
                "iptables.minSyncPeriod",
            ),
            ("iptables: {masqueradeBit: 40}\n", "iptables.masqueradeBit"),
            (
                "iptables: {syncPeriod: soon}\n",
                "iptables.syncPeriod: Invalid value",
            ),
            (
                "healthzBindAddress: nowhere\n",
                "healthzBindAddress: Invalid value",
            ),
            (
                "detectLocalMode: BridgeInterface\n",
                "detectLocalMode: Unsupported",
            ),
        ] {
            let e = load(&format!("{head}{body}")).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
        let e = load("apiVersion: v1\nkind: Pod\n").unwrap_err().to_string();
        assert!(e.contains("no kind \"Pod\""), "{e}");
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.244.1.7/16").unwrap();
        assert_eq!(c.to_string(), "10.244.0.0/16");
        assert!(c.contains("10.244.200.1".parse().unwrap()));
        assert!(!c.contains("10.245.0.1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(Ipv4Addr::new(1, 2, 3, 4)));
    }
}
