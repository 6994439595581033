//! Browser tests: Debian's real Chromium driven over WebDriver (`/usr/bin/chromedriver`) with
//! fantoccini, for the backend's web UI.
//!
//! [`Browser::start`] runs a chromedriver of its own on a free loopback port (read back from
//! its stdout) and opens one headless Chromium session with a fresh profile; dropping the
//! browser kills chromedriver's process group, Chromium included. [`Browser::run`] runs a test
//! body and, when it panics, saves a screenshot of the page under
//! `target/browser-screenshots/<test>.png` and names the file in the panic message.
//!
//! Chromium trusts the backends a test gives it, and no other certificate: their cluster CA's
//! and API certificate's public keys go on `--ignore-certificate-errors-spki-list` (see
//! [`Browser::start`] for why that flag and not the system trust store). A missing Chromium or
//! chromedriver fails the test; it never skips (the test command installs both).
//!
//! Every wait here is bounded: the page-load and script timeouts of the session, the element
//! waits of [`Browser::find`] ([`FIND_WITHIN`]) and [`eventually`] for navigations.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use fantoccini::cookies::Cookie;
use fantoccini::elements::Element;
use fantoccini::wd::{Capabilities, TimeoutConfiguration};
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{eventually, Backend};

/// Debian's Chromium, the browser the tests drive (`scripts/test` installs `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Debian's chromedriver, matching [`CHROMIUM`]'s version (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long [`Browser::find`] and the methods built on it wait for an element to appear: far
/// above a page of the UI rendering on loopback, so a failure means the element never came.
pub const FIND_WITHIN: Duration = Duration::from_secs(10);

/// How long a navigation may take (the session's page-load timeout, and the wait of
/// [`Browser::click_and_load`]).
pub const LOAD_WITHIN: Duration = Duration::from_secs(30);

/// How long chromedriver may take to say which port it listens on.
const DRIVER_START_WITHIN: Duration = Duration::from_secs(20);

/// How long a script run by [`Browser::execute`] may take (a `fetch` included).
const SCRIPT_WITHIN: Duration = Duration::from_secs(30);

/// The line chromedriver prints once it listens, followed by the port and a period.
const DRIVER_READY: &str = "ChromeDriver was started successfully on port ";

/// The arguments of every Chromium: headless, no sandbox (the tests run as root in a
/// container), and nothing that talks to the network on its own (updates, sync, QUIC).
const CHROMIUM_ARGS: [&str; 10] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

/// A headless Chromium session over WebDriver, with its own chromedriver and profile.
///
/// Cloning is cheap and shares the session; the driver is killed when the last clone drops.
/// The methods panic with a message naming the selector and the page when WebDriver fails,
/// since they run inside tests.
#[derive(Clone)]
pub struct Browser {
    client: Client,
    /// Held so that the driver lives as long as any clone of the session.
    _driver: Arc<Driver>,
}

/// A chromedriver process in a process group of its own, with the profile directory of its one
/// Chromium; killed (the whole group) on drop.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

// === impl Browser ===

