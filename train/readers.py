"""Read EEG recordings with MNE and check that they can be used.

:func:`read_raw` opens EDF/BDF, BrainVision, EEGLAB and FIF files (preloaded, MNE quiet)
and turns every failure into :class:`~painhelm.train.dataset.DataError` naming the file and
the problem: a truncated or corrupt file, an unsupported extension, a missing companion
file. It also tidies what the file says: PhysioNet-style channel names (``"Fc5."``,
``"Cz.."``) become standard 10-05 names (``"FC5"``, ``"Cz"``), channels named like EOG / ECG /
EMG get that type, and trigger codes on a stim channel (BDF ``Status``) become annotations,
so every format hands its events over the same way.

:func:`set_montage` gives the electrodes positions (a standard MNE montage or a montage
file), :func:`positions` returns them for the EEG channels. The ``check_*`` functions
return problems as sentences (an empty list means "fine"); :func:`check_raw` runs them all.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np

from .dataset import DataError
from .topomap import head_centred

logger = logging.getLogger(__name__)

# MNE 1.13 renamed the template montages (standard_1005 -> colin27_1005, same names and
# positions); the old names still work but warn, so they are translated here.
STANDARD_MONTAGE = "colin27_1005"
_MONTAGE_ALIASES = {"standard_1005": "colin27_1005", "standard_1020": "colin27_1020",
                    "standard_alphabetic": "colin27_alphabetic", "standard_postfixed": "colin27_postfixed",
                    "standard_prefixed": "colin27_prefixed", "standard_primed": "colin27_primed"}

# extension -> (format name, MNE reader name); ".fif.gz" is matched before ".gz" would be
FORMATS = {
    ".edf": ("EDF", "read_raw_edf"),
    ".bdf": ("BDF", "read_raw_bdf"),
    ".vhdr": ("BrainVision", "read_raw_brainvision"),
    ".set": ("EEGLAB", "read_raw_eeglab"),
    ".fif": ("FIF", "read_raw_fif"),
    ".fif.gz": ("FIF", "read_raw_fif"),
}

# channel-name prefixes that mean "not EEG" (EEGLAB's sample set types its EOG as EEG)
_TYPE_PREFIXES = (("HEOG", "eog"), ("VEOG", "eog"), ("EOG", "eog"), ("ECG", "ecg"), ("EKG", "ecg"),
                  ("EMG", "emg"))
_STIM_NAMES = {"STATUS", "TRIGGER", "STI 014", "STI014"}

FLAT_PTP_UV = 0.1  # a channel whose whole-recording peak-to-peak is below this is dead


def recording_format(path: str | Path) -> str | None:
    """The format name of ``path`` from its extension ("EDF", "BrainVision", ...), or None."""
    name = Path(path).name.lower()
    for ext, (fmt, _) in FORMATS.items():
        if name.endswith(ext):
            return fmt
    return None


# files that belong to a recording but are not read on their own
COMPANIONS = (".eeg", ".vmrk", ".fdt")


def find_recordings(root: str | Path) -> tuple[list[Path], list[str]]:
    """Recordings under ``root`` (or ``root`` itself when it is a file), and the other files.

    Hidden files and folders are skipped; companions (``.eeg``, ``.vmrk``, ``.fdt``) are
    neither recordings nor "other". Returns ``(recordings, ignored)`` with ``ignored`` as
    paths relative to ``root``.
    """
    root = Path(root)
    if root.is_file():
        return [root], []
    recordings, ignored = [], []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if recording_format(p) is not None:
            recordings.append(p)
        elif p.suffix.lower() not in COMPANIONS:
            ignored.append(rel.as_posix())
    return recordings, ignored


def _extension(path: Path) -> str:
    name = path.name.lower()
    return ".fif.gz" if name.endswith(".fif.gz") else path.suffix.lower()


def _check_edf_size(path: Path, fmt: str) -> None:
    """Compare the EDF/BDF header's record count with the file size.

    MNE reads a cut-short EDF without complaint (it infers fewer records from the size
    and only warns), so a file damaged in copying would silently lose its end; the header
    says how long the file must be.
    """
    size = path.stat().st_size
    if size < 256:
        raise DataError(path, f"not a valid {fmt} file: {size} bytes, shorter than the 256-byte {fmt} header")
    with open(path, "rb") as f:
        head = f.read(256)
        magic_ok = head[:8] == b"0       " if fmt == "EDF" else head[:8] == b"\xffBIOSEMI"
        if not magic_ok:
            raise DataError(path, f"not a valid {fmt} file: it does not start with the {fmt} signature "
                                  f"(first bytes {head[:8]!r}); the file is corrupt or of another format")

        def field(start: int, stop: int, what: str) -> int:
            text = head[start:stop].decode("ascii", "replace").strip()
            try:
                return int(float(text))
            except ValueError:
                raise DataError(path, f"corrupt {fmt} header: '{what}' is {text!r}, not a number") from None

        header_bytes = field(184, 192, "number of bytes in header")
        n_records = field(236, 244, "number of data records")
        n_signals = field(252, 256, "number of signals")
        if n_signals < 1 or header_bytes != 256 * (n_signals + 1):
            raise DataError(path, f"corrupt {fmt} header: {n_signals} signals need a {256 * (n_signals + 1)}-byte "
                                  f"header, the header says {header_bytes} bytes")
        if size < header_bytes:
            raise DataError(path, f"truncated {fmt} file: {size} bytes, shorter than its own "
                                  f"{header_bytes}-byte header (the file was cut short)")
        f.seek(256 + 216 * n_signals)
        raw_ns = f.read(8 * n_signals)
    try:
        samples = [int(raw_ns[8 * i:8 * i + 8].decode("ascii").strip()) for i in range(n_signals)]
    except ValueError:
        raise DataError(path, f"corrupt {fmt} header: the samples-per-record fields are not numbers") from None
    record_bytes = sum(samples) * (2 if fmt == "EDF" else 3)
    if n_records == -1:  # allowed while recording: "unknown", MNE infers it from the size
        return
    expected = header_bytes + n_records * record_bytes
    if size < expected:
        complete = (size - header_bytes) // record_bytes if record_bytes else 0
        raise DataError(path, f"truncated {fmt} file: the header announces {n_records} data records "
                              f"({expected} bytes) but the file has {size} bytes ({complete} complete records); "
                              "it was cut short while copying or recording")


def _check_companions(path: Path, ext: str) -> None:
    """Name a BrainVision header's missing data/marker file before MNE fails with a bare errno.

    (An EEGLAB .set may hold its data itself, so only MNE can tell that its .fdt is missing.)
    """
    if ext == ".vhdr":
        text = path.read_bytes().decode("utf-8", "replace")
        if "Brain Vision" not in text[:200] and "BrainVision" not in text[:200]:
            raise DataError(path, "not a BrainVision header: the first line does not say 'Brain Vision Data "
                                  "Exchange Header File'")
        for key, what in (("DataFile", "signal data"), ("MarkerFile", "marker")):
            m = re.search(rf"^{key}=(.+?)\s*$", text, re.MULTILINE)
            if m and not (path.parent / m.group(1)).exists():
                raise DataError(path, f"the {what} file {m.group(1)!r} that the header names ({key}=) is missing; "
                                      "a BrainVision recording is three files (.vhdr, .vmrk, .eeg) in one folder")


def _read(path: Path, ext: str):
    import mne

    reader = getattr(mne.io, FORMATS[ext][1])
    kwargs = {"preload": True, "verbose": "error"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = reader(path, **kwargs)
    for w in caught:
        logger.info("%s: %s", path, w.message)
    return raw


def _guess_types(raw) -> None:
    """Type channels named EOG/ECG/EMG/Status as such (formats often mark everything EEG)."""
    changes = {}
    for ch, kind in zip(raw.ch_names, raw.get_channel_types()):
        if kind != "eeg":
            continue
        upper = ch.strip().upper()
        if upper in _STIM_NAMES:
            changes[ch] = "stim"
            continue
        for prefix, new in _TYPE_PREFIXES:
            if upper.startswith(prefix):
                changes[ch] = new
                break
    if changes:
        logger.info("channel types from names: %s", changes)
        raw.set_channel_types(changes, verbose="error")


def _stim_to_annotations(raw) -> None:
    """Turn trigger codes on a stim channel into annotations named by the code."""
    import mne

    if len(raw.annotations) or "stim" not in raw.get_channel_types():
        return
    events = mne.find_events(raw, shortest_event=1, initial_event=True, verbose="error")
    if len(events):
        # event samples count from the measurement start; annotations without orig_time
        # count from the first sample kept in the data
        first = raw.first_samp if raw.annotations.orig_time is None else 0
        onset = (events[:, 0] - first) / raw.info["sfreq"]
        raw.set_annotations(mne.Annotations(onset, np.zeros(len(events)), [str(c) for c in events[:, 2]],
                                            orig_time=raw.annotations.orig_time))


def read_raw(path: str | Path, *, normalize_names: bool = True):
    """Read one EEG recording with MNE, or say clearly why it cannot be read.

    Parameters
    ----------
    path : str | Path
        An ``.edf``, ``.bdf``, ``.vhdr`` (BrainVision; the ``.vmrk`` and ``.eeg`` it names
        must sit beside it), ``.set`` (EEGLAB; with its ``.fdt`` when the data is stored
        apart), ``.fif`` or ``.fif.gz`` file.
    normalize_names : bool
        Rename channels onto standard 10-05 names (see :func:`normalize_ch_names`).

    Returns
    -------
    raw : mne.io.BaseRaw
        The preloaded recording (data in volts, as MNE keeps it). Channels named like
        EOG/ECG/EMG are typed so; stim-channel triggers are added as annotations.

    Raises
    ------
    DataError
        The file is missing, of an unsupported kind, truncated, corrupt, or lacks a
        companion file; the message names the file and the problem.
    """
    path = Path(path)
    ext = _extension(path)
    if ext not in FORMATS:
        allowed = ", ".join(FORMATS)
        raise DataError(path, f"unsupported file type {ext or '(no extension)'!r}; painhelm reads {allowed} "
                              "(convert other formats with MNE first)")
    if not path.exists():
        raise DataError(path, "no such file")
    if path.is_dir():
        raise DataError(path, "is a folder, not a recording file")
    fmt = FORMATS[ext][0]
    if ext in (".edf", ".bdf"):
        _check_edf_size(path, fmt)
    _check_companions(path, ext)
    try:
        raw = _read(path, ext)
    except DataError:
        raise
    except FileNotFoundError as e:
        missing = e.filename or str(e)
        if ext == ".set":
            raise DataError(path, f"the EEGLAB data file {path.with_suffix('.fdt').name!r} is missing; this .set keeps "
                                  "its signal in a .fdt file of the same name beside it") from None
        raise DataError(path, f"a file this recording needs is missing: {missing}") from None
    except MemoryError:
        raise DataError(path, "not enough memory to read this recording") from None
    except Exception as e:  # noqa: BLE001 - MNE raises many kinds; all mean "cannot read"
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DataError(path, f"cannot read as {fmt} ({type(e).__name__}: {msg}); the file is corrupt or not in "
                              f"{fmt} format") from None
    if raw.n_times == 0:
        raise DataError(path, "the recording holds no samples")
    _guess_types(raw)
    if normalize_names:
        rename = normalize_ch_names(raw.ch_names)
        if rename:
            raw.rename_channels(rename, verbose="error")
    _stim_to_annotations(raw)
    return raw


def _standard_names() -> dict[str, str]:
    import mne

    if not hasattr(_standard_names, "cache"):
        names = mne.channels.make_standard_montage(STANDARD_MONTAGE).ch_names
        _standard_names.cache = {n.lower(): n for n in names}
    return _standard_names.cache


_DECORATION = re.compile(r"^EEG\s+|-(REF|LE|AR|AVG|A1|A2|M1|M2)$", re.IGNORECASE)


def normalize_ch_names(ch_names: list[str]) -> dict[str, str]:
    """The renames that turn ``ch_names`` into standard 10-05 names where one fits.

    PhysioNet pads names with dots and writes them in title case (``"Fc5."``, ``"Cz.."``,
    ``"Fp1."``); the dots and spaces are dropped and the case is matched against the
    standard 10-05 montage (``"FC5"``, ``"Cz"``, ``"Fp1"``). Clinical decorations such as
    ``"EEG Fp1-REF"`` are dropped when what remains is a standard name. A name that fits no
    standard electrode only loses its padding; a rename that would duplicate a name is
    skipped.

    Parameters
    ----------
    ch_names : list of str
        Channel names as the file has them.

    Returns
    -------
    rename : dict
        ``{old: new}`` for the names that change (empty when all are fine).
    """
    standard = _standard_names()
    rename, taken = {}, set(ch_names)
    for ch in ch_names:
        bare = ch.strip().rstrip(".").strip()
        # clinical EDFs write "EEG Fp1-REF"; try the name without those decorations too
        core = _DECORATION.sub("", bare)
        new = standard.get(bare.lower()) or standard.get(core.lower()) or bare or ch
        if new != ch and new not in taken:
            rename[ch] = new
            taken.add(new)
    return rename


def set_montage(raw, montage: str | Path | None = None) -> list[str]:
    """Give the EEG channels of ``raw`` 3-D positions, in place.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        The recording.
    montage : str | Path | None
        A built-in MNE montage name (default ``"colin27_1005"``, the standard 10-05
        positions; ``"standard_1005"`` is accepted for it), or a montage file that
        ``mne.channels.read_custom_montage`` reads (``.locs``, ``.elc``, ``.sfp``, ``.bvef``,
        ``.csd``, ...). Names are matched case-insensitively.

    Returns
    -------
    missing : list of str
        EEG channels the montage has no position for (they keep no position).

    Raises
    ------
    DataError
        The montage file is missing or unreadable, or the name is neither a built-in
        montage nor a file.
    """
    import mne

    name = str(montage) if montage is not None else STANDARD_MONTAGE
    name = _MONTAGE_ALIASES.get(name, name)
    if name in mne.channels.get_builtin_montages():
        mont = mne.channels.make_standard_montage(name)
    else:
        path = Path(name)
        if not path.exists():
            raise DataError(path, "montage is neither a file nor a built-in MNE montage (built-in: "
                                  f"{', '.join(mne.channels.get_builtin_montages()[:6])}, ...)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mont = mne.channels.read_custom_montage(path)
        except Exception as e:  # noqa: BLE001 - any failure means an unusable montage file
            raise DataError(path, f"cannot read montage file ({type(e).__name__}: {e})") from None
    try:
        raw.set_montage(mont, match_case=False, on_missing="ignore", verbose="error")
    except ValueError as e:
        raise DataError(name, f"cannot apply montage to channels {raw.ch_names[:5]}...: {e}") from None
    missing = [ch for ch in _eeg_names(raw) if not _has_position(raw, ch)]
    if missing:
        logger.warning("montage %s has no position for EEG channels %s", name, missing)
    return missing


def _eeg_names(raw) -> list[str]:
    return [raw.ch_names[i] for i in _eeg_picks(raw)]


def _eeg_picks(raw) -> np.ndarray:
    import mne

    return mne.pick_types(raw.info, eeg=True, exclude=[])


def _has_position(raw, ch: str) -> bool:
    loc = raw.info["chs"][raw.ch_names.index(ch)]["loc"][:3]
    return bool(np.all(np.isfinite(loc)) and np.any(loc != 0))


def positions(raw, *, centre: bool = True) -> tuple[list[str], np.ndarray]:
    """EEG channel names and their 3-D positions in metres.

    Positions are in MNE's head frame (x right, y nose, z up). With ``centre`` they are
    shifted to the centre of the sphere fitted to the electrodes (of the standard 10-05
    montage when fewer than 16 electrodes pin no sphere down): the head frame's origin
    lies between the ears, about 4 cm below the head's centre, and the topomap's
    azimuthal projection needs the centre to put Cz on top and Fpz-T7-Oz-T8 near the rim.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        A recording whose montage is set (:func:`set_montage`).
    centre : bool
        Shift the origin to the head-sphere centre (default True).

    Returns
    -------
    ch_names : list of str
        EEG channels that have a position, in recording order (EOG, stim ... and EEG
        channels without a position are left out).
    pos : array, shape (n_ch, 3)
        Their positions.
    """
    names = [ch for ch in _eeg_names(raw) if _has_position(raw, ch)]
    pos = np.array([raw.info["chs"][raw.ch_names.index(ch)]["loc"][:3] for ch in names], dtype=np.float64)
    pos = pos.reshape(len(names), 3)
    if centre and len(names):
        pos = head_centred(pos)
    return names, pos


# --- validation -------------------------------------------------------------------------
# Each returns a list of sentences; an empty list means the check passed.

def check_required_channels(raw, required: list[str]) -> list[str]:
    """Problems when channels in ``required`` are missing (names compared case-insensitively)."""
    have = {ch.lower() for ch in raw.ch_names}
    missing = [ch for ch in required if ch.lower() not in have]
    if not missing:
        return []
    shown = ", ".join(raw.ch_names[:12]) + (", ..." if len(raw.ch_names) > 12 else "")
    return [f"missing required channels {', '.join(missing)} (the recording has {len(raw.ch_names)}: {shown})"]


def check_nan(raw) -> list[str]:
    """Problems when EEG channels hold NaN or infinite samples."""
    picks = _eeg_picks(raw)
    bad = [raw.ch_names[p] for p, row in zip(picks, raw.get_data(picks=picks)) if not np.all(np.isfinite(row))]
    return [f"non-finite samples (NaN/inf) in channels {', '.join(bad)}"] if bad else []


def check_flat(raw, ch_names: list[str] | None = None, *, ptp_uv: float = FLAT_PTP_UV) -> list[str]:
    """Problems when EEG channels are flat: peak-to-peak below ``ptp_uv`` µV over the recording.

    ``ch_names`` limits the check to those channels (default: every EEG channel).
    """
    picks = _eeg_picks(raw)
    if ch_names is not None:
        wanted = {ch.lower() for ch in ch_names}
        picks = np.array([p for p in picks if raw.ch_names[p].lower() in wanted], dtype=int)
    if not len(picks):
        return []
    data = raw.get_data(picks=picks)
    with np.errstate(invalid="ignore"):
        ptp = np.nanmax(data, axis=1) - np.nanmin(data, axis=1)
    flat = [raw.ch_names[p] for p, v in zip(picks, ptp) if v * 1e6 < ptp_uv]
    return [f"flat channels (peak-to-peak below {ptp_uv:g} µV): {', '.join(flat)}"] if flat else []


def check_sfreq(raw, expected: float | None) -> list[str]:
    """A problem when the sampling rate differs from ``expected`` Hz (None: anything goes)."""
    if expected is None or abs(raw.info["sfreq"] - expected) < 1e-6 * expected:
        return []
    return [f"sampling rate is {raw.info['sfreq']:g} Hz, expected {expected:g} Hz"]


def normalize_description(description: str) -> str:
    """An event description with runs of whitespace collapsed (``"S  1"`` -> ``"S 1"``)."""
    return " ".join(str(description).split())


def description_matches(description: str, key: str) -> bool:
    """Whether annotation ``description`` is the event ``key`` of a mapping.

    Equal after collapsing whitespace, or equal to the part after the last ``/``
    (MNE names BrainVision markers ``"Stimulus/S  1"``; ``"S 1"`` matches it).
    """
    d, k = normalize_description(description), normalize_description(key)
    return d == k or ("/" in d and "/" not in k and d.rsplit("/", 1)[1].strip() == k)


def check_events(raw, descriptions: list[str] | None = None) -> list[str]:
    """Problems when ``raw`` has no annotations, or none matching ``descriptions``."""
    have = list(raw.annotations.description)
    if not have:
        return ["no events: the recording has no annotations or trigger codes to cut trials from"]
    if descriptions is None:
        return []
    if not any(description_matches(d, k) for d in have for k in descriptions):
        found = sorted(set(have))
        shown = ", ".join(repr(x) for x in found[:10]) + (", ..." if len(found) > 10 else "")
        return [f"none of the events {', '.join(repr(k) for k in descriptions)} occur; the recording has {shown}"]
    return []


def check_raw(raw, *, required: list[str] = (), sfreq: float | None = None,
              descriptions: list[str] | None = None) -> list[str]:
    """The problems that make ``raw`` unusable: no EEG, missing or flat required channels,
    NaN, wrong sampling rate, no events.

    A flat channel that is not required is a dead electrode, not a reason to drop the
    recording; ask :func:`check_flat` for those.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        The recording.
    required : list of str
        Channels that must be present.
    sfreq : float | None
        Expected sampling rate in Hz, or None to accept any.
    descriptions : list of str | None
        Event descriptions of which at least one must occur; None: any annotation will do.

    Returns
    -------
    problems : list of str
        One sentence per problem; empty when the recording is usable.
    """
    if not len(_eeg_picks(raw)):
        return [f"no EEG channels (channel types: {', '.join(sorted(set(raw.get_channel_types())))})"]
    problems = check_required_channels(raw, list(required))
    if required and not problems:
        problems += check_flat(raw, list(required))
    return problems + check_nan(raw) + check_sfreq(raw, sfreq) + check_events(raw, descriptions)
