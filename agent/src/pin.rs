//! The TLS server-certificate verifier of `install`: it trusts the cluster CA that the join
//! token pins by fingerprint, and nothing else.
//!
//! A certificate in the chain the backend presents must have `SHA-256(DER)` equal to the
//! token's fingerprint; that certificate becomes the only trust anchor, and the leaf must
//! verify against it the usual way (signature, validity, server-auth usage, host name). Nothing
//! fetched over an unverified connection is ever trusted.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

use crate::certs::fingerprint;

/// Why the pinned verification failed, kept for the error message `install` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinFailure {
    /// No certificate in the presented chain has the pinned fingerprint.
    NoPinnedCertificate {
        /// How many certificates the backend presented.
        presented: usize,
        /// The fingerprints of the presented certificates other than the leaf.
        others: Vec<String>,
    },
    /// A certificate with the fingerprint was presented but the leaf does not verify against
    /// it (or not for this host name, or not now).
    LeafRejected(String),
}

/// A [`ServerCertVerifier`] pinned to one CA fingerprint.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
    failure: Mutex<Option<PinFailure>>,
}

// === impl PinnedCaVerifier ===

impl PinnedCaVerifier {
    /// A verifier trusting only the CA whose DER has SHA-256 `fingerprint` (hex).
    pub fn new(fingerprint: &str, provider: Arc<CryptoProvider>) -> PinnedCaVerifier {
        PinnedCaVerifier {
            fingerprint: fingerprint.to_ascii_lowercase(),
            provider,
            failure: Mutex::new(None),
        }
    }

    /// Why the last verification failed, if it did.
    pub fn last_failure(&self) -> Option<PinFailure> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn fail(&self, failure: PinFailure, error: Error) -> Result<ServerCertVerified, Error> {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(failure);
        Err(error)
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // The leaf itself is never the anchor: a CA certificate is not a server certificate.
        let Some(anchor) = intermediates
            .iter()
            .find(|cert| fingerprint(cert.as_ref()) == self.fingerprint)
        else {
            return self.fail(
                PinFailure::NoPinnedCertificate {
                    presented: 1 + intermediates.len(),
                    others: intermediates
                        .iter()
                        .map(|cert| fingerprint(cert.as_ref()))
                        .collect(),
                },
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
            );
        };
        let mut roots = RootCertStore::empty();
        if let Err(err) = roots.add(anchor.clone().into_owned()) {
            return self.fail(PinFailure::LeafRejected(err.to_string()), err);
        }
        let verifier = match WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        {
            Ok(verifier) => verifier,
            Err(err) => {
                return self.fail(
                    PinFailure::LeafRejected(err.to_string()),
                    Error::General(err.to_string()),
                )
            }
        };
        let rest: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|cert| cert.as_ref() != anchor.as_ref())
            .cloned()
            .collect();
        match verifier.verify_server_cert(end_entity, &rest, server_name, ocsp_response, now) {
            Ok(verified) => {
                *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
                Ok(verified)
            }
            Err(err) => self.fail(PinFailure::LeafRejected(err.to_string()), err),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::generate_key;
    use crate::certs::tests::{days_around_now, test_ca, test_cert};

    fn verifier(fingerprint: &str) -> PinnedCaVerifier {
        PinnedCaVerifier::new(
            fingerprint,
            Arc::new(rustls::crypto::ring::default_provider()),
        )
    }

    fn verify(
        verifier: &PinnedCaVerifier,
        chain: &[&[u8]],
        name: &str,
    ) -> Result<ServerCertVerified, Error> {
        let certs: Vec<CertificateDer<'static>> = chain
            .iter()
            .map(|der| CertificateDer::from(der.to_vec()))
            .collect();
        verifier.verify_server_cert(
            &certs[0],
            &certs[1..],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
    }

    #[test]
    fn chain_with_the_pinned_ca_passes() {
        let ca = test_ca("cairn CA");
        let key = generate_key().unwrap();
        let (_, leaf) = test_cert(
            &ca,
            &key,
            "cairn-api",
            &["cairn.example.com", "127.0.0.1"],
            days_around_now(1, 30),
        );
        let pin = verifier(&fingerprint(&ca.der));
        verify(&pin, &[&leaf, &ca.der], "cairn.example.com").unwrap();
        verify(&pin, &[&leaf, &ca.der], "127.0.0.1").unwrap();
        assert_eq!(pin.last_failure(), None);
        // Upper-case fingerprints are the same fingerprint.
        let upper = verifier(&fingerprint(&ca.der).to_ascii_uppercase());
        verify(&upper, &[&leaf, &ca.der], "cairn.example.com").unwrap();
    }

    #[test]
    fn another_ca_with_the_same_subject_fails() {
        let pinned = test_ca("cairn CA");
        let impostor = test_ca("cairn CA");
        let key = generate_key().unwrap();
        let (_, leaf) = test_cert(
            &impostor,
            &key,
            "cairn-api",
            &["cairn.example.com"],
            days_around_now(1, 30),
        );
        let pin = verifier(&fingerprint(&pinned.der));

        // The impostor's own chain: no certificate has the pinned fingerprint.
        let err = verify(&pin, &[&leaf, &impostor.der], "cairn.example.com").unwrap_err();
        assert_eq!(
            err,
            Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
        assert_eq!(
            pin.last_failure(),
            Some(PinFailure::NoPinnedCertificate {
                presented: 2,
                others: vec![fingerprint(&impostor.der)]
            })
        );

        // The pinned CA presented alongside a leaf it did not sign.
        let err = verify(&pin, &[&leaf, &pinned.der], "cairn.example.com").unwrap_err();
        assert!(matches!(err, Error::InvalidCertificate(_)), "{err:?}");
        assert!(
            matches!(pin.last_failure(), Some(PinFailure::LeafRejected(_))),
            "{:?}",
            pin.last_failure()
        );
    }

    #[test]
    fn leaf_alone_or_wrong_name_or_ca_as_leaf_fails() {
        let ca = test_ca("cairn CA");
        let key = generate_key().unwrap();
        let (_, leaf) = test_cert(
            &ca,
            &key,
            "cairn-api",
            &["cairn.example.com"],
            days_around_now(1, 30),
        );
        let pin = verifier(&fingerprint(&ca.der));
        verify(&pin, &[&leaf], "cairn.example.com").unwrap_err();
        assert_eq!(
            pin.last_failure(),
            Some(PinFailure::NoPinnedCertificate {
                presented: 1,
                others: vec![]
            })
        );
        verify(&pin, &[&leaf, &ca.der], "other.example.com").unwrap_err();
        assert!(matches!(
            pin.last_failure(),
            Some(PinFailure::LeafRejected(_))
        ));
        verify(&pin, &[&ca.der], "cairn.example.com").unwrap_err();

        let (_, expired) = test_cert(
            &ca,
            &key,
            "cairn-api",
            &["cairn.example.com"],
            days_around_now(30, -1),
        );
        verify(&pin, &[&expired, &ca.der], "cairn.example.com").unwrap_err();
    }
}
