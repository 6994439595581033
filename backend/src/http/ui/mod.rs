//! The web UI: the gateway's single pane of glass over every cluster, under `/ui/`.
//!
//! Pages are server-rendered from askama templates (`backend/templates/`, compile-time
//! checked, auto-escaped), with htmx (vendored, served from `/ui/assets/`) only for the events
//! list's refresh: every control is a real link or form first, so the pages work without
//! JavaScript. Nothing here reads the store or decides access itself: the pages are built from
//! the REST API's own code, run in process as the session's user ([`api`]), or from the
//! federated view's ([`crate::http::federation::federated_rows`]), so RBAC decides as it does
//! for the API, and another cluster is reached only through the gateway's proxy with a token
//! minted for it. What the user may not do is not offered (judged by this cluster's RBAC, whose
//! bindings the federation replicates), and the server refuses it anyway.
//!
//! Every response carries a Content-Security-Policy without inline script or style, and
//! `frame-ancestors 'none'`; every form post must carry the session's CSRF token and come from
//! this origin ([`session::same_origin`]).

mod api;
mod events;
#[cfg(test)]
mod flows;
mod pages;
mod session;

use std::time::Duration;

use askama::Template;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::Deserialize;

use self::session::{NoSession, Session};
pub(crate) use self::session::{Sessions, DEFAULT_SESSION_TTL};
use crate::auth::rbac::{self, Caller, Verb};
use crate::http::{AppState, ClientAddr};

/// The UI's routes (under `/ui/`, and `/` that redirects there).
pub(crate) fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/{name}", get(asset))
        .merge(events::routes())
        .merge(pages::routes())
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .layer(middleware::from_fn_with_state(state, security_headers))
}

/// The static files, embedded in the binary: no CDN, nothing fetched.
const ASSETS: [(&str, &str, &[u8]); 2] = [
    (
        "htmx-2.0.11.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/htmx-2.0.11.min.js"),
    ),
    (
        "cairn.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/cairn.css"),
    ),
];

/// The policy of every UI response: scripts and styles only from this origin (no inline
/// script, no `eval`), no framing, forms posted only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/ui/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// Any other `/ui/` path: a page saying so (for a user with a session), never the API's JSON.
async fn not_found(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    match open_page(&state, &headers, &uri, "", "Not found", &Common::default()).await {
        Ok(page) => page.error(StatusCode::NOT_FOUND, &format!("no page {}", uri.path())),
        Err(response) => response,
    }
}

// === what every page shows ===

/// A message at the top of a page.
#[derive(Debug, Clone)]
pub(crate) struct Flash {
    /// `ok` or `error`.
    pub(crate) class: &'static str,
    pub(crate) text: String,
}

impl Flash {
    pub(crate) fn ok(text: impl Into<String>) -> Flash {
        Flash {
            class: "ok",
            text: text.into(),
        }
    }

    pub(crate) fn error(text: impl Into<String>) -> Flash {
        Flash {
            class: "error",
            text: text.into(),
        }
    }

    /// The message a redirect after an action names by its code (`?done=…`): only these, so
    /// a link cannot put words of its own on the page.
    fn done(code: &str) -> Option<Flash> {
        let text = match code {
            "resolved" => "event resolved",
            "deleted" => "event deleted",
            "silenced" => "silence created",
            "unsilenced" => "silence deleted",
            "rerun" => "check requested: its next result replaces this one",
            "entity-deleted" => "entity deleted",
            "logged-out" => "logged out",
            _ => return None,
        };
        Some(Flash::ok(text))
    }
}

/// The header, the cluster switcher and the flash: what the base template needs.
#[derive(Debug, Clone)]
pub(crate) struct Chrome {
    pub(crate) title: String,
    /// Which navigation entry is this page's.
    pub(crate) section: &'static str,
    pub(crate) user: String,
    pub(crate) csrf: String,
    /// Every cluster the switcher offers: this one first, then the registered ones.
    pub(crate) clusters: Vec<String>,
    /// The cluster the page shows, `""` for all of them.
    pub(crate) cluster: String,
    /// The page's path, where the switcher goes.
    pub(crate) path: String,
    pub(crate) flash: Option<Flash>,
}

