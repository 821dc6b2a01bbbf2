#!/usr/bin/env python3
"""Crafted inputs for tests/c/hostile.c: bundles and checkpoint directories another tool, another
team or a download could hand a host, each wrong in one way, and the status the host must get.

    python3 tests/c/make_hostile.py BUNDLE EXTERNAL_BUNDLE OUT

BUNDLE is a bundle with inline graphs, EXTERNAL_BUNDLE the same generator exported with its
weights in external data files (`pdiff export --inline-graph-limit 0`). OUT receives one
directory per case: `bundle-<name>/` (opened with pdiff_sampler_open) or `checkpoints-<name>/`
(loaded with pdiff_dataset_load_dir, full builds only), and `<dir>.expect` holding the status
name the C host must get. Sparse files keep the huge cases cheap on disk.
"""
import hashlib
import json
import os
import pathlib
import shutil
import struct
import sys

import onnx

GIB = 1 << 30


def sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 24)
            if not block:
                return h.hexdigest()
            h.update(block)


def case(out: pathlib.Path, name: str, source: pathlib.Path, expect: str) -> pathlib.Path:
    d = out / name
    shutil.copytree(source, d, symlinks=True)
    (out / f"{name}.expect").write_text(expect + "\n")
    return d


def edit_manifest(bundle: pathlib.Path, edit) -> None:
    path = bundle / "pdiff.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))


def rehash(bundle: pathlib.Path, *files: str) -> None:
    edit_manifest(bundle, lambda m: m["sha256"].update({f: sha256_file(bundle / f) for f in files}))


def external_data(out: pathlib.Path, external: pathlib.Path) -> None:
    """A tensor's external data declared 4 GiB long, every hash right. With its shape left as it
    is, the length is refused; with the shape grown to match (a consistent 4 GiB tensor, in a
    sparse file), the library gets as far as allocating it, which must fail softly under the
    limit (an error status), never abort."""
    size = 4 * GIB
    for name, grow_shape, expect in [
        ("bundle-external-data-length", False, "PDIFF_ERR_BUNDLE"),
        ("bundle-external-data-huge", True, "PDIFF_ERR_OUT_OF_MEMORY"),
    ]:
        d = case(out, name, external, expect)
        model = onnx.load(str(d / "decoder.onnx"), load_external_data=False)
        t = next(t for t in model.graph.initializer if any(e.key == "length" for e in t.external_data))
        for e in t.external_data:
            if e.key == "offset":
                e.value = "0"
            if e.key == "length":
                e.value = str(size)
        if grow_shape:
            del t.dims[:]
            t.dims.append(size // 4)
        onnx.save(model, str(d / "decoder.onnx"))
        with open(d / "decoder.onnx.data", "r+b") as f:
            f.truncate(size)
        rehash(d, "decoder.onnx", "decoder.onnx.data")


def main() -> None:
    bundle, external, out = (pathlib.Path(a) for a in sys.argv[1:4])
    out.mkdir(parents=True)
    # The control: a good bundle opens.
    case(out, "bundle-good", bundle, "PDIFF_OK")
    external_data(out, external)
    # Manifest fields that would size allocations, beyond the limits or inconsistent.
    for name, edit in [
        ("latent-dim", lambda m: m.update(latent_dim=1 << 40)),
        ("param-count", lambda m: m.update(param_count=(1 << 64) - 1)),
        ("channels", lambda m: m["autoencoder"]["encoder"][0].update(channels=1 << 40)),
        ("timesteps", lambda m: m["schedule"].update(timesteps=70_000_000_000_000_000)),
        ("shape-overflow", lambda m: m["layout"][0].update(shape=[1 << 32, 1 << 32, 1 << 32])),
    ]:
        edit_manifest(case(out, f"bundle-manifest-{name}", bundle, "PDIFF_ERR_BUNDLE"), edit)
    # A manifest naming a key twice.
    d = case(out, "bundle-manifest-duplicate-key", bundle, "PDIFF_ERR_BUNDLE")
    text = (d / "pdiff.json").read_text()
    (d / "pdiff.json").write_text(text.replace('"param_count"', '"param_count": 1, "param_count"', 1))
    # Files that resolve outside the bundle: a link to a copy elsewhere, a link to a device.
    d = case(out, "bundle-link-outside", bundle, "PDIFF_ERR_BUNDLE")
    shutil.move(str(d / "decoder.onnx"), str(out / "decoder-elsewhere.onnx"))
    os.symlink(out / "decoder-elsewhere.onnx", d / "decoder.onnx")
    d = case(out, "bundle-link-device", bundle, "PDIFF_ERR_BUNDLE")
    (d / "denoiser.onnx").unlink()
    os.symlink("/dev/zero", d / "denoiser.onnx")
    # A FIFO as the manifest: refused at once, never waited on.
    d = case(out, "bundle-fifo-manifest", bundle, "PDIFF_ERR_BUNDLE")
    (d / "pdiff.json").unlink()
    os.mkfifo(d / "pdiff.json")
    # Checkpoints (full builds): a FIFO among them, a device among them.
    good = out / "checkpoints-template"
    good.mkdir()
    for i in range(3):
        header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
        (good / f"c{i}.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + struct.pack("<4f", i, 1, 2, 3))
    (out / "checkpoints-good.expect").write_text("PDIFF_OK\n")
    shutil.copytree(good, out / "checkpoints-good")
    d = case(out, "checkpoints-fifo", good, "PDIFF_ERR_IO")
    os.mkfifo(d / "c9.safetensors")
    d = case(out, "checkpoints-device", good, "PDIFF_ERR_IO")
    os.symlink("/dev/zero", d / "c9.safetensors")
    # Two checkpoints whose headers declare (and whose sparse files hold) 4 GiB each: consistent,
    # so the library gets as far as allocating K x D, which must fail softly under the limit.
    d = out / "checkpoints-huge"
    d.mkdir()
    (out / "checkpoints-huge.expect").write_text("PDIFF_ERR_OUT_OF_MEMORY\n")
    n = GIB  # floats: 4 GiB of data per checkpoint
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    for i in range(2):
        with open(d / f"c{i}.safetensors", "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            f.truncate(8 + len(header) + 4 * n)
    shutil.rmtree(good)


if __name__ == "__main__":
    main()
