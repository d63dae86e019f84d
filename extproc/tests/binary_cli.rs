//! The command line as a user meets it: bad flags are named, exit status 2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llm-router-extproc"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_command_lines_exit_2_naming_the_flag() {
    for (args, flag) in [
        (vec!["--plugin-config", "p.json"], "--wasm"),
        (
            vec![
                "--wasm",
                "m.wasm",
                "--plugin-config",
                "p.json",
                "--workers",
                "x",
            ],
            "--workers",
        ),
        (
            vec![
                "--wasm",
                "m.wasm",
                "--plugin-config",
                "p.json",
                "--grpc-addr",
                "9002",
            ],
            "--grpc-addr",
        ),
    ] {
        let (code, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[test]
fn unreadable_files_are_named() {
    let (code, err) = run(&[
        "--wasm",
        "/nonexistent/llm_router.wasm",
        "--plugin-config",
        "p.json",
        "--plaintext",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--wasm /nonexistent/llm_router.wasm"), "{err}");
}

#[test]
fn help_prints_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_llm-router-extproc"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--plugin-config"));
}
