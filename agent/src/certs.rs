//! The agent's key and certificates: the P-256 key made on the host, CSRs for it, what a
//! certificate says (CN, validity, public key), and when to renew.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

/// Why key or certificate material is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen failed to make or read a key or CSR.
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
    /// The text holds no PEM certificate.
    #[error("no certificate in the pem")]
    NoCertificate,
    /// The certificate does not parse as X.509.
    #[error("the certificate does not parse: {0}")]
    Malformed(String),
    /// The certificate is for another key.
    #[error("the certificate is not for this agent's key")]
    WrongKey,
    /// The certificate names another entity.
    #[error("the certificate is for {found:?}, not {expected:?}")]
    WrongName {
        /// The name asked for.
        expected: String,
        /// The certificate's CN.
        found: String,
    },
    /// The certificate has already expired.
    #[error("the certificate expired")]
    Expired,
}

/// A new ECDSA P-256 key.
///
/// # Errors
///
/// When the system's random source fails.
pub fn generate_key() -> Result<KeyPair, CertError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// A PKCS#10 CSR (PEM) for `key` with subject `CN=<name>`.
///
/// # Errors
///
/// When rcgen cannot sign the request.
pub fn csr_pem(key: &KeyPair, name: &str) -> Result<String, CertError> {
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    params.distinguished_name = subject;
    Ok(params.serialize_request(key)?.pem()?)
}

/// What the agent needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name (empty when there is none).
    pub common_name: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// The DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
}

// === impl CertInfo ===

impl CertInfo {
    /// Reads the first certificate of a PEM text.
    ///
    /// # Errors
    ///
    /// [`CertError::NoCertificate`] or [`CertError::Malformed`].
    pub fn from_pem(pem: &str) -> Result<CertInfo, CertError> {
        let der =
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| CertError::NoCertificate)?;
        CertInfo::from_der(der.as_ref())
    }

    /// Reads a DER certificate.
    ///
    /// # Errors
    ///
    /// [`CertError::Malformed`].
    pub fn from_der(der: &[u8]) -> Result<CertInfo, CertError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|err| CertError::Malformed(err.to_string()))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(CertInfo {
            common_name,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            public_key: cert.public_key().raw.to_vec(),
            fingerprint: fingerprint(der),
        })
    }

    /// Whether less than a third of the validity is left at `now` (unix seconds).
    pub fn needs_renewal(&self, now: i64) -> bool {
        let total = self.not_after.saturating_sub(self.not_before).max(0);
        let left = self.not_after.saturating_sub(now);
        left.saturating_mul(3) < total
    }
}

/// SHA-256 of DER bytes, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Checks that `cert_pem` is a current certificate for `key` and `name`, and returns what it
/// says. Used on a certificate from the backend before it replaces the one on disk.
///
/// # Errors
///
/// [`CertError`] saying what does not match.
pub fn check_issued(
    cert_pem: &str,
    key: &KeyPair,
    name: &str,
    now: i64,
) -> Result<CertInfo, CertError> {
    let info = CertInfo::from_pem(cert_pem)?;
    if info.public_key != key.subject_public_key_info() {
        return Err(CertError::WrongKey);
    }
    if info.common_name != name {
        return Err(CertError::WrongName {
            expected: name.to_owned(),
            found: info.common_name,
        });
    }
    if info.not_after <= now {
        return Err(CertError::Expired);
    }
    Ok(info)
}

/// The current time, unix seconds.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
pub(crate) mod tests {
    use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose};

    use super::*;

    /// A CA for tests: its key and certificate.
    pub(crate) struct TestCa {
        pub(crate) key: KeyPair,
        pub(crate) params: CertificateParams,
        pub(crate) cert_pem: String,
        pub(crate) der: Vec<u8>,
    }

    pub(crate) fn test_ca(common_name: &str) -> TestCa {
        let key = generate_key().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            der: cert.der().to_vec(),
            key,
            params,
        }
    }

    /// A certificate signed by `ca` for `key`: a server certificate for `names`, or a client
    /// certificate with `CN=<cn>` when `names` is empty. Returns the PEM and the DER.
    pub(crate) fn test_cert(
        ca: &TestCa,
        key: &impl PublicKeyData,
        cn: &str,
        names: &[&str],
        validity: (time::OffsetDateTime, time::OffsetDateTime),
    ) -> (String, Vec<u8>) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = validity.0;
        params.not_after = validity.1;
        params.extended_key_usages = if names.is_empty() {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        };
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        let cert = params.signed_by(key, &issuer).unwrap();
        (cert.pem(), cert.der().to_vec())
    }

    pub(crate) fn days_around_now(
        before: i64,
        after: i64,
    ) -> (time::OffsetDateTime, time::OffsetDateTime) {
        let now = time::OffsetDateTime::now_utc();
        (
            now - time::Duration::days(before),
            now + time::Duration::days(after),
        )
    }

    #[test]
    fn csr_is_for_the_key_and_name() {
        let key = generate_key().unwrap();
        let pem = csr_pem(&key, "web-01").unwrap();
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        assert_eq!(
            csr.public_key.subject_public_key_info(),
            key.subject_public_key_info()
        );
        assert!(!pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn renewal_after_two_thirds() {
        let info = CertInfo {
            common_name: "web-01".into(),
            not_before: 0,
            not_after: 300,
            public_key: Vec::new(),
            fingerprint: String::new(),
        };
        assert!(!info.needs_renewal(0));
        assert!(!info.needs_renewal(200));
        assert!(info.needs_renewal(201));
        assert!(info.needs_renewal(400));
    }

    #[test]
    fn issued_certificate_checks() {
        let ca = test_ca("test agent CA");
        let key = generate_key().unwrap();
        let other_key = generate_key().unwrap();
        let now = now_unix();
        let (pem, _) = test_cert(&ca, &key, "web-01", &[], days_around_now(1, 30));
        let info = check_issued(&pem, &key, "web-01", now).unwrap();
        assert_eq!(info.common_name, "web-01");
        assert!(!info.needs_renewal(now));
        assert!(matches!(
            check_issued(&pem, &other_key, "web-01", now),
            Err(CertError::WrongKey)
        ));
        assert!(matches!(
            check_issued(&pem, &key, "web-02", now),
            Err(CertError::WrongName { .. })
        ));
        let (old, _) = test_cert(&ca, &key, "web-01", &[], days_around_now(30, 5));
        assert!(CertInfo::from_pem(&old).unwrap().needs_renewal(now));
        let (expired, _) = test_cert(&ca, &key, "web-01", &[], days_around_now(30, -1));
        assert!(matches!(
            check_issued(&expired, &key, "web-01", now),
            Err(CertError::Expired)
        ));
        assert!(matches!(
            CertInfo::from_pem("junk"),
            Err(CertError::NoCertificate)
        ));
    }
}
