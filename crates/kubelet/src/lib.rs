//! The kubelet: the agent on every node. Start at [`node`]: it registers the Node,
//! posts its status and keeps its Lease; [`config`] reads the `KubeletConfiguration`
//! file; [`pods`] runs the pods bound to the node: [`sandbox`] holds each pod's
//! namespaces and [`runtime`] runs containers with runc; [`server`] serves logs, exec,
//! attach and port-forward to kube-apiserver, and [`stats`] the usage `kubectl top`
//! shows.

pub mod cgroups;
pub mod config;
pub mod env;
pub mod image_gc;
pub mod logs;
pub mod network;
pub mod node;
pub mod pods;
pub mod pressure;
pub mod probes;
pub mod routes;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod static_pods;
pub mod stats;
pub mod volumes;

/// What can go wrong in the kubelet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Api(#[from] ferrokube_client::Error),
    #[error("runtime: {0}")]
    Runtime(String),
}
