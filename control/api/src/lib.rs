//! ember-api: the HTTP surface of emberd. Pure HTTP ↔ typed actions: every
//! request of the Lambda MicroVMs API (rest-json, SigV4) becomes one
//! validated [`Action`]; the server implements [`Service`] and answers with
//! a [`Reply`] or an [`ApiError`]. Nothing here touches the disk.

pub mod action;
pub mod error;
pub mod model;
pub mod pagination;
mod request;
mod router;
pub mod schema;
pub mod sigv4;

pub use action::{Action, Operation, Reply};
pub use error::{ApiError, ErrorDetails, ErrorKind};
pub use pagination::{page, page_size, PageToken};
pub use request::parse_action;
pub use router::{router, Service};
pub use sigv4::{require_sigv4, AuthContext, Credentials};

#[cfg(test)]
mod tests;
