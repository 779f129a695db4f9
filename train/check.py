"""``painhelm data check``: read every recording under a folder and say what it holds.

Per file: usable or not, and why not (truncated, corrupt, missing companion file, missing
channels, NaN, no events ...). Over the folder: subjects, sessions (runs) and trials per
class. Labels come from the user's mapping file (``--mapping``), from the built-in
PhysioNet mapping for ``SxxxRyy.edf`` folders, or, with neither, the event descriptions
and their counts are listed so that the user can write a mapping. A bad file is a line
in the report, never a traceback; the exit status is 1 when any file is unusable.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .dataset import DataError
from .labels import Mapping, infer_subject_session, load_mapping, trials_from_raw
from .physionet_mi import parse_file_name, physionet_mapping, run_info
from .readers import FORMATS, check_flat, check_raw, find_recordings, read_raw

logger = logging.getLogger(__name__)

@dataclass
class FileReport:
    """What one recording holds, or why it cannot be used."""

    path: Path
    name: str  # path relative to the checked folder
    problem: str | None = None  # None: usable
    notes: list[str] = field(default_factory=list)  # worth knowing, not fatal (flat channel ...)
    subject: str = ""
    session: str = ""
    n_channels: int | None = None
    sfreq: float | None = None
    seconds: float | None = None
    trials: int | None = None  # None when no labels were cut (no mapping)
    counts: dict = field(default_factory=dict)  # head -> {class name: n}
    events: Counter = field(default_factory=Counter)  # annotation description -> n

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class CheckReport:
    """The result of checking a folder: one :class:`FileReport` per recording."""

    root: Path
    mode: str  # "mapping", "physionet" or "events"
    files: list[FileReport]
    mapping_source: str | None = None
    level_names: list[str] = field(default_factory=list)
    location_names: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files under root that are no recordings

    @property
    def unusable(self) -> list[FileReport]:
        return [f for f in self.files if not f.ok]

    @property
    def exit_status(self) -> int:
        """0 when every file is usable (and there is at least one), else 1."""
        return 0 if self.files and not self.unusable else 1

    def subjects(self) -> dict[str, list[str]]:
        """Subject -> its sessions, over the usable files."""
        out: dict[str, list[str]] = {}
        for f in self.files:
            if f.ok:
                out.setdefault(f.subject, [])
                if f.session not in out[f.subject]:
                    out[f.subject].append(f.session)
        return {s: sorted(v) for s, v in sorted(out.items())}

    def class_counts(self, head: str) -> dict[str, int]:
        """Trials per class of ``head`` ("level" or "location") over the usable files."""
        names = self.level_names if head == "level" else self.location_names
        total = Counter()
        for f in self.files:
            if f.ok:
                total.update(f.counts.get(head, {}))
        return {n: total[n] for n in names}

    def event_counts(self) -> dict[str, tuple[int, int]]:
        """Description -> (occurrences, files it occurs in), over the readable files."""
        n, files = Counter(), Counter()
        for f in self.files:
            n.update(f.events)
            files.update(set(f.events))
        return {d: (n[d], files[d]) for d in sorted(n, key=lambda d: (-n[d], d))}

    def format(self) -> str:
        """The human-readable report."""
        lines = [f"checked {self.root}: {len(self.files)} recording{'s' * (len(self.files) != 1)}"]
        if self.mode == "physionet":
            lines.append("labels: built-in PhysioNet eegmmidb mapping (T1/T2 by run: left/right fist or both "
                         "fists/feet; T0 rest; 0-4 s after each cue)")
        elif self.mode == "mapping":
            lines.append(f"labels: mapping {self.mapping_source}")
        else:
            lines.append("labels: none (no --mapping given): listing the events; write a mapping file to turn "
                         "them into labels (docs/data.md)")
        if self.ignored:
            shown = ", ".join(self.ignored[:5]) + (", ..." if len(self.ignored) > 5 else "")
            lines.append(f"ignored {len(self.ignored)} other file{'s' * (len(self.ignored) != 1)}: {shown}")
        if not self.files:
            lines.append(f"no recordings ({', '.join(FORMATS)}) found")
            return "\n".join(lines)
        session = "run" if self.mode == "physionet" else "session"
        lines += ["", *_table(self.files, with_trials=self.mode != "events", session=session)]
        notes = [(f.name, n) for f in self.files for n in f.notes]
        if notes:
            lines += ["", "notes:"] + [f"  {name}: {n}" for name, n in notes]
        subjects = self.subjects()
        if subjects:
            n_sessions = sum(len(v) for v in subjects.values())
            lines += ["", f"subjects: {len(subjects)}, {session}s: {n_sessions}"]
            lines += [f"  {s or '-'}: {', '.join(x or '-' for x in v)}" for s, v in subjects.items()]
        if self.mode == "events":
            ev = self.event_counts()
            if ev:
                lines += ["", "events (description: count, files):"]
                width = max(len(d) for d in ev)
                lines += [f"  {d:<{width}}  {n:6d}  {k:4d}" for d, (n, k) in ev.items()]
        else:
            for head in ("level", "location"):
                names = self.level_names if head == "level" else self.location_names
                if not names:
                    continue
                counts = self.class_counts(head)
                n_trials = sum(f.trials or 0 for f in self.files if f.ok)
                if n_trials > sum(counts.values()):
                    counts["(unlabelled)"] = n_trials - sum(counts.values())
                width = max(len(n) for n in [*counts, "total"])
                lines += ["", f"trials per class ({head}):"]
                lines += [f"  {n:<{width}}  {c:6d}" for n, c in counts.items()]
                lines.append(f"  {'total':<{width}}  {n_trials:6d}")
        bad = self.unusable
        lines.append("")
        if bad:
            lines.append(f"{len(self.files) - len(bad)} of {len(self.files)} files usable; "
                         f"{len(bad)} unusable:")
            lines += [f"  {f.name}: {f.problem}" for f in bad]
        else:
            lines.append("the file is usable" if len(self.files) == 1 else f"all {len(self.files)} files usable")
        return "\n".join(lines)


def _table(files: list[FileReport], *, with_trials: bool, session: str) -> list[str]:
    head = ["file", "subject", session, "channels", "sfreq", "seconds"] + (["trials"] if with_trials else [])
    head.append("status")
    rows = []
    for f in files:
        row = [f.name, f.subject or "-", f.session or "-",
               "-" if f.n_channels is None else str(f.n_channels),
               "-" if f.sfreq is None else f"{f.sfreq:g}",
               "-" if f.seconds is None else f"{f.seconds:.1f}"]
        if with_trials:
            row.append("-" if f.trials is None else str(f.trials))
        row.append("OK" if f.ok else "UNUSABLE")
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]


class _Notes(logging.Handler):
    """Collects the readers' warnings for one file, so they land in the report."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _check_file(path: Path, name: str, mode: str, mapping: Mapping | None) -> FileReport:
    rep = FileReport(path=path, name=name)
    try:  # from the name first, so that an unreadable file still shows whose it is
        if mode == "physionet":
            subject, run = parse_file_name(path)
            rep.subject, rep.session = subject, f"R{run:02d}"
        else:
            rep.subject, rep.session = infer_subject_session(path, mapping.file_pattern if mapping else None)
        raw = read_raw(path)
    except DataError as e:
        rep.problem = e.problem
        return rep
    rep.n_channels = len(raw.ch_names)
    rep.sfreq = float(raw.info["sfreq"])
    rep.seconds = raw.n_times / rep.sfreq
    rep.events = Counter(str(d) for d in raw.annotations.description)
    rep.notes += check_flat(raw)
    if mode == "physionet":
        run = int(rep.session[1:])
        try:
            run_info(run)
        except ValueError:
            rep.notes.append(f"R{run:02d} is a baseline run without cues: no trials")
            rep.trials = 0
            return rep
        mapping = physionet_mapping(run, include_rest=True)
    try:
        if mode == "events":
            problems = check_raw(raw)
            if problems:
                rep.problem = "; ".join(problems)
            return rep
        trials = trials_from_raw(raw, mapping, rep.subject, rep.session, file=path)
    except DataError as e:
        rep.problem = e.problem
        return rep
    rep.trials = len(trials)
    rep.counts = {head: trials.class_counts(head) for head in ("level", "location")}
    return rep


