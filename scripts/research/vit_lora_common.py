"""What the LoRA task-family prototype's collection and evaluation share: the MNIST digits with
mnist-mlp3's split (image j of digit d is TEST when j % 5 == 0) and the adapters' LoRA config."""
import json, os
import numpy as np, torch
from peft import LoraConfig

DIGITS = os.environ.get("PDIFF_MNIST_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "data", "mnist", "digits"))


def lora_config():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"])


def mnist():
    """(Xtr, Ytr, Xte, Yte): images [N, 1, 28, 28] mapped by (x - 0.5) / 0.5, digit labels."""
    X, Y, T = [], [], []
    for d in range(10):
        a = np.array(json.load(open(f"{DIGITS}/{d}.json"))["data"], dtype=np.float32).reshape(-1, 784)
        for j, img in enumerate(a):
            X.append(img); Y.append(d); T.append(j % 5 == 0)
    X = (torch.tensor(np.stack(X)).view(-1, 1, 28, 28) - 0.5) / 0.5
    Y = torch.tensor(Y); T = torch.tensor(T)
    return X[~T], Y[~T], X[T], Y[T]
