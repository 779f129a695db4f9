"""Training loop for PainNet: seeded, time-boxed, with a progress bar."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .model import PainNet, PainNetConfig


@torch.no_grad()
def predict(model: PainNet, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Float logits of ``images`` (N, F, C, H, W): {"level": (N, n_levels), "location": (N, n_loc)}."""
    model.eval()
    outs: dict[str, list] = {"level": [], "location": []}
    for i in range(0, len(images), batch_size):
        logits, _ = model(torch.from_numpy(images[i : i + batch_size]))
        for k in outs:
            outs[k].append(logits[k].numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def train_model(images: np.ndarray, level: np.ndarray, location: np.ndarray,
                cfg: PainNetConfig | None = None, seconds: float = 60.0, max_epochs: int = 200,
                batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
                progress: bool = True) -> tuple[PainNet, list[dict]]:
    """Train a PainNet on images (N, F, C, H, W) for at most ``seconds`` / ``max_epochs``.

    Returns the model (in eval mode) and the per-epoch history (loss, train accuracy).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = cfg or PainNetConfig(n_frames=images.shape[1], n_bands=images.shape[2], image_size=images.shape[3])
    model = PainNet(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    x = torch.from_numpy(images)
    y = {"level": torch.from_numpy(level), "location": torch.from_numpy(location)}
    history = []
    t0 = time.monotonic()
    bar = tqdm(range(max_epochs), desc="train", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = rng.permutation(len(x))
        total, correct, seen = 0.0, {"level": 0, "location": 0}, 0
        for i in range(0, len(order), batch_size):
            idx = torch.from_numpy(order[i : i + batch_size])
            logits, loss = model(x[idx], {k: v[idx] for k, v in y.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            for k in correct:
                correct[k] += (logits[k].argmax(1) == y[k][idx]).sum().item()
        rec = {"epoch": epoch, "loss": total / seen, **{f"acc_{k}": v / seen for k, v in correct.items()}}
        history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", level=f"{rec['acc_level']:.2f}", loc=f"{rec['acc_location']:.2f}")
        if time.monotonic() - t0 > seconds:
            break
    model.eval()
    return model, history
