//! Network namespaces a test creates for its node (the network-safety rule: pod
//! networks, bridges and routes exist only inside them, never on the host's uplink).
//! Everything the test runs on the node — API server, registry, kubelet, kubectl — runs
//! inside, on the namespace's own loopback. Dropping it kills what runs inside and
//! deletes the namespace (and with it every interface the test made).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A named network namespace (`ip netns`).
pub struct NetNs {
    pub name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl NetNs {
    /// Creates one with loopback up.
    pub fn new() -> NetNs {
        let name = format!(
            "fk{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "ip netns add {name} failed (tests that build node networks run as root)"
        );
        let ns = NetNs { name };
        let ok = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "bringing loopback up in {}", ns.name);
        ns
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        // nsenter joins only the network namespace (`ip netns exec` would also give the
        // program a mount namespace with /sys remounted, hiding the cgroup mounts).
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// Processes running inside.
    pub fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
