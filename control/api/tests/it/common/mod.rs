//! The test server: the router with a service that records every action.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ember_api::model::*;
use ember_api::{router, Action, ApiError, Credentials, Reply, Service};

pub const ACCESS_KEY: &str = "AKIDEMBERTEST";
pub const SECRET: &str = "ember-test-secret";
pub const ARN: &str = "arn:aws:lambda:us-east-1:123456789012:microvm-image:hello";
pub const ENCODED_ARN: &str =
    "arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Amicrovm-image%3Ahello";

/// Records every action and answers a few operations.
#[derive(Default)]
pub struct Recorder {
    pub actions: Mutex<Vec<Action>>,
}

#[async_trait::async_trait]
impl Service for Recorder {
    async fn handle(&self, action: Action) -> Result<Reply, ApiError> {
        self.actions.lock().unwrap().push(action.clone());
        match action {
            Action::ListTags(_) => Ok(Reply::ListTags(ListTagsResponse {
                tags: Some([("team".to_owned(), "ember".to_owned())].into()),
            })),
            Action::TagResource(_) => Ok(Reply::TagResource),
            Action::UntagResource(_) => Ok(Reply::UntagResource),
            Action::GetMicrovm(request) => {
                Err(ApiError::not_found("Microvm", &request.microvm_identifier))
            }
            Action::ListMicrovms(_) => Ok(Reply::ListMicrovms(ListMicrovmsResponse {
                next_token: None,
                items: vec![],
            })),
            // A reply for the wrong operation: the router must not send it.
            Action::SuspendMicrovm(_) => Ok(Reply::ResumeMicrovm(Empty {})),
            Action::CreateMicrovmImage(request) => {
                Ok(Reply::CreateMicrovmImage(MicrovmImageWithVersion {
                    image_arn: format!(
                        "arn:aws:lambda:us-east-1:123456789012:microvm-image:{}",
                        request.name
                    ),
                    name: request.name,
                    state: MicrovmImageState::Creating,
                    latest_active_image_version: None,
                    latest_failed_image_version: None,
                    created_at: Timestamp::from_unix_seconds(1_700_000_000.0).unwrap(),
                    config: request.config,
                    tags: request.tags,
                    updated_at: None,
                    image_version: "1".into(),
                }))
            }
            other => Err(ApiError::internal(format!(
                "{:?} not answered by the test",
                other.operation()
            ))),
        }
    }
}

pub async fn serve() -> (SocketAddr, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let credentials = Arc::new(Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET.into(),
    });
    let app = router(recorder.clone(), credentials);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, recorder)
}
