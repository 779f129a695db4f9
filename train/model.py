"""PainNet: a compact CNN-LSTM with attention on spectral topography image sequences.

The model follows the recurrent-convolutional networks of Bashivan et al. (ICLR 2016)
and the attentive variant of Wu et al. (Neuroscience 2022), shrunk for a small board:

    images (B, F, C, H, W) --FrameCNN (shared over frames)--> (B, F, D)
        --unrolled LSTM--> (B, F, Hd) --attention over frames--> (B, Hd)
        --two heads--> pain level logits (B, n_levels), pain location logits (B, n_locations)

Export constraints (they keep the model full-int8 and runnable by the helmet's interpreter):
the LSTM is unrolled into plain fully-connected and element-wise ops (no WHILE loop), and
the attention softmax runs over the LAST axis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class PainNetConfig:
    n_bands: int = 3  # colour channels of each image: theta, alpha, beta
    image_size: int = 16  # 16x16 keeps the TFLM arena well under 100 KB
    n_frames: int = 4
    conv1: int = 8
    conv2: int = 16
    frame_features: int = 32
    lstm_hidden: int = 32
    n_levels: int = 4  # no / low / moderate / high pain
    n_locations: int = 2  # left / right hand

    def to_dict(self) -> dict:
        return asdict(self)


class FrameCNN(nn.Module):
    """Per-frame ConvNet, VGG-style and tiny: conv-pool-conv-pool-FC."""

    def __init__(self, cfg: PainNetConfig):
        super().__init__()
        assert cfg.image_size % 4 == 0, f"image_size must be a multiple of 4, got {cfg.image_size}"
        self.conv1 = nn.Conv2d(cfg.n_bands, cfg.conv1, 3, padding=1)
        self.conv2 = nn.Conv2d(cfg.conv1, cfg.conv2, 3, padding=1)
        side = cfg.image_size // 4
        self.fc = nn.Linear(cfg.conv2 * side * side, cfg.frame_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N = x.shape[0]
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, c1, S/2, S/2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, c2, S/4, S/4)
        return F.relu(self.fc(x.reshape(N, -1)))  # (N, D)


class UnrolledLSTM(nn.Module):
    """An LSTM written as per-step FC and element-wise ops, so it exports without a loop."""

    def __init__(self, n_in: int, n_hidden: int):
        super().__init__()
        self.n_hidden = n_hidden
        self.x2g = nn.Linear(n_in, 4 * n_hidden)
        self.h2g = nn.Linear(n_hidden, 4 * n_hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        Hd = self.n_hidden
        h = x.new_zeros(B, Hd)
        c = x.new_zeros(B, Hd)
        outs = []
        for t in range(T):
            g = self.x2g(x[:, t]) + self.h2g(h)  # (B, 4*Hd)
            i = torch.sigmoid(g[:, 0:Hd])
            f = torch.sigmoid(g[:, Hd : 2 * Hd])
            u = torch.tanh(g[:, 2 * Hd : 3 * Hd])
            o = torch.sigmoid(g[:, 3 * Hd : 4 * Hd])
            c = f * c + i * u
            h = o * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, dim=1)  # (B, T, Hd)


class FrameAttention(nn.Module):
    """Additive attention over frames; the softmax runs over the last axis (int8-safe)."""

    def __init__(self, n_hidden: int):
        super().__init__()
        self.score = nn.Linear(n_hidden, 1)

    def forward(self, hs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, Hd = hs.shape
        a = torch.softmax(self.score(hs).reshape(B, T), dim=-1)  # (B, T)
        # Unrolled weighted sum over frames (MUL + ADD only): int8 SUM kernels disagree
        # between LiteRT's reference and optimized builds, so the export avoids SUM.
        context = a[:, 0:1] * hs[:, 0]
        for t in range(1, T):
            context = context + a[:, t : t + 1] * hs[:, t]  # (B, Hd)
        return context, a


class PainNet(nn.Module):
    """CNN (shared over frames) -> LSTM -> attention -> level head + location head."""

    def __init__(self, cfg: PainNetConfig):
        super().__init__()
        self.cfg = cfg
        self.cnn = FrameCNN(cfg)
        self.lstm = UnrolledLSTM(cfg.frame_features, cfg.lstm_hidden)
        self.attn = FrameAttention(cfg.lstm_hidden)
        self.level_head = nn.Linear(cfg.lstm_hidden, cfg.n_levels)
        self.location_head = nn.Linear(cfg.lstm_hidden, cfg.n_locations)

    def forward(self, x: torch.Tensor, targets: dict | None = None):
        """Return ``(logits, loss)``; ``logits`` is ``{"level": ..., "location": ...}``.

        ``x`` has shape (B, F, C, H, W); ``targets`` maps head name to a (B,) long tensor
        and, when given, the summed cross-entropy of both heads is returned as ``loss``.
        """
        B, Fr, C, H, W = x.shape
        cfg = self.cfg
        assert (Fr, C, H, W) == (cfg.n_frames, cfg.n_bands, cfg.image_size, cfg.image_size), (
            f"expected images (B, {cfg.n_frames}, {cfg.n_bands}, {cfg.image_size}, "
            f"{cfg.image_size}), got {tuple(x.shape)}"
        )
        feats = self.cnn(x.reshape(B * Fr, C, H, W)).reshape(B, Fr, -1)  # (B, F, D)
        hs = self.lstm(feats)  # (B, F, Hd)
        context, _ = self.attn(hs)  # (B, Hd)
        logits = {"level": self.level_head(context), "location": self.location_head(context)}
        loss = None
        if targets is not None:
            loss = sum(F.cross_entropy(logits[k], targets[k]) for k in logits if k in targets)
        return logits, loss


class ExportWrapper(nn.Module):
    """Batch-1 export view: images in, (level_logits, location_logits) out."""

    def __init__(self, model: PainNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        logits, _ = self.model(x)
        return logits["level"], logits["location"]
