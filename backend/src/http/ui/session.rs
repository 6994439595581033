//! The web UI's sessions: a login makes an access token and a single-use refresh token, as
//! `/auth` does, and keeps both in one cookie, [`COOKIE`] (`HttpOnly`, `Secure`,
//! `SameSite=Strict`, `__Host-` so no other host or path can set it), with the session's CSRF
//! token and its end.
//!
//! The cookie is not trusted for anything the server does not check again: the access token is
//! verified on every request (so a disabled user is out at once), the refresh token must still
//! be in the store (so logging out, which takes it out, ends the session everywhere, also for a
//! copy of the cookie whose access token has not expired), and the session's end is the one the
//! refresh token's record holds, never the cookie's. An access token near its end is renewed
//! with the refresh token, which is then spent; requests that carried the old cookie meanwhile
//! get the new pair for [`ROTATION_GRACE`] from a bounded map ([`ROTATIONS`] entries).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, Uri};
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::auth::rbac::Caller;
use crate::auth::{self, ACCESS_TOKEN_TTL};
use crate::http::{
    authenticate_bearer, consume_refresh_record, issue_token_pair, ApiError, AppState,
};

/// The session cookie's name, before the cluster's name: `__Host-cairn-session-<cluster>`,
/// so that the UIs of two clusters on one host (cookies ignore ports) keep their own sessions.
pub(crate) const COOKIE: &str = "__Host-cairn-session";
/// How long the browser keeps the cookie beyond the session's end, so that the next page says
/// the session expired instead of showing the login page as if nothing happened.
const COOKIE_GRACE: u64 = 60 * 60;
/// A session's longest life by default (`--ui-session-ttl`): the API's refresh token's.
pub(crate) const DEFAULT_SESSION_TTL: Duration = auth::REFRESH_TOKEN_TTL;
/// How long a spent refresh token still opens the session it was exchanged for: requests sent
/// with the old cookie while the new one was on its way.
const ROTATION_GRACE: Duration = Duration::from_secs(30);
/// The most rotations remembered for [`ROTATION_GRACE`]; the oldest go first.
const ROTATIONS: usize = 10_000;
/// The longest cookie value this writes; browsers keep at least 4,096 bytes per cookie.
const COOKIE_LIMIT: usize = 3_800;
/// An access token with less than this left is renewed before it is used.
const RENEW_BEFORE: u64 = 30;
/// How long a request waits to renew its session before it is answered 503.
const RENEW_WAIT: Duration = Duration::from_secs(5);

/// What the cookie holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CookieData {
    /// The access token.
    a: String,
    /// When it expires, Unix seconds.
    x: u64,
    /// The refresh token.
    r: String,
    /// The CSRF token of the session's forms.
    c: String,
    /// When the session ends, Unix seconds: only to tell "expired" from "logged out" when the
    /// refresh token is gone; the record's end is the one enforced.
    #[serde(default)]
    e: u64,
}

/// A logged-in user's request.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// Who is asking.
    pub(crate) caller: Caller,
    /// `Bearer <access token>`, for the API calls made for this request.
    pub(crate) authorization: String,
    /// The token every form of the session carries.
    pub(crate) csrf: String,
    /// A renewed cookie to send back, when the request renewed the session.
    pub(crate) set_cookie: Option<HeaderValue>,
}

/// Why a request has no session.
#[derive(Debug)]
pub(crate) enum NoSession {
    /// No cookie, or one that opens nothing (logged out, forged).
    Missing,
    /// The session reached its end.
    Expired,
    /// The session could not be checked (the store is down): 503.
    Unavailable(ApiError),
}

/// The sessions of this backend: the settings and the rotations in their grace period.
#[derive(Debug)]
pub(crate) struct Sessions {
    ttl: Duration,
    /// The cookie's name (see [`COOKIE`]).
    cookie: String,
    rotations: tokio::sync::Mutex<Rotations>,
}

/// Spent refresh tokens (by digest) and the cookie they were exchanged for.
#[derive(Debug, Default)]
struct Rotations {
    by_digest: HashMap<String, (Instant, CookieData, u64)>,
    order: VecDeque<String>,
}

