"""`painhelm data ...`: look at recordings and datasets before training on them.

- ``painhelm data check PATH``: read every recording under PATH and report subjects,
  runs and trials per class, and every problem, naming the file; exit status 1 when any
  file is unusable.
- ``painhelm data show``: draw a trial's topomap sequence (bands x frames) with the
  electrode layout into a PNG.
"""

from __future__ import annotations

import argparse


def parser_data(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = sub.add_parser("check", help="check a folder (or one file) of recordings and list what it holds",
                       description="Read every EEG recording (EDF/BDF, BrainVision, EEGLAB, FIF) under PATH with MNE; "
                                   "list subjects, runs and trials per class; name every unusable file and why. "
                                   "Exit status 1 when any file is unusable.")
    c.add_argument("path", help="folder of recordings, or one recording file")
    c.add_argument("--mapping", default=None,
                   help="label mapping file (TOML) that turns events into labels; PhysioNet eegmmidb "
                        "folders are recognised without one")
    s = sub.add_parser("show", help="write a PNG of one trial's topomaps (bands x frames) with the electrodes",
                       description="Featurise one trial of a dataset (band powers -> normalised topomaps) and draw "
                                   "its images, one row per band and one column per frame, with the electrode layout.")
    s.add_argument("--dataset", default="synthetic-pain",
                   help="built-in dataset (synthetic-pain, physionet-mi, laser-pain-features) or a folder of "
                        "own recordings with --mapping (default: %(default)s)")
    s.add_argument("--mapping", default=None, help="label mapping file (TOML) for own recordings")
    s.add_argument("--trial", type=int, default=0, help="index of the trial to draw (default: %(default)s)")
    s.add_argument("--out", default="runs/topomaps.png", help="PNG to write (default: %(default)s)")
    s.add_argument("--image-size", type=int, default=32, help="topomap grid size G (default: %(default)s)")
    s.add_argument("--frames", type=int, default=None, help="frames per trial (default: the dataset's)")


def do_data(args) -> int:
    if args.data_command == "check":
        from painhelm.train.check import run_check

        return run_check(args.path, mapping=args.mapping)
    if args.data_command == "show":
        from painhelm.train.show import run_show

        return run_show(dataset=args.dataset, trial=args.trial, out=args.out, image_size=args.image_size,
                        n_frames=args.frames, mapping=args.mapping)
    raise AssertionError(args.data_command)
