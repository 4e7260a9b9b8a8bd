//! Requests → actions: where each member is read from, and validation
//! messages for every kind of model constraint.

use serde_json::json;

use crate::action::{Action, Operation};
use crate::error::ErrorKind;
use crate::model::*;
use crate::request::parse_action;
use crate::schema::schema;

fn parse(
    op: Operation,
    labels: &[(&str, &str)],
    query: Option<&str>,
    body: &str,
) -> Result<Action, String> {
    let labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse_action(schema().unwrap(), op, &labels, query, body.as_bytes()).map_err(|e| {
        assert_eq!(e.kind(), ErrorKind::Validation, "{e}");
        e.message().to_owned()
    })
}

fn create_image(overrides: serde_json::Value) -> String {
    let mut body = json!({
        "name": "hello",
        "baseImageArn": "arn:aws:lambda:us-east-1:aws:microvm-image:debian12",
        "buildRoleArn": "arn:aws:iam::123456789012:role/build",
        "codeArtifact": {"uri": "s3://bucket/app.zip"},
    });
    for (k, v) in overrides.as_object().unwrap() {
        body[k] = v.clone();
    }
    body.to_string()
}

fn create_error(overrides: serde_json::Value) -> String {
    parse(
        Operation::CreateMicrovmImage,
        &[],
        None,
        &create_image(overrides),
    )
    .unwrap_err()
}

#[test]
fn body_members_become_a_typed_request() {
    let body = create_image(json!({
        "logging": {"cloudWatch": {"logGroup": "/ember/app"}},
        "hooks": {"port": 8080, "microvmHooks": {"run": "ENABLED", "runTimeoutInSeconds": 30}},
        "cpuConfigurations": [{"architecture": "X86_64"}],
        "tags": {"team": "ember"},
        "somethingNew": {"ignored": true},
    }));
    let Action::CreateMicrovmImage(request) =
        parse(Operation::CreateMicrovmImage, &[], None, &body).unwrap()
    else {
        panic!("wrong action");
    };
    assert_eq!(request.name, "hello");
    assert_eq!(
        request.config.code_artifact.uri.as_deref(),
        Some("s3://bucket/app.zip")
    );
    assert_eq!(
        request
            .config
            .logging
            .unwrap()
            .cloud_watch
            .unwrap()
            .log_group
            .as_deref(),
        Some("/ember/app")
    );
    let hooks = request.config.hooks.unwrap();
    assert_eq!(hooks.port, Some(8080));
    assert_eq!(hooks.microvm_hooks.unwrap().run, Some(HookState::Enabled));
    assert_eq!(
        request.config.cpu_configurations.unwrap()[0].architecture,
        Architecture::X86_64
    );
}

#[test]
fn labels_and_query_are_read_by_location() {
    let action = parse(
        Operation::ListMicrovmImageBuilds,
        &[("imageIdentifier", "hello"), ("imageVersion", "3")],
        Some("maxResults=10&architecture=ARM_64&nextToken=abc%3D&imageVersion=ignored"),
        "",
    )
    .unwrap();
    let Action::ListMicrovmImageBuilds(request) = action else {
        panic!()
    };
    assert_eq!(request.image_identifier, "hello");
    assert_eq!(request.image_version, "3");
    assert_eq!(request.max_results, Some(10));
    assert_eq!(request.architecture, Some(Architecture::Arm64));
    assert_eq!(request.next_token.as_deref(), Some("abc="));

    // A body cannot override a label.
    let action = parse(
        Operation::UpdateMicrovmImageVersion,
        &[("imageIdentifier", "hello"), ("imageVersion", "3")],
        None,
        r#"{"status": "INACTIVE", "imageIdentifier": "other"}"#,
    )
    .unwrap();
    let Action::UpdateMicrovmImageVersion(request) = action else {
        panic!()
    };
    assert_eq!(
        (request.image_identifier.as_str(), request.status),
        ("hello", MicrovmImageVersionStatus::Inactive)
    );
}

