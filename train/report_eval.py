"""The evaluation report: per-subject table, model comparison, confusion matrices.

Everything is built from the results dict of :func:`painhelm.train.evaluate.evaluate` and
written to one folder:

- ``report.json``: the results dict (NaN written as null);
- ``report.md`` and ``report.html``: the same tables (the HTML embeds the PNGs, so it is
  one self-contained file; the Markdown links them);
- ``confusion_<model>_<head>.png``: the confusion matrix summed over folds, and
  ``confusion_<model>_<head>_folds.png``: one small matrix per fold.

A table is built once as ``(header, rows)`` and rendered as Markdown, HTML or aligned
text, so the terminal, the Markdown and the HTML always show the same numbers.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import HEAD_TITLES

Table = tuple[list[str], list[list[str]]]


def _pct(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def _num(x, digits: int = 2) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _pm(mean, sd, pct: bool = True) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    f = _pct if pct else _num
    return f"{f(mean)} ± {f(sd)}"


def _ci(ci) -> str:
    lo, hi = ci
    return "–" if lo is None or not np.isfinite(lo) else f"[{_pct(lo)}, {_pct(hi)}]"


def per_subject_table(results: dict, model: str | None = None) -> Table:
    """The seed's per-subject table: one row per held-out subject (or run), then mean ± sd.

    Columns per labelled head: accuracy (%) with its 95 % Wilson interval, macro-F1 (%)
    and Cohen's kappa; ``n`` is the number of test trials of the fold.
    """
    model = model or next(iter(results["models"]))
    entry = results["models"][model]
    heads = results["heads"]
    first = "subject" if results["split"] == "subject" else "run"
    header = [first, "n"]
    for h in heads:
        t = HEAD_TITLES[h]
        header += [f"{t} acc %", f"{t} 95 % CI", f"{t} F1 %", f"{t} κ"]
    rows = []
    for f in entry["folds"]:
        row = [f["name"], str(f["n_test"])]
        for h in heads:
            m = f["heads"].get(h)
            row += ["–"] * 4 if m is None else [_pct(m["accuracy"]), _ci(m["ci95"]), _pct(m["f1_macro"]),
                                                 _num(m["kappa"])]
        rows.append(row)
    mean = ["mean ± sd", str(sum(f["n_test"] for f in entry["folds"]))]
    pooled = ["pooled", ""]
    for h in heads:
        s = entry["summary"].get(h)
        if s is None:
            mean += ["–"] * 4
            pooled += ["–"] * 4
            continue
        mean += [_pm(s["accuracy_mean"], s["accuracy_sd"]), "", _pm(s["f1_macro_mean"], s["f1_macro_sd"]),
                 _pm(s["kappa_mean"], s["kappa_sd"], pct=False)]
        pooled += [_pct(s["pooled_accuracy"]), _ci(s["pooled_ci95"]), "", ""]
    rows += [mean, pooled]
    return header, rows


def models_table(results: dict) -> Table:
    """Side by side: one row per model, mean ± sd over folds of each head's metrics."""
    heads = results["heads"]
    perm = bool(results.get("permutations"))
    header = ["model"]
    for h in heads:
        t = HEAD_TITLES[h]
        header += [f"{t} acc %", f"{t} F1 %", f"{t} κ"] + ([f"{t} p"] if perm else [])
    header += ["fit time s"]
    rows = []
    for name, entry in results["models"].items():
        row = [name]
        for h in heads:
            s = entry["summary"].get(h)
            if s is None:
                row += ["–"] * (4 if perm else 3)
                continue
            row += [_pm(s["accuracy_mean"], s["accuracy_sd"]), _pm(s["f1_macro_mean"], s["f1_macro_sd"]),
                    _pm(s["kappa_mean"], s["kappa_sd"], pct=False)]
            if perm:
                p = entry.get("permutation", {}).get(h)
                row.append("–" if p is None else f"{p['p_value']:.3g}")
        row.append(f"{entry['fit_wall_s']:.1f}")
        rows.append(row)
    return header, rows


def render_markdown(table: Table) -> str:
    header, rows = table
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_text(table: Table) -> str:
    """Aligned plain text for the terminal (first column left, the rest right)."""
    header, rows = table
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def render_html(table: Table) -> str:
    header, rows = table
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
    return "\n".join(out + ["</table>"])


# --- figures -----------------------------------------------------------------------------

def _draw_matrix(ax, m: np.ndarray, names: list[str], title: str, small: bool = False) -> None:
    ax.imshow(m, cmap="Blues", vmin=0)
    top = m.max() if m.size else 0
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7 if small else 9,
                color="white" if top and v > top / 2 else "black")
    ticks = range(len(names))
    ax.set_xticks(ticks, [] if small else names, rotation=30, ha="right")
    ax.set_yticks(ticks, [] if small else names)
    if not small:
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    ax.set_title(title, fontsize=8 if small else 10)


