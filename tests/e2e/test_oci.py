"""`make oci` (scripts/oci.sh): the OCI image of the filter, checked structurally the way Istio's
image fetcher reads it (compat variant: OCI manifest, one tar+gzip layer holding plugin.wasm)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile

import pytest

import harness

REPO = harness.REPO_ROOT
OCI = REPO / "dist" / "oci"
ARCHIVE = REPO / "dist" / "llm_router-oci.tar"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture(scope="module")
def built():
    r = subprocess.run(["scripts/oci.sh"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def blob(digest: str) -> bytes:
    algo, hexd = digest.split(":", 1)
    assert algo == "sha256"
    data = (OCI / "blobs" / "sha256" / hexd).read_bytes()
    assert sha(data) == hexd, f"blob {digest} content does not match its digest"
    return data


def test_layout_manifest_and_plugin_wasm(built):
    assert json.loads((OCI / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((OCI / "index.json").read_text())
    assert index["schemaVersion"] == 2 and len(index["manifests"]) == 1
    desc = index["manifests"][0]
    assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert desc["annotations"]["org.opencontainers.image.ref.name"]
    mb = blob(desc["digest"])
    assert len(mb) == desc["size"]
    m = json.loads(mb)
    assert m["schemaVersion"] == 2
    assert m["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert m["annotations"]["module.wasm.image/variant"] == "compat"
    assert m["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    cfg_b = blob(m["config"]["digest"])
    assert len(cfg_b) == m["config"]["size"]
    cfg = json.loads(cfg_b)
    assert len(m["layers"]) == 1
    layer = m["layers"][0]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    lb = blob(layer["digest"])
    assert len(lb) == layer["size"]
    tar_b = gzip.decompress(lb)
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + sha(tar_b)]}
    with tarfile.open(fileobj=io.BytesIO(tar_b)) as tf:
        members = tf.getmembers()
        assert [x.name for x in members] == ["plugin.wasm"]
        assert members[0].isreg() and members[0].uid == 0 and members[0].mtime == 0
        data = tf.extractfile(members[0]).read()
    assert data == harness.WASM_PATH.read_bytes(), "plugin.wasm differs from dist/llm_router.wasm"
    # The digests printed for the WasmPlugin.
    assert re.search(r"image digest\s+" + re.escape(desc["digest"]), built), built
    assert re.search(r"wasm sha256\s+" + sha(data), built), built


def test_archive_holds_the_same_layout(built):
    with tarfile.open(ARCHIVE) as tf:
        names = tf.getnames()
        assert "oci-layout" in names and "index.json" in names
        for n in names:
            assert tf.extractfile(n).read() == (OCI / n).read_bytes(), n


def test_deterministic(built):
    first = {p.name: p.read_bytes() for p in (OCI / "blobs" / "sha256").iterdir()}
    archive = ARCHIVE.read_bytes()
    r = subprocess.run(["scripts/oci.sh"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_bytes() for p in (OCI / "blobs" / "sha256").iterdir()} == first
    assert ARCHIVE.read_bytes() == archive
