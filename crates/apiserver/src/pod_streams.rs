//! The pod subresources that stream: `log`, `exec`, `attach` and `portforward`. The
//! stored pod is checked as upstream's pod registry checks it, then the kubelet of the
//! pod's node is called over gRPC ([`crate::kubelet_client`]) and its streams are
//! bridged to the client: a streamed body for logs; for the others, an upgrade to
//! SPDY/3.1 or WebSocket ([`ferrokube_streaming`]).

use bytes::Bytes;
use ferrokube_api::keys::object_key;
use ferrokube_api::status::{self, StatusError};
use ferrokube_proto::kubelet::{
    port_forward_input, stream_input, stream_output, LogRequest, PortForwardInput,
    PortForwardStart, StreamInput, StreamStart, Target, TerminalSize,
};
use ferrokube_streaming::portforward::{self, Forwards};
use ferrokube_streaming::remotecommand::{self, Input, Options, Outcome, Streams};
use ferrokube_streaming::session::Session;
use ferrokube_streaming::upgrade::{self, Refused, Upgrade};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tonic::transport::Channel;

use crate::request::{Query, ResourcePath};
use crate::rest::{error_response, full, Body};
use crate::server::ApiServer;

pub(crate) type Kubelet = ferrokube_proto::kubelet::kubelet_client::KubeletClient<Channel>;

/// Whether a pod subresource is one of these.
pub fn is_streaming(rp: &ResourcePath) -> bool {
    rp.group.is_empty()
        && rp.resource == "pods"
        && rp.name.is_some()
        && matches!(
            rp.subresource.as_deref(),
            Some("log" | "exec" | "attach" | "portforward")
        )
}

/// Every container name of a pod: init, regular, ephemeral (upstream's order).
fn container_names(pod: &Value) -> Vec<String> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

/// The container a request names, or the pod's only one (upstream's
/// `validateContainer`).
fn pick_container(pod: &Value, given: Option<&str>) -> Result<String, StatusError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    match given.filter(|c| !c.is_empty()) {
        Some(c) => {
            if container_names(pod).iter().any(|n| n == c) {
                Ok(c.to_string())
            } else {
                Err(status::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None => {
            let regular = pod["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            match regular.as_slice() {
                [one] => Ok(one["name"].as_str().unwrap_or_default().to_string()),
                [] => Err(status::bad_request(format!(
                    "a container name must be specified for pod {name}"
                ))),
                _ => Err(status::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    container_names(pod).join(" ")
                ))),
            }
        }
    }
}

/// The container ID whose log to read, from the pod's status, with the kubelet's
/// messages when there is none (upstream's `validateContainerLogStatus`).
fn log_container_id(pod: &Value, container: &str, previous: bool) -> Result<String, StatusError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let fail = |what: String| {
        status::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" {what}"
        ))
    };
    let st = [
        "initContainerStatuses",
        "containerStatuses",
        "ephemeralContainerStatuses",
    ]
    .iter()
    .flat_map(|k| pod["status"][k].as_array().cloned().unwrap_or_default())
    .find(|s| s["name"] == container)
    .ok_or_else(|| fail("is not available".into()))?;
    let id = |v: &Value| v["containerID"].as_str().unwrap_or_default().to_string();
    let last = &st["lastState"]["terminated"];
    if previous {
        if last.is_null() || id(last).is_empty() {
            return Err(status::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{name}\" not found"
            )));
        }
        return Ok(id(last));
    }
    let state = &st["state"];
    if !state["running"].is_null() {
        return Ok(id(&st));
    }
    if !state["terminated"].is_null() {
        if !id(&st).is_empty() {
            return Ok(id(&st));
        }
        if !last.is_null() && !id(last).is_empty() {
            return Ok(id(last));
        }
        return Err(fail("is terminated".into()));
    }
    if !last.is_null() {
        if id(last).is_empty() {
            return Err(fail("is terminated".into()));
        }
        return Ok(id(last));
    }
    if let Some(reason) = state["waiting"]["reason"].as_str() {
        return Err(fail(match reason {
            "ErrImagePull" => "is waiting to start: image can't be pulled".into(),
            "ImagePullBackOff" => "is waiting to start: trying and failing to pull image".into(),
            r => format!("is waiting to start: {r}"),
        }));
    }
    Err(fail("is waiting to start - no logs yet".into()))
}

/// A non-negative integer query parameter.
fn int_param(q: &Query, k: &str, min: i64) -> Result<Option<i64>, StatusError> {
    match q.get(k).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= min => Ok(Some(n)),
            _ => Err(status::bad_request(format!(
                "{k}: Invalid value: {v:?}: must be greater than or equal to {min}"
            ))),
        },
    }
}

