//! rustls configurations for the backend's two listeners, built from a data directory, and a
//! client configuration that trusts one CA.
//!
//! Every configuration uses rustls' `ring` provider explicitly, so it does not depend on which
//! process-wide default another crate in the build may have installed.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use crate::datadir::DataDir;

/// ALPN protocols the REST API offers, most preferred first.
const API_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// ALPN protocols the agent listener offers: the agent's WebSocket runs over HTTP/1.1.
const AGENT_ALPN: [&[u8]; 1] = [b"http/1.1"];

/// TLS versions of the REST API, which browsers and older tools also reach.
const API_VERSIONS: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

/// TLS versions of the agent listener: only Cairn's own agent connects there.
const AGENT_VERSIONS: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

/// How error messages name the PEM text given to [`client_config_trusting`] (other PEM comes
/// from a file, named by its path).
const GIVEN_CA_PEM: &str = "the given ca pem";

/// `Result` with [`TlsError`] as the default error.
pub type Result<T, E = TlsError> = std::result::Result<T, E>;

/// Why a TLS configuration could not be built.
///
/// Every variant is expected (a missing, unreadable or damaged file in the data directory) and
/// fails the same way until the file is fixed; none is helped by a retry.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    ReadFailed {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The PEM text holds no certificate.
    #[error("no certificate in {origin}")]
    NoCertificate {
        /// The file, or "the given ca pem".
        origin: String,
    },
    /// The PEM text holds no private key.
    #[error("no private key in {origin}")]
    NoPrivateKey {
        /// The file.
        origin: String,
    },
    /// The PEM text is malformed.
    #[error("cannot parse the pem in {origin}")]
    InvalidPem {
        /// The file, or "the given ca pem".
        origin: String,
        /// What the PEM parser reported.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A CA certificate cannot serve as a trust anchor.
    #[error("the ca certificate in {origin} is not usable")]
    InvalidCaCertificate {
        /// The file, or "the given ca pem".
        origin: String,
        /// What rustls reported.
        #[source]
        source: rustls::Error,
    },
    /// A certificate and private key were refused, typically because they do not belong
    /// together.
    #[error("cannot use the certificate {cert} with the key {key}")]
    CertifiedKeyRejected {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// What rustls reported.
        #[source]
        source: rustls::Error,
    },
    /// The crypto provider does not support the protocol versions asked for.
    #[error("the tls provider does not support the configured protocol versions")]
    ProtocolVersionsUnsupported(#[source] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("cannot build the client certificate verifier for {origin}")]
    ClientVerifierFailed {
        /// The agent CA file.
        origin: String,
        /// What rustls reported.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// The REST API listener's configuration: the API certificate (followed by the cluster CA) from
/// the data directory, no
/// client authentication (requests carry a token or API key), TLS 1.2 and 1.3, ALPN `h2` and
/// `http/1.1`.
///
/// # Errors
///
/// An error naming the file when `tls/api.pem` or `tls/api.key` is missing, unreadable,
/// malformed, or the two do not match.
pub fn api_server_config(dir: &DataDir) -> Result<Arc<ServerConfig>> {
    let (cert_path, key_path) = (dir.api_cert(), dir.api_key());
    let (certs, key) = (with_ca(dir, read_certs(&cert_path)?)?, read_key(&key_path)?);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&API_VERSIONS)
        .map_err(TlsError::ProtocolVersionsUnsupported)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| certified_key_rejected(&cert_path, &key_path, source))?;
    config.alpn_protocols = API_ALPN.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The agent listener's configuration: TLS 1.3 only, the agent-listener certificate from the
/// data directory, and a client certificate REQUIRED that chains to the agent CA.
///
/// # Guarantees
///
/// A handshake without a client certificate, or with one from any other CA (the cluster CA
/// included), fails. The entity name is the verified certificate's CN; reading it is the
/// session's job.
///
/// # Errors
///
/// An error naming the file when `tls/agent-listener.pem`, `tls/agent-listener.key` or
/// `tls/agent-ca.pem` is missing, unreadable or malformed, or the listener's pair does not
/// match.
pub fn agent_server_config(dir: &DataDir) -> Result<Arc<ServerConfig>> {
    let agent_ca_path = dir.agent_ca_cert();
    let roots = root_store(&read_certs(&agent_ca_path)?, &display(&agent_ca_path))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|source| TlsError::ClientVerifierFailed {
            origin: display(&agent_ca_path),
            source,
        })?;

    let (cert_path, key_path) = (dir.agent_listener_cert(), dir.agent_listener_key());
    let (certs, key) = (with_ca(dir, read_certs(&cert_path)?)?, read_key(&key_path)?);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&AGENT_VERSIONS)
        .map_err(TlsError::ProtocolVersionsUnsupported)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|source| certified_key_rejected(&cert_path, &key_path, source))?;
    config.alpn_protocols = AGENT_ALPN
        .iter()
        .map(|protocol| protocol.to_vec())
        .collect();
    Ok(Arc::new(config))
}

