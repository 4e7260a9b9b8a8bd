//! Typed input and output shapes of the service model, with the model's
//! member names on the wire. Constraints are not encoded here: requests are
//! checked against the model itself (see `schema`) before they are typed.

pub mod common;
pub mod images;
pub mod microvms;
pub mod tags;

pub use common::*;
pub use images::*;
pub use microvms::*;
pub use tags::*;
