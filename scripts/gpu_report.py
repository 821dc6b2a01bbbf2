#!/usr/bin/env python3
"""The small JSON files of scripts/gpu-check.sh, and docs/gpu.md made from them.

Standard library only: it runs on the GPU machine's python3 and on the build machine.

  gpu_report.py record --out F --stage S ...   one stage's record (status, commands, GPU memory)
  gpu_report.py bundle-summary BUNDLE          what a bundle's pdiff.json says about its training
  gpu_report.py wheel-version DIR              version of an extracted wheel (*.dist-info/METADATA)
  gpu_report.py report RESULTS [--doc P] [--preview P]
                                               the page, from RESULTS/*.json; `--none` instead of
                                               RESULTS gives the page of a check not yet run

Every figure of the page comes from a result file; a missing file shows as "not run".
"""
import argparse
import datetime
import glob
import json
import os
import sys

STAGES = ["ort", "env", "demo", "paper", "sample", "train-steps", "tests"]
MEMORY_METHOD = "nvidia-smi memory.used of GPU 0, sampled every 200 ms while the stage's commands ran (device-wide: includes the CUDA context)"


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def write_atomic(path, text):
    """Write `path` through a temporary sibling and a rename: never a half-written page."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def typed(value):
    """A --set value as JSON: empty -> null, true/false, integers, floats, else the string."""
    if value == "":
        return None
    if value in ("true", "false"):
        return value == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


# --- record -------------------------------------------------------------------------------------

def cmd_record(a):
    commands = []
    if a.commands and os.path.exists(a.commands):
        by_label = {}
        for line in open(a.commands, encoding="utf-8").read().splitlines():
            label, _, rest = line.partition("\t")
            if rest.startswith("FAILED ("):
                by_label[label]["result"] = rest
            else:
                by_label[label] = {"label": label, "command": rest, "result": "ok"}
                commands.append(by_label[label])
    memory = {"method": "not measured (" + ("dry run, no GPU" if a.dry_run == "1" else "nvidia-smi is not available") + ")"}
    if a.memory_log:
        samples = []
        if os.path.exists(a.memory_log):
            for line in open(a.memory_log, encoding="utf-8").read().split():
                try:
                    samples.append(int(line))
                except ValueError:
                    pass
        memory = {
            "method": MEMORY_METHOD,
            "samples": len(samples),
            "peak_mib": max(samples) if samples else None,
            "before_mib": typed(a.memory_baseline or ""),
        }
    record = {
        "stage": a.stage,
        "status": "failed" if a.failed == "1" else "ok",
        "dry_run": a.dry_run == "1",
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "wall_s": round(int(a.wall_ms) / 1000.0, 3),
        "commands": commands,
        "gpu_memory": memory,
    }
    for item in a.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--set {item!r}: expected KEY=VALUE")
        record[key] = typed(value)
    write_atomic(a.out, json.dumps(record, indent=2) + "\n")


# --- bundle-summary -----------------------------------------------------------------------------

def cmd_bundle_summary(a):
    path = os.path.join(a.bundle, "pdiff.json")
    try:
        m = json.load(open(path, encoding="utf-8"))
        t, h = m["training"], m["history"]
        ae_steps, diff_steps = t["ae_steps"], t["diffusion_steps"]

        def mean(v):
            return sum(v) / len(v) if v else None

        device = t["device"]
        if isinstance(device, dict):  # {"cuda": 0}
            device = ",".join(f"{k}:{v}" for k, v in device.items())
        summary = {
            "bundle": a.bundle,
            "preset": m["preset"],
            "param_count": m["param_count"],
            "latent_dim": m["latent_dim"],
            "k": len(m.get("sources", [])),
            "device": device,
            "batch_size": t["batch_size"],
            "seed": t["seed"],
            "ae_steps": ae_steps,
            "diffusion_steps": diff_steps,
            "ae_seconds": h["ae_seconds"],
            "diffusion_seconds": h["diffusion_seconds"],
            "ae_ms_per_step": 1e3 * h["ae_seconds"] / max(ae_steps, 1),
            "diffusion_ms_per_step": 1e3 * h["diffusion_seconds"] / max(diff_steps, 1),
            "final_reconstruction_mse": h["final_reconstruction_mse"],
            "ae_loss_first10": mean(h["ae_loss"][:10]),
            "ae_loss_last10": mean(h["ae_loss"][-10:]),
            "diffusion_loss_first10": mean(h["diffusion_loss"][:10]),
            "diffusion_loss_last10": mean(h["diffusion_loss"][-10:]),
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(f"{path}: cannot read the training summary ({type(e).__name__}: {e})")
    print(json.dumps(summary, indent=2))


# --- wheel-version ------------------------------------------------------------------------------

def cmd_wheel_version(a):
    found = glob.glob(os.path.join(a.dir, "*.dist-info", "METADATA"))
    if len(found) != 1:
        fail(f"{a.dir}: expected one *.dist-info/METADATA, found {len(found)}")
    fields = {}
    for line in open(found[0], encoding="utf-8").read().splitlines():
        key, sep, value = line.partition(": ")
        if sep and key not in fields:
            fields[key] = value
    if "Version" not in fields:
        fail(f"{found[0]}: no Version field")
    note = fields.get("Name", "?")
    if "stand-in" in fields.get("Summary", ""):
        note += "; " + fields["Summary"]
    print(f"{fields['Version']} ({note})")


# --- report -------------------------------------------------------------------------------------

def load(results, name):
    if results is None:
        return None
    path = os.path.join(results, name)
    if not os.path.exists(path):
        return None
    try:
        return json.load(open(path, encoding="utf-8"))
    except ValueError as e:
        fail(f"{path}: not valid JSON ({e})")


def f4(x):
    return "-" if x is None else f"{x:.4f}"


def f1(x):
    return "-" if x is None else f"{x:.1f}"


def ms(x):
    """Seconds as milliseconds, three significant figures at least."""
    if x is None:
        return "-"
    v = 1e3 * x
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def rate(x):
    if x is None:
        return "-"
    return f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def stage_line(rec, name):
    if rec is None:
        return f"_Stage `{name}`: not run._"
    line = f"_Stage `{name}`: {rec['status']}, {rec['wall_s']:.0f} s, finished {rec['finished_utc']} UTC._"
    if rec.get("error"):
        line += f" Error: `{rec['error']}`"
    failed = [c for c in rec.get("commands", []) if c["result"] != "ok"]
    for c in failed:
        line += f" `{c['label']}`: {c['result']}."
    return line


def demo_section(out, title, rec, res, bundle, what):
    out.append(f"## {title}\n")
    out.append(stage_line(rec, rec["stage"] if rec else what) + "\n")
    if res is None:
        return
    ev = res
    out.append(
        f"Task {res['task']}, D = {res['num_params']:,} parameters, K = {res['k']} originals, N = {res['n_generated']} generated; "
        f"preset {res['preset']}, trained on {res['device']}, sampled with {res['sampler']} ({res['backend']}), seed {res['seed']}. "
        "Test accuracy:\n"
    )
    out.append("| | best | mean | median | min |\n|---|---|---|---|---|")
    for label, key in [(f"originals (K = {res['k']})", "originals"), (f"generated (N = {res['n_generated']})", "generated")]:
        s = ev[key]
        out.append(f"| {label} | {f4(s['best'])} | {f4(s['mean'])} | {f4(s['median'])} | {f4(s['min'])} |")
    out.append(f"| soup (uniform average of the originals) | {f4(ev['soup'])} | | | |")
    sel = ev["selected_on_train"]
    out.append(f"| generated, best on TRAIN ({f4(sel['train'])}), on TEST | {f4(sel['test'])} | | | |")
    out.append("")
    t = res["timings_s"]
    parts = [f"collect {f1(t['collect'])} s"]
    if bundle:
        parts.append(f"autoencoder {bundle['ae_steps']:,} steps in {f1(t['train_autoencoder'])} s ({bundle['ae_ms_per_step']:.2f} ms/step)")
        parts.append(f"diffusion {bundle['diffusion_steps']:,} steps in {f1(t['train_diffusion'])} s ({bundle['diffusion_ms_per_step']:.2f} ms/step)")
    else:
        parts.append(f"autoencoder {f1(t['train_autoencoder'])} s")
        parts.append(f"diffusion {f1(t['train_diffusion'])} s")
    parts.append(f"sample {f1(t['sample'])} s")
    parts.append(f"evaluate {f1(t['evaluate'])} s")
    out.append("Time: " + ", ".join(parts) + f". Reconstruction MSE (normalized units) {res['reconstruction_mse']:.3e}.\n")


def sample_section(out, results, rec):
    out.append("## Sampling: CUDA provider against the CPU provider\n")
    out.append(stage_line(rec, "sample") + "\n")
    any_table = False
    for name, title in [("demo", "the demo's bundle (compact preset)"), ("paper", "the paper preset's bundle")]:
        gpu = load(results, f"sample-{name}-gpu.json")
        cpu = load(results, f"sample-{name}-cpu.json")
        if gpu is None and cpu is None:
            continue
        any_table = True
        ref = gpu or cpu
        out.append(f"### {title}: D = {ref['param_count']:,}, {ref['sampler']}\n")
        gl = gpu["backend"] if gpu else "GPU role: not run"
        cl = cpu["backend"] if cpu else "CPU role: not run"
        out.append(f"| batch | {gl}: models/s | ms per call | first call ms | {cl}: models/s | ms per call | speed-up |")
        out.append("|---|---|---|---|---|---|---|")
        rows_g = {r["batch"]: r for r in (gpu or {}).get("rows", [])}
        rows_c = {r["batch"]: r for r in (cpu or {}).get("rows", [])}
        for b in sorted(set(rows_g) | set(rows_c)):
            g, c = rows_g.get(b), rows_c.get(b)
            speed = f"{g['models_per_second'] / c['models_per_second']:.1f}x" if g and c else "-"
            out.append(
                f"| {b:,} | {rate(g and g['models_per_second'])} | {ms(g and g['median_s'])} | {ms(g and g['first_call_s'])} "
                f"| {rate(c and c['models_per_second'])} | {ms(c and c['median_s'])} | {speed} |"
            )
        out.append("")
        counted = sorted(r["batch"] for r in list(rows_g.values()) + list(rows_c.values()) if r.get("first_call_counted"))
        note = (f" At batch {', '.join(f'{b:,}' for b in counted)} a first call took 20 s or more and is the single measurement."
                if counted else "")
        out.append(f"Host: {ref['machine']}. Time per call: median of the timed calls after one untimed first call "
                   f"(`pdiff bench sweep`); models/s = batch / that median.{note}\n")
    if not any_table and rec is not None:
        out.append("No sweep result file.\n")


def training_section(out, results, rec):
    out.append("## Training speed\n")
    out.append(stage_line(rec, "train-steps") + "\n")
    rows = []
    for label, name in [("train-steps, compact", "train-steps-compact.json"), ("train-steps, paper", "train-steps-paper.json"),
                        ("demo (compact)", "demo-bundle.json"), ("paper preset run", "paper-bundle.json")]:
        b = load(results, name)
        if b:
            rows.append((label, b))
    if not rows:
        return
    out.append("| run | preset | device | K | D | batch | AE steps | AE ms/step | diffusion steps | diffusion ms/step |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for label, b in rows:
        out.append(f"| {label} | {b['preset']} | {b['device']} | {b['k']} | {b['param_count']:,} | {b['batch_size']} | {b['ae_steps']:,} "
                   f"| {b['ae_ms_per_step']:.2f} | {b['diffusion_steps']:,} | {b['diffusion_ms_per_step']:.2f} |")
    out.append("\nms/step: the training loop's wall time (the bundle's `history.ae_seconds` / `diffusion_seconds`) "
               "divided by the steps, the first step included.\n")


def memory_section(out, records):
    out.append("## GPU memory\n")
    measured = [(n, r) for n, r in records if r and r["gpu_memory"].get("peak_mib") is not None]
    if not measured:
        reasons = sorted({r["gpu_memory"]["method"] for _, r in records if r})
        out.append("GPU memory: " + ("; ".join(reasons) if reasons else "not measured") + ".\n")
        return
    out.append("| stage | peak MiB | before the stage MiB |\n|---|---|---|")
    for n, r in measured:
        m = r["gpu_memory"]
        out.append(f"| {n} | {m['peak_mib']:,} | {'-' if m.get('before_mib') is None else format(m['before_mib'], ',')} |")
    out.append(f"\nMethod: {MEMORY_METHOD}.\n")


REPRODUCE = """## How to reproduce

