#!/usr/bin/env python3
"""Build an OCI image of the filter that Istio's Wasm image fetcher accepts (standard library only).

Layout: the Wasm image spec's *compat* variant with the standard OCI media types, i.e. what a
`FROM scratch` + `COPY llm_router.wasm plugin.wasm` image looks like, without a Docker daemon:

    manifest   application/vnd.oci.image.manifest.v1+json
               annotations: module.wasm.image/variant = compat
    config     application/vnd.oci.image.config.v1+json
    layer      application/vnd.oci.image.layer.v1.tar+gzip   (exactly one)
               a tar holding one regular file, `plugin.wasm` = the filter, byte for byte

Written as an OCI image layout directory (oci-layout, index.json, blobs/sha256/...) and as a tar of
that directory (an "oci-archive", what `skopeo copy oci-archive:...` reads). Deterministic: fixed
mtimes, uid/gid 0, no user names, gzip without file name or time, sorted JSON keys; the same wasm
always gives the same digests.

    python3 scripts/oci_image.py --wasm dist/llm_router.wasm --out dist/oci \
        --archive dist/llm_router-oci.tar --tag 0.1.0 [--json]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
VARIANT_ANNOTATION = "module.wasm.image/variant"
PLUGIN_FILE = "plugin.wasm"
EPOCH = 0  # 1970-01-01T00:00:00Z, for every timestamp


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def tar_bytes(files: list[tuple[str, bytes, int]]) -> bytes:
    """A deterministic tar (USTAR) of (name, data, mode) regular files, in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    # filename="" and mtime=0: the gzip header carries no name and no time.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=EPOCH) as gz:
        gz.write(data)
    return buf.getvalue()


def build(wasm: bytes, tag: str, version: str) -> dict:
    """All blobs and the descriptors of the image. Returns a dict with 'blobs' {digest: bytes}."""
    if wasm[:4] != b"\0asm":
        raise ValueError("not a WebAssembly module (no \\0asm magic)")
    layer_tar = tar_bytes([(PLUGIN_FILE, wasm, 0o644)])
    layer = gzip_bytes(layer_tar)
    config = {
        "architecture": "wasm",
        "os": "wasip1",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Labels": {
                "org.opencontainers.image.title": "llm-router",
                "org.opencontainers.image.version": version,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256(layer_tar)]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "scripts/oci_image.py: plugin.wasm"}],
    }
    config_b = canonical_json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": "sha256:" + sha256(config_b), "size": len(config_b)},
        "layers": [{
            "mediaType": MT_LAYER,
            "digest": "sha256:" + sha256(layer),
            "size": len(layer),
            "annotations": {"org.opencontainers.image.title": PLUGIN_FILE},
        }],
        "annotations": {
            VARIANT_ANNOTATION: "compat",
            "org.opencontainers.image.title": "llm-router",
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.created": "1970-01-01T00:00:00Z",
        },
    }
    manifest_b = canonical_json(manifest)
    manifest_digest = "sha256:" + sha256(manifest_b)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest_b),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    }
    return {
        "blobs": {"sha256:" + sha256(b): b for b in (config_b, layer, manifest_b)},
        "index": canonical_json(index),
        "oci_layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
        "manifest_digest": manifest_digest,
        "config_digest": manifest["config"]["digest"],
        "layer_digest": manifest["layers"][0]["digest"],
        "wasm_sha256": sha256(wasm),
    }


def write_layout(img: dict, out: str) -> list[tuple[str, bytes, int]]:
    """Writes the OCI layout directory `out` (replacing it); returns its files for the archive."""
    files = [("oci-layout", img["oci_layout"], 0o644), ("index.json", img["index"], 0o644)]
    for digest in sorted(img["blobs"]):
        files.append(("blobs/sha256/" + digest.split(":", 1)[1], img["blobs"][digest], 0o644))
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for name, data, _ in files:
        path = os.path.join(tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return files


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wasm", default="dist/llm_router.wasm")
    ap.add_argument("--out", default="dist/oci", help="OCI image layout directory to write")
    ap.add_argument("--archive", default="dist/llm_router-oci.tar", help="tar of the layout (oci-archive)")
    ap.add_argument("--tag", default="latest", help="org.opencontainers.image.ref.name in index.json")
    ap.add_argument("--version", default=None, help="image version label (default: the tag)")
    ap.add_argument("--json", action="store_true", help="print the digests as JSON")
    a = ap.parse_args(argv)
    with open(a.wasm, "rb") as f:
        wasm = f.read()
    img = build(wasm, a.tag, a.version or a.tag)
    files = write_layout(img, a.out)
    if a.archive:
        # The archive holds the same files at its root (skopeo's oci-archive format).
        tmp = a.archive + ".tmp"
        with open(tmp, "wb") as f:
            f.write(tar_bytes(files))
        os.replace(tmp, a.archive)
    info = {k: img[k] for k in ("manifest_digest", "config_digest", "layer_digest", "wasm_sha256")}
    info.update(tag=a.tag, layout=a.out, archive=a.archive, wasm=a.wasm, wasm_bytes=len(wasm))
    if a.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"image digest   {info['manifest_digest']}   (WasmPlugin sha256 for an oci:// url: "
              f"{info['manifest_digest'].split(':', 1)[1]})")
        print(f"wasm sha256    {info['wasm_sha256']}   (WasmPlugin sha256 for an http(s):// url)")
        print(f"layout         {a.out}/  (tag {a.tag})")
        if a.archive:
            print(f"archive        {a.archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
