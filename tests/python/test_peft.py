"""Hugging Face PEFT, the real client, on the adapter directories `pdiff sample --format peft`
writes. A tiny ViT is built from its config (no download), K LoRA adapters (PEFT's own
get_peft_model, short trainings from one seeded init) are saved with save_pretrained, a
generator is trained on their adapter_model.safetensors files, and every generated directory is
loaded with PeftModel.from_pretrained: its weights are the file's bit for bit, its outputs are
those of the base with W + B A (alpha / r) applied by hand, and merge_and_unload() predicts the
same. Needs torch, transformers and peft (`make test-peft` makes such a venv); skipped, saying
so, where they do not import."""
import json
import pathlib
import subprocess

import pytest

try:
    import peft
    import torch
    import transformers
    from safetensors.torch import load_file
except ImportError as e:  # the lean venv's torch cannot load its CUDA libraries: ImportError, not a missing module
    pytest.skip(f"needs torch, transformers and peft (make test-peft): {e}", allow_module_level=True)

ROOT = pathlib.Path(__file__).resolve().parents[2]
PDIFF = ROOT / "target" / "release" / "pdiff"
K, N, R, ALPHA = 6, 4, 2, 4
TARGETS = ["q_proj", "v_proj"]


def tiny_vit():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3)
    return transformers.ViTForImageClassification(cfg).eval()


def lora(base):
    torch.manual_seed(1)
    return peft.get_peft_model(base, peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, modules_to_save=["classifier"]))


def run(*args):
    r = subprocess.run([str(PDIFF), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peft")
    base_dir = tmp / "base"
    tiny_vit().save_pretrained(base_dir)
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    sources = []
    for k in range(K):
        model = lora(transformers.ViTForImageClassification.from_pretrained(base_dir))
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
        y = torch.full((64,), k % 3)
        for _ in range(5 + k):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.save_pretrained(tmp / f"adapter{k}")
        sources.append(tmp / f"adapter{k}")
    bundle = tmp / "bundle"
    run("train", *[a for s in sources for a in ("--checkpoints", s)], "--out", bundle, "--ae-steps", "50", "--diffusion-steps", "50",
        "--device", "cpu")
    out = tmp / "generated"
    run("sample", "--bundle", bundle, "-n", N, "--seed", "5", "--steps", "10", "--format", "peft",
        "--peft-config", sources[0] / "adapter_config.json", "--out", out)
    return base_dir, out, x


def by_hand(base_dir, weights, x):
    """The base model with each LoRA applied as W + (alpha / r) B A, and the saved classifier."""
    model = transformers.ViTForImageClassification.from_pretrained(base_dir).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            key = f"base_model.model.{name}"
            if f"{key}.lora_A.weight" in weights:
                a, b = weights[f"{key}.lora_A.weight"], weights[f"{key}.lora_B.weight"]
                module.weight += (ALPHA / R) * b @ a
        model.classifier.weight.copy_(weights["base_model.model.classifier.weight"])
        model.classifier.bias.copy_(weights["base_model.model.classifier.bias"])
        return model(pixel_values=x).logits


def test_peft_loads_every_generated_adapter(generated):
    base_dir, out, x = generated
    dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert [d.name for d in dirs] == [f"gen_{i:04d}" for i in range(N)]
    for d in dirs:
        weights = load_file(d / "adapter_model.safetensors")
        model = peft.PeftModel.from_pretrained(transformers.ViTForImageClassification.from_pretrained(base_dir), d).eval()
        state = peft.get_peft_model_state_dict(model)
        assert sorted(state) == sorted(weights), d
        for name, tensor in weights.items():
            assert torch.equal(state[name], tensor), f"{d.name}: {name} is not the file's"
        with torch.no_grad():
            logits = model(pixel_values=x).logits
        torch.testing.assert_close(logits, by_hand(base_dir, weights, x), rtol=1e-5, atol=1e-5)
        merged = model.merge_and_unload()
        with torch.no_grad():
            assert torch.equal(merged(pixel_values=x).logits.argmax(1), logits.argmax(1))
        meta = json.loads((d / "adapter_config.json").read_text())
        assert meta["peft_type"] == "LORA" and meta["r"] == R
