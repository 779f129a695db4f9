"""Treatment sessions in SQLite: one row per session, its samples, the user's feedback.

Every write is committed at once (WAL journal), so a crash of the treatment program loses
nothing that was logged before it. Tables::

    sessions(id, start, end, duration_s, start_unix, end_unix, programs, max_intensity,
             end_reason, port, firmware, model_sha256, bundle, policy, feedback_score,
             feedback_comment, feedback_at)
    samples(session_id, t_s, unix, intensity, target, program, level, location,
            confidence, state)

``start``/``end`` are local ISO-8601 times; ``t_s`` is seconds since the session started;
``programs`` lists the programs used (comma-separated, in first-use order); ``end`` is NULL
while a session runs (or when its program died before it could close it).
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import sqlite3
import time
from pathlib import Path

__all__ = ["SessionStore", "SessionError", "default_db", "END_REASONS"]

END_REASONS = ("user stop", "duration", "helmet lost", "error")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    start TEXT NOT NULL, end TEXT, duration_s REAL,
    start_unix REAL NOT NULL, end_unix REAL,
    programs TEXT NOT NULL DEFAULT '', max_intensity REAL NOT NULL DEFAULT 0,
    end_reason TEXT,
    port TEXT, firmware TEXT, model_sha256 TEXT, bundle TEXT, policy TEXT,
    feedback_score INTEGER, feedback_comment TEXT, feedback_at TEXT);
CREATE TABLE IF NOT EXISTS samples (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    t_s REAL NOT NULL, unix REAL NOT NULL,
    intensity REAL NOT NULL, target REAL, program TEXT,
    level TEXT, location TEXT, confidence REAL, state TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS samples_session ON samples(session_id, t_s);
"""

SESSION_COLUMNS = ("id", "start", "end", "duration_s", "programs", "max_intensity", "end_reason", "port",
                   "firmware", "model_sha256", "bundle", "feedback_score", "feedback_comment", "policy")
SAMPLE_COLUMNS = ("t_s", "unix", "intensity", "target", "program", "level", "location", "confidence", "state")


class SessionError(ValueError):
    """A session database that cannot be used, or a session that does not exist."""


def default_db() -> Path:
    """``$PAINHELM_SESSIONS`` if set, else ``$XDG_DATA_HOME/painhelm/sessions.sqlite``
    (``~/.local/share/painhelm/sessions.sqlite``)."""
    env = os.environ.get("PAINHELM_SESSIONS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "painhelm" / "sessions.sqlite"


def _iso(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix).astimezone().isoformat(timespec="milliseconds")


class SessionStore:
    """The session database at ``path`` (created with its folder when ``create``)."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise SessionError(f"no session database at {self.path} (run painhelm treat first, or give --db)")
        if self.path.is_dir():
            raise SessionError(f"--db {self.path} is a folder, not a database file")
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), timeout=5.0, isolation_level=None,
                                      check_same_thread=False)  # one user at a time: the loop, then its caller
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SessionError(f"{self.path} was written by a newer painhelm (schema {version})")
            self.db.executescript(_SCHEMA)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise SessionError(f"cannot use {self.path} as a session database: {e}") from None
        except OSError as e:
            raise SessionError(f"cannot create the session database {self.path}: {e}") from None
        self._programs: dict[int, list[str]] = {}
        self._max: dict[int, float] = {}

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "SessionStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def start_session(self, port: str, info: dict, policy: dict, unix: float | None = None) -> int:
        """A new session; returns its id. ``info``: the helmet's PONG description."""
        unix = time.time() if unix is None else unix
        cur = self.db.execute(
            "INSERT INTO sessions (start, start_unix, port, firmware, model_sha256, bundle, policy) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (_iso(unix), unix, port, info.get("firmware"), info.get("model_sha256"), info.get("bundle"),
             json.dumps(policy, sort_keys=True)))
        sid = int(cur.lastrowid)
        self._programs[sid], self._max[sid] = [], 0.0
        return sid

    def add_sample(self, session_id: int, t_s: float, unix: float, intensity: float, target: float | None,
                   program: str | None, level: str | None, location: str | None, confidence: float | None,
                   state: str) -> None:
        """Log one point of the intensity curve (committed at once)."""
        with self.db:
            self.db.execute("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (session_id, t_s, unix, intensity, target, program, level, location, confidence, state))
            progs = self._programs.setdefault(session_id, [])
            changed = False
            if program and intensity > 0 and program not in progs:
                progs.append(program)
                changed = True
            if intensity > self._max.get(session_id, 0.0):
                self._max[session_id] = intensity
                changed = True
            if changed:
                self.db.execute("UPDATE sessions SET programs = ?, max_intensity = ? WHERE id = ?",
                                (",".join(progs), self._max[session_id], session_id))

    def end_session(self, session_id: int, reason: str, unix: float | None = None) -> None:
        """Close a session with its end reason (one of END_REASONS)."""
        if reason not in END_REASONS:
            raise ValueError(f"end reason must be one of {END_REASONS}, got {reason!r}")
        unix = time.time() if unix is None else unix
        with self.db:
            self.db.execute("UPDATE sessions SET end = ?, end_unix = ?, duration_s = ? - start_unix, end_reason = ? "
                            "WHERE id = ?", (_iso(unix), unix, unix, reason, session_id))

    def set_feedback(self, session_id: int, score: int, comment: str = "") -> None:
        """The user's feedback on a session: ``score`` 0-10 and a free comment."""
        if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 10:
            raise SessionError(f"feedback score must be a whole number from 0 to 10, got {score!r}")
        self.session(session_id)  # exists?
        with self.db:
            self.db.execute("UPDATE sessions SET feedback_score = ?, feedback_comment = ?, feedback_at = ? "
                            "WHERE id = ?", (score, comment or "", _iso(time.time()), session_id))

    # ------------------------------------------------------------------ reading
    def _rows(self, sql: str, args: tuple = ()) -> list[dict]:
        cur = self.db.execute(sql, args)
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def sessions(self) -> list[dict]:
        """Every session, oldest first."""
        return self._rows("SELECT * FROM sessions ORDER BY id")

    def session(self, session_id: int) -> dict:
        """One session; SessionError if there is none with that id."""
        rows = self._rows("SELECT * FROM sessions WHERE id = ?", (session_id,))
        if not rows:
            raise SessionError(f"no session {session_id} in {self.path}")
        return rows[0]

    def samples(self, session_id: int) -> list[dict]:
        """The session's samples in time order."""
        self.session(session_id)
        return self._rows("SELECT * FROM samples WHERE session_id = ? ORDER BY t_s, rowid", (session_id,))

    def export_sessions_csv(self, path: str | Path) -> int:
        """Write every session to a CSV file; return how many."""
        rows = self.sessions()
        _write_csv(path, SESSION_COLUMNS, rows)
        return len(rows)

    def export_samples_csv(self, session_id: int, path: str | Path) -> int:
        """Write one session's samples to a CSV file; return how many."""
        rows = self.samples(session_id)
        _write_csv(path, SAMPLE_COLUMNS, rows)
        return len(rows)


def _write_csv(path: str | Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    p = Path(path)
    try:
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for r in rows:
                w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
    except OSError as e:
        raise SessionError(f"cannot write {p}: {e}") from None