impl Browser {
    /// Starts chromedriver and a headless Chromium that trusts the HTTPS APIs of `backends`
    /// (and nothing else beyond the system's roots).
    ///
    /// Trust: the SHA-256 of the public key (SPKI) of each backend's cluster CA and API
    /// certificate goes on `--ignore-certificate-errors-spki-list`, which Chromium honours only
    /// with a `--user-data-dir` (given: a fresh temp dir). Chromium on Linux would also take a
    /// CA added to the NSS database under `$HOME/.pki/nssdb`, but writing that database needs
    /// NSS's `certutil` (package `libnss3-tools`, not installed by the test command), and the
    /// flag is narrower than WebDriver's `acceptInsecureCerts` (which accepts any certificate):
    /// a server with another key still fails with a certificate error. The API certificate is
    /// pinned besides the CA because Chromium compares the keys of the chain the server sends,
    /// and the API sends its certificate alone.
    ///
    /// # Panics
    /// When Chromium or chromedriver is missing (the test fails; it never skips), when
    /// chromedriver does not report its port within 20 s, or when the session cannot be made.
    pub async fn start(backends: &[&Backend]) -> Browser {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(program).is_file(),
                "{program} is missing: install Debian's `chromium` and `chromium-driver` \
                 (scripts/test does when they are missing)"
            );
        }
        let profile = tempfile::tempdir().expect("a temp dir for Chromium's profile");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|&arg| arg.to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let pinned: Vec<String> = backends
            .iter()
            .flat_map(|backend| [backend.ca_file(), backend.data_dir.join("tls/api.pem")])
            .flat_map(|file| spki_hashes(&file))
            .collect();
        if !pinned.is_empty() {
            args.push(format!(
                "--ignore-certificate-errors-spki-list={}",
                pinned.join(",")
            ));
        }
        let driver = Arc::new(Driver::start(profile));
        let mut capabilities = Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({"binary": CHROMIUM, "args": args}),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .unwrap_or_else(|err| panic!("open a Chromium session through chromedriver: {err}"));
        client
            .update_timeouts(TimeoutConfiguration::new(
                Some(SCRIPT_WITHIN),
                Some(LOAD_WITHIN),
                Some(Duration::ZERO),
            ))
            .await
            .expect("set the session's timeouts");
        Browser {
            client,
            _driver: driver,
        }
    }

    /// Runs a test body with this browser; when the body panics, saves a screenshot of the page
    /// as `target/browser-screenshots/<test_name>.png` and panics again with the body's message
    /// and the screenshot's path. Closes the WebDriver session at the end either way.
    ///
    /// ```ignore
    /// browser.run("login_page", |browser| async move {
    ///     browser.goto(&format!("{}/ui/login", backend.url)).await;
    ///     assert_eq!(browser.title().await, "Login · Cairn");
    /// }).await;
    /// ```
    ///
    /// # Panics
    /// When the body panics.
    pub async fn run<F, Fut>(self, test_name: &str, body: F)
    where
        F: FnOnce(Browser) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let outcome = AssertUnwindSafe(body(self.clone())).catch_unwind().await;
        let Err(panic) = outcome else {
            self.close().await;
            return;
        };
        let message = panic_message(panic.as_ref());
        let path = screenshot_dir().join(format!("{test_name}.png"));
        let url = self
            .client
            .current_url()
            .await
            .map_or_else(|err| format!("(no url: {err})"), |url| url.to_string());
        let saved = match self.try_screenshot(&path).await {
            Ok(()) => format!("screenshot of {url}: {}", path.display()),
            Err(err) => format!("no screenshot of {url}: {err}"),
        };
        self.close().await;
        panic!("{message}\n{saved}");
    }

    /// Closes the WebDriver session (Chromium exits); the driver process goes when the last
    /// clone drops.
    pub async fn close(self) {
        if let Err(err) = self.client.clone().close().await {
            eprintln!("closing the Chromium session failed: {err}");
        }
    }

    /// The fantoccini client, for what the helpers here do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` and waits until it has loaded (at most [`LOAD_WITHIN`]).
    ///
    /// # Panics
    /// When the navigation fails or times out.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|err| panic!("open {url}: {err}"));
    }

    /// The current page's URL.
    ///
    /// # Panics
    /// When WebDriver fails.
    pub async fn current_url(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("the current url")
            .to_string()
    }

    /// The current URL's path and query (`/ui/login?expired=1`), which tests compare against
    /// the UI's routes without the backend's address.
    ///
    /// # Panics
    /// When WebDriver fails.
    pub async fn path_and_query(&self) -> String {
        let url = self.client.current_url().await.expect("the current url");
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The page's `<title>`.
    ///
    /// # Panics
    /// When WebDriver fails.
    pub async fn title(&self) -> String {
        self.client.title().await.expect("the page title")
    }

    /// The page's HTML as it is now, for failure messages.
    ///
    /// # Panics
    /// When WebDriver fails.
    pub async fn source(&self) -> String {
        self.client.source().await.expect("the page source")
    }

    /// The first element matching the CSS selector `css`, waiting up to [`FIND_WITHIN`] for one
    /// to appear.
    ///
    /// # Panics
    /// When none appears in time; the message names the selector and the page.
    pub async fn find(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(FIND_WITHIN)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(err) => {
                let url = self.current_url().await;
                panic!(
                    "no element `{css}` on {url} within {FIND_WITHIN:?} ({err}); the page:\n{}",
                    self.source().await
                )
            }
        }
    }

    /// Every element matching `css` now, without waiting (empty when there is none): for
    /// asserting that something is absent from a loaded page.
    ///
    /// # Panics
    /// When WebDriver fails.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("find `{css}`: {err}"))
    }

    /// Whether an element matches `css` now (no waiting).
    ///
    /// # Panics
    /// When WebDriver fails.
    pub async fn exists(&self, css: &str) -> bool {
        !self.find_all(css).await.is_empty()
    }

    /// Replaces the value of the input matching `css` with `text`.
    ///
    /// # Panics
    /// As [`Browser::find`], or when the element takes no text.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        element
            .clear()
            .await
            .unwrap_or_else(|err| panic!("clear `{css}`: {err}"));
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|err| panic!("type into `{css}`: {err}"));
    }

    /// Clicks the element matching `css`.
    ///
    /// # Panics
    /// As [`Browser::find`], or when the element cannot be clicked.
    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|err| panic!("click `{css}`: {err}"));
    }

    /// Clicks the element matching `css` (a submit button, a link) and waits until another
    /// document has replaced the current one and finished loading, at most [`LOAD_WITHIN`].
    ///
    /// The current document is marked with a property of `window` first; the new document is
    /// the one without it, so an element that both pages have is never read off the old one.
    ///
    /// # Panics
    /// As [`Browser::click`], or when no new page has loaded in time.
    pub async fn click_and_load(&self, css: &str) {
        self.execute("window.__cairnOldPage = true;", vec![]).await;
        self.click(css).await;
        self.wait_for_new_page(&format!("a new page after clicking `{css}`"))
            .await;
    }

    /// Waits until the document marked by [`Browser::click_and_load`] (or by a script that set
    /// `window.__cairnOldPage`) has been replaced by a loaded one.
    ///
    /// # Panics
    /// When no new page has loaded within [`LOAD_WITHIN`].
    pub async fn wait_for_new_page(&self, what: &str) {
        let script =
            "return window.__cairnOldPage === undefined && document.readyState === 'complete';";
        eventually(what, LOAD_WITHIN, || async {
            // A script can fail while the old document unloads; that is "not yet".
            match self.client.execute(script, vec![]).await {
                Ok(Value::Bool(true)) => Ok(()),
                Ok(other) => Err(format!("loaded: {other}")),
                Err(err) => Err(err.to_string()),
            }
        })
        .await;
    }

    /// The visible text of the first element matching `css` (waiting as [`Browser::find`]).
    ///
    /// # Panics
    /// As [`Browser::find`].
    pub async fn text(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .unwrap_or_else(|err| panic!("the text of `{css}`: {err}"))
    }

    /// The attribute `name` of the first element matching `css` (waiting as [`Browser::find`]).
    ///
    /// # Panics
    /// As [`Browser::find`].
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.find(css)
            .await
            .attr(name)
            .await
            .unwrap_or_else(|err| panic!("the attribute {name} of `{css}`: {err}"))
    }

    /// Resizes the window to `width` × `height` CSS pixels.
    ///
    /// # Panics
    /// When WebDriver fails.
    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|err| panic!("resize the window to {width}x{height}: {err}"));
    }

    /// Saves a PNG screenshot of the viewport as `path`, creating its directory.
    ///
    /// # Panics
    /// When the screenshot cannot be taken or written.
    pub async fn screenshot(&self, path: &Path) {
        self.try_screenshot(path)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
    }

    /// Every cookie of the current page's site, `HttpOnly` ones included.
    ///
    /// # Panics
    /// When WebDriver fails.
    pub async fn cookies(&self) -> Vec<Cookie<'static>> {
        self.client.get_all_cookies().await.expect("the cookies")
    }

    /// The cookie `name` of the current page's site, if it is set.
    ///
    /// # Panics
    /// When WebDriver fails.
    pub async fn cookie(&self, name: &str) -> Option<Cookie<'static>> {
        self.cookies()
            .await
            .into_iter()
            .find(|cookie| cookie.name() == name)
    }

    /// Runs the JavaScript function body `script` with `args` (`arguments[0]`, …) in the page and
    /// returns what it returns; a returned promise is awaited (at most 30 s).
    ///
    /// # Panics
    /// When the script throws or WebDriver fails.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|err| panic!("run the script {script:?}: {err}"))
    }

    async fn try_screenshot(&self, path: &Path) -> Result<(), String> {
        let png = self
            .client
            .screenshot()
            .await
            .map_err(|err| format!("take a screenshot: {err}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|err| format!("create {}: {err}", dir.display()))?;
        }
        std::fs::write(path, png).map_err(|err| format!("write {}: {err}", path.display()))
    }
}

