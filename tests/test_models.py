"""The model zoo: shapes, the joint loss, size budgets, config round trip, helmet export."""

from __future__ import annotations

from array import array

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from painhelm.compress import export as E
from painhelm.firmware import interp
from painhelm.train.model import (MODELS, PainNet, PainNetConfig, build_model, count_macs,
                                  count_params, joint_loss, model_from_config)

EDGE = [n for n in MODELS if not n.startswith("vgg")]
VGG = [n for n in MODELS if n.startswith("vgg")]
# painnet and edge-lstm-attn are one config; export it once.
EXPORTABLE = [n for n in MODELS if MODELS[n].helmet_exportable and n != "edge-lstm-attn"]


def _build(name, n_frames=4, image_size=16, n_levels=4, n_locations=2, **kw):
    torch.manual_seed(0)
    size = 32 if name.startswith("vgg") else image_size
    return build_model(name, n_frames, 3, size, n_levels, n_locations, **kw)


def _images(model, batch=2, seed=0):
    c = model.cfg
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, c.n_frames, c.n_bands, c.image_size, c.image_size, generator=g)


@pytest.mark.parametrize("name", list(MODELS))
def test_output_shapes_and_backward(name):
    """Every model maps (B, F, C, G, G) to level (B, 4) and location (B, 2) logits and trains."""
    model = _build(name, n_frames=5)
    x = _images(model)
    logits, loss = model(x, {"level": torch.tensor([0, 3]), "location": torch.tensor([1, 0])})
    assert logits["level"].shape == (2, 4) and logits["location"].shape == (2, 2)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(x)[1] is None


def test_loss_ignores_unlabelled():
    """Targets of -1 are left out; an all -1 head adds exactly 0; class weights apply."""
    model = _build("edge-lstm").eval()
    x = _images(model, batch=4)
    lv, lc = torch.tensor([2, -1, 0, -1]), torch.tensor([-1, -1, -1, -1])
    with torch.no_grad():
        logits, loss = model(x, {"level": lv, "location": lc})
        ref = F.cross_entropy(logits["level"][[0, 2]], lv[[0, 2]])
        assert torch.isfinite(loss) and torch.allclose(loss, ref)
        w = torch.tensor([1.0, 2.0, 3.0, 4.0])
        _, lw = model(x, {"level": lv, "location": lc}, class_weights={"level": w})
        assert torch.allclose(lw, F.cross_entropy(logits["level"][[0, 2]], lv[[0, 2]], weight=w))
        _, both = model(x, {"level": lv, "location": torch.tensor([1, -1, 0, 1])})
        ref2 = ref + F.cross_entropy(logits["location"][[0, 2, 3]], torch.tensor([1, 0, 1]))
        assert torch.allclose(both, ref2)
    _, none = model(x, {"level": -torch.ones(4, dtype=torch.long), "location": lc})
    assert none.item() == 0.0
    none.backward()  # a batch with no labels at all still steps


def test_joint_loss_skips_heads_without_targets():
    """A head missing from targets contributes nothing."""
    z = {"level": torch.randn(3, 4), "location": torch.randn(3, 2)}
    t = torch.tensor([0, 1, 3])
    assert torch.allclose(joint_loss(z, {"level": t}), F.cross_entropy(z["level"], t))


def test_single_task_head():
    """A head with 0 classes gets 1 output and a loss of 0 (laser-pain-features: no location)."""
    model = build_model("edge-max", 1, 3, 16, 2, 0)
    x = _images(model, batch=3)
    lv = torch.tensor([0, 1, 1])
    logits, loss = model(x, {"level": lv, "location": torch.tensor([-1, -1, -1])})
    assert logits["level"].shape == (3, 2) and logits["location"].shape == (3, 1)
    assert torch.allclose(loss, F.cross_entropy(logits["level"], lv))


@pytest.mark.parametrize("n_frames", [4, 7])
@pytest.mark.parametrize("name", EDGE)
def test_edge_budget(name, n_frames):
    """Compact models stay within 50k parameters and 3M MACs per decision (G=16, 3 bands)."""
    model = _build(name, n_frames=n_frames)
    assert count_params(model) <= 50_000
    assert count_macs(model, (1, n_frames, 3, 16, 16)) <= 3_000_000


