"""Label mapping files: which events of a user's recordings become which labelled trials.

A mapping is a small TOML file the user writes once for a study (see ``docs/data.md``)::

    name = "my-study"

    [recording]                      # optional checks and settings
    sfreq = 500.0                    # expected sampling rate (Hz)
    required_channels = ["Cz", "C3", "C4"]
    montage = "standard_1005"        # or a montage file, relative to this file

    [files]
    pattern = '(?P<subject>vp\\d+)_(?P<session>\\w+)'   # subject/session from the file path

    [labels]                         # class names and their order (else: order of first use)
    level_names = ["none", "low", "moderate", "high"]
    location_names = ["left_hand", "right_hand"]

    [epochs]                         # the trial window around each event
    tmin = 0.0
    tmax = 4.0                       # or: duration = 4.0

    [events]                         # event description -> labels
    "S 1" = { level = "low", location = "left_hand" }
    "S 2" = { level = "high", location = "left_hand" }

    [cold_pressor]                   # optional: pain levels by time in ice water
    immerse = ["immerse_left", "immerse_right"]
    withdraw = "withdraw"
    levels = 4                       # none/low/moderate/high (5: + unbearable)
    window = 2.0                     # seconds per trial
    location = { immerse_left = "left_hand", immerse_right = "right_hand" }

:func:`load_mapping` reads and validates it (errors name the file, the key and what is
wrong); :func:`mapping_from_dict` applies the same validation to a dict, which is how
built-in datasets ship their mapping. :func:`trials_from_raw` cuts one recording into
:class:`~painhelm.train.dataset.Trials`.
"""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dataset import UNLABELLED, DataError, Trials
from .readers import (_MONTAGE_ALIASES, STANDARD_MONTAGE, _eeg_names, _has_position, check_raw,
                      description_matches, normalize_description, positions, set_montage)

logger = logging.getLogger(__name__)

PAIN_LEVELS = ["none", "low", "moderate", "high", "unbearable"]

# every key a mapping may have, per section; anything else is a typo and an error
_KEYS = {
    "": {"name", "recording", "files", "labels", "epochs", "events", "cold_pressor"},
    "recording": {"sfreq", "required_channels", "montage"},
    "files": {"pattern"},
    "labels": {"level_names", "location_names"},
    "epochs": {"tmin", "tmax", "duration"},
    "cold_pressor": {"immerse", "withdraw", "levels", "window", "step", "location"},
}


@dataclass(frozen=True)
class ColdPressor:
    """Pain levels by time between immersion and withdrawal of a hand in ice water."""

    immerse: tuple[str, ...]  # markers where a hand goes into the water
    withdraw: tuple[str, ...]  # markers where it comes out
    n_levels: int  # the immersion is split into this many equal parts, level 0..n_levels-1
    window: float  # seconds per trial
    step: float  # seconds between trial starts within a part
    location: dict = field(default_factory=dict)  # immerse marker -> location class name


@dataclass
class Mapping:
    """A validated label mapping (see the module docstring for the file format)."""

    source: str  # the file it came from, or a name for a built-in mapping
    events: dict[str, dict]  # description -> {"level": name or None, "location": name or None}
    level_names: list[str]
    location_names: list[str]
    tmin: float = 0.0
    tmax: float = 4.0
    sfreq: float | None = None
    required_channels: list[str] = field(default_factory=list)
    montage: str | None = None  # None: the recording's own positions, else the standard 10-05
    file_pattern: str | None = None
    cold_pressor: ColdPressor | None = None
    name: str = ""

    @property
    def descriptions(self) -> list[str]:
        """Every event description the mapping reacts to."""
        keys = list(self.events)
        if self.cold_pressor is not None:
            keys += list(self.cold_pressor.immerse) + list(self.cold_pressor.withdraw)
        return keys