/// A client configuration that trusts exactly the CA certificates in `ca_pem` (and no system
/// roots), without a client certificate: for `cairnctl` and tests talking to the REST API.
///
/// # Errors
///
/// [`TlsError::NoCertificate`] when `ca_pem` holds none; an error when one is not a usable
/// trust anchor.
pub fn client_config_trusting(ca_pem: &str) -> Result<Arc<ClientConfig>> {
    let certs = parse_certs(ca_pem.as_bytes(), GIVEN_CA_PEM)?;
    let roots = root_store(&certs, GIVEN_CA_PEM)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&API_VERSIONS)
        .map_err(TlsError::ProtocolVersionsUnsupported)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The listener's chain with the cluster CA appended: a joining agent pins the CA by the
/// fingerprint in its join token, so the CA must be in what the server presents.
fn with_ca(
    dir: &DataDir,
    mut chain: Vec<CertificateDer<'static>>,
) -> Result<Vec<CertificateDer<'static>>> {
    chain.extend(read_certs(&dir.ca_cert())?);
    Ok(chain)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    parse_certs(&read(path)?, &display(path))
}

fn parse_certs(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::InvalidPem {
            origin: origin.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            origin: origin.to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let origin = display(path);
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey { origin },
        source => TlsError::InvalidPem { origin, source },
    })
}

fn root_store(certs: &[CertificateDer<'static>], origin: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert.clone())
            .map_err(|source| TlsError::InvalidCaCertificate {
                origin: origin.to_owned(),
                source,
            })?;
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| TlsError::ReadFailed {
        path: path.to_owned(),
        source,
    })
}

