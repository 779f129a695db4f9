"""The model zoo: a frame ConvNet shared over frames, a temporal aggregator, two heads.

The recurrent-convolutional networks of Bashivan et al. (ICLR 2016), with the attentive
variant of Wu et al. (Neuroscience 2022), in two sizes:

    images (B, F, C, H, W) --frame CNN (shared over frames)--> (B, F, D)
        --aggregator over frames--> (B, A) --[FC + ReLU]--> level logits (B, n_levels)
                                                        \\-> location logits (B, n_locations)

Frame CNNs: ``vgg`` is Bashivan's ConvNet (Conv3-32 x4, pool, Conv3-64 x2, pool,
Conv3-128, pool, FC-512); ``edge`` is a tiny conv-pool-conv-pool-FC for the helmet.
Aggregators: ``max`` (max over frames), ``conv1d`` (temporal 1-D conv), ``lstm`` (last
hidden state), ``mixed`` (LSTM and 1-D conv in parallel, concatenated) and
``lstm_attention`` (LSTM + attention over frames). `MODELS` names the combinations;
`build_model` builds one; `PainNet` (``painnet`` = ``edge-lstm-attn``) is the helmet's.

Export constraints (they keep the edge models full-int8 and runnable by the helmet's
interpreter, which knows a short list of TFLite ops): the LSTM is unrolled into plain
fully-connected and element-wise ops (no WHILE loop), the attention softmax runs over the
LAST axis, the max over frames is a MAX_POOL_2D (REDUCE_MAX is not in the list), and no
module indexes a single time step out of a tensor where a running value can be kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

ENCODERS = ("edge", "vgg")
AGGREGATORS = ("max", "conv1d", "lstm", "mixed", "lstm_attention")
HEADS = ("level", "location")


@dataclass
class PainNetConfig:
    n_bands: int = 3  # colour channels of each image: theta, alpha, beta
    image_size: int = 16  # 16x16 keeps the TFLM arena well under 100 KB
    n_frames: int = 4
    conv1: int = 8  # edge encoder widths
    conv2: int = 16
    frame_features: int = 32  # D: the frame CNN's FC width (Bashivan: 512)
    lstm_hidden: int = 32  # Bashivan: 128 cells
    n_levels: int = 4  # no / low / moderate / high pain
    n_locations: int = 2  # left / right hand; 0 = unlabelled (the head keeps 1 output)
    encoder: str = "edge"  # one of ENCODERS
    aggregator: str = "lstm_attention"  # one of AGGREGATORS
    tconv_channels: int = 16  # temporal 1-D conv kernels (Bashivan: 64)
    tconv_kernel: int = 3  # frames seen by one temporal kernel ('same' padding)
    head_hidden: int = 0  # FC + ReLU between aggregator and heads; 0 = none (Bashivan: 512)
    dropout: float = 0.0  # before the heads (and the FC-512s of vgg); Bashivan: 0.5
    name: str = "painnet"  # the MODELS entry this config came from (for reports)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- frame CNNs


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


class VGGFrameCNN(nn.Module):
    """Bashivan et al.'s frame ConvNet: Conv3-32 x4, pool, Conv3-64 x2, pool, Conv3-128, pool, FC."""

    STAGES = ((32, 32, 32, 32), (64, 64), (128,))

    def __init__(self, cfg: PainNetConfig):
        super().__init__()
        assert cfg.image_size % 8 == 0, f"vgg needs image_size a multiple of 8, got {cfg.image_size}"
        layers, c_in = [], cfg.n_bands
        for stage in self.STAGES:
            for c_out in stage:
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = cfg.image_size // 8
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(c_in * side * side, cfg.frame_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N = x.shape[0]
        x = self.features(x)  # (N, 128, S/8, S/8)
        return F.relu(self.fc(self.drop(x.reshape(N, -1))))  # (N, D)


# ---------------------------------------------------------------- aggregators over frames


class UnrolledLSTM(nn.Module):
    """An LSTM written as per-step FC and element-wise ops, so it exports without a loop."""

    def __init__(self, n_in: int, n_hidden: int):
        super().__init__()
        self.n_hidden = n_hidden
        self.x2g = nn.Linear(n_in, 4 * n_hidden)
        self.h2g = nn.Linear(n_hidden, 4 * n_hidden, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> (all hidden states (B, T, Hd), last hidden state (B, Hd))."""
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
        # h_T is returned as is: slicing it back out of the stack exports as STRIDED_SLICE.
        return torch.stack(outs, dim=1), h  # (B, T, Hd), (B, Hd)


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


class MaxOverFrames(nn.Module):
    """Max-pool over frames (Bashivan's 'max' model)."""

    def __init__(self, cfg: PainNetConfig):
        super().__init__()
        self.n_out = cfg.frame_features

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        B, T, D = feats.shape
        # A (T, 1) max-pool over a one-channel image exports as MAX_POOL_2D, which the
        # helmet runs; torch.amax would export as REDUCE_MAX, which it does not.
        return F.max_pool2d(feats.reshape(B, 1, T, D), (T, 1)).reshape(B, D)  # (B, D)


class TemporalConv(nn.Module):
    """1-D convolution over frames ('same' padding), ReLU, flattened (Bashivan's 'conv1d')."""

    def __init__(self, cfg: PainNetConfig):
        super().__init__()
        k = cfg.tconv_kernel
        assert k % 2 == 1, f"tconv_kernel must be odd ('same' padding), got {k}"
        self.conv = nn.Conv1d(cfg.frame_features, cfg.tconv_channels, k, padding=k // 2)
        self.n_out = cfg.tconv_channels * cfg.n_frames

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        B, T, D = feats.shape
        y = F.relu(self.conv(feats.transpose(1, 2)))  # (B, K, T)
        return y.reshape(B, -1)  # (B, K*T)


class LSTMLast(nn.Module):
    """Unrolled LSTM; the last hidden state summarises the window (Bashivan's 'lstm')."""

    def __init__(self, cfg: PainNetConfig):
        super().__init__()
        self.lstm = UnrolledLSTM(cfg.frame_features, cfg.lstm_hidden)
        self.n_out = cfg.lstm_hidden

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        _, h = self.lstm(feats)
        return h  # (B, Hd)


class MixedLSTMConv(nn.Module):
    """LSTM and temporal 1-D conv in parallel, concatenated (Bashivan's 'mixed')."""

    def __init__(self, cfg: PainNetConfig):
        super().__init__()
        self.lstm = LSTMLast(cfg)
        self.tconv = TemporalConv(cfg)
        self.n_out = self.lstm.n_out + self.tconv.n_out

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.lstm(feats), self.tconv(feats)], dim=1)  # (B, Hd + K*T)


class LSTMAttention(nn.Module):
    """Unrolled LSTM + additive attention over its hidden states (Wu et al.)."""

    def __init__(self, cfg: PainNetConfig):
        super().__init__()
        self.lstm = UnrolledLSTM(cfg.frame_features, cfg.lstm_hidden)
        self.attn = FrameAttention(cfg.lstm_hidden)
        self.n_out = cfg.lstm_hidden

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        hs, _ = self.lstm(feats)  # (B, T, Hd)
        context, _ = self.attn(hs)  # (B, Hd)
        return context


_AGGREGATOR_CLASSES = {"max": MaxOverFrames, "conv1d": TemporalConv, "lstm": LSTMLast,
                       "mixed": MixedLSTMConv, "lstm_attention": LSTMAttention}


# ---------------------------------------------------------------- loss and the top model


def joint_loss(logits: dict, targets: dict, class_weights: dict | None = None) -> torch.Tensor:
    """Summed cross-entropy of the heads; target -1 (unlabelled) is ignored.

    Parameters
    ----------
    logits : dict of str -> tensor, shape (B, n_classes)
    targets : dict of str -> long tensor, shape (B,)
        Heads missing from ``targets`` contribute nothing.
    class_weights : dict of str -> tensor, shape (n_classes,) | None
        Per-class weights of a head's cross-entropy.

    Returns
    -------
    loss : tensor, shape ()
        A head whose targets are all -1 contributes 0 (not NaN).
    """
    class_weights = class_weights or {}
    total = None
    for k, z in logits.items():
        part = z.sum() * 0.0  # keeps the graph (and the device) when nothing is labelled
        if k in targets:
            t = targets[k]
            labelled = t >= 0
            if bool(labelled.any()):
                w = class_weights.get(k)
                part = F.cross_entropy(z[labelled], t[labelled], weight=None if w is None else w.to(z))
        total = part if total is None else total + part
    return total


class PainNet(nn.Module):
    """Frame CNN (shared over frames) -> aggregator over frames -> level head + location head.

    With the default config this is the helmet's CNN -> LSTM -> attention model; the other
    `MODELS` change ``encoder``, ``aggregator`` and the widths.
    """

    def __init__(self, cfg: PainNetConfig):
        super().__init__()
        if cfg.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {cfg.encoder!r}")
        if cfg.aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {cfg.aggregator!r}")
        self.cfg = cfg
        self.cnn = FrameCNN(cfg) if cfg.encoder == "edge" else VGGFrameCNN(cfg)
        self.agg = _AGGREGATOR_CLASSES[cfg.aggregator](cfg)
        n = self.agg.n_out
        self.hidden = nn.Linear(n, cfg.head_hidden) if cfg.head_hidden else None
        n = cfg.head_hidden or n
        self.drop = nn.Dropout(cfg.dropout)
        # A head with no classes (a single-task dataset) keeps one output, so exports keep
        # two outputs; its loss is always 0 because every target of it is -1.
        self.level_head = nn.Linear(n, max(cfg.n_levels, 1))
        self.location_head = nn.Linear(n, max(cfg.n_locations, 1))
        self._register_load_state_dict_pre_hook(_rename_old_keys)

    def forward(self, x: torch.Tensor, targets: dict | None = None,
                class_weights: dict | None = None):
        """Return ``(logits, loss)``; ``logits`` is ``{"level": ..., "location": ...}``.

        ``x`` has shape (B, F, C, H, W); ``targets`` maps head name to a (B,) long tensor
        (-1 = unlabelled) and, when given, `joint_loss` of both heads is returned as
        ``loss`` (else None); ``class_weights`` maps head name to a (n_classes,) tensor.
        """
        B, Fr, C, H, W = x.shape
        cfg = self.cfg
        assert (Fr, C, H, W) == (cfg.n_frames, cfg.n_bands, cfg.image_size, cfg.image_size), (
            f"expected images (B, {cfg.n_frames}, {cfg.n_bands}, {cfg.image_size}, "
            f"{cfg.image_size}), got {tuple(x.shape)}"
        )
        feats = self.cnn(x.reshape(B * Fr, C, H, W)).reshape(B, Fr, -1)  # (B, F, D)
        z = self.agg(feats)  # (B, A)
        if self.hidden is not None:
            z = F.relu(self.hidden(self.drop(z)))  # (B, head_hidden)
        z = self.drop(z)
        logits = {"level": self.level_head(z), "location": self.location_head(z)}
        if cfg.n_locations == 0 and targets is not None:
            targets = {k: v for k, v in targets.items() if k != "location"}
        if cfg.n_levels == 0 and targets is not None:
            targets = {k: v for k, v in targets.items() if k != "level"}
        loss = None if targets is None else joint_loss(logits, targets, class_weights)
        return logits, loss


def _rename_old_keys(state_dict, prefix, *args):
    """Load checkpoints saved before the zoo (``lstm.*``/``attn.*`` now live in ``agg``)."""
    for old in [k for k in state_dict if k.startswith(prefix + "lstm.") or k.startswith(prefix + "attn.")]:
        state_dict[prefix + "agg." + old[len(prefix):]] = state_dict.pop(old)


class ExportWrapper(nn.Module):
    """Batch-1 export view: images in, (level_logits, location_logits) out."""

    def __init__(self, model: PainNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        logits, _ = self.model(x)
        return logits["level"], logits["location"]


# ---------------------------------------------------------------- the zoo


@dataclass(frozen=True)
class ModelInfo:
    description: str
    helmet_exportable: bool  # full-int8 export runs on painhelm.firmware.interp, tested
    defaults: dict  # PainNetConfig fields this entry sets


_VGG = dict(encoder="vgg", frame_features=512, lstm_hidden=128, tconv_channels=64,
            head_hidden=512, dropout=0.5)

MODELS: dict[str, ModelInfo] = {
    "painnet": ModelInfo("edge CNN -> unrolled LSTM -> attention (the helmet's model)", True,
                         dict(aggregator="lstm_attention")),
    "edge-lstm-attn": ModelInfo("same as painnet", True, dict(aggregator="lstm_attention")),
    "edge-lstm": ModelInfo("edge CNN -> unrolled LSTM, last hidden state", True,
                           dict(aggregator="lstm")),
    "edge-max": ModelInfo("edge CNN -> max over frames", True, dict(aggregator="max")),
    "edge-conv1d": ModelInfo("edge CNN -> temporal 1-D conv (k=3), flattened", True,
                             dict(aggregator="conv1d")),
    "edge-mixed": ModelInfo("edge CNN -> LSTM || temporal 1-D conv, concatenated", True,
                            dict(aggregator="mixed")),
    "vgg-max": ModelInfo("Bashivan ConvNet -> max over frames -> FC-512", False,
                         dict(_VGG, aggregator="max")),
    "vgg-conv1d": ModelInfo("Bashivan ConvNet -> 1-D conv (64 x 3) -> FC-512", False,
                            dict(_VGG, aggregator="conv1d")),
    "vgg-lstm": ModelInfo("Bashivan ConvNet -> LSTM-128 -> FC-512", False,
                          dict(_VGG, aggregator="lstm")),
    "vgg-mixed": ModelInfo("Bashivan ConvNet -> LSTM-128 || 1-D conv (64 x 3) -> FC-512", False,
                           dict(_VGG, aggregator="mixed")),
    "vgg-lstm-attn": ModelInfo("Bashivan ConvNet -> LSTM-128 + attention -> FC-512", False,
                               dict(_VGG, aggregator="lstm_attention")),
}


def build_model(name: str, n_frames: int, n_bands: int, image_size: int, n_levels: int,
                n_locations: int, **overrides) -> PainNet:
    """Build the zoo model ``name`` for images (B, n_frames, n_bands, image_size, image_size).

    Parameters
    ----------
    name : str
        A key of `MODELS`.
    n_frames, n_bands, image_size : int
        The image sequence one decision sees.
    n_levels, n_locations : int
        Classes of the two heads; 0 builds a 1-output head whose loss is always 0.
    **overrides
        Any other `PainNetConfig` field (e.g. ``lstm_hidden=16``); unknown keys are an error.

    Returns
    -------
    model : PainNet
        Freshly initialised, in training mode.
    """
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    known = {f.name for f in fields(PainNetConfig)}
    fixed = {"n_frames", "n_bands", "image_size", "n_levels", "n_locations", "name"}
    bad = sorted(set(overrides) - (set(known) - fixed))
    if bad:
        raise ValueError(f"unknown model override(s) {bad}; allowed: {sorted(set(known) - fixed)}")
    args = dict(MODELS[name].defaults, **overrides)
    return PainNet(PainNetConfig(n_frames=n_frames, n_bands=n_bands, image_size=image_size,
                                 n_levels=n_levels, n_locations=n_locations, name=name, **args))


def model_from_config(config: dict) -> PainNet:
    """Rebuild a (freshly initialised) model from ``model.cfg.to_dict()``; load the state after."""
    known = {f.name for f in fields(PainNetConfig)}
    bad = sorted(set(config) - known)
    if bad:
        raise ValueError(f"unknown model config key(s) {bad}; allowed: {sorted(known)}")
    return PainNet(PainNetConfig(**config))


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, input_shape: tuple) -> int:
    """Multiply-accumulates of one forward pass, per sample (input_shape's first axis).

    Counted by forward hooks on Conv1d/Conv2d (output elements x in_channels/groups x
    kernel size), Linear (output elements x in_features) and torch's nn.LSTM/GRU cells
    (4 or 3 gates x (input + hidden) x hidden per step). The unrolled LSTM is counted
    through its Linear layers. Not counted: biases, activations, pooling, softmax and
    the element-wise products and sums (gates, attention), all O(activations).
    """
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            k = mod.weight[0].numel()  # in_channels/groups x kernel
            total += out.numel() * k
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features
        elif isinstance(mod, (nn.LSTM, nn.GRU)):
            gates = 4 if isinstance(mod, nn.LSTM) else 3
            x = inp[0]
            steps = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
            h, n_dir = mod.hidden_size, 2 if mod.bidirectional else 1
            n_in = mod.input_size
            for _ in range(mod.num_layers):
                total += steps * n_dir * gates * h * (n_in + h)
                n_in = n_dir * h

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.LSTM, nn.GRU))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total // int(input_shape[0])
