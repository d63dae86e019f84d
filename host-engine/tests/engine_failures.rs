//! Failures in the production engine, on a tiny guest (`tests/wat/trap_guest.wat`): a trap
//! fails only its stream and the VM is recreated; a runaway callback traps instead of hanging;
//! a rejected configuration; the memory limit per VM.

use anyhow::{anyhow, bail, Result};
use host_engine::{Engine, EngineOptions, HeaderPairs, Step, StreamProps};

const GUEST: &str = include_str!("wat/trap_guest.wat");

fn start(workers: usize, fail_open: bool) -> Result<Engine> {
    Engine::start(EngineOptions {
        wasm: GUEST.as_bytes().to_vec(),
        plugin_config: b"{}".to_vec(),
        workers,
        fail_open,
        ..EngineOptions::default()
    })
    .map_err(|e| anyhow!("{e}"))
}

fn get(extra: Option<&str>) -> HeaderPairs {
    let mut h: Vec<(&str, &str)> = vec![(":path", "/"), (":method", "GET"), (":authority", "a")];
    if let Some(name) = extra {
        h.push((name, "1"));
    }
    h.into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn continued(step: &Step) -> bool {
    matches!(
        step,
        Step::Continue {
            headers: Some(_),
            end_of_stream: true,
            ..
        }
    )
}

#[test]
fn a_trap_fails_only_its_stream_and_the_vm_is_recreated() -> Result<()> {
    let engine = start(2, false)?;
    // Worker 0: a request before the trap. Worker 1: a stream open across the trap.
    let mut before = engine.open_stream(StreamProps::default());
    let mut other = engine.open_stream(StreamProps::default());
    assert_eq!((before.worker(), other.worker()), (0, 1));
    assert!(continued(&before.request_headers(get(None), true)));
    before.finish();

    let mut bad = engine.open_stream(StreamProps::default());
    assert_eq!(bad.worker(), 0);
    match bad.request_headers(get(Some("x-trap")), true) {
        Step::Trapped {
            continue_unchanged: false,
            message,
        } => assert!(message.contains("unreachable"), "{message}"),
        other => bail!("expected a fail-closed trap, got {other:?}"),
    }
    // The trapped stream stays failed; finishing it is harmless.
    assert!(matches!(
        bad.response_headers(get(None), true),
        Step::Trapped { .. }
    ));
    bad.finish();

    // The other worker's open stream is untouched.
    assert!(continued(&other.request_headers(get(None), true)));
    other.finish();
    // Worker 0 runs a new VM: the next stream there works (round robin passes worker 1 first).
    let mut filler = engine.open_stream(StreamProps::default());
    assert!(continued(&filler.request_headers(get(None), true)));
    filler.finish();
    let mut next = engine.open_stream(StreamProps::default());
    assert_eq!(next.worker(), 0);
    assert!(continued(&next.request_headers(get(None), true)));
    next.finish();
    let stats = engine.stats();
    assert_eq!((stats.traps, stats.vm_reloads), (1, 1), "{stats:?}");
    Ok(())
}

#[test]
fn fail_open_lets_a_trapped_stream_pass_unchanged() -> Result<()> {
    let engine = start(1, true)?;
    let mut s = engine.open_stream(StreamProps::default());
    match s.request_headers(get(Some("x-trap")), true) {
        Step::Trapped {
            continue_unchanged: true,
            ..
        } => {}
        other => bail!("expected a fail-open trap, got {other:?}"),
    }
    s.finish();
    let mut s = engine.open_stream(StreamProps::default());
    assert!(continued(&s.request_headers(get(None), true)));
    Ok(())
}

#[test]
fn a_runaway_callback_traps_instead_of_hanging() -> Result<()> {
    let engine = start(1, false)?;
    let mut s = engine.open_stream(StreamProps::default());
    match s.request_headers(get(Some("x-loop")), true) {
        Step::Trapped { message, .. } => assert!(message.contains("fuel"), "{message}"),
        other => bail!("expected a trap, got {other:?}"),
    }
    drop(s);
    let mut s = engine.open_stream(StreamProps::default());
    assert!(continued(&s.request_headers(get(None), true)));
    assert_eq!(engine.stats().vm_reloads, 1);
    Ok(())
}

#[test]
fn a_rejected_configuration_fails_start_and_reconfigure_with_the_guest_log() -> Result<()> {
    let err = Engine::start(EngineOptions {
        wasm: GUEST.as_bytes().to_vec(),
        plugin_config: b"bad".to_vec(),
        ..EngineOptions::default()
    })
    .err()
    .ok_or_else(|| anyhow!("a rejected configuration started"))?;
    assert!(
        err.0.contains("trap_guest: configuration rejected"),
        "{err}"
    );

    let engine = start(2, false)?;
    let err = engine
        .reconfigure(b"bad".to_vec())
        .err()
        .ok_or_else(|| anyhow!("a rejected configuration was taken"))?;
    assert!(err.0.contains("configuration rejected"), "{err}");
    engine
        .reconfigure(b"{\"ok\":1}".to_vec())
        .map_err(|e| anyhow!("{e}"))?;
    let stats = engine.stats();
    assert_eq!((stats.config_reloads, stats.config_reload_failures), (1, 1));
    Ok(())
}

#[test]
fn a_vm_over_its_memory_limit_does_not_start() -> Result<()> {
    // The guest declares 2 pages (128 KiB) of memory.
    let err = Engine::start(EngineOptions {
        wasm: GUEST.as_bytes().to_vec(),
        plugin_config: b"{}".to_vec(),
        memory_limit_bytes: 64 * 1024,
        ..EngineOptions::default()
    })
    .err()
    .ok_or_else(|| anyhow!("a VM over its memory limit started"))?;
    assert!(err.0.contains("instantiating worker 0"), "{err}");
    Ok(())
}
