//! The gRPC resource service on the API server's own port (requests with an
//! `application/grpc` content type): each call becomes the REST request it stands for
//! and takes the same road — the connection's authenticated user, authorization,
//! admission, validation, the watch cache — so gRPC is a transport, not a back door.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use ferrokube_api::status;
use ferrokube_proto::resources::resources_server::{Resources, ResourcesServer};
use ferrokube_proto::resources::{Request as PbRequest, Response as PbResponse, WatchEvent};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio_stream::Stream;
use tower::Service as _;

use crate::auth::User;
use crate::discovery;
use crate::request::{Query, ResourcePath};
use crate::rest::{error_response, Body, BoxError, Call, MAX_BODY};
use crate::server::ApiServer;

/// The routes of the gRPC services.
pub type Router = tonic::service::Routes;

/// Builds the gRPC routes over the server.
pub fn router(api: Arc<ApiServer>) -> Router {
    tonic::service::Routes::new(
        ResourcesServer::new(ResourceService { api })
            .max_decoding_message_size(MAX_BODY + 64 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024),
    )
}

/// Serves one gRPC request.
pub async fn call(router: &mut Router, req: Request<Incoming>) -> Response<Body> {
    let req = req.map(tonic::body::Body::new);
    match router.call(req).await {
        Ok(resp) => resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()),
        Err(never) => match never {},
    }
}

/// The answer to a gRPC call whose credentials no authenticator accepts.
pub fn unauthenticated() -> Response<Body> {
    tonic::Status::unauthenticated("Unauthorized")
        .into_http::<tonic::body::Body>()
        .map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync())
}

struct ResourceService {
    api: Arc<ApiServer>,
}

fn user_of<T>(req: &tonic::Request<T>) -> Arc<User> {
    req.extensions()
        .get::<Arc<User>>()
        .cloned()
        .unwrap_or_else(|| Arc::new(User::anonymous()))
}

/// The REST form of a gRPC request.
fn rest_parts(
    r: &PbRequest,
    watch: bool,
) -> Result<(Method, ResourcePath, Query, HeaderMap), tonic::Status> {
    let rf = r.r#ref.clone().unwrap_or_default();
    let opt = |s: String| (!s.is_empty()).then_some(s);
    let path = ResourcePath {
        group: rf.group,
        version: rf.version,
        namespace: opt(rf.namespace),
        resource: rf.resource,
        name: opt(rf.name),
        subresource: opt(rf.subresource),
        rest: None,
        watch_prefix: false,
    };
    let method = match (watch, r.verb.as_str()) {
        (true, _) => Method::GET,
        (_, "get" | "list") => Method::GET,
        (_, "create") => Method::POST,
        (_, "update") => Method::PUT,
        (_, "patch") => Method::PATCH,
        (_, "delete" | "deletecollection") => Method::DELETE,
        (_, other) => {
            return Err(tonic::Status::invalid_argument(format!(
                "unknown verb {other:?}"
            )))
        }
    };
    if !watch && r.verb == "list" && path.name.is_some() {
        return Err(tonic::Status::invalid_argument("list names no object"));
    }
    let mut query = r.query.clone();
    if watch {
        query.insert("watch".into(), "true".into());
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    );
    let ct = if r.content_type.is_empty() {
        "application/json"
    } else {
        &r.content_type
    };
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_str(ct)
            .map_err(|_| tonic::Status::invalid_argument("bad content type"))?,
    );
    Ok((method, path, Query::from_map(query), headers))
}

impl ResourceService {
    /// The `discovery` verb: the aggregated discovery documents of `/api` and `/apis`
    /// in one `APIGroupDiscoveryList` (the core group first), as an authenticated
    /// user may read them over REST.
    fn discovery(&self, user: &User) -> PbResponse {
        let answer = |code: u16, v: &serde_json::Value| PbResponse {
            code: u32::from(code),
            body: v.to_string().into_bytes(),
            warnings: vec![],
        };
        if let Err(msg) = crate::auth::authorize_path(user, "get", "/apis") {
            let e = status::forbidden_path(msg);
            let body = serde_json::to_value(&e.0).expect("Status serializes");
            return answer(e.code(), &body);
        }
        let reg = self.api.resources.registry();
        let mut doc = discovery::aggregated(&reg, true);
        let apis = discovery::aggregated(&reg, false);
        if let (Some(items), Some(more)) = (
            doc["items"].as_array_mut(),
            apis["items"].as_array().cloned(),
        ) {
            items.extend(more);
        }
        answer(200, &doc)
    }

    async fn rest(
        &self,
        r: PbRequest,
        user: &User,
        watch: bool,
    ) -> Result<Response<Body>, tonic::Status> {
        if r.body.len() > MAX_BODY {
            return Ok(error_response(&status::too_large(MAX_BODY)));
        }
        let (method, path, query, headers) = rest_parts(&r, watch)?;
        let (info, verb) = match self.api.admit_request(&method, &path, &query, user).await {
            Ok(x) => x,
            Err(e) => return Ok(error_response(&e)),
        };
        if info.group == ferrokube_api::registry::METRICS_GROUP {
            return Ok(self
                .api
                .resource_metrics(&info, verb, &path, &query, &headers)
                .await);
        }
        let call = Call {
            applied: false,
            method: &method,
            path: &path,
            query: &query,
            headers: &headers,
            body: Bytes::from(r.body),
        };
        Ok(self.api.serve_resource(&info, verb, call).await)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Resources for ResourceService {
    async fn call(
        &self,
        req: tonic::Request<PbRequest>,
    ) -> Result<tonic::Response<PbResponse>, tonic::Status> {
        let user = user_of(&req);
        if req.get_ref().verb == "discovery" {
            return Ok(tonic::Response::new(self.discovery(&user)));
        }
        let resp = self.rest(req.into_inner(), &user, false).await?;
        let code = u32::from(resp.status().as_u16());
        let warnings = resp
            .headers()
            .get_all("warning")
            .iter()
            .filter_map(|v| v.to_str().ok().map(String::from))
            .collect();
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Err(tonic::Status::internal(e.to_string())),
        };
        Ok(tonic::Response::new(PbResponse {
            code,
            body: body.to_vec(),
            warnings,
        }))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        req: tonic::Request<PbRequest>,
    ) -> Result<tonic::Response<EventStream>, tonic::Status> {
        let user = user_of(&req);
        let resp = self.rest(req.into_inner(), &user, true).await?;
        let ok = resp.status().is_success();
        let mut body = resp.into_body();
        let stream = async_stream(
            move |tx: tokio::sync::mpsc::Sender<Result<WatchEvent, tonic::Status>>| async move {
                if !ok {
                    // A failed start is one ERROR event carrying the Status.
                    let status = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let object: serde_json::Value =
                        serde_json::from_slice(&status).unwrap_or_default();
                    let event = serde_json::json!({"type": "ERROR", "object": object}).to_string();
                    let _ = tx
                        .send(Ok(WatchEvent {
                            event: event.into_bytes(),
                        }))
                        .await;
                    return;
                }
                let mut buf: Vec<u8> = Vec::new();
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { return };
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    buf.extend_from_slice(&data);
                    while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=nl).take(nl).collect();
                        if tx.send(Ok(WatchEvent { event: line })).await.is_err() {
                            return;
                        }
                    }
                }
            },
        );
        Ok(tonic::Response::new(stream))
    }
}

/// A stream fed by a task through a bounded channel (the task ends when the receiver
/// is dropped).
fn async_stream<F, Fut>(f: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<WatchEvent, tonic::Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
