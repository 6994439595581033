//! Certificates and keys: the cluster's certificate authorities, the certificates they issue,
//! signing of agent certificate requests, fingerprints, and the ES256 JWT signing key pair.
//!
//! Everything here works on PEM text in memory; `datadir` decides where it lives on disk and
//! `tls` turns it into rustls configurations. Every key is ECDSA P-256.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, SubjectPublicKeyInfo, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// How long a certificate authority made by [`generate_ca`] is valid: ten years.
pub(crate) const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// How long a server certificate made by [`issue_server_cert`] is valid: one year.
pub(crate) const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Names every server certificate carries besides the operator's, so that local clients work.
const ALWAYS_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// How far `notBefore` is set in the past, so that a peer whose clock is a little behind
/// accepts a certificate issued a moment ago.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Length of a random serial number in bytes: 128 bits, well within RFC 5280's 20 octets.
const SERIAL_LEN: usize = 16;

/// `Result` with [`PkiError`] as the default error.
pub(crate) type Result<T, E = PkiError> = std::result::Result<T, E>;

/// A certificate and its private key, both PEM.
///
/// `Debug` leaves the key out, so that the value can sit in structures that get logged.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct CertifiedKeyPem {
    /// The certificate, `-----BEGIN CERTIFICATE-----`.
    pub cert_pem: String,
    /// The private key in PKCS#8, `-----BEGIN PRIVATE KEY-----`. Secret.
    pub key_pem: String,
}

/// The ES256 key pair that signs and verifies the API's access tokens.
///
/// Federated clusters share one pair so that a gateway's tokens are valid downstream.
/// `Debug` leaves the private key out.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct JwtKeyPair {
    /// The private key in PKCS#8, `-----BEGIN PRIVATE KEY-----`. Secret.
    pub private_pem: String,
    /// The public key as a SubjectPublicKeyInfo, `-----BEGIN PUBLIC KEY-----`.
    pub public_pem: String,
}

