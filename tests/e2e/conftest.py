"""pytest fixtures for llm-router's end-to-end tests (helpers live in harness.py).

Fixtures
    envoy_bin         (session)  path of the Envoy binary
    mocks             (module)   mock servers on the upstream ports of envoy-config/envoy.yaml
    envoy             (module)   Envoy on envoy-config/envoy.yaml with dist/llm_router.wasm
    envoy_factory     (function) start Envoy on any config; stopped after the test
    mocks_factory     (function) start mock servers; stopped after the test
    process_factory   (function) start another helper process (e.g. the sidecar); stopped after
    extproc_factory   (function) start llm-router-extproc (harness.start_extproc); stopped after
    redis_factory     (function) start redis-server (harness.start_redis); stopped after
    quota_factory     (function) start `llm-router-extproc quota` (harness.start_quota); stopped after

When a test fails, the part of every Envoy log written while the test ran (and the mock servers'
log) is attached to the failure report. Set E2E_KEEP_LOGS=1 to keep all logs after the session.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

MAX_DUMP_BYTES = 200_000
# Envoy's start-up listing of compiled-in extensions and header maps: hundreds of long lines that
# never explain a failure.
_LOG_NOISE = re.compile(r"^.*\]\[main\] \[source/server/server\.cc:\d+\]   .*\n", re.M)


def pytest_report_header(config):
    try:
        out = subprocess.run([harness.envoy_bin(), "--version"], capture_output=True, text=True,
                             timeout=60).stdout.strip()
    except Exception as e:  # noqa: BLE001 - the envoy_bin fixture reports it as a failure
        return f"envoy: not available ({e})"
    return f"envoy: {out.split('version:', 1)[-1].strip()} (ENVOY_VERSION={os.environ.get('ENVOY_VERSION', '-')})"


@pytest.fixture(scope="session")
def envoy_bin() -> str:
    try:
        return harness.envoy_bin()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"no Envoy binary: {e}", pytrace=False)


@pytest.fixture
def envoy_factory(envoy_bin):
    """envoy = envoy_factory("envoy-config/envoy.yaml", concurrency=2, extra_args=(), env={...})"""
    with contextlib.ExitStack() as stack:
        def start(config_path=harness.DEFAULT_CONFIG, **kw):
            return stack.enter_context(harness.start_envoy(config_path, **kw))
        yield start


@pytest.fixture
def mocks_factory():
    """m = mocks_factory({"small-1": 8101}, token_delay_ms=10, load={"small-1": (2, 1, 0.3)})"""
    with contextlib.ExitStack() as stack:
        def start(instances=None, **kw):
            return stack.enter_context(harness.start_mocks(instances, **kw))
        yield start


@pytest.fixture
def process_factory():
    """sc = process_factory(["target/release/llm-router-sidecar", ...], "sidecar", env={...})"""
    with contextlib.ExitStack() as stack:
        def start(cmd, name, **kw):
            return stack.enter_context(harness.start_process(cmd, name, **kw))
        yield start


@pytest.fixture
def extproc_factory():
    """srv = extproc_factory(plugin_config_dict, tls=False, fail_open=False, env={...})
    A missing binary or .wasm fails the test (never skips)."""
    with contextlib.ExitStack() as stack:
        def start(plugin_config, **kw):
            try:
                return stack.enter_context(harness.start_extproc(plugin_config, **kw))
            except FileNotFoundError as e:
                pytest.fail(str(e), pytrace=False)
        yield start


@pytest.fixture
def redis_factory():
    """redis = redis_factory(); redis.kill(); redis.restart(); redis.hgetall(key)
    Debian's redis-server on a free port, no persistence. A missing binary fails the test."""
    with contextlib.ExitStack() as stack:
        def start(**kw):
            try:
                return stack.enter_context(harness.start_redis(**kw))
            except FileNotFoundError as e:
                pytest.fail(str(e), pytrace=False)
        yield start


@pytest.fixture
def quota_factory():
    """q = quota_factory(redis, plugin_config=None); q.grpc_port, q.url
    A missing binary fails the test (never skips)."""
    with contextlib.ExitStack() as stack:
        def start(redis, plugin_config=None, **kw):
            try:
                return stack.enter_context(harness.start_quota(redis, plugin_config, **kw))
            except FileNotFoundError as e:
                pytest.fail(str(e), pytrace=False)
        yield start


