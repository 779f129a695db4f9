"""ADS1299 driver against the simulated chip: registers, ID, µV codes, daisy chain, pacing, memory."""

import json
from array import array

import numpy as np
import pytest

from painhelm.firmware import ads1299, ads1299_sim

from .mpy import run_micropython

# codes with known µV: zero, +-1 LSB, both full scales, and a few in between
CODES = [0, 1, -1, 0x7FFFFF, -0x800000, 12345, -54321, 0x400000, -0x400000, 3]


def _chain(n_devices=1, sfreq=250, gain=24, clock=None, use_irq=True, sim_kw=None, **kw):
    clock = clock or ads1299_sim.FakeClock()
    sim = ads1299_sim.SimADS1299(n_devices=n_devices, clock=clock.now, **(sim_kw or {}))
    dev = ads1299.ADS1299(sim.spi, sim.cs, sim.drdy, n_devices=n_devices, sfreq=sfreq, gain=gain,
                          settle_ms=0, clock=clock.now, use_irq=use_irq, **kw)
    return sim, dev, clock


def _reference_uv(codes, gain):
    """float32(code * LSB) with LSB = 2 * 4.5 / gain / 2**24 * 1e6 µV, in float64 first (exact)."""
    lsb = 2 * 4.5 / gain / 2**24 * 1e6
    return (np.asarray(codes, dtype=np.float64) * lsb).astype(np.float32)


@pytest.mark.parametrize("sfreq,dr", [(250, 6), (500, 5), (1000, 4), (16000, 0)])
@pytest.mark.parametrize("gain,gain_bits", [(24, 6), (1, 0), (12, 5)])
def test_register_programming(sfreq, dr, gain, gain_bits):
    """configure() leaves CONFIG1 (rate, daisy), CONFIG3 (reference) and CHnSET (gain, SRB2, electrodes) as the datasheet says."""
    sim, dev, _ = _chain(n_devices=4, sfreq=sfreq, gain=gain)
    dev.configure()
    regs = sim.regs
    assert regs[0x01] == 0x90 | 0x20 | dr  # reserved bits, daisy-chain mode, CLK out, DR
    assert regs[0x02] == 0xC0 and regs[0x03] == 0xE0  # no test signal; internal reference on
    assert list(regs[0x05:0x0D]) == [(gain_bits << 4) | 0x08] * 8  # gain, SRB2, MUX 000 (electrode input)
    assert list(regs[0x0D:0x11]) == [0, 0, 0, 0] and regs[0x17] == 0
    assert sim.bad_writes == 0 and sim.ignored_commands == 0
    assert not sim.rdatac  # left in SDATAC until start()


def test_options_bias_lead_off_single_chip():
    """One chip keeps its clock in; bias and lead-off set their registers; bipolar drops SRB2."""
    sim, dev, _ = _chain(n_devices=1, bias=True, lead_off=True, srb2=False)
    dev.configure()
    regs = sim.regs
    assert regs[0x01] == 0x96 and regs[0x03] == 0xEC
    assert regs[0x05] == 0x60  # gain 24, no SRB2
    assert (regs[0x0D], regs[0x0E], regs[0x0F], regs[0x10], regs[0x17]) == (0xFF, 0xFF, 0xFF, 0xFF, 0x02)
    assert sim.bad_writes == 0


@pytest.mark.parametrize("sim_kw,match", [
    ({"device_id": 0x00}, "ID register reads 0x00.*no answer on MISO.*polarity=0, phase=1"),
    ({"device_id": 0x3C}, "ID register reads 0x3C, expected 0x1E"),  # an ADS1299-4
    ({"phase": 0}, "ID register reads 0x1F"),  # SPI mode 0: every byte one bit late
])
def test_id_check_failure(sim_kw, match):
    """A chip that does not answer as an 8-channel ADS1299 stops configure() with a clear error."""
    _, dev, _ = _chain(sim_kw=sim_kw)
    with pytest.raises(ads1299.ADS1299Error, match=match):
        dev.configure()
    assert not dev.configured


