//! `hollow-nodes`: registers N fake nodes and plays their kubelets without containers
//! (see the ferrokube-hollow crate), for testing the control plane at scale.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Parser;
use ferrokube_client::{Client, Config};
use ferrokube_hollow::{parse_images, parse_labels, parse_taints, Spec};

#[derive(Parser, Debug)]
#[command(name = "hollow-nodes", version, about)]
struct Args {
    /// Kubeconfig with the API server's address and credentials.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// How many nodes.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Node names are <prefix><index>, from 0.
    #[arg(long, default_value = "hollow-node-")]
    name_prefix: String,
    /// Each node's CPU capacity (and allocatable).
    #[arg(long, default_value = "4")]
    cpu: String,
    #[arg(long, default_value = "32Gi")]
    memory: String,
    #[arg(long, default_value = "110")]
    pods: String,
    #[arg(long, default_value = "100Gi")]
    ephemeral_storage: String,
    /// Labels of every node (k=v,...), besides kubernetes.io/hostname, os and arch.
    #[arg(long, default_value = "")]
    node_labels: String,
    /// Taints of every node (key=value:Effect,...), as the kubelet's flag.
    #[arg(long, default_value = "")]
    register_with_taints: String,
    /// Node i gets topology.kubernetes.io/zone=<zones[i % count]> (z1,z2,...).
    #[arg(long, value_delimiter = ',')]
    zones: Vec<String>,
    /// Images every node reports (name=bytes,...), for ImageLocality.
    #[arg(long, default_value = "")]
    images: String,
    /// The node Leases' duration (renewed every quarter of it).
    #[arg(long, default_value_t = 40)]
    node_lease_duration_seconds: i32,
}

async fn run(args: Args) -> Result<()> {
    let spec = Spec {
        prefix: args.name_prefix,
        count: args.nodes,
        cpu: args.cpu,
        memory: args.memory,
        pods: args.pods,
        ephemeral_storage: args.ephemeral_storage,
        labels: parse_labels(&args.node_labels).context("--node-labels")?,
        taints: parse_taints(&args.register_with_taints).context("--register-with-taints")?,
        zones: args.zones.into_iter().filter(|z| !z.is_empty()).collect(),
        images: parse_images(&args.images).context("--images")?,
        lease_seconds: args.node_lease_duration_seconds.max(1),
    };
    let config = Config::from_kubeconfig(&args.kubeconfig)
        .with_context(|| format!("--kubeconfig {}", args.kubeconfig.display()))?;
    let client = Client::new(&config)?.with_field_manager("hollow-nodes");
    tokio::select! {
        r = ferrokube_hollow::run(client, spec) => r?,
        _ = ferrokube_process::stop_signal() => {}
    }
    Ok(())
}

fn main() {
    ferrokube_process::init();
    ferrokube_process::run(run(Args::parse()));
}