// === impl Driver ===

impl Driver {
    /// Starts chromedriver on a free loopback port (`--port=0`) in a new process group, and
    /// reads the port from its stdout.
    fn start(profile: tempfile::TempDir) -> Driver {
        let mut child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            // Its own group, so that dropping the driver kills Chromium with it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("start {CHROMEDRIVER}: {err}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (port_sender, port_receiver) = std::sync::mpsc::channel();
        // Reads the port, then keeps draining stdout so that chromedriver never meets a full
        // or closed pipe.
        std::thread::spawn(move || {
            let mut printed = String::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line.strip_prefix(DRIVER_READY) {
                    let port = port.trim_end_matches('.').parse::<u16>();
                    let _ = port_sender.send(port.map_err(|err| format!("{line:?}: {err}")));
                } else {
                    printed.push_str(&line);
                    printed.push('\n');
                }
            }
            let _ = port_sender.send(Err(format!("chromedriver's stdout ended:\n{printed}")));
        });
        // A blocking wait of at most DRIVER_START_WITHIN, in practice well under a second.
        let port = match port_receiver.recv_timeout(DRIVER_START_WITHIN) {
            Ok(Ok(port)) => port,
            Ok(Err(printed)) => {
                kill_group(&mut child);
                panic!("chromedriver did not report its port: {printed}")
            }
            Err(err) => {
                kill_group(&mut child);
                panic!("chromedriver did not report its port within {DRIVER_START_WITHIN:?}: {err}")
            }
        };
        Driver {
            child,
            port,
            _profile: profile,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Kills the process group that `child` leads (chromedriver and the Chromium it started) and
/// reaps `child`.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// The base64 SHA-256 of the public key (SubjectPublicKeyInfo) of every certificate in the PEM
/// file `path`, as `--ignore-certificate-errors-spki-list` takes them.
///
/// # Panics
/// When the file cannot be read or holds no certificate.
fn spki_hashes(path: &Path) -> Vec<String> {
    let pem = std::fs::read(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    let hashes: Vec<String> = x509_parser::pem::Pem::iter_from_buffer(&pem)
        .map(|pem| {
            let pem = pem.unwrap_or_else(|err| panic!("parse {}: {err}", path.display()));
            let (_, certificate) = x509_parser::parse_x509_certificate(&pem.contents)
                .unwrap_or_else(|err| panic!("parse the certificate in {}: {err}", path.display()));
            let spki = certificate.tbs_certificate.subject_pki.raw;
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki))
        })
        .collect();
    assert!(!hashes.is_empty(), "no certificate in {}", path.display());
    hashes
}

/// `target/browser-screenshots/`, beside the test executable's `target/<profile>/deps/`.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    exe.ancestors()
        .nth(3)
        .expect("test executables live in target/<profile>/deps")
        .join("browser-screenshots")
}

/// The text of a panic's payload (`panic!` with a message gives a `String` or a `&str`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|&text| text.to_owned()))
        .unwrap_or_else(|| "the test panicked (with a payload that is not text)".to_owned())
}
