//! Turns one HTTP request into a validated `Action`: every member of the
//! operation's input shape is read from where the model says it lives
//! (`uri` label, `querystring`, or the JSON body), then the whole input is
//! checked against the model.

use serde_json::{Map, Number, Value};

use crate::action::{Action, Operation};
use crate::error::ApiError;
use crate::schema::{Schema, Shape};

/// Query strings longer than this are refused before parsing.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// Builds and validates the action for `op`. `labels` are the already
/// percent-decoded path labels.
pub fn parse_action(
    schema: &Schema,
    op: Operation,
    labels: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<Action, ApiError> {
    let input_name = op.input_shape();
    let input_shape = schema.shape(input_name).ok_or_else(|| {
        ApiError::internal(format!("input shape {input_name} missing from the model"))
    })?;
    let query = parse_query(query.unwrap_or(""))?;
    let mut body = BodyMembers::parse(input_shape, body)?;

    let mut input = Map::new();
    for (name, member) in &input_shape.members {
        let wire_name = member.location_name.as_deref().unwrap_or(name);
        let value = match member.location.as_deref() {
            Some("uri") => labels
                .iter()
                .find(|(label, _)| label == wire_name)
                .map(|(_, value)| Value::String(value.clone())),
            Some("querystring") => {
                let shape = schema.shape(&member.shape).ok_or_else(|| {
                    ApiError::internal(format!("shape {} missing from the model", member.shape))
                })?;
                query_value(shape, wire_name, &query)?
            }
            Some(_) => None,
            None => body.take(name),
        };
        if let Some(value) = value {
            input.insert(name.clone(), value);
        }
    }
    let input = Value::Object(input);
    schema.validate(input_name, &input)?;
    Action::from_input(op, input)
}

/// The JSON object of a request body, read only for operations whose input
/// has body members (AWS ignores the body of the others).
struct BodyMembers(Map<String, Value>);

impl BodyMembers {
    fn parse(input_shape: &Shape, body: &[u8]) -> Result<BodyMembers, ApiError> {
        let has_body_members = input_shape.members.values().any(|m| m.location.is_none());
        if !has_body_members || body.iter().all(u8::is_ascii_whitespace) {
            return Ok(BodyMembers(Map::new()));
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(fields)) => Ok(BodyMembers(fields)),
            Ok(_) => Err(ApiError::validation(
                "The request body must be a JSON object",
            )),
            Err(e) => Err(ApiError::validation(format!(
                "The request body is not valid JSON: {e}"
            ))),
        }
    }

    fn take(&mut self, member: &str) -> Option<Value> {
        self.0.remove(member)
    }
}

fn parse_query(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(ApiError::validation(format!(
            "The query string is longer than {MAX_QUERY_BYTES} bytes"
        )));
    }
    Ok(form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

/// The typed value of one query-string member: lists collect every
/// repetition, numbers and booleans must parse.
fn query_value(
    shape: &Shape,
    wire_name: &str,
    query: &[(String, String)],
) -> Result<Option<Value>, ApiError> {
    let mut values = query.iter().filter(|(k, _)| k == wire_name).map(|(_, v)| v);
    if shape.kind == "list" {
        let all: Vec<Value> = values.map(|v| Value::String(v.clone())).collect();
        return Ok((!all.is_empty()).then_some(Value::Array(all)));
    }
    let Some(text) = values.next() else {
        return Ok(None);
    };
    let invalid = |kind: &str| {
        ApiError::validation(format!(
            "1 validation error detected: Value '{}' at '{wire_name}' failed to satisfy constraint: Member must be {kind}",
            text.chars().take(64).collect::<String>()
        ))
    };
    Ok(Some(match shape.kind.as_str() {
        "integer" | "long" => Value::Number(Number::from(
            text.parse::<i64>().map_err(|_| invalid("an integer"))?,
        )),
        "boolean" => Value::Bool(text.parse::<bool>().map_err(|_| invalid("a boolean"))?),
        _ => Value::String(text.clone()),
    }))
}
