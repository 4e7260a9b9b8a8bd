//! The service model, embedded, and a validator that checks request JSON
//! against its shapes. The constraints are the model's own (required,
//! length, pattern, range, enum, union), so they cannot drift from the
//! contract the clients were generated from.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// The botocore model the AWS CLI and boto3 use (the repository's pinned copy).
pub const SERVICE_MODEL: &str =
    include_str!("../../../tests/api/models/lambda-microvms/2025-09-09/service-2.json");

/// At most this many violations are spelled out in one message.
const MAX_REPORTED: usize = 10;
/// Values quoted in messages are cut to this many characters.
const MAX_QUOTED_CHARS: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the embedded service model is not valid JSON: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("pattern {pattern:?} of shape {shape} does not compile: {source}")]
    Pattern {
        shape: String,
        pattern: String,
        source: regex::Error,
    },
}

#[derive(Debug, Deserialize)]
pub struct Model {
    pub operations: BTreeMap<String, OperationDef>,
    pub shapes: BTreeMap<String, Shape>,
}

#[derive(Debug, Deserialize)]
pub struct OperationDef {
    pub http: HttpDef,
    pub input: Option<ShapeRef>,
    pub output: Option<ShapeRef>,
    #[serde(default)]
    pub errors: Vec<ShapeRef>,
}

#[derive(Debug, Deserialize)]
pub struct HttpDef {
    pub method: String,
    #[serde(rename = "requestUri")]
    pub request_uri: String,
    #[serde(rename = "responseCode")]
    pub response_code: Option<u16>,
}

#[derive(Debug, Deserialize)]
pub struct ShapeRef {
    pub shape: String,
}

#[derive(Debug, Deserialize)]
pub struct Member {
    pub shape: String,
    pub location: Option<String>,
    #[serde(rename = "locationName")]
    pub location_name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorTrait {
    #[serde(rename = "httpStatusCode")]
    pub http_status_code: u16,
}

#[derive(Debug, Deserialize)]
pub struct Shape {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub members: BTreeMap<String, Member>,
    #[serde(default)]
    pub required: Vec<String>,
    pub member: Option<ShapeRef>,
    pub key: Option<ShapeRef>,
    pub value: Option<ShapeRef>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub pattern: Option<String>,
    #[serde(rename = "enum")]
    pub enum_values: Option<Vec<String>>,
    #[serde(default)]
    pub union: bool,
    #[serde(default)]
    pub sensitive: bool,
    pub error: Option<ErrorTrait>,
}

/// Integer shapes whose `min` the service applies itself: emberd's
/// `--min-idle-seconds` may lower the idle floor below the model's 60 s
/// for tests and demos (it defaults to the model's value).
const SERVICE_CHECKED_MINIMUM: &[&str] = &["IdlePolicyMaxIdleDurationSecondsInteger"];

/// The parsed model with every pattern compiled once.
pub struct Schema {
    pub model: Model,
    patterns: HashMap<String, Regex>,
}

impl Schema {
    pub fn parse(text: &str) -> Result<Schema, SchemaError> {
        let model: Model = serde_json::from_str(text)?;
        let mut patterns = HashMap::new();
        for (name, shape) in &model.shapes {
            if let Some(pattern) = &shape.pattern {
                // Smithy patterns match the whole value.
                let regex = Regex::new(&format!("^(?:{pattern})$")).map_err(|source| {
                    SchemaError::Pattern {
                        shape: name.clone(),
                        pattern: pattern.clone(),
                        source,
                    }
                })?;
                patterns.insert(name.clone(), regex);
            }
        }
        Ok(Schema { model, patterns })
    }

    pub fn shape(&self, name: &str) -> Option<&Shape> {
        self.model.shapes.get(name)
    }

    /// Checks `value` against shape `shape`; `Err` carries one AWS-style
    /// `ValidationException` listing the violations.
    pub fn validate(&self, shape: &str, value: &Value) -> Result<(), ApiError> {
        let mut violations = Vec::new();
        self.check(shape, value, "", &mut violations);
        if violations.is_empty() {
            return Ok(());
        }
        let count = violations.len();
        violations.truncate(MAX_REPORTED);
        let plural = if count == 1 { "error" } else { "errors" };
        Err(ApiError::validation(format!(
            "{count} validation {plural} detected: {}",
            violations.join("; ")
        )))
    }

