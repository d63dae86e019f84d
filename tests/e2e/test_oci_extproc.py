"""`make oci-extproc` (scripts/oci-extproc.sh): the OCI image of llm-router-extproc. Checked
structurally (OCI layout, one layer, config) and by running it: the layer unpacked into a
directory and started with chroot as the image's user, with no file from the host, serves
Prometheus metrics and accepts a load push with the token, as in deploy/extproc/deployment.yaml.
Needs root (chroot), like CI."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile

import pytest

import harness

REPO = harness.REPO_ROOT
OCI = REPO / "dist" / "oci-extproc"
ARCHIVE = REPO / "dist" / "llm-router-extproc-oci.tar"
EXTPROC = REPO / "target" / "release" / "llm-router-extproc"
SIDECAR = REPO / "target" / "release" / "llm-router-sidecar"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def build_image() -> subprocess.CompletedProcess:
    return subprocess.run(["scripts/oci-extproc.sh"], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def built():
    if not (REPO / "extproc" / "Cargo.toml").exists():
        pytest.fail("the llm-router-extproc crate (extproc/) is not in this tree: the image cannot be built "
                    "until it is merged")
    r = subprocess.run(["cargo", "build", "-q", "--release", "-p", "llm-router-extproc", "-p", "llm-router-sidecar"],
                       cwd=REPO, capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0 and EXTPROC.exists() and SIDECAR.exists(), r.stderr[-3000:]
    r = build_image()
    assert r.returncode == 0, r.stderr
    return r.stdout


def blob(digest: str) -> bytes:
    algo, hexd = digest.split(":", 1)
    assert algo == "sha256"
    data = (OCI / "blobs" / "sha256" / hexd).read_bytes()
    assert sha(data) == hexd, f"blob {digest} content does not match its digest"
    return data


def image():
    index = json.loads((OCI / "index.json").read_text())
    assert index["schemaVersion"] == 2 and len(index["manifests"]) == 1
    desc = index["manifests"][0]
    m = json.loads(blob(desc["digest"]))
    cfg = json.loads(blob(m["config"]["digest"]))
    assert len(m["layers"]) == 1
    layer = blob(m["layers"][0]["digest"])
    return desc, m, cfg, gzip.decompress(layer)


def test_layout_config_and_files(built):
    assert json.loads((OCI / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    desc, m, cfg, tar_b = image()
    assert desc["mediaType"] == m["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert m["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert m["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert cfg["os"] == "linux" and cfg["rootfs"]["diff_ids"] == ["sha256:" + sha(tar_b)]
    c = cfg["config"]
    assert c["User"] == "65532:65532"
    assert c["Entrypoint"] == ["/usr/local/bin/llm-router-extproc"]
    assert set(c["ExposedPorts"]) == {"9002/tcp", "9003/tcp", "9090/tcp"}
    with tarfile.open(fileobj=io.BytesIO(tar_b)) as tf:
        files = {x.name: x for x in tf.getmembers()}
        for x in files.values():
            assert x.uid == 0 and x.mtime == 0, x.name
        read = lambda n: tf.extractfile(files[n]).read()  # noqa: E731
        assert read("usr/local/bin/llm-router-extproc") == EXTPROC.read_bytes()
        assert read("usr/local/bin/llm-router-sidecar") == SIDECAR.read_bytes()
        assert read("usr/share/llm-router/llm_router.wasm") == harness.WASM_PATH.read_bytes()
        assert json.loads(read("etc/llm-router/plugin.json")) == json.loads(
            (REPO / "deploy" / "extproc" / "config" / "plugin.json").read_text())
        assert files["usr/local/bin/llm-router-extproc"].mode & 0o111
    # The Deployment's arguments name files that the image has.
    assert re.search(r"image digest\s+" + re.escape(desc["digest"]), built), built


def test_archive_holds_the_same_layout(built):
    with tarfile.open(ARCHIVE) as tf:
        for n in tf.getnames():
            assert tf.extractfile(n).read() == (OCI / n).read_bytes(), n


def test_deterministic(built):
    first = {p.name: p.read_bytes() for p in (OCI / "blobs" / "sha256").iterdir()}
    archive = ARCHIVE.read_bytes()
    r = build_image()
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_bytes() for p in (OCI / "blobs" / "sha256").iterdir()} == first
    assert ARCHIVE.read_bytes() == archive


def test_image_runs_without_host_files(built, tmp_path):
    """The unpacked layer alone runs the server as user 65532 (chroot: no library from the host)."""
    assert os.geteuid() == 0, "this test unpacks the image and chroots into it: run it as root (CI does)"
    _, _, cfg, tar_b = image()
    root = tmp_path / "rootfs"
    with tarfile.open(fileobj=io.BytesIO(tar_b)) as tf:
        tf.extractall(root, filter="tar")
    user = cfg["config"]["User"]
    # Resolved here: the server below runs with the image's PATH only.
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    r = subprocess.run([chroot, f"--userspec={user}", str(root), "/usr/local/bin/llm-router-sidecar", "--help"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    grpc, health, metrics = harness.free_port(), harness.free_port(), harness.free_port()
    token = "image-test-token"
    cmd = [chroot, f"--userspec={user}", str(root)] + cfg["config"]["Entrypoint"] + cfg["config"]["Cmd"] + [
        "--plaintext", f"--grpc-addr=127.0.0.1:{grpc}", f"--health-addr=127.0.0.1:{health}",
        f"--metrics-addr=127.0.0.1:{metrics}", "--workers=1", "--env=LLM_ROUTER_PUSH_TOKEN"]
    env = {"PATH": "/usr/local/bin", "LLM_ROUTER_PUSH_TOKEN": token}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def metrics_up():
            try:
                r = harness.get("/metrics", port=metrics, timeout=2)
                return r if r.status == 200 and "llm_router" in r.text else None
            except OSError:
                return None
        assert harness.wait_for(metrics_up, timeout=60) is not None, "no /metrics from the image's server"
        push = json.loads((REPO / "deploy" / "extproc" / "config" / "plugin.json").read_text())["endpoints"]["push_path"]
        snap = {"pools": {"small": [{"address": "10.0.0.7:8000", "waiting": 0, "running": 0, "kv_cache": 0.0,
                                     "healthy": True}], "large": []}}
        r = harness.post_json(push, snap, {"authorization": f"Bearer {token}"}, port=metrics)
        assert r.status == 204, (r.status, r.text[:300])
        r = harness.post_json(push, snap, {"authorization": "Bearer wrong"}, port=metrics)
        assert r.status in (401, 403), r.status
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=40)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
