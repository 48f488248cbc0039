//! Reading requests: a JSON body with field-naming errors (same rules as the server's) and
//! query strings, their mistakes as [`ApiError`]s.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request};

use super::error::ApiError;
use crate::proto::json::{BodyError, parse_object};

/// A JSON object body, parsed into `T`.
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::PayloadTooLarge(e.body_text()))?;
        parse_object(&bytes).map(Body).map_err(|e| match e {
            BodyError::Malformed(m) => ApiError::InvalidBody(m),
            BodyError::Field { field, message } => ApiError::InvalidField { field, message },
        })
    }
}

/// A query string, or why it could not be read (as a bad `query` field).
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::invalid_field("query", e.body_text()))
}
