//! Container images for the kubelet: [`reference`] parses image names as Docker does,
//! [`registry`] speaks the registry v2 protocol (pulls with token auth and redirects,
//! and pushes for building test images), and [`store`] keeps blobs by digest, records
//! pulled images, and unpacks each layer once in the form overlayfs stacks.

pub mod credentials;
pub mod reference;
pub mod registry;
pub mod store;

pub use reference::Reference;
pub use registry::{Credentials, Endpoint, Registry};
pub use store::{Image, ImageStore, Mirrors};

/// What can go wrong with images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {0}")]
    Reference(String),
    #[error("{0}")]
    NotFound(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("registry: {0}")]
    Registry(String),
    #[error("digest mismatch: {0}")]
    Digest(String),
    #[error("layer: {0}")]
    Layer(String),
    #[error("{0}")]
    Io(String),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}
