//! End-to-end tests of the real binary against in-process HTTP servers on 127.0.0.1:
//! model servers serving /metrics (healthy, slow, failing, incomplete) and a fake gateway that
//! records the pushes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_llm-router-sidecar");
const TOKEN_ENV: &str = "LLM_ROUTER_SIDECAR_TEST_TOKEN";

#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

struct Reply {
    status: u16,
    body: String,
    delay: Duration,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

/// Starts an HTTP/1.1 server on an ephemeral port; every request is answered by `handler` and
/// sent to the returned channel.
fn serve(
    handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
) -> (SocketAddr, Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let (tx, rx) = channel();
    let tx = Arc::new(Mutex::new(tx));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let handler = Arc::clone(&handler);
            let tx = Arc::clone(&tx);
            thread::spawn(move || handle(stream, &*handler, &tx));
        }
    });
    (addr, rx)
}

fn handle(
    mut stream: TcpStream,
    handler: &(dyn Fn(&Received) -> Reply + Send + Sync),
    tx: &Mutex<Sender<Received>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_string();
    let path = request_line.next().unwrap_or_default().to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let received = Received {
        method,
        path,
        headers,
        body,
    };
    let answer = handler(&received);
    let _ = tx.lock().unwrap().send(received);
    thread::sleep(answer.delay);
    let response = format!(
        "HTTP/1.1 {} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        answer.status,
        answer.body.len(),
        answer.body
    );
    let _ = stream.write_all(response.as_bytes());
}

fn vllm_page(waiting: (u32, u32), running: u32, kv: f64) -> String {
    format!(
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{engine=\"0\",model_name=\"llama\"}} {running}.0\n\
         # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{engine=\"0\",model_name=\"llama\"}} {}.0\n\
         vllm:num_requests_waiting{{engine=\"0\",model_name=\"llama-lora\"}} {}.0\n\
         # HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{engine=\"0\",model_name=\"llama\"}} {kv}\n\
         vllm:time_to_first_token_seconds_bucket{{le=\"+Inf\",model_name=\"llama\"}} 3.0\n\
         vllm:spec_decode_efficiency{{model_name=\"llama\"}} NaN\n",
        waiting.0, waiting.1
    )
}

fn model_server(page: String) -> SocketAddr {
    serve(move |req| {
        if req.path == "/metrics" {
            reply(200, &page)
        } else {
            reply(404, "not found")
        }
    })
    .0
}

fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "llm-router-sidecar-it-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_config(dir: &Path, config: &Value) -> PathBuf {
    let path = dir.join("sidecar.json");
    std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    path
}

