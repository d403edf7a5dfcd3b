//! Cluster DNS (what CoreDNS's `kubernetes` plugin serves for kubeadm clusters):
//! [`records`] reads Services and EndpointSlices into DNS data, [`answer`] answers one
//! query from it, [`server`] serves UDP and TCP, forwarding other names upstream.

pub mod answer;
pub mod records;
pub mod server;
