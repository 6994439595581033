//! Authentication: ES256 access tokens, single-use refresh tokens, API keys and passwords.
//!
//! Access tokens are JWTs signed with the cluster's (or the federation's shared) P-256 key;
//! verification pins ES256 and checks `exp` and `iss`. Refresh tokens are opaque random
//! strings whose SHA-256 is kept in the store, deleted on use, so each works once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// How long an access token lives (Sensu: 5 minutes).
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);
/// How long a refresh token lives (Sensu 6.10+: 12 hours).
pub const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Group every authenticated user implicitly has.
pub const GROUP_SYSTEM_USERS: &str = "system:users";

/// Why a credential was refused. Every variant is expected; none is helped by a retry with the
/// same credential.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key files could not be used.
    #[error("jwt key: {0}")]
    KeyInvalid(String),
    /// The token's signature, algorithm, issuer or shape is wrong.
    #[error("invalid token")]
    TokenInvalid(#[source] jsonwebtoken::errors::Error),
    /// The token expired.
    #[error("token expired")]
    TokenExpired,
    /// Signing failed (an internal fault).
    #[error("failed to sign token")]
    SignFailed(#[source] jsonwebtoken::errors::Error),
    /// Hashing a password failed (an internal fault).
    #[error("failed to hash password")]
    HashFailed,
}

/// The claims of a Cairn access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The username.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// The issuing cluster.
    pub iss: String,
    /// Random id.
    pub jti: String,
    /// The user's groups at issue time (authorization reads the live user record).
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A freshly issued access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The JWT.
    pub token: String,
    /// Its expiry, unix seconds.
    pub expires_at: u64,
}

/// Signs and verifies access tokens.
pub struct TokenIssuer {
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

// === impl TokenIssuer ===

impl TokenIssuer {
    /// A signer and verifier from PEM keys. Without a private key it only verifies.
    ///
    /// # Errors
    /// [`AuthError::KeyInvalid`] when a key is not an EC P-256 key in PEM.
    pub fn from_pem(
        private_pem: Option<&str>,
        public_pem: &str,
        issuer: &str,
    ) -> Result<TokenIssuer, AuthError> {
        let encoding = private_pem
            .map(|pem| EncodingKey::from_ec_pem(pem.as_bytes()))
            .transpose()
            .map_err(|_| AuthError::KeyInvalid("private key is not an EC key in PEM".into()))?;
        let decoding = DecodingKey::from_ec_pem(public_pem.as_bytes())
            .map_err(|_| AuthError::KeyInvalid("public key is not an EC key in PEM".into()))?;
        // Pinned: only ES256, whatever the token's header says.
        let mut validation = Validation::new(Algorithm::ES256);
        validation.algorithms = vec![Algorithm::ES256];
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 0;
        Ok(TokenIssuer {
            encoding,
            decoding,
            validation,
            issuer: issuer.to_owned(),
        })
    }

    /// The issuer name written into and required of every token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Issues an access token for `username`.
    ///
    /// # Errors
    /// [`AuthError::KeyInvalid`] when this issuer has no private key.
    pub fn issue(&self, username: &str, groups: &[String]) -> Result<AccessToken, AuthError> {
        self.issue_for(username, groups, ACCESS_TOKEN_TTL)
    }

    /// Issues an access token for `username` that lives `ttl` (federation: short-lived tokens
    /// for the replication identity).
    ///
    /// # Errors
    /// [`AuthError::KeyInvalid`] when this issuer has no private key.
    pub fn issue_for(
        &self,
        username: &str,
        groups: &[String],
        ttl: std::time::Duration,
    ) -> Result<AccessToken, AuthError> {
        let encoding = self
            .encoding
            .as_ref()
            .ok_or_else(|| AuthError::KeyInvalid("no private key to sign with".into()))?;
        let now = unix_now();
        let expires_at = now + ttl.as_secs().max(1);
        let claims = Claims {
            sub: username.to_owned(),
            exp: expires_at,
            iat: now,
            iss: self.issuer.clone(),
            jti: random_token(16),
            groups: groups.to_vec(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, encoding)
            .map_err(AuthError::SignFailed)?;
        Ok(AccessToken { token, expires_at })
    }

    /// Verifies a token: ES256 signature by our key, issuer, and expiry.
    ///
    /// # Errors
    /// [`AuthError::TokenExpired`] or [`AuthError::TokenInvalid`].
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.decode(token, &self.validation)
    }

