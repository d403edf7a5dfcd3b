//! The scheduling queue, as upstream's: pods wait in *active* (ordered by priority, then
//! by when they were queued), in *backoff* after a failed attempt (1 s doubling to 10 s by
//! default), or in *unschedulable* until a cluster event that could help them (a node
//! added or changed, a pod deleted, ...) moves them back; pods left unschedulable for
//! five minutes are retried anyway. Gated pods (`schedulingGates`) are not queued.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::cache::PodInfo;

/// How long a pod stays unschedulable without an event before it is retried.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

/// A pod taken from the queue to be scheduled.
#[derive(Clone)]
pub struct QueuedPod {
    pub info: Arc<PodInfo>,
    /// Scheduling attempts so far, this one included.
    pub attempts: u32,
    /// When the first attempt started.
    pub first_attempt: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff,
    Unschedulable,
    InFlight,
}

struct Entry {
    info: Arc<PodInfo>,
    place: Place,
    attempts: u32,
    first_attempt: Option<Instant>,
    /// When it was (re)queued: its order among equal priorities.
    queued: u64,
    /// When it may leave backoff.
    backoff_until: Instant,
    unschedulable_since: Instant,
    /// Events that may help it (of the plugins that rejected it).
    events: u32,
    /// Changed while being scheduled: retry rather than park it.
    updated_in_flight: bool,
    /// The event sequence number when it was taken to be scheduled.
    moves_at_pop: u64,
    /// The entry's version: heap items of older versions are stale.
    version: u64,
}

#[derive(PartialEq, Eq)]
struct ActiveItem {
    priority: i32,
    queued: u64,
    key: String,
    version: u64,
}

impl Ord for ActiveItem {
    fn cmp(&self, o: &Self) -> Ordering {
        self.priority
            .cmp(&o.priority)
            .then_with(|| o.queued.cmp(&self.queued))
    }
}

impl PartialOrd for ActiveItem {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

#[derive(Default)]
struct Inner {
    pods: HashMap<String, Entry>,
    active: BinaryHeap<ActiveItem>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    counter: u64,
    /// How many cluster events have moved pods (a sequence number).
    moves: u64,
    closed: bool,
}

/// Counts per sub-queue (`scheduler_pending_pods`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub active: usize,
    pub backoff: usize,
    pub unschedulable: usize,
}

/// The queue. Cheap to share.
pub struct SchedulingQueue {
    inner: Mutex<Inner>,
    notify: Notify,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl Inner {
    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn push_active(&mut self, key: &str) {
        let (q, v) = (self.next(), self.next());
        let Some(e) = self.pods.get_mut(key) else {
            return;
        };
        e.place = Place::Active;
        e.queued = q;
        e.version = v;
        self.active.push(ActiveItem {
            priority: e.info.priority,
            queued: q,
            key: key.to_string(),
            version: v,
        });
    }

    fn push_backoff(&mut self, key: &str, until: Instant) {
        let v = self.next();
        let Some(e) = self.pods.get_mut(key) else {
            return;
        };
        e.place = Place::Backoff;
        e.backoff_until = until;
        e.version = v;
        self.backoff.push(Reverse((until, v, key.to_string())));
    }

    /// Moves pods whose backoff is over to active.
    fn flush_backoff(&mut self, now: Instant) {
        while let Some(Reverse((until, v, _))) = self.backoff.peek() {
            if *until > now {
                break;
            }
            let (v, key) = (
                *v,
                self.backoff
                    .pop()
                    .map(|Reverse((_, _, k))| k)
                    .unwrap_or_default(),
            );
            if self
                .pods
                .get(&key)
                .is_some_and(|e| e.place == Place::Backoff && e.version == v)
            {
                self.push_active(&key);
            }
        }
    }
}

impl SchedulingQueue {
    pub fn new(initial_backoff: Duration, max_backoff: Duration) -> SchedulingQueue {
        SchedulingQueue {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            initial_backoff,
            max_backoff,
        }
    }

    fn backoff_of(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(1 << exp)
            .min(self.max_backoff)
    }

