"""The float-vs-int8 report of :func:`painhelm.compress.compare.compare`.

``write_compare_report(result, out_dir)`` writes into one folder:

- ``compare.json``: the result dict (NaN written as null);
- ``report.md`` and ``report.html``: the same tables (the HTML embeds the PNGs, so it is
  one self-contained file; the Markdown links them);
- ``confusion_<head>_<float|int8|cross>.png``: float vs truth, int8 vs truth, and int8
  against float (rows: float's class, columns: int8's);
- ``summary.png``: float and int8 accuracy and their agreement, per head, for all test
  trials and per subject (or session), plus the latency of each runtime.

Each table is built once as ``(header, rows)`` by a function here and rendered with
:mod:`painhelm.train.report_eval`'s Markdown, HTML and text renderers, so the terminal
(``painhelm compare``), the Markdown and the HTML show the same numbers.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..train.evaluate import HEAD_TITLES
from ..train.report_eval import (Table, _b64, _ci, _draw_matrix, _num, _pct, plot_confusion, write_documents,
                                 render_html, render_markdown)

CROSS_NOTE = ("Cross rows score one model's argmax against float's as if float were the truth: their "
              "acc % is the argmax agreement; cos, rmse and l2r (||int8 - float|| / ||float||) compare the "
              "dequantized int8 logits with the float logits over all test trials.")


def _sci(x, digits: int = 3) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def _ok(flag) -> str:
    return "–" if flag is None else ("yes" if flag else "NO")


def head_title(result: dict, head: str) -> str:
    """``intensity (level): none, low, moderate, high`` or ``location: left_hand, right_hand``."""
    name = HEAD_TITLES[head] if HEAD_TITLES[head] == head else f"{HEAD_TITLES[head]} ({head})"
    return f"{name}: {', '.join(result['class_names'][head])}"


def head_table(result: dict, head: str) -> Table:
    """The rows of one head: float vs truth, int8 vs truth, int8 vs float, ONNX int8 vs float."""
    header = ["comparison", "n", "acc %", "95 % CI", "F1 %", "κ", "cos", "rmse", "l2r"]
    rows = []
    for r in result["rows"][head]:
        cross = "agreement" in r
        rows.append([r["row"], str(r["n"]), _pct(r["accuracy"]), _ci(r["ci95"]), _pct(r["f1_macro"]),
                     _num(r["kappa"]), _num(r["cos"], 4) if cross else "", _sci(r["rmse"]) if cross else "",
                     _sci(r["l2r"]) if cross else ""])
    return header, rows


def targets_table(result: dict) -> Table:
    """The issue's targets: accuracy drop and argmax agreement per head, int8/float file size."""
    t, lim = result["targets"], result["targets"]["limits"]
    header = ["measure", "value", "target", "met"]
    rows = []
    for h in result["heads"]:
        m = t["heads"][h]
        rows.append([f"{HEAD_TITLES[h]}: accuracy drop float → int8", _num(m["accuracy_drop_pp"], 2) + " pp",
                     f"≤ {lim['accuracy_drop_pp']} pp", _ok(m["accuracy_drop_ok"])])
        agree = m["agreement"]  # two decimals: 95 of 96 is 98.96 %, which must not read as 99.0
        rows.append([f"{HEAD_TITLES[h]}: argmax agreement int8 / float", f"{100 * agree:.2f} %",
                     f"≥ {100 * lim['agreement']:g} %", _ok(m["agreement_ok"])])
        cross = next(r for r in result["rows"][h] if r["kind"] == "cross")
        if cross.get("n_flips"):  # are the flips ties or real errors?
            rows.append([f"{HEAD_TITLES[h]}: flipped decisions, largest float margin",
                         f"{cross['n_flips']} of {cross['n']}, {cross['flip_margin_max']:.3f} (logit rmse "
                         f"{cross['rmse']:.3f})", "", ""])
    b = result["sizes"]["bytes"]
    rows.append(["int8 / fp32 size (.tflite)",
                 f"{t['size_ratio']:.2f}× ({b['model_int8.tflite']:,} / {b['model_fp32.tflite']:,} B)",
                 f"≤ {lim['size_ratio']}×", _ok(t["size_ok"])])
    w = result["sizes"].get("tflite_weight_bytes")
    if w:
        rows.append(["int8 / fp32 weights only (.tflite constants)",
                     f"{result['sizes']['tflite_weight_ratio']:.2f}× ({w['model_int8.tflite']:,} / "
                     f"{w['model_fp32.tflite']:,} B)", "", ""])
    rows.append(["int8 / fp32 size (.onnx)",
                 f"{result['sizes']['onnx_ratio']:.2f}× ({b['model_int8.onnx']:,} / {b['model_fp32.onnx']:,} B)",
                 "", ""])
    return header, rows


