"""The treatment policy and safety controller, with a fake clock (no I/O, no helmet)."""

from __future__ import annotations

import json

import pytest

from painhelm.firmware import wire
from painhelm.host_tools.treat_policy import (Decision, Limits, Policy, PolicyError, Rule, SafetyController,
                                              decision_from_report, default_policy, load_policy)

LEVELS = ["none", "low", "moderate", "high"]
LOCATIONS = ["left_hand", "right_hand"]
DT = 0.02


def policy(**limits) -> Policy:
    return Policy(Limits(**limits), [Rule("none", "*", 0.0, None), Rule("low", "*", 20.0, "tens"),
                                     Rule("high", "left_hand", 40.0, "tens"),
                                     Rule("high", "right_hand", 40.0, "burst")]).check()


def sure(level: str, location: str = "left_hand", conf: float = 0.9) -> Decision:
    return Decision(level, location, conf, True)


class Run:
    """A controller on a fake clock that hears a heartbeat every 0.25 s unless ``silent``."""

    def __init__(self, p: Policy) -> None:
        self.t = 0.0
        self.c = SafetyController(p, 0.0)
        self.silent = False
        self.out = self.c.tick(0.0)

    def run(self, seconds: float, decision: Decision | None = None, every: float = 0.5) -> list:
        outs = []
        end = self.t + seconds
        next_report = self.t
        while self.t < end - 1e-9:
            self.t = round(self.t + DT, 6)
            if not self.silent and abs(self.t / 0.25 - round(self.t / 0.25)) < 1e-6:
                self.c.alive(self.t)
            if decision is not None and not self.silent and self.t >= next_report:
                self.c.decide(decision, self.t)
                next_report += every
            self.out = self.c.tick(self.t)
            outs.append(self.out)
        return outs


def test_ramp_up_is_rate_limited_and_reaches_the_table_value():
    r = Run(policy(max_ramp_per_s=10.0))
    outs = r.run(1.0, sure("low"))
    assert outs[-1].state == "tracking" and outs[-1].program == "tens"
    assert outs[-1].intensity == pytest.approx(10.0 - 10.0 * DT, abs=0.25)  # 10 %/s, from the first report
    steps = [b.intensity - a.intensity for a, b in zip(outs, outs[1:])]
    assert max(steps) <= 10.0 * DT + 1e-9
    r.run(2.0, sure("low"))
    assert r.out.intensity == 20.0  # reached, and held there


def test_max_intensity_clamps_every_output():
    p = policy(max_intensity=40.0, max_ramp_per_s=100.0)
    r = Run(p)
    outs = r.run(2.0, sure("high"))
    assert max(o.intensity for o in outs) == 40.0
    # a table entry above the limit is refused by name, not silently clamped
    with pytest.raises(PolicyError, match=r"rule 2 \(low/\*\): intensity 50 is outside \[0, limits.max_intensity = 40\]"):
        Policy(Limits(max_intensity=40.0), [Rule("none", "*", 0, None), Rule("low", "*", 50, "tens")]).check()


def test_low_confidence_is_uncertain_hold_then_ramp_down():
    r = Run(policy(max_ramp_per_s=20.0, min_confidence=0.6, hold_s=1.0))
    r.run(2.0, sure("low"))
    assert r.out.intensity == 20.0
    outs = r.run(0.9, sure("high", conf=0.55))  # confident-looking, but below min_confidence
    assert {o.state for o in outs} == {"hold"} and all(o.intensity == 20.0 for o in outs)
    outs = r.run(0.5, sure("high", conf=0.55))
    assert outs[-1].state == "ramp_down"
    assert outs[-1].intensity == pytest.approx(20.0 - 20.0 * 0.4, abs=0.5)  # at max_ramp_per_s after the hold
    r.run(1.0, sure("high", conf=0.55))
    assert r.out.intensity == 0.0
    # a confident report ends the uncertainty
    r.run(0.5, sure("low"))
    assert r.out.state == "tracking" and r.out.intensity > 0


def test_helmet_uncertain_flag_holds_too():
    r = Run(policy(max_ramp_per_s=40.0, hold_s=0.5))
    r.run(1.0, sure("low"))
    outs = r.run(0.4, Decision("low", "left_hand", 0.99, False))
    assert outs[-1].state == "hold" and outs[-1].intensity == 20.0


def test_silence_is_a_fast_failsafe_and_needs_a_new_report():
    lim = dict(max_intensity=60.0, max_ramp_per_s=50.0, silence_s=0.5, failsafe_ramp_s=0.25)
    r = Run(policy(**lim))
    r.run(2.0, sure("high"))
    assert r.out.intensity == 40.0
    r.silent = True
    last_alive = 2.0
    outs = r.run(1.0)
    first_fs = next(i for i, o in enumerate(outs) if o.state == "failsafe")
    t_detect = 2.0 + DT * (first_fs + 1)
    assert t_detect - last_alive == pytest.approx(0.5, abs=DT + 1e-6)
    t_zero = 2.0 + DT * (next(i for i, o in enumerate(outs) if o.intensity == 0.0) + 1)
    assert t_zero - t_detect <= 0.25 * 40 / 60 + DT  # max_intensity in failsafe_ramp_s
    assert t_zero - last_alive < 1.0
    # heartbeats come back: still zero until a report says what to do
    r.silent = False
    outs = r.run(1.0)
    assert all(o.intensity == 0.0 for o in outs) and outs[-1].state == "waiting"
    r.run(0.5, sure("high"))
    assert r.out.state == "tracking" and 0 < r.out.intensity < 40.0  # from zero, at the ordinary rate


