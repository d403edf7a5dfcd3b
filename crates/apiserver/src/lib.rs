//! kube-apiserver: the Kubernetes HTTPS/JSON API, with the replicated store embedded.
//!
//! Start at [`server`]: it terminates TLS (HTTP/2 and HTTP/1.1) and routes requests.
//! [`pki`] makes the cluster CA, serving and admin certificates on first start, and
//! [`kubeconfig`] writes the admin kubeconfig. Served so far: `/version`, `/healthz`,
//! `/livez`, `/readyz`; resources are not served yet.

pub mod kubeconfig;
pub mod pki;
pub mod server;

pub use server::{ApiServer, ServeError};
