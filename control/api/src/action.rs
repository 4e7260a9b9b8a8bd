//! The 23 operations: one `Action` variant per validated request, one
//! `Reply` variant per output. The operation table (method, path, status)
//! is checked against the model by a test.

use axum::http::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::model::*;

/// Generates `Operation`, `Action` and `Reply` from one table, so the three
/// can never disagree on a variant. Operations without output (HTTP 204)
/// get unit `Reply` variants.
macro_rules! operations {
    (
        with_output { $(
            $op:ident: $method:ident $path:literal => $status:literal,
                $input_shape:literal, $request:ty => $reply:ty;
        )+ }
        without_output { $(
            $nop:ident: $nmethod:ident $npath:literal => $nstatus:literal,
                $ninput_shape:literal, $nrequest:ty;
        )+ }
    ) => {
        /// One operation of the service model.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Operation { $($op,)+ $($nop,)+ }

        impl Operation {
            pub const ALL: &'static [Operation] = &[$(Operation::$op,)+ $(Operation::$nop,)+];

            /// The model's operation name.
            pub fn name(self) -> &'static str {
                match self {
                    $(Operation::$op => stringify!($op),)+
                    $(Operation::$nop => stringify!($nop),)+
                }
            }

            pub fn method(self) -> Method {
                match self {
                    $(Operation::$op => Method::$method,)+
                    $(Operation::$nop => Method::$nmethod,)+
                }
            }

            /// `requestUri` of the model; its `{label}` syntax is axum's too.
            pub fn path(self) -> &'static str {
                match self { $(Operation::$op => $path,)+ $(Operation::$nop => $npath,)+ }
            }

            /// `http.responseCode` of the model.
            pub fn success_status(self) -> StatusCode {
                match self {
                    $(Operation::$op => status_code($status),)+
                    $(Operation::$nop => status_code($nstatus),)+
                }
            }

            /// The model's input shape name.
            pub fn input_shape(self) -> &'static str {
                match self {
                    $(Operation::$op => $input_shape,)+
                    $(Operation::$nop => $ninput_shape,)+
                }
            }
        }

        /// A validated request: URI labels, query string and body in one struct.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Action { $($op($request),)+ $($nop($nrequest),)+ }

        impl Action {
            pub fn operation(&self) -> Operation {
                match self {
                    $(Action::$op(_) => Operation::$op,)+
                    $(Action::$nop(_) => Operation::$nop,)+
                }
            }

            /// Types an input that already passed model validation.
            pub(crate) fn from_input(op: Operation, input: Value) -> Result<Action, ApiError> {
                let invalid =
                    |e: serde_json::Error| ApiError::validation(format!("Invalid request: {e}"));
                Ok(match op {
                    $(Operation::$op => Action::$op(serde_json::from_value(input).map_err(invalid)?),)+
                    $(Operation::$nop => Action::$nop(serde_json::from_value(input).map_err(invalid)?),)+
                })
            }

            /// The request as JSON, in the model's member names.
            pub fn to_json(&self) -> Value {
                let encoded = match self {
                    $(Action::$op(request) => serde_json::to_value(request),)+
                    $(Action::$nop(request) => serde_json::to_value(request),)+
                };
                // Plain structs of strings, numbers and string-keyed maps always encode.
                encoded.unwrap_or(Value::Null)
            }
        }

        /// What the service answers: one variant per operation.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Reply { $($op($reply),)+ $($nop,)+ }

        impl Reply {
            pub fn operation(&self) -> Operation {
                match self {
                    $(Reply::$op(_) => Operation::$op,)+
                    $(Reply::$nop => Operation::$nop,)+
                }
            }

            /// The JSON body, or `None` for operations without output.
            pub(crate) fn into_body(self) -> Result<Option<Vec<u8>>, serde_json::Error> {
                match self {
                    $(Reply::$op(output) => serde_json::to_vec(&output).map(Some),)+
                    $(Reply::$nop => Ok(None),)+
                }
            }
        }
    };
}

const fn status_code(code: u16) -> StatusCode {
    match code {
        201 => StatusCode::CREATED,
        204 => StatusCode::NO_CONTENT,
        _ => StatusCode::OK,
    }
}

