"""Calibrate the helmet's decision stage on a model's training data.

The helmet reports "uncertain" instead of a level when a gate fails (``firmware_py/decide.py``,
``firmware_py/quality.py``). Their settings are shipped in the bundle's ``preproc.json`` as the
``"decision"`` section, made here from the model's **training** trials only (the subjects and
sessions that entered its fit; ``compress.source.training_part``):

- signal quality: per-channel limits from the training distribution of the very statistics the
  helmet computes (the firmware ``Quality`` runs on every training window), by a tail rule:
  ``median * (q95 / median) ** 3``, i.e. three times the log distance from the median to the
  95th percentile. It follows each channel's own spread and skew (a frontal
  channel whose theta grows with pain spreads far more than an occipital one), and up to 5 %
  of training windows with artifacts do not move it. (A robust z-score, PREP's
  ``median + 5 * 1.4826 * MAD`` on the log, was tried: it is loose where the distribution is
  multimodal and tight where it is narrow; see ``docs/decisions.md``). The mains frequency is a
  setting, by default the dataset's (``LINE_FREQ``);
- out-of-distribution score: mean squared z-score of the window's log band powers with a mean
  and standard deviation per (band, channel); its threshold is a high quantile of the scores of
  each training subject against statistics fitted on the *other* training subjects, because
  in-sample scores understate what a new wearer gives;
- minimum confidence per head: a low quantile of what the helmet compares, the smoothed
  probability of the reported class (the firmware ``Decider`` on the int8 model's logits), over
  the validation windows the training held out for early stopping, played as sessions;
- smoothing and hysteresis: settings, not fitted.

``calibrate`` returns the section and a record of how each number was obtained (it goes into
``compress.json``). ``docs/decisions.md`` explains the choices and the measured rates.
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import asdict, dataclass, field

import numpy as np

from painhelm.firmware import decide, quality

logger = logging.getLogger(__name__)

DECISION_VERSION = 1
# mains frequency of each built-in dataset's recordings (physionet: BCI2000 in New York)
LINE_FREQ = {"synthetic-pain": 50.0, "physionet-mi": 60.0}
DEFAULT_LINE_FREQ = 50.0
# consecutive windows are one session on a real helmet: smooth a little, switch after 3
SMOOTHING = {"alpha": 0.5, "margin": 0.2, "hold": 3, "reset_after": 5}


@dataclass
class DecisionSettings:
    """How the decision section is calibrated (recorded with it)."""

    tail_quantile: float = 0.95  # quality limits: median * (q / median) ** tail_factor per channel
    tail_factor: float = 3.0
    flat_fraction: float = 0.5  # flat_uv = this x the smallest channel's lower limit of ptp (same rule, 5th pct.)
    line_freq: float | None = None  # mains Hz; None: the dataset's (LINE_FREQ), else 50
    line_ratio_floor: float = 0.01  # never flag less than 1 % of a channel's power at the mains
    saturation_uv: float | None = None  # the amplifier's range; None: 10x the largest |x| in training
    stuck_min: int = 3  # at least this many identical samples in a row count as clipped
    max_bad_channels: int = 0  # one bad electrode already distorts the topography
    ood_quantile: float = 0.99
    confidence_quantile: float = 0.02  # share of clean validation windows the confidence gate may withhold
    smoothing: dict = field(default_factory=lambda: dict(SMOOTHING))

    def validate(self) -> None:
        """Raise ValueError naming the setting, what is allowed and what was given."""
        for name, lo, hi in (("ood_quantile", 0.5, 1.0), ("confidence_quantile", 0.0, 0.5)):
            v = getattr(self, name)
            if not lo <= v < hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}), got {v!r}")
        if not 0.5 < self.tail_quantile < 1:
            raise ValueError(f"tail_quantile must be in (0.5, 1), got {self.tail_quantile!r}")
        if self.tail_factor < 1:
            raise ValueError(f"tail_factor must be >= 1, got {self.tail_factor!r}")
        if self.max_bad_channels < 0:
            raise ValueError(f"max_bad_channels must be >= 0, got {self.max_bad_channels!r}")
        unknown = sorted(set(self.smoothing) - set(SMOOTHING))
        if unknown:
            raise ValueError(f"smoothing keys must be among {sorted(SMOOTHING)}, got {unknown}")


def _sig(v: float, digits: int = 4) -> float:
    """``v`` rounded to ``digits`` significant digits (readable JSON, same on every port)."""
    return float(f"{float(v):.{digits}g}")


def _tail_limit(values: np.ndarray, quantile: float, factor: float, axis=None) -> np.ndarray:
    """``median * (q / median) ** factor`` along ``axis``, ``q`` the ``quantile`` of ``values``
    (a lower limit when ``quantile`` < 0.5). Computed on the log: the limit lies ``factor``
    times as far from the median as the quantile does."""
    lv = np.log(np.maximum(values, 1e-12))
    med = np.median(lv, axis=axis)
    return np.exp(med + factor * (np.quantile(lv, quantile, axis=axis) - med))


def line_freq_for(dataset: str | None, line_freq: float | None = None) -> float:
    """The mains frequency to check: ``line_freq`` if given, else the dataset's, else 50 Hz."""
    if line_freq is not None:
        return float(line_freq)
    return LINE_FREQ.get(dataset or "", DEFAULT_LINE_FREQ)