def load_mapping(path: str | Path) -> Mapping:
    """Read and validate a label mapping file (TOML).

    Parameters
    ----------
    path : str | Path
        The mapping file. A relative ``montage`` file inside it is taken relative to
        the mapping file's folder.

    Returns
    -------
    mapping : Mapping
        The validated mapping.

    Raises
    ------
    DataError
        The file is missing, is not valid TOML, or a key is unknown, of the wrong type or
        inconsistent; the message names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "mapping file not found")
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise DataError(path, f"not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise DataError(path, "not valid TOML: the file is not UTF-8 text") from None
    return mapping_from_dict(d, source=str(path), base=path.parent)


def _fail(source: str, key: str, problem: str):
    raise DataError(source, f"{key}: {problem}")


def _number(source: str, key: str, v, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _fail(source, key, f"must be a number, got {v!r}")
    if positive and v <= 0:
        _fail(source, key, f"must be positive, got {v!r}")
    return float(v)


def _strings(source: str, key: str, v, *, allow_one: bool = False) -> list[str]:
    if allow_one and isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
        _fail(source, key, f"must be a list of non-empty strings{' (or one string)' if allow_one else ''}, got {v!r}")
    if len(set(v)) != len(v):
        _fail(source, key, f"has duplicates: {v!r}")
    return list(v)


def _table(source: str, d: dict, section: str) -> dict:
    v = d.get(section, {})
    if not isinstance(v, dict):
        _fail(source, f"[{section}]", f"must be a table, got {v!r}")
    unknown = sorted(set(v) - _KEYS[section])
    if unknown:
        _fail(source, f"[{section}] {unknown[0]}", f"unknown key; allowed: {', '.join(sorted(_KEYS[section]))}")
    return v


def mapping_from_dict(d: dict, *, source: str = "<mapping>", base: str | Path | None = None) -> Mapping:
    """Validate a mapping given as a dict (the parsed TOML) and return it.

    Parameters
    ----------
    d : dict
        Sections and keys as in the TOML file.
    source : str
        Names the mapping in error messages (the file path for :func:`load_mapping`).
    base : str | Path | None
        Folder that a relative ``[recording] montage`` file is relative to.

    Returns
    -------
    mapping : Mapping
        The validated mapping.
    """
    if not isinstance(d, dict):
        _fail(source, "mapping", f"must be a table, got {type(d).__name__}")
    unknown = sorted(set(d) - _KEYS[""])
    if unknown:
        _fail(source, unknown[0], f"unknown section or key; allowed: {', '.join(sorted(_KEYS['']))}")
    name = d.get("name", "")
    if not isinstance(name, str):
        _fail(source, "name", f"must be a string, got {name!r}")

    rec = _table(source, d, "recording")
    sfreq = _number(source, "[recording] sfreq", rec["sfreq"], positive=True) if "sfreq" in rec else None
    required = _strings(source, "[recording] required_channels", rec.get("required_channels", []))
    montage = rec.get("montage")
    if montage is not None:
        if not isinstance(montage, str) or not montage.strip():
            _fail(source, "[recording] montage", f"must be a montage name or a file, got {montage!r}")
        import mne

        builtin = set(mne.channels.get_builtin_montages()) | set(_MONTAGE_ALIASES)
        if montage not in builtin:
            mpath = Path(montage) if base is None or Path(montage).is_absolute() else Path(base) / montage
            if not mpath.is_file():
                _fail(source, "[recording] montage", f"{montage!r} is neither a built-in MNE montage "
                                                     f"(e.g. standard_1005, biosemi64) nor a file ({mpath} is missing)")
            montage = str(mpath)

    pattern = _table(source, d, "files").get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            _fail(source, "[files] pattern", f"must be a regular expression string, got {pattern!r}")
        try:
            groups = re.compile(pattern).groupindex
        except re.error as e:
            _fail(source, "[files] pattern", f"not a valid regular expression ({e})")
        if "subject" not in groups:
            _fail(source, "[files] pattern", "needs a named group (?P<subject>...) (and optionally (?P<session>...))")

    ep = _table(source, d, "epochs")
    tmin = _number(source, "[epochs] tmin", ep.get("tmin", 0.0))
    if "tmax" in ep and "duration" in ep:
        _fail(source, "[epochs]", "give tmax or duration, not both")
    if "duration" in ep:
        tmax = tmin + _number(source, "[epochs] duration", ep["duration"], positive=True)
    else:
        tmax = _number(source, "[epochs] tmax", ep.get("tmax", 4.0))
        if tmax <= tmin:
            _fail(source, "[epochs] tmax", f"must be greater than tmin ({tmin:g}), got {tmax:g}")

    cp = _cold_pressor(source, d) if "cold_pressor" in d else None

    events_in = d.get("events", {})
    if not isinstance(events_in, dict):
        _fail(source, "[events]", f"must be a table of event = {{ level = ..., location = ... }}, got {events_in!r}")
    events = {}
    for key, lab in events_in.items():
        where = f"[events] {key!r}"
        if not normalize_description(key):
            _fail(source, where, "an event description must not be empty")
        if not isinstance(lab, dict):
            _fail(source, where, f"must be a table like {{ level = \"low\", location = \"left_hand\" }}, got {lab!r}")
        bad = sorted(set(lab) - {"level", "location"})
        if bad:
            _fail(source, f"{where} {bad[0]}", "unknown key; allowed: level, location")
        if not lab:
            _fail(source, where, "needs a level, a location or both")
        for head in ("level", "location"):
            if head in lab and not (isinstance(lab[head], str) and lab[head].strip()):
                _fail(source, f"{where} {head}", f"must be a class name, got {lab[head]!r}")
        events[key] = {"level": lab.get("level"), "location": lab.get("location")}
    if not events and cp is None:
        _fail(source, "[events]", "the mapping labels nothing: give [events] or [cold_pressor]")
    norm = [normalize_description(k) for k in events]
    dup = next((k for k in norm if norm.count(k) > 1), None)
    if dup is not None:
        _fail(source, "[events]", f"event {dup!r} is listed twice (descriptions are compared with whitespace "
                                  "collapsed)")

    lab = _table(source, d, "labels")
    level_names = _class_names(source, lab, "level", events, cp)
    location_names = _class_names(source, lab, "location", events, cp)
    return Mapping(source=source, events=events, level_names=level_names, location_names=location_names,
                   tmin=tmin, tmax=tmax, sfreq=sfreq, required_channels=required, montage=montage,
                   file_pattern=pattern, cold_pressor=cp, name=name)


def _cold_pressor(source: str, d: dict) -> ColdPressor:
    cp = _table(source, d, "cold_pressor")
    for key in ("immerse", "withdraw"):
        if key not in cp:
            _fail(source, f"[cold_pressor] {key}", "missing (the marker description(s) where the hand goes "
                                                 f"{'into' if key == 'immerse' else 'out of'} the water)")
    immerse = _strings(source, "[cold_pressor] immerse", cp["immerse"], allow_one=True)
    withdraw = _strings(source, "[cold_pressor] withdraw", cp["withdraw"], allow_one=True)
    both = {normalize_description(x) for x in immerse} & {normalize_description(x) for x in withdraw}
    if both:
        _fail(source, "[cold_pressor]", f"{sorted(both)[0]!r} is both an immerse and a withdraw marker")
    levels = cp.get("levels", 4)
    if levels not in (4, 5) or isinstance(levels, bool):
        _fail(source, "[cold_pressor] levels",
              f"must be 4 (none/low/moderate/high) or 5 (+ unbearable), got {levels!r}")
    window = _number(source, "[cold_pressor] window", cp.get("window", 2.0), positive=True)
    step = _number(source, "[cold_pressor] step", cp.get("step", window), positive=True)
    location = cp.get("location", {})
    if not isinstance(location, dict) or not all(isinstance(v, str) and v.strip() for v in location.values()):
        _fail(source, "[cold_pressor] location", f"must be a table immerse marker = location class, got {location!r}")
    for k in location:
        if k not in immerse:
            _fail(source, f"[cold_pressor] location {k!r}", f"is not one of the immerse markers {immerse!r}")
    return ColdPressor(tuple(immerse), tuple(withdraw), int(levels), window, step, dict(location))


def _class_names(source: str, lab: dict, head: str, events: dict, cp: ColdPressor | None) -> list[str]:
    """Class names of ``head``: as listed in [labels], else in order of first use."""
    used = [e[head] for e in events.values() if e[head] is not None]
    if cp is not None and head == "location":
        used += list(cp.location.values())
    key = f"{head}_names"
    if cp is not None and head == "level":
        default = PAIN_LEVELS[:cp.n_levels]
        if key in lab and len(lab[key]) != cp.n_levels:
            _fail(source, f"[labels] {key}", f"[cold_pressor] levels = {cp.n_levels} needs {cp.n_levels} names, "
                                            f"got {lab[key]!r}")
    else:
        default = list(dict.fromkeys(used))
    names = _strings(source, f"[labels] {key}", lab[key]) if key in lab else default
    for ev, e in events.items():
        if e[head] is not None and e[head] not in names:
            _fail(source, f"[events] {ev!r} {head}", f"{e[head]!r} is not one of [labels] {key} {names!r}")
    if cp is not None and head == "location":
        for marker, loc in cp.location.items():
            if loc not in names:
                _fail(source, f"[cold_pressor] location {marker!r}", f"{loc!r} is not one of [labels] {key} {names!r}")
    return names


# --- subject and session from a file path ---------------------------------------------

_PHYSIONET = re.compile(r"(?P<subject>S\d{3})(?P<session>R\d{2})$", re.IGNORECASE)


def infer_subject_session(path: str | Path, pattern: str | None = None) -> tuple[str, str]:
    """Subject and session of a recording, from its path.

    With ``pattern`` (a regular expression with groups ``subject`` and optionally
    ``session``, searched in the path) that decides. Otherwise BIDS names (``sub-01``,
    ``ses-02`` anywhere in the path), then PhysioNet names (``S001R03``); failing those
    the file name (without extension) is the subject and the session is empty.

    Parameters
    ----------
    path : str | Path
        The recording's path.
    pattern : str | None
        A regular expression with a named group ``subject``.

    Returns
    -------
    subject, session : str
        The subject and session names.
    """
    p = Path(path)
    stem = p.name.split(".")[0]
    if pattern is not None:
        m = re.search(pattern, p.as_posix())
        if m is None:
            raise DataError(path, f"the file name does not match [files] pattern {pattern!r}")
        return m.group("subject"), (m.groupdict().get("session") or "")
    sub = re.search(r"sub-([A-Za-z0-9]+)", p.as_posix())
    if sub:
        ses = re.search(r"ses-([A-Za-z0-9]+)", p.as_posix())
        return sub.group(1), ses.group(1) if ses else ""
    m = _PHYSIONET.match(stem)
    if m:
        return m.group("subject").upper(), m.group("session").upper()
    return stem, ""


# --- cutting trials --------------------------------------------------------------------

def _onset_samples(raw) -> np.ndarray:
    """Annotation onsets as sample indices into ``raw``'s data array."""
    onset = np.asarray(raw.annotations.onset, dtype=np.float64)
    if raw.annotations.orig_time is not None:  # then onsets count from the measurement start
        onset = onset - raw.first_time
    return np.round(onset * raw.info["sfreq"]).astype(np.int64)


