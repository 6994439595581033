//! Authentication: ES256 access tokens, single-use refresh tokens, API keys and passwords.
//!
//! Access tokens are JWTs signed with the cluster's (or the federation's shared) P-256 key;
//! verification pins ES256, checks the signature and `exp`, and requires an `iss` and an `aud`
//! naming this cluster: a token meant for another cluster, or naming none, is refused (so a
//! token one cluster sees cannot be replayed at another). The issuer need not be this cluster:
//! clusters initialised with the same key pair accept each other's tokens when they are meant
//! for them (the gateway mints them, see `federation`), and [`TokenIssuer::origin`] says
//! whether a token is this cluster's own (authorised by the live user record) or another
//! cluster's (authorised by its groups and by the bindings that cluster replicated here).
//! Refresh tokens are opaque random strings whose SHA-256 is kept in the store, deleted on use,
//! so each works once; they only ever refresh this cluster's own tokens.

pub(crate) mod cache;
pub(crate) mod passwords;
pub(crate) mod rbac;

use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// How long an access token lives (Sensu: 5 minutes).
pub(crate) const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);
/// The longest life of a token the gateway mints for a caller's request to another cluster of
/// the federation (issue 13): long enough for one call, too short to be worth stealing.
pub(crate) const FEDERATED_TOKEN_TTL: Duration = Duration::from_secs(60);
/// How long a refresh token lives (Sensu 6.10+: 12 hours).
pub(crate) const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Group every authenticated user implicitly has.
pub(crate) const GROUP_SYSTEM_USERS: &str = "system:users";

/// Why a credential was refused. Every variant is expected; none is helped by a retry with the
/// same credential.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key files could not be used.
    #[error("jwt key: {0}")]
    KeyInvalid(String),
    /// The token's signature, algorithm or shape is wrong, or it names no issuer.
    #[error("invalid token")]
    TokenInvalid(#[source] jsonwebtoken::errors::Error),
    /// The token expired.
    #[error("token expired")]
    TokenExpired,
    /// The token is signed by the shared key but meant for another cluster (its `aud`): it was
    /// minted for a request there, or the gateway registered that cluster under another name
    /// than its `--cluster-name`.
    #[error("the token is meant for cluster {audience}, not {cluster}")]
    AudienceMismatch {
        /// The token's audience.
        audience: String,
        /// This cluster's name.
        cluster: String,
    },
    /// The token names no audience (`aud`): tokens of this version always do, so it was made
    /// elsewhere; refused rather than accepted by every cluster sharing the key.
    #[error("the token names no audience (aud)")]
    AudienceMissing,
    /// A token for another cluster was asked for this cluster's own name: a `Cluster`
    /// registered under this cluster's name would receive tokens valid here, so none is
    /// minted. Expected for such a registration; a retry does not help.
    #[error("{cluster} is this cluster's own name: no token for another cluster is minted for it")]
    AudienceIsSelf {
        /// This cluster's name.
        cluster: String,
    },
    /// Signing failed (an internal fault).
    #[error("failed to sign token")]
    SignFailed(#[source] jsonwebtoken::errors::Error),
    /// Hashing a password failed (an internal fault).
    #[error("failed to hash password")]
    HashFailed,
}

/// The claims of a Cairn access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// The username.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// The issuing cluster (its name). Another cluster of the federation may have issued it.
    pub iss: String,
    /// The cluster the token is meant for (its name): the issuer itself for tokens of login
    /// and refresh, the target cluster for the tokens the gateway mints for its view, proxy
    /// and replicators. Every cluster refuses a token meant for another one, or for none.
    #[serde(default)]
    pub aud: String,
    /// Random id.
    pub jti: String,
    /// The user's groups at issue time. This cluster's own tokens are authorised by the live
    /// user record instead; another cluster's tokens by these groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What a token minted for another cluster of the federation says (see
/// [`TokenIssuer::issue_for`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grant<'a> {
    /// The username (`sub`).
    pub subject: &'a str,
    /// The user's groups.
    pub groups: &'a [String],
    /// The cluster the user belongs to (`iss`): `None` for this cluster's own users. A caller
    /// that came with another cluster's token keeps that cluster, so the target never takes it
    /// for a user of this one.
    pub origin: Option<&'a str>,
    /// The cluster the token is for (`aud`).
    pub audience: &'a str,
    /// How long it lives.
    pub ttl: Duration,
}

