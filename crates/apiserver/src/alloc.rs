//! Service cluster IPs and node ports. Each allocated value is a key of its own in the
//! store, written in the same transaction as the Service that holds it (create only if
//! absent), so two Services can never get the same IP or port, even through different
//! API servers. Deleting the Service releases them in the same transaction.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ferrokube_api::status::FieldError;
use serde_json::{json, Value};

/// Where allocation keys live (outside `/registry/`, so watches never see them).
pub const ROOT: &str = "/ferrokube/allocations/";
const IPS: &str = "/ferrokube/allocations/serviceips/";
const PORTS: &str = "/ferrokube/allocations/servicenodeports/";

/// The default node port range.
pub const NODE_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;

/// The Service IP range and node port range.
#[derive(Debug, Clone)]
pub struct Allocator {
    base: u32,
    bits: u8,
    cidr: String,
}

/// Why a CIDR was refused.
#[derive(Debug, thiserror::Error)]
#[error("--service-cluster-ip-range {0:?} must be an IPv4 CIDR with at most 2^20 addresses and at least 4")]
pub struct BadRange(String);

impl Allocator {
    pub fn new(cidr: &str) -> Result<Self, BadRange> {
        let bad = || BadRange(cidr.to_string());
        let (ip, bits) = cidr.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let bits: u8 = bits.parse().map_err(|_| bad())?;
        if !(12..=30).contains(&bits) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - bits);
        Ok(Allocator {
            base: u32::from(ip) & mask,
            bits,
            cidr: cidr.to_string(),
        })
    }

    fn size(&self) -> u32 {
        1 << (32 - self.bits)
    }

    /// The `n`th address of the range (1 = the `kubernetes` Service, 10 = DNS).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + n)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v > self.base && v < self.base + self.size() - 1
    }

    /// The allocation keys a Service holds.
    pub fn keys(&self, svc: &Value) -> Vec<String> {
        let mut keys = Vec::new();
        if let Some(ip) = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        {
            keys.push(format!("{IPS}{ip}"));
        }
        for p in svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
                let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                keys.push(format!("{PORTS}{np}/{proto}"));
            }
        }
        keys
    }

    /// Fills in a new or updated Service's cluster IP and node ports. `old` is the stored
    /// Service on update (its values are kept where the new one leaves them out, as
    /// upstream's `patchAllocatedValues` does); `taken` are the allocation keys held now.
    pub fn assign(
        &self,
        svc: &mut Value,
        old: Option<&Value>,
        taken: &BTreeSet<String>,
    ) -> Result<(), Vec<FieldError>> {
        let mine: BTreeSet<String> = old
            .map(|o| self.keys(o))
            .unwrap_or_default()
            .into_iter()
            .collect();
        let free = |k: &str| !taken.contains(k) || mine.contains(k);
        let spec = svc
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| vec![FieldError::required("spec", "")])?;
        let ty = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        let mut errs = Vec::new();
        if ty == "ExternalName" {
            spec.remove("clusterIPs");
            spec.remove("ipFamilies");
            spec.remove("ipFamilyPolicy");
            for p in spec
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(p) = p.as_object_mut() {
                    p.remove("nodePort");
                }
            }
            return Ok(());
        }
        // Cluster IP.
        let mut ip = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if ip.is_empty() {
            if let Some(first) = spec
                .get("clusterIPs")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(Value::as_str)
            {
                ip = first.to_string();
            }
        }
        if ip.is_empty() {
            if let Some(o) = old
                .and_then(|o| o.pointer("/spec/clusterIP"))
                .and_then(Value::as_str)
            {
                ip = o.to_string();
            }
        }
        if ip.is_empty() {
            ip = (0..64)
                .map(|_| self.nth(rand::random_range(2..self.size() - 1)))
                .find(|c| free(&format!("{IPS}{c}")))
                .ok_or_else(|| {
                    vec![FieldError::invalid_raw(
                        "spec.clusterIPs",
                        "[]string{}".into(),
                        "failed to allocate a serviceIP: range is full",
                    )]
                })?
                .to_string();
        } else if ip != "None" {
            match ip.parse::<Ipv4Addr>() {
                Ok(a) if !self.contains(a) => errs.push(FieldError::invalid_raw(
                    "spec.clusterIPs",
                    format!("[]string{{{ip:?}}}"),
                    format!(
                        "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                        self.cidr
                    ),
                )),
                Ok(_) if !free(&format!("{IPS}{ip}")) => errs.push(FieldError::invalid_raw(
                    "spec.clusterIPs",
                    format!("[]string{{{ip:?}}}"),
                    format!("failed to allocate IP {ip}: provided IP is already allocated"),
                )),
                Ok(_) => {}
                Err(_) => errs.push(FieldError::invalid("spec.clusterIP", &ip, "must be a valid IP address")),
            }
        }
        spec.insert("clusterIP".into(), json!(ip));
        spec.insert("clusterIPs".into(), json!([ip]));
        if ip != "None" || spec.contains_key("selector") {
            spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
            spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
        }
        // Node ports.
        let wants_ports = ty == "NodePort" || ty == "LoadBalancer";
        let old_ports: Vec<Value> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut used: BTreeSet<String> = BTreeSet::new();
        for (i, p) in spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let Some(p) = p.as_object_mut() else { continue };
            if !wants_ports {
                p.remove("nodePort");
                continue;
            }
            let proto = p
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_string();
            let mut np = p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) as u32;
            if np == 0 {
                // Keep the port the same service port had before.
                np = old_ports
                    .iter()
                    .find(|o| {
                        o.get("port") == p.get("port")
                            && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == proto
                    })
                    .and_then(|o| o.get("nodePort"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0) as u32;
            }
            if np == 0 {
                let pick = (0..256).map(|_| rand::random_range(NODE_PORTS)).find(|c| {
                    let k = format!("{PORTS}{c}/{proto}");
                    free(&k) && !used.contains(&k)
                });
                match pick {
                    Some(c) => np = c,
                    None => {
                        errs.push(FieldError::invalid_raw(
                            format!("spec.ports[{i}].nodePort"),
                            "0".into(),
                            "failed to allocate a nodePort: range is full",
                        ));
                        continue;
                    }
                }
            } else if !NODE_PORTS.contains(&np) {
                errs.push(FieldError::invalid_raw(
                    format!("spec.ports[{i}].nodePort"),
                    np.to_string(),
                    format!("provided port is not in the valid range. The range of valid ports is {}-{}", NODE_PORTS.start(), NODE_PORTS.end()),
                ));
                continue;
            } else if !free(&format!("{PORTS}{np}/{proto}"))
                || used.contains(&format!("{PORTS}{np}/{proto}"))
            {
                errs.push(FieldError::invalid_raw(
                    format!("spec.ports[{i}].nodePort"),
                    np.to_string(),
                    "provided port is already allocated",
                ));
                continue;
            }
            used.insert(format!("{PORTS}{np}/{proto}"));
            p.insert("nodePort".into(), json!(np));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigns_free_values_and_refuses_taken_ones() {
        let a = Allocator::new("10.96.0.0/12").unwrap();
        assert_eq!(a.nth(1).to_string(), "10.96.0.1");
        let mut taken = BTreeSet::new();
        taken.insert(format!("{IPS}10.96.0.10"));
        let mut svc =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
        a.assign(&mut svc, None, &taken).unwrap();
        let ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(a.contains(ip));
        let np = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u32;
        assert!(NODE_PORTS.contains(&np));
        assert_eq!(a.keys(&svc).len(), 2);

        let mut dup = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "ports": [{"port": 80}]}});
        let e = a.assign(&mut dup, None, &taken).unwrap_err();
        assert!(
            e[0].to_string()
                .contains("provided IP is already allocated"),
            "{}",
            e[0]
        );
        let mut out = json!({"spec": {"type": "ClusterIP", "clusterIP": "192.168.0.1", "ports": [{"port": 80}]}});
        assert!(a.assign(&mut out, None, &taken).is_err());
        // An update keeps the old values when the new object leaves them out.
        let mut upd =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
        a.assign(&mut upd, Some(&svc), &a.keys(&svc).into_iter().collect())
            .unwrap();
        assert_eq!(upd["spec"]["clusterIP"], svc["spec"]["clusterIP"]);
        assert_eq!(
            upd["spec"]["ports"][0]["nodePort"],
            svc["spec"]["ports"][0]["nodePort"]
        );
        let mut headless = json!({"spec": {"type": "ClusterIP", "clusterIP": "None"}});
        a.assign(&mut headless, None, &taken).unwrap();
        assert!(a.keys(&headless).is_empty());
    }
}
