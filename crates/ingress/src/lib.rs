//! The Ingress controller: serves the Ingresses of its IngressClasses ([`class`]) as an
//! HTTP and HTTPS reverse proxy ([`proxy`]) — [`routes`] is the routing table with
//! upstream's host and path matching, [`backends`] resolves Services to their ready
//! endpoints, [`certs`] picks TLS certificates from Secrets by SNI — kept in step with
//! the API by [`controller`], which also writes the Ingresses' status addresses.

pub mod backends;
pub mod certs;
pub mod class;
pub mod controller;
pub mod proxy;
pub mod routes;