fn sidecar(config: &Path, args: &[&str], token: Option<&str>) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config).args(args);
    cmd.env_remove(TOKEN_ENV)
        .env_remove("LLM_ROUTER_PUSH_TOKEN");
    if let Some(token) = token {
        cmd.env(TOKEN_ENV, token);
    }
    cmd
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn once_pushes_the_snapshot_and_marks_unhealthy_endpoints() {
    let healthy = model_server(vllm_page((2, 3), 4, 0.25));
    let (slow, _) = serve(|_| Reply {
        status: 200,
        body:
            "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n"
                .into(),
        delay: Duration::from_secs(3),
    });
    let (failing, _) = serve(|_| reply(500, "internal error"));
    let incomplete = model_server("process_cpu_seconds_total 12.5\n".to_string());
    let refused = closed_port();
    let (gateway, pushes) = serve(|_| reply(204, ""));

    let dir = temp_dir("once");
    let config = write_config(
        &dir,
        &serde_json::json!({
            "pools": {
                "small": [healthy.to_string(), slow.to_string()],
                "large": [failing.to_string(), incomplete.to_string(), refused.to_string()]
            },
            "interval_ms": 500,
            "scrape_timeout_ms": 300,
            "push_url": format!("http://{gateway}/.well-known/llm-router/load"),
            "push_token_env": TOKEN_ENV
        }),
    );
    let started = Instant::now();
    let out = sidecar(&config, &["--once"], Some("s3cret-token"))
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    assert!(
        elapsed < Duration::from_millis(2500),
        "took {elapsed:?}: the slow endpoint was not cut off"
    );

    let push = pushes.recv_timeout(Duration::from_secs(2)).unwrap();
    assert_eq!(push.method, "POST");
    assert_eq!(push.path, "/.well-known/llm-router/load");
    assert_eq!(
        push.headers.get("authorization").map(String::as_str),
        Some("Bearer s3cret-token")
    );
    assert_eq!(
        push.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(
        push.headers.get("host").map(String::as_str),
        Some(gateway.to_string().as_str())
    );

    let body = push.json();
    assert_eq!(
        body["pools"]["small"],
        serde_json::json!([
            {"address": healthy.to_string(), "waiting": 5, "running": 4, "kv_cache": 0.25, "healthy": true},
            {"address": slow.to_string(), "waiting": 0, "running": 0, "kv_cache": 0.0, "healthy": false}
        ])
    );
    let large = body["pools"]["large"].as_array().unwrap();
    assert_eq!(large.len(), 3, "unhealthy endpoints are kept: {body}");
    for (entry, addr) in large.iter().zip([failing, incomplete, refused]) {
        assert_eq!(entry["address"], addr.to_string());
        assert_eq!(entry["healthy"], false, "{entry}");
    }
    assert_eq!(body["seq"], 1);
    let generated = body["generated_at_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        now.abs_diff(generated) < 10_000,
        "generated_at_ms {generated} vs now {now}"
    );
    assert_eq!(
        body.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["generated_at_ms", "pools", "seq"]
    );

    // Logs: a start line, one line per unhealthy endpoint with its reason, never the token.
    assert!(
        stderr.contains("starting: pools [large: 3 endpoint(s); small: 2 endpoint(s)]"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("small/{slow} is UNHEALTHY")),
        "{stderr}"
    );
    assert!(stderr.contains("within 300 ms"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "large/{failing} is UNHEALTHY: GET /metrics answered HTTP 500"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "large/{incomplete} is UNHEALTHY: no waiting metric"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("large/{refused} is UNHEALTHY")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("small/{healthy} is healthy")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("s3cret-token"),
        "the token must never be logged:\n{stderr}"
    );
}

#[test]
fn wrong_token_is_reported_and_once_fails() {
    let healthy = model_server(vllm_page((0, 0), 1, 0.1));
    let (gateway, pushes) = serve(|req| {
        if req.headers.get("authorization").map(String::as_str) == Some("Bearer right") {
            reply(204, "")
        } else {
            reply(403, "forbidden")
        }
    });
    let dir = temp_dir("forbidden");
    let config = write_config(
        &dir,
        &serde_json::json!({
            "pools": {"small": [healthy.to_string()]},
            "push_url": format!("http://{gateway}/load"),
            "push_token_env": TOKEN_ENV
        }),
    );
    let out = sidecar(&config, &["--once"], Some("wrong"))
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("REJECTED with 403"), "{stderr}");
    assert!(pushes.recv_timeout(Duration::from_secs(1)).is_ok());

    let out = sidecar(&config, &["--once"], Some("right"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("first snapshot pushed"));
}

#[test]
fn gateway_down_is_reported_and_once_fails() {
    let healthy = model_server(vllm_page((0, 0), 1, 0.1));
    let dir = temp_dir("down");
    let config = write_config(
        &dir,
        &serde_json::json!({
            "pools": {"small": [healthy.to_string()]},
            "push_url": format!("http://{}/load", closed_port()),
            "push_token_env": TOKEN_ENV
        }),
    );
    let out = sidecar(&config, &["--once"], Some("t")).output().unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach the gateway"), "{stderr}");
}

#[test]
fn print_without_push_needs_no_token() {
    let healthy = model_server(vllm_page((1, 0), 2, 0.5));
    let dir = temp_dir("print");
    let config = write_config(
        &dir,
        &serde_json::json!({"pools": {"small": [healthy.to_string()]}}),
    );
    let out = sidecar(&config, &["--once", "--print", "--no-push"], None)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let snap: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        snap["pools"]["small"][0],
        serde_json::json!({"address": healthy.to_string(), "waiting": 1, "running": 2, "kv_cache": 0.5, "healthy": true})
    );
}

#[test]
fn bad_configuration_exits_2_naming_the_field() {
    let dir = temp_dir("bad");
    let cases: Vec<(Value, Option<&str>, &str)> = vec![
        (
            serde_json::json!({"pools": {"small": ["127.0.0.1:1"]}, "interval": 5}),
            Some("t"),
            "interval: unknown field",
        ),
        (
            serde_json::json!({"pools": {"small": ["localhost:8000"]}}),
            Some("t"),
            "pools.small[0]: bad address",
        ),
        (
            serde_json::json!({"pools": {"small": []}}),
            Some("t"),
            "pools.small: empty pool",
        ),
        (
            serde_json::json!({"pools": {"small": ["127.0.0.1:1"]}, "push_token_env": TOKEN_ENV}),
            None,
            "push_token_env: environment variable LLM_ROUTER_SIDECAR_TEST_TOKEN is not set",
        ),
        (
            serde_json::json!({"pools": {"large": {"file": "missing.txt"}}}),
            Some("t"),
            "pools.large.file: cannot read",
        ),
    ];
    for (config, token, expected) in cases {
        let path = write_config(&dir, &config);
        let out = sidecar(&path, &["--once"], token).output().unwrap();
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{config}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{config}: expected {expected:?} in:\n{stderr}"
        );
    }
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/sidecar.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).arg("--push-token=abc").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("never taken from the command line"));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--once"));
}

