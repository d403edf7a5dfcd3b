//! kube-apiserver's client towards kubelets: gRPC over TLS with kube-apiserver's
//! kubelet client certificate. The kubelet's serving certificate is self-signed, so it
//! is not verified, as upstream does without `--kubelet-certificate-authority`.
//! Connections are made on first use and kept per kubelet address.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use ferrokube_proto::kubelet::kubelet_client::KubeletClient as Grpc;
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// Clients of the kubelets, by address.
pub struct KubeletClient {
    tls: TlsConnector,
    channels: Mutex<HashMap<String, Channel>>,
}

impl KubeletClient {
    /// A client presenting this certificate chain and key (PEM).
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<KubeletClient, String> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("kubelet client certificate: {e}"))?;
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("kubelet client key: {e}"))?;
        let cfg = ferrokube_client::tls::any_server_certificate(Some((chain, key)), &[b"h2"])
            .map_err(|e| format!("kubelet client TLS: {e}"))?;
        Ok(KubeletClient {
            tls: TlsConnector::from(Arc::new(cfg)),
            channels: Mutex::new(HashMap::new()),
        })
    }

    /// The kubelet at `host:port`.
    pub fn kubelet(&self, host: &str, port: u16) -> Result<Grpc<Channel>, String> {
        let authority = match host.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{host}]:{port}"),
            Err(_) => format!("{host}:{port}"),
        };
        let mut channels = self.channels.lock().expect("lock");
        let channel = match channels.get(&authority) {
            Some(c) => c.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{authority}"))
                    .map_err(|e| format!("kubelet address {authority}: {e}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(20));
                let c = endpoint.connect_with_connector_lazy(Dial {
                    tls: self.tls.clone(),
                });
                channels.insert(authority, c.clone());
                c
            }
        };
        Ok(Grpc::new(channel)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20))
    }
}

/// Dials a kubelet: TCP, then TLS.
#[derive(Clone)]
struct Dial {
    tls: TlsConnector,
}

type Dialed = TokioIo<TlsStream<TcpStream>>;

impl tower::Service<Uri> for Dial {
    type Response = Dialed;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Dialed>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(|c| c == '[' || c == ']')
                .to_string();
            let port = uri.port_u16().unwrap_or(10250);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            Ok(TokioIo::new(tls.connect(name, tcp).await?))
        })
    }
}