def _f32(window: np.ndarray) -> array:
    """array('f') of one window, channel-major, as the helmet holds it."""
    a = array("f")
    a.frombytes(np.ascontiguousarray(window, "<f4").tobytes())
    return a


def quality_stats(data: np.ndarray, sfreq: float, line_freq: float) -> dict[str, np.ndarray]:
    """Per-window, per-channel statistics of the helmet's quality check.

    Parameters
    ----------
    data : array, shape (n_windows, n_ch, n_times)
        Raw windows in µV (before cleaning), as the helmet receives them.
    sfreq : float
    line_freq : float

    Returns
    -------
    stats : dict of arrays, shape (n_windows, n_ch)
        ``ptp``, ``absmax``, ``hf``, ``jump``, ``line``, ``stuck``, computed by the firmware's
        ``Quality`` itself (so the limits apply to exactly what the device measures).
    """
    n, n_ch, n_times = data.shape
    q = quality.Quality(n_ch, n_times, sfreq, {"line_freq": line_freq, "line_ratio": 1.0})
    keys = ("ptp", "absmax", "hf", "jump", "line", "stuck")
    out = {k: np.zeros((n, n_ch)) for k in keys}
    for i in range(n):
        q.check(_f32(data[i]))
        for k in keys:
            out[k][i] = getattr(q, k)
    return out


def calibrate_quality(data: np.ndarray, sfreq: float, line_freq: float,
                      settings: DecisionSettings) -> tuple[dict, dict]:
    """The ``quality`` settings from training windows; returns ``(cfg, record)``."""
    st = quality_stats(data, sfreq, line_freq)
    finite = np.isfinite(st["ptp"]).all(axis=1)
    st = {k: v[finite] for k, v in st.items()}
    tq, tf = settings.tail_quantile, settings.tail_factor
    ptp_hi = _tail_limit(st["ptp"], tq, tf, axis=0)
    hf_hi = _tail_limit(st["hf"], tq, tf, axis=0)
    jump_hi = _tail_limit(st["jump"], tq, tf, axis=0)
    ptp_lo = _tail_limit(st["ptp"], 1 - tq, tf, axis=0)
    line_hi = float(max(_tail_limit(st["line"].ravel(), tq, tf), settings.line_ratio_floor))
    runs = st["stuck"].ravel()
    stuck = int(max(settings.stuck_min, np.quantile(runs, 0.999) + 2))
    sat = settings.saturation_uv
    sat_how = "the amplifier's range (setting)"
    if sat is None:
        sat = 10.0 * float(st["absmax"].max())
        sat_how = "10 x the largest |x| of any training window (the amplifier's range was not given)"
    cfg = {
        "flat_uv": _sig(settings.flat_fraction * float(ptp_lo.min())),
        "saturation_uv": _sig(sat),
        "stuck_samples": stuck,
        "line_freq": float(line_freq),
        "line_ratio": _sig(line_hi),
        "artifact_ptp_uv": [_sig(v) for v in ptp_hi],
        "artifact_hf_uv": [_sig(v) for v in hf_hi],
        "artifact_jump_uv": [_sig(v) for v in jump_hi],
        "max_bad_channels": int(settings.max_bad_channels),
    }
    # what these limits withhold on the training windows themselves
    qc = quality.Quality(data.shape[1], data.shape[2], sfreq, cfg)
    flagged = np.zeros(len(data), bool)
    for i in range(len(data)):
        qc.check(_f32(data[i]))
        flagged[i] = not qc.ok
    record = {
        "n_windows": int(len(data)), "n_nonfinite_windows": int((~finite).sum()),
        "method": f"per channel, median x (q{100 * tq:g} / median) ** {tf:g} of the statistic over the training "
                  "windows (artifact_ptp_uv, artifact_hf_uv, artifact_jump_uv); "
                  f"flat_uv = {settings.flat_fraction:g} x "
                  f"the smallest median x (q{100 * (1 - tq):g} / median) ** {tf:g} of ptp; line_ratio the same rule "
                  f"over all channels, at least {settings.line_ratio_floor:g}; stuck_samples = max(stuck_min, 99.9 % "
                  f"quantile of the longest run of identical samples + 2); saturation_uv = {sat_how}",
        "line_freq_hz": float(line_freq),
        "median": {k: [_sig(v) for v in np.median(st[k], axis=0)] for k in ("ptp", "hf", "jump")},
        "median_line_ratio": _sig(float(np.median(st["line"]))),
        "max_stuck_run": int(runs.max()) if runs.size else 0,
        "training_windows_withheld": _sig(float(flagged.mean())),
    }
    return cfg, record


