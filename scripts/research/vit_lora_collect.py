"""Research prototype (not part of the product or its tests): a LoRA task family on a tiny
`transformers` ViT for conditional generation of PEFT adapters. Base: ViT (28x28, patch 7, hidden
32, 2 layers) pretrained on "digit < 5"; tasks: mnist-tasks' 5-of-10 digit sets (condition = 10
bits), a seeded shuffle, 8 held out, 48 seen; per task, K checkpoints of a LoRA (r 4, alpha 8,
q_proj/v_proj, modules_to_save classifier) fine-tuned from a shared LoRA trained jointly on the
seen tasks only. Needs torch, transformers, peft (target/torch-venv after make test-peft).
Usage: python vit_lora_collect.py OUT STEPS K LORA_LR_SCALE SHARED_STEPS   (run 3: OUT 300 10 0.05 1500)
then:  pdiff train --checkpoints OUT/seen/<code>/ ... --conditions OUT/conditions.json --out OUT/gen
       pdiff sample --bundle OUT/gen -n 20 --condition <bits> --out OUT/gen1_<code>   (each held-out code)
       python vit_lora_evaluate.py OUT gen1
Findings (docs/decisions.md, 2026-12-08): held-out median generated 0.803 vs trained 0.879,
nearest seen 0.725, average adapter 0.472."""
import json, sys, time, itertools, random, os
import numpy as np, torch
from transformers import ViTConfig, ViTForImageClassification
from peft import get_peft_model, get_peft_model_state_dict
from vit_lora_common import lora_config, mnist
from safetensors.torch import save_file
torch.set_num_threads(1)
OUT = sys.argv[1]; STEPS = int(sys.argv[2]); K = int(sys.argv[3])
Xtr, Ytr, Xte, Yte = mnist()
cfg = ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
def batches(seed, bs=128):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randint(0, len(Ytr), (bs,), generator=g)
@torch.no_grad()
def acc(model, labels_fn):
    model.eval()
    out = torch.cat([model(pixel_values=Xte[i:i+1000]).logits for i in range(0, len(Yte), 1000)])
    return (out.argmax(1) == labels_fn(Yte)).float().mean().item()
torch.manual_seed(0)
base = ViTForImageClassification(cfg)
opt = torch.optim.AdamW(base.parameters(), lr=3e-3, weight_decay=0.0)
f = lambda y: (y < 5).long(); it = batches(0)
for s in range(600):
    idx = next(it); loss = torch.nn.functional.cross_entropy(base(pixel_values=Xtr[idx]).logits, f(Ytr[idx]))
    opt.zero_grad(); loss.backward(); opt.step()
os.makedirs(OUT, exist_ok=True)
base.save_pretrained(f"{OUT}/base")
print("base acc", acc(base, f), flush=True)
tasks = list(itertools.combinations(range(10), 5)); random.Random(0).shuffle(tasks)
held, seen = tasks[:8], tasks[8:56]
conds = {}
results = {}
def code(S): return "".join("1" if d in S else "0" for d in range(10))
LORA_LR = float(sys.argv[4]); SHARED = int(sys.argv[5])
# shared LoRA: trained jointly on the seen tasks (one head per seen task), never on held-out tasks
m = ViTForImageClassification.from_pretrained(f"{OUT}/base")
torch.manual_seed(123)
pm = get_peft_model(m, lora_config())
masks = torch.tensor([[int(c) for c in code(S)] for S in seen])  # [48, 10]
heads = torch.nn.Linear(32, 2 * len(seen))
lora = [p for n, p in pm.named_parameters() if p.requires_grad and "lora_" in n]
opt = torch.optim.AdamW(lora + list(heads.parameters()), lr=3e-3, weight_decay=0.0)
it = batches(1); t0 = time.time()
for s in range(SHARED):
    idx = next(it)
    h = pm.base_model.model.vit(pixel_values=Xtr[idx]).last_hidden_state[:, 0]
    logits = heads(h).view(-1, len(seen), 2)
    lab = masks[:, Ytr[idx]].T  # [B, 48]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 2), lab.reshape(-1))
    opt.zero_grad(); loss.backward(); opt.step()
print("shared", f"{loss.item():.3f} {time.time()-t0:.1f}s", flush=True)
shared = {n: p.detach().clone() for n, p in pm.named_parameters() if "lora_" in n}
for kind, S in [("heldout", S) for S in held] + [("seen", S) for S in seen]:
    Sset = set(S); fS = lambda y, Sset=Sset: torch.tensor([int(int(v) in Sset) for v in y])
    m = ViTForImageClassification.from_pretrained(f"{OUT}/base")
    pm = get_peft_model(m, lora_config())
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if n in shared: p.copy_(shared[n])
    lora = [p for n, p in pm.named_parameters() if p.requires_grad and "lora_" in n]
    head = [p for n, p in pm.named_parameters() if p.requires_grad and "lora_" not in n]
    opt = torch.optim.AdamW([dict(params=lora, lr=5e-3 * LORA_LR), dict(params=head, lr=5e-3)], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS, eta_min=1e-3)
    it = batches(int(code(S), 2)); t0 = time.time()
    pm.train()
    for s in range(STEPS + K):
        idx = next(it); loss = torch.nn.functional.cross_entropy(pm(pixel_values=Xtr[idx]).logits, fS(Ytr[idx]))
        opt.zero_grad(); loss.backward(); opt.step()
        if s < STEPS: sched.step()
        if s >= STEPS:
            d = f"{OUT}/{kind}/{code(S)}"; os.makedirs(d, exist_ok=True)
            name = f"{code(S)}_{s-STEPS:02d}.safetensors"
            sd = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(pm).items()}
            save_file(sd, f"{d}/{name}")
            if kind == "seen": conds[f"{name}"] = [float(c) for c in code(S)]
    a = acc(pm, fS); results[code(S)] = (kind, a)
    print(kind, code(S), f"acc {a:.4f} {time.time()-t0:.1f}s", flush=True)
json.dump({"conditions": conds}, open(f"{OUT}/conditions.json", "w"))
json.dump(results, open(f"{OUT}/trained.json", "w"))