def _match(description: str, keys: list[str]) -> str | None:
    """The mapping key for ``description``: an exact match wins over a ``Type/`` suffix match."""
    d = normalize_description(description)
    for k in keys:
        if normalize_description(k) == d:
            return k
    for k in keys:
        if description_matches(description, k):
            return k
    return None


def _event_cuts(raw, mapping: Mapping, starts: np.ndarray) -> list[tuple]:
    sfreq = raw.info["sfreq"]
    keys = list(mapping.events)
    shift = int(round(mapping.tmin * sfreq))
    cuts = []
    for desc, s in zip(raw.annotations.description, starts):
        key = _match(desc, keys)
        if key is None:
            continue
        lab = mapping.events[key]
        level = mapping.level_names.index(lab["level"]) if lab["level"] is not None else UNLABELLED
        location = mapping.location_names.index(lab["location"]) if lab["location"] is not None else UNLABELLED
        cuts.append((int(s) + shift, level, location, {"onset": round(float(s) / sfreq, 6), "event": str(desc)}))
    return cuts


def _cold_pressor_cuts(raw, mapping: Mapping, starts: np.ndarray, file: str | None) -> list[tuple]:
    """Split each immersion (immerse .. withdraw) into n_levels equal parts, each into windows."""
    cp = mapping.cold_pressor
    sfreq = raw.info["sfreq"]
    marks = []  # (sample, "immerse"/"withdraw", description, key)
    for desc, s in zip(raw.annotations.description, starts):
        key = _match(desc, list(cp.immerse))
        if key is not None:
            marks.append((int(s), "immerse", str(desc), key))
        elif _match(desc, list(cp.withdraw)) is not None:
            marks.append((int(s), "withdraw", str(desc), None))
    marks.sort(key=lambda m: m[0])
    cuts = []
    n_win = int(round(cp.window * sfreq))
    n_step = max(1, int(round(cp.step * sfreq)))
    for i, (s0, kind, desc, key) in enumerate(marks):
        if kind != "immerse":
            continue
        nxt = marks[i + 1] if i + 1 < len(marks) else None
        if nxt is None or nxt[1] != "withdraw":
            what = "another immerse marker" if nxt is not None else "the end of the recording"
            raise DataError(file, f"cold pressor: immerse marker {desc!r} at {s0 / sfreq:.3f} s is followed by "
                                  f"{what}, not by a withdraw marker {list(cp.withdraw)!r}")
        s1 = nxt[0]
        part = (s1 - s0) / cp.n_levels
        if part < n_win:
            raise DataError(file, f"cold pressor: the immersion from {s0 / sfreq:.3f} s to {s1 / sfreq:.3f} s lasts "
                                  f"{(s1 - s0) / sfreq:.3f} s; in {cp.n_levels} levels that is {part / sfreq:.3f} s "
                                  f"per level, shorter than the {cp.window:g} s window")
        loc_name = cp.location.get(key)
        location = mapping.location_names.index(loc_name) if loc_name is not None else UNLABELLED
        for level in range(cp.n_levels):
            a, b = s0 + level * part, s0 + (level + 1) * part
            start, end = int(round(a)), int(np.floor(b))
            while start + n_win <= end:
                cuts.append((start, level, location, {
                    "onset": round(start / sfreq, 6), "event": desc, "immerse_onset": round(s0 / sfreq, 6),
                    "withdraw_onset": round(s1 / sfreq, 6), "segment": level}))
                start += n_step
    return cuts


