"""`painhelm train`: fit preprocessing and a model on a dataset and write a model folder.

The folder (``--out``, default ``runs/train/<dataset>-<model>``) holds the weights, the
config, the preprocessing (cleaning matrix, topomap matrix, normalisation, label names)
and the history, so compress and flash need nothing else; see ``docs/training.md``.
Settings come from ``TrainConfig`` defaults, then ``--config FILE.toml``, then ``--set``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_EPILOG = """\
config keys (TOML file or --set KEY=VALUE; see docs/training.md):
  model, model_args.*, n_frames, image_size, norm, clean, epochs, seconds, batch_size,
  lr, weight_decay, patience, val_fraction, class_weights, seed, threads, device

examples:
  painhelm train                                         # synthetic-pain, painnet, defaults
  painhelm train --dataset physionet-mi --set epochs=40 --set model=edge-max
  painhelm train --dataset physionet-mi --task executed-lr --exclude-session R07
  painhelm train --dataset my_recordings/ --mapping study.toml --config train.toml
  painhelm train --exclude-subject S05 --out runs/train/no-s05   # keep S05 for testing
  painhelm train --dataset physionet-mi --exclude-session R07 --exclude-session R08
  painhelm train --out runs/train/x --set epochs=100 --resume    # continue a stopped run
"""


def parser_train(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _EPILOG
    p.add_argument("--dataset", default="synthetic-pain",
                   help="built-in dataset (synthetic-pain, physionet-mi, laser-pain-features) or a folder of "
                        "own recordings with --mapping (default: %(default)s)")
    p.add_argument("--mapping", default=None, help="label mapping file (TOML) for own recordings (docs/data.md)")
    p.add_argument("--task", default=None, metavar="TASK",
                   help="physionet-mi sub-task, e.g. executed-lr or where-5 (see painhelm evaluate --help)")
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="training config file; its keys are the config keys listed below")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set epochs=20 --set seconds=none "
                        "--set model_args.lstm_hidden=16 (repeatable; wins over --config)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="model folder to write (default: runs/train/<dataset>-<model>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoint.pt (same data and settings; epochs may grow)")
    p.add_argument("--subjects", default=None, metavar="S1,S2,...",
                   help="train on these subjects only (comma-separated; default: all)")
    p.add_argument("--exclude-subject", action="append", default=[], metavar="SUBJECT",
                   help="leave this subject out of training, e.g. to test on it later (repeatable)")
    p.add_argument("--exclude-session", action="append", default=[], metavar="[SUBJECT/]SESSION",
                   help="leave this session (run) out of training, e.g. R07 or S001/R07; for "
                        "one-subject datasets such as physionet-mi (repeatable)")


def _choose_trials(trials, subjects: str | None, exclude: list[str], exclude_sessions: list[str] = ()):
    """Training trials of the chosen subjects and sessions; unknown names list what exists."""
    import numpy as np

    from .cli import CommandError

    have = sorted(set(trials.subject.tolist()))
    wanted = [s.strip() for s in subjects.split(",") if s.strip()] if subjects else list(have)
    unknown = sorted(set(wanted + list(exclude)) - set(have))
    if unknown:
        raise CommandError(f"unknown subject(s) {unknown}; the dataset has {have}")
    keep = sorted(set(wanted) - set(exclude))
    if not keep:
        raise CommandError("no subjects left to train on after --subjects/--exclude-subject")
    mask = np.isin(trials.subject, keep)
    pairs = trials.session_keys()
    for name in exclude_sessions:
        hit = (pairs == name) if "/" in name else (trials.session == name)
        if not hit.any():
            raise CommandError(f"unknown session {name!r}; the dataset has {sorted(set(pairs.tolist()))}")
        mask &= ~hit
    if not mask.any():
        raise CommandError("no trials left to train on after --exclude-session")
    return trials if mask.all() else trials.subset(mask)


def _summary(fitted, out: Path) -> str:
    s, v = fitted.summary, fitted.extra.get("validation", {})
    n_sub = len(fitted.extra.get("subjects", []))
    why = {"early stopping": "early stopping", "time": "time box", "epochs": "epoch limit"}[s["stopped"]]
    lines = [f"trained {fitted.model_name} on {fitted.dataset or 'the dataset'}: "
             f"{fitted.extra['n_train_trials'] + v.get('n_trials', 0)} trials of {n_sub} subject(s), "
             f"{s['epochs_run']} epochs ({why}), {s['seconds']:.1f} s"]
    if v.get("by", "none") != "none":
        held = f" {', '.join(v['groups'])}" if v["groups"] else ""
        heads = ", ".join(f"{h} {s[f'val_bacc_{h}']:.3f}" for h in fitted.heads if f"val_bacc_{h}" in s)
        score = s.get("best_val_score")
        score_txt = "n/a" if score is None else f"{score:.3f}"
        lines.append(f"validation: {v['n_trials']} trials held out by {v['by']}{held}; best epoch "
                     f"{s['best_epoch']}: balanced accuracy {score_txt} ({heads})")
    else:
        lines.append("validation: none (val_fraction=0); the last epoch's weights are kept")
    lines.append(f"model folder: {out}")
    return "\n".join(lines)


def do_train(args) -> int:
    from painhelm.train.fit import fit, load_config

    from painhelm.train.evaluate import load_task_trials

    from .cli import settings_errors

    with settings_errors():
        cfg = load_config(args.config, args.overrides)
        trials = load_task_trials(args.dataset, args.mapping, args.task)
    name = Path(args.dataset).resolve().name if args.mapping else args.dataset
    name += f"-{args.task}" if args.task else ""
    trials = _choose_trials(trials, args.subjects, args.exclude_subject, args.exclude_session)
    out = Path(args.out) if args.out else Path("runs/train") / f"{name}-{cfg.model}"
    if not args.resume and (out / "checkpoint.pt").exists():
        print(f"painhelm: {out} holds an earlier run; starting afresh (use --resume to continue it)",
              file=sys.stderr)
    # where the data came from, so compress and compare reload exactly this table
    source = {"dataset": str(Path(args.dataset).resolve()) if args.mapping else args.dataset,
              "mapping": str(Path(args.mapping).resolve()) if args.mapping else None, "task": args.task}
    with settings_errors():  # bad settings for this data (unknown model, resume mismatch, ...)
        fitted = fit(trials, cfg, progress=sys.stderr.isatty(), out_dir=out, resume=args.resume, source=source)
    print(_summary(fitted, out.resolve()))
    return 0