`scripts/gpu-check.sh` (its header has the details) runs everything on a machine with an NVIDIA GPU
from a build made elsewhere. The GPU machine needs no Rust and no network: python3 with
torch 2.11.0 (cu130: its libtorch and CUDA wheels are what the binaries load) and onnxruntime (the
CPU provider). Each run there gets a copy of the repository plus carried ignored folders (64 MiB
at most) for at most 10 minutes, so the work is cut into stages:

1. On the build machine: `scripts/gpu-check.sh pack pack-ort` builds `pdiff`, `libpdiff.so` and the
   CUDA tests with `PDIFF_TORCH_CUDA=1` in `target/cuda`, puts them and the MNIST digits
   (xz) into `.gpu/`, downloads `onnxruntime-gpu==1.31.1` (255 MB, CUDA provider) and splits it
   into `.gpu-parts/NN/`, one part per run.
2. On the GPU machine, one run per part, carrying `.gpu` and `.gpu-parts/NN`, in close succession
   (the machine keeps `/tmp` only while it stays busy): `scripts/gpu-check.sh ort`. The last part
   joins the wheel, checks its sha256 and extracts it. A stage can ride along: `ort env demo`.
3. On the GPU machine, carrying `.gpu`: `scripts/gpu-check.sh env demo`, `paper`, `sample`,
   `train-steps tests report`. Each run returns every result file so far (JSON, a log per stage).
