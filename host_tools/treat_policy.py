"""Treatment policy and safety controller: pure logic, no I/O, driven by an explicit clock.

A :class:`Policy` maps a pain decision ``(level, location)`` (the bundle's label names) to a
:class:`Treatment` (intensity in % of the stimulator's range, program name), inside
:class:`Limits`. The :class:`SafetyController` turns a stream of decisions, signs of life
and a clock into the output the stimulator gets at each control tick:

* ``max_intensity`` clamps every output and target;
* ``max_ramp_per_s`` limits every ordinary change (up or down);
* a decision below ``min_confidence``, or one the helmet marked uncertain, or a helmet that
  stopped streaming, holds the output for ``hold_s`` and then ramps it down at
  ``max_ramp_per_s``;
* no heartbeat or report for ``silence_s``, or a lost port, is a fail-safe: the output
  ramps to zero from ``max_intensity`` in ``failsafe_ramp_s`` (a faster, fixed rate); the
  decision heard before is forgotten, so only a new report after the helmet is back can
  raise the output again (from zero, at the ordinary rate). A lost port never recovers;
* a program change happens only at zero intensity: the output ramps down through zero at
  the ordinary rate, switches program, then ramps up. Changing the pulse pattern at a
  non-zero amplitude can feel like a jolt; passing through zero is the one transition that
  is safe for every pair of programs, and doing it automatically keeps the table simple.

The policy file (TOML or JSON) is described in docs/treatment.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from painhelm.firmware import wire

__all__ = ["Limits", "Treatment", "Rule", "Policy", "PolicyError", "Decision", "Output",
           "SafetyController", "default_policy", "load_policy", "decision_from_report"]

ANY = "*"  # a rule's location that matches every location (and a model without a location head)
MAX_INTENSITY_CEILING = 100.0  # % of the stimulator's range: no policy may exceed it
MAX_SILENCE_S = 1.0  # the protocol's HEARTBEAT_TIMEOUT_MS
MIN_SILENCE_S = 0.3  # above the helmet's 250 ms heartbeat period, with a margin for jitter
MAX_FAILSAFE_RAMP_S = 0.25


class PolicyError(ValueError):
    """A policy file or value that cannot be used; the message names the bad entry."""


@dataclass(frozen=True)
class Limits:
    """Safety limits. Intensities are % of the stimulator's range (0-100)."""

    max_intensity: float = 60.0  # no output above this, whatever the table says
    max_ramp_per_s: float = 10.0  # % per second, for every ordinary change
    min_confidence: float = 0.5  # 0-1; a decision below it is treated as uncertain
    hold_s: float = 3.0  # uncertain: keep the output this long, then ramp down
    silence_s: float = 0.5  # no heartbeat or report this long: fail-safe
    failsafe_ramp_s: float = 0.25  # fail-safe: from max_intensity to zero in this time

    def check(self) -> "Limits":
        """Return self; PolicyError naming the first limit out of its range."""
        def bad(name: str, why: str) -> PolicyError:
            return PolicyError(f"limits.{name} = {getattr(self, name)!r}: {why}")

        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(f.name, "must be a finite number")
        if not 0 < self.max_intensity <= MAX_INTENSITY_CEILING:
            raise bad("max_intensity", f"must be in (0, {MAX_INTENSITY_CEILING:g}] %")
        if self.max_ramp_per_s <= 0:
            raise bad("max_ramp_per_s", "must be positive")
        if not 0 <= self.min_confidence <= 1:
            raise bad("min_confidence", "must be in [0, 1]")
        if self.hold_s < 0:
            raise bad("hold_s", "must not be negative")
        if not MIN_SILENCE_S <= self.silence_s <= MAX_SILENCE_S:
            raise bad("silence_s", f"must be in [{MIN_SILENCE_S:g}, {MAX_SILENCE_S:g}] s "
                                   f"(above the helmet's {wire.HEARTBEAT_MS} ms heartbeat period)")
        if not 0 < self.failsafe_ramp_s <= MAX_FAILSAFE_RAMP_S:
            raise bad("failsafe_ramp_s", f"must be in (0, {MAX_FAILSAFE_RAMP_S:g}] s")
        if self.silence_s + self.failsafe_ramp_s > MAX_SILENCE_S:
            raise bad("silence_s", f"plus failsafe_ramp_s ({self.failsafe_ramp_s:g}) must be at most "
                                   f"{MAX_SILENCE_S:g} s: the output must be zero within 1 s of the helmet's silence")
        return self

    @property
    def failsafe_rate(self) -> float:
        """% per second of the fail-safe ramp (never slower than the ordinary one)."""
        return max(self.max_intensity / self.failsafe_ramp_s, self.max_ramp_per_s)


