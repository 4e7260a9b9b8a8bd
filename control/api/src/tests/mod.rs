//! Unit tests: the operation and error tables against the model, request
//! parsing and validation, error responses, pagination, idempotency.

mod parsing;

use crate::action::{Operation, Reply};
use crate::error::{ApiError, ErrorKind};
use crate::model::*;
use crate::pagination::{page, PageToken};
use crate::schema::schema;
use axum::response::IntoResponse;

#[test]
fn operation_table_matches_the_model() {
    let model = &schema().unwrap().model;
    // The model has 24 operations (images, versions, builds, managed images,
    // microVMs, tokens, tags).
    assert_eq!(Operation::ALL.len(), 24);
    assert_eq!(model.operations.len(), Operation::ALL.len());
    for &op in Operation::ALL {
        let def = &model.operations[op.name()];
        assert_eq!(def.http.method, op.method().as_str(), "{}", op.name());
        assert_eq!(def.http.request_uri, op.path(), "{}", op.name());
        assert_eq!(
            def.http.response_code.unwrap_or(200),
            op.success_status().as_u16(),
            "{}",
            op.name()
        );
        assert_eq!(def.input.as_ref().unwrap().shape, op.input_shape());
        // Unit replies exactly where the model has no output.
        let unit = matches!(op, Operation::TagResource | Operation::UntagResource);
        assert_eq!(def.output.is_none(), unit, "{}", op.name());
    }
}

#[test]
fn error_kinds_match_the_model_exceptions() {
    let model = &schema().unwrap().model;
    let exceptions: Vec<&String> = model
        .shapes
        .iter()
        .filter(|(_, shape)| shape.error.is_some())
        .map(|(name, _)| name)
        .collect();
    assert_eq!(exceptions.len(), ErrorKind::MODELED.len());
    for kind in ErrorKind::MODELED {
        let shape = &model.shapes[kind.name()];
        let error = shape.error.as_ref().unwrap();
        assert_eq!(error.http_status_code, kind.status().as_u16(), "{kind}");
        let mut body_members: Vec<&str> = shape
            .members
            .iter()
            .filter(|(name, m)| m.location.is_none() && *name != "message")
            .map(|(name, _)| name.as_str())
            .collect();
        let mut declared = kind.extra_members().to_vec();
        body_members.sort();
        declared.sort();
        assert_eq!(body_members, declared, "{kind}");
        let has_header = shape
            .members
            .values()
            .any(|m| m.location_name.as_deref() == Some("Retry-After"));
        assert_eq!(has_header, kind.has_retry_after(), "{kind}");
    }
    // Every error an operation lists is one we can produce.
    for def in model.operations.values() {
        for error in &def.errors {
            assert!(ErrorKind::MODELED.iter().any(|k| k.name() == error.shape));
        }
    }
}

#[tokio::test]
async fn error_response_has_botocore_shape() {
    let error = ApiError::conflict("MicrovmImage", "hello", "image is being deleted");
    let response = error.into_response();
    assert_eq!(response.status(), 409);
    assert_eq!(response.headers()["x-amzn-errortype"], "ConflictException");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "message": "image is being deleted",
            "__type": "ConflictException",
            "resourceId": "hello",
            "resourceType": "MicrovmImage",
        })
    );

    // Members the shape does not declare are never written.
    let error = ApiError::validation("bad")
        .with_resource("X", "y")
        .with_retry_after(3);
    let response = error.into_response();
    assert!(response.headers().get("retry-after").is_none());
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"message": "bad", "__type": "ValidationException"})
    );

    let throttled = ApiError::new(ErrorKind::Throttling, "slow down")
        .with_retry_after(7)
        .into_response();
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "7");

    let legacy = ApiError::new(ErrorKind::TooManyRequests, "slow").body();
    assert_eq!(legacy["Type"], "User");
    assert_eq!(
        ApiError::new(ErrorKind::Service, "x").body()["Type"],
        "Service"
    );
}

#[test]
fn replies_encode_model_member_names() {
    let reply = Reply::GetMicrovmImage(MicrovmImage {
        image_arn: "arn:aws:lambda:us-east-1:123456789012:microvm-image:hello".into(),
        name: "hello".into(),
        state: MicrovmImageState::CreateFailed,
        latest_active_image_version: None,
        latest_failed_image_version: Some("1".into()),
        created_at: Timestamp::from_unix_seconds(1_700_000_000.25).unwrap(),
        tags: None,
        updated_at: None,
    });
    let body = reply.into_body().unwrap().unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "imageArn": "arn:aws:lambda:us-east-1:123456789012:microvm-image:hello",
            "name": "hello",
            "state": "CREATE_FAILED",
            "latestFailedImageVersion": "1",
            "createdAt": 1_700_000_000.25,
        })
    );
    assert_eq!(Reply::TagResource.into_body().unwrap(), None);
    let tags = Reply::ListTags(ListTagsResponse {
        tags: Some([("team".to_owned(), "ember".to_owned())].into()),
    });
    assert_eq!(
        tags.into_body().unwrap().unwrap(),
        br#"{"Tags":{"team":"ember"}}"#.to_vec()
    );
    let resources = serde_json::to_value(Resources {
        minimum_memory_in_mib: 512,
    })
    .unwrap();
    assert_eq!(resources, serde_json::json!({"minimumMemoryInMiB": 512}));
    assert_eq!(serde_json::to_value(Architecture::Arm64).unwrap(), "ARM_64");
}

#[test]
fn timestamps_round_trip_as_epoch_seconds() {
    let t = Timestamp::from_unix_seconds(1_732_000_000.123).unwrap();
    let json = serde_json::to_string(&t).unwrap();
    assert_eq!(json, "1732000000.123");
    assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    assert!(Timestamp::from_unix_seconds(f64::NAN).is_none());
    assert!(
        Timestamp::from_unix_seconds(-1.5)
            .unwrap()
            .as_unix_seconds()
            < 0.0
    );
}

#[test]
fn page_tokens_round_trip_and_refuse_tampering() {
    let token = PageToken::new("ListMicrovms", "vm-0042").unwrap();
    let encoded = token.encode();
    assert!(encoded.len() <= crate::pagination::MAX_TOKEN_CHARS);
    assert_eq!(PageToken::decode("ListMicrovms", &encoded).unwrap(), token);

    let invalid = |result: Result<PageToken, ApiError>| {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert_eq!(err.message(), "invalid nextToken");
    };
    invalid(PageToken::decode("ListMicrovmImages", &encoded));
    for i in 0..encoded.len() {
        let mut bytes = encoded.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        if tampered != encoded {
            assert!(
                PageToken::decode("ListMicrovms", &tampered).is_err(),
                "byte {i}"
            );
        }
    }
    invalid(PageToken::decode("ListMicrovms", ""));
    invalid(PageToken::decode("ListMicrovms", &"A".repeat(2049)));
    invalid(PageToken::decode("ListMicrovms", "not base64!"));
    assert!(PageToken::new("s", "x".repeat(2000)).is_err());
}

#[test]
fn page_walks_a_listing_without_gaps() {
    let items: Vec<u32> = (0..120).collect();
    let key = |n: &u32| format!("{n:05}");
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let (chunk, next) = page(items.clone(), key, "scope", token.as_deref(), Some(50)).unwrap();
        pages += 1;
        assert!(chunk.len() <= 50);
        seen.extend(chunk);
        match next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, items);
    let (all, next) = page(vec![1u32, 2], key, "scope", None, None).unwrap();
    assert_eq!((all, next), (vec![1, 2], None));
    assert!(page(items, key, "other", token.as_deref(), None).is_err() || token.is_none());
}