4. On the build machine: put the last run's files into `gpu-results/`, then
   `scripts/gpu-check.sh --out gpu-results report` writes this page.

`scripts/gpu-check.sh --dry-run all` rehearses steps 2-4 on a CPU machine with tiny settings
(`tests/setup/test_gpu_check.sh`); its page is marked DRY RUN and never replaces this one.
"""


def cmd_report(a):
    results = None if a.none else a.results
    if results is not None and not os.path.isdir(results):
        fail(f"{results}: no such results directory")
    records = [(s, load(results, f"{s}.json")) for s in STAGES]
    present = [r for _, r in records if r]
    dry = {r["dry_run"] for r in present}
    if len(dry) > 1:
        fail(f"{results}: dry-run and real result files are mixed; keep them in separate directories")
    is_dry = dry == {True}
    if a.doc and is_dry:
        fail(f"{results} holds dry-run results: they never go into {a.doc} (only --preview)")
    env = load(results, "env.json")
    recs = dict(records)

    out = ["# libpdiff on a GPU\n"]
    if not present:
        out.append("> **Status: not yet run: no GPU was available.** The CUDA paths build, and their refusals "
                   "and fallbacks are tested on the CPU (crates/core/tests/runtime.rs, tools/tests/reliability.rs); "
                   "`scripts/gpu-check.sh` and this page's generator are rehearsed on the CPU "
                   "(`--dry-run`), but nothing has been measured on a GPU yet: the figures appear here when the check runs.\n")
    elif is_dry:
        out.append("> **DRY RUN on a CPU machine** (`scripts/gpu-check.sh --dry-run`): tiny settings, device cpu, the "
                   "CPU library standing in for the CUDA provider. These are not GPU figures: they only show that "
                   "every stage and this page's generator work.\n")
    else:
        when = max(r["finished_utc"] for r in present)
        out.append(f"Measured with `scripts/gpu-check.sh` (last stage finished {when} UTC).\n")
    out.append("Every figure on this page is read from the result files of `scripts/gpu-check.sh` by "
               "`scripts/gpu_report.py`; none is typed by hand.\n")

    if present:
        out.append("## Machine\n")
        out.append(stage_line(env, "env") + "\n")
        if env:
            gpu = env.get("gpu_name") or "none"
            if env.get("gpu_name"):
                gpu += f" ({env['gpu_count']} visible, {env['gpu_memory_total_mib']:,} MiB)" if env.get("gpu_memory_total_mib") else ""
            sweep = load(results, "sample-demo-cpu.json") or load(results, "sample-paper-cpu.json")
            out.append("| | |\n|---|---|")
            out.append(f"| GPU | {gpu} |")
            out.append(f"| NVIDIA driver | {env.get('driver') or '-'} (CUDA {env.get('cuda_driver') or '-'} per nvidia-smi; "
                       f"CUDA 13.0 needs >= {env['minimum_driver']}) |")
            out.append(f"| detection (scripts/lib/gpu.sh) | {env['detection']} |")
            out.append(f"| torch (its libtorch ran the training) | {env['torch']} (CUDA {env.get('torch_cuda') or '-'}) |")
            out.append(f"| ONNX Runtime, CPU provider | {env['ort_cpu']} |")
            out.append(f"| ONNX Runtime, CUDA provider | {env.get('ort_gpu') or 'not assembled'} |")
            out.append(f"| pdiff | {env.get('pdiff_version') or '-'}; libpdiff.so: {env.get('libpdiff')} |")
            if sweep:
                out.append(f"| host CPU | {sweep['machine']} |")
            out.append("")
        demo_section(out, "mnist-mlp3 demo, compact preset", recs["demo"], load(results, "demo-results.json"),
                     load(results, "demo-bundle.json"), "demo")
        demo_section(out, "Paper preset at the reference's budget (2,000 + 8,000 steps)" if not is_dry else "Paper preset (dry run: a few steps)",
                     recs["paper"], load(results, "paper-results.json"), load(results, "paper-bundle.json"), "paper")
        sample_section(out, results, recs["sample"])
        training_section(out, results, recs["train-steps"])
        memory_section(out, [(n, r) for n, r in records if n != "ort"])
        out.append("## CUDA tests\n")
        t = recs["tests"]
        out.append(stage_line(t, "tests") + "\n")
        if t and t.get("ran"):
            out.append(f"`crates/train/tests/cuda.rs` with `--ignored`: {t['passed']} passed, {t['failed']} failed.\n")
        elif t:
            out.append(f"Not run ({t.get('note')}); {t.get('listed')} test(s) listed.\n")
        out.append("## Stages\n\n| stage | status | wall s | finished (UTC) |\n|---|---|---|---|")
        for n, r in records:
            out.append(f"| {n} | {r['status'] if r else 'not run'} | {f1(r and r['wall_s'])} | {r['finished_utc'] if r else '-'} |")
        out.append("")
    out.append(REPRODUCE)
    text = "\n".join(out)
    for path in [a.preview, a.doc]:
        if path:
            write_atomic(path, text)
            print(f"[gpu-report] wrote {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record")
    r.add_argument("--out", required=True)
    r.add_argument("--stage", required=True)
    r.add_argument("--failed", default="0")
    r.add_argument("--wall-ms", default="0")
    r.add_argument("--dry-run", default="0")
    r.add_argument("--commands")
    r.add_argument("--memory-log")
    r.add_argument("--memory-baseline")
    r.add_argument("--set", action="append")
    b = sub.add_parser("bundle-summary")
    b.add_argument("bundle")
    w = sub.add_parser("wheel-version")
    w.add_argument("dir")
    rep = sub.add_parser("report")
    g = rep.add_mutually_exclusive_group(required=True)
    g.add_argument("results", nargs="?")
    g.add_argument("--none", action="store_true", help="no results: the page of a check not yet run")
    rep.add_argument("--doc")
    rep.add_argument("--preview")
    a = p.parse_args()
    {"record": cmd_record, "bundle-summary": cmd_bundle_summary, "wheel-version": cmd_wheel_version, "report": cmd_report}[a.command](a)


if __name__ == "__main__":
    main()