@dataclass(frozen=True)
class Treatment:
    """What the stimulator should do: ``intensity`` (%) with ``program`` (None: keep the
    current program; only for intensity 0)."""

    intensity: float
    program: str | None


@dataclass(frozen=True)
class Rule:
    """One line of the table: ``level`` and ``location`` names (location ``*``: any)."""

    level: str
    location: str
    intensity: float
    program: str | None

    def label(self, i: int) -> str:
        return f"rule {i + 1} ({self.level}/{self.location})"


@dataclass
class Policy:
    """A table of rules inside limits. Look-up: the exact (level, location) rule, else the
    level's ``*`` rule, else intensity 0 (a decision nobody mapped gets no treatment)."""

    limits: Limits = field(default_factory=Limits)
    rules: list[Rule] = field(default_factory=list)
    source: str = "built-in"

    def check(self) -> "Policy":
        """Return self; PolicyError naming the first bad limit or rule."""
        self.limits.check()
        seen: set[tuple[str, str]] = set()
        for i, r in enumerate(self.rules):
            if not r.level or not r.location:
                raise PolicyError(f"{r.label(i)}: level and location must be non-empty names")
            if isinstance(r.intensity, bool) or not isinstance(r.intensity, (int, float)) or not math.isfinite(r.intensity):
                raise PolicyError(f"{r.label(i)}: intensity must be a number, got {r.intensity!r}")
            if not 0 <= r.intensity <= self.limits.max_intensity:
                raise PolicyError(f"{r.label(i)}: intensity {r.intensity:g} is outside [0, "
                                  f"limits.max_intensity = {self.limits.max_intensity:g}]")
            if r.program is not None and (not isinstance(r.program, str) or not r.program):
                raise PolicyError(f"{r.label(i)}: program must be a non-empty name, got {r.program!r}")
            if r.program is None and r.intensity > 0:
                raise PolicyError(f"{r.label(i)}: intensity {r.intensity:g} needs a program")
            if (r.level, r.location) in seen:
                raise PolicyError(f"{r.label(i)}: a second rule for {r.level}/{r.location}")
            seen.add((r.level, r.location))
        return self

    def check_names(self, level_names: list[str], location_names: list[str]) -> list[str]:
        """PolicyError if a rule names a level or location the helmet's model does not know;
        return notes about the model's levels that no rule maps (they get intensity 0)."""
        for i, r in enumerate(self.rules):
            if r.level not in level_names:
                raise PolicyError(f"{self.source}: {r.label(i)}: the helmet's model has no level {r.level!r} "
                                  f"(its levels: {', '.join(level_names)})")
            if r.location != ANY and r.location not in location_names:
                raise PolicyError(f"{self.source}: {r.label(i)}: the helmet's model has no location {r.location!r} "
                                  f"(its locations: {', '.join(location_names) or 'none'}; '*' matches any)")
        mapped = {r.level for r in self.rules}
        return [f"policy has no rule for level {n!r}: it gets intensity 0" for n in level_names if n not in mapped]

    def lookup(self, level: str, location: str | None) -> Treatment:
        """The treatment for a decision (``location`` None: the model has no location head)."""
        best = None
        for r in self.rules:
            if r.level == level and r.location == location:
                best = r
                break
            if r.level == level and r.location == ANY and best is None:
                best = r
        if best is None:
            return Treatment(0.0, None)
        return Treatment(min(float(best.intensity), self.limits.max_intensity), best.program)

    def to_dict(self) -> dict:
        """JSON-able form (the format load_policy reads, as recorded with each session)."""
        return {"limits": asdict(self.limits),
                "rule": [{k: v for k, v in asdict(r).items() if v is not None} for r in self.rules]}