impl Rotations {
    /// The cookie a spent refresh token was exchanged for, and the session's end.
    fn get(&self, digest: &str) -> Option<(&CookieData, u64)> {
        self.by_digest
            .get(digest)
            .filter(|(at, _, _)| at.elapsed() < ROTATION_GRACE)
            .map(|(_, data, ends_at)| (data, *ends_at))
    }

    fn insert(&mut self, digest: String, data: CookieData, ends_at: u64) {
        while self.order.len() >= ROTATIONS
            || self.order.front().is_some_and(|oldest| {
                self.by_digest
                    .get(oldest)
                    .is_none_or(|(at, _, _)| at.elapsed() >= ROTATION_GRACE)
            })
        {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.by_digest.remove(&oldest);
        }
        self.order.push_back(digest.clone());
        self.by_digest
            .insert(digest, (Instant::now(), data, ends_at));
    }
}

impl Sessions {
    /// Sessions of the cluster `cluster` that last at most `ttl` from their login.
    pub(crate) fn new(ttl: Duration, cluster: &str) -> Sessions {
        Sessions {
            ttl,
            cookie: format!("{COOKIE}-{cluster}"),
            rotations: tokio::sync::Mutex::new(Rotations::default()),
        }
    }

    /// Starts a session for `caller`, who just proved their password: the `Set-Cookie` value.
    ///
    /// # Errors
    /// A store failure; a cookie over [`COOKIE_LIMIT`] (a user in very many groups).
    pub(crate) async fn start(
        &self,
        state: &AppState,
        caller: &Caller,
    ) -> Result<HeaderValue, ApiError> {
        let ends_at = crate::clock::unix_now_u64() + self.ttl.as_secs();
        let pair = issue_token_pair(state, caller, ACCESS_TOKEN_TTL, ends_at).await?;
        let data = CookieData {
            a: pair.access_token,
            x: pair.expires_at,
            r: pair.refresh_token,
            c: auth::random_token(32),
            e: ends_at,
        };
        set_cookie(&self.cookie, &data, ends_at)
    }

    /// The session of a request, renewed when its access token is near its end.
    ///
    /// # Errors
    /// [`NoSession`] says why there is none.
    pub(crate) async fn open(
        &self,
        state: &AppState,
        headers: &HeaderMap,
    ) -> Result<Session, NoSession> {
        let data = read_cookie(&self.cookie, headers).ok_or(NoSession::Missing)?;
        let claimed_end = data.e;
        match self.open_cookie(state, data).await {
            // Gone at the end the cookie names: expired rather than logged out.
            Err(NoSession::Missing)
                if claimed_end > 0 && claimed_end <= crate::clock::unix_now_u64() =>
            {
                Err(NoSession::Expired)
            }
            other => other,
        }
    }

    async fn open_cookie(
        &self,
        state: &AppState,
        mut data: CookieData,
    ) -> Result<Session, NoSession> {
        let mut set = None;
        let now = crate::clock::unix_now_u64();
        let store = state.resources.store();
        let digest = auth::token_digest(&data.r);
        let key = crate::http::refresh_key(&data.r);
        let record = store
            .get(&key)
            .await
            .map_err(|err| NoSession::Unavailable(err.into()))?;
        let ends_at = match record {
            Some(entry) => {
                let ends_at = refresh_ends_at(&entry.value).ok_or(NoSession::Missing)?;
                if ends_at <= now {
                    return Err(NoSession::Expired);
                }
                Some(ends_at)
            }
            None => None,
        };
        // Renewed near its end, unless the session ends with it anyway; a spent refresh token
        // (another request renewed the session) finds the pair it was exchanged for.
        let renew = match ends_at {
            None => true,
            Some(ends_at) => data.x <= now + RENEW_BEFORE && data.x < ends_at,
        };
        if renew {
            let renewed = tokio::time::timeout(RENEW_WAIT, self.renew(state, &digest, &data))
                .await
                .map_err(|_| {
                    NoSession::Unavailable(ApiError::busy(
                        "the session could not be renewed in time",
                    ))
                })??;
            if let Some((new, ends_at)) = renewed {
                set =
                    Some(set_cookie(&self.cookie, &new, ends_at).map_err(NoSession::Unavailable)?);
                data = new;
            } else if data.x <= now {
                return Err(NoSession::Expired);
            }
        }
        let caller = authenticate_bearer(state, &data.a).map_err(|err| {
            if err.message == "token expired" {
                NoSession::Expired
            } else {
                NoSession::Missing
            }
        })?;
        Ok(Session {
            caller,
            authorization: format!("Bearer {}", data.a),
            csrf: data.c,
            set_cookie: set,
        })
    }

