//! Kubernetes API building blocks shared by every ferrokube component. No IO, and no
//! dependency on another project crate; the API types are `k8s-openapi`'s (Kubernetes
//! 1.32, the version of the reference kubectl).
//!
//! Start at [`registry`]: every built-in resource with its group, version, kind, names,
//! scope, verbs and subresources — what discovery serves and what routes requests.
//! [`keys`] lays objects out in the store as upstream lays them out in etcd, and
//! [`selector`] parses and matches label selectors with upstream's grammar;
//! [`fields`] does the same for field selectors; [`validation`] checks names, label keys
//! and values with upstream's rules and messages, [`quantity`] parses and prints resource
//! quantities canonically, and [`status`] builds the `Status`
//! errors (codes, reasons, messages) that clients parse. [`meta`] reads and writes object
//! metadata, [`defaults`] fills in upstream's defaults, [`patch`] applies the three patch
//! formats, and [`table`] prints rows as upstream's server-side printers do;
//! [`typed`] decodes bodies against the compiled types and [`checks`] validates objects;
//! [`protobuf`] turns Kubernetes protobuf bodies into JSON; [`openapi`] writes the OpenAPI v3
//! documents; [`crd`] reads CustomResourceDefinitions and validates custom objects;
//! [`events`] converts between the two Event APIs; [`endpointslice`] ties slices to
//! their Services.

pub mod checks;
pub mod crd;
pub mod cron;
pub mod defaults;
pub mod endpointslice;
pub mod events;
pub mod fields;
pub mod hpa;
pub mod keys;
pub mod meta;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod registry;
pub mod scheduling;
pub mod selector;
pub mod status;
pub mod table;
pub mod typed;
pub mod validation;

pub use registry::{Registry, ResourceInfo};
pub use selector::{LabelSelector, SelectorError};
