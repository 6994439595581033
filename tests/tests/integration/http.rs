//! The API's answers as curl sees them (curl is how Sensu's docs drive the API, and it speaks
//! HTTP/2 over TLS by default): every refusal given before the body was read (401, 403, 404,
//! 413) arrives as a complete response, over HTTP/2 and HTTP/1.1, one at a time and under load
//! (issue 14, finding 1); idle, slow and excess connections are bounded in count and time, and
//! the accept loop backs off at the file-descriptor limit, on the API and the agent listener
//! (finding 3).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_tests::bench::cpu_seconds;
use cairn_tests::{eventually, Backend, BackendOptions};

/// One curl run: the status it printed (`000` when it got no response) and its exit code.
fn curl(backend: &Backend, args: &[&str], body_file: &Path, path: &str) -> (String, i32, String) {
    let output = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(backend.ca_file())
        .args(args)
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()))
        .arg(format!("{}{path}", backend.url))
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    (
        status.to_owned(),
        output.status.code().unwrap_or(-1),
        format!("{body}{}", String::from_utf8_lossy(&output.stderr)),
    )
}

fn body_file(dir: &Path, name: &str, n_bytes: usize) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).expect("create the body file");
    file.write_all(&vec![b'a'; n_bytes])
        .expect("write the body");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refusals_arrive_whole_over_http2_and_http1() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    cairn_tests::create_user(&admin, "viewer", "viewer-pw-1").await;
    let key = cairn_tests::grant_api_key(&admin, "viewer").await;
    let admin_token = backend
        .client(cairn_api::client::Credentials::None)
        .login("admin", cairn_tests::ADMIN_PASSWORD)
        .await
        .expect("login")
        .access_token;
    let dir = tempfile::tempdir().expect("tempdir");
    // 300 KB: under the 512 KiB request limit, never read by a refusal. 3 MB: over the limit.
    let small = body_file(dir.path(), "small", 300_000);
    let large = body_file(dir.path(), "large", 3_000_000);
    let bad_token = "Authorization: Bearer not-a-token".to_owned();
    let viewer_key = format!("Authorization: Key {key}");
    let admin_bearer = format!("Authorization: Bearer {admin_token}");
    let cases = [
        (
            &bad_token,
            &small,
            "/api/core/v2/namespaces/default/checks/x",
            "401",
        ),
        (
            &bad_token,
            &large,
            "/api/core/v2/namespaces/default/checks/x",
            "401",
        ),
        (
            &viewer_key,
            &small,
            "/api/core/v2/namespaces/default/checks/x",
            "403",
        ),
        (
            &admin_bearer,
            &large,
            "/api/core/v2/namespaces/default/checks/x",
            "413",
        ),
        (&admin_bearer, &small, "/no/such/route", "404"),
    ];
    for version in ["--http2", "--http1.1"] {
        for (header, body, path, expected) in &cases {
            for _ in 0..3 {
                let (status, code, output) =
                    curl(&backend, &[version, "-X", "PUT", "-H", header], body, path);
                assert_eq!(
                    (status.as_str(), code),
                    (*expected, 0),
                    "{version} PUT {path} with {} bytes: {output}",
                    std::fs::metadata(body).map(|meta| meta.len()).unwrap_or(0)
                );
                assert!(
                    output.contains("\"message\""),
                    "no JSON error body: {output}"
                );
            }
        }
    }

    // Under load: 8 clients at once, 5 requests each, over HTTP/2.
    let results: Vec<(String, i32, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    (0..5)
                        .map(|_| {
                            curl(
                                &backend,
                                &["--http2", "-X", "PUT", "-H", &bad_token],
                                &small,
                                "/api/core/v2/namespaces/default/checks/x",
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("a curl thread"))
            .collect()
    });
    for (status, code, output) in results {
        assert_eq!((status.as_str(), code), ("401", 0), "under load: {output}");
    }
}

/// A TLS connection to the backend's API, trusting only its CA.
async fn tls_connect(backend: &Backend) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = cairn_api::client::tls_config_trusting(&backend.ca()).expect("a TLS config");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let socket = tokio::net::TcpStream::connect(backend.addr())
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a server name");
    connector
        .connect(name, socket)
        .await
        .expect("tls handshake")
}

/// How long until the server closes `stream` (a read gives end of file or an error), at most
/// `within`; `None` when it stayed open that long.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let reading = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, reading)
        .await
        .ok()
        .map(|()| started.elapsed())
}