    /// Verifies a token's signature and issuer but accepts it expired: `/auth/token` takes the
    /// expired access token with the refresh token.
    ///
    /// # Errors
    /// [`AuthError::TokenInvalid`].
    pub fn verify_ignoring_expiry(&self, token: &str) -> Result<Claims, AuthError> {
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["iss", "sub"]);
        self.decode(token, &validation)
    }

    fn decode(&self, token: &str, validation: &Validation) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                _ => AuthError::TokenInvalid(err),
            })
    }
}

/// Hashes a password with Argon2id and a random salt, as a PHC string.
///
/// # Errors
/// [`AuthError::HashFailed`] (an internal fault).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).map_err(|_| AuthError::HashFailed)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|_| AuthError::HashFailed)
}

/// Whether `password` matches a PHC `hash`. A malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A random URL-safe token of `n_bytes` bytes of entropy, hex encoded.
pub fn random_token(n_bytes: usize) -> String {
    let mut out = String::with_capacity(n_bytes * 2);
    for _ in 0..n_bytes.div_ceil(16) {
        for byte in random_bytes::<16>() {
            out.push_str(&format!("{byte:02x}"));
        }
    }
    out.truncate(n_bytes * 2);
    out
}

/// A new random (v4) UUID string, for API keys.
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// SHA-256 of a refresh token, hex: what the store keeps instead of the token.
pub fn token_digest(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        (key.serialize_pem(), key.public_key_pem())
    }

    #[test]
    fn issues_and_verifies() {
        let (private, public) = keypair();
        let issuer = TokenIssuer::from_pem(Some(&private), &public, "cairn-test").unwrap();
        let token = issuer.issue("admin", &["cluster-admins".into()]).unwrap();
        let claims = issuer.verify(&token.token).unwrap();
        assert_eq!(claims.sub, "admin");
        assert_eq!(claims.groups, ["cluster-admins"]);
        assert_eq!(claims.exp, token.expires_at);
    }

    #[test]
    fn refuses_foreign_key_wrong_issuer_none_and_hs256() {
        let (private, public) = keypair();
        let (other_private, other_public) = keypair();
        let issuer = TokenIssuer::from_pem(Some(&private), &public, "a").unwrap();
        let foreign = TokenIssuer::from_pem(Some(&other_private), &other_public, "a").unwrap();
        let token = foreign.issue("admin", &[]).unwrap();
        assert!(matches!(
            issuer.verify(&token.token),
            Err(AuthError::TokenInvalid(_))
        ));

        let other_issuer = TokenIssuer::from_pem(Some(&private), &public, "b").unwrap();
        let token = other_issuer.issue("admin", &[]).unwrap();
        assert!(matches!(
            issuer.verify(&token.token),
            Err(AuthError::TokenInvalid(_))
        ));

        // alg: none
        let claims = serde_json::json!({"sub": "admin", "exp": unix_now() + 60, "iss": "a"});
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes())
        );
        assert!(issuer.verify(&none).is_err());

        // HS256 signed with the public key as the secret (the classic confusion attack).
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap();
        assert!(issuer.verify(&hs).is_err());
    }

    #[test]
    fn expired_tokens_are_refused_but_refreshable() {
        let (private, public) = keypair();
        let issuer = TokenIssuer::from_pem(Some(&private), &public, "a").unwrap();
        let claims = Claims {
            sub: "admin".into(),
            exp: unix_now() - 10,
            iat: unix_now() - 100,
            iss: "a".into(),
            jti: "x".into(),
            groups: vec![],
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            issuer.verify(&token),
            Err(AuthError::TokenExpired)
        ));
        assert_eq!(issuer.verify_ignoring_expiry(&token).unwrap().sub, "admin");
    }

    #[test]
    fn passwords() {
        let hash = hash_password("P@ssw0rd!").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("P@ssw0rd!", &hash));
        assert!(!verify_password("wrong", &hash));
        assert!(!verify_password("P@ssw0rd!", "not a hash"));
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