def test_count_macs_by_hand():
    """count_macs of painnet equals the hand count of its convs and FC layers."""
    c = PainNetConfig()
    cnn = (16 * 16 * c.conv1 * 3 * 9 + 8 * 8 * c.conv2 * c.conv1 * 9
           + c.conv2 * 4 * 4 * c.frame_features)  # per frame
    lstm = (c.frame_features + c.lstm_hidden) * 4 * c.lstm_hidden  # per step: x2g + h2g
    score = c.lstm_hidden  # per step: attention score
    heads = c.lstm_hidden * (c.n_levels + c.n_locations)
    want = c.n_frames * (cnn + lstm + score) + heads
    assert count_macs(PainNet(c), (2, 4, 3, 16, 16)) == want
    assert count_params(PainNet(c)) == sum(p.numel() for p in PainNet(c).parameters())


def test_vgg_matches_bashivan():
    """The vgg frame CNN is Conv3-32 x4, Conv3-64 x2, Conv3-128 and an FC-512."""
    model = _build("vgg-max")
    convs = [m for m in model.cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convs] == [32, 32, 32, 32, 64, 64, 128]
    assert all(m.kernel_size == (3, 3) for m in convs)
    assert model.cnn.fc.out_features == 512 and model.cnn.fc.in_features == 128 * 4 * 4
    assert model.agg.n_out == 512 and model.hidden.out_features == 512


@pytest.mark.parametrize("name", ["painnet", "edge-mixed", "vgg-lstm-attn"])
def test_config_round_trip(name):
    """model_from_config(cfg.to_dict()) + the state dict rebuilds the same model."""
    model = _build(name, lstm_hidden=24).eval()
    again = model_from_config(model.cfg.to_dict())
    again.load_state_dict(model.state_dict())
    again.eval()
    x = _images(model)
    assert again.cfg == model.cfg and again.cfg.lstm_hidden == 24
    with torch.no_grad():
        assert torch.equal(model(x)[0]["level"], again(x)[0]["level"])


def test_old_painnet_checkpoint_loads():
    """A state dict saved before the zoo (lstm.*, attn.* at the top) still loads."""
    model = PainNet(PainNetConfig())
    old = {k.replace("agg.", ""): v for k, v in model.state_dict().items()}
    assert "lstm.x2g.weight" in old
    PainNet(PainNetConfig()).load_state_dict(old)


def test_bad_names_raise():
    """Unknown model names, override keys and config keys fail naming what is allowed."""
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("resnet", 4, 3, 16, 4, 2)
    with pytest.raises(ValueError, match="lstm_hiden"):
        build_model("painnet", 4, 3, 16, 4, 2, lstm_hiden=8)
    with pytest.raises(ValueError, match="aggregator must be one of"):
        build_model("painnet", 4, 3, 16, 4, 2, aggregator="gru")
    with pytest.raises(ValueError, match="unknown model config"):
        model_from_config({"n_frame": 4})


@pytest.mark.parametrize("name", EXPORTABLE)
def test_helmet_export_matches_litert(name, tmp_path):
    """Full-int8 export runs on the helmet's interpreter with LiteRT's outputs, value for value."""
    model = _build(name).eval()
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((32, 4, 3, 16, 16)).astype(np.float32)
    info = E.export_tflite(model, calib, tmp_path)
    assert not {"DEQUANTIZE", "WHILE"} & set(info["ops"])
    x = rng.standard_normal((6, 4, 3, 16, 16)) * rng.uniform(0.3, 1.5, (6, 1, 1, 1, 1))
    xq = E.quantize_array(x, info["input_scale"], info["input_zero_point"])
    lv, lc = E.TFLiteRunner(info["int8"]).predict_int8(xq)
    ref = np.concatenate([lv, lc], axis=1)
    it = interp.Interpreter(open(info["int8"], "rb").read())
    rows = []
    for xi in xq:
        it.invoke(array("b", xi.tobytes()))
        rows.append(list(it.output(0)) + list(it.output(1)))
    mine = np.array(rows, np.int8)
    assert np.array_equal(mine, ref), "%d of %d values differ" % ((mine != ref).sum(), ref.size)