def groups_table(result: dict) -> Table:
    """Per test subject (or session): n, then per head float and int8 accuracy, their gap, agreement."""
    pg = result["per_group"]
    header = [pg["by"], "n"]
    for h in result["heads"]:
        t = HEAD_TITLES[h]
        header += [f"{t} float %", f"{t} int8 %", f"{t} Δ pp", f"{t} agree %"]
    rows = []
    for g in pg["rows"]:
        row = [g["name"], str(g["n"])]
        for h in result["heads"]:
            m = g["heads"][h]
            drop = 100 * (m["float_accuracy"] - m["int8_accuracy"])
            row += [_pct(m["float_accuracy"]), _pct(m["int8_accuracy"]), _num(drop, 1), _pct(m["agreement"])]
        rows.append(row)
    return header, rows


def runtime_table(result: dict) -> Table:
    """Median latency at batch 1, file size and TFLite Micro arena of each runtime."""
    header = ["runtime", "file", "size B", "median ms", "p90 ms", "arena B", "notes"]
    rows = [[r["runtime"], r["file"], f"{r['bytes']:,}", f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}",
             "" if r["arena_bytes"] is None else f"{r['arena_bytes']:,}", r["notes"]] for r in result["runtimes"]]
    return header, rows


def _facts(result: dict) -> list[tuple[str, str]]:
    test = result["test"]
    groups = ", ".join(test["groups"])
    facts = [("compressed folder", result["folder"]),
             ("model", f"{result['model']}, trained on {result['dataset'] or '?'}"),
             ("test trials", f"{test['n']} of {len(test['groups'])} {test['by']}(s): {groups}")]
    if test["seen_in_training"]:
        facts.append(("WARNING", f"{', '.join(test['seen_in_training'])} took part in training: "
                                 "float and int8 accuracies are optimistic (agreement is still meaningful)"))
    facts += [("classes", "; ".join(head_title(result, h) for h in result["heads"])),
              ("int8", "model_int8.tflite run by LiteRT's reference kernels (the helmet's arithmetic), logits "
                       f"dequantized; input scale {result['int8_input']['scale']:.4g}, zero point "
                       f"{result['int8_input']['zero_point']}"),
              ("fp32 exports vs torch", "largest logit difference "
               + ", ".join(f"{k} {v:.2g}" for k, v in result["fp32_check"].items()))]
    if result["runtimes"]:
        facts.append(("latency", f"batch 1, median of {result['n_latency']} runs after 5 warm-up runs, this host"))
    facts.append(("compress.json", "present (copied into compare.json)" if result.get("compress") else "absent"))
    facts.append(("wall time", f"{result['wall_s']:.1f} s"))
    return facts


