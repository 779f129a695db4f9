"""TI ADS1299 EEG front end (8 channels, 24 bits; the chip on OpenBCI's Cyton) over machine.SPI.

``n_devices`` chips are daisy-chained behind one chip select (TI's daisy-chain mode: DOUT of
chip k+1 into DAISY_IN of chip k, chip 0's DOUT on MISO), so 4 chips give 32 channels in one
read of ``4 * 27`` bytes. Register writes reach every chip at once (DIN is shared); register
reads answer from chip 0. In a chain the chips share chip 0's clock: chip 0 has CLKSEL high
and drives CLK (``clk_out``), the others have CLKSEL low.

Wiring the driver needs: an SPI bus in mode 1 (``machine.SPI(id, baudrate=..., polarity=0,
phase=1)``, MSB first, up to 20 MHz for data; register commands are sent byte by byte with
the 4 tCLK decode gap the datasheet asks for), a chip-select output ``cs`` (``Pin.OUT``, idle
high) and the DRDY input ``drdy`` (``Pin.IN``). START and RESET pins are not used: the START
pin must be tied low (the START command starts conversions) and RESET/PWDN high.

Samples. In RDATAC mode DRDY falls when a conversion is ready; a read clocks out, per chip,
3 status bytes (``1100`` + LOFF_STATP + LOFF_STATN + GPIO) and 8 channels of 24-bit two's
complement. A code is ``code * LSB`` µV with ``LSB = 2 * VREF / gain / 2**24 * 1e6`` (VREF =
4.5 V): 0.02235 µV at gain 24, and -2**23 is exactly -VREF/gain (-187500 µV at gain 24). The
chip has no FIFO: it keeps only the newest conversion. Two ways to read it:

* ``fifo=0`` (polled): ``read`` takes the newest conversion when DRDY is low, so it must be
  called at least once per sample period; conversions never read are counted in
  ``dropped``, from DRDY's falling edges where the pin has ``irq`` (the handler only
  increments a counter, safe in a hard interrupt), else as a lower bound from the time
  between reads.
* ``fifo=N`` (buffered, needs ``drdy.irq``): a soft interrupt on DRDY's falling edge reads
  each conversion into a FIFO of N samples made once, so the application may spend longer
  than a sample period between ``read`` calls (a band-power window, an inference); ``read``
  returns up to ``max_n`` samples from it. A full FIFO drops the new sample (counted).
  ``read`` also takes a conversion whose interrupt has not run yet, and the two never run
  at once (a busy flag), so the FIFO needs no lock.

Conversion. A small viper kernel turns a frame into float32 µV with integer arithmetic (the
24x24-bit product, rounded to nearest even), so a read allocates nothing; it writes exactly
``float32(code * LSB)``, bit for bit what the plain Python fallback writes.
"""

import math
from array import array

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

try:  # imported as painhelm.firmware.ads1299 on a host
    from . import ring
except ImportError:  # flat on the helmet's filesystem
    import ring

# commands (datasheet table "Command Definitions")
_RESET = const(0x06)
_START = const(0x08)
_STOP = const(0x0A)
_RDATAC = const(0x10)
_SDATAC = const(0x11)
_RREG = const(0x20)
_WREG = const(0x40)

# registers
ID = const(0x00)
CONFIG1 = const(0x01)
CONFIG2 = const(0x02)
CONFIG3 = const(0x03)
LOFF = const(0x04)
CH1SET = const(0x05)
BIAS_SENSP = const(0x0D)
BIAS_SENSN = const(0x0E)
LOFF_SENSP = const(0x0F)
LOFF_SENSN = const(0x10)
CONFIG4 = const(0x17)
N_REGS = const(0x18)

