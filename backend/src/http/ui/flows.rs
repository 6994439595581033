//! The UI's flows in process, through the whole router: login, sessions, forms and their
//! refusals. The browser tests (`tests/tests/integration/ui.rs`) drive the same in Chromium.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::http::tests::Fixture;

/// An answer: status, headers, body text.
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn cookie(&self) -> Option<String> {
        self.headers
            .get(header::SET_COOKIE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .filter(|pair| !pair.ends_with('='))
            .map(str::to_owned)
    }

    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    /// The session's CSRF token, from any form of the page.
    fn csrf(&self) -> String {
        let start = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token")
            + "name=\"csrf\" value=\"".len();
        self.body[start..].split('"').next().unwrap().to_owned()
    }
}

async fn send(
    fixture: &Fixture,
    method: Method,
    uri: &str,
    cookie: Option<&str>,
    form: Option<&str>,
    origin: Option<&str>,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "cairn.test:8080");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    let body = match form {
        Some(form) => {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Body::from(form.to_owned())
        }
        None => Body::empty(),
    };
    let response = crate::http::app(fixture.state.clone())
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn login(fixture: &Fixture, username: &str, password: &str) -> Answer {
    send(
        fixture,
        Method::POST,
        "/ui/login",
        None,
        Some(&format!("username={username}&password={password}")),
        Some("https://cairn.test:8080"),
    )
    .await
}

