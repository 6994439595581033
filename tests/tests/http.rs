//! The API's answers as curl sees them (curl is how Sensu's docs drive the API, and it speaks
//! HTTP/2 over TLS by default): every refusal given before the body was read (401, 403, 404,
//! 413) arrives as a complete response, over HTTP/2 and HTTP/1.1, one at a time and under load
//! (issue 14, finding 1).

use std::io::Write;
use std::path::Path;
use std::process::Command;

use cairn_tests::Backend;
use serde_json::json;

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
    admin
        .send(
            reqwest::Method::POST,
            "/api/core/v2/users",
            Some(&json!({"username": "viewer", "password": "viewer-pw-1", "groups": []})),
        )
        .await
        .expect("create a user without roles");
    let key = admin
        .send(
            reqwest::Method::POST,
            "/api/core/v2/apikeys",
            Some(&json!({"username": "viewer"})),
        )
        .await
        .expect("grant a key");
    let key = key
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .and_then(|location| location.rsplit('/').next())
        .expect("the key in Location")
        .to_owned();
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
