"""A simulated ADS1299 daisy chain behind fake ``machine.SPI`` / ``machine.Pin`` objects.

``SimADS1299(n_devices, ...)`` makes ``.spi``, ``.cs`` and ``.drdy``; hand them to
``ads1299.ADS1299`` as if they were the board's bus and pins. The simulator is a second,
independent reading of the datasheet (it does not import the driver): it decodes the bytes
clocked in while CS is low like the chip does (RESET, SDATAC/RDATAC, START/STOP, RREG,
WREG with their count byte; register commands ignored in RDATAC mode, as on the chip),
keeps one register file that every chip in the chain shares, answers ID, and from START on
completes a conversion every ``1 / data rate`` of ``clock`` (from CONFIG1's DR bits), pulls
DRDY low and fires the pin's IRQ handler once per conversion. A read in RDATAC mode
shifts out the newest conversion (status + 8 channels per chip, chip 0 first); reading
before START, or outside RDATAC, gives zeros (so a driver that skips a step sees frames
without the ``1100`` status header). An SPI bus not in mode 1 shifts every byte by a bit.

The signal: ``signal`` (float32 µV, sample-major ``n_samples x 8 * n_devices``, looped),
converted at START with each channel's programmed gain and MUX (electrode input: the
signal; input shorted or powered down: 0); or ``codes`` (24-bit ints, served as they are);
by default a sine per channel (``5 + ch`` µV at ``4 + ch % 20`` Hz) plus seeded noise, one
second long. Serving a frame allocates nothing, so the driver's memory can be measured
through it. Like a bench, the simulator keeps counts for tests (``served``,
``overwritten``, ``ignored_commands``, ``bad_writes``) and the last served ``index``.

No interrupt can preempt Python here, so DRDY edges (and IRQ calls) are caught up whenever
the driver touches the bus or a pin, or when the bench calls ``advance()``.
"""

import math
from array import array

# the chip, from the datasheet
_CMD_WAKEUP = 0x02
_CMD_STANDBY = 0x04
_CMD_RESET = 0x06
_CMD_START = 0x08
_CMD_STOP = 0x0A
_CMD_RDATAC = 0x10
_CMD_SDATAC = 0x11
_CMD_RDATA = 0x12
_N_REGS = 24
# power-up values: ID, CONFIG1..3, LOFF, CH1SET..CH8SET, BIAS_SENSP/N, LOFF_SENSP/N,
# LOFF_FLIP, LOFF_STATP/N, GPIO, MISC1, MISC2, CONFIG4
_DEFAULTS = (0x3E, 0x96, 0xC0, 0x60, 0x00) + (0x61,) * 8 + (0,) * 7 + (0x0F, 0, 0, 0)
_READ_ONLY = (0x00, 0x12, 0x13)
_RATES = (16000, 8000, 4000, 2000, 1000, 500, 250, 250)  # DR 111 is reserved
_GAINS = (1, 2, 4, 6, 8, 12, 24, 24)  # GAIN 111 is reserved
_VREF = 4.5
# bits a write must give these registers ("reserved, always write ..."): (mask, value)
_RESERVED = {0x01: (0x98, 0x90), 0x02: (0xE8, 0xC0), 0x03: (0x60, 0x60)}

try:  # one definition of the clock (clock.py)
    from .clock import ticks_us, ticks_diff
except ImportError:
    from clock import ticks_us, ticks_diff


class FakeClock:
    """A microsecond clock a test moves by hand: pass ``clock.now`` as ``clock``."""

    def __init__(self, t=0):
        self.t = t

    def now(self):
        return self.t

    def advance_us(self, us):
        self.t += us


class SimPin:
    """The ``machine.Pin`` subset the driver uses: ``value`` and ``irq``."""

    IN = 0
    OUT = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, sim, role):
        self._sim = sim
        self._role = role

    def value(self, v=None):
        sim = self._sim
        if self._role == "cs":
            if v is None:
                return sim._cs
            sim._set_cs(1 if v else 0)
            return None
        if v is not None:
            raise ValueError("DRDY is an input")
        sim.advance()
        return 0 if sim._started and sim._n_conv > sim._n_latched else 1

    def irq(self, handler=None, trigger=IRQ_FALLING, hard=False):
        if self._role != "drdy":
            raise ValueError("only DRDY has an interrupt here")
        self._sim._irq = handler
        self._sim._irq_trigger = trigger
        return None


class SimSPI:
    """The ``machine.SPI`` subset: ``write``, ``readinto``, ``write_readinto``."""

    def __init__(self, sim, baudrate=1000000, polarity=0, phase=1):
        self._sim = sim
        self.baudrate = baudrate
        self.mode = (polarity << 1) | phase

    # (``sim._xfer(...)`` each time: a bound method kept in a local would be an allocation)
    def write(self, buf):
        sim = self._sim
        for i in range(len(buf)):
            sim._xfer(buf[i], self.mode)

    def readinto(self, buf, write=0):
        sim = self._sim
        for i in range(len(buf)):
            buf[i] = sim._xfer(write, self.mode)

    def write_readinto(self, wbuf, rbuf):
        sim = self._sim
        for i in range(len(wbuf)):
            rbuf[i] = sim._xfer(wbuf[i], self.mode)


