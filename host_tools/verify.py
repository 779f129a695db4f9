"""Device vs host: stream a test set through a helmet and check it computes what the host does.

``painhelm verify`` (``verify_cmd``) is built from these steps, each usable on its own:

- :func:`load_reference`: the compressed folder the helmet should be running (its bundle,
  float model and test data's origin);
- :func:`check_fit`: the test windows fit the helmet's bundle (channels, rate, length);
- :func:`host_predictions`: host int8 logits (TensorFlow Lite Micro on the folder's bundle:
  the helmet reproduces it bit for bit) and host float logits;
- :func:`stream_windows`: every window through the helmet, as one MSG_INFER each when the
  helmet's frame buffer takes a whole window, else as contiguous MSG_SAMPLES;
- :func:`summarize` and :func:`write_verify_report`: rows per head, per subject/session,
  confusion matrices, latency histogram; report.md, report.html, verify.json, PNGs.

The device's prediction is the argmax of its int8 logits; what it *reports* may be
``uncertain`` when a decision gate fails (counted separately).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from painhelm.firmware import bundle as fmt
from painhelm.firmware import wire

HEADS = ("level", "location")
UNLABELLED = -1  # painhelm.train.dataset.UNLABELLED
WINDOW_HEADER_SIZE = struct.calcsize(wire.WINDOW_HEADER)
# (row label, prediction, reference) per head, in the order the report shows them
ROWS = (
    ("device vs truth", "device", "truth"),
    ("host int8 vs truth", "int8", "truth"),
    ("device vs host int8 (cross)", "device", "int8"),
    ("host float vs truth", "float", "truth"),
)
CROSS_ROW = "device vs host int8 (cross)"


class VerifyError(ValueError):
    """A folder, test set or helmet that cannot be verified; the message says why, in one line."""


# --- the reference: what the helmet should be running ------------------------------------------

@dataclass
class Reference:
    """The compressed folder a helmet is checked against."""

    folder: Path
    bundle_dir: Path
    preproc: dict  # the bundle's preproc.json
    model_sha256: str  # of the bundle's model file, as the helmet reports it
    fitted: object | None = None  # painhelm.train.fit.Fitted of FOLDER/model, when there is one
    float_model: object | None = None  # a torch module when there is no Fitted (a demo folder)

    @property
    def ch_names(self) -> list[str]:
        return list(self.preproc["ch_names"])

    @property
    def sfreq(self) -> float:
        return float(self.preproc["sfreq"])

    @property
    def n_times(self) -> int:
        return int(self.preproc["n_times"])

    @property
    def class_names(self) -> dict[str, list[str]]:
        return {"level": list(self.preproc["level_names"]), "location": list(self.preproc["location_names"])}

    @property
    def heads(self) -> list[str]:
        """Heads with classes (a single-task model keeps a dummy output for the other)."""
        names = self.class_names
        own = getattr(self.fitted, "heads", None) or HEADS
        return [h for h in HEADS if names[h] and h in own]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_reference(folder: str | Path) -> Reference:
    """Read a folder written by ``painhelm compress`` (``bundle/`` and ``model/``) or by
    ``painhelm demo`` (``bundle/``, ``model/model.pt``). VerifyError says what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VerifyError(f"{folder}: no such folder (give a folder written by painhelm compress)")
    bundle_dir = folder / "bundle"
    if not (bundle_dir / fmt.MANIFEST_FILE).is_file():
        if (folder / "compressed" / "bundle").is_dir():
            raise VerifyError(f"{folder} is a model folder; verify its compressed folder: {folder / 'compressed'}")
        raise VerifyError(f"{folder} has no helmet bundle ({bundle_dir / fmt.MANIFEST_FILE} missing): give a folder "
                          "written by painhelm compress with the bundle format")
    try:
        preproc = json.loads((bundle_dir / fmt.PREPROC_FILE).read_text())
        model_file = bundle_dir / fmt.MODEL_FILE
        sha = _sha256(model_file)
    except (OSError, ValueError) as e:
        raise VerifyError(f"{bundle_dir}: unreadable bundle ({e})") from None
    ref = Reference(folder, bundle_dir, preproc, sha)
    model_dir = folder / "model"
    if (model_dir / "config.json").is_file():  # a compressed folder: the float model as trained
        from painhelm.compress.pipeline import load_model_folder

        ref.fitted = load_model_folder(model_dir)  # CompressError (a ValueError) names the problem
    elif (model_dir / "model.pt").is_file():  # the demo: weights and model config only
        ref.float_model = _load_demo_model(model_dir / "model.pt")
    return ref


