//! The error every operation returns, shaped the way botocore parses
//! rest-json errors: the name in `X-Amzn-ErrorType` and `__type`, the text in
//! `message`, plus the members the model's exception shape declares.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// Every error a client can see: the model's exception shapes first, then
/// the protocol-level ones AWS's front door returns before an operation runs
/// (authentication, routing, body size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    AccessDenied,
    Conflict,
    InsufficientCapacity,
    InternalServer,
    InvalidParameterValue,
    ResourceConflict,
    ResourceNotFound,
    Service,
    ServiceQuotaExceeded,
    Throttling,
    TooManyRequests,
    Validation,
    // Not in the model: the gateway's own answers.
    MissingAuthenticationToken,
    IncompleteSignature,
    InvalidSignature,
    UnrecognizedClient,
    UnknownOperation,
    MethodNotAllowed,
    RequestEntityTooLarge,
}

impl ErrorKind {
    /// The kinds that are exception shapes in the service model.
    pub const MODELED: [ErrorKind; 12] = [
        ErrorKind::AccessDenied,
        ErrorKind::Conflict,
        ErrorKind::InsufficientCapacity,
        ErrorKind::InternalServer,
        ErrorKind::InvalidParameterValue,
        ErrorKind::ResourceConflict,
        ErrorKind::ResourceNotFound,
        ErrorKind::Service,
        ErrorKind::ServiceQuotaExceeded,
        ErrorKind::Throttling,
        ErrorKind::TooManyRequests,
        ErrorKind::Validation,
    ];

    /// The error code clients match on (the shape name for modeled errors).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::AccessDenied => "AccessDeniedException",
            ErrorKind::Conflict => "ConflictException",
            ErrorKind::InsufficientCapacity => "InsufficientCapacityException",
            ErrorKind::InternalServer => "InternalServerException",
            ErrorKind::InvalidParameterValue => "InvalidParameterValueException",
            ErrorKind::ResourceConflict => "ResourceConflictException",
            ErrorKind::ResourceNotFound => "ResourceNotFoundException",
            ErrorKind::Service => "ServiceException",
            ErrorKind::ServiceQuotaExceeded => "ServiceQuotaExceededException",
            ErrorKind::Throttling => "ThrottlingException",
            ErrorKind::TooManyRequests => "TooManyRequestsException",
            ErrorKind::Validation => "ValidationException",
            ErrorKind::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            ErrorKind::IncompleteSignature => "IncompleteSignatureException",
            ErrorKind::InvalidSignature => "InvalidSignatureException",
            ErrorKind::UnrecognizedClient => "UnrecognizedClientException",
            ErrorKind::UnknownOperation => "UnknownOperationException",
            ErrorKind::MethodNotAllowed => "MethodNotAllowedException",
            ErrorKind::RequestEntityTooLarge => "RequestEntityTooLargeException",
        }
    }

    /// The modeled kind whose shape is named `name` (what
    /// [`name`](Self::name) gives), e.g. from another node's answer.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        Self::MODELED.into_iter().find(|k| k.name() == name)
    }

    /// The HTTP status: `error.httpStatusCode` of the shape for modeled errors.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::Validation | ErrorKind::InvalidParameterValue => StatusCode::BAD_REQUEST,
            ErrorKind::ServiceQuotaExceeded => StatusCode::PAYMENT_REQUIRED,
            ErrorKind::AccessDenied
            | ErrorKind::MissingAuthenticationToken
            | ErrorKind::IncompleteSignature
            | ErrorKind::InvalidSignature
            | ErrorKind::UnrecognizedClient => StatusCode::FORBIDDEN,
            ErrorKind::ResourceNotFound | ErrorKind::UnknownOperation => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Conflict | ErrorKind::ResourceConflict => StatusCode::CONFLICT,
            ErrorKind::RequestEntityTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Throttling | ErrorKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::InternalServer | ErrorKind::InsufficientCapacity | ErrorKind::Service => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// Body members the exception shape declares besides `message`; only
    /// these are ever written, so a client never sees an undeclared member.
    pub fn extra_members(self) -> &'static [&'static str] {
        match self {
            ErrorKind::Conflict | ErrorKind::ResourceNotFound => &["resourceId", "resourceType"],
            ErrorKind::ServiceQuotaExceeded => {
                &["resourceId", "resourceType", "serviceCode", "quotaCode"]
            }
            ErrorKind::Throttling => &["serviceCode", "quotaCode"],
            ErrorKind::InvalidParameterValue
            | ErrorKind::ResourceConflict
            | ErrorKind::Service
            | ErrorKind::TooManyRequests => &["Type"],
            _ => &[],
        }
    }

    /// Whether the shape carries `retryAfterSeconds` in the `Retry-After` header.
    pub fn has_retry_after(self) -> bool {
        matches!(self, ErrorKind::Throttling | ErrorKind::InternalServer)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Optional members of an exception shape; written only where the shape
/// declares them (see [`ErrorKind::extra_members`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorDetails {
    pub resource_id: Option<String>,
    pub resource_type: Option<String>,
    pub service_code: Option<String>,
    pub quota_code: Option<String>,
    pub retry_after_seconds: Option<u32>,
}

/// An error as the client will see it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ApiError {
    kind: ErrorKind,
    message: String,
    // Boxed: most errors have no details, and a small error keeps every
    // `Result` small.
    details: Box<ErrorDetails>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            details: Box::default(),
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InternalServer, message)
    }

    /// `ResourceNotFoundException` naming what was looked for.
    pub fn not_found(resource_type: &str, resource_id: &str) -> Self {
        Self::new(
            ErrorKind::ResourceNotFound,
            format!("{resource_type} '{resource_id}' not found"),
        )
        .with_resource(resource_type, resource_id)
    }

    /// `ConflictException` about one resource (e.g. its state forbids the call).
    pub fn conflict(resource_type: &str, resource_id: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message).with_resource(resource_type, resource_id)
    }

    pub fn with_resource(mut self, resource_type: &str, resource_id: &str) -> Self {
        self.details.resource_type = Some(resource_type.to_owned());
        self.details.resource_id = Some(resource_id.to_owned());
        self
    }

    pub fn with_quota(mut self, service_code: &str, quota_code: &str) -> Self {
        self.details.service_code = Some(service_code.to_owned());
        self.details.quota_code = Some(quota_code.to_owned());
        self
    }

    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.details.retry_after_seconds = Some(seconds);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn details(&self) -> &ErrorDetails {
        &self.details
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The JSON body: `message`, `__type` and the declared extra members.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("message".into(), Value::String(self.message.clone()));
        body.insert("__type".into(), Value::String(self.kind.name().into()));
        for member in self.kind.extra_members() {
            let value = match *member {
                "resourceId" => self.details.resource_id.clone(),
                "resourceType" => self.details.resource_type.clone(),
                "serviceCode" => self.details.service_code.clone(),
                "quotaCode" => self.details.quota_code.clone(),
                // Lambda's legacy exceptions say who is at fault this way.
                "Type" => Some(
                    if self.status().is_server_error() {
                        "Service"
                    } else {
                        "User"
                    }
                    .into(),
                ),
                _ => None,
            };
            if let Some(value) = value {
                body.insert((*member).into(), Value::String(value));
            }
        }
        Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut response = (self.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_static(self.kind.name()),
        );
        if let (true, Some(seconds)) = (
            self.kind.has_retry_after(),
            self.details.retry_after_seconds,
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
