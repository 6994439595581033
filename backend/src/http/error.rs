//! `ApiError`: every failure of a handler as Sensu's `{"message", "code"}` body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::store::resources::ResourceError;
use crate::store::StoreError;

/// The `Retry-After` of a 503, seconds: a few store probes' worth.
const RETRY_AFTER_SECS: u64 = 5;

/// Sensu's action codes, carried in the `code` field of error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    /// An internal fault.
    Internal = 0,
    /// The request is invalid.
    InvalidArgument = 1,
    /// The resource does not exist.
    NotFound = 2,
    /// The resource already exists, or the write conflicts.
    AlreadyExists = 3,
    /// The caller may not do this.
    PermissionDenied = 4,
    /// The caller is not authenticated.
    Unauthenticated = 5,
    /// A precondition (`If-Match`) failed.
    PreconditionFailed = 7,
    /// The request could not finish in time: the store is unreachable or without quorum
    /// (answered with 503 and `Retry-After`); retry later.
    DeadlineExceeded = 8,
}

/// A failed request: status, code and a message that names what is wrong.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Sensu action code.
    pub code: Code,
    /// For the client; generic for internal faults.
    pub message: String,
}

/// Marks a response as an internal fault so the logging middleware reports it once.
#[derive(Debug, Clone)]
pub(crate) struct InternalFault(pub String);

// === impl ApiError ===

impl ApiError {
    /// 400, invalid argument.
    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: Code::InvalidArgument,
            message: message.into(),
        }
    }

    /// 404, not found.
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: Code::NotFound,
            message: message.into(),
        }
    }

    /// 409, already exists or conflicting version.
    pub(crate) fn conflict(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            code: Code::AlreadyExists,
            message: message.into(),
        }
    }

    /// 412, precondition failed.
    pub(crate) fn precondition(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::PRECONDITION_FAILED,
            code: Code::PreconditionFailed,
            message: message.into(),
        }
    }

    /// 403, permission denied.
    pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: Code::PermissionDenied,
            message: message.into(),
        }
    }

    /// 401, unauthenticated.
    pub(crate) fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: Code::Unauthenticated,
            message: message.into(),
        }
    }

    /// 413, body over the limit.
    pub(crate) fn too_large(limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: Code::InvalidArgument,
            message: format!("request body is over the {limit}-byte limit"),
        }
    }

    /// 503 with `Retry-After`: the store is unreachable (`reason` names the store and the
    /// failure, never a credential). Expected during outages; not logged as a fault.
    pub(crate) fn store_unavailable(reason: &str) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: Code::DeadlineExceeded,
            message: format!("the store is unreachable, retry later: {reason}"),
        }
    }

    /// 503: too busy to do this now (every password worker busy); a retry later helps.
    pub(crate) fn busy(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: Code::DeadlineExceeded,
            message: message.into(),
        }
    }

    /// 500 with a generic body; `detail` goes to the log only.
    pub(crate) fn internal(detail: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: Code::Internal,
            message: format!("internal error: {detail}"),
        }
    }
}

impl From<ResourceError> for ApiError {
    fn from(err: ResourceError) -> ApiError {
        match err {
            ResourceError::Store(StoreError::PreconditionFailed { key, current }) => {
                ApiError::conflict(format!(
                    "{key} changed: its resource version is now {current}"
                ))
            }
            ResourceError::Store(StoreError::Unavailable(source)) => {
                ApiError::store_unavailable(&cairn_api::problem::cause_chain(source.as_ref()))
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::events::ingest::IngestError> for ApiError {
    fn from(err: crate::events::ingest::IngestError) -> ApiError {
        use crate::events::ingest::IngestError;
        match err {
            IngestError::Invalid(message) => ApiError::invalid(message),
            IngestError::Contended(message) => ApiError::conflict(message),
            IngestError::Store(err) => ApiError::from(err),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        ApiError::from(ResourceError::Store(err))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code == Code::Internal {
            let mut response = (
                self.status,
                Json(serde_json::json!({"message": "internal error", "code": self.code as u8})),
            )
                .into_response();
            response
                .extensions_mut()
                .insert(InternalFault(self.message));
            return response;
        }
        let mut response = (
            self.status,
            Json(serde_json::json!({"message": self.message, "code": self.code as u8})),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

impl From<crate::auth::passwords::PasswordError> for ApiError {
    fn from(err: crate::auth::passwords::PasswordError) -> ApiError {
        match err {
            crate::auth::passwords::PasswordError::Busy => ApiError::busy(err.to_string()),
            crate::auth::passwords::PasswordError::Hash(_) => ApiError::internal(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// The etcd store's unreachable errors are `Unavailable` with an `EtcdError` inside; any
    /// error does here.
    fn unreachable() -> StoreError {
        StoreError::Unavailable(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "etcd get of res/checks/default/a failed at http://10.0.0.1:2379",
        )))
    }

    #[tokio::test]
    async fn unreachable_store_is_503_with_retry_after() {
        for error in [
            ApiError::from(unreachable()),
            ApiError::from(ResourceError::Store(unreachable())),
        ] {
            let response = error.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "5");
            assert!(response.extensions().get::<InternalFault>().is_none());
            assert_eq!(
                body(response).await,
                serde_json::json!({
                    "message": "the store is unreachable, retry later: \
                                etcd get of res/checks/default/a failed at http://10.0.0.1:2379",
                    "code": 8,
                })
            );
        }
    }

    #[tokio::test]
    async fn store_faults_stay_internal() {
        let fault = StoreError::Backend(Box::new(std::io::Error::other("disk on fire")));
        let response = ApiError::from(fault).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        assert!(response.extensions().get::<InternalFault>().is_some());
        assert_eq!(
            body(response).await,
            serde_json::json!({"message": "internal error", "code": 0})
        );
    }
}
