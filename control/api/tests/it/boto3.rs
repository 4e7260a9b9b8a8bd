//! The real client: boto3 (from the project venv, `scripts/setup-venv.sh`)
//! against the router on a socket. Skipped with a notice when the venv is
//! missing, since it is created outside cargo.

use crate::common;

use std::path::PathBuf;

use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_calls_round_trip() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join("build/venv/bin/python");
    if !python.exists() {
        eprintln!(
            "skipping: {} missing (run scripts/setup-venv.sh)",
            python.display()
        );
        return;
    }
    let (addr, recorder) = common::serve().await;
    let output = tokio::process::Command::new(python)
        .arg(root.join("control/api/tests/boto3_client.py"))
        .env("ENDPOINT", format!("http://{addr}"))
        .env("ACCESS_KEY", common::ACCESS_KEY)
        .env("SECRET", common::SECRET)
        .env("AWS_DATA_PATH", root.join("tests/api/models"))
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "boto3 script failed: {stderr}");
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();

    assert_eq!(out["list_tags"], json!({"team": "ember"}));
    assert_eq!(out["tag_status"], 204);
    assert_eq!(out["untag_status"], 204);
    assert_eq!(out["created"]["status"], 201);
    assert_eq!(out["created"]["imageArn"], common::ARN);
    assert_eq!(out["created"]["createdAt"], "2023-11-14T22:13:20+00:00");
    assert_eq!(out["created"]["request_id"].as_str().unwrap().len(), 36);
    assert_eq!(out["not_found"][0], "ResourceNotFoundException");
    assert_eq!(out["not_found"][1], 404);
    assert_eq!(out["invalid_name"][0], "ValidationException");
    assert_eq!(out["invalid_name"][1], 400);
    assert!(out["invalid_name"][2]
        .as_str()
        .unwrap()
        .contains("Value 'x y' at 'name'"));
    assert_eq!(out["pages"], json!([0]));
    assert_eq!(out["wrong_secret"][0], "InvalidSignatureException");
    assert_eq!(out["wrong_secret"][1], 403);

    let actions = recorder.actions.lock().unwrap();
    let untag = actions.iter().find_map(|a| match a {
        ember_api::Action::UntagResource(r) => Some(r.clone()),
        _ => None,
    });
    let untag = untag.unwrap();
    assert_eq!(untag.resource, common::ARN);
    assert_eq!(untag.tag_keys, ["team", "cost center"]);
}
