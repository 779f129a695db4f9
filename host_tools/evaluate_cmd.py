"""`painhelm evaluate`: leave-one-subject-out (or leave-one-run-out) evaluation with a report.

    painhelm evaluate --dataset synthetic-pain
    painhelm evaluate --dataset physionet-mi --task executed-lr --permutations 200
    painhelm evaluate --dataset laser-pain-features --models painnet,edge-max --workers 2
    painhelm evaluate --dataset my_recordings/ --mapping study.toml --set epochs=40

Prints one line per finished fold and the per-subject table at the end; writes
report.json / report.md / report.html and confusion PNGs to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parser_evaluate(p: argparse.ArgumentParser) -> None:
    from painhelm.train.evaluate import TASKS

    p.add_argument("--dataset", default="synthetic-pain",
                   help="built-in dataset name, or a recordings folder with --mapping (default: %(default)s)")
    p.add_argument("--mapping", default=None, help="label mapping file (TOML) when --dataset is a folder of recordings")
    p.add_argument("--task", default=None, metavar="TASK",
                   help="physionet-mi sub-task: " + "; ".join(f"{k}: {v.description}" for k, v in TASKS.items()))
    p.add_argument("--models", default=None,
                   help="comma-separated model names to compare side by side (default: the config's model)")
    p.add_argument("--config", default=None, help="training config file (TOML; keys of train.fit.TrainConfig)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set epochs=40 (repeatable; wins over --config)")
    p.add_argument("--split", default="auto", choices=("auto", "subject", "session"),
                   help="hold out subjects or sessions; auto: subjects when there are >= 2 (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel folds; 1 runs them here one after another, more starts a local Ray "
                        "(default: %(default)s)")
    p.add_argument("--ray-address", default=None,
                   help="run the folds on this Ray cluster instead (e.g. auto or ray://host:10001)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per fold; 1 gives identical results sequentially and on Ray, "
                        "0 leaves torch's default (default: %(default)s)")
    p.add_argument("--permutations", type=int, default=0,
                   help="permutation test with this many label shufflings (each refits every fold; default: none)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's)")
    p.add_argument("--out", default=None, help="report folder (default: runs/evaluate/<dataset>[-<task>])")


def _load_trials(args):
    """The dataset (and task) as one trial table; user mistakes become CommandError."""
    from painhelm.train.evaluate import load_task_trials

    from .cli import settings_errors

    with settings_errors():
        return load_task_trials(args.dataset, args.mapping, args.task)


def _train_config(args):
    from painhelm.train.fit import load_config

    from .cli import settings_errors

    sets = list(args.set) + ([] if args.seed is None else [f"seed={args.seed}"])
    with settings_errors():
        return load_config(args.config, sets)  # a missing file is a FileNotFoundError: one line too


def do_evaluate(args, fit_fn=None) -> int:
    """Run the evaluation and write the report; ``fit_fn`` lets tests pass a fast fit."""
    from painhelm.train import evaluate as ev
    from painhelm.train import report_eval

    from .cli import CommandError

    if args.workers < 1:
        raise CommandError(f"--workers must be at least 1, got {args.workers}")
    if args.permutations < 0:
        raise CommandError(f"--permutations must be 0 or more, got {args.permutations}")
    if args.threads is not None and args.threads < 0:
        raise CommandError(f"--threads must be 0 (torch's default) or more, got {args.threads}")
    cfg = _train_config(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    if models:
        known = ev.known_models()
        bad = [m for m in models if m not in known]
        if bad:
            raise CommandError(f"unknown model {', '.join(map(repr, bad))}; models: {', '.join(known)}")
    trials = _load_trials(args)
    split = ev.resolve_split(trials, args.split)
    fold_list = ev.folds(trials, split)  # too few subjects/sessions is a DataError, one line
    n_jobs = len(fold_list) * len(models or [None]) * (1 + args.permutations)
    print(f"evaluate {trials.name}{' ' + args.task if args.task else ''}: {len(trials)} trials, "
          f"leave-one-{split}-out, {len(fold_list)} folds x {len(models or [getattr(cfg, 'model', '?')])} model(s)"
          f"{f' x (1 + {args.permutations} permutations)' if args.permutations else ''} = {n_jobs} fits, "
          f"{'Ray ' + (args.ray_address or f'local, {args.workers} workers') if args.workers > 1 or args.ray_address else 'sequential'}",
          flush=True)
    results = ev.evaluate(trials, cfg, models=models, by=split, fit_fn=fit_fn, workers=args.workers,
                          ray_address=args.ray_address, permutations=args.permutations,
                          threads=args.threads or None, progress=lambda line: print(line, flush=True))
    results["task"] = args.task
    out = Path(args.out) if args.out else Path("runs/evaluate") / (args.dataset if not args.task and not args.mapping
                                                                    else f"{Path(args.dataset).name}"
                                                                    + (f"-{args.task}" if args.task else ""))
    paths = report_eval.write_report(results, out)
    for model in results["models"]:
        print(f"\n{model}, {results['protocol']}:")
        print(report_eval.render_text(report_eval.per_subject_table(results, model)))
    if len(results["models"]) > 1 or args.permutations:
        print("\nmodels side by side:")
        print(report_eval.render_text(report_eval.models_table(results)))
    print(f"\nreport: {paths['md']} (also {paths['html'].name}, {paths['json'].name}, {len(paths['png'])} PNGs); "
          f"{results['wall_s']:.1f} s in all", flush=True)
    sys.stdout.flush()
    return 0