/// A gRPC failure of the kubelet as the API reports it.
fn kubelet_error(s: &tonic::Status) -> StatusError {
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
            status::bad_request(s.message())
        }
        tonic::Code::NotFound => status::not_found_message(s.message()),
        _ => status::internal(s.message()),
    }
}

impl ApiServer {
    /// Serves `log`, `exec`, `attach` or `portforward` of a pod (already authorized).
    pub(crate) async fn pod_stream(
        &self,
        req: Request<Incoming>,
        rp: &ResourcePath,
        query: &Query,
    ) -> Response<Body> {
        match self.pod_stream_inner(req, rp, query).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    }

    async fn pod_stream_inner(
        &self,
        req: Request<Incoming>,
        rp: &ResourcePath,
        query: &Query,
    ) -> Result<Response<Body>, StatusError> {
        let ns = rp.namespace.as_deref().unwrap_or_default();
        let name = rp.name.as_deref().unwrap_or_default();
        let pod = self.core_object("pods", ns, name).await?;
        let sub = rp.subresource.as_deref().unwrap_or_default();
        let node = pod["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let target = |container: &str, container_id: &str| Target {
            namespace: ns.to_string(),
            pod: name.to_string(),
            uid: pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            container: container.to_string(),
            container_id: container_id.to_string(),
        };
        match sub {
            "log" => {
                if req.method() != http::Method::GET {
                    return Err(status::method_not_supported());
                }
                let container = pick_container(&pod, query.get("container"))?;
                if node.is_empty() {
                    // Not scheduled: no logs yet, and no error (upstream's 204).
                    return Ok(full(StatusCode::NO_CONTENT, "text/plain", Bytes::new()));
                }
                let previous = query.flag("previous");
                let id = log_container_id(&pod, &container, previous)?;
                let since_seconds = int_param(query, "sinceSeconds", 1)?;
                let since_time = query.get("sinceTime").filter(|v| !v.is_empty());
                if since_seconds.is_some() && since_time.is_some() {
                    return Err(status::bad_request(
                        "at most one of `sinceTime` or `sinceSeconds` may be specified",
                    ));
                }
                let since_nanos = match (since_seconds, since_time) {
                    (Some(s), _) => {
                        Some(jiff::Timestamp::now().as_nanosecond() as i64 - s * 1_000_000_000)
                    }
                    (_, Some(t)) => Some(
                        t.parse::<jiff::Timestamp>()
                            .map_err(|e| status::bad_request(format!("sinceTime {t:?}: {e}")))?
                            .as_nanosecond() as i64,
                    ),
                    _ => None,
                };
                let request = LogRequest {
                    target: Some(target(&container, &id)),
                    follow: query.flag("follow"),
                    previous,
                    tail_lines: int_param(query, "tailLines", 0)?,
                    since_nanos,
                    timestamps: query.flag("timestamps"),
                    limit_bytes: int_param(query, "limitBytes", 1)?,
                };
                let mut kubelet = self.kubelet_of(&node).await?;
                let stream = kubelet
                    .logs(request)
                    .await
                    .map_err(|e| kubelet_error(&e))?
                    .into_inner();
                let body = stream.take_while(Result::is_ok).map(|c| {
                    Ok::<_, crate::rest::BoxError>(Frame::data(Bytes::from(
                        c.map(|c| c.data).unwrap_or_default(),
                    )))
                });
                Ok(Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/plain")
                    .body(BodyExt::boxed_unsync(StreamBody::new(body)))
                    .expect("static response parts"))
            }
            "exec" | "attach" => {
                let container = pick_container(&pod, query.get("container"))?;
                if node.is_empty() {
                    return Err(status::bad_request(format!(
                        "pod {name} does not have a host assigned"
                    )));
                }
                let command: Vec<String> =
                    query.all("command").into_iter().map(String::from).collect();
                if sub == "exec" && command.is_empty() {
                    return Err(status::bad_request("you must specify at least 1 command"));
                }
                let opts = Options::new(
                    query.flag("stdin"),
                    query.flag("stdout"),
                    query.flag("stderr"),
                    query.flag("tty"),
                );
                if !opts.stdin && !opts.stdout && !opts.stderr {
                    return Err(status::bad_request(
                        "you must specify at least 1 of stdin, stdout, stderr",
                    ));
                }
                let negotiated = negotiate(
                    &req,
                    remotecommand::SPDY_PROTOCOLS,
                    remotecommand::WEBSOCKET_PROTOCOLS,
                )?;
                let mut kubelet = self.kubelet_of(&node).await?;
                let (in_tx, in_rx) = mpsc::channel(16);
                let start = StreamStart {
                    target: Some(target(&container, "")),
                    command,
                    stdin: opts.stdin,
                    stdout: opts.stdout,
                    stderr: opts.stderr,
                    tty: opts.tty,
                };
                let _ = in_tx
                    .send(StreamInput {
                        input: Some(stream_input::Input::Start(start)),
                    })
                    .await;
                let input = ReceiverStream::new(in_rx);
                let call = if sub == "exec" {
                    kubelet.exec(input).await
                } else {
                    kubelet.attach(input).await
                };
                // Refused before the upgrade: the kubelet's plain-text answer passed on,
                // with the code of its error, as upstream's proxy does; kubectl shows it
                // as "unable to upgrade connection: ...".
                let output = match call {
                    Ok(r) => r.into_inner(),
                    Err(e) => {
                        tracing::warn!(pod = %name, "kubelet refused {sub}: {e:?}");
                        let code = StatusCode::from_u16(kubelet_error(&e).code())
                            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        return Ok(full(
                            code,
                            "text/plain; charset=utf-8",
                            e.message().to_string(),
                        ));
                    }
                };
                let proto = negotiated.clone();
                on_upgrade(req, move |io| async move {
                    let streams = match proto {
                        Upgrade::Spdy { .. } => {
                            match remotecommand::spdy(Session::start(io), opts).await {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::debug!("exec streams: {e}");
                                    return;
                                }
                            }
                        }
                        Upgrade::WebSocket { protocol, .. } => remotecommand::websocket(
                            WebSocketStream::from_raw_socket(io, Role::Server, None).await,
                            &protocol,
                        ),
                    };
                    bridge_remotecommand(streams, in_tx, output).await;
                });
                Ok(switching(&negotiated))
            }
            "portforward" => {
                if node.is_empty() {
                    return Err(status::bad_request(format!(
                        "pod {name} does not have a host assigned"
                    )));
                }
                let negotiated = negotiate(
                    &req,
                    &[portforward::SPDY_PROTOCOL],
                    &[portforward::WEBSOCKET_TUNNEL_PROTOCOL],
                )?;
                let kubelet = self.kubelet_of(&node).await?;
                let proto = negotiated.clone();
                let target = target("", "");
                on_upgrade(req, move |io| async move {
                    let session = match proto {
                        Upgrade::Spdy { .. } => Session::start(io),
                        Upgrade::WebSocket { .. } => Session::start(upgrade::tunnel(
                            WebSocketStream::from_raw_socket(io, Role::Server, None).await,
                        )),
                    };
                    let mut forwards = Forwards::new(session);
                    while let Some(f) = forwards.next().await {
                        tokio::spawn(forward(kubelet.clone(), target.clone(), f));
                    }
                });
                Ok(switching(&negotiated))
            }
            _ => Err(status::no_route()),
        }
    }

    /// A stored object of a core `v1` resource, or upstream's 404.
    pub(crate) async fn core_object(
        &self,
        plural: &str,
        ns: &str,
        name: &str,
    ) -> Result<Value, StatusError> {
        let r = self
            .resources
            .registry()
            .by_path("", "v1", plural)
            .copied()
            .expect("core v1 resources are built in");
        Ok(self
            .resources
            .objects
            .get(&object_key(&r, ns, name))
            .await?
            .ok_or_else(|| status::not_found(&r, name))?
            .object)
    }

    /// The kubelet of a node, at its first usable address and its daemon endpoint.
    async fn kubelet_of(&self, node: &str) -> Result<Kubelet, StatusError> {
        let obj = self.core_object("nodes", "", node).await?;
        self.kubelet_at(&obj)
    }

    /// The kubelet of a stored Node object.
    pub(crate) fn kubelet_at(&self, obj: &Value) -> Result<Kubelet, StatusError> {
        let client = self
            .kubelet
            .get()
            .ok_or_else(|| status::unavailable("no kubelet client certificate is configured"))?;
        let node = obj["metadata"]["name"].as_str().unwrap_or_default();
        let addresses = obj["status"]["addresses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // kubeadm's --kubelet-preferred-address-types.
        let host = ["InternalIP", "ExternalIP", "Hostname"]
            .iter()
            .find_map(|t| {
                addresses
                    .iter()
                    .find(|a| a["type"] == *t)
                    .and_then(|a| a["address"].as_str())
            })
            .ok_or_else(|| status::internal(format!("node {node:?} has no address")))?;
        let port = obj["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
            .as_u64()
            .filter(|p| (1..=65535).contains(p))
            .unwrap_or(10250) as u16;
        client.kubelet(host, port).map_err(status::internal)
    }
}

/// Serves the upgraded connection once the `101` answer is out.
fn on_upgrade<F, Fut>(req: Request<Incoming>, serve: F)
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => serve(TokioIo::new(io)).await,
            Err(e) => tracing::debug!("upgrade failed: {e}"),
        }
    });
}