fn certified_key_rejected(cert: &Path, key: &Path, source: rustls::Error) -> TlsError {
    TlsError::CertifiedKeyRejected {
        cert: display(cert),
        key: display(key),
        source,
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::datadir::{write_init_files, InitFiles};
    use crate::pki::{self, CertifiedKeyPem};

    /// Long enough for a handshake on a busy two-core machine; a hang means a side is waiting
    /// for bytes the other never sends.
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

    fn init(root: &Path) -> DataDir {
        let dir = DataDir::new(root);
        write_init_files(
            &dir,
            &InitFiles {
                cluster_name: "test".to_owned(),
                hostnames: vec!["cairn.example.com".to_owned()],
                jwt: None,
            },
        )
        .unwrap();
        dir
    }

    fn read_string(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    /// A client that trusts the cluster CA and presents `identity`, if any.
    fn client(ca_pem: &str, identity: Option<&CertifiedKeyPem>) -> Arc<ClientConfig> {
        let Some(identity) = identity else {
            return client_config_trusting(ca_pem).unwrap();
        };
        let roots = root_store(&parse_certs(ca_pem.as_bytes(), "test").unwrap(), "test").unwrap();
        let certs = parse_certs(identity.cert_pem.as_bytes(), "test").unwrap();
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&API_VERSIONS)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .unwrap();
        Arc::new(config)
    }

    /// What each side of one connection saw.
    struct Outcome {
        /// The server's result: `Ok(the negotiated ALPN protocol)` or the error text.
        server: Result<Option<Vec<u8>>, String>,
        /// Whether the client got the server's reply to its ping.
        client_got_pong: bool,
    }

    /// Runs one connection: the server accepts, reads "ping" and answers "pong".
    async fn connect(server: Arc<ServerConfig>, client: Arc<ClientConfig>, name: &str) -> Outcome {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(server);
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.map_err(|err| err.to_string())?;
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let mut ping = [0u8; 4];
            tls.read_exact(&mut ping)
                .await
                .map_err(|err| err.to_string())?;
            assert_eq!(&ping, b"ping");
            tls.write_all(b"pong")
                .await
                .map_err(|err| err.to_string())?;
            tls.shutdown().await.map_err(|err| err.to_string())?;
            Ok(alpn)
        });

        let connector = TlsConnector::from(client);
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        let client_side = async {
            let tcp = TcpStream::connect(addr).await.ok()?;
            let mut tls = connector.connect(server_name, tcp).await.ok()?;
            tls.write_all(b"ping").await.ok()?;
            let mut pong = [0u8; 4];
            tls.read_exact(&mut pong).await.ok()?;
            Some(pong == *b"pong")
        };
        let client_got_pong = tokio::time::timeout(HANDSHAKE_TIMEOUT, client_side)
            .await
            .expect("client timed out: the server never answered nor closed")
            .unwrap_or(false);
        let server = tokio::time::timeout(HANDSHAKE_TIMEOUT, server_task)
            .await
            .expect("server timed out: the client never finished the handshake")
            .unwrap();
        Outcome {
            server,
            client_got_pong,
        }
    }

    #[tokio::test]
    async fn api_accepts_a_client_trusting_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = init(tmp.path());
        let ca_pem = read_string(&dir.ca_cert());
        let server = api_server_config(&dir).unwrap();
        for name in ["localhost", "127.0.0.1", "::1", "cairn.example.com"] {
            let outcome = connect(server.clone(), client(&ca_pem, None), name).await;
            assert!(outcome.client_got_pong, "{name}: {:?}", outcome.server);
            // The test client offers no ALPN.
            assert_eq!(outcome.server.unwrap(), None, "{name}");
        }

        let mut h2_client = (*client(&ca_pem, None)).clone();
        h2_client.alpn_protocols = vec![b"h2".to_vec()];
        let outcome = connect(server, Arc::new(h2_client), "localhost").await;
        assert_eq!(outcome.server.unwrap(), Some(b"h2".to_vec()));
    }

    #[tokio::test]
    async fn api_is_refused_by_a_client_trusting_another_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = init(tmp.path());
        let other = pki::generate_ca("other").unwrap();
        let server = api_server_config(&dir).unwrap();
        let outcome = connect(server, client(&other.cert_pem, None), "localhost").await;
        assert!(!outcome.client_got_pong);
        assert!(outcome.server.is_err());
    }

    #[tokio::test]
    async fn agent_listener_requires_a_cert_from_the_agent_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = init(tmp.path());
        let ca_pem = read_string(&dir.ca_cert());
        let agent_ca = CertifiedKeyPem {
            cert_pem: read_string(&dir.agent_ca_cert()),
            key_pem: read_string(&dir.agent_ca_key()),
        };
        let cluster_ca = CertifiedKeyPem {
            cert_pem: ca_pem.clone(),
            key_pem: read_string(&dir.ca_key()),
        };
        let server = agent_server_config(&dir).unwrap();
        let day = Duration::from_secs(86_400);

        let agent = pki::issue_client_cert(&agent_ca, "web-01", day).unwrap();
        let outcome = connect(server.clone(), client(&ca_pem, Some(&agent)), "localhost").await;
        assert!(outcome.client_got_pong, "{:?}", outcome.server);
        outcome.server.unwrap();

        let outcome = connect(server.clone(), client(&ca_pem, None), "localhost").await;
        assert!(!outcome.client_got_pong);
        let err = outcome.server.unwrap_err();
        assert!(err.contains("peer sent no certificates"), "{err}");

        let stranger_ca = pki::generate_ca("stranger").unwrap();
        let stranger = pki::issue_client_cert(&stranger_ca, "web-01", day).unwrap();
        let outcome = connect(
            server.clone(),
            client(&ca_pem, Some(&stranger)),
            "localhost",
        )
        .await;
        assert!(!outcome.client_got_pong);
        let err = outcome.server.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");

        // The cluster CA signs server certificates; it must not vouch for agents.
        let impostor = pki::issue_client_cert(&cluster_ca, "web-01", day).unwrap();
        let outcome = connect(server, client(&ca_pem, Some(&impostor)), "localhost").await;
        assert!(!outcome.client_got_pong);
        assert!(outcome.server.is_err());
    }

    #[tokio::test]
    async fn agent_listener_is_tls13_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = init(tmp.path());
        let server = agent_server_config(&dir).unwrap();
        assert_eq!(server.alpn_protocols, [b"http/1.1".to_vec()]);

        let ca_pem = read_string(&dir.ca_cert());
        let certs = parse_certs(ca_pem.as_bytes(), "test").unwrap();
        let tls12_client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(root_store(&certs, "test").unwrap())
            .with_no_client_auth();
        let outcome = connect(server, Arc::new(tls12_client), "localhost").await;
        assert!(!outcome.client_got_pong);
        let err = outcome.server.unwrap_err();
        assert!(err.contains("Tls12NotOffered"), "{err}");
    }

    #[test]
    fn loading_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = init(tmp.path());

        fs::remove_file(dir.api_key()).unwrap();
        let err = api_server_config(&dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot read {}", dir.api_key().display())
        );

        fs::write(dir.api_key(), "").unwrap();
        let err = api_server_config(&dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no private key in {}", dir.api_key().display())
        );

        // A key that does not belong to the certificate.
        fs::write(dir.api_key(), read_string(&dir.ca_key())).unwrap();
        let err = api_server_config(&dir).unwrap_err();
        assert!(
            matches!(err, TlsError::CertifiedKeyRejected { .. }),
            "{err:?}"
        );

        fs::write(dir.agent_listener_cert(), "nothing here").unwrap();
        let err = agent_server_config(&dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no certificate in {}", dir.agent_listener_cert().display())
        );

        let err = client_config_trusting("").unwrap_err();
        assert_eq!(err.to_string(), "no certificate in the given ca pem");
    }
}