#[test]
fn tag_operations_use_capitalised_members_and_repeated_keys() {
    let arn = "arn:aws:lambda:us-west-2:123456789012:microvm-image:my-image";
    let action = parse(
        Operation::UntagResource,
        &[("Resource", arn)],
        Some("tagKeys=team&tagKeys=cost%20center"),
        "",
    )
    .unwrap();
    let Action::UntagResource(request) = action else {
        panic!()
    };
    assert_eq!(request.resource, arn);
    assert_eq!(request.tag_keys, vec!["team", "cost center"]);

    let action = parse(
        Operation::TagResource,
        &[("Resource", arn)],
        None,
        r#"{"Tags": {"née": "ü", "a b": "c:d/e"}}"#,
    )
    .unwrap();
    let Action::TagResource(request) = action else {
        panic!()
    };
    assert_eq!(request.tags["née"], "ü");

    let err = parse(Operation::UntagResource, &[("Resource", arn)], None, "").unwrap_err();
    assert_eq!(err, "1 validation error detected: Value null at 'TagKeys' failed to satisfy constraint: Member must not be null");
    let err = parse(
        Operation::ListTags,
        &[("Resource", "arn:aws:s3:::bucket")],
        None,
        "",
    )
    .unwrap_err();
    assert!(err.contains("at 'Resource' failed to satisfy constraint: Member must satisfy regular expression pattern: arn:(aws"), "{err}");
    let err = parse(
        Operation::TagResource,
        &[("Resource", arn)],
        None,
        r#"{"Tags": {"bad*key": "v"}}"#,
    )
    .unwrap_err();
    assert!(err.contains("Value 'bad*key' at 'Tags.key'"), "{err}");
}

#[test]
fn string_constraints_use_aws_messages() {
    assert_eq!(
        create_error(json!({"name": "x y"})),
        "1 validation error detected: Value 'x y' at 'name' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9-_]+"
    );
    assert_eq!(
        create_error(json!({"name": "a".repeat(65)})),
        format!("1 validation error detected: Value '{}' at 'name' failed to satisfy constraint: Member must have length less than or equal to 64", "a".repeat(65))
    );
    // Lengths count characters, not bytes.
    parse(
        Operation::CreateMicrovmImage,
        &[],
        None,
        &create_image(json!({"description": "ü".repeat(3000)})),
    )
    .unwrap();
    let err = create_error(json!({"buildRoleArn": "arn:aws:iam::12:role/x"}));
    assert!(
        err.contains("at 'buildRoleArn'") && err.contains("regular expression pattern"),
        "{err}"
    );
    let err = create_error(json!({"cpuConfigurations": [{"architecture": "RISCV"}]}));
    assert_eq!(err, "1 validation error detected: Value 'RISCV' at 'cpuConfigurations.1.architecture' failed to satisfy constraint: Member must satisfy enum value set: [ARM_64, X86_64]");
}

#[test]
fn required_members_and_types() {
    let err = parse(Operation::CreateMicrovmImage, &[], None, "{}").unwrap_err();
    assert!(err.starts_with("4 validation errors detected: "), "{err}");
    for member in ["baseImageArn", "buildRoleArn", "codeArtifact", "name"] {
        assert!(
            err.contains(&format!(
                "Value null at '{member}' failed to satisfy constraint: Member must not be null"
            )),
            "{err}"
        );
    }
    let err = create_error(json!({"name": 5}));
    assert!(
        err.contains("at 'name' failed to satisfy constraint: Member must be of type string"),
        "{err}"
    );
    let err = create_error(json!({"hooks": {"port": "80"}}));
    assert!(
        err.contains("'hooks.port'") && err.contains("Member must be of type integer"),
        "{err}"
    );
}

#[test]
fn unions_need_exactly_one_member() {
    let err = create_error(json!({"codeArtifact": {}}));
    assert!(err.contains("at 'codeArtifact' failed to satisfy constraint: Member must have exactly one member set, found 0"), "{err}");
    let err = create_error(json!({"logging": {"disabled": {}, "cloudWatch": {"logGroup": "g"}}}));
    assert!(
        err.contains("at 'logging'") && err.contains("found 2"),
        "{err}"
    );
    parse(
        Operation::CreateMicrovmImage,
        &[],
        None,
        &create_image(json!({"logging": {"disabled": {}}})),
    )
    .unwrap();

    let token = |ports: serde_json::Value| {
        let body = json!({"expirationInMinutes": 10, "allowedPorts": ports}).to_string();
        parse(
            Operation::CreateMicrovmAuthToken,
            &[("microvmIdentifier", "vm-1")],
            None,
            &body,
        )
    };
    let Action::CreateMicrovmAuthToken(request) =
        token(json!([{"port": 8080}, {"range": {"startPort": 1, "endPort": 2}}, {"allPorts": {}}]))
            .unwrap()
    else {
        panic!()
    };
    assert_eq!(request.allowed_ports.len(), 3);
    assert!(token(json!([{"port": 1, "allPorts": {}}]))
        .unwrap_err()
        .contains("'allowedPorts.1'"));
    assert!(token(json!([]))
        .unwrap_err()
        .contains("Member must have length greater than or equal to 1"));
    assert!(token(json!([{"port": 70000}]))
        .unwrap_err()
        .contains("Member must have value less than or equal to 65535"));
}

