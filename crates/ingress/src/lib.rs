//! The Ingress controller's logic. [`routes`] is its routing table: upstream's host and
//! path matching over the Ingresses it serves. (The controller binary — the HTTP/HTTPS
//! proxy, IngressClass selection, TLS and status — is still to come.)

pub mod routes;
