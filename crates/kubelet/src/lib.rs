//! The kubelet: the agent on every node. Start at [`node`]: it registers the Node,
//! posts its status and keeps its Lease; [`config`] reads the `KubeletConfiguration`
//! file. Running pods (images, runc, the pod network) builds on these.

pub mod config;
pub mod node;

/// What can go wrong in the kubelet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Api(#[from] ferrokube_client::Error),
}