    /// Exchanges the cookie's refresh token for a new pair, once per token: a second request
    /// with the same cookie gets the first one's pair. `None` when the session has just reached
    /// its end (the access token may still serve until its own).
    async fn renew(
        &self,
        state: &AppState,
        digest: &str,
        data: &CookieData,
    ) -> Result<Option<(CookieData, u64)>, NoSession> {
        let mut rotations = self.rotations.lock().await;
        if let Some((new, ends_at)) = rotations.get(digest) {
            return Ok(Some((new.clone(), ends_at)));
        }
        let record = match consume_refresh_record(state, &data.r).await {
            Ok(record) => record,
            Err(err) if err.status.is_server_error() => return Err(NoSession::Unavailable(err)),
            Err(err) if err.message == "refresh token expired" => return Err(NoSession::Expired),
            Err(_) => return Err(NoSession::Missing),
        };
        let caller = state
            .auth
            .snapshot()
            .caller(&record.username)
            .ok_or(NoSession::Missing)?;
        if record.expires_at <= crate::clock::unix_now_u64() + 1 {
            return Ok(None);
        }
        let pair = issue_token_pair(state, &caller, ACCESS_TOKEN_TTL, record.expires_at)
            .await
            .map_err(NoSession::Unavailable)?;
        let new = CookieData {
            a: pair.access_token,
            x: pair.expires_at,
            r: pair.refresh_token,
            c: data.c.clone(),
            e: record.expires_at,
        };
        rotations.insert(digest.to_owned(), new.clone(), record.expires_at);
        Ok(Some((new, record.expires_at)))
    }

    /// Ends the request's session (its refresh token taken out of the store) and returns the
    /// `Set-Cookie` value that clears the cookie. A cookie that opens nothing is cleared too.
    pub(crate) async fn end(&self, state: &AppState, headers: &HeaderMap) -> HeaderValue {
        if let Some(data) = read_cookie(&self.cookie, headers) {
            let digest = auth::token_digest(&data.r);
            let newer = self
                .rotations
                .lock()
                .await
                .get(&digest)
                .map(|(new, _)| new.clone());
            for token in std::iter::once(data.r).chain(newer.map(|new| new.r)) {
                if let Err(err) = consume_refresh_record(state, &token).await {
                    tracing::debug!(error = %err.message, "logout found no live refresh token");
                }
            }
        }
        self.clear_cookie()
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub(crate) fn clear_cookie(&self) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "{}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
            self.cookie
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("__Host-cairn-session=; Max-Age=0"))
    }
}

/// The session's end from a refresh token record.
fn refresh_ends_at(value: &[u8]) -> Option<u64> {
    let record: serde_json::Value = serde_json::from_slice(value).ok()?;
    record["expires_at"].as_u64()
}

