//! The endpoint as people use it: curl and Python's standard library,
//! against `http://127.0.0.1:PORT` with no DNS set-up.

use crate::common::*;
use tokio::process::Command;

/// Runs `program args`; `None` when the program is not installed here.
async fn run(program: &str, args: &[&str]) -> Option<(bool, String)> {
    match Command::new(program).args(args).output().await {
        Ok(out) => Some((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{program} is not installed; skipping it");
            None
        }
        Err(e) => panic!("{program}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_python_reach_the_guest() {
    let h = Harness::new().await;
    let addr = h.proxy.bind_vm("vm-a").await.unwrap();
    let token = h.endpoint_token("vm-a");
    let url = format!("http://{addr}/from-client");
    let auth = format!("X-aws-proxy-auth: {token}");

    if let Some((ok, out)) = run(
        "curl",
        &[
            "-sS",
            "--fail-with-body",
            "-H",
            &auth,
            "-H",
            "X-aws-proxy-port: 8080",
            "--data-binary",
            "curl-body",
            &url,
        ],
    )
    .await
    {
        assert!(ok, "{out}");
        assert!(
            out.contains("\"/from-client\"") && out.contains("curl-body"),
            "{out}"
        );
        assert!(!out.contains(&token), "{out}");
    }
    // Without a token curl sees the proxy's 403 JSON and its error code.
    if let Some((ok, out)) = run("curl", &["-sS", "-i", "-w", "%{http_code}", &url]).await {
        assert!(ok, "{out}");
        assert!(out.ends_with("403") && out.contains("\"message\""), "{out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("x-aws-proxy-error: unauthorized"),
            "{out}"
        );
    }
    // curl's own HTTP/2 with prior knowledge, no port header: 8080.
    if let Some((ok, out)) = run(
        "curl",
        &[
            "-sS",
            "--fail-with-body",
            "--http2-prior-knowledge",
            "-w",
            " %{http_version}",
            "-H",
            &auth,
            &url,
        ],
    )
    .await
    {
        // A curl built without HTTP/2 says so; nothing to check then.
        if !out.contains("does not support HTTP2") && !out.contains("option --http2") {
            assert!(ok, "{out}");
            assert!(
                out.contains("\"/from-client\"") && out.ends_with(" 2"),
                "{out}"
            );
        }
    }

    let script = r#"
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=b"py-body", headers={
    "X-aws-proxy-auth": sys.argv[2], "X-aws-proxy-port": "8080"})
with urllib.request.urlopen(req) as r:
    print(r.status, r.read().decode())
"#;
    if let Some((ok, out)) = run("python3", &["-c", script, &url, &token]).await {
        assert!(ok, "{out}");
        assert!(out.starts_with("200 ") && out.contains("py-body"), "{out}");
    }
}
