//! The in-tree plugins, by upstream's names, and upstream's default set.

pub mod basic;
pub mod image_locality;
pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod resources_fit;
pub mod taint_toleration;
pub mod topology_spread;

use std::sync::Arc;

use crate::framework::Plugin;

/// Upstream's default plugins (multiPoint) with their score weights; `None`: not a
/// scoring plugin. PrioritySort, DefaultPreemption and DefaultBinder are the queue
/// order, the post-filter and the binder.
pub const DEFAULTS: &[(&str, Option<i64>)] = &[
    ("PrioritySort", None),
    ("NodeUnschedulable", None),
    ("NodeName", None),
    ("TaintToleration", Some(3)),
    ("NodeAffinity", Some(2)),
    ("NodePorts", None),
    ("NodeResourcesFit", Some(1)),
    ("VolumeRestrictions", None),
    ("NodeVolumeLimits", None),
    ("VolumeBinding", None),
    ("VolumeZone", None),
    ("PodTopologySpread", Some(2)),
    ("InterPodAffinity", Some(2)),
    ("DefaultPreemption", None),
    ("NodeResourcesBalancedAllocation", Some(1)),
    ("ImageLocality", Some(1)),
    ("DefaultBinder", None),
    ("SchedulingGates", None),
];

/// Plugins upstream has that ferrokube does not run: volume plugins (there is no
/// PersistentVolume binding yet, so pods with claims are not held back by them).
pub const NOT_IMPLEMENTED: &[&str] = &[
    "VolumeRestrictions",
    "NodeVolumeLimits",
    "VolumeBinding",
    "VolumeZone",
    "DynamicResources",
];

/// Plugins that are part of the scheduler itself rather than the filter/score chain
/// (SchedulingGates: the queue holds gated pods back).
pub const BUILT_IN: &[&str] = &[
    "PrioritySort",
    "DefaultPreemption",
    "DefaultBinder",
    "SchedulingGates",
];

/// Every plugin name upstream knows.
pub fn known(name: &str) -> bool {
    DEFAULTS.iter().any(|(n, _)| *n == name)
        || NOT_IMPLEMENTED.contains(&name)
        || BUILT_IN.contains(&name)
}

/// The plugin of a name, with its arguments (`pluginConfig`).
pub fn make(name: &str, args: &crate::config::PluginArgs) -> Option<Arc<dyn Plugin>> {
    Some(match name {
        "NodeUnschedulable" => Arc::new(basic::NodeUnschedulable),
        "NodeName" => Arc::new(basic::NodeName),
        "NodePorts" => Arc::new(basic::NodePorts),
        "TaintToleration" => Arc::new(taint_toleration::TaintToleration),
        "NodeAffinity" => Arc::new(node_affinity::NodeAffinity),
        "NodeResourcesFit" => Arc::new(args.fit()),
        "NodeResourcesBalancedAllocation" => Arc::new(args.balanced()),
        "ImageLocality" => Arc::new(image_locality::ImageLocality),
        "InterPodAffinity" => Arc::new(inter_pod_affinity::InterPodAffinity {
            hard_pod_affinity_weight: args.hard_pod_affinity_weight,
        }),
        "PodTopologySpread" => Arc::new(topology_spread::PodTopologySpread),
        _ => return None,
    })
}
