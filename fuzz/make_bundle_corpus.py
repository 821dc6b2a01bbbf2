#!/usr/bin/env python3
"""Write the seed corpus of the bundle_dir fuzz target from tests/fixtures/tiny-bundle:

    python3 fuzz/make_bundle_corpus.py          # rewrites fuzz/corpus/bundle_dir/

The input format is fuzz/src/bundle_input.rs's: flags, n, DDIM steps, then pdiff.json (or edits
of the fixture's), decoder.onnx and denoiser.onnx with a separator between them.
A whole manifest is written compactly with its loss curves cut to 2 values (it stays valid: the
bundle's hashes cover the two graphs, not the manifest), so that mutations land on the fields
that matter.
scripts/fuzz.sh checks that the valid seeds open and sample. Files named regress-* in that
directory are inputs the fuzzer once crashed on, kept as they were found: this script leaves
them alone.
"""
import hashlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "tiny-bundle"
OUT = ROOT / "fuzz" / "corpus" / "bundle_dir"
FIX_HASHES, DDPM, WRITE_FILES, EDIT = 1, 2, 4, 8
# bundle_input.rs's STRINGS.
STRINGS = ["", "decoder.onnx", "denoiser.onnx", "pdiff.json", "../decoder.onnx", "/dev/zero", ".", "epsilon", "x0",
           "linear", "cosine", "compact", "paper", "per_tensor_standardize"]
SEPARATOR = b"\0--pdiff-fuzz-next-file--\0"


def encode(flags: int, n_byte: int, steps_byte: int, manifest: bytes, decoder: bytes, denoiser: bytes) -> bytes:
    for section in (manifest, decoder, denoiser):
        assert SEPARATOR not in section, "a file holds the separator"
    return bytes([flags, n_byte, steps_byte]) + SEPARATOR.join((manifest, decoder, denoiser))


def leaves(value, at="", out=None):
    """bundle_input.rs's `leaves`: JSON pointers of the leaves outside "history", depth first,
    object keys sorted, array elements in order."""
    out = [] if out is None else out
    if isinstance(value, dict):
        for key in sorted(value):
            if not (at == "" and key == "history"):
                leaves(value[key], f"{at}/{key.replace('~', '~0').replace('/', '~1')}", out)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            leaves(child, f"{at}/{i}", out)
    else:
        out.append(at)
    return out


def edit(manifest, pointer: str, what: int, value: int) -> bytes:
    """One 11-byte edit: leaf index (u16 big-endian), what, value (u64 little-endian)."""
    return leaves(manifest).index(pointer).to_bytes(2, "big") + bytes([what]) + value.to_bytes(8, "little")


def main() -> None:
    m = json.loads((FIXTURE / "pdiff.json").read_text())
    for key, value in m["history"].items():
        if isinstance(value, list):
            m["history"][key] = value[:2]
    decoder = (FIXTURE / "decoder.onnx").read_bytes()
    denoiser = (FIXTURE / "denoiser.onnx").read_bytes()
    assert m["sha256"]["decoder.onnx"] == hashlib.sha256(decoder).hexdigest(), "the fixture's hashes are stale"
    assert m["sha256"]["denoiser.onnx"] == hashlib.sha256(denoiser).hexdigest(), "the fixture's hashes are stale"
    manifest = json.dumps(m, separators=(",", ":")).encode()
    stale = json.loads(manifest)
    stale["sha256"]["decoder.onnx"] = "0" * 64
    stale = json.dumps(stale, separators=(",", ":")).encode()
    seeds = {
        # n = 2, DDIM 10 steps, hashes recomputed by the target.
        "fixture-ddim-fixhashes": encode(FIX_HASHES, 1, 9, manifest, decoder, denoiser),
        # n = 1, DDPM (T = 1000 steps), samples written as safetensors; hashes as in the fixture.
        "fixture-ddpm-files": encode(DDPM | WRITE_FILES, 0, 0, manifest, decoder, denoiser),
        # A stale hash and no FIX_HASHES: the sha256 check refuses the bundle.
        "fixture-stale-hash": encode(0, 2, 3, stale, decoder, denoiser),
    }
    # Edit scripts of the fixture's manifest (EDIT | FIX_HASHES), with empty graph sections (the
    # fixture's graphs): the first two still sample, the others are refused by validation or
    # fail when the graphs run.
    full = json.loads((FIXTURE / "pdiff.json").read_text())
    edits = {
        "edit-none": [],
        "edit-timesteps": [("/schedule/timesteps", 0, 50)],
        "edit-latent-dim": [("/latent_dim", 0, 17)],
        "edit-latent-std-short": [("/latent/std/0", 3, 15)],
        "edit-shape-zero": [("/layout/0/shape/0", 1, 0)],
        "edit-decoder-name": [("/files/decoder", 4, STRINGS.index("denoiser.onnx"))],
        # The fuzzer's find (a schedule of 7e16 timesteps aborted the host allocating its
        # tables), rewritten here so that it follows the fixture's manifest when that changes.
        "regress-huge-timesteps": [("/schedule/timesteps", 0, 70368744144109618)],
    }
    for name, script in edits.items():
        seeds[name] = encode(FIX_HASHES | EDIT, 3, 15, b"".join(edit(full, *e) for e in script), b"", b"")
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (OUT / name).write_bytes(data)
        print(f"{OUT / name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
