"""ADS1299 chips as a source (``sources`` interface): on a board's SPI, or simulated."""

try:  # imported as painhelm.firmware.source_ads1299 on a host
    from . import ads1299
    from .sources import Source
except ImportError:  # flat on the helmet's filesystem
    import ads1299
    from sources import Source


class ADS1299Source(Source):
    """ADS1299 chips (``ads1299.ADS1299``, on a board's SPI or on ``ads1299_sim``).

    ``device`` is configured here (reset, ID check, registers), so a wiring fault shows
    when the source is made. With the device's ``fifo`` the DRDY interrupt buffers samples
    and ``read`` returns up to ``max_n``; without it the chip holds one sample, ``read``
    returns at most 1 and must be called at least every ``1 / sfreq`` s. Lost samples are
    counted in ``dropped`` either way.
    """

    def __init__(self, device, ch_names=None):
        self.device = device
        self.n_ch = device.n_ch
        self.sfreq = float(device.sfreq)
        if ch_names is not None and len(ch_names) != self.n_ch:
            raise ValueError("ch_names has %d names for %d channels" % (len(ch_names), self.n_ch))
        self.ch_names = ch_names
        if not device.configured:
            device.configure()

    @property
    def dropped(self):
        return self.device.dropped

    def start(self):
        self.device.start()

    def stop(self):
        if self.device.running:
            self.device.stop()

    def read(self, buf, max_n):
        return self.device.read(buf, max_n)


def make(cfg, sfreq):
    """The source for a ``{"kind": "ads1299", ...}`` config (see ``sources.make_source``)."""
    rate = int(sfreq)
    if rate != sfreq or rate not in ads1299.RATES:
        raise ValueError("source 'ads1299' samples at one of %s Hz, the bundle's sfreq is %s"
                         % (", ".join(str(r) for r in ads1299.RATES), sfreq))
    n_dev = cfg.get("n_devices", 1)
    if cfg.get("sim"):
        try:
            from . import ads1299_sim
        except ImportError:
            import ads1299_sim
        sim = ads1299_sim.SimADS1299(n_devices=n_dev)
        spi, cs, drdy = sim.spi, sim.cs, sim.drdy
    else:
        try:
            import machine
        except ImportError:
            raise ValueError("source 'ads1299' drives chips through machine.SPI, which only a MicroPython "
                             "board has; give \"sim\": true for the simulated chips")
        for key in ("spi", "cs", "drdy"):
            if key not in cfg:
                raise ValueError("source 'ads1299' needs %r (the SPI bus id and the CS / DRDY pins)" % key)
        spi = machine.SPI(cfg["spi"], baudrate=cfg.get("baudrate", 4000000), polarity=0, phase=1)
        cs = machine.Pin(cfg["cs"], machine.Pin.OUT, value=1)
        drdy = machine.Pin(cfg["drdy"], machine.Pin.IN)
    dev = ads1299.ADS1299(spi, cs, drdy, n_devices=n_dev, sfreq=rate, gain=cfg.get("gain", 24),
                          srb2=cfg.get("srb2", True), bias=cfg.get("bias", False),
                          lead_off=cfg.get("lead_off", False), settle_ms=cfg.get("settle_ms", 150),
                          fifo=cfg.get("fifo", rate // 2))
    return ADS1299Source(dev, cfg.get("ch_names"))