operations! {
    with_output {
    CreateMicrovmAuthToken: POST "/2025-09-09/microvms/{microvmIdentifier}/auth-token" => 200,
        "CreateMicrovmAuthTokenRequest", CreateMicrovmAuthTokenRequest => CreateMicrovmAuthTokenResponse;
    CreateMicrovmImage: POST "/2025-09-09/microvm-images" => 201,
        "CreateMicrovmImageRequest", CreateMicrovmImageRequest => CreateMicrovmImageResponse;
    CreateMicrovmShellAuthToken: POST "/2025-09-09/microvms/{microvmIdentifier}/shell-auth-token" => 200,
        "CreateMicrovmShellAuthTokenRequest", CreateMicrovmShellAuthTokenRequest => CreateMicrovmShellAuthTokenResponse;
    DeleteMicrovmImage: DELETE "/2025-09-09/microvm-images/{imageIdentifier}" => 200,
        "DeleteMicrovmImageInput", DeleteMicrovmImageInput => DeleteMicrovmImageOutput;
    DeleteMicrovmImageVersion: DELETE "/2025-09-09/microvm-images/{imageIdentifier}/versions/{imageVersion}" => 200,
        "DeleteMicrovmImageVersionInput", DeleteMicrovmImageVersionInput => DeleteMicrovmImageVersionOutput;
    GetMicrovm: GET "/2025-09-09/microvms/{microvmIdentifier}" => 200,
        "GetMicrovmRequest", GetMicrovmRequest => GetMicrovmResponse;
    GetMicrovmImage: GET "/2025-09-09/microvm-images/{imageIdentifier}" => 200,
        "GetMicrovmImageInput", GetMicrovmImageInput => GetMicrovmImageOutput;
    GetMicrovmImageBuild: GET "/2025-09-09/microvm-images/{imageIdentifier}/versions/{imageVersion}/builds/{buildId}" => 200,
        "GetMicrovmImageBuildInput", GetMicrovmImageBuildInput => GetMicrovmImageBuildOutput;
    GetMicrovmImageVersion: GET "/2025-09-09/microvm-images/{imageIdentifier}/versions/{imageVersion}" => 200,
        "GetMicrovmImageVersionInput", GetMicrovmImageVersionInput => GetMicrovmImageVersionOutput;
    ListManagedMicrovmImageVersions: GET "/2025-09-09/managed-microvm-images/{imageIdentifier}/versions" => 200,
        "ListManagedMicrovmImageVersionsInput", ListManagedMicrovmImageVersionsInput => ListManagedMicrovmImageVersionsOutput;
    ListManagedMicrovmImages: GET "/2025-09-09/managed-microvm-images" => 200,
        "ListManagedMicrovmImagesInput", ListManagedMicrovmImagesInput => ListManagedMicrovmImagesOutput;
    ListMicrovmImageBuilds: GET "/2025-09-09/microvm-images/{imageIdentifier}/versions/{imageVersion}/builds" => 200,
        "ListMicrovmImageBuildsInput", ListMicrovmImageBuildsInput => ListMicrovmImageBuildsOutput;
    ListMicrovmImageVersions: GET "/2025-09-09/microvm-images/{imageIdentifier}/versions" => 200,
        "ListMicrovmImageVersionsInput", ListMicrovmImageVersionsInput => ListMicrovmImageVersionsOutput;
    ListMicrovmImages: GET "/2025-09-09/microvm-images" => 200,
        "ListMicrovmImagesRequest", ListMicrovmImagesRequest => ListMicrovmImagesResponse;
    ListMicrovms: GET "/2025-09-09/microvms" => 200,
        "ListMicrovmsRequest", ListMicrovmsRequest => ListMicrovmsResponse;
    ListTags: GET "/2017-03-31/tags/{Resource}" => 200,
        "ListTagsRequest", ListTagsRequest => ListTagsResponse;
    ResumeMicrovm: POST "/2025-09-09/microvms/{microvmIdentifier}/resume" => 200,
        "ResumeMicrovmRequest", ResumeMicrovmRequest => ResumeMicrovmResponse;
    RunMicrovm: POST "/2025-09-09/microvms" => 200,
        "RunMicrovmRequest", RunMicrovmRequest => RunMicrovmResponse;
    SuspendMicrovm: POST "/2025-09-09/microvms/{microvmIdentifier}/suspend" => 200,
        "SuspendMicrovmRequest", SuspendMicrovmRequest => SuspendMicrovmResponse;
    TerminateMicrovm: DELETE "/2025-09-09/microvms/{microvmIdentifier}" => 200,
        "TerminateMicrovmRequest", TerminateMicrovmRequest => TerminateMicrovmResponse;
    UpdateMicrovmImage: PUT "/2025-09-09/microvm-images/{imageIdentifier}" => 200,
        "UpdateMicrovmImageRequest", UpdateMicrovmImageRequest => UpdateMicrovmImageResponse;
    UpdateMicrovmImageVersion: PATCH "/2025-09-09/microvm-images/{imageIdentifier}/versions/{imageVersion}" => 200,
        "UpdateMicrovmImageVersionRequest", UpdateMicrovmImageVersionRequest => UpdateMicrovmImageVersionResponse;
    }
    without_output {
    TagResource: POST "/2017-03-31/tags/{Resource}" => 204,
        "TagResourceRequest", TagResourceRequest;
    UntagResource: DELETE "/2017-03-31/tags/{Resource}" => 204,
        "UntagResourceRequest", UntagResourceRequest;
    }
}

impl Action {
    /// For operations with an idempotency token: the token the client sent
    /// and a hash of every other parameter. The server keeps
    /// token → (hash, reply); the same token with another hash is a
    /// `ConflictException`.
    pub fn idempotency(&self) -> Option<(&str, String)> {
        let token = match self {
            Action::CreateMicrovmImage(request) => request.client_token.as_deref()?,
            Action::UpdateMicrovmImage(request) => request.client_token.as_deref()?,
            Action::RunMicrovm(request) => request.client_token.as_deref()?,
            _ => return None,
        };
        let mut params = self.to_json();
        if let Value::Object(fields) = &mut params {
            fields.remove("clientToken");
        }
        let mut hasher = Sha256::new();
        hasher.update(self.operation().name().as_bytes());
        hasher.update([0]);
        hasher.update(canonical_json(&params).as_bytes());
        Some((token, hex(&hasher.finalize())))
    }
}

/// JSON text with object keys sorted at every level, whatever map type
/// serde_json was built with.
fn canonical_json(value: &Value) -> String {
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Sorted<'a> {
        Object(std::collections::BTreeMap<&'a str, Sorted<'a>>),
        Array(Vec<Sorted<'a>>),
        Leaf(&'a Value),
    }
    fn sort(value: &Value) -> Sorted<'_> {
        match value {
            Value::Object(fields) => {
                Sorted::Object(fields.iter().map(|(k, v)| (k.as_str(), sort(v))).collect())
            }
            Value::Array(items) => Sorted::Array(items.iter().map(sort).collect()),
            leaf => Sorted::Leaf(leaf),
        }
    }
    serde_json::to_string(&sort(value)).unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
