//! The kubelet: the agent on every node. Start at [`node`]: it registers the Node,
//! posts its status and keeps its Lease; [`config`] reads the `KubeletConfiguration`
//! file; [`runtime`] runs containers with runc. Running pods (images, the pod network,
//! pod workers) builds on these.

pub mod config;
pub mod node;
pub mod runtime;

/// What can go wrong in the kubelet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Api(#[from] ferrokube_client::Error),
}
