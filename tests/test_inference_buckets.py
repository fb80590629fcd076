"""Shape buckets and the compiled path on CPU: panning and zooming within a bucket compile nothing,
a new bucket compiles once, the graph limit is an error; pinned-buffer reuse; receptive field."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from model_variants import every_arch
from retina_sr.config import ModelConfig
from retina_sr.inference import Enhancer, receptive_radius
from retina_sr.inference.buckets import bucket_size, crop_window, plan_window
from retina_sr.inference.staging import HostStaging
from retina_sr.models import build_model


def _meta(cfg, levels=3):
    return {"model": cfg.model_dump(), "levels": levels}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(features=4, depth=1)
    return build_model(cfg, levels=3), _meta(cfg)


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ windows
def test_bucket_size():
    assert [bucket_size(n, 64) for n in (1, 64, 65, 270)] == [64, 64, 128, 320]
    with pytest.raises(ValueError, match="bucket"):
        bucket_size(10, 0)


def test_window_shape_does_not_depend_on_position():
    """With a bucket, a region's window has the same size wherever it is, the edge included (no clipping)."""
    shapes = set()
    for x, y in itertools.product([0, 3, 50, 176], [0, 7, 40, 134]):
        win = plan_window((x, y, 24, 16), (200, 150), context=9, bucket=64)
        shapes.add((win.width, win.height))
        assert win.x0 + win.ox == x and win.y0 + win.oy == y  # the region sits at its offset
        assert win.ox >= 9 and win.oy >= 9 and win.width - win.ox - 24 >= 9  # full context on every side
    assert shapes == {(64, 64)}
    clipped = plan_window((0, 0, 24, 16), (200, 150), context=9, bucket=None)
    assert (clipped.x0, clipped.width, clipped.ox) == (0, 33, 0)  # no bucket: clipped at the edge, as before


def test_crop_window_replicates_the_edge():
    data = torch.arange(5 * 6, dtype=torch.uint8).reshape(5, 6, 1).expand(5, 6, 3)
    win = plan_window((0, 0, 2, 2), (6, 5), context=1, bucket=4)
    patch = crop_window(data, win, hwc=True)
    assert patch.shape == (4, 4, 3) and patch.dtype == torch.uint8
    assert patch[0, 0, 0] == data[0, 0, 0] and patch[0, 1, 0] == data[0, 0, 0]  # row/col -1 -> row/col 0
    inside = crop_window(data, plan_window((1, 1, 2, 2), (6, 5), context=1, bucket=None), hwc=True)
    assert inside.data_ptr() == data[0:4, 0:4].data_ptr()  # inside the image: a view, no copy
    nchw = crop_window(data.permute(2, 0, 1)[None].float(), win, hwc=False)
    assert torch.equal(nchw[0].permute(1, 2, 0), patch.float())


# ------------------------------------------------------------------------------- compiled path (CPU)
@pytest.fixture
def compiled(model):
    """The compiled path with the eager Dynamo backend: the same guards and graph counting as inductor,
    without compiling C++ (the inductor run is the slow test in test_inference_api)."""
    torch._dynamo.reset()
    m, meta = model
    enh = Enhancer(m, meta, device="cpu", compile=True, compile_backend="eager")
    yield enh
    torch._dynamo.reset()


def test_panning_and_zooming_within_a_bucket_compile_nothing(compiled):
    img = _image(150, 200)
    assert compiled.bucket == 64 and "compile(eager)+bucket64" in compiled.mode
    compiled.warmup((200, 150), [4], display_size=(96, 64))
    assert {k: v.compiles for k, v in compiled.compile_stats.items()} == {(2, 64, 64): 1}
    centres = [(0, 0), (199, 149), (100, 75), (5, 140), (190, 3)]  # corners: the context is padded, not clipped
    for (cx, cy), z in itertools.product(centres, [3.0, 3.5, 4.0]):
        assert compiled.window(img, (cx, cy), z, (96, 64)).shape == (64, 96, 3)
    stats = compiled.compile_stats
    assert list(stats) == [(2, 64, 64)] and stats[(2, 64, 64)].compiles == 1 and stats[(2, 64, 64)].calls == 16
    compiled.window(img, (100, 75), 1.5, (96, 64))  # another level and bucket: one new graph
    assert sum(s.compiles for s in compiled.compile_stats.values()) == 2
    compiled.window(img, (10, 10), 1.6, (96, 64))
    assert sum(s.compiles for s in compiled.compile_stats.values()) == 2