/// The query every page takes: `?cluster=NAME` and `?done=CODE`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Common {
    #[serde(default)]
    pub(crate) cluster: String,
    #[serde(default)]
    pub(crate) done: String,
}

/// A request with a session: the session, and the page's chrome.
pub(crate) struct Page<'a> {
    pub(crate) state: &'a AppState,
    pub(crate) session: Session,
    pub(crate) chrome: Chrome,
}

impl Page<'_> {
    /// The API as this user.
    pub(crate) fn api(&self) -> api::Api<'_> {
        api::Api::new(self.state, &self.session)
    }

    /// Whether this cluster's RBAC lets the user do `verb` on `resource` (in `namespace`):
    /// what a page offers. The API decides again when it is done.
    pub(crate) fn may(&self, verb: Verb, resource: &str, namespace: Option<&str>) -> bool {
        may(self.state, &self.session.caller, verb, resource, namespace)
    }

    /// This page when it shows `cluster` (this cluster or a registered one), else the 404 page
    /// that says it is not registered.
    // The error is the whole answer, returned at once, as `open_page`'s.
    #[allow(clippy::result_large_err)]
    pub(crate) fn of_cluster(self, cluster: &str) -> Result<Self, Response> {
        if self.chrome.cluster == cluster {
            Ok(self)
        } else {
            Err(self.error(
                StatusCode::NOT_FOUND,
                &format!("cluster {cluster} is not registered"),
            ))
        }
    }

    /// The clusters a page of `cluster` (or all, for `""`) shows.
    pub(crate) fn shown_clusters(&self) -> Vec<String> {
        if self.chrome.cluster.is_empty() {
            self.chrome.clusters.clone()
        } else {
            vec![self.chrome.cluster.clone()]
        }
    }

    /// Renders `template` as the answer, with the renewed cookie if any.
    pub(crate) fn render(&self, status: StatusCode, template: &impl Template) -> Response {
        render(status, template, self.session.set_cookie.clone())
    }

    /// The error page for a failed call or a refusal.
    pub(crate) fn error(mut self, status: StatusCode, message: &str) -> Response {
        self.chrome.flash = Some(Flash::error(message));
        self.chrome.title = format!("{} · Cairn", status.canonical_reason().unwrap_or("Error"));
        let page = ErrorPage {
            chrome: self.chrome.clone(),
            status: status.as_u16(),
        };
        self.render(status, &page)
    }
}

pub(crate) fn may(
    state: &AppState,
    caller: &Caller,
    verb: Verb,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    state.auth.snapshot().authorize(
        caller,
        rbac::Request {
            verb,
            resource,
            namespace,
            name: None,
        },
    )
}

/// Opens the request's session and builds the page's chrome, or answers with the redirect to
/// the login page (303, or `HX-Redirect` for an htmx request) or a 503.
pub(crate) async fn open_page<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
    uri: &Uri,
    section: &'static str,
    title: &str,
    common: &Common,
) -> Result<Page<'a>, Response> {
    let session = match state.ui_sessions.open(state, headers).await {
        Ok(session) => session,
        Err(NoSession::Unavailable(err)) => {
            return Err((
                err.status,
                format!("the session could not be checked: {}", err.message),
            )
                .into_response())
        }
        Err(no) => {
            let location = match no {
                NoSession::Expired => "/ui/login?expired=1".to_owned(),
                _ => format!("/ui/login?next={}", encode_segment(&local_target(uri))),
            };
            let mut response = if headers.contains_key("hx-request") {
                let mut response = StatusCode::OK.into_response();
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert("hx-redirect", value);
                }
                response
            } else {
                Redirect::to(&location).into_response()
            };
            response
                .headers_mut()
                .insert(header::SET_COOKIE, state.ui_sessions.clear_cookie());
            return Err(response);
        }
    };
    let clusters = cluster_names(state).await;
    let cluster = if clusters.contains(&common.cluster) {
        common.cluster.clone()
    } else {
        String::new()
    };
    let chrome = Chrome {
        title: format!("{title} · Cairn"),
        section,
        user: session.caller.username.clone(),
        csrf: session.csrf.clone(),
        clusters,
        cluster,
        path: uri.path().to_owned(),
        flash: Flash::done(&common.done),
    };
    Ok(Page {
        state,
        session,
        chrome,
    })
}

