"""`painhelm verify`: does the helmet compute what the host computes? A gate for a production line or CI.

    painhelm flash --port /dev/ttyUSB0 --bundle runs/train/syn/compressed/bundle
    painhelm verify --port /dev/ttyUSB0 --model runs/train/syn/compressed

Streams the test set through the helmet window by window, collects its reports and
timings, computes the same windows on the host (int8 in TensorFlow Lite Micro, float in
torch), prints the rows per head and writes report.md / report.html / verify.json and PNGs
(``docs/verify.md``). Exit status 1 when device and host int8 agree on fewer windows than
``--min-agreement`` (lowest over the heads), 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_EPILOG = """\
FOLDER: a folder written by painhelm compress (bundle/, model/, model_int8.tflite); the folder
  of painhelm demo works too, with --dataset. The helmet should run FOLDER/bundle; a helmet
  running another model is verified anyway (a warning, then the agreement gate decides).

test data (default: the trials the model never saw, as painhelm compare chooses them):
  the model's own dataset minus its training subjects (one-subject data: sessions);
  --test-subject / --test-session choose trials, --dataset/--mapping/--task other data.

rows per head:
  device vs truth, host int8 vs truth, device vs host int8 (cross), host float vs truth;
  then logits identical to host int8, decisions emitted vs uncertain, per subject/session.

exit status: 1 when the lowest device vs host int8 agreement is below --min-agreement
  (or on any error), 0 otherwise.

examples:
  painhelm verify --port /dev/ttyUSB0 --model runs/train/syn/compressed
  painhelm verify --port /dev/pts/3 --model runs/c/syn --max-windows 50 --min-agreement 1
  painhelm verify --port /dev/ttyUSB0 --model runs/c/mi --test-session S001/R10 --out runs/verify/mi
  painhelm verify --port /dev/ttyUSB0 --model runs/demo --dataset synthetic-pain --test-subject S05
