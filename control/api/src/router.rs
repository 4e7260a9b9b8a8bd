//! The HTTP surface: one route per operation from the operation table,
//! JSON errors for unknown paths and methods, SigV4 on everything, and one
//! log line per request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use axum::Router;

use crate::action::{Action, Operation, Reply};
use crate::error::{ApiError, ErrorKind};
use crate::request::parse_action;
use crate::schema::schema;
use crate::sigv4::{body_too_large, require_sigv4, Credentials, MAX_BODY_BYTES};

/// What emberd implements: one call per validated request.
#[async_trait::async_trait]
pub trait Service: Send + Sync + 'static {
    async fn handle(&self, action: Action) -> Result<Reply, ApiError>;
}

type SharedService = Arc<dyn Service>;

/// Marks a response with the operation that produced it, for the log line.
#[derive(Clone, Copy)]
struct OperationName(&'static str);

/// Every operation of the model behind SigV4 verification.
pub fn router(service: Arc<dyn Service>, credentials: Arc<Credentials>) -> Router {
    let mut by_path: BTreeMap<&'static str, MethodRouter<SharedService>> = BTreeMap::new();
    for &op in Operation::ALL {
        let handler = move |State(service): State<SharedService>,
                            labels: Result<Path<Vec<(String, String)>>, PathRejection>,
                            RawQuery(query): RawQuery,
                            body: Result<Bytes, BytesRejection>| async move {
            dispatch(op, service, labels, query, body).await
        };
        let filter = match MethodFilter::try_from(op.method()) {
            Ok(filter) => filter,
            // Every method in the table is a standard one; a test pins it.
            Err(_) => continue,
        };
        let methods = by_path.remove(op.path()).unwrap_or_default();
        by_path.insert(op.path(), methods.on(filter, handler));
    }
    let mut router = Router::new();
    for (path, methods) in by_path {
        router = router.route(path, methods);
    }
    router
        .fallback(unknown_operation)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(service)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(from_fn_with_state(credentials, require_sigv4))
        .layer(from_fn(log_request))
}

async fn dispatch(
    op: Operation,
    service: SharedService,
    labels: Result<Path<Vec<(String, String)>>, PathRejection>,
    query: Option<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let Path(labels) =
            labels.map_err(|e| ApiError::validation(format!("Invalid path parameter: {e}")))?;
        let body = body.map_err(|_| body_too_large())?;
        let action = parse_action(schema()?, op, &labels, query.as_deref(), &body)?;
        let reply = service.handle(action).await?;
        if reply.operation() != op {
            return Err(ApiError::internal(format!(
                "the service answered {} with a {} reply",
                op.name(),
                reply.operation().name()
            )));
        }
        reply
            .into_body()
            .map_err(|e| ApiError::internal(format!("cannot encode the reply: {e}")))
    }
    .await;
    let mut response = match result {
        Ok(Some(body)) => (
            op.success_status(),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Ok(None) => op.success_status().into_response(),
        Err(error) => {
            if error.status().is_server_error() {
                tracing::warn!(operation = op.name(), error = %error, "operation failed");
            }
            error.into_response()
        }
    };
    response.extensions_mut().insert(OperationName(op.name()));
    response
}

async fn unknown_operation(request: Request) -> ApiError {
    ApiError::new(
        ErrorKind::UnknownOperation,
        format!(
            "No operation matches {} {}",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!(
            "Method {} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Logs operation, status and latency, and stamps `x-amzn-RequestId`
/// (botocore exposes it as `ResponseMetadata.RequestId`).
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let request_id = new_request_id();
    let mut response = next.run(request).await;
    let operation = response
        .extensions()
        .get::<OperationName>()
        .map_or("-", |name| name.0);
    tracing::info!(
        request_id = %request_id,
        operation,
        %method,
        path = %path,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "api request"
    );
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amzn-requestid", value);
    }
    response
}

fn new_request_id() -> String {
    let hex = format!("{:032x}", rand::random::<u128>());
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}
