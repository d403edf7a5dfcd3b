//! The watch cache: one follower reads every change under `/registry/` from the store
//! once, decodes it once, and keeps a window of recent events that every watcher reads
//! from, so a thousand watchers cost one store reader. A watcher that starts before the
//! window reads the store's history directly until it reaches the window; one that starts
//! before the store's compaction gets 410 Gone, as upstream.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferrokube_api::keys::{prefix_end, ROOT};
use ferrokube_api::meta::set_resource_version;
use ferrokube_proto::mvccpb::{event::EventType, Event};
use ferrokube_store::mvcc::KeyRange;
use ferrokube_store::{Store, StoreError};
use serde_json::Value;
use tokio::sync::watch;

/// How many events the window keeps at most...
const WINDOW: usize = 100_000;
/// ... and how many bytes of object data (big objects shorten the window, never the
/// process's memory).
const WINDOW_BYTES: usize = 64 << 20;
/// Events read from the store per step.
const BATCH: usize = 1000;

/// One change to one object.
#[derive(Debug)]
pub struct CacheEvent {
    pub key: String,
    pub revision: i64,
    /// The object after the change (`None` for a delete).
    pub object: Option<Arc<Value>>,
    /// The object before the change, with the change's revision as its resourceVersion
    /// when the change is a delete (what upstream sends in DELETED events).
    pub prev: Option<Arc<Value>>,
    /// Stored bytes of the object and its previous version.
    pub size: usize,
}

struct Window {
    events: VecDeque<Arc<CacheEvent>>,
    /// The window holds every event with a revision above this.
    after: i64,
    /// ... up to and including this one.
    head: i64,
    /// Sum of the events' sizes.
    bytes: usize,
}

/// Why events could not be read.
#[derive(Debug)]
pub enum SinceError {
    /// The revision is compacted away in the store.
    Gone(i64),
    Store(StoreError),
}

/// The shared cache of recent changes.
pub struct WatchCache {
    store: Store,
    window: RwLock<Window>,
    head_tx: watch::Sender<i64>,
}

fn decode_event(e: Event) -> Option<Arc<CacheEvent>> {
    let kv = e.kv?;
    let revision = kv.mod_revision;
    let parse = |bytes: &[u8], rv: i64| -> Option<Arc<Value>> {
        let mut v: Value = serde_json::from_slice(bytes).ok()?;
        set_resource_version(&mut v, rv);
        Some(Arc::new(v))
    };
    let delete = e.r#type == EventType::Delete as i32;
    let size = kv.value.len() + e.prev_kv.as_ref().map_or(0, |p| p.value.len()) + kv.key.len();
    let prev = e.prev_kv.and_then(|p| {
        let rv = if delete { revision } else { p.mod_revision };
        parse(&p.value, rv)
    });
    let object = if delete {
        None
    } else {
        Some(parse(&kv.value, revision)?)
    };
    Some(Arc::new(CacheEvent {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        revision,
        object,
        prev,
        size,
    }))
}

impl WatchCache {
    /// Starts the follower from the store's current revision.
    pub fn start(store: Store) -> Arc<Self> {
        let now = store.state().progress().current;
        let (head_tx, _) = watch::channel(now);
        let cache = Arc::new(WatchCache {
            store,
            window: RwLock::new(Window {
                events: VecDeque::new(),
                after: now,
                head: now,
                bytes: 0,
            }),
            head_tx,
        });
        let me = cache.clone();
        tokio::spawn(async move { me.follow(now + 1).await });
        cache
    }

    /// The newest revision the cache has seen.
    pub fn head(&self) -> i64 {
        *self.head_tx.borrow()
    }

    /// Notified whenever the head moves.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.head_tx.subscribe()
    }

    async fn follow(self: Arc<Self>, mut next: i64) {
        let sm = self.store.state().clone();
        let mut rev_rx = sm.subscribe();
        let start = ROOT.as_bytes().to_vec();
        let end = prefix_end(&start);
        loop {
            let range = KeyRange::new(&start, &end);
            match sm.events(next, &range, true, BATCH) {
                Ok((events, nxt)) => {
                    let batch: Vec<_> = events.into_iter().filter_map(decode_event).collect();
                    let caught_up = nxt > sm.progress().current;
                    if nxt > next {
                        let mut w = self.window.write().expect("window lock");
                        w.bytes += batch.iter().map(|e| e.size).sum::<usize>();
                        w.events.extend(batch);
                        while w.events.len() > WINDOW || w.bytes > WINDOW_BYTES {
                            let gone = w.events.pop_front().expect("non-empty");
                            w.bytes -= gone.size;
                            w.after = gone.revision;
                        }
                        w.head = nxt - 1;
                        let after = w.after;
                        while w.events.front().is_some_and(|e| e.revision <= after) {
                            let gone = w.events.pop_front().expect("non-empty");
                            w.bytes -= gone.size;
                        }
                        drop(w);
                        next = nxt;
                        self.head_tx.send_replace(next - 1);
                    }
                    if caught_up && rev_rx.changed().await.is_err() {
                        return;
                    }
                }
                Err(StoreError::Compacted { compact_revision }) => {
                    // Fell behind a compaction: restart the window at the store's head.
                    tracing::warn!(compact_revision, "watch cache fell behind compaction");
                    let now = sm.progress().current;
                    let mut w = self.window.write().expect("window lock");
                    w.events.clear();
                    w.after = now;
                    w.head = now;
                    w.bytes = 0;
                    drop(w);
                    next = now + 1;
                    self.head_tx.send_replace(now);
                }
                Err(e) => {
                    tracing::error!("watch cache cannot read the store: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Events after revision `after` under `prefix`, at most about `max`, and the revision
    /// read up to. Reads the window when it covers `after`, else the store's history.
    pub fn since(
        &self,
        after: i64,
        prefix: &str,
        max: usize,
    ) -> Result<(Vec<Arc<CacheEvent>>, i64), SinceError> {
        {
            let w = self.window.read().expect("window lock");
            if after >= w.after {
                let start = w.events.partition_point(|e| e.revision <= after);
                let mut out = Vec::new();
                let mut upto = w.head.max(after);
                let mut last = after;
                for e in w.events.range(start..) {
                    if out.len() >= max && e.revision != last {
                        upto = last;
                        break;
                    }
                    last = e.revision;
                    if e.key.starts_with(prefix) {
                        out.push(e.clone());
                    }
                }
                return Ok((out, upto));
            }
        }
        // Older than the window: read the store's history.
        let start = prefix.as_bytes().to_vec();
        let end = prefix_end(&start);
        let range = KeyRange::new(&start, &end);
        match self.store.state().events(after + 1, &range, true, max) {
            Ok((events, next)) => Ok((
                events.into_iter().filter_map(decode_event).collect(),
                next - 1,
            )),
            Err(StoreError::Compacted { compact_revision }) => {
                Err(SinceError::Gone(compact_revision))
            }
            Err(e) => Err(SinceError::Store(e)),
        }
    }
}
