"""`painhelm compare`: how much the int8 model loses against the float model, on unseen trials.

    painhelm compare runs/compress/syn
    painhelm compare runs/compress/syn --test-subject S05 --latency-runs 200
    painhelm compare runs/compress/mine --dataset my_recordings/ --mapping study.toml

Reads a folder written by ``painhelm compress`` (``model/`` and the four exports), scores
float, int8 (the helmet's .tflite on LiteRT's reference kernels) and ONNX int8 on the
trials the model never saw, times every runtime, prints the three rows per head and
writes compare.json / report.md / report.html and PNGs (see ``docs/compression.md``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_EPILOG = """\
test data (default: the trials the model never saw):
  the dataset the model was trained on (or --dataset/--mapping), minus every subject that
  took part in training (validation subjects included); with a one-subject dataset, minus
  every session that did. --test-subject / --test-session choose the trials instead.

rows per head:
  float vs truth, int8 vs truth, int8 vs float (cross: float's argmax taken as the truth,
  so acc % is the argmax agreement; cos, rmse, l2r on the logits), ONNX int8 vs float

targets (issue 6): accuracy drop float -> int8 <= 0.5 pp per head, argmax agreement >= 99 %,
  int8 .tflite <= 0.3x the fp32 .tflite

examples:
  painhelm compare runs/compress/syn                         # held-out subjects, full report
  painhelm compare runs/compress/syn --no-runtimes           # accuracy only, a few seconds
  painhelm compare runs/compress/syn --test-subject S05 --out runs/compare/s05
  painhelm compare runs/compress/mi --test-session S001/R10  # one-subject data: a run
  painhelm compare runs/compress/mine --dataset my_recordings/ --mapping study.toml
"""


def parser_compare(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _EPILOG
    p.add_argument("folder", metavar="FOLDER", help="compressed folder written by painhelm compress")
    p.add_argument("--dataset", default=None, metavar="NAME_OR_DIR",
                   help="test data: a built-in dataset, or a folder of recordings with --mapping "
                        "(default: the dataset the model was trained on)")
    p.add_argument("--mapping", default=None, metavar="FILE", help="label mapping file (TOML) for own recordings")
    p.add_argument("--task", default=None, metavar="TASK",
                   help="physionet-mi task of the test data (default: the model's own)")
    p.add_argument("--test-subject", action="append", default=[], metavar="SUBJECT",
                   help="test on this subject's trials (repeatable, or comma-separated)")
    p.add_argument("--test-session", action="append", default=[], metavar="SUBJ/RUN",
                   help="test on this session's trials, e.g. S001/R10 (repeatable, or comma-separated)")
    p.add_argument("--out", default=None, metavar="DIR", help="report folder (default: FOLDER/compare)")
    p.add_argument("--latency-runs", type=int, default=50, metavar="N",
                   help="timed runs per runtime at batch 1, after 5 warm-up runs (default: %(default)s)")
    p.add_argument("--no-runtimes", action="store_true",
                   help="skip the runtime table (latency, TFLM arena); accuracy and file sizes are still reported")


def _names(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _choose_test(fitted, trials, subjects: list[str], sessions: list[str]):
    """The trials named by --test-subject / --test-session, else the held-out ones."""
    import numpy as np

    from painhelm.compress.source import held_out

    from .cli import CommandError

    if not subjects and not sessions:
        try:
            return held_out(fitted, trials)
        except ValueError as e:
            raise CommandError(str(e).replace("pass test data", "pass --test-subject / --test-session")) from None
    have = sorted(set(trials.subject.astype(str).tolist()))
    unknown = sorted(set(subjects) - set(have))
    if unknown:
        raise CommandError(f"unknown subject(s) {unknown}; the data have {have}")
    keys = trials.session_keys()
    have_s = sorted(set(keys.tolist()))
    unknown = sorted(set(sessions) - set(have_s))
    if unknown:
        shown = ", ".join(have_s[:20]) + (", ..." if len(have_s) > 20 else "")
        raise CommandError(f"unknown session(s) {unknown}; sessions are SUBJECT/SESSION, the data have {shown}")
    keep = np.isin(trials.subject.astype(str), subjects) | np.isin(keys, sessions)
    return trials.subset(keep)


def do_compare(args) -> int:
    from painhelm.compress import compare as C
    from painhelm.compress import report_compare as R
    from painhelm.compress.pipeline import load_model_folder
    from painhelm.compress.source import load_source
    from painhelm.train.report_eval import render_text

    from .cli import CommandError, settings_errors

    if args.latency_runs < 1:
        raise CommandError(f"--latency-runs must be at least 1, got {args.latency_runs}")
    try:
        folder = C.check_folder(args.folder)
    except FileNotFoundError as e:
        raise CommandError(str(e)) from None
    with settings_errors():  # a broken model folder, or data that do not fit the model
        fitted = load_model_folder(folder / C.MODEL_DIR)
        # the model's own recorded data (dataset, mapping, task) unless told otherwise
        trials = load_source(fitted, args.dataset, args.mapping, args.task)
    test = _choose_test(fitted, trials, _names(args.test_subject), _names(args.test_session))
    print(f"compare {folder}: {fitted.model_name} trained on {fitted.dataset or '?'}, {len(test)} test trials",
          flush=True)
    with settings_errors():  # mismatched or corrupt exports, other channels or classes
        result = C.compare(folder, test, fitted=fitted, runtimes=() if args.no_runtimes else None,
                           n_latency=args.latency_runs, progress=sys.stderr.isatty())
    out = Path(args.out) if args.out else folder / "compare"
    paths = R.write_compare_report(result, out)

    t = result["test"]
    print(f"test: {t['n']} trials of {len(t['groups'])} {t['by']}(s): {', '.join(t['groups'])}")
    if t["seen_in_training"]:
        print(f"note: {', '.join(t['seen_in_training'])} took part in training: accuracies are optimistic")
    for h in result["heads"]:
        print(f"\n{R.head_title(result, h)}")
        print(render_text(R.head_table(result, h)))
    print("\n(cross: float's argmax taken as the truth, so acc % is the argmax agreement; "
          "l2r = ||int8 - float|| / ||float||)")
    print("\ntargets:")
    print(render_text(R.targets_table(result)))
    print(f"\nper {result['per_group']['by']}:")
    print(render_text(R.groups_table(result)))
    if result["runtimes"]:
        print(f"\nruntimes (batch 1, median of {result['n_latency']} runs):")
        header, rows = R.runtime_table(result)
        print(render_text((header[:-1], [r[:-1] for r in rows])))  # notes are in the report
    print(f"\nreport: {paths['md']} (also {paths['html'].name}, {paths['json'].name}, {len(paths['png'])} PNGs); "
          f"{result['wall_s']:.1f} s", flush=True)
    return 0
