//! Scenarios on the real filter: `dist/llm_router.wasm` against the shared table
//! `tests/scenarios/routing.json`, plus checks that need no table.
//!
//! A missing or stub `dist/llm_router.wasm` (or table) fails these tests: run `make build`
//! first. `LLM_ROUTER_WASM=path` tests another build of the filter.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use host_sim::{Exchange, Host};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `dist/llm_router.wasm`, or the file named by `LLM_ROUTER_WASM`.
fn wasm_path() -> PathBuf {
    match std::env::var_os("LLM_ROUTER_WASM") {
        Some(p) => PathBuf::from(p),
        None => repo().join("dist/llm_router.wasm"),
    }
}

/// Builds a host on the real filter. A missing or stub `.wasm` fails the test (run
/// `make build` first).
fn filter_host(config: &str, workers: usize) -> Result<Host> {
    let path = wasm_path();
    if !path.exists() {
        bail!("{} does not exist; run `make build`", path.display());
    }
    Host::builder()
        .wasm_file(&path)
        .workers(workers)
        .plugin_config(config)
        .env("LLM_ROUTER_PUSH_TOKEN", "test-token")
        .seed(7)
        .build()
        .with_context(|| format!("loading {} (run `make build`)", path.display()))
}

fn load_table() -> Result<Value> {
    let path = repo().join("tests/scenarios/routing.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn header_name(config: &Value, key: &str, default: &str) -> String {
    config
        .pointer(&format!("/headers/{key}"))
        .and_then(Value::as_str)
        .unwrap_or(default)
        .to_string()
}

fn send_request<'h>(host: &'h mut Host, worker: usize, req: &Value) -> Exchange<'h> {
    let body: Option<Vec<u8>> = match (req.get("body_raw"), req.get("body")) {
        (Some(Value::String(s)), _) => Some(s.as_bytes().to_vec()),
        (_, Some(v)) if !v.is_null() => Some(v.to_string().into_bytes()),
        _ => None,
    };
    let method = req.get("method").and_then(Value::as_str).unwrap_or("POST");
    let path = req.get("path").and_then(Value::as_str).unwrap_or("/");
    let mut rb = host.worker(worker).request().method(method).path(path);
    if let Some(Value::Object(h)) = req.get("headers") {
        for (k, v) in h {
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            rb = rb.header(k, &v);
        }
    }
    if req.get("body").is_some_and(|b| !b.is_null()) {
        rb = rb.header("content-type", "application/json");
    }
    if let Some(b) = body {
        rb = rb.body(b);
        if let Some(n) = req.get("chunks").and_then(Value::as_u64) {
            rb = rb.chunks(n as usize);
        }
    }
    if let Some(a) = req.get("source_address").and_then(Value::as_str) {
        rb = rb.source_address(a);
    }
    rb.send()
}

