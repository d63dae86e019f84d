use super::*;

fn run(args: &str) -> Result<Options, CliError> {
    parse(args.split_whitespace().map(str::to_string))
}

#[test]
fn defaults_are_the_documented_ports_and_tls_on() {
    let o = run("--wasm m.wasm --plugin-config p.json").unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(o.grpc_addr.to_string(), "127.0.0.1:9002");
    assert_eq!(o.health_addr.to_string(), "127.0.0.1:9003");
    assert_eq!(o.metrics_addr.to_string(), "127.0.0.1:9090");
    assert_eq!(o.tls, Tls::SelfSigned);
    assert!(!o.fail_open);
}

#[test]
fn every_flag_is_read() {
    let o = run("--wasm=m.wasm --plugin-config p.json --grpc-addr 0.0.0.0:1 --health-addr 0.0.0.0:2 \
                 --metrics-addr 0.0.0.0:3 --tls-cert c.pem --tls-key k.pem --workers 4 --env A --env B_2 --fail-open")
        .unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(o.wasm, PathBuf::from("m.wasm"));
    assert_eq!(o.workers, 4);
    assert_eq!(o.env, ["A", "B_2"]);
    assert_eq!(
        o.tls,
        Tls::Files {
            cert: "c.pem".into(),
            key: "k.pem".into()
        }
    );
    assert!(o.fail_open);
    assert_eq!(
        run("--wasm m --plugin-config p --plaintext").map(|o| o.tls),
        Ok(Tls::Plaintext)
    );
}

#[test]
fn errors_name_the_flag() {
    let cases = [
        ("--plugin-config p", "--wasm"),
        ("--wasm m", "--plugin-config"),
        (
            "--wasm m --plugin-config p --grpc-addr nowhere",
            "--grpc-addr",
        ),
        ("--wasm m --plugin-config p --workers 0", "--workers"),
        ("--wasm m --plugin-config p --env 1BAD", "--env"),
        ("--wasm m --plugin-config p --tls-cert c", "--tls-key"),
        (
            "--wasm m --plugin-config p --plaintext --tls-cert c --tls-key k",
            "--plaintext",
        ),
        (
            "--wasm m --plugin-config p --metrics-addr 127.0.0.1:9002",
            "--metrics-addr",
        ),
        ("--wasm m --plugin-config p --bogus", "--bogus"),
        ("--wasm", "--wasm"),
    ];
    for (args, flag) in cases {
        match run(args) {
            Ok(o) => unreachable!("{args} was accepted: {o:?}"),
            Err(e) => assert!(e.to_string().contains(flag), "{args}: {e}"),
        }
    }
}

#[test]
fn grpc_clusters_are_repeatable_and_validated() {
    let o = run(
        "--wasm m --plugin-config p --grpc-cluster quota=http://127.0.0.1:9100 \
                 --grpc-cluster=backup=https://quota.example:443",
    )
    .unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(o.grpc_clusters.names(), ["backup", "quota"]);
    assert_eq!(
        o.grpc_clusters
            .get("backup")
            .map(|c| (c.url.as_str(), c.tls())),
        Some(("https://quota.example:443", true))
    );
    assert!(run("--wasm m --plugin-config p").is_ok_and(|o| o.grpc_clusters.is_empty()));
    for bad in [
        "--grpc-cluster quota",
        "--grpc-cluster quota=ftp://x:1",
        "--grpc-cluster quota=http://x:1/path",
        "--grpc-cluster q=http://x:1 --grpc-cluster q=http://y:2",
    ] {
        match run(&format!("--wasm m --plugin-config p {bad}")) {
            Ok(o) => unreachable!("{bad} was accepted: {o:?}"),
            Err(e) => {
                let e = e.to_string();
                assert!(e.starts_with("--grpc-cluster \""), "{bad}: {e}");
            }
        }
    }
    assert!(USAGE.contains("--grpc-cluster NAME=URL"));
}