def ood_scores(logbp: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``decide.ood_score`` of many windows at once (numpy, float32 statistics as the helmet's).

    ``logbp`` (n_windows, n_frames, n_bands, n_ch); ``mean``/``std`` (n_bands, n_ch).
    """
    mean = np.asarray(mean, np.float32).astype(np.float64)
    inv = (1.0 / np.asarray(std, np.float32).astype(np.float64)).astype(np.float32).astype(np.float64)
    z = (np.asarray(logbp, np.float64) - mean) * inv
    s = (z * z).mean(axis=(1, 2, 3))
    return np.where(np.isfinite(s), s, decide.OOD_NONFINITE)


def _ood_fit(logbp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lb = logbp[np.isfinite(logbp).all(axis=(1, 2, 3))]
    return lb.mean(axis=(0, 1)).astype(np.float32), (lb.std(axis=(0, 1)) + 1e-6).astype(np.float32)


def calibrate_ood(logbp: np.ndarray, groups: np.ndarray, quantile: float) -> tuple[dict, dict]:
    """The ``ood`` settings; returns ``(cfg, record)``.

    ``logbp`` (n_windows, n_frames, n_bands, n_ch) of the training windows; ``groups`` their
    subject (or session) per window. The threshold is the ``quantile`` of leave-one-group-out
    scores when there are at least 2 groups, else of the in-sample scores.
    """
    mean, std = _ood_fit(logbp)
    groups = np.asarray(groups).astype(str)
    names = np.unique(groups)
    if len(names) >= 2:
        scores = np.empty(len(logbp))
        for g in names:
            m, s = _ood_fit(logbp[groups != g])
            scores[groups == g] = ood_scores(logbp[groups == g], m, s)
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        how = f"leave-one-out over {len(names)} training groups ({shown})"
    else:
        scores = ood_scores(logbp, mean, std)
        how = "in-sample (a single training group: optimistic, new wearers will score higher)"
    thr = float(np.quantile(scores[np.isfinite(scores)], quantile))
    cfg = {"mean": [float(v) for v in mean.ravel()], "std": [float(v) for v in std.ravel()],
           "threshold": _sig(thr)}
    insample = ood_scores(logbp, mean, std)
    record = {"score": "mean over frames, bands and channels of ((log10 band power - mean) / std)^2, "
                       "mean and std per (band, channel) over the training windows and frames",
              "quantile": quantile, "scores_from": how, "threshold": cfg["threshold"],
              "n_windows": int(len(logbp)),
              "median_score": _sig(float(np.median(scores))),
              "training_windows_withheld_in_sample": _sig(float((insample > cfg["threshold"]).mean()))}
    return cfg, record


def session_order(labels: np.ndarray, groups: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Play labelled windows as sessions, the way a helmet sees them: per group (a subject or
    recording), the windows of each label in one block (their own order kept), the blocks
    in a seeded random order.

    Returns
    -------
    order : array of int
        Window indices in playing order.
    sessions : array of int
        Session number (one per group) of each window in ``order``.
    """
    rng = np.random.default_rng(seed)
    labels, groups = np.asarray(labels), np.asarray(groups).astype(str)
    order, sessions = [], []
    for s, g in enumerate(np.unique(groups)):
        own = np.flatnonzero(groups == g)
        for lab in rng.permutation(np.unique(labels[own])):
            block = own[labels[own] == lab]
            order.extend(block.tolist())
            sessions.extend([s] * len(block))
    return np.array(order, int), np.array(sessions, int)


def reported_probabilities(logits: dict, smoothing: dict, sessions: np.ndarray) -> dict[str, np.ndarray]:
    """Smoothed probability of the reported class per window and head, from the firmware's
    ``Decider`` (no gates) over a stream; the Decider restarts at each new session.

    ``logits`` maps "level"/"location" to (int8 logits (n, n_classes) in playing order,
    output scale), or (None, 0) for a head without classes.
    """
    heads = [h for h in ("level", "location") if logits.get(h, (None,))[0] is not None]
    n_cls = {h: (logits[h][0].shape[1] if h in heads else 0) for h in ("level", "location")}
    d = decide.Decider(n_cls["level"], n_cls["location"], {"smoothing": smoothing})
    n = len(sessions)
    out = {h: np.zeros(n) for h in heads}
    rows = {h: logits[h][0].tolist() for h in heads}
    dummy = [0]
    for i in range(n):
        if i and sessions[i] != sessions[i - 1]:
            d.reset()
        d.update(rows["level"][i] if "level" in heads else dummy, logits.get("level", (None, 1.0))[1] or 1.0, 0,
                 rows["location"][i] if "location" in heads else dummy,
                 logits.get("location", (None, 1.0))[1] or 1.0, 0, True, 0.0)
        for h in heads:
            out[h][i] = getattr(d, h + "_p") / decide.ONE
    return out


def calibrate_confidence(val_logits: dict, labels: np.ndarray, groups: np.ndarray, smoothing: dict,
                         quantile: float, source: str, seed: int = 0) -> tuple[dict, dict]:
    """``min_confidence`` per head: the ``quantile`` of the smoothed probability of the
    reported class over the validation windows played as sessions (``session_order``), rounded
    down to 3 decimals, so that about that share of clean validation windows is withheld."""
    order, sessions = session_order(labels, groups, seed)
    logits = {h: ((q[order], scale) if q is not None else (None, 0.0)) for h, (q, scale) in val_logits.items()}
    probs = reported_probabilities(logits, smoothing, sessions)
    cfg = {"level": 0.0, "location": 0.0}
    record = {"quantile": quantile, "windows": source,
              "stream": f"validation windows played as {int(sessions.max()) + 1 if len(sessions) else 0} session(s): "
                        "per group, one block per (level, location) class in a seeded random order, "
                        "smoothed by the firmware Decider with the bundle's smoothing",
              "statistic": "smoothed probability of the reported class (what the helmet compares)"}
    for h, p in probs.items():
        if quantile <= 0 or not len(p):
            continue
        v = float(np.floor(np.quantile(p, quantile) * 1000) / 1000)
        cfg[h] = v
        record[h] = {"min_confidence": v, "n_windows": int(len(p)), "median": _sig(float(np.median(p))),
                     "withheld": _sig(float((p < v).mean()))}
    return cfg, record


def output_quantization(runner) -> dict[str, tuple[float, int]]:
    """``{"level": (scale, zero_point), "location": ...}`` of a ``compress.export.TFLMRunner``'s
    outputs: the numbers the helmet's interpreter reads from the same file."""
    out = {}
    for head, i in (("level", runner._i_lvl), ("location", runner._i_loc)):
        q = runner._it.get_output_details(i)["quantization_parameters"]
        out[head] = (float(q["scales"][0]), int(q["zero_points"][0]))
    return out


def int8_logits(tflite_int8: str, images: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
    """int8 logits of ``images`` through the exported model on TensorFlow Lite Micro (what the
    helmet's interpreter reproduces bit for bit), with each output's scale:
    ``{"level": (q, scale), "location": (q, scale)}``."""
    from painhelm.compress.export import TFLMRunner, quantize_array

    runner = TFLMRunner(tflite_int8)
    lq, cq = runner.predict_int8(quantize_array(images, runner.input_scale, runner.input_zero_point))
    quant = output_quantization(runner)
    return {"level": (lq, quant["level"][0]), "location": (cq, quant["location"][0])}


def calibrate(pre, trials, *, dataset: str | None = None, groups: np.ndarray | None = None,
              val_logits: dict | None = None, val_labels: np.ndarray | None = None,
              val_groups: np.ndarray | None = None, val_source: str = "",
              settings: DecisionSettings | None = None) -> tuple[dict, dict]:
    """The bundle's ``decision`` section, from training trials only.

    Parameters
    ----------
    pre : painhelm.train.features.Preprocessing
        The model's preprocessing (band powers; fitted on the same trials).
    trials : Trials
        The model's training trials (raw EEG), validation trials included.
    dataset : str | None
        Dataset name, for the default mains frequency.
    groups : array of str, shape (n_trials,) | None
        Group of each trial for the OOD threshold (default: the subjects, or the sessions
        when there is one subject).
    val_logits : dict | None
        ``int8_logits`` of the validation trials (not fitted on): ``{"level": (q, scale),
        "location": (q, scale)}``, a head with no classes as ``(None, 0)``. None: no
        confidence gate (there are no unseen training windows to calibrate it on).
    val_labels, val_groups : arrays, shape (n_val,)
        A label per validation window (e.g. ``level * 1000 + location``) and its subject or
        session: the windows are played as sessions of label blocks (``session_order``).
    val_source : str
        What the validation windows are, for the record.
    settings : DecisionSettings | None

    Returns
    -------
    decision : dict
        ``{"version", "quality", "ood", "min_confidence", "smoothing"}`` for preproc.json.
    record : dict
        How every number was obtained, for compress.json.
    """
    settings = settings or DecisionSettings()
    settings.validate()
    data = np.asarray(trials.data)
    line_freq = line_freq_for(dataset, settings.line_freq)
    qcfg, qrec = calibrate_quality(data, pre.sfreq, line_freq, settings)
    if groups is None:
        groups = trials.subject if len(set(trials.subject.tolist())) > 1 else trials.session_keys()
    logbp = pre.band_powers(data)
    ocfg, orec = calibrate_ood(logbp, groups, settings.ood_quantile)
    smoothing = {**SMOOTHING, **settings.smoothing}
    if val_logits:
        n_val = len(next(q for q, _ in val_logits.values() if q is not None))
        val_labels = np.zeros(n_val, int) if val_labels is None else val_labels
        val_groups = np.zeros(n_val, int) if val_groups is None else val_groups
        ccfg, crec = calibrate_confidence(val_logits, val_labels, val_groups, smoothing,
                                          settings.confidence_quantile, val_source)
    else:
        ccfg = {"level": 0.0, "location": 0.0}
        crec = {"windows": "none: the model held out no validation windows, so the confidence gate is off"}
    decision = {"version": DECISION_VERSION, "quality": qcfg, "ood": ocfg, "min_confidence": ccfg,
                "smoothing": smoothing}
    # the firmware must accept what was written
    quality.Quality(data.shape[1], data.shape[2], pre.sfreq, qcfg)
    decide.Decider(2, 2, decision)
    record = {"settings": asdict(settings), "quality": qrec, "ood": orec, "min_confidence": crec,
              "smoothing": smoothing}
    logger.info("decision gates: quality withholds %.1f %% of training windows, OOD threshold %.3g, "
                "min confidence %s", 100 * qrec["training_windows_withheld"], ocfg["threshold"], ccfg)
    return decision, record


def validation_part(fitted, train):
    """The training trials the model held out for early stopping (``config.json``
    ``validation``), or None when it held out none. Its weights never fitted them, so their
    confidences are what an unseen window gives, as close as training data come."""
    from painhelm.train.fit import split_validation

    val = fitted.extra.get("validation") or {}
    by, groups = val.get("by"), list(val.get("groups") or [])
    if by == "subject" and groups:
        keep = np.isin(train.subject.astype(str), groups)
    elif by == "session" and groups:
        keep = np.isin(train.session_keys(), groups)
    elif by == "trials":
        keep = np.zeros(len(train), bool)
        keep[split_validation(train, fitted.cfg.val_fraction, fitted.cfg.seed)[1]] = True
    else:
        return None
    return train.subset(keep) if keep.any() else None


def calibrate_for_model(fitted, train, tflite_int8, settings: DecisionSettings | None = None) -> tuple[dict, dict]:
    """``calibrate`` for a model folder (``painhelm compress``): its training trials ``train``
    (``compress.source.training_part``), its validation trials for the confidence gate, and
    the exported int8 model ``tflite_int8`` whose logits the helmet will see."""
    val = validation_part(fitted, train)
    val_logits, labels, groups, source = None, None, None, ""
    if val is not None:
        labels = val.level.astype(int) * 1000 + val.location.astype(int)
        groups = val.session_keys()
        val_logits = int8_logits(str(tflite_int8), fitted.images(val))
        for head, names in (("level", fitted.level_names), ("location", fitted.location_names)):
            if not names:
                val_logits[head] = (None, 0.0)
        v = fitted.extra.get("validation") or {}
        source = (f"{len(val)} validation trials held out by {v.get('by')}"
                  + (f" ({', '.join(map(str, v.get('groups')))})" if v.get("groups") else ""))
    dataset = (fitted.extra.get("data") or {}).get("dataset") or fitted.dataset
    return calibrate(fitted.pre, train, dataset=dataset, val_logits=val_logits, val_labels=labels,
                     val_groups=groups, val_source=source, settings=settings)