fn read_cookie(name: &str, headers: &HeaderMap) -> Option<CookieData> {
    let prefix = format!("{name}=");
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .map(str::trim)
        .find_map(|pair| pair.strip_prefix(prefix.as_str()))?;
    if value.is_empty() || value.len() > COOKIE_LIMIT {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn set_cookie(name: &str, data: &CookieData, ends_at: u64) -> Result<HeaderValue, ApiError> {
    let json = serde_json::to_vec(data).map_err(ApiError::internal)?;
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    if value.len() > COOKIE_LIMIT {
        return Err(ApiError::invalid(format!(
            "the session does not fit in a cookie ({} bytes, at most {COOKIE_LIMIT}): the user is in too many groups",
            value.len()
        )));
    }
    let max_age = ends_at.saturating_sub(crate::clock::unix_now_u64()) + COOKIE_GRACE;
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .map_err(ApiError::internal)
}

/// Whether a form post comes from the UI's own pages: `Sec-Fetch-Site` (when the browser sends
/// it) is `same-origin`, and `Origin` (when sent) is this very origin. A page of another port
/// of the same host is same-site, so `SameSite` alone lets its posts carry the cookie: this and
/// the CSRF token refuse them.
pub(crate) fn same_origin(headers: &HeaderMap, uri: &Uri) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        if site.as_bytes() != b"same-origin" {
            return false;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| uri.authority().map(|authority| authority.as_str()));
    match (origin.to_str().ok(), host) {
        (Some(origin), Some(host)) => origin.strip_prefix("https://") == Some(host),
        _ => false,
    }
}

/// Compares two tokens in time that does not depend on where they differ.
pub(crate) fn tokens_match(left: &str, right: &str) -> bool {
    left.len() == right.len()
        && left
            .bytes()
            .zip(right.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn only_the_own_origin_may_post() {
        let uri: Uri = "/ui/silences".parse().unwrap();
        let host = ("host", "127.0.0.1:8080");
        assert!(same_origin(&headers(&[host]), &uri));
        assert!(same_origin(
            &headers(&[
                host,
                ("origin", "https://127.0.0.1:8080"),
                ("sec-fetch-site", "same-origin")
            ]),
            &uri
        ));
        // Another port of the same host is the same site, not the same origin.
        assert!(!same_origin(
            &headers(&[host, ("origin", "http://127.0.0.1:9000")]),
            &uri
        ));
        assert!(!same_origin(
            &headers(&[host, ("sec-fetch-site", "same-site")]),
            &uri
        ));
        assert!(!same_origin(&headers(&[host, ("origin", "null")]), &uri));
        assert!(!same_origin(
            &headers(&[host, ("origin", "http://127.0.0.1:8080")]),
            &uri
        ));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("abc", "ab"));
        assert!(!tokens_match("", "a"));
    }

    #[test]
    fn a_cookie_round_trips_and_junk_is_no_session() {
        let data = CookieData {
            a: "access".into(),
            x: 5,
            r: "refresh".into(),
            c: "csrf".into(),
            e: 9,
        };
        let name = "__Host-cairn-session-gw";
        let set = set_cookie(name, &data, crate::clock::unix_now_u64() + 60).unwrap();
        let value = set.to_str().unwrap().split(';').next().unwrap().to_owned();
        let read =
            read_cookie(name, &headers(&[("cookie", &format!("other=1; {value}"))])).unwrap();
        assert_eq!(
            (read.a.as_str(), read.r.as_str(), read.c.as_str()),
            ("access", "refresh", "csrf")
        );
        // Another cluster's cookie on the same host is not this one's.
        let other = value.replacen("-gw=", "-alpha=", 1);
        assert!(read_cookie(name, &headers(&[("cookie", &other)])).is_none());
        assert!(
            read_cookie(name, &headers(&[("cookie", "__Host-cairn-session-gw=!!!")])).is_none()
        );
        assert!(read_cookie(name, &headers(&[("cookie", "__Host-cairn-session-gw=")])).is_none());
        assert!(read_cookie(name, &headers(&[])).is_none());
    }

    #[test]
    fn rotations_are_bounded() {
        let mut rotations = Rotations::default();
        let data = CookieData {
            a: String::new(),
            x: 0,
            r: String::new(),
            c: String::new(),
            e: 0,
        };
        for n in 0..ROTATIONS + 10 {
            rotations.insert(n.to_string(), data.clone(), 0);
        }
        assert_eq!(rotations.order.len(), ROTATIONS);
        assert_eq!(rotations.by_digest.len(), ROTATIONS);
        assert!(rotations.get("0").is_none());
        assert!(rotations.get(&(ROTATIONS + 9).to_string()).is_some());
    }
}
