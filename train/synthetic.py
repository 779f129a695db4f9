"""Synthetic pain EEG: a deterministic generator so everything runs without recordings.

Physiology it follows (simplified; issue #4 documents and extends it):

- background: 1/f ("pink") noise per channel, with per-subject channel gains;
- alpha rhythm (per-subject peak 9-11.5 Hz), strongest posteriorly, suppressed as pain
  grows (alpha event-related desynchronisation under tonic pain);
- frontal-midline theta and central beta grow with pain level;
- location: stronger alpha suppression and beta increase over the somatosensory cortex
  contralateral to the stimulated hand (C4 for the left hand, C3 for the right).

Each window is one labelled segment of ``n_times`` samples; subjects differ, so
leave-one-subject-out evaluation is meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CH_NAMES = ["Fp1", "Fp2", "F3", "Fz", "F4", "T7", "C3", "Cz", "C4", "T8",
            "P3", "Pz", "P4", "O1", "Oz", "O2"]
LEVEL_NAMES = ["none", "low", "moderate", "high"]
LOCATION_NAMES = ["left_hand", "right_hand"]


@dataclass
class WindowSet:
    """Labelled EEG windows: ``data`` has shape (n_windows, n_ch, n_times), in µV."""

    data: np.ndarray
    level: np.ndarray
    location: np.ndarray
    subject: np.ndarray
    ch_names: list[str]
    sfreq: float
    level_names: list[str] = field(default_factory=lambda: list(LEVEL_NAMES))
    location_names: list[str] = field(default_factory=lambda: list(LOCATION_NAMES))

    def __len__(self) -> int:
        return len(self.data)

    def subset(self, mask: np.ndarray) -> "WindowSet":
        """The windows where ``mask`` is true (boolean array or index array)."""
        return WindowSet(self.data[mask], self.level[mask], self.location[mask],
                         self.subject[mask], self.ch_names, self.sfreq,
                         self.level_names, self.location_names)


def _pink(rng: np.random.Generator, shape: tuple, sfreq: float) -> np.ndarray:
    n = shape[-1]
    spec = rng.standard_normal(shape[:-1] + (n // 2 + 1,)) + 1j * rng.standard_normal(shape[:-1] + (n // 2 + 1,))
    f = np.fft.rfftfreq(n, 1.0 / sfreq)
    f[0] = f[1]
    x = np.fft.irfft(spec / np.sqrt(f), n=n)
    return x / x.std(axis=-1, keepdims=True)


def make_synthetic(n_subjects: int = 5, windows_per_class: int = 12, sfreq: float = 128.0,
                   n_times: int = 256, seed: int = 0) -> WindowSet:
    """Generate ``n_subjects`` x 4 levels x 2 locations x ``windows_per_class`` windows."""
    if n_subjects < 1 or windows_per_class < 1:
        raise ValueError(f"n_subjects and windows_per_class must be >= 1, got {n_subjects}, {windows_per_class}")
    rng = np.random.default_rng(seed)
    idx = {ch: i for i, ch in enumerate(CH_NAMES)}
    n_ch = len(CH_NAMES)
    t = np.arange(n_times) / sfreq
    posterior = np.array([0.3 if ch.startswith(("Fp", "F")) else 0.6 if ch.startswith(("T", "C")) else 1.0
                          for ch in CH_NAMES])
    blocks = []
    for s in range(n_subjects):
        alpha_f = rng.uniform(9.0, 11.5)
        gains = rng.uniform(0.8, 1.25, n_ch)
        alpha_amp = rng.uniform(8.0, 12.0)
        for level in range(4):
            for loc in range(2):
                n = windows_per_class
                x = 6.0 * _pink(rng, (n, n_ch, n_times), sfreq)
                contra = idx["C4"] if loc == 0 else idx["C3"]
                ipsi = idx["C3"] if loc == 0 else idx["C4"]
                # alpha: global suppression with level, extra over contralateral cortex
                a = alpha_amp * posterior * (1.0 - 0.18 * level)
                a[contra] *= 1.0 - 0.15 * level
                a[ipsi] *= 1.0 + 0.05 * level
                fa = alpha_f + rng.normal(0, 0.2, (n, 1, 1))
                ph = rng.uniform(0, 2 * np.pi, (n, n_ch, 1))
                x += a[None, :, None] * np.sin(2 * np.pi * fa * t + ph)
                # frontal-midline theta grows with level
                th = np.zeros(n_ch)
                th[[idx["Fz"], idx["Cz"], idx["F3"], idx["F4"]]] = [1.0, 0.8, 0.5, 0.5]
                ph = rng.uniform(0, 2 * np.pi, (n, 1, 1))
                x += (2.0 + 2.0 * level) * th[None, :, None] * np.sin(2 * np.pi * 6.0 * t + ph)
                # beta grows with level, most over contralateral somatosensory cortex
                b = np.full(n_ch, 0.6 + 0.5 * level)
                b[contra] += 1.2 * level
                fb = rng.uniform(17, 24, (n, 1, 1))
                ph = rng.uniform(0, 2 * np.pi, (n, n_ch, 1))
                x += b[None, :, None] * np.sin(2 * np.pi * fb * t + ph)
                x *= gains[None, :, None]
                blocks.append((x.astype(np.float32), level, loc, s))
    data = np.concatenate([b[0] for b in blocks])
    level = np.concatenate([np.full(len(b[0]), b[1]) for b in blocks]).astype(np.int64)
    location = np.concatenate([np.full(len(b[0]), b[2]) for b in blocks]).astype(np.int64)
    subject = np.concatenate([np.full(len(b[0]), b[3]) for b in blocks]).astype(np.int64)
    order = rng.permutation(len(data))
    return WindowSet(data[order], level[order], location[order], subject[order], list(CH_NAMES), sfreq)
