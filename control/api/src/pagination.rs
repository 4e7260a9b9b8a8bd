//! Opaque `nextToken`s and page sizes for the six paginated List operations
//! (input and output token `nextToken`, limit `maxResults`, 1..=50).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Page size when the client sends no `maxResults`.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// The model's upper bound on every `maxResults`.
pub const MAX_PAGE_SIZE: usize = 50;
/// Longest `nextToken` accepted.
pub const MAX_TOKEN_CHARS: usize = 2048;
/// Longest position a token may carry (keeps every token under the bound).
pub const MAX_POSITION_CHARS: usize = 1024;

/// `maxResults` (already checked against the model) as a page size.
pub fn page_size(max_results: Option<i32>) -> usize {
    match max_results {
        Some(n) if n >= 1 => (n as usize).min(MAX_PAGE_SIZE),
        _ => DEFAULT_PAGE_SIZE,
    }
}

/// Where the next page starts: the sort key of the last item returned, for
/// one listing (`scope`, e.g. the operation and its filters). The checksum
/// makes a corrupted or hand-edited token, or one from another listing, an
/// error instead of a silently wrong page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageToken {
    pub scope: String,
    pub after: String,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    s: String,
    a: String,
    c: String,
}

fn invalid_token() -> ApiError {
    ApiError::validation("invalid nextToken")
}

fn checksum(scope: &str, after: &str) -> String {
    let mut hasher = Sha256::new();
    for part in ["ember-page-token", scope, after] {
        hasher.update(part.len().to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl PageToken {
    pub fn new(scope: impl Into<String>, after: impl Into<String>) -> Result<Self, ApiError> {
        let (scope, after) = (scope.into(), after.into());
        if scope.chars().count() + after.chars().count() > MAX_POSITION_CHARS {
            return Err(ApiError::internal("page position too long for a nextToken"));
        }
        Ok(PageToken { scope, after })
    }

    pub fn encode(&self) -> String {
        let wire = Wire {
            s: self.scope.clone(),
            a: self.after.clone(),
            c: checksum(&self.scope, &self.after),
        };
        // A struct of three strings always serializes.
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wire).unwrap_or_default())
    }

    /// Reads a token the client sent back for listing `scope`.
    pub fn decode(scope: &str, token: &str) -> Result<Self, ApiError> {
        if token.is_empty() || token.len() > MAX_TOKEN_CHARS {
            return Err(invalid_token());
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid_token())?;
        let wire: Wire = serde_json::from_slice(&bytes).map_err(|_| invalid_token())?;
        if wire.s != scope || wire.c != checksum(&wire.s, &wire.a) {
            return Err(invalid_token());
        }
        Ok(PageToken {
            scope: wire.s,
            after: wire.a,
        })
    }
}

/// One page of an in-memory listing sorted by `key`: the items after the
/// token's position, at most `page_size(max_results)`, and the next token
/// when more remain.
pub fn page<T>(
    sorted: Vec<T>,
    key: impl Fn(&T) -> String,
    scope: &str,
    next_token: Option<&str>,
    max_results: Option<i32>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let after = next_token
        .map(|token| PageToken::decode(scope, token))
        .transpose()?
        .map(|token| token.after);
    let size = page_size(max_results);
    let mut remaining = sorted
        .into_iter()
        .filter(|item| after.as_ref().map_or(true, |after| key(item) > *after));
    let items: Vec<T> = remaining.by_ref().take(size).collect();
    let next = match (remaining.next(), items.last()) {
        (Some(_), Some(last)) => Some(PageToken::new(scope, key(last))?.encode()),
        _ => None,
    };
    Ok((items, next))
}