"""


def parser_verify(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _EPILOG
    p.add_argument("--port", required=True, help="serial port of the helmet, e.g. /dev/ttyUSB0 or a virtual helmet's pty")
    p.add_argument("--model", required=True, metavar="FOLDER", dest="folder",
                   help="compressed folder written by painhelm compress (what the helmet should run)")
    p.add_argument("--dataset", default=None, metavar="NAME_OR_DIR",
                   help="test data: a built-in dataset, or a folder of recordings with --mapping "
                        "(default: the dataset the model was trained on)")
    p.add_argument("--mapping", default=None, metavar="FILE", help="label mapping file (TOML) for own recordings")
    p.add_argument("--task", default=None, metavar="TASK", help="physionet-mi task of the test data (default: the model's own)")
    p.add_argument("--test-subject", action="append", default=[], metavar="SUBJECT",
                   help="test on this subject's trials (repeatable, or comma-separated)")
    p.add_argument("--test-session", action="append", default=[], metavar="SUBJ/RUN",
                   help="test on this session's trials, e.g. S001/R10 (repeatable, or comma-separated)")
    p.add_argument("--max-windows", type=int, default=None, metavar="N",
                   help="stream at most N windows, spread evenly over the test set (default: all)")
    p.add_argument("--min-agreement", type=float, default=0.99, metavar="F",
                   help="lowest device vs host int8 agreement (0-1) that passes (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="DIR", help="report folder (default: FOLDER/verify)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the firmware to answer, and for each window's report (default: %(default)s)")


def _test_trials(args, ref):
    """``(test trials, whether the data have one subject)``: the model's held-out data
    (compare's rule) or what the options name."""
    from painhelm.compress.source import load_source
    from painhelm.train.dataset import BandPowerTrials
    from painhelm.train.evaluate import load_task_trials

    from .cli import CommandError, settings_errors
    from .compare_cmd import _choose_test, _names

    subjects, sessions = _names(args.test_subject), _names(args.test_session)
    with settings_errors():
        if ref.fitted is not None:
            trials = load_source(ref.fitted, args.dataset, args.mapping, args.task)
        elif args.dataset:
            trials = load_task_trials(args.dataset, args.mapping, args.task)
        else:
            raise CommandError(f"{ref.folder} does not record which data its model was trained on "
                               "(no model/config.json): pass --dataset (and --test-subject)")
    if isinstance(trials, BandPowerTrials):
        raise CommandError("the test data are band-power tables, not raw EEG: a helmet cannot take them")
    if ref.fitted is not None:
        test = _choose_test(ref.fitted, trials, subjects, sessions)
    elif subjects or sessions:
        test = _choose_test(None, trials, subjects, sessions)
    else:
        test = trials
    names = ref.class_names
    if list(test.level_names) != names["level"] or list(test.location_names) != names["location"]:
        raise CommandError(f"the test data have classes {list(test.level_names)} / {list(test.location_names)}, "
                           f"the bundle {names['level']} / {names['location']}: pass the model's own --dataset/--task")
    return test, len(set(trials.subject.tolist())) == 1


def do_verify(args) -> int:
    from . import verify as V
    from .cli import CommandError, settings_errors
    from .connect import open_helmet

    if not 0.0 <= args.min_agreement <= 1.0:
        raise CommandError(f"--min-agreement must be between 0 and 1 (a fraction: 0.99 = 99 %), got {args.min_agreement}")
    if args.max_windows is not None and args.max_windows < 1:
        raise CommandError(f"--max-windows must be at least 1, got {args.max_windows}")
    if not args.timeout > 0:
        raise CommandError(f"--timeout must be positive, got {args.timeout}")
    with settings_errors():  # VerifyError, CompressError: a folder that cannot be verified
        ref = V.load_reference(args.folder)
    test, one_subject = _test_trials(args, ref)
    test = test.subset(V.pick_windows(len(test), args.max_windows))
    with settings_errors():
        V.check_fit({"ch_names": ref.ch_names, "sfreq": ref.sfreq, "n_times": ref.n_times},
                    list(test.ch_names), test.sfreq, test.n_times)
    subjects = sorted(set(test.subject.astype(str).tolist()))
    # per subject; per session (run) for one-subject data such as physionet-mi's S001
    by, groups = ("session", test.session_keys()) if one_subject else ("subject", test.subject.astype(str))
    progress = sys.stderr.isatty()

    with open_helmet(args.port, timeout=args.timeout, link_timeout=args.timeout) as helmet:
        info = helmet.info
        with settings_errors():
            V.check_fit(info, list(test.ch_names), test.sfreq, test.n_times)
            warnings = V.check_model(info, ref.class_names)
        matches = info.get("model_sha256") == ref.model_sha256
        print(f"verify {ref.folder} on {args.port}: {len(test)} windows of {len(subjects)} subject(s), "
              f"{test.n_times / test.sfreq:g} s each", flush=True)
        for w in warnings:
            print(f"painhelm: warning: {w}", file=sys.stderr, flush=True)
        if not matches:
            print(f"painhelm: warning: the helmet runs model {str(info.get('model_sha256'))[:12]}, "
                  f"{ref.bundle_dir} holds {ref.model_sha256[:12]}; verifying anyway "
                  "(flash the folder's bundle to test it)", file=sys.stderr, flush=True)
        float_images = ref.fitted.images(test) if ref.fitted is not None else None
        host = V.host_predictions(ref, test.data, float_images)
        streamed = V.stream_windows(helmet.link, info, test.data, test.sfreq, timeout=args.timeout,
                                    progress=progress)

    result = V.summarize(ref, {"level": test.level, "location": test.location}, groups, by, host,
                         streamed, test.sfreq, test.n_times)
    heap = f", heap {info['mem_total'] // 1024} KB" if info.get("mem_total") else ""
    result.update({
        "port": args.port, "folder": str(ref.folder), "min_agreement": args.min_agreement,
        "passed": bool(result["min_cross"] >= args.min_agreement),
        "device": {k: info.get(k) for k in ("firmware", "protocol", "platform", "engine", "model_sha256",
                                            "mem_total", "max_payload", "bundle")},
        "model_sha256": ref.model_sha256, "model_matches": matches,
        "device_text": f"{args.port}: firmware {info.get('firmware')} ({info.get('platform')}{heap}), engine "
                       f"{info.get('engine')}, model {str(info.get('model_sha256'))[:12]}",
        "model_text": f"{ref.folder} (bundle model {ref.model_sha256[:12]}: "
                      f"{'the helmet runs it' if matches else 'NOT the model on the helmet'})",
        "test_text": f"{len(test)} windows of {len(set(groups.tolist()))} {by}(s): "
                     f"{', '.join(sorted(set(groups.tolist()))[:8])}{', ...' if len(set(groups.tolist())) > 8 else ''}",
        "notes": streamed.notes,
    })
    out = Path(args.out) if args.out else ref.folder / "verify"
    paths = V.write_verify_report(result, out)

    print(V.text_table(("head", "comparison", "agreement", "n"), V.head_lines(result), n_left=2))
    header, rows = V.group_lines(result)
    print(f"\nper {by}:")
    print(V.text_table(header, rows))
    print()
    for k, v in V.facts(result).items():
        if k not in ("helmet", "model", "test", "verdict"):
            print(f"{k}: {v}")
    for note in streamed.notes:
        print(f"note: {note}")
    print(f"report: {paths['md']} (also {paths['html'].name}, {paths['json'].name}, PNGs)", flush=True)
    if not result["passed"]:
        raise CommandError(f"device vs host int8 agreement {100 * result['min_cross']:.2f} % < --min-agreement "
                           f"{100 * args.min_agreement:g} %")
    print(f"PASS: device vs host int8 agreement {100 * result['min_cross']:.2f} % >= {100 * args.min_agreement:g} %")
    return 0
