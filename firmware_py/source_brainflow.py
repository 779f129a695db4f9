"""Any BrainFlow board as a source (``sources`` interface); CPython only (a Raspberry Pi)."""

try:  # imported as painhelm.firmware.source_brainflow on a host
    from .sources import Source
except ImportError:
    from sources import Source


class BrainFlowSource(Source):
    """Any BrainFlow board (CPython, e.g. a Raspberry Pi with an OpenBCI dongle): EEG rows, µV.

    Parameters
    ----------
    board_id : int
        A ``brainflow.BoardIds`` value: -1 synthetic (16 ch, 250 Hz), 0 Cyton (8 ch, 250 Hz),
        2 Cyton+Daisy (16 ch, 125 Hz), ...
    serial_port : str
        The dongle's port ("" for boards that need none).
    buffer_size : int
        BrainFlow's ring buffer, in samples (``start_stream``).
    params : dict | None
        More ``BrainFlowInputParams`` fields (``mac_address``, ``ip_address``, ...).

    BrainFlow gives EEG rows in µV already; they are converted to float32. Samples missing
    from the board's package counter (radio losses, a BrainFlow buffer overrun) are counted
    in ``dropped`` (gaps of 256 packages or more are undercounted: the counter wraps).
    """

    def __init__(self, board_id=-1, serial_port="", buffer_size=45000, params=None):
        import warnings

        try:
            with warnings.catch_warnings():  # brainflow 5.23 imports the deprecated pkg_resources
                warnings.simplefilter("ignore", UserWarning)
                from brainflow.board_shim import BoardShim, BrainFlowInputParams
        except ImportError as e:
            raise ImportError("BrainFlowSource needs the brainflow package on CPython "
                              "(pip install brainflow==5.23.0 'setuptools<81'): %s" % e)
        import numpy as np

        self._np = np
        self._BoardShim = BoardShim
        self.board_id = board_id
        self.buffer_size = buffer_size
        p = BrainFlowInputParams()
        p.serial_port = serial_port
        for key, value in (params or {}).items():
            if not hasattr(p, key):
                raise ValueError("params: BrainFlowInputParams has no field %r" % key)
            setattr(p, key, value)
        self._params = p
        self._rows = BoardShim.get_eeg_channels(board_id)
        self.n_ch = len(self._rows)
        self.sfreq = float(BoardShim.get_sampling_rate(board_id))
        try:
            self.ch_names = BoardShim.get_eeg_names(board_id)
        except Exception:  # boards without names in BrainFlow's description
            self.ch_names = None
        try:
            self._pkg_row = BoardShim.get_package_num_channel(board_id)
        except Exception:
            self._pkg_row = None
        self._board = None
        self.running = False
        self.dropped = 0

    def start(self):
        if self._board is None:
            self._board = self._BoardShim(self.board_id, self._params)
            self._board.prepare_session()
        self.dropped = 0
        self._last_pkg = None
        self._pkg_step = None
        self._board.start_stream(self.buffer_size)
        self.running = True

    def stop(self):
        """Stop streaming and release the board (a later ``start`` opens it again)."""
        board = self._board
        self._board = None
        self.running = False
        if board is None:
            return
        try:
            board.stop_stream()
        finally:
            board.release_session()

    def _count_gaps(self, pkg):
        np = self._np
        pkg = pkg.astype(np.int64) % 256
        if self._last_pkg is not None:
            pkg_all = np.concatenate(([self._last_pkg], pkg))
        else:
            pkg_all = pkg
        self._last_pkg = int(pkg[-1])
        if len(pkg_all) < 2:
            return
        d = np.diff(pkg_all) % 256
        if self._pkg_step is None:  # 1 on most boards; learnt from the first pair
            self._pkg_step = int(d[0]) or None
            if self._pkg_step is None:
                return
        step = self._pkg_step
        self.dropped += int(np.sum(np.maximum(d // step - 1, 0)))

    def read(self, buf, max_n):
        board = self._board
        if board is None or not self.running or max_n < 1:
            return 0
        n = min(board.get_board_data_count(), max_n)
        if n <= 0:
            return 0
        self._check_buf(buf, n)
        data = board.get_board_data(n)  # (rows, n) float64, removed from BrainFlow's buffer
        n = data.shape[1]
        if self._pkg_row is not None:
            self._count_gaps(data[self._pkg_row])
        x = data[self._rows].T.astype("<f4")  # (n, n_ch): sample-major
        memoryview(buf).cast("B")[:x.nbytes] = x.tobytes()
        return n