/// Why making, reading or signing a certificate or key failed.
///
/// The `Invalid…`, `Jwt…` and `ValidityTooLong` variants are expected (bad input from an
/// operator, an agent or a file) and a retry with the same input fails the same way.
/// `KeyGenerationFailed`, `SigningFailed` and `RandomFailed` are internal faults.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The crypto library could not generate a key pair. Internal fault.
    #[error("failed to generate a P-256 key pair")]
    KeyGenerationFailed(#[source] rcgen::Error),
    /// The system's random number generator failed while making a serial number. Internal
    /// fault; a retry may help.
    #[error("failed to generate a random certificate serial number")]
    RandomFailed,
    /// Encoding or signing the certificate for `common_name` failed. Internal fault.
    #[error("failed to sign the certificate for {common_name}")]
    SigningFailed {
        /// The subject common name of the certificate being made.
        common_name: String,
        /// What rcgen reported.
        #[source]
        source: rcgen::Error,
    },
    /// A requested validity is too long to be represented as a date. Expected.
    #[error("certificate validity of {validity:?} is too long")]
    ValidityTooLong {
        /// The validity asked for.
        validity: Duration,
    },
    /// A server hostname is neither a DNS name nor an IP address. Expected.
    #[error("hostname `{hostname}` is not a valid DNS name or IP address")]
    InvalidHostname {
        /// The hostname as given.
        hostname: String,
    },
    /// The CA's private key cannot be read. Expected (a damaged or foreign file).
    #[error("ca private key is not a PKCS#8 PEM key")]
    InvalidCaKey(#[source] rcgen::Error),
    /// The CA's certificate cannot be read. Expected (a damaged or foreign file).
    #[error("ca certificate is not a PEM X.509 certificate")]
    InvalidCaCert(#[source] rcgen::Error),
    /// The CA's certificate and private key do not belong together. Expected.
    #[error("ca certificate does not match the ca private key")]
    CaKeyMismatch,
    /// A certificate signing request cannot be parsed, has a bad signature or asks for an
    /// extension this signer does not know. Expected.
    #[error("certificate signing request is invalid")]
    InvalidCsr(#[source] rcgen::Error),
    /// PEM text holds no usable certificate. Expected.
    #[error("no certificate in the pem text")]
    NoCertificate(#[source] rustls::pki_types::pem::Error),
    /// The JWT private key is not what ES256 needs. Expected.
    #[error(
        "jwt private key is not an EC P-256 key in PKCS#8 (`-----BEGIN PRIVATE KEY-----`) or SEC1 (`-----BEGIN EC PRIVATE KEY-----`) PEM"
    )]
    JwtPrivateKeyInvalid(#[source] Option<rcgen::Error>),
    /// The JWT public key is not what ES256 needs. Expected.
    #[error("jwt public key is not an EC P-256 key in SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`)")]
    JwtPublicKeyInvalid(#[source] Option<rcgen::Error>),
    /// The JWT public key belongs to another private key. Expected.
    #[error("jwt public key does not match the private key")]
    JwtKeyMismatch,
}

// === impl CertifiedKeyPem ===

impl fmt::Debug for CertifiedKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKeyPem")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

// === impl JwtKeyPair ===

impl fmt::Debug for JwtKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeyPair")
            .field("private_pem", &"<redacted>")
            .field("public_pem", &self.public_pem)
            .finish()
    }
}

/// Makes a self-signed certificate authority named `common_name`.
///
/// # Guarantees
///
/// The key is ECDSA P-256; the certificate has `CA:true` with a path length of 0 (it issues
/// end-entity certificates only), key usages `keyCertSign` and `cRLSign`, and is valid for
/// [`CA_VALIDITY`].
pub(crate) fn generate_ca(common_name: &str) -> Result<CertifiedKeyPem> {
    let key = generate_key()?;
    let mut params = base_params(common_name, CA_VALIDITY)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params
        .self_signed(&key)
        .map_err(|source| signing_failed(common_name, source))?;
    Ok(CertifiedKeyPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a TLS server certificate signed by `ca`, with a new key.
///
/// # Guarantees
///
/// The subject alternative names are every entry of `hostnames` (IP addresses as IP SANs,
/// anything else as a DNS name; blank entries are skipped, duplicates dropped) plus
/// `localhost`, `127.0.0.1` and `::1`. The extended key usage is `serverAuth`; validity is
/// [`SERVER_CERT_VALIDITY`].
///
/// # Errors
///
/// [`PkiError::InvalidHostname`] names the first hostname that is neither; the CA errors
/// when `ca` is unusable.
pub(crate) fn issue_server_cert(
    ca: &CertifiedKeyPem,
    common_name: &str,
    hostnames: &[String],
) -> Result<CertifiedKeyPem> {
    let subject_alt_names = server_sans(hostnames)?;
    let issuer = ca_issuer(ca)?;
    let key = generate_key()?;
    let mut params = base_params(common_name, SERVER_CERT_VALIDITY)?;
    params.subject_alt_names = subject_alt_names;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| signing_failed(common_name, source))?;
    Ok(CertifiedKeyPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a TLS client certificate for `common_name`, signed by `ca`, with a new key.
///
/// This is for clients that are not agents (the store's and the secrets providers' client
/// identities, tests); agents get [`issue_agent_cert`] or, from a CSR, [`sign_csr`].
///
/// # Guarantees
///
/// The subject is exactly `CN=<common_name>`, the extended key usage is `clientAuth`, there
/// are no subject alternative names, and the certificate is valid for `validity` from now.
pub(crate) fn issue_client_cert(
    ca: &CertifiedKeyPem,
    common_name: &str,
    validity: Duration,
) -> Result<CertifiedKeyPem> {
    issue_with(ca, client_params(common_name, None, validity)?, common_name)
}

#[cfg(test)]
/// Issues the client certificate of the agent `namespace`/`name` with a new key: the same
/// certificate [`sign_csr`] makes, for tests and tools that need a whole identity at once.
///
/// # Errors
///
/// As [`sign_csr`], without the CSR's.
pub(crate) fn issue_agent_cert(
    ca: &CertifiedKeyPem,
    namespace: &str,
    name: &str,
    validity: Duration,
) -> Result<CertifiedKeyPem> {
    issue_with(ca, agent_params(namespace, name, validity)?, name)
}

fn issue_with(
    ca: &CertifiedKeyPem,
    params: CertificateParams,
    common_name: &str,
) -> Result<CertifiedKeyPem> {
    let issuer = ca_issuer(ca)?;
    let key = generate_key()?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| signing_failed(common_name, source))?;
    Ok(CertifiedKeyPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Signs an agent's certificate signing request as the client certificate of the agent
/// `namespace`/`name`, and returns the certificate PEM.
///
/// # Guarantees
///
/// Only the CSR's public key is used, after its self-signature is verified. Whatever subject,
/// alternative names, key usages or CA flag the CSR asks for are ignored: the subject is
/// exactly `CN=<name>`, the only subject alternative name is the URI
/// [`cairn_api::agent::agent_uri`] (`cairn:agent:<namespace>/<name>`) and the extended key
/// usage is `clientAuth`, so the caller decides the entity's identity and the agent listener
/// reads both namespace and entity from the certificate.
///
/// # Errors
///
/// [`PkiError::InvalidCsr`] when the CSR is not PEM, its signature does not verify, or it
/// carries an extension rcgen cannot parse; [`PkiError::SigningFailed`] for a name that cannot
/// be written into the certificate.
pub(crate) fn sign_csr(
    ca: &CertifiedKeyPem,
    csr_pem: &str,
    namespace: &str,
    name: &str,
    validity: Duration,
) -> Result<String> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::InvalidCsr)?;
    let issuer = ca_issuer(ca)?;
    let params = agent_params(namespace, name, validity)?;
    let cert = params
        .signed_by(&csr.public_key, &issuer)
        .map_err(|source| signing_failed(name, source))?;
    Ok(cert.pem())
}

/// The SHA-256 fingerprint of the first certificate in `cert_pem`: the digest of its DER, as 64
/// lowercase hex digits without separators.
///
/// Join tokens carry the CA's fingerprint so that an agent can pin it before it trusts
/// anything the backend sends.
pub(crate) fn fingerprint_sha256(cert_pem: &str) -> Result<String> {
    let der =
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(PkiError::NoCertificate)?;
    Ok(hex_lower(&Sha256::digest(der.as_ref())))
}

/// Generates a new ES256 (ECDSA P-256) key pair for signing access tokens.
pub(crate) fn generate_jwt_keypair() -> Result<JwtKeyPair> {
    let key = generate_key()?;
    Ok(JwtKeyPair {
        private_pem: key.serialize_pem(),
        public_pem: key.public_key_pem(),
    })
}

/// The PKCS#8 PEM of an ES256 private key given as PKCS#8 (`BEGIN PRIVATE KEY`, returned as it
/// is) or SEC1 (`BEGIN EC PRIVATE KEY`, converted), the form `openssl ecparam -genkey -name
/// prime256v1` writes and Sensu's federation docs use for the shared JWT key. Other blocks in
/// the file (`EC PARAMETERS`, which `ecparam` writes without `-noout`) are skipped.
///
/// # Errors
///
/// [`PkiError::JwtPrivateKeyInvalid`] when the text holds no such key, or a SEC1 key that is
/// not on P-256.
pub(crate) fn jwt_private_key_pkcs8(private_pem: &str) -> Result<String> {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    use rustls::pki_types::PrivateKeyDer;

    match PrivateKeyDer::from_pem_slice(private_pem.as_bytes()) {
        Ok(PrivateKeyDer::Pkcs8(_)) => Ok(private_pem.to_owned()),
        Ok(PrivateKeyDer::Sec1(der)) => {
            let key = p256::SecretKey::from_sec1_der(der.secret_sec1_der())
                .map_err(|_| PkiError::JwtPrivateKeyInvalid(None))?;
            let pkcs8 = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|_| PkiError::JwtPrivateKeyInvalid(None))?;
            Ok(pkcs8.as_str().to_owned())
        }
        _ => Err(PkiError::JwtPrivateKeyInvalid(None)),
    }
}

/// Checks that `private_pem` and `public_pem` are an ES256 key pair: a P-256 private key in
/// PKCS#8 PEM and the SubjectPublicKeyInfo PEM of its public key.
///
/// # Errors
///
/// [`PkiError::JwtPrivateKeyInvalid`], [`PkiError::JwtPublicKeyInvalid`] or
/// [`PkiError::JwtKeyMismatch`], in that order of checking.
pub(crate) fn check_jwt_keypair(private_pem: &str, public_pem: &str) -> Result<()> {
    // ring checks that the key is on P-256 and that the public point embedded in the PKCS#8
    // document belongs to the private scalar.
    let private_key = KeyPair::from_pkcs8_pem_and_sign_algo(private_pem, &PKCS_ECDSA_P256_SHA256)
        .map_err(|err| PkiError::JwtPrivateKeyInvalid(Some(err)))?;
    let public_key = SubjectPublicKeyInfo::from_pem(public_pem)
        .map_err(|err| PkiError::JwtPublicKeyInvalid(Some(err)))?;
    if public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(PkiError::JwtPublicKeyInvalid(None));
    }
    if public_key.der_bytes() != private_key.public_key_raw() {
        return Err(PkiError::JwtKeyMismatch);
    }
    Ok(())
}

/// Parses `hostnames` into the SAN list of a server certificate; see [`issue_server_cert`].
fn server_sans(hostnames: &[String]) -> Result<Vec<SanType>> {
    let mut sans = Vec::new();
    let names = hostnames
        .iter()
        .map(|hostname| hostname.trim())
        .filter(|hostname| !hostname.is_empty())
        .chain(ALWAYS_SANS);
    for hostname in names {
        let invalid = || PkiError::InvalidHostname {
            hostname: hostname.to_owned(),
        };
        let san = match ServerName::try_from(hostname).map_err(|_| invalid())? {
            ServerName::IpAddress(ip) => SanType::IpAddress(IpAddr::from(ip)),
            ServerName::DnsName(dns) => SanType::DnsName(
                Ia5String::try_from(dns.as_ref().to_ascii_lowercase()).map_err(|_| invalid())?,
            ),
            _ => return Err(invalid()),
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// Parameters of a client certificate, with `uri` as its only subject alternative name when
/// given; shared by every client certificate so that they cannot drift apart.
fn client_params(
    common_name: &str,
    uri: Option<&str>,
    validity: Duration,
) -> Result<CertificateParams> {
    let mut params = base_params(common_name, validity)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if let Some(uri) = uri {
        let uri = Ia5String::try_from(uri).map_err(|source| signing_failed(common_name, source))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
    }
    Ok(params)
}

/// Parameters of the agent certificate of `namespace`/`name`; shared by [`sign_csr`] and
/// [`issue_agent_cert`].
fn agent_params(namespace: &str, name: &str, validity: Duration) -> Result<CertificateParams> {
    let uri = cairn_api::agent::agent_uri(namespace, name);
    client_params(name, Some(&uri), validity)
}

/// Parameters every certificate starts from: subject `CN=<common_name>`, a random serial, and
/// a validity from a little before now to `validity` after now.
fn base_params(common_name: &str, validity: Duration) -> Result<CertificateParams> {
    let now = OffsetDateTime::now_utc();
    let too_long = || PkiError::ValidityTooLong { validity };
    let not_after = time::Duration::try_from(validity)
        .ok()
        .and_then(|validity| now.checked_add(validity))
        .ok_or_else(too_long)?;
    let not_before = now
        .checked_sub(time::Duration::try_from(CLOCK_SKEW).expect("five minutes fits"))
        .expect("five minutes before now is a valid date");

    let mut distinguished_name = DistinguishedName::new();
    distinguished_name.push(DnType::CommonName, common_name);

    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// The CA as an rcgen issuer, after checking that its certificate and key belong together.
fn ca_issuer(ca: &CertifiedKeyPem) -> Result<Issuer<'static, KeyPair>> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(PkiError::InvalidCaKey)?;
    let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes())
        .map_err(|_| PkiError::InvalidCaCert(rcgen::Error::CouldNotParseCertificate))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|_| PkiError::InvalidCaCert(rcgen::Error::CouldNotParseCertificate))?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(PkiError::CaKeyMismatch);
    }
    Issuer::from_ca_cert_der(&der, key).map_err(PkiError::InvalidCaCert)
}

fn generate_key() -> Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::KeyGenerationFailed)
}