ID_MASK = const(0x1F)  # REV_ID bits may change; bit 4 reads 1, DEV_ID = 11, NU_CH = 10 (8 ch)
ID_ADS1299 = const(0x1E)
VREF = 4.5
RATES = (16000, 8000, 4000, 2000, 1000, 500, 250)  # index = CONFIG1 DR bits
GAINS = (1, 2, 4, 6, 8, 12, 24)  # index = CHnSET GAIN bits
FRAME_BYTES = const(27)  # per chip: 3 status + 8 x 3
_STATUS_HEADER = const(0xC)  # the status word's top nibble

_CONFIG1_BASE = const(0x90)  # bit 7 and bits 4:3 = 10 are reserved "write as"; DAISY_EN = 0: daisy-chain
_CLK_EN = const(0x20)
_CONFIG2_NORMAL = const(0xC0)  # no test signal
_CONFIG3_REF = const(0xE0)  # PD_REFBUF = 1: internal reference on
_CONFIG3_BIAS = const(0x0C)  # BIASREF_INT + PD_BIAS: bias drive on, reference (AVDD+AVSS)/2
_CHSET_SRB2 = const(0x08)
_CONFIG4_LOFF = const(0x02)  # PD_LOFF_COMP: lead-off comparators on

try:  # one definition of the clock (clock.py)
    from .clock import ticks_us as _ticks_us, ticks_diff as _ticks_diff, sleep_ms as _sleep_ms, sleep_us as _sleep_us
except ImportError:
    from clock import ticks_us as _ticks_us, ticks_diff as _ticks_diff, sleep_ms as _sleep_ms, sleep_us as _sleep_us


_VIPER_SRC = """
import micropython

@micropython.viper
def frame_uv(rx: ptr8, n_dev: int, dst: ptr32, o: int, mant: int, e: int, status: ptr32) -> int:
    # float32 bits of code * mant * 2**e for each channel, with 2**23 <= mant < 2**24:
    # |code| * mant = hi * 2**24 + r through 12-bit halves (every product < 2**25, so a
    # 32-bit word holds it), then rounded to 24 bits, nearest even.
    m1 = mant >> 12
    m0 = mant & 0xFFF
    bad = 0
    p = 0
    for d in range(n_dev):
        s = (rx[p] << 16) | (rx[p + 1] << 8) | rx[p + 2]
        status[d] = s
        if (s >> 20) != 12:
            bad += 1
        p += 3
        for c in range(8):
            a = (rx[p] << 16) | (rx[p + 1] << 8) | rx[p + 2]
            p += 3
            neg = 0
            if a & 0x800000:
                a = 0x1000000 - a
                neg = 1
            if a == 0:
                dst[o] = 0
                o += 1
                continue
            a1 = a >> 12
            a0 = a & 0xFFF
            lo = a0 * m0
            mid = a1 * m0 + a0 * m1 + (lo >> 12)
            hi = a1 * m1 + (mid >> 12)
            r = ((mid & 0xFFF) << 12) | (lo & 0xFFF)
            k = 0
            if hi:
                t = hi
                if t >> 16:
                    k += 16
                    t >>= 16
                if t >> 8:
                    k += 8
                    t >>= 8
                if t >> 4:
                    k += 4
                    t >>= 4
                if t >> 2:
                    k += 2
                    t >>= 2
                if t >> 1:
                    k += 1
                    t >>= 1
                k += 1
                m = (hi << (24 - k)) | (r >> k)
                rem = r & ((1 << k) - 1)
                half = 1 << (k - 1)
                if rem > half or (rem == half and (m & 1)):
                    m += 1
                    if m == 0x1000000:
                        m = 0x800000
                        k += 1
            else:
                m = r
            bits = ((150 + k + e) << 23) | (m & 0x7FFFFF)
            if neg:
                sb = 1
                sb <<= 31
                bits |= sb
            dst[o] = bits
            o += 1
    return bad
"""


_V = ring.load_viper(_VIPER_SRC)
KERNELS = ("auto", "plain", "viper")


class ADS1299Error(OSError):
    """The chip did not answer as an ADS1299 should (wrong ID, registers that do not stick)."""


def _check_option(name, value, allowed):
    if value not in allowed:
        raise ValueError("%s must be one of %s, got %r" % (name, ", ".join(str(a) for a in allowed), value))