def test_link_lost_goes_to_zero_and_stays():
    r = Run(policy(max_ramp_per_s=100.0))
    r.run(1.0, sure("high"))
    r.c.link_lost(r.t)
    outs = r.run(0.3, sure("high"))  # even if stale frames are still decoded
    assert outs[0].state == "lost" and outs[-1].intensity == 0.0
    assert sum(1 for o in outs if o.intensity > 0) * DT <= 0.25 * 40 / 60 + 1e-9


def test_program_changes_only_at_zero():
    r = Run(policy(max_ramp_per_s=40.0))
    r.run(2.0, sure("high", "left_hand"))
    assert (r.out.intensity, r.out.program) == (40.0, "tens")
    outs = r.run(3.0, sure("high", "right_hand"))  # same level, other program
    programs = [(o.program, o.intensity) for o in outs]
    switch = next(i for i, (p, _) in enumerate(programs) if p == "burst")
    assert programs[switch][1] == 0.0 and programs[switch - 1][0] == "tens"  # switched at zero
    assert [i for _, i in programs[:switch]] == sorted((i for _, i in programs[:switch]), reverse=True)  # down first
    assert outs[0].state == "switching" and outs[-1].state == "tracking" and outs[-1].intensity == 40.0


def test_not_streaming_and_user_stop():
    r = Run(policy(max_ramp_per_s=40.0, hold_s=0.2))
    r.run(1.0, sure("low"))
    r.c.not_streaming(r.t)
    outs = r.run(1.0)
    assert outs[0].state == "hold" and outs[-1].intensity == 0.0
    r.run(1.0, sure("low"))
    r.c.stop()
    outs = r.run(0.2, sure("low"))
    assert outs[0].state == "stopping" and outs[-1].intensity == 0.0


def test_limits_are_checked_by_name():
    with pytest.raises(PolicyError, match=r"limits.silence_s = 1.5: must be in \[0.3, 1\] s"):
        Limits(silence_s=1.5).check()
    with pytest.raises(PolicyError, match="limits.failsafe_ramp_s = 0.5"):
        Limits(failsafe_ramp_s=0.5).check()
    with pytest.raises(PolicyError, match="plus failsafe_ramp_s"):
        Limits(silence_s=0.9, failsafe_ramp_s=0.2).check()
    with pytest.raises(PolicyError, match="limits.min_confidence"):
        Limits(min_confidence=1.5).check()
    assert Limits().failsafe_rate == 60.0 / 0.25


def test_policy_files(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('[limits]\nmax_intensity = 50\nmax_ramp_per_s = 5\n\n'
                    '[[rule]]\nlevel = "none"\nintensity = 0\n\n'
                    '[[rule]]\nlevel = "high"\nlocation = "left_hand"\nintensity = 45\nprogram = "burst_left"\n')
    p = load_policy(toml)
    assert p.limits.max_intensity == 50 and p.limits.silence_s == 0.5
    assert p.lookup("high", "left_hand").intensity == 45 and p.lookup("high", "right_hand").intensity == 0
    assert p.check_names(LEVELS, LOCATIONS) == ["policy has no rule for level 'low': it gets intensity 0",
                                                "policy has no rule for level 'moderate': it gets intensity 0"]
    # the recorded form loads back to the same policy
    js = tmp_path / "p.json"
    js.write_text(json.dumps(p.to_dict()))
    assert load_policy(js).to_dict() == p.to_dict()
    bad = {
        '[[rule]]\nlevel = "high"\nintensity = 99\nprogram = "x"\n': r"rule 1 \(high/\*\): intensity 99 is outside",
        '[[rule]]\nlevel = "high"\nintensity = 10\n': r"rule 1 \(high/\*\): intensity 10 needs a program",
        '[[rule]]\nlevel = "high"\nintensity = 10\nprogram = "x"\nspeed = 3\n': "rule 1: unknown key 'speed'",
        '[limits]\nmax_intnsity = 3\n[[rule]]\nlevel = "none"\nintensity = 0\n': "unknown limit 'max_intnsity'",
        '[limits]\nsilence_s = 2.0\n[[rule]]\nlevel = "none"\nintensity = 0\n': "limits.silence_s = 2.0",
        'level = "high"\n': "unknown section 'level'",
        '[[rule]\n': "not valid TOML",
    }
    for text, msg in bad.items():
        toml.write_text(text)
        with pytest.raises(PolicyError, match=msg):
            load_policy(toml)
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policy(tmp_path / "missing.toml")
    with pytest.raises(PolicyError, match="must end in .toml or .json"):
        load_policy(tmp_path / "p.yaml")
    # names are checked against the helmet's model
    toml.write_text('[[rule]]\nlevel = "severe"\nintensity = 10\nprogram = "x"\n')
    with pytest.raises(PolicyError, match=r"rule 1 \(severe/\*\): the helmet's model has no level 'severe' "
                                          r"\(its levels: none, low, moderate, high\)"):
        load_policy(toml).check_names(LEVELS, LOCATIONS)


def test_default_policy_and_decisions():
    p = default_policy()
    assert p.check_names(LEVELS, LOCATIONS) == []
    assert p.lookup("high", "right_hand").program == "burst_right"
    r = {"level": 3, "location": 1, "level_conf": 204, "location_conf": 153, "reasons": 0}
    assert decision_from_report(r, LEVELS, LOCATIONS) == Decision("high", "right_hand", 0.6, True)
    assert not decision_from_report(dict(r, location=wire.UNCERTAIN, reasons=4), LEVELS, LOCATIONS).certain
    d = decision_from_report(dict(r, location=wire.NO_HEAD, location_conf=0), LEVELS, LOCATIONS)
    assert d == Decision("high", None, 0.8, True)
    assert not decision_from_report(dict(r, level=7), LEVELS, LOCATIONS).certain