    fn check(&self, shape_name: &str, value: &Value, path: &str, out: &mut Vec<String>) {
        let Some(shape) = self.shape(shape_name) else {
            out.push(format!("Value at '{path}' has unknown shape {shape_name}"));
            return;
        };
        let fail = |out: &mut Vec<String>, constraint: String| {
            out.push(format!(
                "{} at '{path}' failed to satisfy constraint: {constraint}",
                quote(value, shape.sensitive)
            ));
        };
        match (shape.kind.as_str(), value) {
            ("structure", Value::Object(fields)) => {
                for name in &shape.required {
                    if fields.get(name).map_or(true, Value::is_null) {
                        out.push(format!(
                            "Value null at '{}' failed to satisfy constraint: Member must not be null",
                            join(path, name)
                        ));
                    }
                }
                let mut set = 0;
                for (name, member) in &shape.members {
                    match fields.get(name) {
                        None | Some(Value::Null) => {}
                        Some(field) => {
                            set += 1;
                            self.check(&member.shape, field, &join(path, name), out);
                        }
                    }
                }
                if shape.union && set != 1 {
                    fail(
                        out,
                        format!("Member must have exactly one member set, found {set}"),
                    );
                }
            }
            ("string", Value::String(text)) => {
                let chars = text.chars().count() as i64;
                check_bounds(shape, chars, "length", |c| fail(out, c));
                if let Some(allowed) = &shape.enum_values {
                    if !allowed.iter().any(|a| a == text) {
                        fail(
                            out,
                            format!(
                                "Member must satisfy enum value set: [{}]",
                                allowed.join(", ")
                            ),
                        );
                    }
                }
                if let (Some(regex), Some(pattern)) =
                    (self.patterns.get(shape_name), &shape.pattern)
                {
                    if !regex.is_match(text) {
                        fail(
                            out,
                            format!("Member must satisfy regular expression pattern: {pattern}"),
                        );
                    }
                }
            }
            ("integer" | "long", Value::Number(number)) => match number.as_i64() {
                Some(n) if SERVICE_CHECKED_MINIMUM.contains(&shape_name) => {
                    if n < 0 || i32::try_from(n).is_err() {
                        fail(
                            out,
                            "Member must have value greater than or equal to 0".into(),
                        );
                    }
                }
                Some(n) if shape.kind == "long" || i32::try_from(n).is_ok() => {
                    check_bounds(shape, n, "value", |c| fail(out, c));
                }
                _ => fail(out, "Member must be of type integer (32-bit)".to_owned()),
            },
            ("list", Value::Array(items)) => {
                check_bounds(shape, items.len() as i64, "length", |c| fail(out, c));
                if let Some(member) = &shape.member {
                    for (index, item) in items.iter().enumerate() {
                        self.check(&member.shape, item, &format!("{}.{}", path, index + 1), out);
                    }
                }
            }
            ("map", Value::Object(entries)) => {
                check_bounds(shape, entries.len() as i64, "length", |c| fail(out, c));
                for (key, entry) in entries {
                    if let Some(key_shape) = &shape.key {
                        self.check(
                            &key_shape.shape,
                            &Value::String(key.clone()),
                            &format!("{path}.key"),
                            out,
                        );
                    }
                    if let Some(value_shape) = &shape.value {
                        self.check(&value_shape.shape, entry, &format!("{path}.{key}"), out);
                    }
                }
            }
            ("boolean", Value::Bool(_)) => {}
            ("timestamp", Value::Number(_)) => {}
            (kind, _) => fail(out, format!("Member must be of type {}", json_kind(kind))),
        }
    }
}

/// Applies the shape's `min`/`max` to `measured` (a length or a value).
fn check_bounds(shape: &Shape, measured: i64, what: &str, mut fail: impl FnMut(String)) {
    if let Some(min) = shape.min {
        if measured < min {
            fail(format!(
                "Member must have {what} greater than or equal to {min}"
            ));
        }
    }
    if let Some(max) = shape.max {
        if measured > max {
            fail(format!(
                "Member must have {what} less than or equal to {max}"
            ));
        }
    }
}

fn join(path: &str, member: &str) -> String {
    if path.is_empty() {
        member.to_owned()
    } else {
        format!("{path}.{member}")
    }
}

/// `Value 'x'` as AWS writes it; sensitive values are never echoed.
fn quote(value: &Value, sensitive: bool) -> String {
    if sensitive {
        return "Value".to_owned();
    }
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Null => return "Value null".to_owned(),
        other => other.to_string(),
    };
    let mut cut: String = text.chars().take(MAX_QUOTED_CHARS).collect();
    if cut.len() < text.len() {
        cut.push_str("...");
    }
    format!("Value '{cut}'")
}

fn json_kind(model_kind: &str) -> &str {
    match model_kind {
        "structure" | "map" => "object",
        "list" => "array",
        "integer" | "long" => "integer",
        "timestamp" => "number",
        other => other,
    }
}

/// The embedded model, parsed on first use.
pub fn schema() -> Result<&'static Schema, ApiError> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| Schema::parse(SERVICE_MODEL).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| ApiError::internal(format!("service model unusable: {e}")))
}