def trials_from_raw(raw, mapping: Mapping, subject: str, session: str, *, file: str | Path | None = None) -> Trials:
    """Cut one recording into labelled trials as ``mapping`` says.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        The recording (from :func:`~painhelm.train.readers.read_raw`); its montage is set
        here if needed.
    mapping : Mapping
        The label mapping.
    subject, session : str
        Who and which session the recording is (see :func:`infer_subject_session`).
    file : str | Path | None
        The recording's path, for metadata and messages (default: MNE's file name).

    Returns
    -------
    trials : Trials
        float32 µV data (n_trials, n_ch, n_times) over the EEG channels that have a
        position; ``n_times`` is ``round((tmax - tmin) * sfreq)`` for event trials and
        ``round(window * sfreq)`` for cold-pressor windows (a mapping uses one of them,
        or both with equal lengths). Metadata per trial: ``file``, ``event`` (the
        annotation) and ``onset``: seconds from the start of the data to the event (to the
        window's start for cold-pressor windows, which also carry ``immerse_onset``,
        ``withdraw_onset`` and ``segment``).

    Raises
    ------
    DataError
        The recording misses required channels, has NaN, the wrong sampling rate, no
        matching events, no windows that fit, or broken cold-pressor markers.
    """
    if file is None:
        file = raw.filenames[0] if getattr(raw, "filenames", None) and raw.filenames[0] else None
    file = str(file) if file is not None else None
    problems = check_raw(raw, required=mapping.required_channels, sfreq=mapping.sfreq,
                         descriptions=mapping.descriptions)
    if problems:
        raise DataError(file, "; ".join(problems))

    sfreq = float(raw.info["sfreq"])
    if mapping.montage is not None:
        set_montage(raw, mapping.montage)
        montage = mapping.montage
    elif all(_has_position(raw, ch) for ch in _eeg_names(raw)):
        montage = "recording"
    else:
        set_montage(raw, STANDARD_MONTAGE)
        montage = STANDARD_MONTAGE
    ch_names, pos = positions(raw)
    if not ch_names:
        raise DataError(file, f"no EEG channel has a position in montage {montage!r}; name the montage (or a "
                              "montage file) in the mapping's [recording] montage")
    no_pos = [ch for ch in mapping.required_channels
              if ch.lower() not in {c.lower() for c in ch_names}]
    if no_pos:
        raise DataError(file, f"required channels {', '.join(no_pos)} have no position in montage {montage!r}")
    dropped = [ch for ch in _eeg_names(raw) if ch not in ch_names]
    if dropped:
        logger.warning("%s: EEG channels without a position are left out: %s", file, ", ".join(dropped))

    starts = _onset_samples(raw)
    cuts = _event_cuts(raw, mapping, starts) if mapping.events else []
    n_times = int(round((mapping.tmax - mapping.tmin) * sfreq))
    if mapping.cold_pressor is not None:
        cp_cuts = _cold_pressor_cuts(raw, mapping, starts, file)
        n_cp = int(round(mapping.cold_pressor.window * sfreq))
        if cuts and cp_cuts and n_cp != n_times:
            raise DataError(mapping.source, f"[epochs] gives {n_times}-sample trials but [cold_pressor] window gives "
                                            f"{n_cp}-sample trials; make them equal")
        n_times = n_cp if not cuts else n_times
        cuts += cp_cuts
    inside = [c for c in cuts if c[0] >= 0 and c[0] + n_times <= raw.n_times]
    if len(inside) < len(cuts):
        logger.info("%s: %d of %d trials run past the recording's edges and are left out",
                    file, len(cuts) - len(inside), len(cuts))
    if not inside:
        raise DataError(file, f"no trials: {len(cuts)} events match the mapping but no {n_times / sfreq:g} s "
                              "window around them lies inside the recording" if cuts else
                              "no trials: no event matches the mapping")

    picks = [raw.ch_names.index(ch) for ch in ch_names]
    signal = raw.get_data(picks=picks)  # volts, (n_ch, n_times_total)
    n = len(inside)
    data = np.empty((n, len(picks), n_times), dtype=np.float32)  # (n_trials, n_ch, n_times), µV
    for j, (s, *_) in enumerate(inside):
        data[j] = signal[:, s:s + n_times] * 1e6
    return Trials(
        data=data, ch_names=ch_names, sfreq=sfreq, pos=pos,
        level=np.array([c[1] for c in inside]), location=np.array([c[2] for c in inside]),
        subject=np.full(n, subject), session=np.full(n, session),
        level_names=list(mapping.level_names), location_names=list(mapping.location_names),
        montage=str(montage), metadata=[{"file": file, **c[3]} for c in inside], name=mapping.name)