/// This cluster's name and every registered cluster's, by name.
async fn cluster_names(state: &AppState) -> Vec<String> {
    let mut names = vec![state.issuer.issuer().to_owned()];
    match state
        .resources
        .list(cairn_api::Kind::Cluster, None, None, 0)
        .await
    {
        Ok((items, _)) => {
            let mut registered: Vec<String> = items
                .into_iter()
                .map(|(_, stored)| stored.resource.metadata.name)
                .filter(|name| *name != names[0])
                .collect();
            registered.sort();
            names.extend(registered);
        }
        Err(err) => tracing::warn!(error = %err, "the web UI could not list the clusters"),
    }
    names
}

/// A form post's checks: the session's CSRF token and this origin. The refusal is a 403 page.
pub(crate) fn check_form(page: &Page<'_>, headers: &HeaderMap, uri: &Uri, csrf: &str) -> bool {
    session::same_origin(headers, uri) && session::tokens_match(csrf, &page.session.csrf)
}

/// What a refused form post shows.
pub(crate) const REFUSED_FORM: &str =
    "the form was refused (cross-site request or stale form); reload the page and try again";

/// Renders `template` with `status`, and a `Set-Cookie` when given.
pub(crate) fn render(
    status: StatusCode,
    template: &impl Template,
    set_cookie: Option<HeaderValue>,
) -> Response {
    match template.render() {
        Ok(html) => {
            let mut response = (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                html,
            )
                .into_response();
            if let Some(cookie) = set_cookie {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Err(err) => {
            tracing::error!(error = %err, "a web UI page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}

/// A 303 to `location` (a local path), with the renewed cookie if any.
pub(crate) fn see_other(location: &str, set_cookie: Option<HeaderValue>) -> Response {
    let mut response = Redirect::to(location).into_response();
    if let Some(cookie) = set_cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: Chrome,
    status: u16,
}

// === login and logout ===

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    title: String,
    cluster: String,
    next: String,
    username: String,
    flash: Option<Flash>,
}

#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    #[serde(default)]
    next: String,
    #[serde(default)]
    expired: String,
    #[serde(default)]
    done: String,
}

async fn login_page(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = query.map(|q| q.0).unwrap_or_default();
    let flash = if !query.expired.is_empty() {
        Some(Flash::error("your session has expired: log in again"))
    } else {
        Flash::done(&query.done)
    };
    let page = LoginPage {
        title: "Log in · Cairn".to_owned(),
        cluster: state.issuer.issuer().to_owned(),
        next: safe_next(&query.next),
        username: String::new(),
        flash,
    };
    render(StatusCode::OK, &page, None)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    next: String,
}

async fn login(
    State(state): State<AppState>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let cluster = state.issuer.issuer().to_owned();
    let again = |status: StatusCode, username: String, next: String, message: &str| {
        let page = LoginPage {
            title: "Log in · Cairn".to_owned(),
            cluster: cluster.clone(),
            next,
            username,
            flash: Some(Flash::error(message)),
        };
        render(status, &page, None)
    };
    let Ok(Form(form)) = form else {
        return again(
            StatusCode::BAD_REQUEST,
            String::new(),
            String::new(),
            "the login form needs a username and a password",
        );
    };
    let next = safe_next(&form.next);
    // A login from another site's page would log the browser in as someone else.
    if !session::same_origin(&headers, &uri) {
        return again(StatusCode::FORBIDDEN, form.username, next, REFUSED_FORM);
    }
    let address = client.map(|Extension(ClientAddr(addr))| addr.ip());
    let caller =
        match crate::http::password_caller(&state, &form.username, &form.password, address).await {
            Ok(caller) => caller,
            Err(err) if err.status == StatusCode::UNAUTHORIZED => {
                return again(
                    StatusCode::UNAUTHORIZED,
                    form.username,
                    next,
                    "wrong username or password",
                )
            }
            Err(err) => return again(err.status, form.username, next, &err.message),
        };
    match state.ui_sessions.start(&state, &caller).await {
        Ok(cookie) => {
            tracing::info!(user = %caller.username, "web UI login");
            let target = if next.is_empty() { "/ui/" } else { &next };
            see_other(target, Some(cookie))
        }
        Err(err) => again(err.status, form.username, next, &err.message),
    }
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let csrf = form.map(|Form(form)| form.csrf).unwrap_or_default();
    let page = match open_page(&state, &headers, &uri, "", "Log out", &Common::default()).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    if !check_form(&page, &headers, &uri, &csrf) {
        return page.error(StatusCode::FORBIDDEN, REFUSED_FORM);
    }
    let cleared = state.ui_sessions.end(&state, &headers).await;
    tracing::info!(user = %page.session.caller.username, "web UI logout");
    see_other("/ui/login?done=logged-out", Some(cleared))
}

/// `next` when it is a path of the UI (no other site, no scheme), else nothing.
fn safe_next(next: &str) -> String {
    let local = next.starts_with("/ui/")
        && !next.contains("//")
        && !next.contains('\\')
        && next.bytes().all(|byte| byte.is_ascii_graphic());
    if local {
        next.to_owned()
    } else {
        String::new()
    }
}

/// The request's path and query, for `next`.
fn local_target(uri: &Uri) -> String {
    uri.path_and_query()
        .map(|target| target.as_str().to_owned())
        .unwrap_or_else(|| "/ui/".to_owned())
}

// === small helpers of the pages ===

/// Percent-encodes a path segment or query value: everything but unreserved characters.
pub(crate) fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A JSON field as text: a string as it is, a list joined with `, `, nothing for `null`.
pub(crate) fn text_of(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::String(text) => text.clone(),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map_or_else(|| item.to_string(), str::to_owned)
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The longest first line of output a list row shows, characters.
const OUTPUT_PREVIEW: usize = 200;

/// What a list row shows of a check's output: its first line, cut at [`OUTPUT_PREVIEW`]
/// characters with an ellipsis.
pub(crate) fn output_preview(output: &str) -> String {
    let first = output.lines().next().unwrap_or("");
    match first.char_indices().nth(OUTPUT_PREVIEW) {
        Some((cut, _)) => format!("{}…", &first[..cut]),
        None => first.to_owned(),
    }
}

/// Sensu's word for a check status.
pub(crate) fn status_word(status: u32) -> &'static str {
    match status {
        0 => "OK",
        1 => "WARNING",
        2 => "CRITICAL",
        _ => "UNKNOWN",
    }
}

/// The CSS class of a status.
pub(crate) fn status_class(status: u32) -> &'static str {
    match status {
        0 => "ok",
        1 => "warning",
        2 => "critical",
        _ => "unknown",
    }
}

/// Unix seconds as `2026-12-07 15:04:05 UTC`, `-` for 0.
pub(crate) fn format_time(unix: i64) -> String {
    if unix <= 0 {
        return "-".to_owned();
    }
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(unix) else {
        return unix.to_string();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// How long ago `unix` was, roughly: `42s`, `5m`, `3h`, `2d`.
pub(crate) fn ago(unix: i64) -> String {
    if unix <= 0 {
        return String::new();
    }
    let seconds = (crate::clock::unix_now() - unix).max(0);
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m ago", seconds / 60),
        3600..86_400 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

/// How long the UI waits for one page's data before it shows what it has.
pub(crate) const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_in_the_ui() {
        assert_eq!(safe_next("/ui/events?cluster=a"), "/ui/events?cluster=a");
        for bad in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/ui//evil",
            "/api/x",
            "/ui/\\x",
            "/ui/a b",
        ] {
            assert_eq!(safe_next(bad), "", "{bad}");
        }
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("web-1.example_x~"), "web-1.example_x~");
        assert_eq!(encode_segment("a/b c%"), "a%2Fb%20c%25");
    }

    #[test]
    fn only_known_done_codes_flash() {
        assert!(Flash::done("resolved").is_some());
        assert!(Flash::done("your account is locked, call 555").is_none());
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(format_time(0), "-");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