def _load_demo_model(path: Path):
    import torch

    from painhelm.train.model import model_from_config

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = model_from_config(dict(ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
    except Exception as e:  # noqa: BLE001 - any unreadable file: one line, and no float row
        raise VerifyError(f"{path} is not a readable model ({type(e).__name__}: {e})") from None
    return model.eval()


# --- test windows -------------------------------------------------------------------------------

def pick_windows(n: int, max_windows: int | None) -> np.ndarray:
    """Indices of at most ``max_windows`` of ``n`` windows, spread evenly (every subject and
    class keeps its share, unlike the first N)."""
    if not max_windows or max_windows >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_windows).round().astype(int))


def check_model(info: dict, class_names: dict[str, list[str]]) -> list[str]:
    """Raise VerifyError when the helmet's bundle has other classes than ``class_names`` (its
    predictions could not be compared); return warnings about the helmet's bundle state."""
    for h in HEADS:
        dev = list(info.get(f"{h}_names") or [])
        if dev != list(class_names[h]):
            raise VerifyError(f"the helmet's bundle has {h} classes {dev}, the folder's {class_names[h]}: "
                              "it runs another kind of model; flash the folder's bundle")
    return [f"the helmet refused a newer bundle and runs its previous one: {info['bundle_refused']}"] \
        if info.get("bundle_refused") else []


def check_fit(info: dict, ch_names: list[str], sfreq: float, n_times: int, what: str = "the test data") -> None:
    """Raise VerifyError naming the difference when windows of ``what`` do not fit the helmet's
    bundle (``info``: the firmware's description), or when the helmet has no usable bundle."""
    if info.get("bundle_error"):
        raise VerifyError(f"the helmet has no usable bundle ({info['bundle_error']}); flash one with "
                          "painhelm flash --port PORT --bundle FOLDER/bundle")
    dev_ch = list(info.get("ch_names") or [])
    if dev_ch != list(ch_names):
        if len(dev_ch) != len(ch_names):
            diff = f"{len(ch_names)} channels, the helmet's bundle {len(dev_ch)}"
        else:
            k = next(i for i, (a, b) in enumerate(zip(ch_names, dev_ch)) if a != b)
            diff = f"channel {k + 1} is {ch_names[k]!r}, on the helmet {dev_ch[k]!r}"
        raise VerifyError(f"{what} do not fit the helmet's bundle: {diff}")
    if abs(float(info.get("sfreq", 0)) - float(sfreq)) > 1e-6 * float(sfreq):
        raise VerifyError(f"{what} do not fit the helmet's bundle: sampled at {sfreq:g} Hz, the bundle "
                          f"expects {float(info.get('sfreq', 0)):g} Hz")
    if int(info.get("n_times", 0)) != int(n_times):
        raise VerifyError(f"{what} do not fit the helmet's bundle: windows of {n_times} samples, the bundle "
                          f"takes {info.get('n_times')}")


# --- host predictions --------------------------------------------------------------------------