class SimADS1299:
    """``n_devices`` simulated ADS1299 in a daisy chain; see the module notes.

    Parameters
    ----------
    n_devices : int
    signal : array('f') | list | None
        µV, sample-major, ``n_samples * 8 * n_devices`` values, looped.
    codes : array('i') | list | None
        24-bit codes instead of ``signal``, same layout, served as they are.
    device_id : int
        What the ID register answers (0x3E: an ADS1299).
    clock : callable | None
        Microsecond ticks (default ``time.ticks_us``; ``FakeClock().now`` in tests).
    noise_uV : float
        Peak of the default signal's uniform noise.
    seed : int
    baudrate, polarity, phase
        The bus's settings (as given to ``machine.SPI``); the chip needs mode 1.
    """

    def __init__(self, n_devices=1, signal=None, codes=None, device_id=0x3E, clock=None,
                 noise_uV=1.0, seed=1, baudrate=4000000, polarity=0, phase=1):
        self.n_devices = n_devices
        self.n_ch = 8 * n_devices
        self._signal = signal
        self._codes_in = codes
        self.device_id = device_id
        self._clock = clock or ticks_us
        self.noise_uV = noise_uV
        self.seed = seed
        self.spi = SimSPI(self, baudrate, polarity, phase)
        self.cs = SimPin(self, "cs")
        self.drdy = SimPin(self, "drdy")
        self._frame = bytearray(27 * n_devices)
        self._loff = array("i", [0] * n_devices)  # per chip: LOFF_STATP << 8 | LOFF_STATN
        self._codes = None
        self._n_table = 0
        self._irq = None
        self._irq_trigger = 0
        self._in_advance = False
        self._cs = 1
        self._last_out = 0
        self.served = 0
        self.overwritten = 0
        self.ignored_commands = 0
        self.bad_writes = 0
        self.index = -1
        self.power_up()

    # --- chip state ---

    def power_up(self):
        """Registers to their defaults, RDATAC mode, conversions stopped (also RESET)."""
        self.regs = bytearray(_DEFAULTS)
        self.regs[0] = self.device_id
        self.rdatac = True
        self._started = False
        self._n_conv = 0
        self._n_latched = 0
        self._acc = 0
        self._t = self._clock()
        self._state = 0  # 0: opcode, 1: count byte of RREG/WREG, 2: WREG data, 3: RREG data
        self._reg = 0
        self._left = 0
        self._write = False
        self._pos = 0
        self._rdata = False

    @property
    def rate(self):
        """Samples per second from CONFIG1's DR bits."""
        return _RATES[self.regs[1] & 7]

    def gain(self, ch):
        """PGA gain of channel ``ch`` (0..7) from CHnSET."""
        return _GAINS[(self.regs[5 + ch] >> 4) & 7]

    def lsb_uv(self, ch):
        return 2.0 * _VREF / self.gain(ch) / 16777216.0 * 1e6

    def set_lead_off(self, device, statp, statn):
        """The LOFF_STATP / LOFF_STATN bits chip ``device`` reports from now on."""
        self._loff[device] = (statp << 8) | statn
        if device == 0:
            self.regs[0x12] = statp
            self.regs[0x13] = statn

    def _default_signal(self, n):
        n_ch = self.n_ch
        sig = array("f", [0.0] * (n * n_ch))
        x = self.seed & 0x7FFFFFFF or 1
        for t in range(n):
            for ch in range(n_ch):
                x = (x * 1103515245 + 12345) & 0x7FFFFFFF
                noise = (x / 1073741824.0 - 1.0) * self.noise_uV
                sig[t * n_ch + ch] = (5.0 + ch) * math.sin(2 * math.pi * (4 + ch % 20) * t / n) + noise
        return sig

    def _build_codes(self):
        """At START: the code of every (sample, channel), from the programmed gains and MUX."""
        n_ch = self.n_ch
        if self._codes_in is not None:
            self._codes = self._codes_in
            self._n_table = len(self._codes_in) // n_ch
            return
        sig = self._signal
        if sig is None:  # 1 s, or 1000 samples above 1 kHz (the frequencies then scale)
            sig = self._default_signal(min(self.rate, 1000))
        n = len(sig) // n_ch
        codes = array("i", [0] * (n * n_ch))
        for ch in range(n_ch):
            chset = self.regs[5 + ch % 8]
            if chset & 0x80 or chset & 7 != 0:  # powered down or not the electrode input
                continue
            lsb = self.lsb_uv(ch % 8)
            for t in range(n):
                c = int(math.floor(sig[t * n_ch + ch] / lsb + 0.5))
                codes[t * n_ch + ch] = -8388608 if c < -8388608 else 8388607 if c > 8388607 else c
        self._codes = codes
        self._n_table = n

    def advance(self):
        """Complete the conversions due by now: DRDY low, one IRQ call each."""
        if self._in_advance:
            return
        now = self._clock()
        dt = ticks_diff(now, self._t)
        self._t = now
        if not self._started or dt <= 0:
            return
        self._acc += dt * self.rate
        k = self._acc // 1000000
        if k <= 0:
            return
        self._acc -= k * 1000000
        self._in_advance = True
        try:
            for _ in range(k):
                self._n_conv += 1
                if self._irq is not None and self._irq_trigger & SimPin.IRQ_FALLING:
                    self._irq(self.drdy)
        finally:
            self._in_advance = False

    def _latch(self):
        """Put the newest conversion in the output frame (DRDY goes high)."""
        fr = self._frame
        if not self._started or self._n_conv == 0:
            for i in range(len(fr)):
                fr[i] = 0
            return
        idx = self._n_conv - 1
        if self._n_latched < idx:
            self.overwritten += idx - self._n_latched
        self._n_latched = self._n_conv
        self.index = idx
        self.served += 1
        n_ch = self.n_ch
        base = (idx % self._n_table) * n_ch
        codes = self._codes
        p = 0
        for d in range(self.n_devices):
            lo = self._loff[d]
            sp = lo >> 8
            sn = lo & 0xFF
            fr[p] = 0xC0 | (sp >> 4)  # 1100, LOFF_STATP, LOFF_STATN, GPIO (reads 0)
            fr[p + 1] = ((sp & 0x0F) << 4) | (sn >> 4)
            fr[p + 2] = (sn & 0x0F) << 4
            p += 3
            for c in range(8):
                v = codes[base + d * 8 + c] & 0xFFFFFF
                fr[p] = v >> 16
                fr[p + 1] = (v >> 8) & 0xFF
                fr[p + 2] = v & 0xFF
                p += 3

    # --- the bus ---

    def _set_cs(self, v):
        if v == self._cs:
            return
        self.advance()
        self._cs = v
        if v == 0:  # a transaction begins
            self._pos = 0
        else:
            self._state = 0  # CS high resets the serial interface
            self._rdata = False

    def _xfer(self, b_in, mode):
        """One byte clocked: return the byte on DOUT, decode the byte on DIN."""
        self.advance()
        if self._cs:
            return 0xFF  # not selected: DOUT is high-impedance (reads as pulled up)
        out = 0
        st = self._state
        if st == 3:  # RREG answer
            out = self.regs[self._reg] if self._reg < _N_REGS else 0
            self._reg += 1
            self._left -= 1
            if self._left == 0:
                self._state = 0
        elif self.rdatac or self._rdata:
            if self._pos == 0:
                self._latch()
            out = self._frame[self._pos] if self._pos < len(self._frame) else 0
            self._pos += 1
        if st != 3:
            self._decode(b_in)
        if mode != 1:  # sampled on the wrong edge: one bit late
            shifted = ((self._last_out & 1) << 7) | (out >> 1)
            self._last_out = out
            return shifted
        return out

    def _decode(self, b):
        st = self._state
        if st == 0:
            if b & 0xE0 == 0x20 or b & 0xE0 == 0x40:  # RREG / WREG: address now, count next
                if self.rdatac:
                    self.ignored_commands += 1
                    return
                self._write = b & 0xE0 == 0x40
                self._reg = b & 0x1F
                self._state = 1
            elif b == _CMD_RESET:
                self.power_up()
            elif b == _CMD_SDATAC:
                self.rdatac = False
            elif b == _CMD_RDATAC:
                self.rdatac = True
            elif b == _CMD_START:
                self._build_codes()
                self._started = True
                self._n_conv = 0
                self._n_latched = 0
                self._acc = 0
                self._t = self._clock()
            elif b == _CMD_STOP:
                self._started = False
            elif b == _CMD_RDATA:
                self._rdata = True
                self._pos = 0
            elif b == 0 or b == _CMD_WAKEUP or b == _CMD_STANDBY:
                pass
            else:
                self.ignored_commands += 1
        elif st == 1:
            self._left = (b & 0x1F) + 1
            self._state = 2 if self._write else 3
        elif st == 2:
            reg = self._reg
            if reg < _N_REGS and reg not in _READ_ONLY:
                rule = _RESERVED.get(reg)
                if rule is not None and b & rule[0] != rule[1]:
                    self.bad_writes += 1
                self.regs[reg] = b
            self._reg += 1
            self._left -= 1
            if self._left == 0:
                self._state = 0