/// Checks one scenario; returns the list of failed expectations.
fn check_scenario(ex: &Exchange<'_>, expect: &Value, config: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    if let Some(t) = ex.trap() {
        errs.push(format!("the filter trapped: {t}"));
        return errs;
    }
    let up = ex.upstream();
    let lr = ex.local_reply();
    if up.is_none() && lr.is_none() {
        errs.push("the request stalled in the filter: neither upstream nor a local reply".into());
        return errs;
    }
    let known = [
        "upstream_headers",
        "absent_headers",
        "upstream_body_model",
        "upstream_body_raw",
        "local_reply",
        "passthrough",
        "prompt_tokens_between",
    ];
    if let Value::Object(m) = expect {
        for k in m.keys() {
            if !known.contains(&k.as_str()) {
                println!("    note: expectation `{k}` is not checked by host-sim");
            }
        }
    }
    if let Some(want) = expect.get("local_reply") {
        match &lr {
            None => errs.push(format!("expected local reply {want}, got none")),
            Some(lr) => {
                if let Some(s) = want.get("status").and_then(Value::as_u64) {
                    if lr.status as u64 != s {
                        errs.push(format!("local reply status {} != {s}", lr.status));
                    }
                }
                if let Some(code) = want.get("code").and_then(Value::as_str) {
                    let got = lr.body_json().and_then(|b| {
                        b.pointer("/error/code")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    });
                    if got.as_deref() != Some(code) {
                        errs.push(format!(
                            "local reply code {got:?} != {code}; body {}",
                            lr.body_str()
                        ));
                    }
                }
            }
        }
    } else if let Some(lr) = &lr {
        errs.push(format!(
            "unexpected local reply {} {}",
            lr.status,
            lr.body_str()
        ));
    }
    let need_up = |errs: &mut Vec<String>, what: &str| {
        if up.is_none() {
            errs.push(format!("{what}: the request did not reach upstream"));
        }
    };
    if let Some(Value::Object(hs)) = expect.get("upstream_headers") {
        need_up(&mut errs, "upstream_headers");
        if let Some(u) = &up {
            for (k, v) in hs {
                let want = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                match u.header(k) {
                    Some(got) if got == want => {}
                    got => errs.push(format!("upstream header {k}: {got:?} != {want:?}")),
                }
            }
        }
    }
    if let Some(Value::Array(names)) = expect.get("absent_headers") {
        if let Some(u) = &up {
            for n in names.iter().filter_map(Value::as_str) {
                if let Some(v) = u.header(n) {
                    errs.push(format!("header {n} should be absent upstream, is {v:?}"));
                }
            }
        }
    }
    if let Some(model) = expect.get("upstream_body_model").and_then(Value::as_str) {
        need_up(&mut errs, "upstream_body_model");
        if let Some(u) = &up {
            let got = u
                .body_json()
                .and_then(|b| b.get("model").and_then(Value::as_str).map(str::to_string));
            if got.as_deref() != Some(model) {
                errs.push(format!("upstream body model {got:?} != {model:?}"));
            }
        }
    }
    if let Some(raw) = expect.get("upstream_body_raw").and_then(Value::as_str) {
        need_up(&mut errs, "upstream_body_raw");
        if let Some(u) = &up {
            if u.body != raw.as_bytes() {
                errs.push(format!("upstream body {:?} != {raw:?}", u.body_str()));
            }
        }
    }
    if let Some(Value::Array(range)) = expect.get("prompt_tokens_between") {
        need_up(&mut errs, "prompt_tokens_between");
        let name = header_name(config, "prompt_tokens", "x-llm-prompt-tokens");
        let (lo, hi) = (
            range.first().and_then(Value::as_u64).unwrap_or(0),
            range.get(1).and_then(Value::as_u64).unwrap_or(u64::MAX),
        );
        if let Some(u) = &up {
            match u.header(&name).and_then(|v| v.parse::<u64>().ok()) {
                Some(n) if (lo..=hi).contains(&n) => {}
                got => errs.push(format!("{name} {got:?} not in [{lo}, {hi}]")),
            }
        }
    }
    if let Some(p) = expect.get("passthrough").and_then(Value::as_bool) {
        if ex.passthrough() != p {
            let (set, removed) = ex.header_changes();
            errs.push(format!(
                "passthrough expected {p}; header changes: set {set:?}, removed {removed:?}"
            ));
        }
    }
    // Always: a forwarded request must be complete and its content-length must fit its body.
    if let Some(u) = &up {
        if !u.complete {
            errs.push("the request reached upstream only partly (end of stream held)".into());
        }
        if u.content_length_mismatch() {
            errs.push(format!(
                "content-length {:?} does not match the forwarded body ({} bytes)",
                u.header("content-length"),
                u.body.len()
            ));
        }
    }
    errs
}

#[test]
fn routing_scenarios_from_the_shared_table() -> Result<()> {
    let table = load_table()?;
    let config = table
        .get("plugin_config")
        .cloned()
        .ok_or_else(|| anyhow!("routing.json has no plugin_config"))?;
    let scenarios = table
        .get("scenarios")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| anyhow!("routing.json has no scenarios"))?;
    let config_text = config.to_string();
    let mut probe = filter_host(&config_text, 1)?;
    probe
        .start()
        .map_err(|e| anyhow!("the table's plugin_config is rejected: {e:#}"))?;
    drop(probe);
    let mut failures = Vec::new();
    for (i, sc) in scenarios.iter().enumerate() {
        let name = sc
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let mut host = filter_host(&config_text, 2)?;
        host.start()?;
        let req = sc.get("request").cloned().unwrap_or(Value::Null);
        let expect = sc.get("expect").cloned().unwrap_or(Value::Null);
        let ex = send_request(&mut host, i % 2, &req);
        let errs = check_scenario(&ex, &expect, &config);
        let summary = match (ex.upstream(), ex.local_reply()) {
            (_, Some(lr)) => format!("local reply {}", lr.status),
            (Some(u), None) => {
                let (set, removed) = ex.header_changes();
                format!(
                    "upstream; set {set:?}; removed {removed:?}; {} body bytes",
                    u.body.len()
                )
            }
            (None, None) => "stalled".to_string(),
        };
        let finished = ex.finish();
        println!(
            "[{}] {name}: {summary}",
            if errs.is_empty() { "ok" } else { "FAIL" }
        );
        if let Err(e) = finished {
            failures.push(format!("{name}: on_log/on_done failed: {e:#}"));
        }
        for e in errs {
            failures.push(format!("{name}: {e}"));
        }
        if !host.traps().is_empty() {
            failures.push(format!("{name}: traps {:?}", host.traps()));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} failed expectation(s):\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    println!("{} scenarios passed", scenarios.len());
    Ok(())
}

