//! The kubelet's server (port 10250): the streaming service kube-apiserver calls for
//! `kubectl logs`, `exec`, `attach` and `port-forward`, and the resource usage behind
//! `kubectl top`. It speaks gRPC over TLS with a
//! serving certificate of its own (self-signed under `<root-dir>/pki` unless given, as
//! upstream's kubelet does) and requires a client certificate from the cluster CA that
//! names kube-apiserver's kubelet client (`kube-apiserver-kubelet-client`) or an
//! administrator (`system:masters`, `kubeadm:cluster-admins`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferrokube_proto::kubelet::kubelet_server::{Kubelet, KubeletServer};
use ferrokube_proto::kubelet::{
    port_forward_input, stream_input, stream_output, LogChunk, LogRequest, PortForwardInput,
    PortForwardOutput, StatsRequest, StatsResponse, StreamInput, StreamOutput, StreamStart, Target,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::logs::{LogOptions, Reader, FOLLOW_POLL};
use crate::pods::Pods;
use crate::stats::Sampler;
use crate::Error;

/// Where the server listens and with which certificates.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub address: SocketAddr,
    /// Serving certificate and key (PEM); made under `<root-dir>/pki` when not given.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The CA client certificates must chain to (PEM).
    pub client_ca_pem: Vec<u8>,
}

/// The serving certificate and key: the given files, or a self-signed pair made once
/// under `pki_dir` (`kubelet.crt`, `kubelet.key`) for the node's name and address.
pub fn serving_identity(
    cfg: &ServerConfig,
    pki_dir: &Path,
    node: &str,
    ip: std::net::IpAddr,
) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| Error::Config(format!("{}: {e}", p.display())));
    match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => return Ok((read(c)?, read(k)?)),
        (None, None) => {}
        _ => {
            return Err(Error::Config(
                "--tls-cert-file and --tls-private-key-file go together".into(),
            ))
        }
    }
    let (cert, key) = (pki_dir.join("kubelet.crt"), pki_dir.join("kubelet.key"));
    if cert.exists() && key.exists() {
        return Ok((read(&cert)?, read(&key)?));
    }
    let fail = |e: &dyn std::fmt::Display| Error::Config(format!("serving certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(vec![node.to_string()]).map_err(|e| fail(&e))?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{node}@kubelet"));
    let kp = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
    let c = params.self_signed(&kp).map_err(|e| fail(&e))?;
    std::fs::create_dir_all(pki_dir).map_err(|e| fail(&e))?;
    std::fs::write(&cert, c.pem()).map_err(|e| fail(&e))?;
    let key_pem = kp.serialize_pem();
    std::fs::write(&key, &key_pem).map_err(|e| fail(&e))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600));
    }
    Ok((c.pem().into_bytes(), key_pem.into_bytes()))
}

/// Serves on `listener` until it fails.
pub async fn run(
    pods: Arc<Pods>,
    stats: Arc<Sampler>,
    listener: tokio::net::TcpListener,
    cfg: ServerConfig,
    identity: (Vec<u8>, Vec<u8>),
) -> Result<(), Error> {
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &identity.0,
            &identity.1,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(&cfg.client_ca_pem));
    tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|e| Error::Config(format!("kubelet server TLS: {e}")))?
        .add_service(KubeletServer::new(Service { pods, stats }))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .map_err(|e| Error::Config(format!("kubelet server on {}: {e}", cfg.address)))
}

/// Whether the verified client certificate may use the service.
fn authorize<T>(req: &Request<T>) -> Result<(), Status> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let cert = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let (_, cert) = X509Certificate::from_der(cert.as_ref())
        .map_err(|_| Status::unauthenticated("unreadable client certificate"))?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let admin = subject.iter_organization().any(|o| {
        o.as_str()
            .is_ok_and(|o| o == "system:masters" || o == "kubeadm:cluster-admins")
    });
    if admin || cn == "kube-apiserver-kubelet-client" {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "user {cn:?} may not use the kubelet API"
    )))
}

struct Service {
    pods: Arc<Pods>,
    stats: Arc<Sampler>,
}

type OutStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// The first message of an exec or attach session.
async fn session_start(input: &mut Streaming<StreamInput>) -> Result<StreamStart, Status> {
    match input.message().await? {
        Some(StreamInput {
            input: Some(stream_input::Input::Start(s)),
        }) => Ok(s),
        _ => Err(Status::invalid_argument(
            "the first message must start the session",
        )),
    }
}

fn target(t: Option<Target>) -> Result<Target, Status> {
    t.filter(|t| !t.uid.is_empty() && !t.container.is_empty())
        .ok_or_else(|| Status::invalid_argument("the target pod and container are required"))
}

#[tonic::async_trait]
impl Kubelet for Service {
    type LogsStream = OutStream<LogChunk>;
    type ExecStream = OutStream<StreamOutput>;
    type AttachStream = OutStream<StreamOutput>;
    type PortForwardStream = OutStream<PortForwardOutput>;

    async fn stats(&self, req: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        authorize(&req)?;
        Ok(Response::new(self.stats.current().await))
    }

    async fn logs(&self, req: Request<LogRequest>) -> Result<Response<Self::LogsStream>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let t = target(r.target)?;
        let (log, exit_file) = self
            .pods
            .attempt_log(&t.namespace, &t.pod, &t.uid, &t.container, &t.container_id)
            .map_err(Status::invalid_argument)?;
        let follow = r.follow && !r.previous;
        let opts = LogOptions {
            follow,
            tail_lines: r.tail_lines,
            since_nanos: r.since_nanos,
            timestamps: r.timestamps,
            limit_bytes: r.limit_bytes,
        };
        let mut reader = Reader::open(&log, opts).map_err(|_| {
            Status::invalid_argument(format!(
                "container \"{}\" in pod \"{}\" is waiting to start - no logs yet",
                t.container, t.pod
            ))
        })?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            loop {
                // Once the container has ended, what is in the file is all there is.
                let ended = exit_file.exists();
                let out = match reader.read_available() {
                    Ok(out) => out,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                for chunk in out.chunks(32 << 10) {
                    if tx
                        .send(Ok(LogChunk {
                            data: chunk.to_vec(),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if !follow || ended || reader.done() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn exec(
        &self,
        req: Request<Streaming<StreamInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        authorize(&req)?;
        let mut input = req.into_inner();
        let start = session_start(&mut input).await?;
        let t = target(start.target.clone())?;
        if start.command.is_empty() {
            return Err(Status::invalid_argument("a command is required"));
        }
        let id = self.pods.running_id(&t.uid, &t.container).ok_or_else(|| {
            Status::not_found(format!("container not found (\"{}\")", t.container))
        })?;
        if start.tty {
            // With a terminal, `exec` first waits for the client's size, which the client
            // can only send once this call has answered (it upgrades its connection on
            // the answer): answer now and start the command meanwhile.
            let (tx, rx) = mpsc::channel(16);
            let pods = self.pods.clone();
            tokio::spawn(async move {
                match exec(&pods, &id, start, input).await {
                    Ok(mut out) => {
                        while let Some(m) = out.recv().await {
                            if tx.send(m).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                    }
                }
            });
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let rx = exec(&self.pods, &id, start, input).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn attach(
        &self,
        req: Request<Streaming<StreamInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        authorize(&req)?;
        let mut input = req.into_inner();
        let start = session_start(&mut input).await?;
        let t = target(start.target.clone())?;
        let not_running =
            || Status::not_found(format!("container not found (\"{}\")", t.container));
        let id = self
            .pods
            .running_id(&t.uid, &t.container)
            .ok_or_else(not_running)?;
        let bundle = self
            .pods
            .started_bundle(&t.uid, &t.container, &id, Duration::from_secs(10))
            .await
            .ok_or_else(not_running)?;
        let rx = attach(&bundle, start, input).await.map_err(|e| {
            Status::internal(format!("error attaching to container {}: {e}", t.container))
        })?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn port_forward(
        &self,
        req: Request<Streaming<PortForwardInput>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        authorize(&req)?;
        let mut input = req.into_inner();
        let start = match input.message().await? {
            Some(PortForwardInput {
                input: Some(port_forward_input::Input::Start(s)),
            }) => s,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must name the port",
                ))
            }
        };
        let t = start
            .target
            .filter(|t| !t.uid.is_empty())
            .ok_or_else(|| Status::invalid_argument("the target pod is required"))?;
        let port = u16::try_from(start.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Status::invalid_argument(format!("invalid port {}", start.port)))?;
        let netns = self
            .pods
            .pod_netns(&t.uid)
            .ok_or_else(|| Status::not_found("pod does not exist"))?;
        let stream = connect_in(netns.clone(), port).await.map_err(|e| {
            Status::unavailable(format!(
                "error forwarding port {port} to pod {}, uid {}: failed to connect to localhost:{port} inside namespace {}: {e}",
                t.pod,
                t.uid,
                netns.as_deref().map_or("(host)".into(), |p| format!("{:?}", p.display().to_string())),
            ))
        })?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(forward(stream, input, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Connects to `localhost:port` inside a network namespace (`None`: the node's own).
async fn connect_in(netns: Option<PathBuf>, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own: entering a namespace changes the calling thread for good.
    std::thread::spawn(move || {
        let connect = || -> std::io::Result<std::net::TcpStream> {
            if let Some(p) = &netns {
                let f = std::fs::File::open(p)?;
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
            }
            let limit = Duration::from_secs(5);
            let v4 = std::net::TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                limit,
            );
            match v4 {
                Ok(s) => Ok(s),
                Err(e4) => std::net::TcpStream::connect_timeout(
                    &SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
                    limit,
                )
                .map_err(|_| e4),
            }
        };
        let _ = tx.send(connect());
    });
    let s = rx
        .await
        .map_err(|_| std::io::Error::other("the connecting thread died"))??;
    s.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(s)
}

/// Copies between a forwarded connection and the pod's socket. When the caller
/// half-closes, the pod's side gets EOF and has a second to finish, as upstream.
async fn forward(
    stream: tokio::net::TcpStream,
    mut input: Streaming<PortForwardInput>,
    tx: mpsc::Sender<Result<PortForwardOutput, Status>>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut rd, mut wr) = stream.into_split();
    let (closed_tx, mut closed_rx) = tokio::sync::watch::channel(false);
    let upstream = async move {
        while let Ok(Some(m)) = input.message().await {
            match m.input {
                Some(port_forward_input::Input::Data(d)) => {
                    let written = wr.write_all(&d).await;
                    if written.is_err() {
                        break;
                    }
                }
                Some(port_forward_input::Input::Closed(_)) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
        let _ = closed_tx.send(true);
    };
    let downstream = async move {
        let mut buf = vec![0u8; 32 << 10];
        let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let read = tokio::select! {
                r = rd.read(&mut buf) => r,
                _ = closed_rx.changed(), if grace.is_none() => {
                    grace = Some(Box::pin(tokio::time::sleep(Duration::from_secs(1))));
                    continue;
                }
                _ = async { grace.as_mut().expect("set").await }, if grace.is_some() => return,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send(Ok(PortForwardOutput {
                            data: buf[..n].to_vec(),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    tokio::join!(upstream, downstream);
}

/// Reads one attach frame.
async fn read_frame(
    rd: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<crate::runtime::attach::Frame> {
    use crate::runtime::attach::Frame;
    use tokio::io::AsyncReadExt as _;
    let mut h = [0u8; 5];
    rd.read_exact(&mut h).await?;
    let (kind, len) = Frame::header(h)?;
    let mut payload = vec![0u8; len];
    rd.read_exact(&mut payload).await?;
    Frame::decode(kind, payload)
}

/// Attaches to a container through its shim's socket in `bundle`: the session's input goes to
/// the shim, what the container writes from now on comes back; the stream ends (with
/// success, as upstream's attach) when the container does.
async fn attach(
    bundle: &Path,
    start: StreamStart,
    mut input: Streaming<StreamInput>,
) -> std::io::Result<mpsc::Receiver<Result<StreamOutput, Status>>> {
    use crate::runtime::attach::{short_path, Frame, SOCKET};
    use tokio::io::AsyncWriteExt as _;
    let (_dir, short) = short_path(bundle, SOCKET)?;
    let stream = tokio::net::UnixStream::connect(&short).await?;
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(&Frame::Hello { stdin: start.stdin }.encode())
        .await?;
    tokio::spawn(async move {
        while let Ok(Some(m)) = input.message().await {
            let frame = match m.input {
                Some(stream_input::Input::Stdin(d)) if start.stdin => Frame::Stdin(d),
                Some(stream_input::Input::StdinClosed(_)) => Frame::CloseStdin,
                Some(stream_input::Input::Resize(r)) => Frame::Resize {
                    width: r.width.min(u16::MAX as u32) as u16,
                    height: r.height.min(u16::MAX as u32) as u16,
                },
                _ => continue,
            };
            if wr.write_all(&frame.encode()).await.is_err() {
                return;
            }
        }
        // The caller has gone: the shim sees this client leave.
        let _ = wr.shutdown().await;
    });
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let out = match read_frame(&mut rd).await {
                Ok(Frame::Stdout(d)) if start.stdout => stream_output::Output::Stdout(d),
                Ok(Frame::Stderr(d)) if start.stderr => stream_output::Output::Stderr(d),
                Ok(_) => continue,
                // The shim closed the socket: the container has ended.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    stream_output::Output::ExitCode(0)
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::internal(format!("error attaching: {e}"))))
                        .await;
                    return;
                }
            };
            let last = matches!(out, stream_output::Output::ExitCode(_));
            let sent = tx.send(Ok(StreamOutput { output: Some(out) })).await;
            if last || sent.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Runs `runc exec` for a session and returns its output stream. With a terminal,
/// runc's stdio is the far end of a pseudo-terminal pair this side holds: runc proxies
/// it to the container's own terminal and takes its size from it on SIGWINCH.
async fn exec(
    pods: &Pods,
    id: &str,
    start: StreamStart,
    mut input: Streaming<StreamInput>,
) -> Result<mpsc::Receiver<Result<StreamOutput, Status>>, Status> {
    use std::process::Stdio;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fail = |e: &dyn std::fmt::Display| {
        Status::internal(format!("error executing command in container: {e}"))
    };
    // With a terminal, kubectl sends its size first: the terminal is made with it, so
    // runc (which applies sizes only once it holds the container's terminal) starts the
    // command at that size. What else comes meanwhile is kept for later. (Bounded: a
    // client that sends no size gets the default one.)
    let mut early = Vec::new();
    let mut size = None;
    if start.tty {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while size.is_none() {
            match tokio::time::timeout_at(deadline, input.message()).await {
                Ok(Ok(Some(StreamInput {
                    input: Some(stream_input::Input::Resize(r)),
                }))) => {
                    size = Some(nix::pty::Winsize {
                        ws_row: r.height.min(u16::MAX as u32) as u16,
                        ws_col: r.width.min(u16::MAX as u32) as u16,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    })
                }
                Ok(Ok(Some(m))) => early.push(m),
                _ => break,
            }
        }
    }
    let mut cmd = tokio::process::Command::new(&pods.runc.binary);
    cmd.arg("--root").arg(&pods.runc.root).arg("exec");
    let master = if start.tty {
        let pty = nix::pty::openpty(size.as_ref(), None).map_err(|e| fail(&e))?;
        let dup = |fd: &std::os::fd::OwnedFd| fd.try_clone().map_err(|e| fail(&e));
        cmd.arg("--tty")
            .stdin(Stdio::from(dup(&pty.slave)?))
            .stdout(Stdio::from(dup(&pty.slave)?))
            .stderr(Stdio::from(pty.slave));
        Some(pty.master)
    } else {
        let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
        // runc's own complaints come on stderr too: it is read even when not wanted.
        cmd.stdin(piped(start.stdin))
            .stdout(piped(start.stdout))
            .stderr(Stdio::piped());
        None
    };
    cmd.arg(id).args(&start.command);
    let mut child = cmd.spawn().map_err(|e| fail(&e))?;
    let runc_pid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let (tx, rx) = mpsc::channel(16);
    // The end of the error output tells a failed start from the command's own exit 255.
    let tail = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let keep_tail = |t: &std::sync::Mutex<Vec<u8>>, data: &[u8]| {
        if let Ok(mut t) = t.lock() {
            t.extend_from_slice(data);
            let excess = t.len().saturating_sub(4096);
            t.drain(..excess);
        }
    };
    let mut readers = Vec::new();
    let out = |o: stream_output::Output| Ok(StreamOutput { output: Some(o) });
    if let Some(mut pipe) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                if tx
                    .send(out(stream_output::Output::Stdout(buf[..n].to_vec())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    if let Some(mut pipe) = child.stderr.take() {
        let (tx, tail) = (tx.clone(), tail.clone());
        let forward = start.stderr;
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                keep_tail(&tail, &buf[..n]);
                if forward
                    && tx
                        .send(out(stream_output::Output::Stderr(buf[..n].to_vec())))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        }));
    }
    let mut term_writer = None;
    if let Some(m) = &master {
        let reader = m.try_clone().map_err(|e| fail(&e))?;
        term_writer = Some(tokio::fs::File::from_std(std::fs::File::from(
            m.try_clone().map_err(|e| fail(&e))?,
        )));
        let (tx, tail) = (tx.clone(), tail.clone());
        readers.push(tokio::task::spawn_blocking(move || {
            use std::io::Read as _;
            let mut f = std::fs::File::from(reader);
            let mut buf = vec![0u8; 32 << 10];
            // EIO once runc and the command have closed the terminal.
            while let Ok(n @ 1..) = f.read(&mut buf) {
                keep_tail(&tail, &buf[..n]);
                if tx
                    .blocking_send(out(stream_output::Output::Stdout(buf[..n].to_vec())))
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    // Input: stdin into the pipe or the terminal, sizes to the terminal.
    let mut stdin = child.stdin.take();
    let term = master
        .as_ref()
        .map(|m| m.try_clone())
        .transpose()
        .map_err(|e| fail(&e))?;
    let input_task = tokio::spawn(async move {
        use futures::StreamExt as _;
        let mut input = futures::stream::iter(early.into_iter().map(Ok)).chain(input);
        while let Some(Ok(m)) = input.next().await {
            match m.input {
                Some(stream_input::Input::Stdin(d)) => {
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(&d).await.is_err() {
                            stdin = None;
                        }
                    } else if let Some(w) = term_writer.as_mut() {
                        let _ = w.write_all(&d).await;
                        let _ = w.flush().await;
                    }
                }
                Some(stream_input::Input::StdinClosed(_)) => {
                    stdin = None;
                    // A terminal has no half close: its end-of-file is the EOF character.
                    if let Some(w) = term_writer.as_mut() {
                        let _ = w.write_all(&[4]).await;
                        let _ = w.flush().await;
                    }
                }
                Some(stream_input::Input::Resize(r)) => {
                    if let (Some(m), Some(pid)) = (&term, runc_pid) {
                        crate::runtime::console::set_size(m, r.width, r.height);
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGWINCH);
                    }
                }
                _ => {}
            }
        }
    });
    tokio::spawn(async move {
        let status = child.wait().await;
        // Output still in flight (or held open by the command's children) gets a moment.
        let _ =
            tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(readers)).await;
        input_task.abort();
        drop(master);
        let code = match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt as _;
                s.code().or(s.signal().map(|sig| 128 + sig)).unwrap_or(-1)
            }
            Err(e) => {
                let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                return;
            }
        };
        let tail = tail.lock().map(|t| t.clone()).unwrap_or_default();
        let failed_start = String::from_utf8_lossy(&tail)
            .lines()
            .rev()
            .find(|l| l.contains("exec failed: "))
            .map(|l| l.trim().to_string());
        if let (255, Some(line)) = (code, failed_start) {
            let msg = line
                .split("exec failed: ")
                .nth(1)
                .unwrap_or(&line)
                .trim_end_matches('"');
            let _ = tx
                .send(Err(Status::internal(format!(
                    "error executing command in container: failed to exec in container: OCI runtime exec failed: exec failed: {msg}: unknown"
                ))))
                .await;
            return;
        }
        let _ = tx.send(out(stream_output::Output::ExitCode(code))).await;
    });
    Ok(rx)
}
