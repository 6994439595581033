//! Fake downstream clusters for the federation tests: HTTPS servers on `127.0.0.1:0` under a
//! CA of their own (register them on a real gateway with [`crate::cluster_registration`] and
//! their `url` and `ca`), answering each connection as the test scripts it.

use std::future::Future;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The largest request head [`read_head`] reads.
pub const HEAD_LIMIT: usize = 64 * 1024;

/// An HTTPS server standing in for a downstream cluster; stopped on drop.
pub struct FakeCluster {
    /// Its API URL (`https://127.0.0.1:PORT`).
    pub url: String,
    /// The CA its certificate chains to, PEM: the `Cluster`'s `ca_cert`.
    pub ca: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeCluster {
    /// Starts the server: every connection, once TLS is established, is handed to `serve` on
    /// a task of its own.
    ///
    /// # Panics
    /// When the certificate cannot be made or the port cannot be bound.
    pub async fn start<S, F>(serve: S) -> FakeCluster
    where
        S: Fn(TlsStream<TcpStream>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let (ca, chain, key) = server_identity();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake cluster");
        let url = format!("https://{}", listener.local_addr().expect("its address"));
        let serve = Arc::new(serve);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, serve) = (acceptor.clone(), Arc::clone(&serve));
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve(stream).await;
                    }
                });
            }
        });
        FakeCluster { url, ca, task }
    }
}

/// A request head as [`read_head`] read it.
#[derive(Debug, Clone)]
pub struct Head {
    /// The method.
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// The header lines, `name: value`.
    pub headers: Vec<String>,
    /// How many bytes of the body were read with the head.
    pub body_read: usize,
}

impl Head {
    /// The value of the header `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }
}

/// Reads one HTTP/1.1 request head (at most [`HEAD_LIMIT`] bytes); `None` when the client
/// hung up first or sent no request line.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Head> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = bytes.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        if bytes.len() > HEAD_LIMIT {
            return None;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        bytes.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, target) = (request_line.next()?, request_line.next()?);
    Some(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        headers: lines.map(str::to_owned).collect(),
        body_read: bytes.len() - (head_end + 4),
    })
}

/// A CA (PEM) and a certificate chain and key for `127.0.0.1` issued by it.
fn server_identity() -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fake cluster CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca_params.self_signed(&ca_key).expect("CA").pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key");
    (ca_pem, vec![cert.der().clone()], key)
}