@contextlib.contextmanager
def _clear_port_errors():
    try:
        yield
    except harness.PortInUse as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def mocks():
    """Mock model servers on the upstream ports of envoy-config/envoy.yaml (DEFAULT_MOCKS)."""
    with _clear_port_errors():
        cm = harness.start_mocks(harness.DEFAULT_MOCKS)
        m = cm.__enter__()
    try:
        yield m
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="module")
def envoy(envoy_bin, mocks):
    """Envoy on envoy-config/envoy.yaml (listener 127.0.0.1:10000, admin 9901) with the filter."""
    if not harness.WASM_PATH.exists():
        pytest.fail(f"{harness.WASM_PATH} is missing: run `make build` first", pytrace=False)
    if not harness.DEFAULT_CONFIG.exists():
        pytest.fail(f"{harness.DEFAULT_CONFIG} is missing", pytrace=False)
    with _clear_port_errors():
        cm = harness.start_envoy(harness.DEFAULT_CONFIG)
        e = cm.__enter__()
    try:
        yield e
    finally:
        cm.__exit__(None, None, None)


# ---------------------------------------------------------------------------------------------
# Log dumps on failure


def _marks():
    return ({id(e): (e.log_size(), e.stderr_size()) for e in harness.ALL_ENVOYS},
            {id(m): m.log_size() for m in harness.ALL_MOCKS},
            {id(p): p.log_size() for p in harness.ALL_PROCS})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Log offsets before the test (and its fixtures) start: only what it caused is dumped.
    item._e2e_log_marks = _marks()
    item._e2e_t0 = time.time()


def _relevant(objs, marks, t0, zero):
    """Processes alive during the test: started before it and still running at its start, or
    started while it ran. Yields (process, log offsets at the test's start)."""
    for o in objs:
        if id(o) in marks:
            if not o.running() and marks[id(o)] == _sizes(o):
                continue  # stopped before this test and silent since
            yield o, marks[id(o)]
        elif o.started_at >= t0 - 1:
            yield o, zero


def _sizes(o):
    return (o.log_size(), o.stderr_size()) if isinstance(o, harness.EnvoyProcess) else o.log_size()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    marks = getattr(item, "_e2e_log_marks", ({}, {}, {}))
    t0 = getattr(item, "_e2e_t0", 0.0)
    envoys = list(_relevant(harness.ALL_ENVOYS, marks[0], t0, (0, 0)))
    mocks = list(_relevant(harness.ALL_MOCKS, marks[1], t0, 0))
    procs = list(_relevant(harness.ALL_PROCS, marks[2], t0, 0))
    if envoys:
        time.sleep(0.25)  # Envoy flushes its log file every 100 ms (--file-flush-interval-msec)
    for e, since in envoys:
        state = "running" if e.running() else f"exited {e.proc.returncode}"
        text = _LOG_NOISE.sub("", e.log_text(since[0], MAX_DUMP_BYTES))
        rep.sections.append((f"Envoy log ({e.config_path.name}, pid {e.pid}, {state}, "
                             f"{e.log_path}) during {rep.when}", text or "(empty)"))
        err = e.stderr_text(50_000, since[1])
        if since[1] == 0:  # drop the command line we wrote first
            err = err.split("\n", 1)[1] if "\n" in err else ""
        if err.strip():
            rep.sections.append((f"Envoy stdout/stderr (pid {e.pid}) during {rep.when}", err))
    for m, since in mocks:
        text = m.log_text(since, 50_000)
        if text:
            rep.sections.append((f"mock servers log (pid {m.proc.pid}) during {rep.when}", text))
    for p, since in procs:
        text = p.log_text(since, 100_000)
        if text:
            state = "running" if p.running() else f"exited {p.proc.returncode}"
            rep.sections.append((f"{p.name} log (pid {p.pid}, {state}) during {rep.when}", text))


def pytest_sessionfinish(session, exitstatus):
    d = harness.cleanup_workdir()  # kept when E2E_KEEP_LOGS is set
    if d is not None:
        sys.stderr.write(f"\ne2e logs kept in {d}\n")