def host_predictions(ref: Reference, data: np.ndarray, float_images: np.ndarray | None = None) -> dict:
    """Host logits of windows ``data`` (n, n_ch, n_times) µV.

    ``int8``: TensorFlow Lite Micro on the bundle's model, fed the images the bundle's own
    preprocessing makes from the float32 samples the helmet receives (the replay path, so
    the helmet must match bit for bit); ``float``: the float model on ``float_images``
    (the model folder's preprocessing), or None without a float model.
    Returns ``{"int8": {head: int8 (n, k)}, "float": {head: (n, k)} | None}``.
    """
    from painhelm.compress.export import TFLMRunner, quantize_array

    from .replay import load_bundle

    _, pre = load_bundle(ref.bundle_dir)
    windows = np.asarray(data, np.float32)  # what the wire carries
    images = pre.images_from_logbp(pre.band_powers(windows.astype(np.float64)))
    runner = TFLMRunner(ref.bundle_dir / fmt.MODEL_FILE)
    lq, cq = runner.predict_int8(quantize_array(images, ref.preproc["input_scale"], ref.preproc["input_zero_point"]))
    out = {"int8": {"level": np.asarray(lq, np.int8), "location": np.asarray(cq, np.int8)}, "float": None}
    if ref.fitted is not None and float_images is not None:
        out["float"] = ref.fitted.predict_images(float_images)
    elif ref.float_model is not None:
        from painhelm.train.trainer import predict

        out["float"] = predict(ref.float_model, images.astype(np.float32))
    return out


# --- streaming ---------------------------------------------------------------------------------

@dataclass
class Streamed:
    """What came back from the helmet: one report per window, and the host's clocks."""

    reports: list[dict]
    round_trip_s: np.ndarray  # per window: first byte sent -> its report read
    wall_s: float  # the whole stream
    path: str  # "infer" or "samples"
    notes: list[str] = field(default_factory=list)


def choose_path(info: dict, n_ch: int, n_times: int) -> str:
    """``"infer"`` when one MSG_INFER window fits the helmet's frame buffer, else ``"samples"``."""
    need = WINDOW_HEADER_SIZE + 4 * n_ch * n_times
    return "infer" if need <= int(info.get("max_payload", wire.MAX_PAYLOAD)) else "samples"


def _drain_reports(link) -> int:
    """Discard reports already queued (an earlier stream's); return how many."""
    from .link import LinkTimeout

    link.poll()
    n = 0
    while True:
        try:
            link.next_report(timeout=0)
        except LinkTimeout:
            return n
        n += 1


def stream_windows(link, info: dict, data: np.ndarray, sfreq: float, timeout: float = 10.0,
                   path: str | None = None, progress: bool = False) -> Streamed:
    """Send every window of ``data`` (n, n_ch, n_times) µV through the helmet, one at a time,
    and collect its reports (one per window, in order).

    ``path``: "infer" or "samples" (default: :func:`choose_path`). The samples path streams
    the windows back to back from sample 0 with the helmet's hop set to the window length,
    so its k-th window is exactly window k; each window's report is awaited before the
    next is sent (no FIFO overrun on a slow board). Acquisition the helmet was running is
    stopped first and restarted after; settings changed for the stream are restored.
    """
    from .link import LinkError

    data = np.ascontiguousarray(data, dtype="<f4")
    n, n_ch, n_times = data.shape
    path = path or choose_path(info, n_ch, n_times)
    if path not in ("infer", "samples"):
        raise ValueError(f"path must be 'infer' or 'samples', got {path!r}")
    was_streaming = info.get("state") == wire.STATE_STREAMING
    notes: list[str] = []
    restore: dict | None = None
    if was_streaming:
        link.command(wire.CMD_STOP)
        notes.append("the helmet was acquiring: stopped for the test, restarted after")
    if path == "samples":
        # CMD_CONFIG only when a setting must change: it rebuilds the link source, and on a
        # 256 KB heap that allocation can fail once the heap is fragmented
        restore = {}
        if info.get("source") != "link":  # the ACK of an empty change carries the settings
            restore["source"] = json.loads(link.command(wire.CMD_CONFIG, {}) or "{}").get("source")
        if int(info.get("hop") or n_times) != n_times:
            restore["hop"] = int(info["hop"])
        if restore:
            link.command(wire.CMD_CONFIG, {"source": {"kind": "link"}, "hop": 0})
        else:
            restore = None
        link.command(wire.CMD_STOP)  # the first SAMPLES frame restarts the window from empty
        _drain_reports(link)
    per_frame = int(info.get("samples_per_frame") or wire.SAMPLES_PER_FRAME)
    it = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="helmet", unit="window", leave=False)
    reports, rtt = [], np.empty(n)
    t0 = time.perf_counter()
    try:
        for i in it:
            t = time.perf_counter()
            try:
                if path == "infer":
                    rep = link.infer(data[i], sfreq, timeout=timeout)
                else:
                    link.send_samples(data[i], i * n_times, max_samples=per_frame)
                    rep = link.next_report(timeout=timeout)
            except LinkError as e:
                raise type(e)(f"window {i + 1} of {n} ({path}): {e}") from None
            if path == "samples" and rep["sample_index"] != (i + 1) * n_times & 0xFFFFFFFF:
                raise LinkError(f"window {i + 1} of {n}: the helmet reported sample {rep['sample_index']}, "
                                f"expected {(i + 1) * n_times} (samples lost on the link)")
            rtt[i] = time.perf_counter() - t
            reports.append(rep)
        wall = time.perf_counter() - t0
    finally:
        _restore(link, path, restore, was_streaming)
    return Streamed(reports, rtt, wall, path, notes)


