//! `llm-router-extproc quota` as an operator meets it: --help, bad flags exit 2 naming the
//! flag, a bad --plugin-config fails the start, SIGTERM stops it cleanly (exit 0).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod quota_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quota_common::{free_port, Redis};

const BIN: &str = env!("CARGO_BIN_EXE_llm-router-extproc");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).arg("quota").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_the_flags() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--redis URL",
        "--grpc-addr",
        "--health-addr",
        "--metrics-addr",
        "--plaintext",
        "--tls-cert",
        "--plugin-config",
        "--redis-timeout-ms",
    ] {
        assert!(out.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn bad_command_lines_exit_2_naming_the_flag() {
    for (args, flag) in [
        (vec!["--plaintext"], "--redis"),
        (vec!["--redis", "localhost:6379"], "--redis"),
        (
            vec!["--redis", "redis://x", "--redis-timeout-ms", "0"],
            "--redis-timeout-ms",
        ),
        (
            vec!["--redis", "redis://x", "--grpc-addr", "9004"],
            "--grpc-addr",
        ),
        (vec!["--redis", "redis://x", "--wasm", "m"], "--wasm"),
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[test]
fn a_bad_plugin_config_fails_the_start_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("quota-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.json");
    std::fs::write(
        &path,
        r#"{"tenants": {"default": {"request_per_minute": 5}}}"#,
    )
    .unwrap();
    let (code, _, err) = run(&[
        "--redis",
        "redis://127.0.0.1:1",
        "--plaintext",
        "--plugin-config",
        path.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("tenants.default.request_per_minute"), "{err}");
}

#[test]
fn sigterm_stops_it_cleanly() {
    let r = Redis::start();
    let addr = |ip: &str| format!("{ip}:{}", free_port());
    let grpc = addr("127.0.0.1");
    let mut child = Command::new(BIN)
        .args([
            "quota",
            "--redis",
            &r.url(),
            "--plaintext",
            "--grpc-addr",
            &grpc,
        ])
        .args([
            "--health-addr",
            &addr("127.0.0.1"),
            "--metrics-addr",
            &addr("127.0.0.1"),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&grpc).is_err() {
        assert!(Instant::now() < deadline, "never listened on {grpc}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}