/// A freshly issued access token.
#[derive(Debug, Clone)]
pub(crate) struct AccessToken {
    /// The JWT.
    pub token: String,
    /// Its expiry, unix seconds.
    pub expires_at: u64,
}

/// Who issued a verified token, relative to this cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenOrigin {
    /// This cluster issued it: the caller is a local user, looked up live.
    Local,
    /// Another cluster of the federation issued it with the shared key: the caller is
    /// authorised by the token's groups against this cluster's bindings.
    Federated {
        /// The issuing cluster's name (the token's `iss`).
        issuer: String,
    },
}

/// Signs and verifies access tokens.
pub(crate) struct TokenIssuer {
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    verified: VerifiedTokens,
}

/// Tokens whose signature was checked, by SHA-256 of the token, with their claims: an ES256
/// verification costs ~0.25 ms of CPU and a client sends the same token with every request.
/// A hit is still refused once the token expired; access tokens are not revocable otherwise
/// (logout consumes the refresh token), so a cached verification is as good as a new one.
#[derive(Default)]
struct VerifiedTokens {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], Claims>>,
}

/// How many verified tokens are remembered; the map is cleared when full.
const VERIFIED_TOKENS: usize = 10_000;

impl VerifiedTokens {
    fn key(token: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    /// The claims of `token` if it was verified before and has not expired at `now`.
    fn get(&self, token: &str, now: u64) -> Option<Claims> {
        let key = Self::key(token);
        let mut entries = self.lock();
        match entries.get(&key) {
            Some(claims) if claims.exp > now => Some(claims.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, token: &str, claims: &Claims) {
        let mut entries = self.lock();
        if entries.len() >= VERIFIED_TOKENS {
            entries.clear();
        }
        entries.insert(Self::key(token), claims.clone());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 32], Claims>> {
        // Every statement leaves the map consistent, so a panic elsewhere cannot corrupt it.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
    pub(crate) fn from_pem(
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
        // Pinned: only ES256, whatever the token's header says. The issuer is not pinned: a
        // token of another cluster sharing our key is valid (see `origin`).
        let mut validation = Validation::new(Algorithm::ES256);
        validation.algorithms = vec![Algorithm::ES256];
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 0;
        // The audience is checked in `decode`, with errors that say which cluster it names.
        validation.validate_aud = false;
        Ok(TokenIssuer {
            encoding,
            decoding,
            validation,
            issuer: issuer.to_owned(),
            verified: VerifiedTokens::default(),
        })
    }

    /// The issuer name written into every token this cluster issues: the cluster's name.
    pub(crate) fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether verified `claims` come from a token this cluster issued or another cluster of
    /// the federation did.
    pub(crate) fn origin(&self, claims: &Claims) -> TokenOrigin {
        if claims.iss == self.issuer {
            TokenOrigin::Local
        } else {
            TokenOrigin::Federated {
                issuer: claims.iss.clone(),
            }
        }
    }

    /// Issues an access token of this cluster for its own user `username`, meant for this
    /// cluster, living [`ACCESS_TOKEN_TTL`] (the unit tests' tokens; login and refresh use
    /// [`TokenIssuer::issue_lasting`]).
    ///
    /// # Errors
    /// [`AuthError::KeyInvalid`] when this issuer has no private key.
    #[cfg(test)]
    pub(crate) fn issue(
        &self,
        username: &str,
        groups: &[String],
    ) -> Result<AccessToken, AuthError> {
        self.issue_lasting(username, groups, ACCESS_TOKEN_TTL)
    }

    /// [`TokenIssuer::issue`] with a lifetime of `ttl` instead of [`ACCESS_TOKEN_TTL`]: the web
    /// UI's tokens, which end no later than the session they belong to.
    ///
    /// # Errors
    /// [`AuthError::KeyInvalid`] when this issuer has no private key.
    pub(crate) fn issue_lasting(
        &self,
        username: &str,
        groups: &[String],
        ttl: Duration,
    ) -> Result<AccessToken, AuthError> {
        self.sign(&Grant {
            subject: username,
            groups,
            origin: None,
            audience: &self.issuer,
            ttl,
        })
    }

    /// Issues a token as `grant` says: the federation's short-lived tokens for another cluster
    /// (the replication identity's, and a caller's of the federated view and proxy).
    ///
    /// # Errors
    /// [`AuthError::AudienceIsSelf`] when the audience is this cluster itself (whoever
    /// receives such a token could use it here); [`AuthError::KeyInvalid`] when this issuer
    /// has no private key.
    pub(crate) fn issue_for(&self, grant: &Grant<'_>) -> Result<AccessToken, AuthError> {
        if grant.audience == self.issuer {
            return Err(AuthError::AudienceIsSelf {
                cluster: self.issuer.clone(),
            });
        }
        self.sign(grant)
    }

    fn sign(&self, grant: &Grant<'_>) -> Result<AccessToken, AuthError> {
        let encoding = self
            .encoding
            .as_ref()
            .ok_or_else(|| AuthError::KeyInvalid("no private key to sign with".into()))?;
        let now = crate::clock::unix_now_u64();
        let expires_at = now + grant.ttl.as_secs().max(1);
        let claims = Claims {
            sub: grant.subject.to_owned(),
            exp: expires_at,
            iat: now,
            iss: grant.origin.unwrap_or(&self.issuer).to_owned(),
            aud: grant.audience.to_owned(),
            jti: random_token(16),
            groups: grant.groups.to_vec(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, encoding)
            .map_err(AuthError::SignFailed)?;
        Ok(AccessToken { token, expires_at })
    }

    /// Verifies a token: ES256 signature by our (possibly shared) key, expiry, a non-empty
    /// subject and issuer, and this cluster as its audience. Any issuer is accepted;
    /// [`TokenIssuer::origin`] tells them apart.
    ///
    /// # Errors
    /// [`AuthError::TokenExpired`], [`AuthError::AudienceMismatch`],
    /// [`AuthError::AudienceMissing`] or [`AuthError::TokenInvalid`].
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if let Some(claims) = self.verified.get(token, crate::clock::unix_now_u64()) {
            return Ok(claims);
        }
        let claims = self.decode(token, &self.validation)?;
        self.verified.insert(token, &claims);
        Ok(claims)
    }

    /// Verifies a token's signature but accepts it expired: `/auth/token` takes the expired
    /// access token with the refresh token (and refreshes only its own, see
    /// [`TokenIssuer::origin`]).
    ///
    /// # Errors
    /// [`AuthError::TokenInvalid`], or an audience error as [`TokenIssuer::verify`].
    pub(crate) fn verify_ignoring_expiry(&self, token: &str) -> Result<Claims, AuthError> {
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["iss", "sub"]);
        self.decode(token, &validation)
    }

    fn decode(&self, token: &str, validation: &Validation) -> Result<Claims, AuthError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                _ => AuthError::TokenInvalid(err),
            })?;
        // Present is not enough: an empty issuer or subject names nobody.
        if claims.iss.is_empty() {
            return Err(AuthError::TokenInvalid(
                jsonwebtoken::errors::ErrorKind::InvalidIssuer.into(),
            ));
        }
        if claims.sub.is_empty() {
            return Err(AuthError::TokenInvalid(
                jsonwebtoken::errors::ErrorKind::InvalidSubject.into(),
            ));
        }
        if claims.aud.is_empty() {
            return Err(AuthError::AudienceMissing);
        }
        if claims.aud != self.issuer {
            return Err(AuthError::AudienceMismatch {
                audience: claims.aud,
                cluster: self.issuer.clone(),
            });
        }
        Ok(claims)
    }
}