#[test]
fn bad_plugin_config_fails_configure_naming_the_field() -> Result<()> {
    let cases = [
        (json!({"tiers": {"small": {}}, "bogus": 1}), "bogus"),
        (
            json!({"tiers": {"small": {}}, "max_body_bytes": "big"}),
            "max_body_bytes",
        ),
        (json!({"default_tier": "small"}), "tiers"),
    ];
    for (config, field) in cases {
        let mut host = filter_host(&config.to_string(), 2)?;
        match host.start() {
            Ok(()) => bail!("config {config} was accepted"),
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(
                    msg.contains(field),
                    "configure failure for {config} should name `{field}`: {msg}"
                );
            }
        }
        assert!(
            host.traps().is_empty(),
            "a bad config must not trap: {:?}",
            host.traps()
        );
    }
    Ok(())
}

/// Deterministic garbage (xorshift), no extra dependency.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn garbage_bodies_never_trap() -> Result<()> {
    let config = json!({"tiers": {"small": {"model": "s"}, "large": {"model": "l"}}, "default_tier": "small"});
    let mut host = filter_host(&config.to_string(), 2)?;
    host.start()?;
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"\"str\"".to_vec(),
        b"{\"model\": 12, \"messages\": \"x\"}".to_vec(),
        b"{\"messages\": [{\"content\": [{\"type\":\"text\",\"text\":\"hi\"}, 5, null]}]}".to_vec(),
        b"{\"model\": \"m\", \"max_tokens\": -1, \"stream\": \"yes\"}".to_vec(),
        b"{\"model\": \"m\", \"max_tokens\": 1e309}".to_vec(),
        b"{\"prompt\": [1, 2, 3], \"input\": {\"a\": 1}}".to_vec(),
        b"\xff\xfe\x00{\"model\":\"\xc3\x28\"}".to_vec(),
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        format!(
            "{{\"model\":\"m\",\"prompt\":\"{}\"}}",
            "a ".repeat(600_000)
        )
        .into_bytes(),
    ];
    for seed in 1..20u64 {
        bodies.push(garbage(seed, (seed as usize * 97) % 5000));
    }
    for (i, body) in bodies.iter().enumerate() {
        for chunks in [1usize, 3] {
            let ex = host
                .worker(i % 2)
                .request()
                .method("POST")
                .path("/v1/chat/completions")
                .header("x-tenant-id", "acme")
                .body(body)
                .chunks(chunks)
                .send();
            assert!(ex.trap().is_none(), "body #{i} trapped: {:?}", ex.trap());
            assert!(
                ex.upstream().is_some_and(|u| u.complete) || ex.local_reply().is_some(),
                "body #{i} stalled in the filter"
            );
            ex.finish()?;
        }
    }
    assert!(host.traps().is_empty(), "{:?}", host.traps());
    Ok(())
}

#[test]
fn tenant_request_limit_is_shared_by_all_workers() -> Result<()> {
    let config = json!({
        "tiers": {"small": {}},
        "tenants": {
            "header": "x-tenant-id",
            "default": {"requests_per_minute": 1000, "tokens_per_minute": 10000000},
            "limits": {"acme": {"requests_per_minute": 10, "tokens_per_minute": 10000000}}
        }
    });
    let mut host = filter_host(&config.to_string(), 2)?;
    host.start()?;
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
    let mut admitted = 0;
    let mut limited = Vec::new();
    for i in 0..14 {
        let ex = host
            .worker(i % 2)
            .request()
            .method("POST")
            .path("/v1/chat/completions")
            .header("x-tenant-id", "acme")
            .json(&body)
            .send();
        assert!(ex.trap().is_none(), "{:?}", ex.trap());
        match ex.local_reply() {
            Some(lr) => limited.push((lr.status, lr.body_str())),
            None => admitted += 1,
        }
        ex.finish()?;
    }
    assert_eq!(
        admitted, 10,
        "10 requests per minute across both workers; limited: {limited:?}"
    );
    assert!(
        limited
            .iter()
            .all(|(s, b)| *s == 429 && b.contains("rate_limit_exceeded")),
        "{limited:?}"
    );
    // A minute later the bucket has refilled.
    host.advance_ms(60_000)?;
    let ex = host
        .worker(1)
        .request()
        .method("POST")
        .path("/v1/chat/completions")
        .header("x-tenant-id", "acme")
        .json(&body)
        .send();
    assert!(
        ex.local_reply().is_none(),
        "refilled after a minute: {:?}",
        ex.local_reply()
    );
    Ok(())
}