/// The protocol an upgrade request asks for, or upstream's refusal.
fn negotiate(
    req: &Request<Incoming>,
    spdy: &[&str],
    websocket: &[&str],
) -> Result<Upgrade, StatusError> {
    upgrade::negotiate(req.headers(), spdy, websocket).map_err(|e| match e {
        Refused::NotAnUpgrade => status::bad_request(e.to_string()),
        Refused::NoProtocol { .. } => status::forbidden_path(e.to_string()),
    })
}

fn switching(u: &Upgrade) -> Response<Body> {
    let mut r = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in upgrade::switching_headers(u) {
        r = r.header(k, v);
    }
    r.body(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
    .expect("valid upgrade headers")
}

/// Pumps an exec/attach session between the client and the kubelet.
async fn bridge_remotecommand(
    streams: Streams,
    to_kubelet: mpsc::Sender<StreamInput>,
    mut from_kubelet: tonic::Streaming<ferrokube_proto::kubelet::StreamOutput>,
) {
    let Streams { mut input, output } = streams;
    tokio::spawn(async move {
        while let Some(i) = input.recv().await {
            let msg = match i {
                Input::Stdin(d) => stream_input::Input::Stdin(d.to_vec()),
                Input::StdinClosed => stream_input::Input::StdinClosed(true),
                Input::Resize { width, height } => stream_input::Input::Resize(TerminalSize {
                    width: width.into(),
                    height: height.into(),
                }),
            };
            if to_kubelet
                .send(StreamInput { input: Some(msg) })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let outcome = loop {
        let sent = match from_kubelet.message().await {
            Ok(Some(m)) => match m.output {
                Some(stream_output::Output::Stdout(d)) => output.stdout(d.into()).await,
                Some(stream_output::Output::Stderr(d)) => output.stderr(d.into()).await,
                Some(stream_output::Output::ExitCode(0)) => break Outcome::Success,
                Some(stream_output::Output::ExitCode(c)) => break Outcome::ExitCode(c),
                None => Ok(()),
            },
            Ok(None) => break Outcome::Error("the kubelet ended the session".into()),
            Err(e) => break Outcome::Error(e.message().to_string()),
        };
        // The client has gone: dropping the call ends the kubelet's side.
        if sent.is_err() {
            return;
        }
    };
    output.finish(outcome).await;
}

/// One forwarded connection: the kubelet connects to the pod's port; data flows both
/// ways until either side is done.
async fn forward(mut kubelet: Kubelet, target: Target, f: portforward::Forward) {
    let portforward::Forward {
        port,
        mut data,
        error,
    } = f;
    let (in_tx, in_rx) = mpsc::channel(16);
    let _ = in_tx
        .send(PortForwardInput {
            input: Some(port_forward_input::Input::Start(PortForwardStart {
                target: Some(target),
                port: port.into(),
            })),
        })
        .await;
    let mut from_pod = match kubelet.port_forward(ReceiverStream::new(in_rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            portforward::fail(&error, e.message()).await;
            data.writer.finish().await;
            return;
        }
    };
    let writer = data.writer.clone();
    let upstream = tokio::spawn(async move {
        while let Some(d) = data.data.recv().await {
            let msg = PortForwardInput {
                input: Some(port_forward_input::Input::Data(d.to_vec())),
            };
            if in_tx.send(msg).await.is_err() {
                return;
            }
        }
        let _ = in_tx
            .send(PortForwardInput {
                input: Some(port_forward_input::Input::Closed(true)),
            })
            .await;
        // The request stays open until the pod's side ends (aborted then): the
        // kubelet sees a half close, not the end of the call.
        std::future::pending::<()>().await;
    });
    while let Ok(Some(m)) = from_pod.message().await {
        if writer.send(&m.data).await.is_err() {
            break;
        }
    }
    upstream.abort();
    writer.finish().await;
    error.writer.finish().await;
}
