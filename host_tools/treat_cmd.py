"""`painhelm treat` (the treatment side) and `painhelm sessions` (its log): argument
parsing and user interaction only; the loop is treat.py, the rules treat_policy.py, the log
treat_sessions.py, the output stage treat_output.py. docs/treatment.md is the manual."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .ctrl_c import CtrlC


def parser_treat(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="serial port of the helmet (e.g. /dev/ttyUSB0, a virtual helmet's pty)")
    p.add_argument("--policy", default=None, help="policy table, .toml or .json (default: the built-in table; see docs/treatment.md)")
    p.add_argument("--db", default=None, help="session database (default: $PAINHELM_SESSIONS or ~/.local/share/painhelm/sessions.sqlite)")
    p.add_argument("--duration", type=float, default=None, help="end the session after this many seconds")
    p.add_argument("--start", action="store_true", help="start the helmet's acquisition if it is idle (and stop it at the end)")
    p.add_argument("--output", default="sim", help="output stage (default: %(default)s, the simulated stimulator)")
    p.add_argument("--feedback", type=int, default=None, metavar="SCORE", help="the user's feedback 0-10, instead of the prompt")
    p.add_argument("--comment", default="", help="a comment stored with --feedback")
    p.add_argument("--no-prompt", action="store_true", help="do not ask for feedback at the end")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for the helmet (default: %(default)s)")


def _check_score(score: int | None) -> None:
    from .cli import CommandError

    if score is not None and not 0 <= score <= 10:
        raise CommandError(f"--feedback must be from 0 to 10, got {score}")


class _TreatView:
    """A status line redrawn in place on a terminal; elsewhere a line per state change."""

    def __init__(self, stream, tty: bool) -> None:
        self.stream, self.tty = stream, tty
        self._last_state = None
        self._last_draw = 0.0

    def __call__(self, now, out, decision, ctl) -> None:
        if decision is None:
            what = "no report yet"
        else:
            what = f"{decision.level or 'uncertain'}/{decision.location or '-'} {decision.confidence:.2f}" + \
                ("" if decision.certain else " (uncertain)")
        line = (f"{out.state:<9} intensity {out.intensity:5.1f} % -> {out.target:5.1f}  "
                f"program {out.program or '-'}  last report {what}  silence {max(0.0, ctl.silence):.2f} s")
        if self.tty:
            if now - self._last_draw >= 0.1 or out.state != self._last_state:
                self.stream.write("\r\x1b[K" + line)
                self.stream.flush()
                self._last_draw = now
        elif out.state != self._last_state:
            print(line, file=self.stream, flush=True)
        self._last_state = out.state

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _ask_feedback() -> tuple[int, str] | None:
    """Ask the user on the terminal; None if they skip."""
    while True:
        try:
            ans = input("How did the treatment feel? 0 (bad) to 10 (good), Enter to skip: ").strip()
        except EOFError:
            return None
        if not ans:
            return None
        if ans.isdigit() and 0 <= int(ans) <= 10:
            try:
                comment = input("Comment (Enter for none): ").strip()
            except EOFError:
                comment = ""
            return int(ans), comment
        print("a whole number from 0 to 10, please")


def do_treat(args) -> int:
    from .cli import CommandError
    from .connect import open_helmet
    from .treat import run_treatment
    from .treat_output import make_output
    from .treat_policy import PolicyError, load_policy
    from .treat_sessions import SessionError, SessionStore, default_db

    _check_score(args.feedback)
    if args.duration is not None and args.duration <= 0:
        raise CommandError(f"--duration must be positive, got {args.duration}")
    try:  # the user's files first: a bad policy or database is reported before the port is touched
        policy = load_policy(args.policy)
        output = make_output(args.output)
        store = SessionStore(args.db or default_db())
    except (PolicyError, SessionError, ValueError) as e:
        raise CommandError(str(e)) from None
    try:
        with open_helmet(args.port, timeout=args.connect_timeout) as helmet:
            if "bundle_error" in helmet.info:
                raise CommandError(f"the helmet on {args.port} has no usable bundle, so it cannot report pain: "
                                   f"{helmet.info['bundle_error']} (flash one: painhelm flash --port {args.port} "
                                   "--bundle DIR)")
            try:
                notes = policy.check_names(list(helmet.info.get("level_names") or []),
                                           list(helmet.info.get("location_names") or []))
            except PolicyError as e:
                raise CommandError(str(e)) from None
            for n in notes:
                print(f"note: {n}", file=sys.stderr)
            tty = sys.stdout.isatty()
            view = _TreatView(sys.stdout, tty)
            print(f"treating from {args.port} (firmware {helmet.info.get('firmware')}, model "
                  f"{str(helmet.info.get('model_sha256', '?'))[:12]}); policy {policy.source}; "
                  f"database {store.path}" + ("; Ctrl-C to stop" if tty else ""), flush=True)
            with CtrlC("stopping: ramping down (Ctrl-C again to switch the output off at once)") as ctrl_c:
                try:
                    res = run_treatment(helmet, policy, output, store, duration=args.duration, start=args.start,
                                        should_stop=lambda: ctrl_c.requested, on_tick=view)
                finally:
                    view.close()
                    output.close()
        fb = None
        if args.feedback is not None:
            fb = (args.feedback, args.comment)
        elif not args.no_prompt and sys.stdin.isatty():
            fb = _ask_feedback()
        if fb is not None:
            store.set_feedback(res.session_id, *fb)
        s = store.session(res.session_id)
    finally:
        store.close()
    for n in res.notes:
        print(f"note: {n}", file=sys.stderr)
    print(f"session {res.session_id}: {s['duration_s']:.1f} s, ended: {s['end_reason']}, {res.reports} reports, "
          f"max intensity {s['max_intensity']:.1f} %, programs {s['programs'] or '-'}"
          + (f", feedback {s['feedback_score']}/10" if s["feedback_score"] is not None else ""))
    if res.end_reason == "helmet lost":
        after = "" if res.zero_at is None else f"; output at zero {max(0.0, res.zero_at - res.lost_at):.2f} s later"
        raise CommandError(f"lost the helmet on {args.port}{after}; session {res.session_id} is saved in {args.db or default_db()}")
    if res.end_reason == "error":
        raise CommandError(f"session {res.session_id} ended with an error; output switched off")
    return 0


# ----------------------------------------------------------------------------- sessions

def parser_sessions(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, help="session database (default: $PAINHELM_SESSIONS or ~/.local/share/painhelm/sessions.sqlite)")
    p.add_argument("--csv", default=None, metavar="FILE", help="export the session list (or, with --samples, one session's samples) as CSV")
    p.add_argument("--samples", type=int, default=None, metavar="ID", help="one session's samples (with --csv: export them)")
    p.add_argument("--plot", type=int, default=None, metavar="ID", help="plot one session's intensity over time to a PNG")
    p.add_argument("--png", default=None, help="PNG file for --plot (default: session_ID.png)")
    p.add_argument("--feedback", nargs=2, default=None, metavar=("ID", "SCORE"), help="record feedback 0-10 for a session")
    p.add_argument("--comment", default="", help="comment stored with --feedback")


def _fmt(v, spec: str = "") -> str:
    return "-" if v is None or v == "" else format(v, spec)


def do_sessions(args) -> int:
    from .cli import CommandError
    from .treat_sessions import SessionError, SessionStore, default_db

    db = Path(args.db) if args.db else default_db()
    try:
        store = SessionStore(db, create=False)
    except SessionError as e:
        raise CommandError(str(e)) from None
    try:
        if args.feedback is not None:
            sid, score = args.feedback
            if not sid.isdigit() or not score.lstrip("-").isdigit():
                raise CommandError(f"--feedback takes a session id and a score 0-10, got {sid} {score}")
            store.set_feedback(int(sid), int(score), args.comment)
            print(f"session {sid}: feedback {score}/10 recorded")
            return 0
        if args.plot is not None:
            png = Path(args.png or f"session_{args.plot}.png")
            _plot(store, args.plot, png)
            print(f"wrote {png}")
            return 0
        if args.samples is not None:
            if args.csv:
                n = store.export_samples_csv(args.samples, args.csv)
                print(f"wrote {n} samples of session {args.samples} to {args.csv}")
            else:
                print(f"{'t_s':>8} {'intensity':>9} {'target':>7} {'program':<20} {'state':<10} decision")
                for r in store.samples(args.samples):
                    print(f"{r['t_s']:8.2f} {r['intensity']:9.2f} {_fmt(r['target'], '7.2f'):>7} "
                          f"{_fmt(r['program']):<20} {r['state']:<10} {_fmt(r['level'])}/{_fmt(r['location'])} "
                          f"{_fmt(r['confidence'], '.2f')}")
            return 0
        if args.csv:
            n = store.export_sessions_csv(args.csv)
            print(f"wrote {n} sessions to {args.csv}")
            return 0
        rows = store.sessions()
        if not rows:
            print(f"no sessions in {db}")
            return 0
        print(f"{'id':>4} {'start':<19} {'dur_s':>7} {'end reason':<12} {'max %':>6} {'feedback':>8}  programs")
        for r in rows:
            print(f"{r['id']:>4} {r['start'][:19]:<19} {_fmt(r['duration_s'], '7.1f'):>7} "
                  f"{_fmt(r['end_reason'] or 'unfinished'):<12} {r['max_intensity']:6.1f} "
                  f"{_fmt(r['feedback_score']):>8}  {r['programs'] or '-'}")
        return 0
    except SessionError as e:
        raise CommandError(str(e)) from None
    finally:
        store.close()


def _plot(store, session_id: int, png: Path) -> None:
    """Intensity and target over time, one colour band per program."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = store.samples(session_id)
    s = store.session(session_id)
    t = [r["t_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.step(t, [r["intensity"] for r in rows], where="post", label="intensity")
    ax.step(t, [r["target"] if r["target"] is not None else float("nan") for r in rows], where="post",
            linestyle="--", alpha=0.6, label="target")
    for r0, r1 in zip(rows, rows[1:] + rows[-1:]):
        if r0["state"] in ("failsafe", "lost"):
            ax.axvspan(r0["t_s"], r1["t_s"], color="red", alpha=0.15, lw=0)
        elif r0["state"] in ("hold", "ramp_down"):
            ax.axvspan(r0["t_s"], r1["t_s"], color="orange", alpha=0.12, lw=0)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("intensity (%)")
    ax.set_title(f"session {session_id}: {s['programs'] or 'no program'}; ended: {s['end_reason'] or 'unfinished'}")
    ax.legend(loc="upper right")
    fig.tight_layout()
    try:
        fig.savefig(png, dpi=100)
    except OSError as e:
        from .cli import CommandError

        raise CommandError(f"cannot write {png}: {e}") from None
    finally:
        plt.close(fig)
