//! kube-apiserver: the Kubernetes HTTPS/JSON API, with the replicated store embedded.
//!
//! Start at [`server`]: it terminates TLS (HTTP/2 and HTTP/1.1) and routes requests.
//! [`pki`] makes the cluster CA, serving and admin certificates on first start, and
//! [`kubeconfig`] writes the admin kubeconfig. A request is parsed by [`request`],
//! authenticated and authorized by [`auth`], then served by [`discovery`] or by
//! [`rest`] (the resource verbs, with admission and validation), [`watch`] (streams fed
//! by the shared [`watchcache`]) and [`apply`] (server-side apply). Objects live in the
//! embedded store through [`storage`]; Service IPs and node ports come from [`alloc`];
//! [`bootstrap`] creates what a new cluster starts with and [`endpoints`] keeps the
//! `kubernetes` Service pointing at the live API servers; [`crds`] serves custom resources;
//! [`metrics`] serves `/metrics`; [`grpc`] carries the components' requests over gRPC on
//! the same port; [`pod_streams`] serves pod logs, exec, attach and port-forward through
//! the kubelets ([`kubelet_client`]), and [`resource_metrics`] the `metrics.k8s.io` API
//! from their usage figures; [`serviceaccount`] signs and checks service-account tokens.

pub mod admission;
pub mod alloc;
pub mod apply;
pub mod auth;
pub mod bootstrap;
pub mod crds;
pub mod discovery;
pub mod endpoints;
pub mod grpc;
pub mod kubeconfig;
pub mod kubelet_client;
pub mod metrics;
pub mod pki;
pub mod pod_streams;
pub mod rbac;
pub mod request;
pub mod resource_metrics;
pub mod rest;
pub mod server;
/// Service-account tokens (the `ferrokube-satoken` crate, shared with the controller
/// manager, which signs legacy token Secrets).
pub use ferrokube_satoken as serviceaccount;
pub mod storage;
pub mod watch;
pub mod watchcache;

pub use server::{ApiServer, ServeError};