def default_policy() -> Policy:
    """The built-in table for the synthetic-pain labels (none/low/moderate/high x left/right
    hand): conventional TENS on the painful side, burst TENS for high pain."""
    rules = [Rule("none", ANY, 0.0, None)]
    for level, intensity, kind in (("low", 15.0, "conventional"), ("moderate", 30.0, "conventional"),
                                   ("high", 45.0, "burst")):
        for side in ("left", "right"):
            rules.append(Rule(level, f"{side}_hand", intensity, f"{kind}_{side}"))
    return Policy(Limits(), rules).check()


_LIMIT_NAMES = {f.name for f in fields(Limits)}
_RULE_KEYS = {"level", "location", "intensity", "program"}


def policy_from_dict(d: object, source: str = "policy") -> Policy:
    """Build and check a policy from parsed TOML/JSON; PolicyError naming the bad entry."""
    if not isinstance(d, dict):
        raise PolicyError(f"{source}: the policy must be a table/object with 'limits' and 'rule'")
    unknown = set(d) - {"limits", "rule"}
    if unknown:
        raise PolicyError(f"{source}: unknown section {sorted(unknown)[0]!r} (known: limits, rule)")
    lim = d.get("limits", {})
    if not isinstance(lim, dict):
        raise PolicyError(f"{source}: 'limits' must be a table")
    for k in lim:
        if k not in _LIMIT_NAMES:
            raise PolicyError(f"{source}: unknown limit {k!r} (known: {', '.join(sorted(_LIMIT_NAMES))})")
    try:
        limits = Limits(**lim)
        limits.check()
    except PolicyError as e:
        raise PolicyError(f"{source}: {e}") from None
    raw = d.get("rule", [])
    if not isinstance(raw, list) or not raw:
        raise PolicyError(f"{source}: needs at least one [[rule]] (level, location, intensity, program)")
    rules = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise PolicyError(f"{source}: rule {i + 1} must be a table")
        bad = set(r) - _RULE_KEYS
        if bad:
            raise PolicyError(f"{source}: rule {i + 1}: unknown key {sorted(bad)[0]!r} "
                              f"(known: {', '.join(sorted(_RULE_KEYS))})")
        if "level" not in r or "intensity" not in r:
            raise PolicyError(f"{source}: rule {i + 1}: needs 'level' and 'intensity'")
        for key in ("level", "location"):
            if key in r and not isinstance(r[key], str):
                raise PolicyError(f"{source}: rule {i + 1}: {key} must be a name, got {r[key]!r}")
        rules.append(Rule(r["level"], r.get("location", ANY), r["intensity"], r.get("program")))
    p = Policy(limits, rules, source)
    try:
        return p.check()
    except PolicyError as e:
        raise PolicyError(f"{source}: {e}") from None


def load_policy(path: str | Path | None) -> Policy:
    """The policy in ``path`` (``.toml`` or ``.json``), or the built-in one for None."""
    if path is None:
        return default_policy()
    p = Path(path)
    if p.suffix.lower() not in (".toml", ".json"):
        raise PolicyError(f"{p}: a policy file must end in .toml or .json")
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise PolicyError(f"no such policy file: {p}") from None
    except (OSError, UnicodeError) as e:
        raise PolicyError(f"cannot read policy file {p}: {e}") from None
    if p.suffix.lower() == ".json":
        try:
            d = json.loads(text)
        except ValueError as e:
            raise PolicyError(f"{p}: not valid JSON: {e}") from None
    else:
        import tomllib

        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise PolicyError(f"{p}: not valid TOML: {e}") from None
    return policy_from_dict(d, str(p))


# ----------------------------------------------------------------------------- decisions

@dataclass(frozen=True)
class Decision:
    """One report, as the controller sees it. ``level``/``location`` are names (location
    None: no location head); ``certain`` is False when the helmet said uncertain."""

    level: str | None
    location: str | None
    confidence: float  # 0-1: the lowest of the heads present
    certain: bool


def decision_from_report(r: dict, level_names: list[str], location_names: list[str]) -> Decision:
    """Decision of a wire.unpack_report dict, with the helmet's label names."""
    lv, loc = r["level"], r["location"]
    certain = r["reasons"] == 0 and lv >= 0 and loc != wire.UNCERTAIN
    level = level_names[lv] if 0 <= lv < len(level_names) else None
    location = location_names[loc] if 0 <= loc < len(location_names) else None
    confs = [r["level_conf"]] + ([r["location_conf"]] if loc != wire.NO_HEAD else [])
    if level is None or (loc >= 0 and location is None):
        certain = False  # an index outside the names the helmet announced
    return Decision(level, location, min(confs) / 255.0, certain)


