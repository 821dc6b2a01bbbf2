"""Research prototype: test accuracy of held-out tasks' trained adapters, nearest seen task's, the
average seen adapter and generated ones (OUT/<prefix>_<code>/), loaded with PEFT (see vit_lora_collect.py)."""
import json, sys, os, glob, itertools, random
import numpy as np, torch
from transformers import ViTForImageClassification
from peft import get_peft_model, set_peft_model_state_dict
from vit_lora_common import lora_config, mnist
from safetensors.torch import load_file
torch.set_num_threads(1)
RUN = sys.argv[1]; PFX = sys.argv[2] if len(sys.argv) > 2 else "gen"
_, _, Xte, Yte = mnist()
m = ViTForImageClassification.from_pretrained(f"{RUN}/base")
pm = get_peft_model(m, lora_config())
pm.eval()
@torch.no_grad()
def acc_of(sd, code):
    set_peft_model_state_dict(pm, sd)
    lab = torch.tensor([int(code[int(v)] == "1") for v in Yte])
    out = pm(pixel_values=Xte).logits
    return (out.argmax(1) == lab).float().mean().item()
def accs(files, code):
    return [acc_of(load_file(f), code) for f in files]
seen = sorted(os.listdir(f"{RUN}/seen")); held = sorted(os.listdir(f"{RUN}/heldout"))
ham = lambda a, b: sum(x != y for x, y in zip(a, b))
# average adapter of all seen checkpoints
allseen = [load_file(f) for s in seen for f in sorted(glob.glob(f"{RUN}/seen/{s}/*.safetensors"))]
avg = {k: torch.stack([sd[k] for sd in allseen]).mean(0) for k in allseen[0]}
rows = []
for h in held:
    trained = accs(sorted(glob.glob(f"{RUN}/heldout/{h}/*.safetensors")), h)
    near = min(seen, key=lambda s: (ham(s, h), s))
    nearest = accs(sorted(glob.glob(f"{RUN}/seen/{near}/*.safetensors")), h)
    a_avg = acc_of(avg, h)
    gen = accs(sorted(glob.glob(f"{RUN}/{PFX}_{h}/*.safetensors")), h) if os.path.isdir(f"{RUN}/{PFX}_{h}") else []
    r = dict(task=h, trained=float(np.median(trained)), nearest=float(np.median(nearest)), average=a_avg,
             generated=float(np.median(gen)) if gen else None, gen_min=min(gen) if gen else None)
    rows.append(r); print(r, flush=True)
medians = {k: float(np.median([r[k] for r in rows if r[k] is not None])) for k in ["trained", "nearest", "average", "generated"] if any(r[k] is not None for r in rows)}
print(json.dumps({"tasks": rows, "median_over_tasks": medians}, indent=1))
