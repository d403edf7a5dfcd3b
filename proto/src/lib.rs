//! gRPC and protobuf definitions shared by ferrokube's processes.
//!
//! - [`etcdserverpb`] and [`mvccpb`]: the subset of the etcd v3 API that the store serves,
//!   with upstream's package names and field numbers so that `etcdctl` works unchanged.
//! - [`raftpeer`]: the transport between store members and the replicated command format.
//! - [`resources`]: the resource service components use to reach kube-apiserver.
//! - [`kubelet`]: the kubelet's streaming service kube-apiserver calls.
//! - [`grpc_health_v1`]: gRPC's standard health check, which gRPC probes call.

#![allow(clippy::all, missing_docs)]

/// etcd's key-value record and watch event.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd v3 API services and messages.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// ferrokube's own packages (nested as protobuf packages are).
pub mod ferrokube {
    /// Store peer transport and replicated commands.
    pub mod raftpeer {
        tonic::include_proto!("ferrokube.raftpeer");
    }

    /// The resource service components use to reach kube-apiserver.
    pub mod resources {
        tonic::include_proto!("ferrokube.resources");
    }

    /// The kubelet's streaming service (logs, exec, attach, port-forward).
    pub mod kubelet {
        tonic::include_proto!("ferrokube.kubelet");
    }
}

pub use ferrokube::{kubelet, raftpeer, resources};

/// gRPC's health checking protocol (`grpc.health.v1`).
pub mod grpc_health_v1 {
    tonic::include_proto!("grpc.health.v1");
}