def plot_cross(path: Path, m, names: list[str], title: str) -> Path:
    """The int8-vs-float matrix: rows float's class, columns int8's (off-diagonal = flipped argmax)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = 2.6 + 0.55 * len(names)
    fig, ax = plt.subplots(figsize=(side, side))
    _draw_matrix(ax, np.asarray(m, int), names, title)
    ax.set_xlabel("int8 predicts")
    ax.set_ylabel("float predicts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_summary(path: Path, result: dict) -> Path:
    """Bars of float and int8 accuracy and their agreement per head (all trials, then per group),
    and the median latency per runtime when there is a runtime table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = result["heads"]
    groups = result["per_group"]["rows"]
    panels = len(heads) + (1 if result["runtimes"] else 0)
    width = max(6.5, 1.1 * (len(groups) + 1) + 2)
    fig, axes = plt.subplots(panels, 1, figsize=(width, 2.9 * panels), squeeze=False)
    for ax, h in zip(axes[:, 0], heads):
        rows = {r["kind"]: r for r in result["rows"][h]}
        every = [] if len(groups) == 1 else [("all", rows["float"]["accuracy"], rows["int8"]["accuracy"],
                                               rows["cross"]["agreement"])]
        bars = every + [(g["name"], g["heads"][h]["float_accuracy"], g["heads"][h]["int8_accuracy"],
                         g["heads"][h]["agreement"]) for g in groups]
        names = [b[0] for b in bars]
        vals = {"float": [b[1] for b in bars], "int8": [b[2] for b in bars], "agreement": [b[3] for b in bars]}
        x = np.arange(len(names))
        for i, (label, v) in enumerate(vals.items()):
            v = np.array([np.nan if a is None else a for a in v], float) * 100
            ax.bar(x + (i - 1) * 0.27, np.nan_to_num(v), 0.27, label=label,
                   color=("#4c72b0", "#dd8452", "#999999")[i])
        chance = 100 / len(result["class_names"][h])
        ax.axhline(chance, color="k", lw=0.8, ls=":", label=f"chance {chance:.0f} %")
        ax.set_xticks(x, names)
        ax.set_xlim(-0.8, max(len(names), 2) - 0.2)  # one group: keep the bars narrow
        ax.set_ylim(0, 125)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("%")
        ax.set_title(f"{HEAD_TITLES[h]}: accuracy vs truth; int8/float agreement", fontsize=10)
        ax.legend(fontsize=7, ncol=4, loc="upper left")
    if result["runtimes"]:
        ax = axes[-1, 0]
        rt = result["runtimes"]
        y = np.arange(len(rt))
        ax.barh(y, [r["median_ms"] for r in rt], color="#55a868")
        ax.set_yticks(y, [r["runtime"] for r in rt], fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("median latency at batch 1, ms (log scale)")
        for yi, r in zip(y, rt):
            ax.text(r["median_ms"], yi, f" {r['median_ms']:.3g} ms, {r['bytes'] / 1024:.0f} KB", va="center",
                    fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_compare_report(result: dict, out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write compare.json, report.md, report.html, the confusion PNGs and summary.png.

    Parameters
    ----------
    result : dict
        What :func:`painhelm.compress.compare.compare` returned.
    out_dir : path
        Report folder (created).
    title : str | None
        Heading; default ``painhelm compare: <model> on <test groups>``.

    Returns
    -------
    paths : dict
        ``json``, ``md``, ``html``, ``summary`` (paths) and ``png`` (every PNG, summary first).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = result["test"]
    title = title or f"painhelm compare: {result['model']} float vs int8 on {', '.join(test['groups'])}"

    summary = plot_summary(out / "summary.png", result)
    conf: dict[str, list[Path]] = {}
    what = {"float": "float vs truth", "int8": "int8 vs truth"}
    for h in result["heads"]:
        names = result["class_names"][h]
        conf[h] = [plot_confusion(out / f"confusion_{h}_{k}.png", result["confusion"][h][k], names,
                                  f"{HEAD_TITLES[h]}: {what[k]}") for k in ("float", "int8")]
        conf[h].append(plot_cross(out / f"confusion_{h}_cross.png", result["confusion"][h]["cross"], names,
                                  f"{HEAD_TITLES[h]}: int8 vs float"))

    facts = _facts(result)
    md = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in facts] + [""]
    ht = [f"<h1>{html.escape(title)}</h1>", "<ul>"] + [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                                                       for k, v in facts] + ["</ul>"]

    def section(heading: str, table: Table | None = None, text: str | None = None, pngs: list[Path] = ()):
        md.append(f"## {heading}")
        ht.append(f"<h2>{html.escape(heading)}</h2>")
        if table is not None:
            md.extend(["", render_markdown(table), ""])
            ht.append(render_html(table))
        if text:
            md.extend([text, ""])
            ht.append(f"<p>{html.escape(text)}</p>")
        if pngs:
            md.extend([" ".join(f"![{p.stem}]({p.name})" for p in pngs), ""])
            ht.append("<p>" + " ".join(f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,{_b64(p)}">'
                                       for p in pngs) + "</p>")

    section("Targets", targets_table(result))
    for h in result["heads"]:
        section(head_title(result, h), head_table(result, h), pngs=conf[h])
    md += [CROSS_NOTE, ""]
    ht.append(f"<p>{html.escape(CROSS_NOTE)}</p>")
    section(f"Per {result['per_group']['by']}", groups_table(result), pngs=[summary])
    if result["runtimes"]:
        section("Runtimes", runtime_table(result),
                text="TFLite Micro arena: the smallest arena (to 256 B) in which the TFLM Python interpreter "
                     "allocates and invokes the model; it includes the interpreter's allocation records, so a "
                     "device build needs at most this much.")

    paths = write_documents(out, "compare.json", result, md, ht, title)
    paths.update(summary=summary, png=[summary] + [p for h in result["heads"] for p in conf[h]])
    return paths