/// The most expensive bcrypt hash accepted (`$2b$14$…`, about a second of one core per check):
/// Sensu writes cost 10 (`sensuctl user hash-password`), and a higher cost set by whoever may
/// write users would make every login with it a denial of service.
pub(crate) const MAX_BCRYPT_COST: u32 = 14;
/// The most memory (KiB), passes and lanes an argon2 hash given by a client may ask for; ours
/// are `m=19456,t=2,p=1`.
pub(crate) const MAX_ARGON2_PARAMS: (u32, u32, u32) = (65_536, 10, 4);
/// The PHC prefix of the hashes [`hash_password`] makes (argon2id with the crate's defaults);
/// a stored hash without it is replaced at the next successful login ([`needs_rehash`]).
const CURRENT_HASH_PREFIX: &str = "$argon2id$v=19$m=19456,t=2,p=1$";

/// The schemes of stored password hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HashScheme {
    /// A PHC argon2 string (`$argon2id$…`): what Cairn makes.
    Argon2,
    /// A bcrypt hash (`$2a$`, `$2b$`, `$2x$`, `$2y$`): what Sensu makes; verified, never made.
    Bcrypt,
}

/// Hashes a password with Argon2id and a random salt, as a PHC string.
///
/// # Errors
/// [`AuthError::HashFailed`] (an internal fault).
pub(crate) fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).map_err(|_| AuthError::HashFailed)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|_| AuthError::HashFailed)
}

