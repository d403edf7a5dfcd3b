//! ImageLocality: prefers nodes that already have the pod's images, by their size and
//! how widely they are spread (an image on every node says little about any one).

use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::framework::{CycleState, Plugin, Points, MAX_NODE_SCORE};

const MB: i64 = 1024 * 1024;
const MIN_THRESHOLD: i64 = 23 * MB;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

/// An image name with `:latest` when it has no tag (upstream's normalization).
pub fn normalized(name: &str) -> String {
    let colon = name.rfind(':').map(|i| i as isize).unwrap_or(-1);
    let slash = name.rfind('/').map(|i| i as isize).unwrap_or(-1);
    if colon <= slash && !name.contains('@') {
        format!("{name}:latest")
    } else {
        name.to_string()
    }
}

pub struct ImageLocality;

impl Plugin for ImageLocality {
    fn name(&self) -> &'static str {
        "ImageLocality"
    }
    fn points(&self) -> Points {
        Points {
            score: true,
            ..Default::default()
        }
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo, cache: &Cache) -> i64 {
        let Some(spec) = pod.pod.spec.as_ref() else {
            return 0;
        };
        let total_nodes = cache.nodes().len().max(1) as f64;
        let mut sum = 0f64;
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let image = normalized(c.image.as_deref().unwrap_or_default());
            if let Some(size) = node.images.get(&image) {
                sum += *size as f64 * (cache.image_spread(&image) as f64 / total_nodes);
            }
        }
        let containers =
            (spec.containers.len() + spec.init_containers.as_ref().map_or(0, Vec::len)) as i64;
        let max = MAX_CONTAINER_THRESHOLD * containers.max(1);
        let sum = (sum as i64).clamp(MIN_THRESHOLD, max);
        MAX_NODE_SCORE * (sum - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_latest_when_untagged() {
        assert_eq!(normalized("nginx"), "nginx:latest");
        assert_eq!(
            normalized("localhost:5000/busybox"),
            "localhost:5000/busybox:latest"
        );
        assert_eq!(normalized("nginx:1.25"), "nginx:1.25");
        assert_eq!(normalized("nginx@sha256:ab"), "nginx@sha256:ab");
    }
}
