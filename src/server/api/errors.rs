//! The OpenAI error object ([`ApiError`]) with its HTTP status and headers, and the
//! [`openai_errors`] middleware that turns axum's plain-text rejections into one.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::server::worker::JobError;

/// An OpenAI error object with its HTTP status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn bad_request(param: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
            retry_after: None,
        }
    }

    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "invalid or missing API key: send `Authorization: Bearer <key>`".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }

    pub fn not_found() -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: "no such route: see GET /v1/models and the README's server section".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
            retry_after: None,
        }
    }

    pub fn queue_full() -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "the generation queue is full: retry after the Retry-After seconds".into(),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
            retry_after: Some(1),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("unavailable"),
            retry_after: Some(1),
        }
    }

    pub fn timeout() -> Self {
        ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message:
                "the request took longer than the server's --request-timeout and was cancelled"
                    .into(),
            kind: "server_error",
            param: None,
            code: Some("timeout"),
            retry_after: None,
        }
    }

    /// 413: the body is over `--max-body-mib`; multipart uploads name the `image` field.
    pub fn payload_too_large(multipart: bool) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: if multipart {
                "the upload is over the server's body limit"
            } else {
                "the request body is over the server's limit"
            }
            .into(),
            kind: "invalid_request_error",
            param: multipart.then(|| "image".into()),
            code: Some("payload_too_large"),
            retry_after: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub(super) fn from_library(e: &crate::Error) -> Self {
        match JobError::from(e) {
            JobError::BadInput(message) => Self::bad_request(None, message),
            JobError::Cancelled => Self::timeout(),
            JobError::Internal(message) => Self::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body may be unread (past the server's drain bound), so this
            // connection cannot carry another request: say so, or a keep-alive client reuses it and its next request fails with
            // an incomplete message (seen in tests/server.rs under load).
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Turns axum's plain-text rejections (body too large, bad JSON, wrong content type) into
/// OpenAI error objects; 415 and 422 become 400 as OpenAI answers them.
pub async fn openai_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let mut error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError {
            status,
            message: format!("{body}: the request body is over the server's limit"),
            kind: "invalid_request_error",
            param: None,
            code: Some("payload_too_large"),
            retry_after: None,
        },
        StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => {
            ApiError::bad_request(None, body)
        }
        _ => ApiError {
            status,
            message: body,
            kind: if status.is_server_error() {
                "server_error"
            } else {
                "invalid_request_error"
            },
            param: None,
            code: None,
            retry_after: None,
        },
    };
    if error.message.is_empty() {
        error.message = status.to_string();
    }
    error.into_response()
}
