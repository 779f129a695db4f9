"""The stimulator output stage: the interface a real driver implements, and a simulated one.

The treatment loop (``treat.py``) calls :meth:`StimulatorOutput.set` once per control tick
(50 Hz by default) with the intensity the safety controller allows, and
:meth:`StimulatorOutput.off` when it must stop at once (a crash, a second Ctrl-C). A real
driver must:

* make ``set`` quick and non-blocking (a few ms at most): a late tick delays the fail-safe;
* treat ``intensity`` as % of the stage's range (0-100) and never exceed it;
* switch ``program`` only when told, and only at zero intensity (the controller guarantees
  that it asks for a switch only there);
* run its own hardware watchdog: if ``set`` is not called for about 100 ms (the host
  crashed, the cable came out) the stage goes to zero by itself. The host's fail-safe
  covers a silent helmet; only the stage itself can cover a dead host;
* make ``off`` force zero output immediately, and never raise.

No stimulator hardware exists here, so :class:`SimulatedOutput` stands in for it: it records
everything it was told, which the tests and the ramp-down benchmark read.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["StimulatorOutput", "SimulatedOutput", "make_output", "OUTPUTS"]


class StimulatorOutput(Protocol):
    """What the treatment loop needs from an output stage."""

    def set(self, intensity: float, program: str | None) -> None:
        """Apply ``intensity`` (% of range, 0-100) with ``program`` (None: no program yet)."""

    def off(self) -> None:
        """Zero output now; must not raise."""

    def close(self) -> None:
        """Release the hardware (after ``off``)."""


class SimulatedOutput:
    """An output stage that records what it was told: ``history`` holds
    ``(time.monotonic(), intensity, program)`` for every change; ``intensity`` and
    ``program`` are the current values. Thread-safe, so a test can watch it while the
    treatment loop runs in another thread."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.intensity = 0.0
        self.program: str | None = None
        self.history: list[tuple[float, float, str | None]] = []
        self.calls = 0
        self.closed = False
        self._lock = threading.Lock()

    def set(self, intensity: float, program: str | None) -> None:
        if not 0.0 <= intensity <= 100.0:
            raise ValueError(f"intensity {intensity} is outside 0-100 %")
        with self._lock:
            self.calls += 1
            if intensity != self.intensity or program != self.program:
                self.intensity, self.program = float(intensity), program
                self.history.append((self.clock(), self.intensity, program))

    def off(self) -> None:
        with self._lock:
            if self.intensity != 0.0:
                self.intensity = 0.0
                self.history.append((self.clock(), 0.0, self.program))

    def close(self) -> None:
        self.off()
        self.closed = True

    def first_zero_after(self, t: float) -> float | None:
        """The time the output first read zero at or after ``t`` (None: not yet)."""
        with self._lock:
            if self.intensity == 0.0 and (not self.history or self.history[-1][0] < t):
                return t
            for when, intensity, _ in self.history:
                if when >= t and intensity == 0.0:
                    return when
        return None

    def peak(self) -> float:
        """The highest intensity it was ever told."""
        with self._lock:
            return max((h[1] for h in self.history), default=0.0)


OUTPUTS = {"sim": SimulatedOutput}


def make_output(kind: str) -> StimulatorOutput:
    """The output stage called ``kind`` (only ``sim`` exists until a driver is written)."""
    if kind not in OUTPUTS:
        raise ValueError(f"unknown output stage {kind!r} (known: {', '.join(OUTPUTS)})")
    return OUTPUTS[kind]()