def concat_trials(parts: list[Trials], *, name: str | None = None) -> Trials:
    """Stack trial tables from several recordings into one.

    Parameters
    ----------
    parts : list of Trials
        Tables with the same channels (names and order), sampling rate, trial length and
        class names.
    name : str | None
        Name of the result (default: the first part's).

    Returns
    -------
    trials : Trials
        All trials, in the order given; positions and montage from the first part.

    Raises
    ------
    DataError
        The parts disagree; the message names the first file that differs.
    """
    if not parts:
        raise DataError(None, "no trials to combine")
    first = parts[0]
    for t in parts[1:]:
        file = t.metadata[0].get("file") if t.metadata else None
        for attr in ("ch_names", "level_names", "location_names"):
            if getattr(t, attr) != getattr(first, attr):
                raise DataError(file, f"{attr} differ from the first recording's: {getattr(t, attr)} vs "
                                      f"{getattr(first, attr)}")
        if t.sfreq != first.sfreq or t.n_times != first.n_times:
            raise DataError(file, f"{t.sfreq:g} Hz x {t.n_times} samples per trial, but the first recording has "
                                  f"{first.sfreq:g} Hz x {first.n_times}")
    return Trials(
        data=np.concatenate([t.data for t in parts]), ch_names=first.ch_names, sfreq=first.sfreq, pos=first.pos,
        level=np.concatenate([t.level for t in parts]), location=np.concatenate([t.location for t in parts]),
        subject=np.concatenate([t.subject for t in parts]), session=np.concatenate([t.session for t in parts]),
        level_names=first.level_names, location_names=first.location_names, montage=first.montage,
        metadata=[m for t in parts for m in t.metadata], name=first.name if name is None else name)
