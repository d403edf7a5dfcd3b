//! Forgetting stale UDP flows with `conntrack -D`: UDP has no connection to end, so a
//! client keeps sending to a gone endpoint (or into a REJECT) until its conntrack entry
//! is deleted (upstream's `conntrack.CleanStaleEntries`).

use crate::model::StaleUdp;

/// `conntrack -D -p udp` with these filters.
fn delete_udp(filters: &[(&str, String)]) -> Vec<String> {
    let mut c: Vec<String> = ["-D", "-p", "udp"].map(String::from).to_vec();
    for (flag, value) in filters {
        c.push((*flag).to_string());
        c.push(value.clone());
    }
    c
}

/// The `conntrack` argument lists that delete `stale`'s flows.
pub fn commands(stale: &StaleUdp) -> Vec<Vec<String>> {
    let (dst, port, reply) = ("--orig-dst", "--orig-port-dst", "--reply-src");
    let mut out = Vec::new();
    for (ip, p, ep) in &stale.endpoints {
        out.push(delete_udp(&[
            (dst, ip.to_string()),
            (port, p.to_string()),
            (reply, ep.to_string()),
        ]));
    }
    for (np, ep) in &stale.node_port_endpoints {
        out.push(delete_udp(&[
            (port, np.to_string()),
            (reply, ep.to_string()),
        ]));
    }
    for (ip, p) in &stale.services {
        out.push(delete_udp(&[(dst, ip.to_string()), (port, p.to_string())]));
    }
    for np in &stale.node_ports {
        out.push(delete_udp(&[(port, np.to_string())]));
    }
    out
}

/// Deletes the flows; failures are logged (the next change retries nothing, as upstream).
pub fn clear(stale: &StaleUdp) {
    for args in commands(stale) {
        match std::process::Command::new("conntrack").args(&args).output() {
            // Exit 1 with "0 flow entries have been deleted" is not a failure.
            Ok(o)
                if o.status.success()
                    || String::from_utf8_lossy(&o.stderr).contains("0 flow entries") =>
            {
                tracing::debug!(?args, "conntrack flows deleted");
            }
            Ok(o) => tracing::warn!(
                ?args,
                "conntrack: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => tracing::warn!(?args, "conntrack: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn one_command_per_stale_flow_set() {
        let mut s = StaleUdp::default();
        s.endpoints.insert((
            Ipv4Addr::new(10, 96, 0, 10),
            53,
            Ipv4Addr::new(10, 244, 1, 5),
        ));
        s.node_ports.insert(30053);
        let c = commands(&s);
        assert_eq!(
            c[0].join(" "),
            "-D -p udp --orig-dst 10.96.0.10 --orig-port-dst 53 --reply-src 10.244.1.5"
        );
        assert_eq!(c[1].join(" "), "-D -p udp --orig-port-dst 30053");
    }
}
