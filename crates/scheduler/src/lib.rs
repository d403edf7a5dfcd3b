//! kube-scheduler: assigns pending pods to nodes as upstream's does.
//!
//! - [`queue`]: the scheduling queue (active, backoff, unschedulable; moved by cluster
//!   events, not polling).
//! - [`cache`]: per-node resources, ports, images, labels, taints and pods, kept current
//!   from informers, with assumed pods.
//! - [`framework`] and [`plugins`]: the extension points and upstream's filter and score
//!   plugins; [`config`] reads `KubeSchedulerConfiguration` profiles.
//! - [`preemption`]: DefaultPreemption, for pods that fit nowhere.
//! - [`scheduler`]: the loop, binding through `pods/binding`, events and conditions;
//!   [`metrics`] in upstream's names.

pub mod cache;
pub mod config;
pub mod framework;
pub mod metrics;
pub mod plugins;
pub mod preemption;
pub mod queue;
pub mod resources;
pub mod scheduler;

pub use config::{default_config, load, SchedulerConfig};
pub use scheduler::Scheduler;