def check_folder(path: str | Path, mapping: str | Path | Mapping | None = None) -> CheckReport:
    """Read every recording under ``path`` (recursively; or the one file) and report on it.

    Parameters
    ----------
    path : str | Path
        A folder of recordings (EDF/BDF, BrainVision, EEGLAB, FIF, at any depth) or one
        recording file.
    mapping : str | Path | Mapping | None
        A label mapping (file or loaded). Without one, a folder whose recordings are all
        PhysioNet ``SxxxRyy.edf`` files uses the built-in PhysioNet mapping (rest included);
        any other folder gets its events listed.

    Returns
    -------
    report : CheckReport
        One entry per recording; ``report.format()`` is the printed report and
        ``report.exit_status`` is 1 when any file is unusable or none was found.

    Raises
    ------
    DataError
        ``path`` does not exist, or the mapping file is invalid.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(root, "no such file or folder")
    if mapping is not None and not isinstance(mapping, Mapping):
        mapping = load_mapping(mapping)
    recordings, ignored = find_recordings(root)
    if mapping is not None:
        mode = "mapping"
    elif recordings and all(parse_file_name(p) for p in recordings):
        mode = "physionet"
    else:
        mode = "events"
    report = CheckReport(root=root, mode=mode, files=[], ignored=ignored,
                         mapping_source=mapping.source if mapping is not None else None)
    if mode == "mapping":
        report.level_names, report.location_names = list(mapping.level_names), list(mapping.location_names)
    elif mode == "physionet":
        m = physionet_mapping(3, include_rest=True)
        report.level_names, report.location_names = list(m.level_names), list(m.location_names)

    notes = _Notes()
    pkg_logger = logging.getLogger("painhelm.train")
    pkg_logger.addHandler(notes)  # a handler here also keeps warnings off stderr
    try:
        for p in recordings:
            name = p.name if root.is_file() else p.relative_to(root).as_posix()
            notes.messages = []
            try:
                rep = _check_file(p, name, mode, mapping)
            except Exception as e:  # noqa: BLE001 - one odd file must not hide the others
                logger.debug("unexpected error on %s", p, exc_info=True)
                rep = FileReport(path=p, name=name, problem=f"unexpected error ({type(e).__name__}: {e}); "
                                                            "please report this file")
            rep.notes += [m for m in notes.messages if m not in rep.notes]
            report.files.append(rep)
    finally:
        pkg_logger.removeHandler(notes)
    return report


def run_check(path: str | Path, mapping: str | Path | None = None) -> int:
    """Check ``path`` (see :func:`check_folder`), print the report and return the exit status.

    Parameters
    ----------
    path : str | Path
        Folder of recordings or one recording.
    mapping : str | Path | None
        Label mapping file (TOML).

    Returns
    -------
    status : int
        0 when every recording is usable, 1 when any is not (or none was found).
    """
    report = check_folder(path, mapping=mapping)
    print(report.format(), flush=True)
    bad = report.unusable
    if bad:
        what = "an unusable recording" if len(bad) == 1 else f"{len(bad)} unusable recordings, the first"
        print(f"painhelm: {what}: {bad[0].path}: {bad[0].problem}", file=sys.stderr)
    elif not report.files:
        print(f"painhelm: no recordings found in {path}", file=sys.stderr)
    return report.exit_status