def test_bucketed_output_matches_eager_inside_the_image(compiled, model):
    m, meta = model
    eager = Enhancer(m, meta, device="cpu")
    img = _image(96, 128)
    roi = (40, 30, 40, 24)  # further than the receptive field from every edge
    a = eager.enhance(img, 4, roi=roi).astype(int)
    b = compiled.enhance(img, 4, roi=roi).astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_running_out_of_graphs_is_an_error_not_an_eager_run(compiled, monkeypatch):
    import retina_sr.inference.compiled as compiled_mod

    monkeypatch.setattr(compiled_mod, "MAX_GRAPHS", 1)
    img = _image(200, 200)
    with torch._dynamo.config.patch(recompile_limit=1):
        compiled.enhance(img, 2, roi=(0, 0, 20, 20))
        with pytest.raises(RuntimeError, match="limit of 1 graphs"):
            compiled.enhance(img, 2, roi=(0, 0, 90, 20))  # another bucket


# ---------------------------------------------------------------------------------- pinned buffers
class _Fence:
    def __init__(self, log):
        self.log = log

    def record(self):
        self.log.append("record")

    def synchronize(self):
        self.log.append("wait")


def test_staging_reuses_buffers_and_waits_for_the_previous_copy():
    log: list[str] = []
    st = HostStaging("cpu", pin=False, max_buffers=2, fence=lambda: _Fence(log))
    a = torch.arange(12, dtype=torch.uint8).reshape(2, 2, 3)
    up1 = st.upload(a)
    assert torch.equal(up1, a) and up1.data_ptr() != a.data_ptr()  # copied into the staging buffer
    ptr = st._buffers[((2, 2, 3), torch.uint8)][0].data_ptr()
    st.upload(a + 1)
    assert st.allocations == 1 and st._buffers[((2, 2, 3), torch.uint8)][0].data_ptr() == ptr  # reused
    assert log == ["wait", "record", "wait", "record"]  # waited before overwriting its own last copy
    st.upload(torch.zeros(4, 4, 3, dtype=torch.uint8))
    st.upload(torch.zeros(1, 3, 8, 8))
    assert st.allocations == 3 and len(st._buffers) == 2  # least recently used shape released



def test_cpu_enhancer_does_not_stage(model):
    m, meta = model
    enh = Enhancer(m, meta, device="cpu")
    enh.enhance(_image(16, 16), 2)
    assert getattr(enh, "_staging", None) is None  # the crop is used where it is


# -------------------------------------------------------------------------------- receptive field
def _measured_radius(model, n_up, size=40):
    """Support of the input gradient of the centre output pixel (input pixels from its position)."""
    x = torch.rand(1, 3, size, size, requires_grad=True)
    y = model(x, n_up=n_up)[-1]
    c = size * 2**n_up // 2
    y[0, :, c, c].sum().backward()
    ys, xs = torch.nonzero(x.grad[0].abs().sum(0) > 0, as_tuple=True)
    centre = (c + 0.5) / 2**n_up - 0.5
    return max((ys.float() - centre).abs().max().item(), (xs.float() - centre).abs().max().item())


@every_arch
def test_receptive_radius_bounds_the_measured_support(kw):
    torch.manual_seed(0)
    m = build_model(ModelConfig(features=4, depth=2, **kw), levels=3)
    for p in m.parameters():  # non-zero everywhere (the bicubic branch starts with zero residuals)
        torch.nn.init.normal_(p, std=0.3)
    for n_up in range(4):
        r, measured = receptive_radius(m, n_up), _measured_radius(m, n_up)
        assert measured <= r <= measured + 2, (n_up, r, measured)


def test_receptive_radius_of_the_study_models():
    assert receptive_radius(build_model(ModelConfig(features=64, depth=10), levels=3)) == 21
    assert receptive_radius(build_model(ModelConfig(features=16, depth=3), levels=3)) == 9