#[test]
fn collection_sizes_and_integer_ranges() {
    let many: serde_json::Map<String, serde_json::Value> =
        (0..101).map(|i| (format!("K{i}"), json!("v"))).collect();
    let err = create_error(json!({"environmentVariables": many}));
    assert!(err.contains("at 'environmentVariables' failed to satisfy constraint: Member must have length less than or equal to 100"), "{err}");
    let err = create_error(json!({"egressNetworkConnectors": ["a", "b"]}));
    assert!(
        err.contains("Member must have length less than or equal to 1"),
        "{err}"
    );

    let run = |duration: i64| {
        let body =
            json!({"imageIdentifier": "hello", "maximumDurationInSeconds": duration}).to_string();
        parse(Operation::RunMicrovm, &[], None, &body)
    };
    run(1).unwrap();
    run(28_800).unwrap();
    assert!(run(0)
        .unwrap_err()
        .contains("Member must have value greater than or equal to 1"));
    assert!(run(28_801)
        .unwrap_err()
        .contains("Member must have value less than or equal to 28800"));
    assert!(run(1 << 40)
        .unwrap_err()
        .contains("Member must be of type integer"));

    // The idle floor (the model's 60 s) is emberd's to apply, so
    // `--min-idle-seconds` can lower it; the model still bounds the type.
    let idle = |secs: i64| {
        let body = json!({"imageIdentifier": "hello", "idlePolicy": {"maxIdleDurationSeconds": secs, "suspendedDurationSeconds": 0, "autoResumeEnabled": true}}).to_string();
        parse(Operation::RunMicrovm, &[], None, &body)
    };
    idle(59).unwrap();
    let err = idle(-1).unwrap_err();
    assert!(
        err.contains("'idlePolicy.maxIdleDurationSeconds'")
            && err.contains("greater than or equal to 0"),
        "{err}"
    );
    assert!(idle(1 << 40).is_err());
}

#[test]
fn query_integers_must_parse_and_respect_bounds() {
    let err = parse(Operation::ListMicrovms, &[], Some("maxResults=ten"), "").unwrap_err();
    assert_eq!(err, "1 validation error detected: Value 'ten' at 'maxResults' failed to satisfy constraint: Member must be an integer");
    let err = parse(Operation::ListMicrovms, &[], Some("maxResults=51"), "").unwrap_err();
    assert!(
        err.contains("Value '51' at 'maxResults'") && err.contains("less than or equal to 50"),
        "{err}"
    );
    parse(Operation::ListMicrovms, &[], Some("maxResults=50"), "").unwrap();
    let err = parse(Operation::ListMicrovms, &[], Some(&"a=b&".repeat(5000)), "").unwrap_err();
    assert!(err.contains("query string is longer"), "{err}");
}

#[test]
fn malformed_bodies_are_validation_errors() {
    let err = parse(Operation::RunMicrovm, &[], None, "{\"imageIdentifier\": ").unwrap_err();
    assert!(
        err.starts_with("The request body is not valid JSON"),
        "{err}"
    );
    let err = parse(Operation::RunMicrovm, &[], None, "[1, 2]").unwrap_err();
    assert_eq!(err, "The request body must be a JSON object");
    // Operations without body members ignore whatever body was sent.
    parse(
        Operation::SuspendMicrovm,
        &[("microvmIdentifier", "vm-1")],
        None,
        "not json",
    )
    .unwrap();
}

#[test]
fn sensitive_values_are_not_echoed() {
    let body =
        json!({"imageIdentifier": "hello", "runHookPayload": "s3cr3t".repeat(1000)}).to_string();
    let err = parse(Operation::RunMicrovm, &[], None, &body).unwrap_err();
    assert!(!err.contains("s3cr3t"), "{err}");
    assert!(err.contains("Value at 'runHookPayload'"), "{err}");
}

#[test]
fn idempotency_hash_ignores_only_the_token() {
    let action = |overrides: serde_json::Value| {
        parse(
            Operation::CreateMicrovmImage,
            &[],
            None,
            &create_image(overrides),
        )
        .unwrap()
    };
    let first = action(json!({"clientToken": "t1", "tags": {"b": "2", "a": "1"}}));
    let same = action(json!({"clientToken": "t2", "tags": {"a": "1", "b": "2"}}));
    let other = action(json!({"clientToken": "t1", "name": "other"}));
    let (token, hash) = first.idempotency().unwrap();
    assert_eq!(token, "t1");
    assert_eq!(same.idempotency().unwrap().1, hash);
    assert_ne!(other.idempotency().unwrap().1, hash);
    assert!(action(json!({})).idempotency().is_none());
    let get = parse(
        Operation::GetMicrovm,
        &[("microvmIdentifier", "vm")],
        None,
        "",
    )
    .unwrap();
    assert!(get.idempotency().is_none());
}