def test_bad_arguments():
    """Rate, gain and chain length are checked against what the chip offers."""
    sim = ads1299_sim.SimADS1299()
    with pytest.raises(ValueError, match="sfreq must be one of 16000, 8000, 4000, 2000, 1000, 500, 250, got 256"):
        ads1299.ADS1299(sim.spi, sim.cs, sim.drdy, sfreq=256)
    with pytest.raises(ValueError, match="gain must be one of 1, 2, 4, 6, 8, 12, 24, got 3"):
        ads1299.ADS1299(sim.spi, sim.cs, sim.drdy, gain=3)
    with pytest.raises(ValueError, match="n_devices must be between 1 and 8, got 0"):
        ads1299.ADS1299(sim.spi, sim.cs, sim.drdy, n_devices=0)


@pytest.mark.parametrize("gain", ads1299.GAINS)
def test_lsb_is_exact(gain):
    """The float32 LSB is exactly 2 VREF / gain / 2**24 µV, so -2**23 reads exactly -VREF/gain."""
    assert ads1299.lsb_uv(gain) == 2 * 4.5 / gain / 2**24 * 1e6
    assert ads1299.code_to_uv(-0x800000, gain) == -4.5e6 / gain


@pytest.mark.parametrize("gain", [24, 1])
def test_uv_conversion_exact(gain):
    """Known codes come out as float32(code * LSB), bit for bit, with the status word exposed."""
    codes = CODES[:8]
    sim, dev, clk = _chain(gain=gain, sim_kw={"codes": array("i", codes)})
    sim.set_lead_off(0, 0x81, 0x02)
    dev.start()
    buf = array("f", bytes(4 * 8))
    assert dev.read(buf) == 0  # no conversion yet
    clk.advance_us(4000)
    assert dev.read(buf) == 1 and dev.read(buf) == 0
    np.testing.assert_array_equal(np.array(buf, dtype=np.float32), _reference_uv(codes, gain))
    assert buf[4] == -4.5e6 / gain  # negative full scale
    assert dev.status == 0xC81020 and dev.lead_off_bits(0) == (0x81, 0x02)
    assert dev.bad_frames == 0


def test_daisy_chain_of_four_is_32_channels():
    """Four chips give 32 channels, chip 0 first, each with its own status word."""
    codes = array("i", [1000 * (ch + 1) * (-1) ** ch for ch in range(32)] * 2)
    sim, dev, clk = _chain(n_devices=4, sim_kw={"codes": codes})
    for d in range(4):
        sim.set_lead_off(d, 1 << d, 0)
    assert dev.n_ch == 32
    dev.start()
    buf = array("f", bytes(4 * 33))
    clk.advance_us(4000)
    assert dev.read(buf, 1, offset=1) == 1
    np.testing.assert_array_equal(np.array(buf[1:], dtype=np.float32), _reference_uv(codes[:32], 24))
    assert [dev.lead_off_bits(d) for d in range(4)] == [(1, 0), (2, 0), (4, 0), (8, 0)]
    with pytest.raises(ValueError, match="buf has 32 values, a sample of 32 channels at offset 1 needs 33"):
        dev.read(array("f", bytes(4 * 32)), 1, offset=1)


@pytest.mark.parametrize("use_irq", [True, False])
def test_pacing_and_dropped(use_irq):
    """One sample per period; conversions never read are counted (exactly with DRDY's IRQ, a lower bound without)."""
    sim, dev, clk = _chain(sfreq=500, use_irq=use_irq)
    dev.start()
    buf = array("f", bytes(4 * 8))
    n = 0
    for _ in range(1000):  # one second, polled twice per period
        clk.advance_us(1000)
        n += dev.read(buf)
        n += dev.read(buf)
    assert n == 500 and dev.dropped == 0 and sim.overwritten == 0
    clk.advance_us(2000 * 5)  # five conversions, one read: four lost
    assert dev.read(buf) == 1
    assert sim.overwritten == 4
    if use_irq:
        assert dev.dropped == 4
    else:
        assert 3 <= dev.dropped <= 4
    dev.stop()
    assert dev.read(buf) == 0
    assert dev.read_register(ads1299.CONFIG1) == 0x95  # registers readable again after SDATAC