/// Which scheme `hash` is, when it is a well-formed hash within the cost bounds
/// ([`MAX_BCRYPT_COST`], [`MAX_ARGON2_PARAMS`]); otherwise a message saying what is wrong, for
/// the client that sent it.
///
/// # Errors
/// A lower-case message naming the problem (never echoing the hash).
pub(crate) fn check_password_hash(hash: &str) -> Result<HashScheme, String> {
    if hash.starts_with("$argon2") {
        let parsed = PasswordHash::new(hash)
            .map_err(|err| format!("not a valid argon2 PHC string: {err}"))?;
        if parsed.algorithm.as_str() != "argon2id" && parsed.algorithm.as_str() != "argon2i" {
            return Err(format!(
                "argon2 variant {} is not accepted; use argon2id",
                parsed.algorithm
            ));
        }
        let param = |name: &str| {
            parsed
                .params
                .get_decimal(name)
                .ok_or_else(|| format!("the argon2 parameter {name} is missing"))
        };
        let (max_memory, max_passes, max_lanes) = MAX_ARGON2_PARAMS;
        let (memory, passes, lanes) = (param("m")?, param("t")?, param("p")?);
        if memory > max_memory || passes > max_passes || lanes > max_lanes {
            return Err(format!(
                "argon2 parameters m={memory},t={passes},p={lanes} exceed the limit \
                 m={max_memory},t={max_passes},p={max_lanes}"
            ));
        }
        if parsed.hash.is_none() {
            return Err("the argon2 string has no hash".to_owned());
        }
        return Ok(HashScheme::Argon2);
    }
    if ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|prefix| hash.starts_with(prefix))
    {
        // The crate's parse error quotes the hash; this message does not.
        let parts: bcrypt::HashParts = hash.parse().map_err(|_| {
            "not a valid bcrypt hash: expected $2b$COST$ and 53 characters of salt and hash"
                .to_owned()
        })?;
        if parts.get_cost() > MAX_BCRYPT_COST {
            return Err(format!(
                "bcrypt cost {} exceeds the limit {MAX_BCRYPT_COST}",
                parts.get_cost()
            ));
        }
        return Ok(HashScheme::Bcrypt);
    }
    Err(
        "not a password hash: expected bcrypt ($2b$…, as `sensuctl user hash-password` makes) \
         or argon2 ($argon2id$…)"
            .to_owned(),
    )
}

/// Whether `password` matches `hash` (argon2 or bcrypt, see [`check_password_hash`]). A
/// malformed hash, or one beyond the cost bounds, never matches.
pub(crate) fn verify_password(password: &str, hash: &str) -> bool {
    match check_password_hash(hash) {
        Ok(HashScheme::Argon2) => PasswordHash::new(hash).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        }),
        Ok(HashScheme::Bcrypt) => bcrypt::verify(password, hash).unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether a stored hash should be replaced by a fresh [`hash_password`] once its password is
/// known (a successful login): a bcrypt hash from Sensu, or argon2 with other parameters.
pub(crate) fn needs_rehash(hash: &str) -> bool {
    !hash.starts_with(CURRENT_HASH_PREFIX)
}