    /// A new or changed pending pod. A pod parked as unschedulable is retried (its change
    /// may help it); one being scheduled is retried after this attempt if it fails.
    pub fn add(&self, info: Arc<PodInfo>) {
        let mut g = self.inner.lock().expect("queue lock");
        let key = info.key.clone();
        match g.pods.get_mut(&key) {
            None => {
                g.pods.insert(
                    key.clone(),
                    Entry {
                        info,
                        place: Place::Active,
                        attempts: 0,
                        first_attempt: None,
                        queued: 0,
                        backoff_until: Instant::now(),
                        unschedulable_since: Instant::now(),
                        events: 0,
                        updated_in_flight: false,
                        moves_at_pop: 0,
                        version: 0,
                    },
                );
                g.push_active(&key);
            }
            Some(e) => {
                e.info = info;
                match e.place {
                    Place::InFlight => e.updated_in_flight = true,
                    Place::Unschedulable => {
                        let until = e.backoff_until;
                        if until > Instant::now() {
                            g.push_backoff(&key, until);
                        } else {
                            g.push_active(&key);
                        }
                    }
                    Place::Active => {
                        // Priority may have changed: requeue at the same position.
                        let e = g.pods.get(&key).expect("just seen");
                        let item = ActiveItem {
                            priority: e.info.priority,
                            queued: e.queued,
                            key: key.clone(),
                            version: e.version,
                        };
                        g.active.push(item);
                    }
                    Place::Backoff => {}
                }
            }
        }
        drop(g);
        self.notify.notify_one();
    }

    /// A queued pod's newer version that changes nothing scheduling reads: kept, not
    /// retried.
    pub fn refresh(&self, info: Arc<PodInfo>) {
        let mut g = self.inner.lock().expect("queue lock");
        match g.pods.get_mut(&info.key) {
            Some(e) => e.info = info,
            None => {
                drop(g);
                self.add(info);
            }
        }
    }

    /// The pod is gone, bound elsewhere or gated.
    pub fn delete(&self, key: &str) {
        self.inner.lock().expect("queue lock").pods.remove(key);
    }