/// Opens `count` TCP connections to `addr` that never start TLS, and asserts that the server
/// closes each within 20 s.
async fn idle_connections_are_closed(addr: &str, count: usize) {
    let mut idle = Vec::new();
    for _ in 0..count {
        idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    let closing = idle
        .iter_mut()
        .map(|socket| closed_after(socket, Duration::from_secs(20)));
    for (idx, closed) in futures::future::join_all(closing)
        .await
        .into_iter()
        .enumerate()
    {
        assert!(
            closed.is_some(),
            "idle TCP connection {idx} to {addr} was never closed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slow_and_excess_connections_are_bounded_in_count_and_time() {
    use tokio::io::AsyncWriteExt;
    let backend = Backend::start_with(
        BackendOptions::default()
            .args([
                "--api-handshake-timeout",
                "1",
                "--api-header-timeout",
                "1",
                "--api-idle-timeout",
                "2",
                "--api-max-connections",
                "64",
            ])
            .capture_logs(),
    );
    let health = || async {
        let started = Instant::now();
        backend
            .client(cairn_api::client::Credentials::None)
            .send(reqwest::Method::GET, "/health", None)
            .await
            .expect("/health");
        started.elapsed()
    };
    health().await;

    // 200 TCP connections that never start TLS: each is closed after the handshake timeout,
    // 64 at a time (the rest wait in the backlog for a slot).
    idle_connections_are_closed(backend.addr(), 200).await;
    assert!(health().await < Duration::from_secs(2));

    // Slowloris: headers one line every 300 ms, never finished: closed after the header
    // timeout (1 s).
    let mut slow = tls_connect(&backend).await;
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    let dripping = async {
        for idx in 0..100 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow
                .write_all(format!("X-Drip-{idx}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                return Instant::now();
            }
        }
        Instant::now()
    };
    let started = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(10), dripping)
        .await
        .expect("the slowloris connection was never closed");
    assert!(
        stopped - started < Duration::from_secs(8),
        "the slowloris connection lived {:?}",
        stopped - started
    );

    // An idle TLS connection after one request: closed once it has waited for the next
    // request's headers longer than the header timeout (1 s; HTTP/1.1), at the latest after
    // the idle timeout (2 s; HTTP/2 too).
    let mut kept = tls_connect(&backend).await;
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut head = vec![0u8; 4096];
    let n_bytes = tokio::io::AsyncReadExt::read(&mut kept, &mut head)
        .await
        .expect("read the answer");
    assert!(String::from_utf8_lossy(&head[..n_bytes]).starts_with("HTTP/1.1 200"));
    let lived = closed_after(&mut kept, Duration::from_secs(15))
        .await
        .expect("the idle TLS connection was never closed");
    assert!(
        lived >= Duration::from_millis(500) && lived < Duration::from_secs(5),
        "the idle connection lived {lived:?}"
    );

    // At the file-descriptor limit the accept loop backs off: it neither spins nor floods the
    // log, and serves again once the clients leave.
    at_the_fd_limit(&backend, backend.addr(), "api listener: accept failed").await;
    eventually(
        "/health after the flood",
        Duration::from_secs(10),
        || async {
            let answered = tokio::time::timeout(
                Duration::from_secs(2),
                backend.client(cairn_api::client::Credentials::None).send(
                    reqwest::Method::GET,
                    "/health",
                    None,
                ),
            )
            .await;
            match answered {
                Ok(Ok(_)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// Lowers the backend's soft open-files limit to 48, floods `addr` with 100 connections for
/// 3 s, and asserts that the accept loop neither spun (< 1 s of CPU) nor logged `failure` more
/// than twice; then restores the limit.
async fn at_the_fd_limit(backend: &Backend, addr: &str, failure: &str) {
    let pid = backend.pid();
    // The backend raised its soft limit to the hard one it inherited from this process; only
    // the soft limit is lowered (raising a hard limit needs privileges).
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("read the open files limit");
    let set_limit = |soft: u64| {
        let status = std::process::Command::new("prlimit")
            .args([
                "--pid",
                &pid.to_string(),
                &format!("--nofile={soft}:{hard}"),
            ])
            .status()
            .expect("run prlimit");
        assert!(status.success(), "prlimit failed");
    };
    set_limit(48);
    let mut flood = Vec::new();
    for _ in 0..100 {
        if let Ok(socket) = tokio::net::TcpStream::connect(addr).await {
            flood.push(socket);
        }
    }
    let log_before = backend.log().matches(failure).count();
    let cpu_before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    let logged = backend.log().matches(failure).count() - log_before;
    assert!(
        cpu < 1.0,
        "the backend used {cpu:.2} s of CPU in 3 s at the fd limit"
    );
    assert!(logged <= 2, "{logged} lines '{failure}' in 3 s");
    drop(flood);
    set_limit(hard);
}

/// The agent listener is bounded like the API's: idle TCP connections are closed after the
/// handshake timeout, the cap holds the rest in the backlog, the lines about refused
/// handshakes (anyone who reaches the port can cause them) are rate-limited, and at the
/// file-descriptor limit the accept loop backs off and then serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_listener_is_bounded_in_count_time_and_log() {
    use tokio::io::AsyncReadExt;
    let backend = Backend::start_with(
        BackendOptions::default()
            .args([
                "--agent-handshake-timeout",
                "1",
                "--agent-max-connections",
                "32",
            ])
            // Refused handshakes are logged at info.
            .env("CAIRN_LOG", "info")
            .capture_logs(),
    );
    let addr = backend.agent_addr.clone();

    // 100 TCP connections that never start TLS: each closed after the handshake timeout, 32 at
    // a time.
    idle_connections_are_closed(&addr, 100).await;

    // 100 handshakes without a client certificate: each refused, but logged at most twice.
    let refused = || async {
        let config = cairn_api::client::tls_config_trusting(&backend.ca()).expect("a TLS config");
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let socket = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a server name");
        // TLS 1.3: the client finishes first; the server's refusal comes on the first read.
        if let Ok(mut tls) = connector.connect(name, socket).await {
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(0) | Err(_))),
                "a session without a client certificate was not refused: {read:?}"
            );
        }
    };
    let log_before = backend.log().matches("agent tls handshake refused").count();
    for _ in 0..100 {
        refused().await;
    }
    let logged = backend.log().matches("agent tls handshake refused").count() - log_before;
    assert!(
        (1..=2).contains(&logged),
        "{logged} lines about 100 refused handshakes"
    );

    at_the_fd_limit(&backend, &addr, "agent listener: accept failed").await;
    // It serves again: a handshake is answered (and refused, having no certificate).
    eventually(
        "the agent listener after the flood",
        Duration::from_secs(10),
        || async {
            tokio::time::timeout(Duration::from_secs(2), refused())
                .await
                .map_err(|_| "no answer")
        },
    )
    .await;
}
