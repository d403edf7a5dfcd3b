//! NodeUnschedulable (cordoned nodes), NodeName (`spec.nodeName`) and NodePorts (free
//! host ports).

use k8s_openapi::api::core::v1::Taint;

use super::taint_toleration::tolerates;
use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::framework::{events, CycleState, Plugin, Points, Reject};

const FILTER: Points = Points {
    pre_filter: false,
    filter: true,
    pre_score: false,
    score: false,
};

/// Rejects cordoned nodes unless the pod tolerates `node.kubernetes.io/unschedulable`.
pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn points(&self) -> Points {
        FILTER
    }
    fn events(&self) -> u32 {
        events::NODE_ADD | events::NODE_TAINT
    }
    fn filter(
        &self,
        _: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cache,
    ) -> Result<(), Reject> {
        if !node.unschedulable {
            return Ok(());
        }
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let tolerations = pod.pod.spec.as_ref().and_then(|s| s.tolerations.as_deref());
        if tolerations.is_some_and(|t| t.iter().any(|t| tolerates(t, &taint))) {
            return Ok(());
        }
        Err(Reject::unresolvable("node(s) were unschedulable"))
    }
}

/// Rejects every node but the one `spec.nodeName` names.
pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }
    fn points(&self) -> Points {
        FILTER
    }
    fn events(&self) -> u32 {
        events::NODE_ADD
    }
    fn filter(
        &self,
        _: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cache,
    ) -> Result<(), Reject> {
        match pod.node_name() {
            Some(n) if n != node.name => Err(Reject::unresolvable(
                "node(s) didn't match the requested node name",
            )),
            _ => Ok(()),
        }
    }
}

/// Rejects nodes where a host port the pod wants is taken.
pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn points(&self) -> Points {
        FILTER
    }
    fn events(&self) -> u32 {
        events::NODE_ADD | events::POD_DELETE
    }
    fn filter(
        &self,
        _: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cache,
    ) -> Result<(), Reject> {
        let taken = pod
            .host_ports
            .iter()
            .any(|want| node.used_ports.iter().any(|u| u.conflicts(want)));
        if taken {
            return Err(Reject::unschedulable(
                "node(s) didn't have free ports for the requested pod ports",
            ));
        }
        Ok(())
    }
}