    /// The next pod to schedule; waits for one. `None` once closed.
    pub async fn pop(&self) -> Option<QueuedPod> {
        loop {
            let wait = {
                let mut g = self.inner.lock().expect("queue lock");
                if g.closed {
                    return None;
                }
                let now = Instant::now();
                g.flush_backoff(now);
                // Unschedulable for too long: retry.
                let stale: Vec<String> = g
                    .pods
                    .iter()
                    .filter(|(_, e)| {
                        e.place == Place::Unschedulable
                            && now.duration_since(e.unschedulable_since) >= MAX_UNSCHEDULABLE
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in stale {
                    g.push_active(&k);
                }
                while let Some(item) = g.active.pop() {
                    let Some(e) = g.pods.get_mut(&item.key) else {
                        continue;
                    };
                    if e.place != Place::Active || e.version != item.version {
                        continue;
                    }
                    e.place = Place::InFlight;
                    e.attempts += 1;
                    e.updated_in_flight = false;
                    let first = *e.first_attempt.get_or_insert(now);
                    let moves = g.moves;
                    let e = g.pods.get_mut(&item.key).expect("just seen");
                    e.moves_at_pop = moves;
                    return Some(QueuedPod {
                        info: e.info.clone(),
                        attempts: e.attempts,
                        first_attempt: first,
                    });
                }
                g.backoff
                    .peek()
                    .map(|Reverse((until, _, _))| until.saturating_duration_since(now))
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(1))
            };
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The pod was bound (or its binding is in flight): it leaves the queue.
    pub fn done(&self, key: &str) {
        self.inner.lock().expect("queue lock").pods.remove(key);
    }

    /// The pod fits no node. It waits for one of `events` — or, when a cluster event
    /// arrived or the pod changed while it was being scheduled, only for its backoff.
    pub fn unschedulable(&self, key: &str, events: u32) {
        let mut g = self.inner.lock().expect("queue lock");
        let moves = g.moves;
        let Some(e) = g.pods.get_mut(key) else { return };
        if e.place != Place::InFlight {
            return;
        }
        let until = Instant::now() + self.backoff_of(e.attempts);
        let moved_meanwhile = e.moves_at_pop != moves;
        if e.updated_in_flight || moved_meanwhile {
            g.push_backoff(key, until);
        } else {
            e.place = Place::Unschedulable;
            e.unschedulable_since = Instant::now();
            e.backoff_until = until;
            e.events = events;
        }
        drop(g);
        self.notify.notify_one();
    }

    /// Scheduling or binding failed for another reason: retry after the backoff.
    pub fn retry(&self, info: Arc<PodInfo>) {
        let mut g = self.inner.lock().expect("queue lock");
        let key = info.key.clone();
        let attempts = match g.pods.get_mut(&key) {
            Some(e) => {
                e.info = info;
                e.attempts
            }
            None => {
                drop(g);
                self.add(info);
                return;
            }
        };
        let until = Instant::now() + self.backoff_of(attempts.max(1));
        g.push_backoff(&key, until);
        drop(g);
        self.notify.notify_one();
    }

    /// A cluster event: unschedulable pods it may help go back (to backoff when theirs
    /// is not over).
    pub fn move_for(&self, event: u32) {
        let mut g = self.inner.lock().expect("queue lock");
        g.moves += 1;
        let now = Instant::now();
        let keys: Vec<(String, Instant)> = g
            .pods
            .iter()
            .filter(|(_, e)| {
                e.place == Place::Unschedulable && (e.events & event != 0 || e.events == 0)
            })
            .map(|(k, e)| (k.clone(), e.backoff_until))
            .collect();
        for (k, until) in keys {
            if until > now {
                g.push_backoff(&k, until);
            } else {
                g.push_active(&k);
            }
        }
        drop(g);
        self.notify.notify_one();
    }

    /// How many pods wait where.
    pub fn pending(&self) -> Pending {
        let g = self.inner.lock().expect("queue lock");
        let mut p = Pending::default();
        for e in g.pods.values() {
            match e.place {
                Place::Active | Place::InFlight => p.active += 1,
                Place::Backoff => p.backoff += 1,
                Place::Unschedulable => p.unschedulable += 1,
            }
        }
        p
    }

    /// Ends `pop`.
    pub fn close(&self) {
        self.inner.lock().expect("queue lock").closed = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, priority: i32) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d"},
                "spec": {"containers": [{"name": "c"}], "priority": priority}}))
            .unwrap(),
        )))
    }

    #[tokio::test]
    async fn higher_priority_first_then_fifo() {
        let q = SchedulingQueue::new(Duration::from_millis(10), Duration::from_millis(40));
        q.add(pod("a", 0));
        q.add(pod("b", 10));
        q.add(pod("c", 0));
        let order: Vec<String> = [q.pop().await, q.pop().await, q.pop().await]
            .into_iter()
            .map(|p| p.unwrap().info.key.clone())
            .collect();
        assert_eq!(order, vec!["d/b", "d/a", "d/c"]);
    }

    #[tokio::test]
    async fn unschedulable_pods_wait_for_an_event_that_may_help() {
        let q = SchedulingQueue::new(Duration::from_millis(10), Duration::from_millis(40));
        q.add(pod("a", 0));
        let p = q.pop().await.unwrap();
        assert_eq!(p.attempts, 1);
        q.unschedulable("d/a", 1 << 3);
        assert_eq!(q.pending().unschedulable, 1);
        q.move_for(1 << 1);
        assert_eq!(q.pending().unschedulable, 1, "an event that cannot help");
        q.move_for(1 << 3);
        assert_eq!(q.pending().unschedulable, 0);
        let p = tokio::time::timeout(Duration::from_secs(2), q.pop())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.attempts, 2);
    }

    #[tokio::test]
    async fn an_event_during_the_attempt_means_backoff_not_parking() {
        let q = SchedulingQueue::new(Duration::from_millis(10), Duration::from_millis(40));
        q.add(pod("a", 0));
        q.pop().await.unwrap();
        q.move_for(1);
        q.unschedulable("d/a", 1 << 3);
        assert_eq!(q.pending().backoff, 1);
        let p = tokio::time::timeout(Duration::from_secs(2), q.pop())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.info.key, "d/a");
    }

    #[test]
    fn backoff_doubles_to_the_maximum() {
        let q = SchedulingQueue::new(Duration::from_secs(1), Duration::from_secs(10));
        let b: Vec<u64> = (1..=6).map(|a| q.backoff_of(a).as_secs()).collect();
        assert_eq!(b, vec![1, 2, 4, 8, 10, 10]);
    }
}