def test_fifo_buffers_between_reads():
    """With a FIFO the DRDY interrupt keeps every conversion while the application is busy; a full FIFO counts the rest."""
    codes = array("i", [1000 * t + ch for t in range(40) for ch in range(16)])
    sim, dev, clk = _chain(n_devices=2, fifo=8, sim_kw={"codes": codes})
    dev.start()
    buf = array("f", bytes(4 * 16 * 8))
    clk.advance_us(4000 * 6)  # six periods of other work, then interrupts are delivered
    sim.advance()
    assert dev.available() == 6 and dev.dropped == 0
    assert dev.read(buf, 4) == 4 and dev.read(buf, 4, offset=16 * 4) == 2 and dev.read(buf, 8) == 0
    np.testing.assert_array_equal(np.array(buf[:16 * 6], dtype=np.float32), _reference_uv(codes[:6 * 16], 24))
    clk.advance_us(4000 * 11)  # 11 more while the FIFO holds 8: 3 dropped
    assert dev.read(buf, 8) == 8 and dev.dropped == 3 and sim.overwritten == 0
    np.testing.assert_array_equal(np.array(buf, dtype=np.float32), _reference_uv(codes[6 * 16:14 * 16], 24))
    with pytest.raises(ValueError, match="fifo=4 needs the DRDY pin's irq"):
        _chain(fifo=4, use_irq=False)


def test_pacing_in_real_time():
    """Against the real clock the chain delivers sfreq samples per second of its default signal."""
    import time

    sim = ads1299_sim.SimADS1299(n_devices=2)
    dev = ads1299.ADS1299(sim.spi, sim.cs, sim.drdy, n_devices=2, sfreq=250, settle_ms=0)
    buf = array("f", bytes(4 * 16))
    peak = np.zeros(16)
    dev.configure()
    t0 = time.perf_counter()
    dev.start()  # START is sent between t0 and t1; the first conversion completes a period later
    t1 = time.perf_counter()
    n = 0
    while time.perf_counter() - t1 < 0.4:
        if dev.read(buf):
            n += 1
            peak = np.maximum(peak, np.abs(buf))
    t_a = time.perf_counter()
    n += dev.read(buf)  # takes the newest conversion, completed between t_a and t_b
    t_b = time.perf_counter()
    dev.stop()
    # samples read plus those a busy machine made the loop miss; dropped counts these through
    # DRDY's IRQ, never too many (a conversion completing during the last read is counted
    # by the next; the fake-clock tests above show it exact)
    assert dev.dropped <= sim.overwritten
    assert 250 * (t_a - t1) - 1.5 <= n + sim.overwritten <= 250 * (t_b - t0) + 1
    # channel c: a sine of 5 + c µV plus at most 1 µV of noise, in µV after the driver's scaling
    assert np.all(peak > 0.5 * (5 + np.arange(16))) and np.all(peak < 6.5 + np.arange(16))


def test_sim_refuses_data_before_start():
    """Clocking data out without START gives zeros: no 1100 status header."""
    sim = ads1299_sim.SimADS1299()
    rx = bytearray(27)
    sim.cs.value(0)
    sim.spi.readinto(rx, 0)
    sim.cs.value(1)
    assert rx == bytearray(27) and sim.served == 0
    assert sim.drdy.value() == 1


def test_frames_without_header_are_counted():
    """Data read outside RDATAC is all zeros: those frames count as bad."""
    sim, dev, clk = _chain()
    dev.start()
    dev.command(0x11)  # SDATAC behind the driver's back
    buf = array("f", bytes(32))
    clk.advance_us(4000)
    assert dev.read(buf) == 1 and dev.bad_frames == 1 and list(buf) == [0.0] * 8


