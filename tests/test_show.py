"""`painhelm data show`: a readable PNG of a trial's topomaps; clear errors for bad requests."""

import numpy as np
import pytest

from painhelm.host_tools.cli import main

from .shared_data import need


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAINHELM_CACHE", str(tmp_path / "cache"))


def _check_png(path, n_rows_min=300, n_cols_min=600):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.shape[0] >= n_rows_min and img.shape[1] >= n_cols_min
    rgb = img[..., :3]
    # not blank: plenty of coloured (non-grey) pixels from the diverging colour map
    colourful = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.2
    assert colourful.mean() > 0.05


def test_show_synthetic(tmp_path, capsys):
    out = tmp_path / "syn.png"
    assert main(["data", "show", "--dataset", "synthetic-pain", "--trial", "3", "--out", str(out)]) == 0
    assert "4 frames x 3 bands, 16 electrodes" in capsys.readouterr().out
    _check_png(out)


def test_show_physionet_mi(tmp_path):
    need("eegmmidb")
    out = tmp_path / "pmi.png"
    assert main(["data", "show", "--dataset", "physionet-mi", "--trial", "5", "--out", str(out)]) == 0
    _check_png(out, n_cols_min=1200)


def test_bad_requests_are_one_line_errors(tmp_path, capsys):
    assert main(["data", "show", "--dataset", "synthetic-pain", "--trial", "100000", "--out",
                 str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("painhelm: --trial must be between 0 and") and "Traceback" not in err
    assert main(["data", "show", "--dataset", "nope", "--out", str(tmp_path / "x.png")]) == 1
    assert "built-in datasets" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_show_own_recordings(tmp_path):
    from .test_datasets import MAPPING, _fif

    rec = tmp_path / "recs"
    rec.mkdir()
    _fif(rec / "vp01_s1_raw.fif", [(2, "cold"), (6, "hot")], 0)
    (tmp_path / "study.toml").write_text(MAPPING)
    out = tmp_path / "own.png"
    assert main(["data", "show", "--dataset", str(rec), "--mapping", str(tmp_path / "study.toml"),
                 "--out", str(out), "--image-size", "16"]) == 0
    _check_png(out, n_rows_min=200)
    assert main(["data", "show", "--dataset", str(rec), "--out", str(out)]) == 1