def plot_confusion(path: Path, m, names: list[str], title: str) -> Path:
    """One confusion matrix (rows true, columns predicted) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(m, int)
    side = 2.6 + 0.55 * len(names)
    fig, ax = plt.subplots(figsize=(side, side))
    _draw_matrix(ax, m, names, title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_fold_confusions(path: Path, mats: list[tuple[str, Any]], names: list[str], title: str) -> Path:
    """A grid of per-fold confusion matrices (same class order as the pooled one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(mats)
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, m) in zip(axes.flat, mats):
        ax.axis("on")
        _draw_matrix(ax, np.asarray(m, int), names, name, small=True)
    fig.suptitle(f"{title} (classes: {', '.join(names)})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- the report --------------------------------------------------------------------------

def _jsonable(x):
    """NaN/inf -> None and numpy scalars/arrays -> Python, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_report(results: dict, out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write report.json, report.md, report.html and the confusion PNGs into ``out_dir``.

    Returns
    -------
    paths : dict
        ``json``, ``md``, ``html`` and ``png`` (a list of the PNG paths).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = f" ({results['task']})" if results.get("task") else ""
    title = title or f"painhelm evaluate: {results['dataset']}{task}, {results['protocol']}"

    pngs: list[tuple[str, str, Path, Path]] = []
    for model, entry in results["models"].items():
        for h in results["heads"]:
            if h not in entry["summary"]:
                continue
            names = results["class_names"][h]
            pooled = plot_confusion(out / f"confusion_{_safe(model)}_{h}.png", entry["summary"][h]["confusion"], names,
                                    f"{model}: {HEAD_TITLES[h]}, all folds")
            per_fold = plot_fold_confusions(out / f"confusion_{_safe(model)}_{h}_folds.png",
                                            [(f["name"], f["heads"][h]["confusion"]) for f in entry["folds"]
                                             if h in f["heads"]], names, f"{model}: {HEAD_TITLES[h]} per fold")
            pngs.append((model, h, pooled, per_fold))

    facts = [
        ("dataset", results["dataset"] + task),
        ("protocol", f"{results['protocol']} ({len(results['folds'])} folds: {', '.join(results['folds'])})"),
        ("trials", str(results["n_trials"])),
        ("classes", "; ".join(f"{HEAD_TITLES[h]}: {', '.join(n)}" for h, n in results["class_names"].items())),
        ("seed", str(results["seed"])),
        ("accuracy interval", results["ci_method"]),
        ("± means", results["sd"]),
        ("engine", f"{results['engine']}, {results['workers']} worker(s), "
                   f"{results['threads_per_fold'] or 'default'} torch thread(s) per fold"),
        ("wall time", f"{results['wall_s']:.1f} s in all"),
    ]
    if results.get("permutations"):
        facts.append(("permutation test", f"{results['permutations']} permutations of the training labels "
                                          "within each training subject/run; p for the mean-over-folds accuracy"))
    config = results.get("config") or {}

    md = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in facts] + [""]
    ht = [f"<h1>{html.escape(title)}</h1>", "<ul>"] + [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                                                       for k, v in facts] + ["</ul>"]
    if len(results["models"]) > 1 or results.get("permutations"):
        t = models_table(results)
        md += ["## Models side by side", "", render_markdown(t), ""]
        ht += ["<h2>Models side by side</h2>", render_html(t)]
    for model, entry in results["models"].items():
        t = per_subject_table(results, model)
        md += [f"## {model}: per {'subject' if results['split'] == 'subject' else 'run'}", "", render_markdown(t), ""]
        ht += [f"<h2>{html.escape(model)}: per {'subject' if results['split'] == 'subject' else 'run'}</h2>",
               render_html(t)]
        fold_times = ", ".join(f"{f['name']} {f['wall_s']:.1f} s" for f in entry["folds"])
        md += [f"Fit + predict time per fold: {fold_times} (sum {entry['fit_wall_s']:.1f} s).", ""]
        ht += [f"<p>Fit + predict time per fold: {html.escape(fold_times)} (sum {entry['fit_wall_s']:.1f} s).</p>"]
        for h, p in entry.get("permutation", {}).items():
            line = (f"Permutation test, {HEAD_TITLES[h]}: observed mean accuracy {_pct(p['observed'])} %, "
                    f"null mean {_pct(p['null_mean'])} %, p = {p['p_value']:.3g} ({p['n_permutations']} permutations).")
            md += [line, ""]
            ht += [f"<p>{html.escape(line)}</p>"]
        for m, h, pooled, per_fold in pngs:
            if m != model:
                continue
            md += [f"![{model} {HEAD_TITLES[h]} confusion]({pooled.name}) ![per fold]({per_fold.name})", ""]
            ht += [f'<p><img alt="{html.escape(pooled.name)}" src="data:image/png;base64,{_b64(pooled)}"> '
                   f'<img alt="{html.escape(per_fold.name)}" src="data:image/png;base64,{_b64(per_fold)}"></p>']
    if config:
        md += ["## Training config", "", "```", *(f"{k} = {v!r}" for k, v in config.items()), "```", ""]
        ht += ["<h2>Training config</h2>", "<pre>" + html.escape("\n".join(f"{k} = {v!r}" for k, v in config.items()))
               + "</pre>"]

    paths = write_documents(out, "report.json", results, md, ht, title)
    paths["png"] = [p for _, _, a, b in pngs for p in (a, b)]
    return paths


def write_documents(out: Path, json_name: str, data: dict, md: list[str], ht: list[str],
                    title: str) -> dict[str, Path]:
    """Write ``json_name`` (strict JSON, NaN as null), report.md and a self-contained
    report.html from Markdown and HTML lines; return ``{"json", "md", "html"}`` paths."""
    paths = {"json": out / json_name, "md": out / "report.md", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(_jsonable(data), indent=1, allow_nan=False) + "\n")
    paths["md"].write_text("\n".join(md))
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}")
    paths["html"].write_text(f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                             f"<style>{style}</style></head><body>\n" + "\n".join(ht) + "\n</body></html>\n")
    return paths


def _b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")