def lsb_uv(gain, vref=VREF):
    """µV per code at ``gain``, rounded to float32 (exact for VREF = 4.5 V and every gain)."""
    return array("f", [2.0 * vref / gain / 16777216.0 * 1e6])[0]


def code_to_uv(code, gain, vref=VREF):
    """One 24-bit code (an int in [-2**23, 2**23)) in µV, as ``read`` computes it."""
    return array("f", [code * lsb_uv(gain, vref)])[0]


def _frame_uv_plain(rx, n_dev, dst, o, lsb, status):
    bad = 0
    p = 0
    for d in range(n_dev):
        s = (rx[p] << 16) | (rx[p + 1] << 8) | rx[p + 2]
        status[d] = s
        if (s >> 20) != _STATUS_HEADER:
            bad += 1
        p += 3
        for _ in range(8):
            a = (rx[p] << 16) | (rx[p + 1] << 8) | rx[p + 2]
            if a & 0x800000:
                a -= 0x1000000
            dst[o] = a * lsb  # exact in double; rounded once to float32 by the store
            o += 1
            p += 3
    return bad


class ADS1299:
    """``n_devices`` daisy-chained ADS1299 read through ``spi``, ``cs`` and ``drdy``.

    Parameters
    ----------
    spi : machine.SPI
        In mode 1 (polarity=0, phase=1). Only ``write`` and ``readinto`` are used.
    cs : machine.Pin
        Chip select, an output (only ``value`` is used).
    drdy : machine.Pin
        DRDY, an input (``value``; ``irq`` when present).
    n_devices : int
        Chips in the chain (8 channels each).
    sfreq : int
        Samples per second, one of ``RATES``.
    gain : int
        PGA gain of every channel, one of ``GAINS``.
    srb2 : bool
        Reference every channel's negative input to SRB2 (a common reference electrode,
        Cyton's default); False: bipolar inputs.
    bias : bool
        Drive the bias electrode from all channels.
    lead_off : bool
        Enable the DC lead-off comparators; the result is in ``status_words``.
    clk_out : bool | None
        Drive CLK from chip 0; None: when ``n_devices > 1``.
    use_irq : bool
        Count DRDY edges with ``drdy.irq`` when the pin has it (exact ``dropped``).
    settle_ms : int
        Wait after switching the internal reference on (the datasheet's power-up
        sequence asks for it to settle).
    kernel : "auto" | "plain" | "viper"
        Frame conversion; both give the same bits.
    clock : callable | None
        Microsecond ticks for the polled ``dropped`` estimate (default ``time.ticks_us``).
    fifo : int
        Samples buffered by the DRDY interrupt (0: polled reads, one sample at a time).

    Attributes
    ----------
    n_ch : int
        ``8 * n_devices``.
    status_words : array('i')
        Each chip's last 24-bit status word (``status_words[0]`` is ``status``).
    frames, dropped, bad_frames : int
        Conversions read from the chips; samples lost (conversions never read, and with a
        FIFO those it had no room for); frames whose status header was not ``1100`` on
        some chip (a chip missing from the chain, or SPI trouble).
    """

    def __init__(self, spi, cs, drdy, n_devices=1, sfreq=250, gain=24, srb2=True, bias=False,
                 lead_off=False, clk_out=None, use_irq=True, settle_ms=150, kernel="auto", clock=None,
                 fifo=0):
        _check_option("sfreq", sfreq, RATES)
        _check_option("gain", gain, GAINS)
        if not 1 <= n_devices <= 8:
            raise ValueError("n_devices must be between 1 and 8, got %r" % (n_devices,))
        _check_option("kernel", kernel, KERNELS)
        if kernel == "auto":
            kernel = "plain" if _V is None else "viper"
        if kernel == "viper" and _V is None:
            raise ValueError("kernel 'viper' needs MicroPython with the viper emitter; use 'plain' or 'auto'")
        self.kernel = kernel
        self._spi = spi
        self._cs = cs
        self._drdy = drdy
        self.n_devices = n_devices
        self.n_ch = 8 * n_devices
        self.sfreq = sfreq
        self.gain = gain
        self.srb2 = srb2
        self.bias = bias
        self.lead_off = lead_off
        self.clk_out = n_devices > 1 if clk_out is None else clk_out
        self.use_irq = use_irq and hasattr(drdy, "irq")
        if fifo and not self.use_irq:
            raise ValueError("fifo=%d needs the DRDY pin's irq (use_irq=True on a pin that has one)" % fifo)
        if fifo < 0:
            raise ValueError("fifo must be >= 0 samples, got %r" % (fifo,))
        self.fifo = fifo
        self.settle_ms = settle_ms
        self._clock = clock or _ticks_us
        self.lsb = lsb_uv(gain)
        m, e = math.frexp(self.lsb)
        self._mant = int(m * 16777216.0)  # 2**23 <= mant < 2**24, lsb = mant * 2**_exp exactly
        self._exp = e - 24
        self._period_us = 1000000 // sfreq
        self._rx = bytearray(FRAME_BYTES * n_devices)
        self._b1 = bytearray(1)
        self._r1 = bytearray(1)
        self.status_words = array("i", [0] * n_devices)
        self._rx_uv = ring.new_f32(self.n_ch, kernel == "viper")  # where an overrun sample goes
        # bound methods made once: an interrupt allocates nothing
        self._irq_handler = self._on_drdy_read if fifo else self._on_drdy
        if fifo:
            self._fifo = ring.new_f32(fifo * self.n_ch, kernel == "viper")
        self._w = 0  # FIFO write / read counters, modulo 2 * fifo (full: w - r == fifo)
        self._r = 0
        self._busy = False
        self._missed = 0
        self._overrun = 0
        self.configured = False
        self.running = False
        self._edges = 0
        self._t_last = 0
        self.frames = 0
        self.dropped = 0
        self.bad_frames = 0
        cs.value(1)

    # --- SPI commands (init time: one byte per transfer, with the decode gap) ---

    def _send(self, *data):
        b = self._b1
        self._cs.value(0)
        for v in data:
            b[0] = v
            self._spi.write(b)
            _sleep_us(2)  # tSDECODE = 4 tCLK ~ 2 us between the bytes of a command
        self._cs.value(1)

    def command(self, cmd):
        """Send one command byte (``_START``, ``_SDATAC``, ...)."""
        self._send(cmd)

    def write_register(self, reg, value):
        """WREG one register (every chip in the chain)."""
        self._send(_WREG | reg, 0, value)

    def write_registers(self, reg, values):
        """WREG ``len(values)`` consecutive registers from ``reg`` on."""
        self._send(_WREG | reg, len(values) - 1, *values)

    def read_register(self, reg):
        """RREG one register (of chip 0). The chip must not be in RDATAC mode."""
        b = self._b1
        r = self._r1
        self._cs.value(0)
        b[0] = _RREG | reg
        self._spi.write(b)
        _sleep_us(2)
        b[0] = 0
        self._spi.write(b)
        _sleep_us(2)
        self._spi.readinto(r, 0)
        self._cs.value(1)
        return r[0]

    # --- set-up ---

    def register_values(self):
        """The values ``configure`` writes, as ``{register: value}``."""
        dr = RATES.index(self.sfreq)
        chset = (GAINS.index(self.gain) << 4) | (_CHSET_SRB2 if self.srb2 else 0)  # MUX 000: electrodes
        regs = {
            CONFIG1: _CONFIG1_BASE | (_CLK_EN if self.clk_out else 0) | dr,
            CONFIG2: _CONFIG2_NORMAL,
            CONFIG3: _CONFIG3_REF | (_CONFIG3_BIAS if self.bias else 0),
            LOFF: 0x00,  # DC lead-off, 6 nA, 95 % threshold
            BIAS_SENSP: 0xFF if self.bias else 0x00,
            BIAS_SENSN: 0xFF if self.bias and not self.srb2 else 0x00,
            LOFF_SENSP: 0xFF if self.lead_off else 0x00,
            LOFF_SENSN: 0xFF if self.lead_off and not self.srb2 else 0x00,
            CONFIG4: _CONFIG4_LOFF if self.lead_off else 0x00,
        }
        for ch in range(8):
            regs[CH1SET + ch] = chset
        return regs

    def configure(self):
        """Reset the chain, check the ID, program every register and read them back.

        Raises ADS1299Error naming the register and both values when the chip answers
        with a wrong ID or a register does not hold what was written.
        """
        self.running = False
        self.command(_RESET)
        _sleep_ms(1)  # 18 tCLK after RESET
        self.command(_SDATAC)  # the chip resets into RDATAC, where it ignores RREG/WREG
        dev_id = self.read_register(ID)
        if dev_id & ID_MASK != ID_ADS1299:
            raise ADS1299Error(
                "ADS1299 ID register reads 0x%02X, expected 0x%02X in its low 5 bits (an 8-channel "
                "ADS1299, e.g. 0x3E)%s" % (dev_id, ID_ADS1299,
                                          ": 0x00/0xFF mean no answer on MISO: check wiring, CS, power, "
                                          "and SPI mode 1 (polarity=0, phase=1)" if dev_id in (0, 0xFF) else ""))
        regs = self.register_values()
        self.write_register(CONFIG3, regs[CONFIG3])
        if self.settle_ms:
            _sleep_ms(self.settle_ms)  # internal reference settling
        self.write_register(CONFIG1, regs[CONFIG1])
        self.write_register(CONFIG2, regs[CONFIG2])
        self.write_register(LOFF, regs[LOFF])
        self.write_registers(CH1SET, [regs[CH1SET + ch] for ch in range(8)])
        for reg in (BIAS_SENSP, BIAS_SENSN, LOFF_SENSP, LOFF_SENSN, CONFIG4):
            self.write_register(reg, regs[reg])
        for reg in sorted(regs):
            got = self.read_register(reg)
            if got != regs[reg]:
                raise ADS1299Error("ADS1299 register 0x%02X reads 0x%02X after writing 0x%02X"
                                   % (reg, got, regs[reg]))
        self.configured = True

    def start(self):
        """Enter RDATAC and start conversions (``configure`` first)."""
        if not self.configured:
            self.configure()
        self._edges = 0
        self.frames = 0
        self.dropped = 0
        self.bad_frames = 0
        self._missed = 0
        self._overrun = 0
        self._w = 0
        self._r = 0
        self._busy = False
        if self.use_irq:
            d = self._drdy
            # the buffered handler uses the SPI bus: a soft (scheduled) interrupt
            hard = not self.fifo
            try:
                d.irq(handler=self._irq_handler, trigger=d.IRQ_FALLING, hard=hard)
            except TypeError:  # a port without the hard argument
                d.irq(handler=self._irq_handler, trigger=d.IRQ_FALLING)
        self.command(_RDATAC)
        self.command(_START)
        self._t_last = self._clock()
        self.running = True

    def stop(self):
        """Stop conversions and leave RDATAC (registers can be read again)."""
        self.running = False
        if self.use_irq:
            self._drdy.irq(handler=None)
        self.command(_STOP)
        self.command(_SDATAC)

    def _on_drdy(self, pin):
        self._edges += 1

    def _on_drdy_read(self, pin):
        self._edges += 1
        if self._busy or not self.running:
            return  # read() is running: it takes this conversion
        self._busy = True
        self._grab()
        self._busy = False

    # --- samples ---

    @property
    def status(self):
        """The last 24-bit status word of chip 0 (``1100`` + LOFF_STATP + LOFF_STATN + GPIO)."""
        return self.status_words[0]

    def lead_off_bits(self, device=0):
        """``(LOFF_STATP, LOFF_STATN)`` of ``device`` from its last status word (bit ch: lead off)."""
        s = self.status_words[device]
        return (s >> 12) & 0xFF, (s >> 4) & 0xFF

    def _frame(self, dst, offset):
        """Clock out the newest conversion and write its n_ch µV to ``dst[offset:]``."""
        # edges counted before the read: a conversion completing during it is not lost yet
        edges = self._edges
        cs = self._cs
        cs.value(0)
        self._spi.readinto(self._rx, 0)
        cs.value(1)
        if self.kernel == "viper":
            bad = _V["frame_uv"](self._rx, self.n_devices, dst, offset, self._mant, self._exp, self.status_words)
        else:
            bad = _frame_uv_plain(self._rx, self.n_devices, dst, offset, self.lsb, self.status_words)
        if bad:
            self.bad_frames += 1
        self.frames += 1
        if self.use_irq:
            lost = edges - self.frames  # never more than were lost; a later read catches up
            if lost > self._missed:
                self._missed = lost
                self.dropped = self._missed + self._overrun
        else:
            now = self._clock()
            gap = _ticks_diff(now, self._t_last)
            self._t_last = now
            # read k and read k + j + 1 are less than (j + 2) periods apart: a lower bound
            lost = gap // self._period_us - 1
            if lost > 0 and self.frames > 1:
                self._missed += lost
                self.dropped = self._missed + self._overrun

    def _grab(self):
        """Read the ready conversion into the FIFO (or count it lost when the FIFO is full)."""
        cap = self.fifo
        w = self._w
        if (w - self._r) % (2 * cap) >= cap:
            self._frame(self._rx_uv, 0)  # clock it out all the same (DRDY goes high), then drop it
            self._overrun += 1
            self.dropped = self._missed + self._overrun
            return
        slot = w % cap
        self._frame(self._fifo, slot * self.n_ch)
        self._w = (w + 1) % (2 * cap)

    def available(self):
        """Samples waiting in the FIFO (0 without one)."""
        return (self._w - self._r) % (2 * self.fifo) if self.fifo else 0

    def read(self, buf, max_n=1, offset=0):
        """Write up to ``max_n`` samples into ``buf``; return how many. Never waits.

        ``buf`` (array('f')) receives ``n_ch`` float32 µV per sample, sample-major, from
        value ``offset`` on, chip 0's channels first. Without a FIFO this returns at most
        one sample (the chip's newest conversion).
        """
        if not self.running or max_n < 1:
            return 0
        n_ch = self.n_ch
        if not self.fifo:
            if len(buf) < offset + n_ch:
                raise ValueError("buf has %d values, a sample of %d channels at offset %d needs %d"
                                 % (len(buf), n_ch, offset, offset + n_ch))
            if self._drdy.value():  # high: no conversion since the last read
                return 0
            self._frame(buf, offset)
            return 1
        # A conversion whose interrupt has not run yet (pending, or lost by the scheduler) is
        # taken here. The first pin read is where a simulated chain delivers its due
        # interrupts; while busy, an interrupt leaves the FIFO to this method.
        ready = not self._drdy.value()
        self._busy = True
        try:
            if ready and not self._drdy.value():
                self._grab()
            cap = self.fifo
            r = self._r
            n = (self._w - r) % (2 * cap)
            if n > max_n:
                n = max_n
            if n == 0:
                return 0
            if len(buf) < offset + n * n_ch:
                raise ValueError("buf has %d values, %d samples of %d channels at offset %d need %d"
                                 % (len(buf), n, n_ch, offset, offset + n * n_ch))
            slot = r % cap
            k = cap - slot
            if k > n:
                k = n
            ring.copy_f32(self._fifo, slot * n_ch, buf, offset, k * n_ch)
            if n > k:
                ring.copy_f32(self._fifo, 0, buf, offset + k * n_ch, (n - k) * n_ch)
            self._r = (r + n) % (2 * cap)
            return n
        finally:
            self._busy = False
