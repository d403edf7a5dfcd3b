//! Image garbage collection, as upstream's image manager does it: when the image
//! filesystem's usage reaches `imageGCHighThresholdPercent`, images no container uses
//! are removed, least recently used first and none younger than `imageMinimumGCAge`,
//! until usage is back at `imageGCLowThresholdPercent`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrokube_images::ImageStore;

/// The policy (from the `KubeletConfiguration`).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub high_percent: u8,
    pub low_percent: u8,
    pub min_age: Duration,
}

/// The collector: remembers when it first saw each image and when one was last in use.
pub struct ImageGc {
    images: Arc<ImageStore>,
    /// The kubelet's pod directory (`<root-dir>/pods`), where each container attempt
    /// records the image it runs.
    pods_dir: PathBuf,
    policy: Policy,
    /// By image digest: first detected, last used.
    seen: Mutex<HashMap<String, (Instant, Instant)>>,
}

/// The outcome of one pass.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Usage is under the high threshold.
    BelowThreshold,
    /// A pull is under way (its blobs are not recorded yet): next time.
    Deferred,
    /// Usage was over it and this much was freed, enough to reach the low threshold.
    Freed(u64),
    /// Usage was over it and not enough could be freed.
    Short { wanted: u64, freed: u64 },
}

impl ImageGc {
    pub fn new(images: Arc<ImageStore>, pods_dir: &Path, policy: Policy) -> ImageGc {
        ImageGc {
            images,
            pods_dir: pods_dir.to_path_buf(),
            policy,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Digests of the images some container (running or exited, not yet removed) uses.
    fn in_use(&self) -> HashSet<String> {
        let mut out = HashSet::new();
        // <pods>/<uid>/containers/<name>/<attempt>/image: "reference\ndigest".
        for pod in read_dirs(&self.pods_dir) {
            for c in read_dirs(&pod.join("containers")) {
                for attempt in read_dirs(&c) {
                    if let Ok(text) = std::fs::read_to_string(attempt.join("image")) {
                        if let Some(d) = text.lines().nth(1) {
                            out.insert(d.to_string());
                        }
                    }
                }
            }
        }
        out
    }

    /// One pass: frees space if usage is at or over the high threshold.
    pub fn run_once(&self) -> Result<Outcome, ferrokube_images::Error> {
        if self.policy.high_percent >= 100 {
            return Ok(Outcome::BelowThreshold);
        }
        if self.images.pulls_under_way() > 0 {
            return Ok(Outcome::Deferred);
        }
        let now = Instant::now();
        let in_use = self.in_use();
        let images = self.images.list()?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let present: HashSet<&str> = images.iter().map(|i| i.digest.as_str()).collect();
        seen.retain(|d, _| present.contains(d.as_str()));
        for img in &images {
            let entry = seen.entry(img.digest.clone()).or_insert((now, now));
            if in_use.contains(&img.digest) {
                entry.1 = now;
            }
        }
        let (capacity, available) = self.images.fs_usage()?;
        if capacity == 0 {
            return Ok(Outcome::BelowThreshold);
        }
        let usage = 100 - available.saturating_mul(100) / capacity;
        if usage < u64::from(self.policy.high_percent) {
            return Ok(Outcome::BelowThreshold);
        }
        let wanted = (capacity.saturating_mul(100 - u64::from(self.policy.low_percent)) / 100)
            .saturating_sub(available);
        // Least recently used first; in use or too young: kept.
        let mut candidates: Vec<(Instant, String)> = seen
            .iter()
            .filter(|(d, (first, _))| {
                !in_use.contains(*d) && now.duration_since(*first) >= self.policy.min_age
            })
            .map(|(d, (_, last))| (*last, d.clone()))
            .collect();
        candidates.sort();
        let mut freed = 0;
        for (_, digest) in candidates {
            if freed >= wanted {
                break;
            }
            let bytes = match self.images.remove(&digest) {
                Ok(b) => b,
                Err(_) if self.images.pulls_under_way() > 0 => return Ok(Outcome::Deferred),
                Err(e) => return Err(e),
            };
            tracing::info!(image = %digest, bytes, "removed an unused image");
            seen.remove(&digest);
            freed += bytes;
        }
        Ok(if freed >= wanted {
            Outcome::Freed(freed)
        } else {
            Outcome::Short { wanted, freed }
        })
    }
}

fn read_dirs(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
}
