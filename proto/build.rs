fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "etcd/kv.proto",
        "etcd/rpc.proto",
        "ferrokube/raftpeer.proto",
        "ferrokube/resources.proto",
        "ferrokube/kubelet.proto",
        "grpc/health/v1/health.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["."])?;
    Ok(())
}
