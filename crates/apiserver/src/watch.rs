//! Watch streams: newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`,
//! `BOOKMARK`, `ERROR`) read from the watch cache, filtered by selectors the way
//! upstream filters them (an object that stops matching is `DELETED` for that watcher),
//! with bookmarks, initial events and upstream's timeouts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferrokube_api::keys::{list_prefix, object_key};
use ferrokube_api::status::{self, StatusError};
use ferrokube_api::ResourceInfo;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;

use crate::request::{Query, ResourcePath};
use crate::rest::{error_response, Body, Resources, Shape};
use crate::watchcache::SinceError;

/// How often bookmarks go out when asked for (upstream: about once a minute).
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// Starts a watch and answers with its stream.
pub async fn serve(
    res: Arc<Resources>,
    r: ResourceInfo,
    path: &ResourcePath,
    q: &Query,
    shape: Shape,
) -> Response<Body> {
    match start(res, r, path, q, shape).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

struct Watcher {
    res: Arc<Resources>,
    r: ResourceInfo,
    labels: ferrokube_api::LabelSelector,
    fields: ferrokube_api::fields::FieldSelector,
    shape: Shape,
    tx: mpsc::Sender<Bytes>,
}

impl Watcher {
    fn matches(&self, obj: &Value) -> bool {
        Resources::selected(&self.r, &self.labels, &self.fields, obj)
    }

    fn render(&self, ty: &str, obj: &Value) -> Bytes {
        let mut shown;
        let table = matches!(self.shape, Shape::Table(_));
        let obj = if !table && ty != "BOOKMARK" && ty != "ERROR" {
            shown = obj.clone();
            self.res.present(&self.r, &mut shown);
            &shown
        } else {
            obj
        };
        let object = match self.shape {
            Shape::Table(inc) if ty != "BOOKMARK" && ty != "ERROR" => {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(json!(""));
                self.res.table(
                    &self.r,
                    std::slice::from_ref(obj),
                    Some(json!({"resourceVersion": rv})),
                    inc,
                )
            }
            _ => obj.clone(),
        };
        let mut line = serde_json::to_vec(&json!({"type": ty, "object": object})).expect("JSON");
        line.push(b'\n');
        Bytes::from(line)
    }

    async fn send(&self, ty: &str, obj: &Value) -> bool {
        self.tx.send(self.render(ty, obj)).await.is_ok()
    }

    fn bookmark(&self, rv: i64, initial_end: bool) -> Value {
        let mut m = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            m["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"kind": self.r.kind, "apiVersion": self.r.api_version(), "metadata": m})
    }
}

async fn start(
    res: Arc<Resources>,
    r: ResourceInfo,
    path: &ResourcePath,
    q: &Query,
    shape: Shape,
) -> Result<Response<Body>, StatusError> {
    let (labels, fields) = Resources::selectors(&r, q, path.name.as_deref())?;
    let ns = path
        .namespace
        .clone()
        .or_else(|| fields.exact("metadata.namespace").map(String::from));
    let prefix = match (fields.exact("metadata.name"), ns.as_deref()) {
        (Some(name), Some(ns)) if r.namespaced => object_key(&r, ns, name),
        (Some(name), _) if !r.namespaced => object_key(&r, "", name),
        _ => list_prefix(&r, ns.as_deref()),
    };
    let exact_key = fields.exact("metadata.name").is_some() && (ns.is_some() || !r.namespaced);
    let bookmarks = q.flag("allowWatchBookmarks");
    let send_initial = q.flag("sendInitialEvents");
    let rv = q.str("resourceVersion").to_string();
    let timeout = match q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()) {
        Some(t) => Duration::from_secs(t),
        None => Duration::from_secs(rand::random_range(1800..3600)),
    };
    // Initial state: for no resourceVersion, "0", or sendInitialEvents.
    let mut initial = Vec::new();
    let mut cursor: i64 = if rv.is_empty() || rv == "0" || send_initial {
        let orig = q.str("fieldSelector");
        let field_selector = match path.name.as_deref() {
            Some(n) if orig.is_empty() => format!("metadata.name={n}"),
            Some(n) => format!("metadata.name={n},{orig}"),
            None => orig.to_string(),
        };
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let list_q = Query::parse(Some(&format!(
            "labelSelector={}&fieldSelector={}",
            enc(q.str("labelSelector")),
            enc(&field_selector),
        )));
        let (items, revision, _, _) = res.list_items(&r, ns.as_deref(), &list_q).await?;
        initial = items;
        revision
    } else {
        rv.parse()
            .map_err(|_| status::bad_request(format!("invalid resource version: {rv:?}")))?
    };
    if cursor == 0 {
        cursor = res.cache.head();
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let w = Watcher {
        res: res.clone(),
        r,
        labels,
        fields,
        shape,
        tx,
    };
    tokio::spawn(async move {
        let metrics = w.res.metrics.clone();
        metrics.watchers(w.r.group, w.r.version, w.r.kind, 1);
        w.run(
            initial,
            cursor,
            prefix,
            exact_key,
            send_initial,
            bookmarks,
            timeout,
        )
        .await;
        metrics.watchers(w.r.group, w.r.version, w.r.kind, -1);
    });
    let stream = ReceiverStream::new(rx).map(|b| Ok::<_, crate::rest::BoxError>(Frame::data(b)));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
        .expect("static response parts"))
}

impl Watcher {
    /// Sends the initial events, then follows the cache until the client leaves, the
    /// timeout passes, or the history is gone.
    #[allow(clippy::too_many_arguments)] // the watch's parameters, read once in `start`
    async fn run(
        &self,
        initial: Vec<Value>,
        mut cursor: i64,
        prefix: String,
        exact_key: bool,
        send_initial: bool,
        bookmarks: bool,
        timeout: Duration,
    ) {
        let w = self;
        let deadline = tokio::time::Instant::now() + timeout;
        for obj in &initial {
            if !w.send("ADDED", obj).await {
                return;
            }
        }
        if send_initial && bookmarks {
            let b = w.bookmark(cursor, true);
            if !w.send("BOOKMARK", &b).await {
                return;
            }
        }
        let mut head = w.res.cache.subscribe();
        let mut next_bookmark = tokio::time::Instant::now() + BOOKMARK_EVERY;
        loop {
            let batch = w.res.cache.since(cursor, &prefix, 500);
            let (events, upto) = match batch {
                Ok(b) => b,
                Err(SinceError::Gone(compacted)) => {
                    let e = status::expired(format!(
                        "too old resource version: {cursor} ({compacted})"
                    ));
                    let _ = w
                        .send("ERROR", &serde_json::to_value(&e.0).expect("Status"))
                        .await;
                    return;
                }
                Err(SinceError::Store(e)) => {
                    let e = status::internal(e);
                    let _ = w
                        .send("ERROR", &serde_json::to_value(&e.0).expect("Status"))
                        .await;
                    return;
                }
            };
            for e in &events {
                if exact_key && e.key != prefix {
                    continue;
                }
                let now = e.object.as_deref().filter(|o| w.matches(o));
                let before = e.prev.as_deref().filter(|o| w.matches(o));
                let sent = match (now, before, &e.object) {
                    (Some(o), None, _) => w.send("ADDED", o).await,
                    (Some(o), Some(_), _) => w.send("MODIFIED", o).await,
                    // Stopped matching: DELETED with the new object, as upstream.
                    (None, Some(_), Some(o)) => w.send("DELETED", o).await,
                    (None, Some(p), None) => w.send("DELETED", p).await,
                    (None, None, _) => true,
                };
                if !sent {
                    return;
                }
            }
            cursor = cursor.max(upto);
            if !events.is_empty() {
                continue;
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(next_bookmark) => {
                    next_bookmark = tokio::time::Instant::now() + BOOKMARK_EVERY;
                    if bookmarks {
                        let b = w.bookmark(cursor, false);
                        if !w.send("BOOKMARK", &b).await { return; }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = w.tx.closed() => return,
            }
        }
    }
}
