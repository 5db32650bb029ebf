//! Framework rejections in the API's one JSON error shape. axum's extractors refuse a request
//! with a plain-text body (a missing field 422, a body that is not JSON 400, no `Content-Type`
//! 415, a body over the limit 413); clients of this API expect `{"message": …}` everywhere, so a
//! layer over the API routes rewrites those answers. Responses the app proxy passes through from
//! workspace apps are never touched: the layer sits only on the server's own routes.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ErrorBody;

/// The largest request body the API reads (axum's default, named so a 413 can say it).
pub const BODY_LIMIT_BYTES: usize = 2 * 1024 * 1024;

/// Plain-text rejection bodies are short; anything longer is not one.
const MAX_REJECTION_TEXT: usize = 4096;

/// The JSON body for a plain-text 4xx, or `None` when the answer is already JSON (or HTML, or a
/// success) and stays as it is.
pub fn json_for_rejection(
    status: StatusCode,
    content_type: Option<&str>,
    text: &str,
) -> Option<ErrorBody> {
    if !status.is_client_error() {
        return None;
    }
    let plain = content_type.is_none_or(|c| c.starts_with("text/plain"));
    if !plain {
        return None;
    }
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "request body too large: the limit is {} MiB",
            BODY_LIMIT_BYTES / (1024 * 1024)
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            "send the body as JSON with the header Content-Type: application/json".to_string()
        }
        _ if text.trim().is_empty() => status
            .canonical_reason()
            .unwrap_or("bad request")
            .to_string(),
        _ => text.trim().to_string(),
    };
    Some(ErrorBody {
        message,
        detail: String::new(),
    })
}

/// The layer: rewrites plain-text client errors into [`ErrorBody`] JSON.
pub async fn json_rejections(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !status.is_client_error() {
        return resp;
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if content_type
        .as_deref()
        .is_some_and(|c| !c.starts_with("text/plain"))
    {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match to_bytes(body, MAX_REJECTION_TEXT).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => return Response::from_parts(parts, Body::empty()),
    };
    match json_for_rejection(status, content_type.as_deref(), &text) {
        Some(body) => (status, axum::Json(body)).into_response(),
        None => Response::from_parts(parts, Body::from(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_table() {
        let plain = Some("text/plain; charset=utf-8");
        #[rustfmt::skip]
        let cases = [
            ("missing field", StatusCode::UNPROCESSABLE_ENTITY, plain, "Failed to deserialize the JSON body into the target type: missing field `name`", Some("missing field `name`")),
            ("not JSON", StatusCode::BAD_REQUEST, plain, "Failed to parse the request body as JSON: expected value", Some("Failed to parse the request body as JSON")),
            ("no content type", StatusCode::UNSUPPORTED_MEDIA_TYPE, plain, "Expected request with `Content-Type: application/json`", Some("Content-Type: application/json")),
            ("too large names the limit", StatusCode::PAYLOAD_TOO_LARGE, plain, "Failed to buffer the request body: length limit exceeded", Some("the limit is 2 MiB")),
            ("empty body gets the reason", StatusCode::METHOD_NOT_ALLOWED, None, "", Some("Method Not Allowed")),
            ("already JSON stays", StatusCode::BAD_REQUEST, Some("application/json"), "{\"message\":\"x\"}", None),
            ("an HTML page stays", StatusCode::NOT_FOUND, Some("text/html; charset=utf-8"), "<p>gone</p>", None),
            ("success stays", StatusCode::OK, plain, "ok", None),
            ("server error stays", StatusCode::INTERNAL_SERVER_ERROR, plain, "boom", None),
        ];
        for (name, status, ct, text, want) in cases {
            let got = json_for_rejection(status, ct, text).map(|b| b.message);
            match (got, want) {
                (Some(m), Some(w)) => assert!(m.contains(w), "{name}: {m}"),
                (None, None) => {}
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }
}
