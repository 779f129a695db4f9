"""Pictures of the data: one trial's topomap sequence (bands x frames) with the electrodes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from .dataset import BandPowerTrials, DataError, Trials
from .features import Preprocessing
from .topomap import azimuthal_equidistant, head_mask


_BAND_NAMES = {(1.0, 4.0): "delta", (4.0, 8.0): "theta", (8.0, 13.0): "alpha", (13.0, 30.0): "beta",
               (30.0, 45.0): "gamma"}


def plot_trial_topomaps(pre: Preprocessing, images: np.ndarray, path: str | Path, title: str = "",
                        band_names: list[str] | None = None, frame_seconds: float | None = None) -> Path:
    """Write a PNG of one trial's images (n_frames, n_bands, G, G): one row per band.

    Pixels outside the electrodes' hull are left blank; electrodes are drawn as dots with
    their names on a separate layout panel, and each band row shares one colour scale
    (z-scores of the training normalisation).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_frames, n_bands = images.shape[:2]
    xy = azimuthal_equidistant(pre.pos)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    extent = (lo[0], hi[0], lo[1], hi[1])
    mask = head_mask(pre.W)
    names = band_names or [f"{_BAND_NAMES.get((float(l), float(h)), '')} {l:g}-{h:g} Hz".strip() for l, h in pre.bands]
    width = max(6.0, 1.9 * (n_frames + 1) + 0.6)
    fig, axes = plt.subplots(n_bands, n_frames + 1, figsize=(width, 1.9 * n_bands + 1.0),
                             squeeze=False, gridspec_kw={"width_ratios": [1.25] + [1] * n_frames},
                             layout="constrained")
    for b in range(n_bands):
        lim = float(np.abs(images[:, b][:, mask]).max()) or 1.0
        for f in range(n_frames):
            ax = axes[b, f + 1]
            img = np.where(mask, images[f, b], np.nan)
            im = ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim, extent=extent, interpolation="nearest")
            ax.scatter(xy[:, 0], xy[:, 1], s=3, c="k", linewidths=0)
            ax.set_xticks([])
            ax.set_yticks([])
            if b == 0:
                label = f"frame {f + 1}"
                if frame_seconds:
                    label += f"\n{f * frame_seconds:.2f}-{(f + 1) * frame_seconds:.2f} s"
                ax.set_title(label, fontsize=8)
        fig.colorbar(im, ax=axes[b, 1:].tolist(), fraction=0.02, pad=0.01, aspect=12).ax.tick_params(labelsize=6)
        lay = axes[b, 0]
        lay.axis("off")
        lay.text(0.0, 0.5, names[b], rotation=90, va="center", ha="right", fontsize=9, transform=lay.transAxes)
        if b == 0:  # the electrode layout once, with names
            lay.scatter(xy[:, 0], xy[:, 1], s=8, c="k")
            for (x, y), ch in zip(xy, pre.ch_names):
                lay.annotate(ch, (x, y), fontsize=5 if len(pre.ch_names) > 32 else 7, ha="center",
                             va="bottom", xytext=(0, 2), textcoords="offset points")
            lay.set_xlim(lo[0] - 0.15, hi[0] + 0.15)
            lay.set_ylim(lo[1] - 0.15, hi[1] + 0.25)
            lay.set_aspect("equal")
            lay.set_title("electrodes (nose up)", fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, int(width * 14))), fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(t: Trials | BandPowerTrials, i: int) -> str:
    parts = [f"subject {t.subject[i]}", f"session {t.session[i]}"]
    for head in ("level", "location"):
        y = int(getattr(t, head)[i])
        if y >= 0:
            parts.append(f"{head} {getattr(t, head + '_names')[y]}")
    return ", ".join(parts)


def run_show(dataset: str, trial: int = 0, out: str | Path = "runs/topomaps.png", image_size: int = 32,
             n_frames: int | None = None, mapping: str | Path | None = None) -> int:
    """`painhelm data show`: featurise ``dataset`` and draw trial ``trial``; returns the exit status.

    ``dataset`` is a built-in name, or a folder/file of own recordings labelled by ``mapping``.
    """
    from .datasets import default_n_frames, load_trials

    if image_size < 4:
        raise DataError(None, f"--image-size must be at least 4, got {image_size}")
    t = load_trials(dataset, mapping)
    if not 0 <= trial < len(t):
        raise DataError(None, f"--trial must be between 0 and {len(t) - 1} ({dataset} has {len(t)} trials)")
    # normalisation is fitted on the other subjects, as in training, when there are others
    others = t.subject != t.subject[trial]
    train = t.subset(others) if others.any() else t
    n_frames = n_frames or default_n_frames(t)
    if isinstance(t, BandPowerTrials):
        if n_frames != t.logbp.shape[1]:
            raise DataError(None, f"{dataset} holds {t.logbp.shape[1]} frame(s) per trial; --frames cannot change that")
        pre = Preprocessing.for_trials(train, image_size=image_size)
        images = pre.images_from_logbp(t.logbp[trial:trial + 1])[0]
        frame_s = None
    else:
        n_times = t.n_times - t.n_times % n_frames  # whole frames only
        if n_times < n_frames:
            raise DataError(None, f"--frames {n_frames} is more than the {t.n_times} samples per trial")
        pre = Preprocessing.fit(train.data[:, :, :n_times], t.sfreq, t.ch_names, n_frames, image_size, pos=t.pos)
        images = pre.images(t.data[trial:trial + 1, :, :n_times])[0]
        frame_s = n_times / n_frames / t.sfreq
    band_names = getattr(t, "band_names", None) or None
    title = f"{dataset}, trial {trial}: {_label(t, trial)}  ({image_size}x{image_size}, z-scored per band)"
    path = plot_trial_topomaps(pre, images, out, title, band_names, frame_s)
    print(f"wrote {path} ({n_frames} frames x {len(pre.bands)} bands, {len(pre.ch_names)} electrodes)")
    return 0
