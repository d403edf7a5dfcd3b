//! A rate-limited work-queue with upstream's semantics: an item is queued at most once,
//! an item being processed is never handed to a second worker (if it is added meanwhile
//! it comes back after `done`), and retries back off per item (5 ms doubling to 1000 s)
//! under an overall token bucket (10 per second, bursts of 100).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

struct Inner<T> {
    queue: VecDeque<T>,
    dirty: HashSet<T>,
    processing: HashSet<T>,
    failures: HashMap<T, u32>,
    tokens: f64,
    refilled: Instant,
    shutdown: bool,
    /// Items queued, and retries asked for, since the queue was made.
    adds: u64,
    retries: u64,
}

/// A queue's counters, for upstream's `workqueue_*` metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Items waiting.
    pub depth: usize,
    /// Items queued (`workqueue_adds_total`).
    pub adds: u64,
    /// Retries (`workqueue_retries_total`).
    pub retries: u64,
}

/// The queue. Cheap to clone.
pub struct WorkQueue<T> {
    inner: Arc<Mutex<Inner<T>>>,
    notify: Arc<Notify>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        WorkQueue {
            inner: self.inner.clone(),
            notify: self.notify.clone(),
        }
    }
}

const BASE_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(1000);
const QPS: f64 = 10.0;
const BURST: f64 = 100.0;

impl<T: Hash + Eq + Clone + Send + 'static> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Hash + Eq + Clone + Send + 'static> WorkQueue<T> {
    pub fn new() -> Self {
        WorkQueue {
            inner: Arc::new(Mutex::new(Inner {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                tokens: BURST,
                refilled: Instant::now(),
                shutdown: false,
                adds: 0,
                retries: 0,
            })),
            notify: Arc::new(Notify::new()),
        }
    }

    /// Queues an item now (once, however often it is added).
    pub fn add(&self, item: T) {
        let mut q = self.inner.lock().expect("queue lock");
        if q.shutdown || !q.dirty.insert(item.clone()) {
            return;
        }
        q.adds += 1;
        if !q.processing.contains(&item) {
            q.queue.push_back(item);
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Queues an item after a delay.
    pub fn add_after(&self, item: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(item);
        }
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.add(item);
        });
    }

    /// The delay the rate limiter gives an item now: the larger of its own exponential
    /// back-off and the overall bucket's wait.
    pub fn backoff(&self, item: &T) -> Duration {
        let mut q = self.inner.lock().expect("queue lock");
        let n = q.failures.entry(item.clone()).or_insert(0);
        let exp = BASE_DELAY
            .checked_mul(1u32.checked_shl(*n).unwrap_or(u32::MAX))
            .unwrap_or(MAX_DELAY)
            .min(MAX_DELAY);
        *n = n.saturating_add(1);
        let now = Instant::now();
        let elapsed = now.duration_since(q.refilled).as_secs_f64();
        q.tokens = (q.tokens + elapsed * QPS).min(BURST);
        q.refilled = now;
        q.tokens -= 1.0;
        let bucket = if q.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-q.tokens / QPS)
        };
        exp.max(bucket)
    }

    /// Queues an item after its rate-limited delay (a retry).
    pub fn add_rate_limited(&self, item: T) {
        self.inner.lock().expect("queue lock").retries += 1;
        let d = self.backoff(&item);
        self.add_after(item, d);
    }

    /// Forgets an item's failures (it succeeded).
    pub fn forget(&self, item: &T) {
        self.inner.lock().expect("queue lock").failures.remove(item);
    }

    /// How many times an item has been retried since it was last forgotten.
    pub fn retries(&self, item: &T) -> u32 {
        self.inner
            .lock()
            .expect("queue lock")
            .failures
            .get(item)
            .copied()
            .unwrap_or(0)
    }

    /// Waits for the next item; `None` after shutdown. Call `done` when finished.
    pub async fn get(&self) -> Option<T> {
        loop {
            let notified = self.notify.notified();
            {
                let mut q = self.inner.lock().expect("queue lock");
                if let Some(item) = q.queue.pop_front() {
                    q.dirty.remove(&item);
                    q.processing.insert(item.clone());
                    return Some(item);
                }
                if q.shutdown {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Marks an item finished; if it was added meanwhile, it is queued again.
    pub fn done(&self, item: &T) {
        let mut q = self.inner.lock().expect("queue lock");
        q.processing.remove(item);
        if q.dirty.contains(item) {
            q.queue.push_back(item.clone());
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Items waiting (not counting those being processed).
    pub fn len(&self) -> usize {
        self.inner.lock().expect("queue lock").queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Depth and counters.
    pub fn counts(&self) -> QueueCounts {
        let q = self.inner.lock().expect("queue lock");
        QueueCounts {
            depth: q.queue.len(),
            adds: q.adds,
            retries: q.retries,
        }
    }

    /// Stops handing out items; waiting `get`s return `None`.
    pub fn shutdown(&self) {
        self.inner.lock().expect("queue lock").shutdown = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_are_deduplicated_and_never_processed_twice_at_once() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let a = q.get().await.unwrap();
        assert_eq!(a, "a");
        // Added while processing: not handed out until done.
        q.add("a");
        assert_eq!(q.get().await.unwrap(), "b");
        assert!(q.is_empty());
        q.done(&"b");
        q.done(&"a");
        assert_eq!(q.get().await.unwrap(), "a");
        q.done(&"a");
        // Deduplicated adds are not counted.
        assert_eq!(
            q.counts(),
            QueueCounts {
                depth: 0,
                adds: 3,
                retries: 0
            }
        );
        q.add_rate_limited("c");
        assert_eq!(q.counts().retries, 1);
        q.shutdown();
        assert_eq!(q.get().await, None);
    }

    #[tokio::test]
    async fn retries_back_off_exponentially() {
        let q: WorkQueue<&str> = WorkQueue::new();
        let delays: Vec<Duration> = (0..4).map(|_| q.backoff(&"x")).collect();
        assert_eq!(delays, [5, 10, 20, 40].map(Duration::from_millis));
        assert_eq!(q.retries(&"x"), 4);
        q.forget(&"x");
        assert_eq!(q.backoff(&"x"), Duration::from_millis(5));
        for _ in 0..40 {
            q.backoff(&"y");
        }
        assert_eq!(q.backoff(&"y"), MAX_DELAY);
        let t = Instant::now();
        q.add_after("z", Duration::from_millis(30));
        assert_eq!(q.get().await.unwrap(), "z");
        assert!(t.elapsed() >= Duration::from_millis(30));
    }
}
