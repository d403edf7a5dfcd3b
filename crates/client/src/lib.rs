//! The client every ferrokube component uses to reach kube-apiserver: the gRPC resource
//! service underneath, Kubernetes semantics on top.
//!
//! - [`Config`] reads a kubeconfig; [`Client`] is the (mutual TLS) connection.
//! - [`Api`] makes typed calls on one kind: get, list, create, replace, patch (merge,
//!   JSON, strategic, server-side apply), delete, watch, status and subresources;
//!   [`dynamic`] finds resources at run time and views any object as its metadata.
//! - [`informer`] keeps a local cache in step with the server and reports changes;
//!   [`workqueue`] is the rate-limited queue controllers drain; [`leader`] elects one
//!   active replica on a Lease; [`events`] records Events.

mod api;
mod config;
pub mod dynamic;
pub mod events;
pub mod informer;
pub mod leader;
pub mod tls;
pub mod workqueue;

pub use api::{Answer, Api, Client, ListParams, ObjectList, Patch};
pub use config::Config;
pub use informer::{Informer, Store};
pub use leader::{ElectionConfig, LeaderElection, Watchdog};
pub use workqueue::{QueueCounts, WorkQueue};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server answered with an error `Status`.
    #[error("{} ({})", .0.message.as_deref().unwrap_or_default(), .0.reason.as_deref().unwrap_or_default())]
    Api(Box<Status>),
    /// The call did not complete.
    #[error("transport: {0}")]
    Transport(#[from] tonic::Status),
    #[error("decoding: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("leadership lost")]
    LeadershipLost,
    /// A bounded attempt took too long.
    #[error("timed out")]
    Timeout,
}

impl Error {
    /// The HTTP-equivalent code of an API error.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Api(s) => s.code.map(|c| c as u16),
            _ => None,
        }
    }

    /// The `reason` of an API error.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Error::Api(s) => s.reason.as_deref(),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    /// A 409: AlreadyExists or Conflict.
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }

    /// A create refused because the name is taken.
    pub fn is_already_exists(&self) -> bool {
        self.reason() == Some("AlreadyExists")
    }
}