/// A positive random serial number. rcgen's default derives the serial from the public key,
/// which would repeat if an agent re-enrolled with the same key.
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; SERIAL_LEN];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::RandomFailed)?;
    // A clear top bit keeps the DER INTEGER positive without a padding byte; a set second bit
    // keeps it from shrinking to fewer bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn signing_failed(common_name: &str, source: rcgen::Error) -> PkiError {
    PkiError::SigningFailed {
        common_name: common_name.to_owned(),
        source,
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;

    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        write!(hex, "{byte:02x}").expect("writing to a String cannot fail");
    }
    hex
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::parse_x509_pem;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    /// Parses the PEM and hands the certificate to `check`.
    fn with_cert<T>(pem: &str, check: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
        let (_, pem) = parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        check(&cert)
    }

    fn common_name(pem: &str) -> String {
        with_cert(pem, |cert| {
            let names: Vec<_> = cert
                .subject()
                .iter_common_name()
                .map(|cn| cn.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(names.len(), 1, "exactly one CN");
            names[0].clone()
        })
    }

    fn sans(pem: &str) -> Vec<String> {
        with_cert(pem, |cert| {
            let Some(ext) = cert.subject_alternative_name().unwrap() else {
                return Vec::new();
            };
            ext.value
                .general_names
                .iter()
                .map(|name| match name {
                    GeneralName::DNSName(dns) => format!("dns:{dns}"),
                    GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => format!(
                            "ip:{}",
                            Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).unwrap())
                        ),
                        16 => format!(
                            "ip:{}",
                            Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).unwrap())
                        ),
                        n => panic!("ip address of {n} bytes"),
                    },
                    GeneralName::URI(uri) => format!("uri:{uri}"),
                    other => panic!("unexpected SAN {other:?}"),
                })
                .collect()
        })
    }

    /// (serverAuth, clientAuth)
    fn eku(pem: &str) -> (bool, bool) {
        with_cert(pem, |cert| {
            let ext = cert.extended_key_usage().unwrap().expect("has an EKU");
            (ext.value.server_auth, ext.value.client_auth)
        })
    }

    fn is_ca(pem: &str) -> bool {
        with_cert(pem, |cert| {
            cert.basic_constraints()
                .unwrap()
                .is_some_and(|constraints| constraints.value.ca)
        })
    }

    fn validity_days(pem: &str) -> i64 {
        with_cert(pem, |cert| {
            let validity = cert.validity();
            (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400
        })
    }

    fn issued_by(cert_pem: &str, ca_pem: &str) -> bool {
        let (_, ca) = parse_x509_pem(ca_pem.as_bytes()).unwrap();
        let ca = ca.parse_x509().unwrap();
        with_cert(cert_pem, |cert| {
            cert.verify_signature(Some(ca.public_key())).is_ok()
        })
    }

    #[test]
    fn ca_is_a_ten_year_ca() {
        let ca = generate_ca("test CA").unwrap();
        assert_eq!(common_name(&ca.cert_pem), "test CA");
        assert!(is_ca(&ca.cert_pem));
        assert!(issued_by(&ca.cert_pem, &ca.cert_pem), "self-signed");
        // 10 * 365 days plus the clock skew allowance.
        assert_eq!(validity_days(&ca.cert_pem), 3650);
        with_cert(&ca.cert_pem, |cert| {
            let usage = cert.key_usage().unwrap().expect("has key usage").value;
            assert!(usage.key_cert_sign() && usage.crl_sign());
        });
        assert!(ca.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn server_cert_has_given_and_local_sans() {
        let ca = generate_ca("test CA").unwrap();
        let hostnames = [
            "cairn.example.com".to_owned(),
            " 10.0.0.7 ".to_owned(),
            "".to_owned(),
            "fd00::1".to_owned(),
            "localhost".to_owned(),
        ];
        let server = issue_server_cert(&ca, "cairn-api", &hostnames).unwrap();
        assert_eq!(
            sans(&server.cert_pem),
            [
                "dns:cairn.example.com",
                "ip:10.0.0.7",
                "ip:fd00::1",
                "dns:localhost",
                "ip:127.0.0.1",
                "ip:::1"
            ]
        );
        assert_eq!(common_name(&server.cert_pem), "cairn-api");
        assert_eq!(eku(&server.cert_pem), (true, false));
        assert!(!is_ca(&server.cert_pem));
        assert!(issued_by(&server.cert_pem, &ca.cert_pem));
        assert_eq!(validity_days(&server.cert_pem), 365);
    }

    #[test]
    fn server_cert_refuses_a_bad_hostname() {
        let ca = generate_ca("test CA").unwrap();
        let err = issue_server_cert(&ca, "cairn-api", &["bad host".to_owned()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "hostname `bad host` is not a valid DNS name or IP address"
        );
    }

    #[test]
    fn client_cert_has_the_name_and_client_auth() {
        let ca = generate_ca("agent CA").unwrap();
        let client = issue_client_cert(&ca, "web-01", DAY).unwrap();
        assert_eq!(common_name(&client.cert_pem), "web-01");
        assert_eq!(eku(&client.cert_pem), (false, true));
        assert!(sans(&client.cert_pem).is_empty());
        assert!(issued_by(&client.cert_pem, &ca.cert_pem));
        assert_eq!(validity_days(&client.cert_pem), 1);
    }

    #[test]
    fn serials_differ_for_the_same_key() {
        let ca = generate_ca("agent CA").unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let serial = |pem: &str| with_cert(pem, |cert| cert.raw_serial().to_vec());
        let first = sign_csr(&ca, &csr, "default", "web-01", DAY).unwrap();
        let second = sign_csr(&ca, &csr, "default", "web-01", DAY).unwrap();
        assert_ne!(serial(&first), serial(&second));
    }

    #[test]
    fn sign_csr_forces_the_identity_and_client_auth() {
        let ca = generate_ca("agent CA").unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        // The CSR asks for another name, SANs (one of them another agent's URI), server auth
        // and CA powers.
        let mut params = CertificateParams::new(vec!["evil.example.com".to_owned()]).unwrap();
        params.subject_alt_names.push(SanType::URI(
            Ia5String::try_from("cairn:agent:prod/web-01").unwrap(),
        ));
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "admin");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "evil");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();

        let cert = sign_csr(&ca, &csr, "dev", "web-01", DAY).unwrap();
        assert_eq!(common_name(&cert), "web-01");
        with_cert(&cert, |cert| {
            assert_eq!(
                cert.subject().iter().count(),
                1,
                "only the CN in the subject"
            );
            assert_eq!(
                cert.public_key().raw,
                key.subject_public_key_info().as_slice()
            );
        });
        assert_eq!(eku(&cert), (false, true));
        assert_eq!(sans(&cert), ["uri:cairn:agent:dev/web-01"]);
        assert!(!is_ca(&cert));
        assert!(issued_by(&cert, &ca.cert_pem));

        let whole = issue_agent_cert(&ca, "dev", "web-01", DAY).unwrap();
        assert_eq!(common_name(&whole.cert_pem), "web-01");
        assert_eq!(sans(&whole.cert_pem), ["uri:cairn:agent:dev/web-01"]);
        assert_eq!(eku(&whole.cert_pem), (false, true));
    }

    #[test]
    fn sign_csr_refuses_garbage_and_forged_signatures() {
        let ca = generate_ca("agent CA").unwrap();
        let err = sign_csr(&ca, "not a csr", "default", "web-01", DAY).unwrap_err();
        assert!(matches!(err, PkiError::InvalidCsr(_)), "{err:?}");

        // The same CSR with one bit of its signature flipped.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let to_pem = |der: &[u8]| {
            format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
                base64_for_test(der)
            )
        };
        let mut der = csr.der().to_vec();
        sign_csr(&ca, &to_pem(&der), "default", "web-01", DAY).expect("the untouched CSR is fine");
        *der.last_mut().unwrap() ^= 0x01;
        let err = sign_csr(&ca, &to_pem(&der), "default", "web-01", DAY).unwrap_err();
        assert!(matches!(err, PkiError::InvalidCsr(_)), "{err:?}");
    }

    #[test]
    fn a_ca_with_a_foreign_key_is_refused() {
        let ca = generate_ca("one").unwrap();
        let other = generate_ca("two").unwrap();
        let mixed = CertifiedKeyPem {
            cert_pem: ca.cert_pem,
            key_pem: other.key_pem,
        };
        let err = issue_client_cert(&mixed, "web-01", DAY).unwrap_err();
        assert!(matches!(err, PkiError::CaKeyMismatch), "{err:?}");
    }

    #[test]
    fn validity_overflow_is_an_error() {
        let ca = generate_ca("agent CA").unwrap();
        let err = issue_client_cert(&ca, "web-01", Duration::MAX).unwrap_err();
        assert!(matches!(err, PkiError::ValidityTooLong { .. }), "{err:?}");
    }

    #[test]
    fn fingerprint_is_stable_lowercase_hex() {
        let ca = generate_ca("test CA").unwrap();
        let fingerprint = fingerprint_sha256(&ca.cert_pem).unwrap();
        assert_eq!(fingerprint.len(), 64);
        assert!(fingerprint
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(fingerprint_sha256(&ca.cert_pem).unwrap(), fingerprint);

        let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        assert_eq!(fingerprint, hex_lower(&Sha256::digest(der.as_ref())));
        let other = generate_ca("test CA").unwrap();
        assert_ne!(fingerprint_sha256(&other.cert_pem).unwrap(), fingerprint);

        let err = fingerprint_sha256("no pem here").unwrap_err();
        assert_eq!(err.to_string(), "no certificate in the pem text");
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex_lower(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
    }

    #[test]
    fn generated_jwt_keypair_checks_out() {
        let pair = generate_jwt_keypair().unwrap();
        assert!(pair.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(pair.public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        check_jwt_keypair(&pair.private_pem, &pair.public_pem).unwrap();
        assert!(!format!("{pair:?}").contains(&pair.private_pem));
    }

    #[test]
    fn sec1_jwt_keys_are_converted_to_pkcs8() {
        use p256::pkcs8::{DecodePrivateKey, LineEnding};
        let pair = generate_jwt_keypair().unwrap();
        // The same key as SEC1, after an `EC PARAMETERS` block, as `openssl ecparam -genkey`
        // writes it without `-noout`.
        let sec1 = p256::SecretKey::from_pkcs8_pem(&pair.private_pem)
            .unwrap()
            .to_sec1_pem(LineEnding::LF)
            .unwrap();
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let with_params = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            sec1.as_str()
        );
        for text in [sec1.as_str(), with_params.as_str()] {
            let pkcs8 = jwt_private_key_pkcs8(text).unwrap();
            assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"));
            check_jwt_keypair(&pkcs8, &pair.public_pem).unwrap();
        }
        // PKCS#8 is kept as it is; anything else is refused by name.
        assert_eq!(
            jwt_private_key_pkcs8(&pair.private_pem).unwrap(),
            pair.private_pem
        );
        for bad in [
            pair.public_pem.as_str(),
            "",
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        ] {
            assert!(jwt_private_key_pkcs8(bad)
                .unwrap_err()
                .to_string()
                .contains("or SEC1 (`-----BEGIN EC PRIVATE KEY-----`) PEM"));
        }
    }

    #[test]
    fn jwt_keypair_problems_are_named() {
        let pair = generate_jwt_keypair().unwrap();
        let other = generate_jwt_keypair().unwrap();
        let check = |private: &str, public: &str, expect: &str| {
            let err = check_jwt_keypair(private, public).unwrap_err();
            assert_eq!(err.to_string(), expect);
        };
        check(
            &pair.private_pem,
            &other.public_pem,
            "jwt public key does not match the private key",
        );
        check(
            "garbage",
            &pair.public_pem,
            "jwt private key is not an EC P-256 key in PKCS#8 (`-----BEGIN PRIVATE KEY-----`) or SEC1 (`-----BEGIN EC PRIVATE KEY-----`) PEM",
        );
        check(
            &pair.public_pem,
            &pair.public_pem,
            "jwt private key is not an EC P-256 key in PKCS#8 (`-----BEGIN PRIVATE KEY-----`) or SEC1 (`-----BEGIN EC PRIVATE KEY-----`) PEM",
        );
        check(
            &pair.private_pem,
            &pair.private_pem,
            "jwt public key is not an EC P-256 key in SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`)",
        );
        // A P-384 key is EC, but not what ES256 needs.
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        check(
            &p384.serialize_pem(),
            &p384.public_key_pem(),
            "jwt private key is not an EC P-256 key in PKCS#8 (`-----BEGIN PRIVATE KEY-----`) or SEC1 (`-----BEGIN EC PRIVATE KEY-----`) PEM",
        );
        check(
            &pair.private_pem,
            &p384.public_key_pem(),
            "jwt public key is not an EC P-256 key in SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`)",
        );
    }

    #[test]
    fn debug_output_hides_private_keys() {
        let ca = generate_ca("test CA").unwrap();
        let debug = format!("{ca:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains(&ca.key_pem));
    }

    /// Standard base64 with padding, enough to wrap DER in PEM for a test.
    fn base64_for_test(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
