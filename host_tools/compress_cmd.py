"""`painhelm compress MODEL_DIR`: pruning, int8 and export of a trained model folder.

Writes ``MODEL_DIR/compressed`` (or ``--out``): the exported float model (``model/``),
ONNX fp32/int8, TFLite fp32/full-int8, the helmet bundle and ``compress.json``; see
``docs/compression.md``. ``painhelm compare`` then reports what it cost.
"""

from __future__ import annotations

import argparse
import sys

_EPILOG = """\
examples:
  painhelm train --exclude-subject S05 --out runs/train/no-s05
  painhelm compress runs/train/no-s05                          # int8 exports + bundle
  painhelm compress runs/train/no-s05 --prune structured --amount 0.5 --out runs/c/pruned
  painhelm compress runs/train/no-s05 --qat --formats tflite,bundle
  painhelm compare runs/train/no-s05/compressed                # float vs int8 report
"""


def parser_compress(p: argparse.ArgumentParser) -> None:
    from painhelm.compress.pipeline import FORMATS, PRUNE_METHODS

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _EPILOG
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model folder written by painhelm train")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: MODEL_DIR/compressed; replaced if it exists)")
    p.add_argument("--prune", default="none", choices=PRUNE_METHODS,
                   help="structured: remove conv channels for real (torch-pruning); unstructured: zero the "
                        "smallest weights; both then fine-tune on the training subjects (default: %(default)s)")
    p.add_argument("--amount", type=float, default=0.5,
                   help="fraction of channels / weights to prune (default: %(default)s)")
    p.add_argument("--prune-epochs", type=int, default=30,
                   help="fine-tuning epochs after pruning, with early stopping (default: %(default)s)")
    p.add_argument("--qat", action="store_true",
                   help="quantization-aware fine-tuning (int8 fake quantization) before the static int8 export")
    p.add_argument("--qat-epochs", type=int, default=10, help="QAT fine-tuning epochs (default: %(default)s)")
    p.add_argument("--calib", type=int, default=256, metavar="N",
                   help="calibration images drawn from the training subjects (default: %(default)s)")
    p.add_argument("--formats", default=",".join(FORMATS),
                   help="comma-separated subset of %s (default: all)" % ",".join(FORMATS))
    p.add_argument("--dataset", default=None,
                   help="the model's data, when its folder does not say or the recordings moved")
    p.add_argument("--mapping", default=None, help="label mapping (TOML) for --dataset recordings")
    p.add_argument("--task", default=None, help="physionet-mi task of the model (with --dataset)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of fine-tuning and calibration sampling (default: the model's training seed, "
                        "so fine-tuning validates on the subjects training validated on)")


def do_compress(args) -> int:
    from painhelm.compress.pipeline import CompressError, compress_model

    from .cli import CommandError

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    try:
        res = compress_model(args.model_dir, args.out, prune=args.prune, amount=args.amount,
                             prune_epochs=args.prune_epochs, qat=args.qat, qat_epochs=args.qat_epochs,
                             calib_size=args.calib, formats=formats, dataset=args.dataset,
                             mapping=args.mapping, task=args.task, seed=args.seed,
                             progress=sys.stderr.isatty(), log=lambda m: print(m, flush=True))
    except CompressError as e:
        raise CommandError(str(e)) from None
    print(summary_text(res))
    return 0


def summary_text(res: dict) -> str:
    """A few lines for the terminal: what was written and the export checks."""
    lines = []
    pr = res.get("prune")
    if pr:
        lines.append(f"pruning ({pr['method']}): parameters {pr['nonzero_params_before']:,} -> "
                     f"{pr['nonzero_params_after']:,} non-zero ({100 * pr['nonzero_removed']:.0f} % removed), "
                     f"MACs {pr['macs_before']:,} -> {pr['macs_after']:,}; validation score "
                     f"{pr['val_before']['score']:.3f} -> {pr['val_after']['score']:.3f}")
    q = res.get("qat")
    if q:
        lines.append(f"QAT: validation score {q['val_before']['score']:.3f} -> {q['val_after']['score']:.3f}"
                     + ("" if q.get("finetune_kept", True) else " (fine-tuning did not help; rounded start kept)"))
    t = res.get("tflite")
    if t:
        lines.append(f"TFLite: fp32 max |err| vs torch {t['fp32_max_abs_err']:.2g}; int8 argmax agreement "
                     f"{100 * t['int8_argmax_agreement']:.0f} % on sample inputs; {len(t.get('ops', []))} ops, "
                     "no float op")
    o = res.get("onnx")
    if o:
        lines.append(f"ONNX: fp32 max |err| {o['fp32_max_abs_err']:.2g}; int8 argmax agreement "
                     f"{100 * o['int8_argmax_agreement']:.0f} %")
    files = res.get("files", {})
    for name in ("model_fp32.tflite", "model_int8.tflite", "model_fp32.onnx", "model_int8.onnx"):
        if name in files:
            lines.append(f"  {name:20s} {files[name]['size'] / 1024:8.1f} KiB")
    lines.append(f"compressed folder: {res['out']} ({res['seconds']:.0f} s); next: painhelm compare {res['out']}")
    return "\n".join(lines)
