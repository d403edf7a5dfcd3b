//! Expectations (upstream's `ControllerExpectations`): the creations and deletions a
//! controller asked for and has not seen in its caches yet. While some are pending,
//! the controller does not act on a count that would make it create or delete again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Expectations not met after this are given up (a watch event was lost).
const TTL: Duration = Duration::from_secs(300);

/// Pending creations and deletions, per owner key.
#[derive(Default)]
pub struct Expectations(Mutex<HashMap<String, (i64, i64, Instant)>>);

impl Expectations {
    /// Expects `adds` creations and `dels` deletions for `key` (replacing any before).
    pub fn expect(&self, key: &str, adds: i64, dels: i64) {
        self.0
            .lock()
            .expect("expectations lock")
            .insert(key.to_string(), (adds, dels, Instant::now()));
    }

    /// Records creations and deletions seen (or that will never be seen).
    pub fn observed(&self, key: &str, adds: i64, dels: i64) {
        if let Some(e) = self.0.lock().expect("expectations lock").get_mut(key) {
            e.0 -= adds;
            e.1 -= dels;
        }
    }

    /// Whether everything expected was seen (or the expectations expired).
    pub fn satisfied(&self, key: &str) -> bool {
        self.0
            .lock()
            .expect("expectations lock")
            .get(key)
            .is_none_or(|(a, d, at)| (*a <= 0 && *d <= 0) || at.elapsed() > TTL)
    }

    pub fn forget(&self, key: &str) {
        self.0.lock().expect("expectations lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_hold_until_seen() {
        let e = Expectations::default();
        assert!(e.satisfied("a"));
        e.expect("a", 2, 0);
        assert!(!e.satisfied("a"));
        e.observed("a", 1, 0);
        assert!(!e.satisfied("a"));
        e.observed("a", 1, 0);
        assert!(e.satisfied("a"));
        e.expect("a", 0, 1);
        e.forget("a");
        assert!(e.satisfied("a"));
    }
}
