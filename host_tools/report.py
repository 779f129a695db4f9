"""Float vs int8 vs device comparison report: terminal table, Markdown, HTML and PNG."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

# (row label, predictions key, reference key); "truth" is the label
ROWS = (
    ("float (host) vs truth", "float", "truth"),
    ("int8 (host) vs truth", "int8", "truth"),
    ("device vs truth", "device", "truth"),
    ("int8 vs float (cross)", "int8", "float"),
    ("device vs int8 host (cross)", "device", "int8"),
)


def compare_head(preds: dict[str, np.ndarray]) -> list[dict]:
    """Agreement rows for one head; ``preds`` maps truth/float/int8/device to class arrays."""
    rows = []
    for label, a, b in ROWS:
        if a in preds and b in preds:
            pa, pb = np.asarray(preds[a]), np.asarray(preds[b])
            rows.append({"row": label, "agree": float(np.mean(pa == pb)), "n": int(len(pa))})
    return rows


def confusion(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix (n_classes, n_classes): rows truth, columns prediction."""
    m = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(m, (np.asarray(truth), np.asarray(pred)), 1)
    return m


def text_table(heads: dict[str, list[dict]]) -> str:
    """The rows of every head as an aligned plain-text table."""
    lines = [f"{'head':<10} {'comparison':<30} {'agreement':>9} {'n':>6}"]
    for head, rows in heads.items():
        for r in rows:
            lines.append(f"{head:<10} {r['row']:<30} {100 * r['agree']:>8.1f}% {r['n']:>6}")
    return "\n".join(lines)


def plot_confusions(path: Path, mats: dict[str, tuple[np.ndarray, list[str]]], *,
                    ncols: int | None = None) -> Path:
    """One heat map per (title -> (matrix, class names)), side by side (``ncols`` per row:
    default all in one row), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(ncols or len(mats), len(mats))
    nrows = -(-len(mats) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.0 * nrows), squeeze=False)
    for ax in axes.ravel()[len(mats):]:
        ax.axis("off")
    for ax, (title, (m, names)) in zip(axes.ravel(), mats.items()):
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out_dir: Path, title: str, summary: dict, heads: dict[str, list[dict]],
                 confusion_png: Path | None = None) -> dict[str, Path]:
    """Write report.md, report.html and report.json into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    md += [f"- **{k}**: {v}" for k, v in summary.items()]
    md += ["", "| head | comparison | agreement | n |", "|---|---|---:|---:|"]
    for head, rows in heads.items():
        md += [f"| {head} | {r['row']} | {100 * r['agree']:.1f} % | {r['n']} |" for r in rows]
    if confusion_png is not None:
        md += ["", f"![confusion matrices]({confusion_png.name})"]
    paths = {"md": out_dir / "report.md", "html": out_dir / "report.html", "json": out_dir / "report.json"}
    paths["md"].write_text("\n".join(md) + "\n")
    cells = "".join(
        f"<tr><td>{html.escape(h)}</td><td>{html.escape(r['row'])}</td><td>{100 * r['agree']:.1f} %</td><td>{r['n']}</td></tr>"
        for h, rows in heads.items() for r in rows)
    items = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in summary.items())
    img = f'<img src="{confusion_png.name}" alt="confusion matrices">' if confusion_png is not None else ""
    paths["html"].write_text(
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}"
        "td:nth-child(3),td:nth-child(4){text-align:right}</style>"
        f"<h1>{html.escape(title)}</h1><ul>{items}</ul><table><tr><th>head</th><th>comparison</th>"
        f"<th>agreement</th><th>n</th></tr>{cells}</table>{img}\n")
    paths["json"].write_text(json.dumps({"title": title, "summary": summary, "heads": heads}, indent=1, default=str))
    return paths


def plot_latency(path: Path, series: dict[str, np.ndarray], unit: str = "ms") -> Path:
    """Overlaid histograms of per-window times (label -> values in ``unit``), saved as PNG;
    each label carries its median."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    finite = [np.asarray(v, float)[np.isfinite(v)] for v in series.values()]
    every = np.concatenate(finite) if finite else np.zeros(0)
    bins = np.linspace(every.min(), every.max(), 41) if every.size and every.max() > every.min() else 20
    for (label, _), v in zip(series.items(), finite):
        if v.size:
            ax.hist(v, bins=bins, alpha=0.6, label=f"{label} (median {np.median(v):.1f} {unit})")
    ax.set_xlabel(f"time per window ({unit})")
    ax.set_ylabel("windows")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