#[test]
fn streamed_response_passes_chunk_by_chunk_and_client_reset_is_clean() -> Result<()> {
    let config = json!({"tiers": {"small": {"model": "s"}}});
    let mut host = filter_host(&config.to_string(), 2)?;
    host.start()?;
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let mut ex = host
        .worker(1)
        .request()
        .method("POST")
        .path("/v1/chat/completions")
        .json(&body)
        .send();
    assert!(ex.upstream().is_some_and(|u| u.complete));
    let events = [
        json!({"choices": [{"delta": {"content": "Hel"}}]}),
        json!({"choices": [{"delta": {"content": "lo"}}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
        json!("[DONE]"),
    ];
    let client = ex.response(200).sse(&events, 40).send()?;
    assert_eq!(client.status, 200);
    assert!(client.complete);
    assert_eq!(client.chunks.len(), 4);
    assert!(
        client.chunks.iter().all(|c| !c.paused),
        "SSE chunks must not be held: {:?}",
        client.chunks
    );
    assert!(
        client.body_str().ends_with("data: \"[DONE]\"\n\n") || client.body_str().contains("[DONE]")
    );
    ex.finish()?;
    assert!(host.traps().is_empty(), "{:?}", host.traps());

    // The client goes away after the first body chunk.
    let ex = host
        .worker(0)
        .request()
        .method("POST")
        .path("/v1/chat/completions")
        .body_chunks(&[&b"{\"model\":\"m\","[..], &b"\"messages\":[]}"[..]])
        .stop_after_chunks(1)
        .send();
    assert!(ex.upstream().is_none_or(|u| !u.complete));
    ex.reset()?;
    assert!(host.traps().is_empty(), "{:?}", host.traps());
    assert!(host.open_streams(0).is_empty());
    Ok(())
}

#[test]
fn endpoint_load_push_is_answered_locally_and_used() -> Result<()> {
    let config = json!({
        "tiers": {"small": {"model": "s"}},
        "endpoints": {"push_path": "/.well-known/llm-router/load", "push_token_env": "LLM_ROUTER_PUSH_TOKEN", "stale_after_ms": 2000}
    });
    let mut host = filter_host(&config.to_string(), 2)?;
    host.start()?;
    let snapshot = json!({"pools": {"small": [
        {"address": "10.1.0.1:8000", "waiting": 3, "running": 4, "kv_cache": 0.5},
        {"address": "10.1.0.2:8000", "waiting": 0, "running": 1, "kv_cache": 0.1}
    ]}});
    let push = |host: &mut Host, token: &str, source: &str| {
        let ex = host
            .worker(0)
            .request()
            .method("POST")
            .path("/.well-known/llm-router/load")
            .header("authorization", &format!("Bearer {token}"))
            .source_address(source)
            .json(&snapshot)
            .send();
        let r = (ex.upstream().is_some(), ex.local_reply().map(|l| l.status));
        drop(ex);
        r
    };
    assert_eq!(
        push(&mut host, "wrong", "127.0.0.1:5000"),
        (false, Some(403))
    );
    assert_eq!(
        push(&mut host, "test-token", "192.168.1.9:5000"),
        (false, Some(403))
    );
    assert_eq!(
        push(&mut host, "test-token", "127.0.0.1:5000"),
        (false, Some(204))
    );
    // The other worker sees the snapshot and picks the idle endpoint.
    let ex = host
        .worker(1)
        .request()
        .method("POST")
        .path("/v1/chat/completions")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send();
    let up = ex.upstream().ok_or_else(|| anyhow!("no upstream"))?;
    assert_eq!(
        up.header("x-gateway-destination-endpoint"),
        Some("10.1.0.2:8000")
    );
    drop(ex);
    // After stale_after_ms the snapshot is ignored.
    host.advance_ms(5_000)?;
    let ex = host
        .worker(1)
        .request()
        .method("POST")
        .path("/v1/chat/completions")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send();
    let up = ex.upstream().ok_or_else(|| anyhow!("no upstream"))?;
    assert_eq!(up.header("x-gateway-destination-endpoint"), None);
    Ok(())
}