async fn post_event(fixture: &Fixture, token: &str, entity: &str, status: u32) {
    let (code, body) = fixture
        .call(
            Method::POST,
            "/api/core/v2/namespaces/default/events",
            token,
            Some(json!({
                "entity": {"entity_class": "proxy", "metadata": {"name": entity, "namespace": "default"}},
                "check": {"metadata": {"name": "disk"}, "status": status, "output": "DISK CRITICAL\nsecond line", "interval": 60},
            })),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
}

fn admin_token(fixture: &Fixture) -> String {
    fixture
        .state
        .issuer
        .issue(
            "admin",
            &[crate::auth::rbac::GROUP_CLUSTER_ADMINS.to_owned()],
        )
        .unwrap()
        .token
}

#[tokio::test]
async fn login_pages_and_forms() {
    let fixture = Fixture::new("gw").await;
    let token = admin_token(&fixture);
    post_event(&fixture, &token, "web1", 2).await;

    // No session: to the login page, keeping where the user was going.
    let anonymous = send(&fixture, Method::GET, "/ui/events", None, None, None).await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    assert_eq!(anonymous.location(), "/ui/login?next=%2Fui%2Fevents");

    // A wrong password and an unknown user get the same answer, and no cookie.
    for (user, password) in [("admin", "wrong"), ("nobody", "admin-password")] {
        let refused = login(&fixture, user, password).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(refused.body.contains("wrong username or password"));
        assert!(refused.cookie().is_none());
    }
    // A login posted from another site's page is refused even with the right password.
    let foreign = send(
        &fixture,
        Method::POST,
        "/ui/login",
        None,
        Some("username=admin&password=admin-password"),
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    assert!(foreign.cookie().is_none());

    let ok = login(&fixture, "admin", "admin-password").await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    let set = ok.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    let cookie = ok.cookie().unwrap();
    assert!(
        cookie.starts_with("__Host-cairn-session-cairn-test="),
        "{cookie}"
    );

    let events = send(
        &fixture,
        Method::GET,
        "/ui/events",
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_eq!(events.status, StatusCode::OK);
    assert!(
        events.body.contains(r#"data-entity="web1""#),
        "{}",
        events.body
    );
    assert!(events.body.contains("DISK CRITICAL"));
    // Read from the stored document: the namespace, status and time come through.
    assert!(
        events.body.contains(r#"data-namespace="default""#),
        "{}",
        events.body
    );
    assert!(
        events.body.contains(r#"data-status="2""#),
        "{}",
        events.body
    );
    assert!(
        events.body.contains("/ui/events/gw/default/web1/disk"),
        "{}",
        events.body
    );
    assert!(
        !events.body.contains("title=\"-\""),
        "a last-seen time: {}",
        events.body
    );
    assert!(
        !events.body.contains("second line"),
        "the list shows the first line only"
    );
    let csp = events.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    let csrf = events.csrf();

    // Every table has a heading for each of its cells (the entities' keepalive included).
    let entities = send(
        &fixture,
        Method::GET,
        "/ui/entities",
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_eq!(entities.status, StatusCode::OK);
    let table = &entities.body[entities.body.find("<table").unwrap()..];
    let body = &table[table.find("<tbody>").unwrap()..];
    let first_row = &body[..body.find("</tr>").unwrap()];
    assert_eq!(table.matches("<th>").count(), 8, "{table}");
    assert_eq!(first_row.matches("<td").count(), 8, "{first_row}");
    assert!(table.contains("Keepalive"));

    // A form without the token, or from another origin, changes nothing.
    let silence =
        "cluster=gw&namespace=default&subscription=entity%3Aweb1&check=disk&expire=60&reason=r";
    for (form, origin) in [
        (silence.to_owned(), None),
        (
            format!(
                "{silence}&csrf={}{}",
                if csrf.starts_with('0') { '1' } else { '0' },
                &csrf[1..]
            ),
            None,
        ),
        (
            format!("{silence}&csrf={csrf}"),
            Some("https://cairn.test:9999"),
        ),
    ] {
        let refused = send(
            &fixture,
            Method::POST,
            "/ui/silences",
            Some(&cookie),
            Some(&form),
            origin,
        )
        .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{form}");
        assert!(refused.body.contains("the form was refused"));
    }
    let (_, silences) = fixture
        .call(
            Method::GET,
            "/api/core/v2/namespaces/default/silenced",
            &token,
            None,
        )
        .await;
    assert_eq!(silences, json!([]));

    // With it, the silence is made through the API as the user.
    let made = send(
        &fixture,
        Method::POST,
        "/ui/silences",
        Some(&cookie),
        Some(&format!("{silence}&csrf={csrf}")),
        Some("https://cairn.test:8080"),
    )
    .await;
    assert_eq!(made.status, StatusCode::SEE_OTHER, "{}", made.body);
    let (_, silences) = fixture
        .call(
            Method::GET,
            "/api/core/v2/namespaces/default/silenced",
            &token,
            None,
        )
        .await;
    assert_eq!(silences[0]["metadata"]["name"], "entity:web1:disk");
    assert_eq!(silences[0]["creator"], "admin");

    // Resolve: the event is OK afterwards, with a note of who did it.
    let resolved = send(
        &fixture,
        Method::POST,
        "/ui/events/gw/default/web1/disk/resolve",
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
        None,
    )
    .await;
    assert_eq!(resolved.status, StatusCode::SEE_OTHER, "{}", resolved.body);
    let (_, event) = fixture
        .call(
            Method::GET,
            "/api/core/v2/namespaces/default/events/web1/disk",
            &token,
            None,
        )
        .await;
    assert_eq!(event["check"]["status"], 0);
    assert!(event["check"]["output"].as_str().unwrap().contains("admin"));

    // Re-run: Sensu's ad hoc execution of the check for that entity (the check must exist).
    let (code, body) = fixture
        .call(
            Method::PUT,
            "/api/core/v2/namespaces/default/checks/disk",
            &token,
            Some(json!({"metadata": {"name": "disk", "namespace": "default"}, "command": "true", "interval": 60, "subscriptions": ["linux"]})),
        )
        .await;
    assert!(code.is_success(), "{body}");
    let rerun = send(
        &fixture,
        Method::POST,
        "/ui/events/gw/default/web1/disk/rerun",
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
        None,
    )
    .await;
    // This fixture runs no scheduler: the API's 503 is shown as a page (the browser tests
    // re-run a check on a real backend).
    assert_eq!(
        rerun.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        rerun.body
    );
    assert!(
        rerun.body.contains("the scheduler is not running"),
        "{}",
        rerun.body
    );

    // Logout ends the session for every copy of the cookie, though its access token lives on.
    let out = send(
        &fixture,
        Method::POST,
        "/ui/logout",
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
        None,
    )
    .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let replayed = send(
        &fixture,
        Method::GET,
        "/ui/events",
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_eq!(replayed.status, StatusCode::SEE_OTHER);
    assert!(replayed.location().starts_with("/ui/login"));
}

#[tokio::test]
async fn a_viewer_is_offered_nothing_and_refused_anyway() {
    let fixture = Fixture::new("gw").await;
    let token = admin_token(&fixture);
    post_event(&fixture, &token, "web1", 2).await;
    let (code, body) = fixture
        .call(
            Method::POST,
            "/api/core/v2/users",
            &token,
            Some(
                json!({"username": "viewer", "password": "viewer-password", "groups": ["viewers"]}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    fixture.bind_group("viewers", "view").await;

    let cookie = login(&fixture, "viewer", "viewer-password")
        .await
        .cookie()
        .unwrap();
    let detail = send(
        &fixture,
        Method::GET,
        "/ui/events/gw/default/web1/disk",
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
    assert!(detail.body.contains("DISK CRITICAL"));
    for form in [
        "id=\"resolve\"",
        "id=\"silence\"",
        "id=\"delete\"",
        "id=\"rerun\"",
    ] {
        assert!(!detail.body.contains(form), "{form} offered to a viewer");
    }
    // A forged post with the viewer's own valid token: the API's RBAC refuses it.
    let csrf = detail.csrf();
    for action in ["resolve", "delete"] {
        let forged = send(
            &fixture,
            Method::POST,
            &format!("/ui/events/gw/default/web1/disk/{action}"),
            Some(&cookie),
            Some(&format!("csrf={csrf}")),
            None,
        )
        .await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN, "{action}");
        assert!(
            forged.body.contains("user viewer may not"),
            "{}",
            forged.body
        );
        assert!(
            forged.body.contains("<html"),
            "an error is a page, not JSON"
        );
    }
    let (_, event) = fixture
        .call(
            Method::GET,
            "/api/core/v2/namespaces/default/events/web1/disk",
            &token,
            None,
        )
        .await;
    assert_eq!(event["check"]["status"], 2);
}

#[tokio::test]
async fn unknown_pages_and_assets() {
    let fixture = Fixture::new("gw").await;
    let root = send(&fixture, Method::GET, "/", None, None, None).await;
    assert_eq!(
        (root.status, root.location()),
        (StatusCode::SEE_OTHER, "/ui/")
    );
    let css = send(
        &fixture,
        Method::GET,
        "/ui/assets/cairn.css",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
    let missing = send(
        &fixture,
        Method::GET,
        "/ui/assets/nope.js",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let cookie = login(&fixture, "admin", "admin-password")
        .await
        .cookie()
        .unwrap();
    let page = send(
        &fixture,
        Method::GET,
        "/ui/no-such-page",
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(page.body.contains("<html"), "{}", page.body);
    let value: Result<Value, _> = serde_json::from_str(&page.body);
    assert!(value.is_err(), "a UI error is a page, never a JSON body");
    let bad = send(
        &fixture,
        Method::GET,
        "/ui/events?page=first",
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.body.contains("the filters are not understood"),
        "{}",
        bad.body
    );
    assert!(
        bad.body.contains("page"),
        "the error names the field: {}",
        bad.body
    );
    let timed = send(
        &fixture,
        Method::GET,
        "/ui/events",
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert!(timed.headers["server-timing"]
        .to_str()
        .unwrap()
        .starts_with("page;dur="));
}
