"""A recording on the device's filesystem played back as a source (``sources`` interface)."""


try:  # imported as painhelm.firmware.source_playback on a host
    from . import recording
    from .sources import Source
except ImportError:  # flat on the helmet's filesystem
    import recording
    from sources import Source

try:  # one definition of the clock (clock.py)
    from .clock import ticks_ms, ticks_diff
except ImportError:
    from clock import ticks_ms, ticks_diff


class PlaybackSource(Source):
    """A recording (``recording`` format) played back as if it were being acquired.

    Parameters
    ----------
    path : str
        The recording on the filesystem.
    realtime : bool
        Pace by ``ticks_ms`` at the recording's ``sfreq``; False: every ``read`` gets
        ``max_n`` samples (as fast as it is called).
    loop : bool
        Start over at the end; otherwise ``finished`` turns True and ``read`` returns 0.
    max_backlog : int | None
        In real time, samples that may wait unread (a front end's buffer, default one
        second); a caller that falls further behind loses the oldest, counted in ``dropped``.
    clock : callable | None
        Millisecond ticks (default ``time.ticks_ms``).
    """

    def __init__(self, path, realtime=True, loop=False, max_backlog=None, clock=None):
        self._reader = recording.Reader(path)
        r = self._reader
        self.path = path
        self.n_ch = r.n_ch
        self.sfreq = r.sfreq
        self.ch_names = r.ch_names
        self.n_samples = r.n_samples
        if self.n_samples < 1:
            r.close()
            raise recording.RecordingError("%s holds no whole sample" % path)
        self.realtime = realtime
        self.loop = loop
        self.max_backlog = int(self.sfreq) if max_backlog is None else max_backlog
        self._clock = clock or ticks_ms
        self._rate_mhz = int(self.sfreq * 1000 + 0.5)  # samples per 1e6 ms
        self.running = False
        self.finished = False
        self.dropped = 0

    def start(self):
        self._reader.seek(0)
        self.dropped = 0
        self.finished = False
        self._due = 0
        self._acc = 0
        self._t = self._clock()
        self.running = True

    def stop(self):
        self.running = False

    def close(self):
        self.running = False
        self._reader.close()

    def _skip(self, k):
        pos = self._reader.pos + k
        if self.loop:
            pos %= self.n_samples
        elif pos > self.n_samples:
            pos = self.n_samples
        self._reader.seek(pos)

    def read(self, buf, max_n):
        if not self.running or self.finished:
            return 0
        n = max_n
        if self.realtime:
            now = self._clock()
            dt = ticks_diff(now, self._t)
            self._t = now
            if dt > 0:
                self._acc += dt * self._rate_mhz
                k = self._acc // 1000000
                self._acc -= k * 1000000
                self._due += k
            if self._due > self.max_backlog:
                skip = self._due - self.max_backlog
                self.dropped += skip
                self._skip(skip)
                self._due = self.max_backlog
            if self._due < n:
                n = self._due
        if n <= 0:
            return 0
        self._check_buf(buf, n)
        r = self._reader
        got = r.readinto(buf, n)
        if got == 0:  # at the end
            if not self.loop:
                self.finished = True
                return 0
            r.seek(0)
            got = r.readinto(buf, n)
        if self.realtime:
            self._due -= got
        return got