@dataclass(frozen=True)
class Output:
    """The controller's answer for one tick."""

    intensity: float
    program: str | None
    state: str  # waiting, tracking, switching, hold, ramp_down, failsafe, lost, stopping
    target: float


class SafetyController:
    """Decisions + signs of life + clock -> stimulator output, inside the policy's limits.

    Call :meth:`alive` for every heartbeat or report, :meth:`decide` for every report,
    :meth:`link_lost` when the port is gone, :meth:`stop` to end; then :meth:`tick` at a
    fixed rate, independent of report arrival. ``now`` is seconds on a monotonic clock.
    """

    def __init__(self, policy: Policy, now: float) -> None:
        self.policy = policy
        self.limits = policy.limits
        self.intensity = 0.0
        self.program: str | None = None
        self.state = "waiting"
        self._t = now
        self._last_alive = now
        self._decision: Decision | None = None
        self._uncertain_since: float | None = None
        self._lost = False
        self._stopping = False

    # ------------------------------------------------------------------ inputs
    def alive(self, when: float) -> None:
        """A heartbeat or report arrived at ``when`` (after a silence: the next report decides)."""
        if when > self._last_alive:
            self._last_alive = when

    def decide(self, d: Decision, when: float) -> None:
        """A report arrived: follow it if it is certain and confident enough."""
        self.alive(when)
        if self._lost:
            return
        if d.certain and d.confidence >= self.limits.min_confidence:
            self._decision = d
            self._uncertain_since = None
        elif self._uncertain_since is None:
            self._uncertain_since = when

    def not_streaming(self, when: float) -> None:
        """The helmet is alive but not acquiring: no decisions will come, treat as uncertain."""
        if self._uncertain_since is None:
            self._uncertain_since = when

    def link_lost(self, when: float) -> None:
        """The port is gone: fail-safe at once, for good."""
        self._lost = True

    def stop(self) -> None:
        """End the session: ramp to zero at the fail-safe rate."""
        self._stopping = True

    @property
    def silence(self) -> float:
        """Seconds since the last sign of life, as of the last tick."""
        return self._t - self._last_alive

    # ------------------------------------------------------------------ the tick
    def _goal(self, now: float) -> tuple[float, str | None, float, str]:
        """(target intensity, wanted program, rate %/s, state) before program switching."""
        lim = self.limits
        if self._lost:
            return 0.0, None, lim.failsafe_rate, "lost"
        if now - self._last_alive > lim.silence_s:
            self._decision = None  # only a report after the silence may raise the output again
            self._uncertain_since = None
            return 0.0, None, lim.failsafe_rate, "failsafe"
        if self._stopping:
            return 0.0, None, lim.failsafe_rate, "stopping"
        if self._uncertain_since is not None:
            if now - self._uncertain_since < lim.hold_s:
                return self.intensity, None, lim.max_ramp_per_s, "hold"
            return 0.0, None, lim.max_ramp_per_s, "ramp_down"
        if self._decision is None:
            return 0.0, None, lim.max_ramp_per_s, "waiting"
        t = self.policy.lookup(self._decision.level, self._decision.location)
        return t.intensity, t.program, lim.max_ramp_per_s, "tracking"

    def tick(self, now: float) -> Output:
        """Advance to ``now`` and return the output to apply until the next tick."""
        dt = max(0.0, now - self._t)
        self._t = now
        lim = self.limits
        target, program, rate, state = self._goal(now)
        target = min(max(target, 0.0), lim.max_intensity)
        if program is not None and program != self.program:
            if self.intensity <= 0.0 or self.program is None:
                self.program = program  # at zero: switch now
            else:
                target, state = 0.0, "switching"  # down through zero first
        step = rate * dt
        if self.intensity < target:
            self.intensity = min(target, self.intensity + step)
        elif self.intensity > target:
            self.intensity = max(target, self.intensity - step)
        self.intensity = min(max(self.intensity, 0.0), lim.max_intensity)  # the clamp, whatever happened
        if state == "switching" and self.intensity <= 0.0:
            self.program, state = program, "tracking"
        self.state = state
        return Output(self.intensity, self.program, state, target)
