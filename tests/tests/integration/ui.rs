//! The backend's web UI in a real browser (issue 17): Debian's Chromium driven through
//! chromedriver ([`cairn_tests::browser`]) against real backend processes, written against the
//! UI's contract (routes, form ids, the markup the tests read).
//!
//! The federation walk-through of `federation_view` in the browser: the read-only viewer of
//! the gateway sees alpha's event marked with its cluster, gets no action forms, and a forged
//! form post is refused by alpha's RBAC; an admin known only to the gateway silences and
//! resolves an event of alpha from the gateway's pages. Then the session: failed logins,
//! logout, cross-site form posts, an expired session; pages at 1280 and 390 pixels wide; and
//! the README's screenshots. A test that fails saves a screenshot of its page under
//! `target/browser-screenshots/`.

use std::time::Duration;

use cairn_api::client::Client;
use cairn_tests::browser::Browser;
use cairn_tests::{eventually, Backend, BackendOptions, ADMIN_PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{post_event, ViewerFederation, VIEWER_PASSWORD};

/// Set (to anything) to have [`readme_screenshots`] write `docs/screenshots/*.png`.
const ENV_UI_SCREENSHOTS: &str = "CAIRN_UI_SCREENSHOTS";

/// The UI's session cookies, `__Host-cairn-session-<cluster>` (`__Host-` cookies: Secure,
/// Path=/, no Domain). Named for the cluster since browsers share a host's cookies between its
/// ports: two clusters' UIs on one host would log each other out.
const SESSION_COOKIE_PREFIX: &str = "__Host-cairn-session-";

/// The cluster name of a backend initialised without `--cluster-name`.
const DEFAULT_CLUSTER: &str = "cairn";

/// What the login page says for a wrong password and for an unknown user alike.
const WRONG_LOGIN: &str = "wrong username or password";

/// What a refused form (bad `csrf` or a foreign `Origin`) says.
const FORM_REFUSED: &str =
    "the form was refused (cross-site request or stale form); reload the page and try again";

/// Sets the reason of the page's `form#silence` to `arguments[0]` and returns the values of its
/// fields `cluster`, `namespace`, `subscription` and `check` (null for a missing one).
const SILENCE_FORM: &str = "
    const form = document.querySelector('form#silence');
    form.elements['reason'].value = arguments[0];
    const value = name => form.elements[name] ? form.elements[name].value : null;
    return Object.fromEntries(['cluster', 'namespace', 'subscription', 'check']
        .map(name => [name, value(name)]));";

/// POSTs the form-encoded `arguments[1]` to the path `arguments[0]` with `fetch`, following no
/// redirect, and returns the status and the `#flash` (text and class) of the answer's page.
const POST_FROM_PAGE: &str = "
    const [path, fields] = arguments;
    const request = {method: 'POST', body: new URLSearchParams(fields), redirect: 'manual'};
    return fetch(path, request).then(response => response.text().then(text => {
        const page = new DOMParser().parseFromString(text, 'text/html');
        const flash = page.querySelector('#flash');
        return {
            status: response.status,
            flash: flash ? flash.textContent.trim() : '',
            flash_class: flash ? flash.className : '',
        };
    }));";

/// The session lifetime of the expiry test's backend (`--ui-session-ttl`), in seconds.
const SHORT_SESSION_SECS: u64 = 3;

/// The detail page of the event `entity/check` of `default` in `cluster`, as a path.
fn event_page(cluster: &str, entity: &str, check: &str) -> String {
    format!("/ui/events/{cluster}/default/{entity}/{check}")
}

/// Logs in on the UI of the backend at `url` through the login form, and waits for the page
/// the form leads to.
async fn log_in(browser: &Browser, url: &str, username: &str, password: &str) {
    browser.goto(&format!("{url}/ui/login")).await;
    browser
        .fill("form#login input[name=username]", username)
        .await;
    browser
        .fill("form#login input[name=password]", password)
        .await;
    browser.click_and_load("#login-submit").await;
}

/// Submits the form `form` of the current page with its own submit button and waits for the
/// page it leads to.
async fn submit(browser: &Browser, form: &str) {
    browser
        .click_and_load(&format!("{form} [type=submit]"))
        .await;
}

/// The page's CSRF token, from the hidden field of the logout form in the header.
async fn csrf_token(browser: &Browser) -> String {
    browser.find("form#logout input[name=csrf]").await;
    let token = browser
        .execute(
            "return document.querySelector('form#logout input[name=csrf]').value;",
            vec![],
        )
        .await;
    let token = token.as_str().unwrap_or_default().to_owned();
    assert!(!token.is_empty(), "the logout form has no csrf value");
    token
}

/// What a form post made by a script of the current page got: the status (0 for a redirect,
/// which `fetch` does not follow here), and the `#flash` of the page it answered with.
#[derive(Debug)]
struct Posted {
    status: u64,
    flash: String,
    flash_class: String,
}

/// POSTs the form-encoded `fields` to `path` with `fetch` from the current page (so with its
/// cookie and its own `Origin`), as a forged form would.
async fn post_from_page(browser: &Browser, path: &str, fields: Value) -> Posted {
    let answer = browser
        .execute(POST_FROM_PAGE, vec![json!(path), fields])
        .await;
    Posted {
        status: answer["status"].as_u64().unwrap_or(u64::MAX),
        flash: answer["flash"].as_str().unwrap_or_default().to_owned(),
        flash_class: answer["flash_class"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// The name of the session cookie of `cluster`'s UI.
fn session_cookie(cluster: &str) -> String {
    format!("{SESSION_COOKIE_PREFIX}{cluster}")
}

/// The value of the session cookie of `cluster` that the browser holds for the current page's
/// host, if any.
async fn session_value(browser: &Browser, cluster: &str) -> Option<String> {
    let cookie = browser.cookie(&session_cookie(cluster)).await;
    cookie.map(|cookie| cookie.value().to_owned())
}

/// The names of every session cookie, of any cluster, that the browser holds for the current
/// page's host.
async fn session_cookies(browser: &Browser) -> Vec<String> {
    let cookies = browser.cookies().await;
    cookies
        .iter()
        .map(|cookie| cookie.name().to_owned())
        .filter(|name| name.starts_with(SESSION_COOKIE_PREFIX))
        .collect()
}

/// The text of `#flash`, waiting for it.
async fn flash(browser: &Browser) -> String {
    browser.text("#flash").await
}

/// Asserts that the page does not overflow horizontally: its content is no wider than the
/// viewport (no sideways scrolling on a phone).
async fn assert_no_horizontal_overflow(browser: &Browser, page: &str) {
    let widths = browser
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await;
    let (scroll_width, inner_width) = (widths[0].as_u64(), widths[1].as_u64());
    assert!(
        scroll_width.is_some() && scroll_width <= inner_width,
        "{page} overflows: scrollWidth {scroll_width:?} > innerWidth {inner_width:?}"
    );
}

/// The `silenced` entries of `default` at the backend `client` talks to.
async fn silences(client: &Client) -> Vec<Value> {
    client
        .get_json("/api/core/v2/namespaces/default/silenced")
        .await
        .expect("list the silences of default")
        .as_array()
        .expect("an array of silences")
        .clone()
}

/// The event `entity/disk` of `default` at the backend `client` talks to.
async fn disk_event(client: &Client, entity: &str) -> Value {
    client
        .get_json(&format!(
            "/api/core/v2/namespaces/default/events/{entity}/disk"
        ))
        .await
        .unwrap_or_else(|err| panic!("read the event {entity}/disk: {err}"))
}

/// An HTTP client trusting `backend`'s CA that does not follow redirects, connecting from
/// `local` (any 127.x.y.z is loopback) so that the failed-login throttle of the browser's
/// address does not slow it.
fn http_client(backend: &Backend, local: [u8; 4]) -> reqwest::Client {
    let tls = cairn_api::client::tls_config_trusting(&backend.ca()).expect("TLS config");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .local_address(std::net::IpAddr::from(local))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// The `Location` header of a response.
fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Serves `page` (HTML) over plain HTTP on 127.0.0.1 on a free port for every request, with
/// `headers` (whole lines) added to each answer; returns `http://127.0.0.1:<port>`. The server
/// task ends with the test's runtime.
async fn serve_page(page: String, headers: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a page server");
    let addr = listener.local_addr().expect("the page server's address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                // The request head is small (a browser's GET); reading it once is enough for
                // the answer, which closes the connection.
                let mut request = [0_u8; 8192];
                let read = stream.read(&mut request).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&request[..read]);
                let target = head.split_whitespace().nth(1).unwrap_or("/");
                let body = page.replace("{target}", target);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n{headers}\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// The harness itself, without the UI: Chromium loads a local page, fills and submits a form,
/// reads text, cookies and script results, resizes its window; a failing body leaves a
/// screenshot named in the panic; and Chromium accepts exactly the HTTPS of the backends it was
/// started for.
#[tokio::test(flavor = "multi_thread")]
async fn harness_drives_chromium() {
    let page = "<!doctype html><title>smoke · harness</title>
        <p id=target>{target}</p>
        <form id=echo method=get action=/echo><input name=q><button type=submit>go</button></form>"
        .to_owned();
    let site = serve_page(page, "Set-Cookie: smoke=1; Path=/\r\n").await;
    let site_again = site.clone();
    let browser = Browser::start(&[]).await;
    browser
        .run("harness_drives_chromium", |browser| async move {
            browser.goto(&format!("{site}/")).await;
            assert_eq!(browser.title().await, "smoke · harness");
            browser.fill("form#echo input[name=q]", "hello there").await;
            submit(&browser, "form#echo").await;
            assert_eq!(browser.path_and_query().await, "/echo?q=hello+there");
            assert_eq!(browser.text("#target").await, "/echo?q=hello+there");
            let cookie = browser.cookie("smoke").await.expect("the page's cookie");
            assert_eq!(cookie.value(), "1");
            assert_eq!(browser.execute("return 1 + 1;", vec![]).await, json!(2));
            assert!(!browser.exists("#nothing-here").await);
            // A phone's width is possible headless (desktop windows have a larger minimum).
            browser.set_window_size(390, 844).await;
            let width = browser.execute("return window.innerWidth;", vec![]).await;
            assert_eq!(width, json!(390));
            assert_no_horizontal_overflow(&browser, "the smoke page").await;
        })
        .await;

    // A failing body: the panic names the screenshot, which exists.
    let failing = Browser::start(&[]).await;
    let name = "harness_failure_screenshot";
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(failing.run(
        name,
        |browser| async move {
            browser.goto(&format!("{site_again}/")).await;
            panic!("deliberate failure");
        },
    )))
    .await;
    let payload = outcome.expect_err("the body's panic comes through");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.starts_with("deliberate failure\n"), "{message}");
    let path = message
        .rsplit_once(": ")
        .map(|(_, path)| std::path::PathBuf::from(path))
        .expect("a path in the message");
    assert!(
        path.ends_with(format!("browser-screenshots/{name}.png")),
        "{message}"
    );
    let png = std::fs::read(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    assert!(png.starts_with(b"\x89PNG"), "{} is no PNG", path.display());
    std::fs::remove_file(&path).expect("remove the deliberate screenshot");

    // HTTPS: a browser started for the backend loads its API; one started for nothing gets a
    // certificate error (no blanket acceptance of bad certificates).
    let backend = Backend::start();
    let health = format!("{}/health", backend.url);
    let body = "return document.body ? document.body.innerText : '';";
    let trusting = Browser::start(&[&backend]).await;
    trusting
        .run("harness_https_trusted", |browser| async move {
            browser.goto(&health).await;
            let text = browser.execute(body, vec![]).await;
            assert!(
                text.as_str()
                    .is_some_and(|text| text.contains("ClusterHealth")),
                "{text}"
            );
        })
        .await;
    let stranger = Browser::start(&[]).await;
    let health = format!("{}/health", backend.url);
    stranger
        .run("harness_https_untrusted", |browser| async move {
            // A certificate error is a failed navigation or Chromium's interstitial page,
            // both naming the `net::ERR_CERT_…` code.
            let navigation = browser.client().goto(&health).await;
            let text = browser.execute(body, vec![]).await;
            let seen = format!("{navigation:?}\n{text}");
            assert!(
                !seen.contains("ClusterHealth") && seen.contains("ERR_CERT_"),
                "an untrusted certificate was accepted, or failed otherwise: {seen}"
            );
        })
        .await;
}

/// The federation walk-through in the browser: the viewer logs in on the gateway, sees both
/// clusters and alpha's event marked alpha, gets no action forms on its detail, and a forged
/// resolve is refused by RBAC with alpha's event unchanged; the viewer cannot log in on
/// alpha's own UI.
#[tokio::test(flavor = "multi_thread")]
async fn federation_walk_through() {
    let federation = ViewerFederation::start().await;
    // An event that exists only in alpha, and one of the gateway's own.
    post_event(&federation.alpha_admin, "alpha-host").await;
    post_event(&federation.gateway_admin, "gateway-host").await;
    let before = disk_event(&federation.alpha_admin, "alpha-host").await;
    let browser = Browser::start(&[&federation.gateway, &federation.alpha]).await;
    let federation = &federation;
    browser
        .run("federation_walk_through", |browser| async move {
            let gateway = &federation.gateway.url;
            log_in(&browser, gateway, "federation-viewer", VIEWER_PASSWORD).await;
            assert_eq!(browser.path_and_query().await, "/ui/");
            assert_eq!(browser.text("#whoami").await, "federation-viewer");
            assert!(browser.title().await.ends_with(" · Cairn"));

            // Both clusters, the gateway first, both healthy.
            browser.goto(&format!("{gateway}/ui/clusters")).await;
            browser.find("table#clusters tr.cluster").await;
            let mut clusters = Vec::new();
            for row in browser.find_all("table#clusters tr.cluster").await {
                let name = row.attr("data-cluster").await.expect("data-cluster");
                let healthy = row.attr("data-healthy").await.expect("data-healthy");
                clusters.push((name.unwrap_or_default(), healthy.unwrap_or_default()));
            }
            let expected = [("gateway", "true"), ("alpha", "true")]
                .map(|(name, healthy)| (name.to_owned(), healthy.to_owned()));
            assert_eq!(clusters, expected);

            // Alpha's event, marked alpha, and the gateway's own.
            browser.goto(&format!("{gateway}/ui/events")).await;
            let alpha_row = concat!(
                r#"table#events tr.event[data-cluster="alpha"][data-namespace="default"]"#,
                r#"[data-entity="alpha-host"][data-check="disk"]"#
            );
            assert_eq!(
                browser.text(&format!("{alpha_row} td.cluster")).await,
                "alpha"
            );
            assert_eq!(
                browser.text(&format!("{alpha_row} td.status")).await,
                "WARNING"
            );
            assert_eq!(
                browser.attr(alpha_row, "data-status").await.as_deref(),
                Some("1")
            );
            assert_eq!(
                browser.text(&format!("{alpha_row} td.output")).await,
                "83% used"
            );
            assert!(
                browser
                    .exists(r#"tr.event[data-cluster="gateway"][data-entity="gateway-host"]"#)
                    .await
            );
            assert!(
                !browser
                    .exists(r#"tr.event[data-cluster="gateway"][data-entity="alpha-host"]"#)
                    .await,
                "alpha's event is alpha's only"
            );

            // Its detail: the output, and no action form at all.
            browser
                .click_and_load(&format!("{alpha_row} a.event-link"))
                .await;
            let detail = event_page("alpha", "alpha-host", "disk");
            assert_eq!(browser.path_and_query().await, detail);
            assert!(browser.text("pre#output").await.contains("83% used"));
            for form in ["form#resolve", "form#silence", "form#delete", "form#rerun"] {
                assert!(!browser.exists(form).await, "the viewer sees {form}");
            }

            // A forged resolve with the page's real CSRF token: refused by alpha's RBAC.
            let csrf = csrf_token(&browser).await;
            let forged = post_from_page(
                &browser,
                &format!("{detail}/resolve"),
                json!({"csrf": csrf}),
            )
            .await;
            assert_eq!(forged.status, 403, "{forged:?}");
            assert!(forged.flash_class.contains("error"), "{forged:?}");
            assert!(
                forged.flash.contains("may not") && forged.flash.contains("federation-viewer"),
                "the API's refusal: {forged:?}"
            );
            // And a forged silence, the same way.
            let forged = post_from_page(
                &browser,
                "/ui/silences",
                json!({
                    "cluster": "alpha", "namespace": "default", "subscription": "entity:alpha-host",
                    "check": "disk", "expire": "", "reason": "forged", "csrf": csrf,
                }),
            )
            .await;
            assert_eq!(forged.status, 403, "{forged:?}");
            assert!(forged.flash.contains("may not"), "{forged:?}");
            let after = disk_event(&federation.alpha_admin, "alpha-host").await;
            assert_eq!(after["check"]["status"], 1, "{after:#}");
            assert_eq!(
                after["check"], before["check"],
                "alpha's event is unchanged"
            );
            assert_eq!(silences(&federation.alpha_admin).await, Vec::<Value>::new());

            // The viewer does not exist at alpha: its own UI refuses the login. (Cookies are
            // not kept apart by port, so the browser sends the gateway's session cookie to
            // alpha on 127.0.0.1 too: it opens nothing there, and alpha leaves it alone.)
            let alpha = &federation.alpha.url;
            let gateway_cookie = session_value(&browser, "gateway").await;
            assert!(gateway_cookie.is_some(), "the gateway's session cookie");
            browser.goto(&format!("{alpha}/ui/events")).await;
            assert!(browser.path_and_query().await.starts_with("/ui/login"));
            log_in(&browser, alpha, "federation-viewer", VIEWER_PASSWORD).await;
            assert!(browser.path_and_query().await.starts_with("/ui/login"));
            assert_eq!(flash(&browser).await, WRONG_LOGIN);
            assert_eq!(session_value(&browser, "alpha").await, None);
            assert_eq!(
                session_value(&browser, "gateway").await,
                gateway_cookie,
                "alpha touched the gateway's session cookie"
            );
        })
        .await;
}

/// An admin defined only on the gateway (group `cluster-admins`, which alpha's own
/// `cluster-admin` binding binds) silences and resolves alpha's event from the gateway's
/// pages, and alpha's API shows both.
#[tokio::test(flavor = "multi_thread")]
async fn gateway_admin_acts_on_alpha() {
    let federation = ViewerFederation::start().await;
    federation
        .gateway_admin
        .send(
            reqwest::Method::POST,
            "/api/core/v2/users",
            Some(&json!({
                "username": "gateway-admin",
                "password": "gateway-admin-password",
                "groups": ["cluster-admins"],
            })),
        )
        .await
        .expect("create gateway-admin on the gateway");
    post_event(&federation.alpha_admin, "alpha-host").await;
    let browser = Browser::start(&[&federation.gateway, &federation.alpha]).await;
    let federation = &federation;
    browser
        .run("gateway_admin_acts_on_alpha", |browser| async move {
            let gateway = &federation.gateway.url;
            log_in(&browser, gateway, "gateway-admin", "gateway-admin-password").await;
            assert_eq!(browser.text("#whoami").await, "gateway-admin");
            let detail = format!("{gateway}{}", event_page("alpha", "alpha-host", "disk"));
            browser.goto(&detail).await;
            for form in ["form#resolve", "form#silence"] {
                browser.find(form).await;
            }

            // The silence: the detail's form names the event's cluster and namespace; what it
            // holds besides is what alpha gets.
            let form = browser
                .execute(SILENCE_FORM, vec![json!("disk swap by the gateway admin")])
                .await;
            assert_eq!(form["cluster"], "alpha", "{form}");
            assert_eq!(form["namespace"], "default", "{form}");
            submit(&browser, "form#silence").await;
            assert!(
                browser.exists("#flash.ok").await,
                "{}",
                browser.source().await
            );
            assert!(flash(&browser).await.contains("silence created"));
            let silenced = silences(&federation.alpha_admin).await;
            assert_eq!(silenced.len(), 1, "{silenced:#?}");
            assert_eq!(silenced[0]["reason"], "disk swap by the gateway admin");
            assert_eq!(
                silenced[0]["check"].as_str().unwrap_or_default(),
                form["check"].as_str().unwrap_or_default(),
                "{silenced:#?}"
            );
            assert_eq!(
                silenced[0]["subscription"].as_str().unwrap_or_default(),
                form["subscription"].as_str().unwrap_or_default(),
                "{silenced:#?}"
            );
            assert_eq!(silenced[0]["metadata"]["created_by"], "gateway-admin");
            assert_eq!(
                silences(&federation.gateway_admin).await,
                Vec::<Value>::new()
            );

            // The resolution.
            browser.goto(&detail).await;
            submit(&browser, "form#resolve").await;
            assert!(
                browser.exists("#flash.ok").await,
                "{}",
                browser.source().await
            );
            assert!(flash(&browser).await.contains("event resolved"));
            let event = disk_event(&federation.alpha_admin, "alpha-host").await;
            assert_eq!(event["check"]["status"], 0, "{event:#}");
        })
        .await;
}

/// Failed logins (one message for a wrong password and an unknown user, a 401, no cookie),
/// the session cookie's attributes, logout (cookie gone, back to the login page, the old
/// cookie opens nothing), and a form post without the page's CSRF token or from a foreign
/// origin.
#[tokio::test(flavor = "multi_thread")]
async fn login_logout_and_csrf() {
    let backend = Backend::start();
    let http = http_client(&backend, [127, 0, 0, 3]);
    let refused = http
        .post(format!("{}/ui/login", backend.url))
        .form(&[("username", "admin"), ("password", "not-the-password")])
        .send()
        .await
        .expect("POST /ui/login");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().get(reqwest::header::SET_COOKIE).is_none());
    let browser = Browser::start(&[&backend]).await;
    let backend = &backend;
    browser
        .run("login_logout_and_csrf", |browser| async move {
            let url = &backend.url;
            log_in(&browser, url, "admin", "not-the-password").await;
            assert_eq!(browser.path_and_query().await, "/ui/login");
            assert!(browser.exists("#flash.error").await);
            let wrong_password = flash(&browser).await;
            assert_eq!(wrong_password, WRONG_LOGIN);
            assert_eq!(session_cookies(&browser).await, Vec::<String>::new());
            log_in(&browser, url, "nobody-by-this-name", "not-the-password").await;
            assert_eq!(
                flash(&browser).await,
                wrong_password,
                "the same for an unknown user"
            );
            assert_eq!(session_cookies(&browser).await, Vec::<String>::new());

            // A good login: the cookie and its attributes.
            log_in(&browser, url, "admin", ADMIN_PASSWORD).await;
            assert_eq!(browser.path_and_query().await, "/ui/");
            assert_eq!(browser.text("#whoami").await, "admin");
            let cookie = browser
                .cookie(&session_cookie(DEFAULT_CLUSTER))
                .await
                .expect("the session cookie after the login");
            // The attributes only (the value is a session's tokens); fantoccini does not
            // re-export the cookie crate's `SameSite`, hence its `Debug` form.
            let attributes = (
                cookie.http_only(),
                cookie.secure(),
                format!("{:?}", cookie.same_site()),
                cookie.path(),
                cookie.domain(),
            );
            assert_eq!(
                attributes,
                (
                    Some(true),
                    Some(true),
                    "Some(Strict)".to_owned(),
                    Some("/"),
                    Some("127.0.0.1")
                ),
                "HttpOnly, Secure, SameSite=Strict, Path=/ and no Domain (the host's own)"
            );
            let session = format!("{}={}", session_cookie(DEFAULT_CLUSTER), cookie.value());
            let page = http
                .get(format!("{url}/ui/events"))
                .header(reqwest::header::COOKIE, &session)
                .send()
                .await
                .expect("GET /ui/events with the session");
            assert_eq!(page.status(), StatusCode::OK, "the cookie opens a page");

            // A form post without the page's token, and one with it from another origin: both
            // refused, nothing created.
            let csrf = csrf_token(&browser).await;
            let without_token = json!({"namespace": "default", "subscription": "entity:csrf-host",
                "check": "", "expire": "", "reason": "csrf", "csrf": "not-the-token"});
            let posted = post_from_page(&browser, "/ui/silences", without_token).await;
            assert_eq!(posted.status, 403, "{posted:?}");
            assert_eq!(posted.flash, FORM_REFUSED, "{posted:?}");
            let foreign = http
                .post(format!("{url}/ui/silences"))
                .header(reqwest::header::COOKIE, &session)
                .header(reqwest::header::ORIGIN, "https://evil.example")
                .form(&[
                    ("namespace", "default"),
                    ("subscription", "entity:csrf-host"),
                    ("reason", "csrf"),
                    ("csrf", csrf.as_str()),
                ])
                .send()
                .await
                .expect("POST /ui/silences from a foreign origin");
            assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
            let text = foreign.text().await.unwrap_or_default();
            assert!(text.contains(FORM_REFUSED), "{text}");
            assert_eq!(silences(&backend.admin().await).await, Vec::<Value>::new());

            // Logout: back on the login page, the cookie gone, and the old cookie opens no page.
            submit(&browser, "form#logout").await;
            // The contract names the page, not how the flash travels (the UI adds a query).
            let landed = browser.path_and_query().await;
            assert!(landed.split('?').next() == Some("/ui/login"), "{landed}");
            assert!(flash(&browser).await.contains("logged out"));
            assert_eq!(session_cookies(&browser).await, Vec::<String>::new());
            let replayed = http
                .get(format!("{url}/ui/events"))
                .header(reqwest::header::COOKIE, &session)
                .send()
                .await
                .expect("GET /ui/events with the old cookie");
            assert_eq!(replayed.status(), StatusCode::SEE_OTHER);
            assert!(location(&replayed).starts_with("/ui/login"), "{replayed:?}");
        })
        .await;
}

/// A page of another origin whose form posts itself to the UI as soon as it loads: the post
/// creates nothing (the cookie is SameSite=Strict, and the UI checks the origin and the token).
#[tokio::test(flavor = "multi_thread")]
async fn cross_site_form_post_is_refused() {
    let backend = Backend::start();
    let page = format!(
        "<!doctype html><title>elsewhere</title>
         <form id=attack method=post action=\"{}/ui/silences\">
           <input name=namespace value=default><input name=subscription value=entity:victim>
           <input name=check value=><input name=expire value=><input name=reason value=csrf>
           <input name=csrf value=guessed>
         </form>
         <script>document.getElementById('attack').submit();</script>",
        backend.url
    );
    let elsewhere = serve_page(page, "").await;
    let browser = Browser::start(&[&backend]).await;
    let backend = &backend;
    browser
        .run("cross_site_form_post_is_refused", |browser| async move {
            log_in(&browser, &backend.url, "admin", ADMIN_PASSWORD).await;
            assert!(session_value(&browser, DEFAULT_CLUSTER).await.is_some());
            browser.goto(&format!("{elsewhere}/")).await;
            // The page submits itself: wait for the UI's answer to load.
            let what = "the cross-site post's answer";
            let landed = eventually(what, Duration::from_secs(15), || async {
                let url = browser.current_url().await;
                let ready = browser.execute("return document.readyState;", vec![]).await;
                if url.starts_with(&backend.url) && ready == json!("complete") {
                    Ok(browser.path_and_query().await)
                } else {
                    Err(format!("{url} ({ready})"))
                }
            })
            .await;
            let refused =
                browser.exists("#flash").await && browser.text("#flash").await == FORM_REFUSED;
            assert!(
                refused || landed.starts_with("/ui/login"),
                "the cross-site post was neither refused nor sent without the session: \
                 {landed}\n{}",
                browser.source().await
            );
            assert_eq!(silences(&backend.admin().await).await, Vec::<Value>::new());
        })
        .await;
}

/// A session outlives `--ui-session-ttl` by nothing: the next page load lands on the login
/// page, which says that the session has expired.
#[tokio::test(flavor = "multi_thread")]
async fn expired_session_goes_back_to_login() {
    let backend = Backend::start_with(
        BackendOptions::default().args(["--ui-session-ttl", &SHORT_SESSION_SECS.to_string()]),
    );
    let browser = Browser::start(&[&backend]).await;
    let backend = &backend;
    browser
        .run("expired_session_goes_back_to_login", |browser| async move {
            // The landing page is the proof that the session opens pages (no further load
            // spends the short ttl).
            log_in(&browser, &backend.url, "admin", ADMIN_PASSWORD).await;
            assert_eq!(browser.path_and_query().await, "/ui/");
            browser.find("table#events").await;
            let cookie = browser
                .cookie(&session_cookie(DEFAULT_CLUSTER))
                .await
                .expect("the session cookie after the login");
            let session = format!("{}={}", session_cookie(DEFAULT_CLUSTER), cookie.value());
            // The session's life is the backend's clock, which nothing here can advance: wait
            // until the ttl has passed, with a margin for seconds rounded at either end.
            tokio::time::sleep(Duration::from_millis(SHORT_SESSION_SECS * 1000 + 1500)).await;
            // The server tells the expired session from none when it gets the cookie…
            let replayed = http_client(backend, [127, 0, 0, 4])
                .get(format!("{}/ui/events", backend.url))
                .header(reqwest::header::COOKIE, &session)
                .send()
                .await
                .expect("GET /ui/events with the expired cookie");
            assert_eq!(replayed.status(), StatusCode::SEE_OTHER);
            assert_eq!(location(&replayed), "/ui/login?expired=1");
            // …and so must the browser's next page load.
            browser.goto(&format!("{}/ui/events", backend.url)).await;
            let landed = browser.path_and_query().await;
            // Only whether the browser still holds it and when it said it would expire (the
            // value is a session's tokens, which a message never shows).
            let held = session_value(&browser, DEFAULT_CLUSTER).await.is_some();
            let expires = cookie.expires();
            assert!(
                landed.starts_with("/ui/login?") && landed.contains("expired=1"),
                "landed on {landed}, not /ui/login?expired=1; the browser still holds the \
                 session cookie: {held} (it was set to expire at {expires:?})"
            );
            assert!(flash(&browser).await.contains("your session has expired"));
        })
        .await;
}

/// The events page and an event's detail at a desktop's and at a phone's width: no sideways
/// scrolling at either.
#[tokio::test(flavor = "multi_thread")]
async fn pages_fit_desktop_and_phone_widths() {
    let backend = Backend::start();
    post_event(&backend.admin().await, "narrow-host").await;
    let browser = Browser::start(&[&backend]).await;
    let backend = &backend;
    browser
        .run("pages_fit_desktop_and_phone_widths", |browser| async move {
            log_in(&browser, &backend.url, "admin", ADMIN_PASSWORD).await;
            for (width, height) in [(1280, 900), (390, 844)] {
                browser.set_window_size(width, height).await;
                browser.goto(&format!("{}/ui/events", backend.url)).await;
                browser.find(r#"tr.event[data-entity="narrow-host"]"#).await;
                assert_no_horizontal_overflow(&browser, &format!("/ui/events at {width} px")).await;
                let link = browser
                    .attr(
                        r#"tr.event[data-entity="narrow-host"] a.event-link"#,
                        "href",
                    )
                    .await
                    .expect("a link to the detail");
                assert!(link.ends_with("/default/narrow-host/disk"), "{link}");
                browser
                    .click_and_load(r#"tr.event[data-entity="narrow-host"] a.event-link"#)
                    .await;
                browser.find("pre#output").await;
                assert_no_horizontal_overflow(&browser, &format!("{link} at {width} px")).await;
            }
        })
        .await;
}

/// The README's screenshots: the events page and an event's detail at 1280 × 900, written to
/// `docs/screenshots/` only when `CAIRN_UI_SCREENSHOTS` is set; either way the pages are
/// checked for what the pictures show.
#[tokio::test(flavor = "multi_thread")]
async fn readme_screenshots() {
    // What the README shows: a gateway and its downstream `alpha`, each with events of its own.
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let keys = cairn_tests::FederationKeys::generate(keys_dir.path());
    let gateway = Backend::start_federated("gateway", &keys);
    let alpha = Backend::start_federated("alpha", &keys);
    let gateway_admin = gateway.admin().await;
    let alpha_admin = alpha.admin().await;
    gateway_admin
        .put_resource(&cairn_tests::cluster_registration(
            "alpha",
            &alpha.url,
            &alpha.ca(),
        ))
        .await
        .expect("register alpha on the gateway");
    let events: [(&Client, &str, &str, &[i64], &str); 8] = [
        (&gateway_admin, "web-1", "http", &[0, 0, 0], "HTTP OK: 200 in 0.012 s"),
        (&gateway_admin, "web-2", "http", &[0, 1, 2], "HTTP CRITICAL: connection refused"),
        (&gateway_admin, "db-1", "disk", &[0, 1], "DISK WARNING: 83% used on /var"),
        (&gateway_admin, "db-1", "load", &[0], "OK: load average 0.42, 0.38, 0.35"),
        (&alpha_admin, "edge-1", "http", &[0, 2, 2, 0, 2, 2, 2], "HTTP CRITICAL: 503 Service Unavailable from https://edge-1.alpha/health\nretried 3 times, last attempt 1.204 s"),
        (&alpha_admin, "edge-2", "http", &[0, 0], "HTTP OK: 200 in 0.020 s"),
        (&alpha_admin, "cache-1", "memory", &[3], "UNKNOWN: could not read /proc/meminfo"),
        (&alpha_admin, "cache-1", "disk", &[0, 1], "DISK WARNING: 81% used on /"),
    ];
    for (admin, entity, check, statuses, output) in events {
        for status in statuses {
            let event = json!({
                "entity": {"entity_class": "proxy", "metadata": {"name": entity}},
                "check": {
                    "metadata": {"name": check}, "status": status, "output": output, "interval": 60,
                    "command": format!("check-{check} --host {entity}"),
                },
            });
            admin
                .send(
                    reqwest::Method::POST,
                    "/api/core/v2/namespaces/default/events",
                    Some(&event),
                )
                .await
                .unwrap_or_else(|err| panic!("post the event of {entity}: {err}"));
        }
    }
    let save = std::env::var_os(ENV_UI_SCREENSHOTS).is_some();
    let docs = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
    let browser = Browser::start(&[&gateway, &alpha]).await;
    let gateway = &gateway;
    browser
        .run("readme_screenshots", |browser| async move {
            browser.set_window_size(1280, 800).await;
            log_in(&browser, &gateway.url, "admin", ADMIN_PASSWORD).await;
            browser.goto(&format!("{}/ui/events", gateway.url)).await;
            browser.find("table#events tr.event").await;
            assert_eq!(browser.find_all("table#events tr.event").await.len(), 8);
            assert_eq!(
                browser
                    .text(r#"tr.event[data-cluster="alpha"][data-entity="edge-1"] td.status"#)
                    .await,
                "CRITICAL"
            );
            if save {
                browser.screenshot(&docs.join("events.png")).await;
            }
            browser
                .click_and_load(r#"tr.event[data-entity="edge-1"] a.event-link"#)
                .await;
            assert!(browser
                .text("pre#output")
                .await
                .contains("503 Service Unavailable"));
            assert_eq!(browser.find_all("#history span.h").await.len(), 7);
            if save {
                browser.screenshot(&docs.join("event-detail.png")).await;
            }
        })
        .await;
}