def _restore(link, path: str, restore: dict | None, was_streaming: bool) -> None:
    """Leave the helmet as it was found; best effort (an error here must not hide the real one)."""
    from .link import LinkError

    try:
        if path == "samples":
            link.command(wire.CMD_STOP)
        if restore is not None:
            link.command(wire.CMD_CONFIG, restore)
        if was_streaming:
            link.command(wire.CMD_START)
    except (LinkError, OSError):
        pass


# --- comparing ---------------------------------------------------------------------------------

def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b)) if len(a) else math.nan


def confusion(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix of the labelled windows (rows truth, columns prediction)."""
    from .report import confusion as conf

    lab = truth != UNLABELLED
    return conf(truth[lab], pred[lab], n_classes)


def summarize(ref: Reference, truth: dict[str, np.ndarray], groups: np.ndarray, group_by: str,
              host: dict, streamed: Streamed, sfreq: float, n_times: int) -> dict:
    """Rows per head, per group, logits identity, decisions, latency and throughput as one dict."""
    from painhelm.firmware.decide import REASON_NAMES

    reps = streamed.reports
    n = len(reps)
    names = ref.class_names
    result: dict = {"heads": {}, "n_windows": n}
    cross = []
    for h in ref.heads:
        dev_q = np.array([r[f"{h}_q"] for r in reps], dtype=np.int8).reshape(n, -1)
        host_q = host["int8"][h]
        preds = {"truth": np.asarray(truth[h]), "device": dev_q.argmax(1), "int8": host_q.argmax(1)}
        if host["float"] is not None:
            preds["float"] = np.asarray(host["float"][h]).argmax(1)
        lab = preds["truth"] != UNLABELLED
        rows = []
        for label, a, b in ROWS:
            if a not in preds:
                continue
            sel = lab if b == "truth" else np.ones(n, bool)
            if b == "truth" and not sel.any():
                continue  # an unlabelled head: no accuracy rows
            rows.append({"row": label, "agree": _agree(preds[a][sel], preds[b][sel]), "n": int(sel.sum())})
        same_shape = dev_q.shape == host_q.shape  # else the helmet runs a model of other heads
        decided = np.array([r[h] for r in reps])
        head = {
            "rows": rows,
            "cross": _agree(preds["device"], preds["int8"]),
            "logits_identical": float(np.mean(np.all(dev_q == host_q, axis=1))) if same_shape else 0.0,
            "max_logit_diff": int(np.abs(dev_q.astype(int) - host_q.astype(int)).max()) if same_shape and n else None,
            "emitted": int(np.sum(decided >= 0)),
            "uncertain": int(np.sum(decided == wire.UNCERTAIN)),
            "class_names": names[h],
            "confusion": {k: confusion(preds["truth"], preds[k], len(names[h])).tolist()
                          for k in ("device", "int8", "float") if k in preds} if lab.any() else {},
            "pred": {k: v.tolist() for k, v in preds.items()},
        }
        cross.append(head["cross"])
        result["heads"][h] = head
    reasons = np.array([r["reasons"] for r in reps], dtype=int)
    result["withheld"] = {name: int(np.sum(reasons & bit != 0)) for bit, name in REASON_NAMES}
    result["per_group"] = {"by": group_by, "rows": _group_rows(result["heads"], groups)}
    dsp = np.array([r["dsp_us"] for r in reps], float) / 1e3
    inf = np.array([r["infer_us"] for r in reps], float) / 1e3
    result["latency_ms"] = {"device": _stats(dsp + inf), "dsp": _stats(dsp), "infer": _stats(inf),
                            "round_trip": _stats(streamed.round_trip_s * 1e3)}
    data_s = n * n_times / sfreq
    result["throughput"] = {"path": streamed.path, "data_s": data_s, "wall_s": streamed.wall_s,
                            "realtime_x": data_s / streamed.wall_s if streamed.wall_s > 0 else math.inf}
    result["min_cross"] = min(cross) if cross else math.nan
    result["windows"] = [{"dsp_us": r["dsp_us"], "infer_us": r["infer_us"], "round_trip_ms": float(t * 1e3),
                          "level_q": r["level_q"], "location_q": r["location_q"], "reasons": r["reasons"],
                          "level": r["level"], "location": r["location"], "group": str(g)}
                         for r, t, g in zip(reps, streamed.round_trip_s, groups)]
    return result


def _stats(ms: np.ndarray) -> dict:
    if not len(ms):
        return {}
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "max": float(ms.max()),
            "values": [round(float(v), 3) for v in ms]}


def _group_rows(heads: dict, groups: np.ndarray) -> list[dict]:
    """Device, host int8 and float accuracy and the cross agreement per subject or session."""
    groups = np.asarray(groups).astype(str)
    rows = []
    for g in sorted(set(groups.tolist())):
        sel = groups == g
        row = {"name": g, "n": int(sel.sum()), "heads": {}}
        for h, head in heads.items():
            p = {k: np.asarray(v)[sel] for k, v in head["pred"].items()}
            lab = p["truth"] != UNLABELLED
            acc = {k: _agree(p[k][lab], p["truth"][lab]) if lab.any() else math.nan
                   for k in ("device", "int8", "float") if k in p}
            row["heads"][h] = {"device_accuracy": acc["device"], "int8_accuracy": acc["int8"],
                               "float_accuracy": acc.get("float", math.nan),
                               "cross": _agree(p["device"], p["int8"])}
        rows.append(row)
    return rows


# --- text and files ----------------------------------------------------------------------------

def _pct(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f} %"


def head_lines(result: dict) -> list[tuple[str, ...]]:
    """(head, comparison, agreement, n) rows of every head."""
    return [(h, r["row"], _pct(r["agree"]), str(r["n"])) for h, head in result["heads"].items() for r in head["rows"]]


def group_lines(result: dict) -> tuple[list[str], list[tuple[str, ...]]]:
    """Header and rows of the per-subject (or per-session) table."""
    heads = list(result["heads"])
    header = [result["per_group"]["by"], "n"]
    for h in heads:
        header += [f"{h} device", f"{h} int8", f"{h} float", f"{h} cross"]
    rows = []
    for g in result["per_group"]["rows"]:
        cells = [g["name"], str(g["n"])]
        for h in heads:
            x = g["heads"][h]
            cells += [_pct(x["device_accuracy"]), _pct(x["int8_accuracy"]), _pct(x["float_accuracy"]), _pct(x["cross"])]
        rows.append(tuple(cells))
    return header, rows


def text_table(header, rows, n_left: int = 1) -> str:
    """Rows as an aligned plain-text table (the first ``n_left`` columns left, the rest right)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt_row = (lambda cells: "  ".join(str(c).ljust(w) if i < n_left else str(c).rjust(w)
                                       for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join([fmt_row(header)] + [fmt_row(r) for r in rows])


def facts(result: dict) -> dict[str, str]:
    """The headline figures of a result, label -> text (summary in the terminal and the report)."""
    lat, thr = result["latency_ms"], result["throughput"]
    d = {
        "helmet": result.get("device_text", ""),
        "model": result.get("model_text", ""),
        "test": result.get("test_text", ""),
        "path": {"infer": "MSG_INFER, one window per request",
                 "samples": "MSG_SAMPLES, windows streamed back to back"}[thr["path"]],
    }
    for h, head in result["heads"].items():
        d[f"{h}: logits identical to host int8"] = (
            f"{_pct(head['logits_identical'])} of windows (max difference {head['max_logit_diff']})")
        d[f"{h}: decisions"] = f"{head['emitted']} emitted, {head['uncertain']} uncertain"
    withheld = ", ".join(f"{k} {v}" for k, v in result["withheld"].items() if v) or "none"
    d["uncertain because of"] = withheld
    d["device time per window"] = (f"median {lat['device']['median']:.1f} ms (DSP {lat['dsp']['median']:.1f}, "
                                   f"inference {lat['infer']['median']:.1f}); host round trip median "
                                   f"{lat['round_trip']['median']:.1f} ms")
    d["throughput"] = (f"{thr['realtime_x']:.1f}x real time ({result['n_windows']} windows, {thr['data_s']:.0f} s "
                       f"of EEG in {thr['wall_s']:.1f} s)")
    d["lowest cross agreement"] = f"{_pct(result['min_cross'])} (gate: --min-agreement {_pct(result['min_agreement'])})"
    d["verdict"] = "PASS" if result["passed"] else "FAIL"
    return {k: v for k, v in d.items() if v}


def write_verify_report(result: dict, out: str | Path) -> dict[str, Path]:
    """Write report.md, report.html, verify.json, confusion.png and latency.png into ``out``."""
    from . import report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "html": out / "report.html", "json": out / "verify.json",
             "confusion": None, "latency": out / "latency.png"}
    mats = {}
    for h, head in result["heads"].items():
        for k, m in head["confusion"].items():
            mats[f"{h}: {'host ' if k != 'device' else ''}{k}"] = (np.asarray(m), head["class_names"])
    if mats:
        per_head = max(len(head["confusion"]) for head in result["heads"].values())
        paths["confusion"] = report.plot_confusions(out / "confusion.png", mats, ncols=per_head)
    lat = result["latency_ms"]
    report.plot_latency(paths["latency"], {
        "device (DSP + inference)": np.asarray(lat["device"]["values"]),
        "host round trip": np.asarray(lat["round_trip"]["values"])})
    title = "painhelm verify: device vs host int8 vs float vs truth"
    summary = facts(result)
    head_rows = head_lines(result)
    g_header, g_rows = group_lines(result)
    md = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in summary.items()]
    md += ["", "| head | comparison | agreement | n |", "|---|---|---:|---:|"]
    md += [f"| {' | '.join(r)} |" for r in head_rows]
    md += ["", f"## per {result['per_group']['by']} (accuracy; cross = device vs host int8)", "",
           f"| {' | '.join(g_header)} |", "|" + "---|" + "---:|" * (len(g_header) - 1)]
    md += [f"| {' | '.join(r)} |" for r in g_rows]
    if paths["confusion"] is not None:
        md += ["", "![confusion matrices](confusion.png)"]
    md += ["", "![latency per window](latency.png)", ""]
    paths["md"].write_text("\n".join(md))

    def table(header, rows):
        th = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{th}</tr>{trs}</table>"

    items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in summary.items())
    imgs = "".join(f'<p><img src="{p.name}" alt="{p.stem}"></p>' for p in (paths["confusion"], paths["latency"]) if p)
    paths["html"].write_text(
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}"
        "td+td{text-align:right}td+td+td{text-align:right}</style>"
        f"<h1>{html.escape(title)}</h1><ul>{items}</ul>"
        + table(("head", "comparison", "agreement", "n"), head_rows)
        + f"<h2>per {html.escape(result['per_group']['by'])}</h2>" + table(g_header, g_rows) + imgs + "\n")
    paths["json"].write_text(json.dumps(_no_nan(result), indent=1, default=_json_default))
    return paths


def _no_nan(o):
    """NaN (an unlabelled head's accuracy) as null: verify.json stays strict JSON."""
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, dict):
        return {k: _no_nan(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_no_nan(v) for v in o]
    return o


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")
