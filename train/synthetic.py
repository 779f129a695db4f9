"""The built-in ``synthetic-pain`` dataset: a deterministic generator of labelled pain EEG.

It exists so that everything runs on a fresh machine without recordings, and it is the only
multi-subject raw EEG here, so leave-one-subject-out evaluation is exercised on it. It is a
simplified simulator, not a model of the brain; ``docs/synthetic.md`` documents every choice
and the literature it follows. In short, each trial is the sum of

- an aperiodic 1/f^chi background (per-subject exponent), mildly smoothed across
  neighbouring electrodes (volume conduction);
- a posterior alpha rhythm at the subject's peak frequency, and sensorimotor mu rhythms over
  C3/C4; frontal-midline theta; fronto-central and sensorimotor beta; frontal and
  somatosensory gamma (30-45 Hz). Every rhythm is narrow-band noise (it waxes and wanes)
  spread from a source site to the electrodes with a Gaussian fall-off;
- pain: with the level, alpha falls and theta, fronto-central beta and gamma rise, gradedly;
- location: the somatosensory cortex contralateral to the stimulated hand (C4 for the left
  hand, C3 for the right) loses extra mu-alpha and beta and gains gamma;
- subjects differ in alpha peak frequency, band amplitudes, aperiodic exponent, channel gains
  and how strongly they respond to pain;
- artifacts, with probability ``artifact_rate`` per trial: an eye blink, a muscle burst,
  line noise, a flat channel or a bad (very noisy) channel, named in the trial's metadata.

The same seed gives bitwise-identical data, labels and metadata. Each subject draws from its
own random streams (``SeedSequence([seed, subject])``), and artifacts from a stream of their
own, so subject S01 does not change when ``n_subjects`` does, and the clean EEG of a trial
does not change when ``artifact_rate`` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .dataset import Trials
from .topomap import montage_positions, standard_head_centre

logger = logging.getLogger(__name__)

CH_NAMES = ["Fp1", "Fp2", "F3", "Fz", "F4", "T7", "C3", "Cz", "C4", "T8",
            "P3", "Pz", "P4", "O1", "Oz", "O2"]
LEVEL_NAMES = ["none", "low", "moderate", "high"]
LEVEL_NAMES_5 = LEVEL_NAMES + ["unbearable"]
LOCATION_NAMES = ["left_hand", "right_hand"]
ARTIFACT_TYPES = ("blink", "muscle", "line_noise", "flat_channel", "bad_channel")
# MNE's standard 10-05 positions; MNE 1.13 renamed "standard_1005" (same positions) to this
MONTAGE = "colin27_1005"
NAME = "synthetic-pain"

_MIN_SFREQ = 100.0  # gamma reaches 45 Hz and must stay below Nyquist
_MIN_N_TIMES = 64

# Sources: (site electrode, spatial spread sigma in metres). A rhythm's amplitude at an
# electrode falls off as exp(-d^2 / 2 sigma^2) with the distance d from the site.
_SOURCES = {
    "alpha": (("POz", 0.07),),  # posterior alpha: one broad parieto-occipital generator
    "mu": (("C3", 0.035), ("C4", 0.035)),  # sensorimotor mu: left, right hemisphere
    "theta": (("Fz", 0.045),),  # frontal-midline theta
    "beta_fc": (("FCz", 0.09),),  # widespread, fronto-central maximum
    "beta_sm": (("C3", 0.035), ("C4", 0.035)),  # sensorimotor beta: left, right
    "gamma_f": (("AFz", 0.05),),  # (pre)frontal gamma of tonic pain
    "gamma_si": (("CP3", 0.035), ("CP4", 0.035)),  # primary somatosensory gamma: left, right
}
# RMS amplitude (µV) of each rhythm at its site, before subject and pain factors
_AMPLITUDE = {"alpha": 8.0, "mu": 4.0, "theta": 4.0, "beta_fc": 3.0, "beta_sm": 2.0,
              "gamma_f": 1.0, "gamma_si": 1.0}
_APERIODIC_AT_10HZ = 0.5  # background power density at 10 Hz, µV²/Hz, before subject factors
_BACKGROUND_SIGMA = 0.025  # smoothing of the background across electrodes, metres
_EYES = np.array([[-0.032, 0.095, -0.01], [0.032, 0.095, -0.01]])  # eyeball centres, head frame
_BLINK_DECAY = 0.04  # blink amplitude falls by 1/e per 4 cm further from the eyes


def _positions(names: list[str]) -> np.ndarray:
    table = montage_positions(MONTAGE)
    return np.array([table[n.lower()] for n in names])


@dataclass
class _Subject:
    """One simulated person: everything that differs between subjects."""

    alpha_hz: float  # individual alpha peak frequency
    mu_offset_hz: float  # mu peak relative to the alpha peak
    theta_hz: float
    beta_hz: float
    gamma_hz: float
    exponent: float  # aperiodic exponent chi
    background: float  # aperiodic power factor
    amplitude: dict  # rhythm name -> amplitude factor
    responsiveness: float  # how strongly this person's rhythms follow pain
    gains: np.ndarray  # (n_ch,) electrode gains


def _draw_subject(rng: np.random.Generator, n_ch: int) -> _Subject:
    # the order of draws is fixed: changing it changes every dataset made from a seed
    return _Subject(
        alpha_hz=float(np.clip(rng.normal(10.0, 0.8), 8.5, 12.0)),
        mu_offset_hz=float(rng.uniform(0.0, 1.0)),
        theta_hz=float(rng.uniform(5.0, 7.0)),
        beta_hz=float(rng.uniform(17.0, 23.0)),
        gamma_hz=float(rng.uniform(36.0, 40.0)),
        exponent=float(rng.uniform(1.3, 1.7)),
        background=float(np.exp(rng.normal(0.0, 0.1))),
        amplitude={k: float(np.exp(rng.normal(0.0, 0.08))) for k in _AMPLITUDE},
        responsiveness=float(np.exp(rng.normal(0.0, 0.1))),
        gains=rng.uniform(0.9, 1.1, n_ch),
    )


def _spectral_noise(rng: np.random.Generator, psd: np.ndarray, n_lead: tuple, sfreq: float,
                    n_times: int) -> np.ndarray:
    """Gaussian noise of a given one-sided power spectral density.

    ``psd`` (µV²/Hz) has shape (..., n_freqs) broadcastable to ``n_lead + (n_freqs,)``;
    the result (``n_lead + (n_times,)``) has expected variance ``sum(psd) * df``.
    """
    n_freqs = n_times // 2 + 1
    df = sfreq / n_times
    spec = rng.standard_normal(n_lead + (n_freqs,)) + 1j * rng.standard_normal(n_lead + (n_freqs,))
    # E|X_k|^2 = 2 c_k^2 and var = 2 |X_k|^2 / n^2 per positive bin -> c_k = n/2 sqrt(P_k df)
    spec *= 0.5 * n_times * np.sqrt(psd * df)
    spec[..., 0] = 0.0  # no DC offset
    return np.fft.irfft(spec, n=n_times, axis=-1)


def _peak(freqs: np.ndarray, f0: np.ndarray, bw: float) -> np.ndarray:
    """Gaussian spectral peak at ``f0`` (any shape, broadcast against ``freqs``) with unit area."""
    f0 = np.asarray(f0)[..., None]
    return np.exp(-0.5 * ((freqs - f0) / bw) ** 2) / (np.sqrt(2 * np.pi) * bw)


def _oscillation(rng: np.random.Generator, f0: np.ndarray, n_src: int, sfreq: float, n_times: int,
                 depth: float = 0.2, drift_hz: float = 0.3) -> np.ndarray:
    """A rhythm that waxes and wanes: unit-RMS sinusoids (n_trials, n_src, n_times) at ``f0``.

    The envelope is ``exp(depth * slow noise)`` and the frequency wanders by ``drift_hz``
    (sd), both through noise below ~1 Hz, so the rhythm stays a recognisable peak whose
    power still varies from trial to trial (a pure sinusoid would not, Gaussian narrow-band
    noise would vary far more than a sustained rhythm does).
    """
    n = len(f0)
    freqs = np.fft.rfftfreq(n_times, 1.0 / sfreq)
    slow = np.exp(-0.5 * (freqs / 0.5) ** 2)
    slow[0] = 0.0  # _spectral_noise drops DC; leave it out of the normalisation too
    slow /= slow.sum() * (sfreq / n_times)  # unit variance
    env = np.exp(depth * _spectral_noise(rng, slow, (n, n_src), sfreq, n_times))
    inst_f = np.asarray(f0)[:, None, None] + drift_hz * _spectral_noise(rng, slow, (n, n_src), sfreq, n_times)
    phase = rng.uniform(0, 2 * np.pi, (n, n_src, 1)) + 2 * np.pi * np.cumsum(inst_f, axis=-1) / sfreq
    x = env * np.sin(phase)
    return x / np.sqrt(0.5 * np.exp(2 * depth ** 2))  # E[env^2 sin^2] = exp(2 depth^2) / 2


def _spread(pos: np.ndarray, sites: tuple) -> np.ndarray:
    """Source-to-electrode weights (n_ch, n_src): Gaussian fall-off with distance from each site."""
    site_pos = _positions([s for s, _ in sites])
    sigma = np.array([sg for _, sg in sites])
    d2 = ((pos[:, None, :] - site_pos[None, :, :]) ** 2).sum(-1)
    return np.exp(-0.5 * d2 / sigma ** 2)


# Pain effects: amplitude factor 1 + k * q of each rhythm at pain intensity q (0 none, 1 high);
# negative k is suppression (floored at 10 %). "touch" is the contralateral mu suppression of
# any stimulation of the hand, painful or not.
_PAIN = {"alpha": -0.6, "theta": 3.0, "beta_fc": 2.5, "gamma_f": 1.5,
         "mu_contra": -0.6, "mu_ipsi": 0.1, "beta_contra": -0.5, "gamma_contra": 2.0, "touch": 0.2}


def _pain_factors(q: np.ndarray, location: np.ndarray, effect_size: float) -> dict[str, np.ndarray]:
    """Amplitude factors per rhythm, shape (n_trials, n_src) or (n_trials, 1), for pain intensity ``q``.

    ``q`` is the (scaled, subject-weighted) pain intensity, 0 for none and 1 for high;
    ``location`` 0 (left hand) makes the right hemisphere contralateral, 1 the left.
    """
    def factor(key):
        return np.clip(1.0 + _PAIN[key] * q, 0.1, None)

    right = (location == 0)[:, None]  # left hand -> right hemisphere (C4 / CP4) is contralateral
    ones = np.ones(len(q))

    def lateral(contra, ipsi):  # columns: left-hemisphere source, right-hemisphere source
        return np.where(right, np.stack([ipsi, contra], 1), np.stack([contra, ipsi], 1))

    touch = 1.0 - _PAIN["touch"] * effect_size
    return {
        "alpha": factor("alpha")[:, None],
        "mu": lateral(touch * factor("mu_contra"), factor("mu_ipsi")),
        "theta": factor("theta")[:, None],
        "beta_fc": factor("beta_fc")[:, None],
        "beta_sm": lateral(factor("beta_contra"), ones),
        "gamma_f": factor("gamma_f")[:, None],
        "gamma_si": lateral(factor("gamma_contra"), ones),
    }


def _clean_eeg(rng: np.random.Generator, subj: _Subject, pos: np.ndarray, level: np.ndarray,
               location: np.ndarray, sfreq: float, n_times: int, effect_size: float) -> tuple:
    """Artifact-free EEG (n_trials, n_ch, n_times) in µV, and each trial's pain intensity."""
    n, n_ch = len(level), len(pos)
    freqs = np.fft.rfftfreq(n_times, 1.0 / sfreq)

    # background: 1/f^chi, independent per electrode, then smoothed over neighbours
    f = np.maximum(freqs, 1.0)  # flat below 1 Hz instead of diverging at DC
    psd_bg = _APERIODIC_AT_10HZ * subj.background * (f / 10.0) ** -subj.exponent
    bg = _spectral_noise(rng, psd_bg, (n, n_ch), sfreq, n_times)
    d2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    smooth = np.exp(-0.5 * d2 / _BACKGROUND_SIGMA ** 2)
    smooth /= np.sqrt((smooth ** 2).sum(axis=1, keepdims=True))  # keeps each electrode's power
    x = np.einsum("cd,tdn->tcn", smooth, bg)

    # pain intensity: level 3 ("high") is 1; ratings within a level scatter a little
    intensity = np.clip(level / 3.0 + rng.normal(0.0, 0.06, n), 0.0, None)
    intensity[level == 0] = 0.0
    q = effect_size * subj.responsiveness * intensity
    factors = _pain_factors(q, location, effect_size)

    peaks = {  # (centre frequency per trial, bandwidth sd in Hz; None: a sustained rhythm)
        "alpha": (subj.alpha_hz + rng.normal(0.0, 0.15, n), None),
        "mu": (subj.alpha_hz + subj.mu_offset_hz + rng.normal(0.0, 0.15, n), None),
        "theta": (subj.theta_hz + rng.normal(0.0, 0.15, n), None),
        "beta_fc": (np.full(n, subj.beta_hz), 3.0),
        "beta_sm": (np.full(n, subj.beta_hz), 2.5),
        "gamma_f": (np.full(n, subj.gamma_hz), 4.0),
        "gamma_si": (np.full(n, subj.gamma_hz), 4.0),
    }
    for name, sites in _SOURCES.items():
        f0, bw = peaks[name]
        n_src = len(sites)
        if bw is None:
            src = _oscillation(rng, f0, n_src, sfreq, n_times)
        else:  # beta and gamma come in short bursts: narrow-band noise
            src = _spectral_noise(rng, _peak(freqs, f0, bw)[:, None, :], (n, n_src), sfreq, n_times)
        jitter = np.exp(rng.normal(0.0, 0.1, (n, n_src)))  # state fluctuation from trial to trial
        amp = _AMPLITUDE[name] * subj.amplitude[name] * factors[name] * jitter
        x += np.einsum("cs,tsn->tcn", _spread(pos, sites), src * amp[:, :, None])
    x *= subj.gains[None, :, None]
    return x, intensity


