//! Responses the filter answers itself, in OpenAI's error shape:
//! `{"error":{"message":"...","type":"...","param":null,"code":"..."}}`.

use crate::body::InvalidBody;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Bounded label for logs and metrics (the error code).
    pub code: &'static str,
}

impl LocalReply {
    pub fn error(status: u32, kind: &str, code: &'static str, message: &str) -> Self {
        let body = serde_json::json!({
            "error": { "message": message, "type": kind, "param": null, "code": code }
        });
        LocalReply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(&body).unwrap_or_default(),
            code,
        }
    }

    pub fn with_header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.to_string(), value));
        self
    }
}

/// 400 / 413 for a body that `on_invalid_body: reject` refuses.
pub fn invalid_body(why: InvalidBody, max_body_bytes: usize) -> LocalReply {
    match why {
        InvalidBody::TooLarge => LocalReply::error(
            413,
            "invalid_request_error",
            "request_too_large",
            &format!("The request body exceeds the gateway's limit of {max_body_bytes} bytes."),
        ),
        _ => LocalReply::error(
            400,
            "invalid_request_error",
            "invalid_request_body",
            why.message(),
        ),
    }
}

#[cfg(test)]
mod tests;