/// A random URL-safe token of `n_bytes` bytes of entropy, hex encoded.
pub(crate) fn random_token(n_bytes: usize) -> String {
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
pub(crate) fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// SHA-256 of a refresh token, hex: what the store keeps instead of the token.
pub(crate) fn token_digest(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
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
    fn verified_tokens_are_remembered_until_they_expire() {
        let cache = VerifiedTokens::default();
        let claims = |exp| Claims {
            sub: "admin".into(),
            exp,
            iat: 0,
            iss: "c".into(),
            aud: "c".into(),
            jti: "x".into(),
            groups: Vec::new(),
        };
        cache.insert("token-a", &claims(100));
        assert_eq!(cache.get("token-a", 99), Some(claims(100)));
        assert_eq!(cache.get("token-b", 99), None, "another token");
        assert_eq!(cache.get("token-a", 100), None, "expired");
        assert_eq!(
            cache.get("token-a", 50),
            None,
            "an expired entry is dropped"
        );
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
        assert_eq!(
            claims.aud, "cairn-test",
            "its own tokens are meant for itself"
        );
    }

    /// A grant of the gateway's replication identity for `audience`.
    fn replicator_grant<'a>(groups: &'a [String], audience: &'a str) -> Grant<'a> {
        Grant {
            subject: "cairn:replicator",
            groups,
            origin: None,
            audience,
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn tokens_of_another_cluster_sharing_the_key_are_accepted_as_federated() {
        let (private, public) = keypair();
        let gateway = TokenIssuer::from_pem(Some(&private), &public, "gateway").unwrap();
        // A downstream holds the same pair (it could verify only: no private key needed).
        let alpha = TokenIssuer::from_pem(None, &public, "alpha").unwrap();
        let groups = ["cluster-admins".to_owned()];
        let token = gateway
            .issue_for(&replicator_grant(&groups, "alpha"))
            .unwrap();
        let claims = alpha.verify(&token.token).unwrap();
        assert_eq!(claims.sub, "cairn:replicator");
        assert_eq!(claims.groups, ["cluster-admins"]);
        assert_eq!(claims.aud, "alpha");
        assert_eq!(
            alpha.origin(&claims),
            TokenOrigin::Federated {
                issuer: "gateway".into()
            }
        );
        assert_eq!(gateway.origin(&claims), TokenOrigin::Local);
        // Expired federated tokens are refused like any other.
        let expired = sign_es256(&private, &claims_json("gateway", "alpha", -10));
        assert!(matches!(
            alpha.verify(&expired),
            Err(AuthError::TokenExpired)
        ));
    }

    #[test]
    fn tokens_meant_for_another_cluster_or_none_are_refused() {
        let (private, public) = keypair();
        let gateway = TokenIssuer::from_pem(Some(&private), &public, "gateway").unwrap();
        let alpha = TokenIssuer::from_pem(Some(&private), &public, "alpha").unwrap();
        let beta = TokenIssuer::from_pem(None, &public, "beta").unwrap();
        let groups = ["cluster-admins".to_owned()];
        let for_alpha = gateway
            .issue_for(&replicator_grant(&groups, "alpha"))
            .unwrap()
            .token;
        assert!(alpha.verify(&for_alpha).is_ok());
        for (cluster, name) in [(&gateway, "gateway"), (&beta, "beta")] {
            let err = cluster.verify(&for_alpha).unwrap_err();
            assert!(
                matches!(&err, AuthError::AudienceMismatch { audience, cluster }
                    if audience == "alpha" && cluster == name),
                "{name}: {err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!("the token is meant for cluster alpha, not {name}")
            );
            assert!(
                cluster.verify_ignoring_expiry(&for_alpha).is_err(),
                "{name}"
            );
        }
        // A login token of the gateway is meant for the gateway only.
        let login = gateway.issue("admin", &groups).unwrap().token;
        assert!(gateway.verify(&login).is_ok());
        assert!(matches!(
            alpha.verify(&login),
            Err(AuthError::AudienceMismatch { .. })
        ));
        // Without `aud` (or with an empty one): refused everywhere, the issuer included.
        let mut claims = claims_json("gateway", "gateway", 60);
        claims.as_object_mut().unwrap().remove("aud");
        let no_audience = sign_es256(&private, &claims);
        claims["aud"] = serde_json::json!("");
        let empty_audience = sign_es256(&private, &claims);
        for token in [&no_audience, &empty_audience] {
            for cluster in [&gateway, &alpha] {
                assert!(matches!(
                    cluster.verify(token),
                    Err(AuthError::AudienceMissing)
                ));
                assert!(cluster.verify_ignoring_expiry(token).is_err());
            }
        }
        // A caller of another cluster keeps it as the issuer of a token minted for it.
        let viewers = ["viewers".to_owned()];
        let minted = gateway
            .issue_for(&Grant {
                subject: "viewer",
                groups: &viewers,
                origin: Some("hub"),
                audience: "alpha",
                ttl: FEDERATED_TOKEN_TTL,
            })
            .unwrap();
        let claims = alpha.verify(&minted.token).unwrap();
        assert_eq!(claims.iss, "hub");
        assert!(claims.exp - claims.iat <= FEDERATED_TOKEN_TTL.as_secs());
        // Never a token for another cluster that is valid here.
        let err = gateway
            .issue_for(&replicator_grant(&groups, "gateway"))
            .unwrap_err();
        assert!(matches!(err, AuthError::AudienceIsSelf { .. }), "{err:?}");
    }

    #[test]
    fn refuses_foreign_keys_none_hs256_and_tampering() {
        let (private, public) = keypair();
        let (other_private, other_public) = keypair();
        let issuer = TokenIssuer::from_pem(Some(&private), &public, "a").unwrap();
        let check = |token: &str, what: &str| {
            assert!(
                matches!(issuer.verify(token), Err(AuthError::TokenInvalid(_))),
                "{what} was accepted"
            );
            assert!(
                issuer.verify_ignoring_expiry(token).is_err(),
                "{what} was accepted for refresh"
            );
        };

        // Another key, whether it claims to be us or another cluster.
        for name in ["a", "b"] {
            let foreign = TokenIssuer::from_pem(Some(&other_private), &other_public, name).unwrap();
            let token = foreign.issue("admin", &["cluster-admins".into()]).unwrap();
            check(&token.token, &format!("a foreign-key token of {name}"));
        }

        // alg: none
        let claims = claims_json("b", "a", 60);
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes())
        );
        check(&none, "alg none");

        // HS256 signed with the public key as the secret (the classic confusion attack).
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap();
        check(&hs, "HS256 with the public key");

        // Claims changed after signing: groups raised to cluster-admins.
        let good = sign_es256(&private, &claims);
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut raised = claims.clone();
        raised["groups"] = serde_json::json!(["cluster-admins"]);
        parts[1] = b64(raised.to_string().as_bytes());
        check(&parts.join("."), "tampered claims");
        assert!(
            issuer.verify(&good).is_ok(),
            "the untampered token verifies"
        );

        // Signed by our key but naming no issuer or subject.
        let mut anonymous = claims.clone();
        anonymous["iss"] = serde_json::json!("");
        check(&sign_es256(&private, &anonymous), "an empty issuer");
        anonymous["iss"] = serde_json::json!("b");
        anonymous["sub"] = serde_json::json!("");
        check(&sign_es256(&private, &anonymous), "an empty subject");
        let mut no_issuer = claims.clone();
        no_issuer.as_object_mut().unwrap().remove("iss");
        check(&sign_es256(&private, &no_issuer), "a missing issuer");
    }

    #[test]
    fn expired_tokens_are_refused_but_refreshable() {
        let (private, public) = keypair();
        let issuer = TokenIssuer::from_pem(Some(&private), &public, "a").unwrap();
        let claims = Claims {
            sub: "admin".into(),
            exp: crate::clock::unix_now_u64() - 10,
            iat: crate::clock::unix_now_u64() - 100,
            iss: "a".into(),
            aud: "a".into(),
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
        assert!(!needs_rehash(&hash));
        assert_eq!(check_password_hash(&hash), Ok(HashScheme::Argon2));
    }

    #[test]
    fn sensu_bcrypt_hashes_are_verified_and_marked_for_rehash() {
        // What `sensuctl user hash-password 'P@ssw0rd!'` prints (Go's bcrypt, cost 10).
        let sensu = bcrypt::hash_with_result("P@ssw0rd!", 10)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoA);
        assert_eq!(check_password_hash(&sensu), Ok(HashScheme::Bcrypt));
        assert!(verify_password("P@ssw0rd!", &sensu));
        assert!(!verify_password("P@ssw0rd?", &sensu));
        assert!(needs_rehash(&sensu));
        // A cost that would make each login take minutes is refused, and never verified.
        let costly = sensu.replacen("$10$", "$20$", 1);
        assert!(check_password_hash(&costly)
            .unwrap_err()
            .contains("cost 20"));
        assert!(!verify_password("P@ssw0rd!", &costly));
        // So is argon2 asking for 4 GiB per check.
        let heavy = "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        assert!(check_password_hash(heavy).unwrap_err().contains("exceed"));
        assert!(!verify_password("anything", heavy));
        assert!(check_password_hash("plain text").is_err());
        assert!(check_password_hash("$2b$10$short").is_err());
    }

    /// Claims of a token from cluster `iss` meant for `aud` for a viewer, expiring
    /// `expires_in` seconds from now.
    fn claims_json(iss: &str, aud: &str, expires_in: i64) -> serde_json::Value {
        let now = i64::try_from(crate::clock::unix_now_u64()).unwrap();
        serde_json::json!({
            "sub": "viewer",
            "exp": now + expires_in,
            "iat": now,
            "iss": iss,
            "aud": aud,
            "jti": "x",
            "groups": ["viewers"],
        })
    }

    fn sign_es256(private_pem: &str, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            claims,
            &EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