def _burst_envelope(n_times: int, start: int, length: int, ramp: int) -> np.ndarray:
    env = np.zeros(n_times)
    stop = min(n_times, start + length)
    env[start:stop] = 1.0
    ramp = max(1, min(ramp, (stop - start) // 2))
    edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    env[start:start + ramp] *= edge
    env[stop - ramp:stop] *= edge[::-1]
    return env


def _add_artifact(rng: np.random.Generator, kind: str, x: np.ndarray, pos: np.ndarray, ch_names: list[str],
                  sfreq: float, line_freq: float) -> list[str]:
    """Add one artifact of ``kind`` to ``x`` (n_ch, n_times) in place; return the channels made bad."""
    n_ch, n_times = x.shape
    t = np.arange(n_times) / sfreq
    if kind == "blink":
        # corneo-retinal dipole: a positive frontal deflection that decays away from the eyes
        d = np.linalg.norm(pos[:, None, :] - _EYES[None], axis=-1).min(axis=1)
        d_fp = np.linalg.norm(_positions(["Fp1"])[0] - _EYES[0])
        w = np.minimum(np.exp(-(d - d_fp) / _BLINK_DECAY), 1.5)
        wave = np.zeros(n_times)
        for _ in range(int(rng.integers(1, 3))):
            length = max(4, int(rng.uniform(0.2, 0.4) * sfreq))
            start = int(rng.integers(-length // 2, n_times - length // 2))
            k = np.arange(length)
            idx = start + k
            ok = (idx >= 0) & (idx < n_times)
            wave[idx[ok]] += rng.uniform(80.0, 200.0) * np.sin(np.pi * (k[ok] + 0.5) / length) ** 2
        x += w[:, None] * wave[None, :]
        return []
    if kind == "muscle":
        # temporalis EMG: broadband activity above 20 Hz, strongest at T7/T8, in a burst
        side = int(rng.integers(0, 3))  # 0 left, 1 right, 2 both
        sites = (("T7", 0.035),) if side == 0 else (("T8", 0.035),) if side == 1 else (("T7", 0.035), ("T8", 0.035))
        w = _spread(pos, sites).max(axis=1)
        freqs = np.fft.rfftfreq(n_times, 1.0 / sfreq)
        shape = 1.0 / (1.0 + np.exp(-(freqs - 20.0) / 2.0))  # smooth high-pass at 20 Hz
        shape /= shape.sum() * (sfreq / n_times)  # unit variance
        emg = _spectral_noise(rng, shape, (n_ch,), sfreq, n_times)
        length = int(rng.uniform(0.3, 1.0) * sfreq)
        start = int(rng.integers(0, max(1, n_times - length // 2)))
        env = _burst_envelope(n_times, start, length, int(0.05 * sfreq))
        x += rng.uniform(15.0, 40.0) * w[:, None] * emg * env[None, :]
        return []
    if kind == "line_noise":
        # mains pickup on every lead, larger where the electrode impedance is higher
        amp = rng.uniform(3.0, 15.0) * np.exp(rng.normal(0.0, 0.5, n_ch))
        phase = rng.uniform(0, 2 * np.pi) + rng.normal(0.0, 0.2, n_ch)
        x += amp[:, None] * np.sqrt(2) * np.sin(2 * np.pi * line_freq * t[None, :] + phase[:, None])
        return []
    c = int(rng.integers(0, n_ch))
    if kind == "flat_channel":
        x[c] = 0.0  # a disconnected or saturated lead after the amplifier's high-pass
        return [ch_names[c]]
    if kind == "bad_channel":
        # a loose electrode: large broadband noise and a slow drift
        drift = np.cumsum(rng.standard_normal(n_times))
        drift -= drift.mean()
        drift *= rng.uniform(20.0, 60.0) / (np.abs(drift).max() + 1e-12)
        x[c] += rng.uniform(60.0, 150.0) * rng.standard_normal(n_times) + drift
        return [ch_names[c]]
    raise AssertionError(kind)


def _check_args(n_subjects, windows_per_class, sfreq, n_times, seed, n_levels, ch_names, artifact_rate,
                artifact_types, line_freq, effect_size) -> list[str]:
    """Validate the arguments of :func:`make_synthetic`; return the channel names to use."""
    for name, value in (("n_subjects", n_subjects), ("windows_per_class", windows_per_class)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not np.isfinite(sfreq) or sfreq < _MIN_SFREQ:
        raise ValueError(f"sfreq must be >= {_MIN_SFREQ:g} Hz (gamma reaches 45 Hz), got {sfreq!r}")
    if isinstance(n_times, bool) or not isinstance(n_times, (int, np.integer)) or n_times < _MIN_N_TIMES:
        raise ValueError(f"n_times must be an integer >= {_MIN_N_TIMES}, got {n_times!r}")
    if n_levels not in (4, 5):
        raise ValueError(f"n_levels must be 4 ({', '.join(LEVEL_NAMES)}) or 5 (adds 'unbearable'), "
                         f"got {n_levels!r}")
    if not 0.0 <= artifact_rate <= 1.0:
        raise ValueError(f"artifact_rate must be between 0 and 1, got {artifact_rate!r}")
    unknown = [a for a in artifact_types if a not in ARTIFACT_TYPES]
    if unknown or (artifact_rate > 0 and not artifact_types):
        raise ValueError(f"artifact_types must be a non-empty selection of {list(ARTIFACT_TYPES)}, "
                         f"got {list(artifact_types)!r}")
    if not 0.0 < line_freq < sfreq / 2:
        raise ValueError(f"line_freq must be between 0 and sfreq/2 = {sfreq / 2:g} Hz, got {line_freq!r}")
    if not np.isfinite(effect_size) or effect_size < 0:
        raise ValueError(f"effect_size must be >= 0, got {effect_size!r}")
    if isinstance(ch_names, str):
        raise ValueError(f"ch_names must be a list of channel names, got the string {ch_names!r}")
    ch_names = list(CH_NAMES if ch_names is None else ch_names)
    if not ch_names or not all(isinstance(c, str) for c in ch_names):
        raise ValueError(f"ch_names must be a non-empty list of channel names, got {ch_names!r}")
    table = montage_positions(MONTAGE)
    missing = [c for c in ch_names if c.lower() not in table]
    if missing:
        raise ValueError(f"ch_names {missing} are not in the {MONTAGE} (standard 10-05) montage; "
                         f"allowed are its {len(table)} electrodes, e.g. Fp1, FCz, CP3, PO8")
    dup = sorted({c for c in ch_names if [x.lower() for x in ch_names].count(c.lower()) > 1})
    if dup:
        raise ValueError(f"ch_names must be unique, got {dup} more than once")
    return ch_names


def make_synthetic(n_subjects: int = 5, windows_per_class: int = 12, sfreq: float = 128.0,
                   n_times: int = 256, seed: int = 0, *, n_levels: int = 4, ch_names: list[str] | None = None,
                   artifact_rate: float = 0.0, artifact_types: tuple[str, ...] = ARTIFACT_TYPES,
                   line_freq: float = 50.0, effect_size: float = 1.0) -> Trials:
    """Generate the ``synthetic-pain`` dataset: labelled pain EEG trials of several subjects.

    Every subject gets ``windows_per_class`` trials of each (pain level, location) pair, in a
    shuffled order; subjects follow each other (S01 first). See ``docs/synthetic.md`` for the
    physiology and its literature.

    Parameters
    ----------
    n_subjects : int
        Number of simulated subjects, named "S01", "S02", ...
    windows_per_class : int
        Trials per subject, pain level and location.
    sfreq : float
        Sampling frequency in Hz (at least 100, so gamma up to 45 Hz is representable).
    n_times : int
        Samples per trial (at least 64).
    seed : int
        Seed (>= 0). The same arguments give bitwise-identical data, labels and metadata.
    n_levels : int
        4 (none, low, moderate, high) or 5 (adds "unbearable", beyond "high").
    ch_names : list of str | None
        Electrodes to simulate, any of the standard 10-05 montage (matched without regard to
        case); None gives 16 electrodes of the 10-20 system (:data:`CH_NAMES`).
    artifact_rate : float
        Probability (0-1) that a trial is contaminated by one artifact, drawn uniformly from
        ``artifact_types``. The clean EEG underneath does not depend on this value.
    artifact_types : tuple of str
        Artifacts to draw from: "blink", "muscle", "line_noise", "flat_channel", "bad_channel".
    line_freq : float
        Mains frequency of the line-noise artifact in Hz (50 or 60), below ``sfreq / 2``.
    effect_size : float
        Scales every pain and stimulation effect: 1 is the documented default, 0 makes labels
        unrelated to the EEG (a null dataset), values below 1 make the task harder.

    Returns
    -------
    trials : Trials
        ``data`` (n_subjects * n_levels * 2 * windows_per_class, n_ch, n_times) float32 in µV;
        ``pos`` head-frame positions from the ``colin27_1005`` montage; one session "1" per
        subject; ``metadata`` per trial: ``artifacts`` (names of injected artifacts), ``bads``
        (channels made flat or bad), ``pain_intensity`` (0 for none, 1 for high),
        ``alpha_peak_hz`` and ``aperiodic_exponent`` (the subject's true values).
    """
    ch_names = _check_args(n_subjects, windows_per_class, sfreq, n_times, seed, n_levels, ch_names,
                           artifact_rate, tuple(artifact_types), line_freq, effect_size)
    sfreq, n_times = float(sfreq), int(n_times)
    pos = _positions(ch_names)
    level_names = LEVEL_NAMES_5 if n_levels == 5 else LEVEL_NAMES
    cls_level = np.repeat(np.arange(n_levels), 2 * windows_per_class)
    cls_location = np.tile(np.repeat(np.arange(2), windows_per_class), n_levels)
    logger.info("synthetic-pain: %d subjects x %d trials, %d channels, %g Hz, %d samples, artifact_rate %g",
                n_subjects, len(cls_level), len(ch_names), sfreq, n_times, artifact_rate)

    data, level, location, subject, metadata = [], [], [], [], []
    for s in range(n_subjects):
        # separate streams: subject traits, clean EEG, artifacts
        rng_subject, rng_eeg, rng_art = (np.random.default_rng(c) for c in np.random.SeedSequence([seed, s]).spawn(3))
        subj = _draw_subject(rng_subject, len(ch_names))
        order = rng_eeg.permutation(len(cls_level))
        lv, loc = cls_level[order], cls_location[order]
        x, intensity = _clean_eeg(rng_eeg, subj, pos, lv, loc, sfreq, n_times, effect_size)
        contaminated = rng_art.random(len(lv)) < artifact_rate
        kinds = rng_art.integers(0, max(1, len(artifact_types)), len(lv))
        for i in range(len(lv)):
            meta = {"artifacts": [], "bads": [], "pain_intensity": round(float(intensity[i]), 4),
                    "alpha_peak_hz": round(subj.alpha_hz, 3), "aperiodic_exponent": round(subj.exponent, 3)}
            if contaminated[i]:
                kind = artifact_types[kinds[i]]
                meta["bads"] = _add_artifact(rng_art, kind, x[i], pos, ch_names, sfreq, line_freq)
                meta["artifacts"].append(kind)
            metadata.append(meta)
        data.append(x.astype(np.float32))
        level.append(lv)
        location.append(loc)
        subject += [f"S{s + 1:02d}"] * len(lv)
    # the table carries head-centred positions, like every reader (the simulation used the head frame)
    return Trials(np.concatenate(data), ch_names, sfreq, pos - standard_head_centre(MONTAGE), np.concatenate(level), np.concatenate(location),
                  np.array(subject), np.full(len(subject), "1"), list(level_names), list(LOCATION_NAMES),
                  montage=MONTAGE, metadata=metadata, name=NAME)
