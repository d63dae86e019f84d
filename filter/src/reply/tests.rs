#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

#[test]
fn error_shape_is_openai() {
    let r = invalid_body(InvalidBody::NotJson, 10);
    assert_eq!(r.status, 400);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "invalid_request_body");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["param"].is_null());
    assert_eq!(v["error"]["message"], "The request body is not valid JSON.");
    assert_eq!(
        r.headers[0],
        ("content-type".into(), "application/json".into())
    );
}

#[test]
fn too_large_is_413() {
    let r = invalid_body(InvalidBody::TooLarge, 1024);
    assert_eq!(r.status, 413);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
    assert!(v["error"]["message"].as_str().unwrap().contains("1024"));
}
