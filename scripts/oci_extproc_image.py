#!/usr/bin/env python3
"""Build an OCI image of llm-router-extproc without a Docker daemon (standard library only).

One layer, no base image; what a `FROM scratch` image with these files would hold:

    usr/local/bin/llm-router-extproc      the server (release build)
    usr/local/bin/llm-router-sidecar      the load sidecar (same image, other command)
    usr/share/llm-router/llm_router.wasm  the filter the server runs
    etc/llm-router/plugin.json            default plugin configuration (a ConfigMap mounted over
                                          /etc/llm-router replaces it: deploy/extproc/)
    etc/passwd, etc/group                 the non-root user 65532 (nonroot)
    the shared libraries the binaries load, at the paths the dynamic loader looks in (from `ldd`
    on the build machine: glibc, libgcc_s, the loader itself), so the image needs no base

Config: user 65532:65532, entrypoint the server with the bundled wasm and config, ports 9002
(ext_proc), 9003 (gRPC health), 9090 (metrics and load pushes). Deterministic like
scripts/oci_image.py: the same files give the same digests.

    python3 scripts/oci_extproc_image.py --extproc target/release/llm-router-extproc \
        --sidecar target/release/llm-router-sidecar --wasm dist/llm_router.wasm \
        --plugin-config deploy/extproc/config/plugin.json --out dist/oci-extproc \
        --archive dist/llm-router-extproc-oci.tar --tag 0.1.0
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oci_image import EPOCH, MT_CONFIG, MT_LAYER, MT_MANIFEST, canonical_json, gzip_bytes, sha256, tar_bytes, write_layout  # noqa: E402

EXTPROC = "usr/local/bin/llm-router-extproc"
SIDECAR = "usr/local/bin/llm-router-sidecar"
WASM = "usr/share/llm-router/llm_router.wasm"
PLUGIN = "etc/llm-router/plugin.json"
UID = 65532
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def shared_libraries(binary: str) -> list[str]:
    """Absolute paths of the shared objects `binary` loads (with the loader), sorted; [] if static."""
    r = subprocess.run(["ldd", binary], capture_output=True, text=True)
    out = r.stdout + r.stderr
    if "not a dynamic executable" in out or "statically linked" in out:
        return []
    if r.returncode != 0:
        raise SystemExit(f"oci-extproc: ldd {binary} failed: {out.strip()}")
    libs = set()
    for line in r.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            raise SystemExit(f"oci-extproc: {binary}: {line}")
        m = re.match(r"^\S+ => (/\S+) \(0x[0-9a-f]+\)$", line) or re.match(r"^(/\S+) \(0x[0-9a-f]+\)$", line)
        if m:
            libs.add(m.group(1))
    return sorted(libs)


def layer_tar(files: list[tuple[str, bytes, int]]) -> bytes:
    """Directories first (root-owned, 0755; /tmp 1777), then the files, all sorted."""
    dirs = set()
    for name, _, _ in files:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    dirs.add("tmp")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "", ""
            tf.addfile(info)
        for name, data, mode in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.type = len(data), mode, tarfile.REGTYPE
            info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "", ""
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def build(a) -> dict:
    wasm = read(a.wasm)
    if wasm[:4] != b"\0asm":
        raise SystemExit(f"oci-extproc: {a.wasm} is not a WebAssembly module")
    plugin = read(a.plugin_config)
    json.loads(plugin)  # must at least be JSON; the filter judges the rest
    files = [(EXTPROC, read(a.extproc), 0o755), (SIDECAR, read(a.sidecar), 0o755),
             (WASM, wasm, 0o644), (PLUGIN, plugin, 0o644),
             ("etc/passwd", f"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{UID}:{UID}:nonroot:/home/nonroot:/sbin/nologin\n".encode(), 0o644),
             ("etc/group", f"root:x:0:\nnonroot:x:{UID}:\n".encode(), 0o644)]
    libs = sorted(set(shared_libraries(a.extproc)) | set(shared_libraries(a.sidecar)))
    for lib in libs:
        files.append((lib.lstrip("/"), read(os.path.realpath(lib)), 0o755))
    tar = layer_tar(files)
    layer = gzip_bytes(tar)
    arch = ARCH.get(platform.machine(), platform.machine())
    config = {
        "architecture": arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "User": f"{UID}:{UID}",
            "Entrypoint": ["/" + EXTPROC],
            "Cmd": [f"--wasm=/{WASM}", f"--plugin-config=/{PLUGIN}"],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "WorkingDir": "/",
            "ExposedPorts": {"9002/tcp": {}, "9003/tcp": {}, "9090/tcp": {}},
            "Labels": {"org.opencontainers.image.title": "llm-router-extproc",
                       "org.opencontainers.image.version": a.version or a.tag},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256(tar)]},
        "history": [{"created": "1970-01-01T00:00:00Z",
                     "created_by": "scripts/oci_extproc_image.py: server, sidecar, wasm, plugin.json, shared libraries"}],
    }
    config_b = canonical_json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": "sha256:" + sha256(config_b), "size": len(config_b)},
        "layers": [{"mediaType": MT_LAYER, "digest": "sha256:" + sha256(layer), "size": len(layer)}],
        "annotations": {"org.opencontainers.image.title": "llm-router-extproc",
                        "org.opencontainers.image.version": a.version or a.tag,
                        "org.opencontainers.image.created": "1970-01-01T00:00:00Z"},
    }
    manifest_b = canonical_json(manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": MT_MANIFEST, "digest": "sha256:" + sha256(manifest_b), "size": len(manifest_b),
                       "platform": {"architecture": arch, "os": "linux"},
                       "annotations": {"org.opencontainers.image.ref.name": a.tag}}],
    }
    return {"blobs": {"sha256:" + sha256(b): b for b in (config_b, layer, manifest_b)},
            "index": canonical_json(index), "oci_layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
            "manifest_digest": "sha256:" + sha256(manifest_b), "libraries": libs}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extproc", default="target/release/llm-router-extproc")
    ap.add_argument("--sidecar", default="target/release/llm-router-sidecar")
    ap.add_argument("--wasm", default="dist/llm_router.wasm")
    ap.add_argument("--plugin-config", default="deploy/extproc/config/plugin.json")
    ap.add_argument("--out", default="dist/oci-extproc")
    ap.add_argument("--archive", default="dist/llm-router-extproc-oci.tar")
    ap.add_argument("--tag", default="latest")
    ap.add_argument("--version", default=None)
    a = ap.parse_args(argv)
    for what in ("extproc", "sidecar", "wasm", "plugin_config"):
        if not os.path.isfile(getattr(a, what)):
            raise SystemExit(f"oci-extproc: {getattr(a, what)} is missing")
    img = build(a)
    files = write_layout(img, a.out)
    if a.archive:
        tmp = a.archive + ".tmp"
        with open(tmp, "wb") as f:
            f.write(tar_bytes(files))
        os.replace(tmp, a.archive)
    print(f"image digest   {img['manifest_digest']}")
    print(f"libraries      {' '.join(img['libraries']) or '(static binaries)'}")
    print(f"layout         {a.out}/  (tag {a.tag})")
    if a.archive:
        print(f"archive        {a.archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