/// Waits for a push whose `large` pool lists exactly `expected` (addresses).
fn wait_for_pool(pushes: &Receiver<Received>, expected: &[String], within: Duration) -> Value {
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(push) = pushes.recv_timeout(left) else {
            break;
        };
        last = push.json();
        let addrs: Vec<String> = last["pools"]["large"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["address"].as_str().unwrap().to_string())
            .collect();
        if addrs == expected {
            return last;
        }
    }
    panic!("no push listing {expected:?} within {within:?}; last push: {last}");
}

#[test]
fn pool_file_is_reloaded_when_it_changes_and_sigterm_stops_cleanly() {
    let a = model_server(vllm_page((1, 0), 1, 0.1));
    let b = model_server(vllm_page((0, 0), 0, 0.0));
    let (gateway, pushes) = serve(|_| reply(204, ""));
    let dir = temp_dir("reload");
    let pool_file = dir.join("endpoints-large.txt");
    std::fs::write(&pool_file, format!("# large pool\n{a}\n")).unwrap();
    let config = write_config(
        &dir,
        &serde_json::json!({
            "pools": {"large": {"file": "endpoints-large.txt"}},
            "interval_ms": 100,
            "scrape_timeout_ms": 200,
            "push_url": format!("http://{gateway}/.well-known/llm-router/load"),
            "push_token_env": TOKEN_ENV
        }),
    );
    let mut child = sidecar(&config, &[], Some("t"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let first = wait_for_pool(&pushes, &[a.to_string()], Duration::from_secs(5));
    assert_eq!(first["pools"]["large"][0]["healthy"], true);

    // Rewrite the file (retrying until the modification time visibly changes).
    let before = std::fs::metadata(&pool_file).unwrap().modified().unwrap();
    loop {
        std::fs::write(&pool_file, format!("{a}\n{b}  # added\n")).unwrap();
        if std::fs::metadata(&pool_file).unwrap().modified().unwrap() != before {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let second = wait_for_pool(
        &pushes,
        &[a.to_string(), b.to_string()],
        Duration::from_secs(5),
    );
    let seq_second = second["seq"].as_u64().unwrap();
    assert!(seq_second > first["seq"].as_u64().unwrap());

    // An invalid rewrite keeps the last good list.
    std::fs::write(&pool_file, "not an address\n").unwrap();
    thread::sleep(Duration::from_millis(400));
    let kept = wait_for_pool(
        &pushes,
        &[a.to_string(), b.to_string()],
        Duration::from_secs(5),
    );
    assert!(kept["seq"].as_u64().unwrap() > seq_second);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(3);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the sidecar did not stop within 3 s of SIGTERM");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{stderr}");
    assert!(stderr.contains("pool large: reloaded"), "{stderr}");
    assert!(stderr.contains(&format!("+{b}")), "{stderr}");
    assert!(stderr.contains("line 1: bad address"), "{stderr}");
    assert!(stderr.contains("exiting"), "{stderr}");
    // State changes are logged once, not every interval.
    assert_eq!(
        stderr.matches(&format!("large/{a} is healthy")).count(),
        1,
        "{stderr}"
    );
}