_MPY_CODE = """
import gc, json, micropython
from array import array
import ads1299, ads1299_sim

CODES = %s

def exact(kernel, gain):
    clk = ads1299_sim.FakeClock()
    # chips 2 and 3 get the codes negated (wrapped to 24 bits: -(-2**23) is -2**23 again)
    codes = array('i', [((CODES[i %% len(CODES)] * (1 if i < 16 else -1) + 0x800000) & 0xFFFFFF) - 0x800000
                        for i in range(32)])
    sim = ads1299_sim.SimADS1299(n_devices=4, codes=codes, clock=clk.now)
    dev = ads1299.ADS1299(sim.spi, sim.cs, sim.drdy, n_devices=4, gain=gain, settle_ms=0,
                          kernel=kernel, clock=clk.now)
    dev.start()
    buf = array('f', bytes(4 * 32))
    clk.advance_us(4000)
    assert dev.read(buf) == 1
    return list(codes), list(buf)

def random_codes(kernel):
    # 5120 pseudo-random 24-bit codes through both kernels
    clk = ads1299_sim.FakeClock()
    x = 12345
    vals = array('i', bytes(4 * 160 * 32))
    for i in range(160 * 32):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        vals[i] = (x >> 7) - 0x800000
    sim = ads1299_sim.SimADS1299(n_devices=4, codes=vals, clock=clk.now)
    dev = ads1299.ADS1299(sim.spi, sim.cs, sim.drdy, n_devices=4, gain=6, settle_ms=0,
                          kernel=kernel, clock=clk.now)
    dev.start()
    out = array('f', bytes(4 * 32 * 160))
    for t in range(160):
        clk.advance_us(4000)
        assert dev.read(out, 1, t * 32) == 1
    return out

def memory():
    clk = ads1299_sim.FakeClock()
    sim = ads1299_sim.SimADS1299(n_devices=4, clock=clk.now)
    dev = ads1299.ADS1299(sim.spi, sim.cs, sim.drdy, n_devices=4, settle_ms=0, clock=clk.now)
    buf = array('f', bytes(4 * 32))
    dev.start()
    n = 0
    for i in range(20):
        clk.advance_us(4000)
        n += dev.read(buf)
    gc.collect()
    free0 = gc.mem_free()
    for i in range(1000):
        clk.advance_us(4000)
        n += dev.read(buf)
    gc.collect()
    free1 = gc.mem_free()
    micropython.heap_lock()  # any allocation now raises MemoryError
    try:
        for i in range(1000):
            clk.advance_us(4000)
            n += dev.read(buf)
            n += dev.read(buf)
    finally:
        micropython.heap_unlock()
    dev.stop()
    # the buffered mode: interrupts fill the FIFO, read drains it, heap locked
    dev = ads1299.ADS1299(sim.spi, sim.cs, sim.drdy, n_devices=4, settle_ms=0, clock=clk.now, fifo=16)
    buf = array('f', bytes(4 * 32 * 16))
    dev.start()
    m = 0
    gc.collect()
    micropython.heap_lock()
    try:
        for i in range(200):
            clk.advance_us(4000 * 5)
            sim.advance()
            m += dev.read(buf, 16)
    finally:
        micropython.heap_unlock()
    return free0 - free1, n, dev.dropped, dev.bad_frames, m

print(ads1299._V is not None)
for kernel in ('plain', 'viper'):
    for gain in (24, 1):
        print(json.dumps(exact(kernel, gain)))
a = random_codes('plain')
gc.collect()
b = random_codes('viper')
print(bytes(a) == bytes(b))
print(json.dumps(list(b[:64])))
a = b = None
print(*memory())
""" % (CODES,)


def test_driver_under_micropython():
    """Under MicroPython: exact µV from both kernels (same bits), 32 channels, and 1000s of reads with the heap locked."""
    lines = run_micropython(_MPY_CODE, heapsize="512K").strip().splitlines()
    assert lines[0] == "True"
    for i, gain in enumerate((24, 1, 24, 1)):
        codes, got = json.loads(lines[1 + i])
        np.testing.assert_array_equal(np.array(got, dtype=np.float32), _reference_uv(codes, gain))
    assert lines[5] == "True"  # viper and plain agree on 5120 random codes, bit for bit
    # and agree with numpy's float32(code * lsb)
    x = 12345
    vals = []
    for _ in range(64):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        vals.append((x >> 7) - 0x800000)
    np.testing.assert_array_equal(np.array(json.loads(lines[6]), dtype=np.float32), _reference_uv(vals, 6))
    lost, n, dropped, bad, m = map(int, lines[7].split())
    assert lost == 0 and n == 2020 and dropped == 0 and bad == 0 and m == 1000
