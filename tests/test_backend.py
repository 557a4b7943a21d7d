"""The inference back-ends (``livseg.infer.backend``): ONNX Runtime gives the networks' outputs
to 1e-4 and the cascade's labels exactly; the export cache is keyed by the checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_infer import TINY_MODELS, make_checkpoint, synthetic_ct

from livseg.errors import LivsegError
from livseg.infer import backend
from livseg.infer.cascade import Cascade
from livseg.models.checkpoint import load_model
from livseg.volume import Volume

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LIVSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backend_ckpt")
    return {k: make_checkpoint(root / k, k, seed=3) for k in TINY_MODELS}


def test_resolve_backend():
    cpu = torch.device("cpu")
    assert backend.resolve_backend("auto", cpu) == "onnx"  # onnxruntime is installed here
    assert backend.resolve_backend("torch", cpu) == "torch"
    assert backend.resolve_backend("auto", torch.device("cuda", 0)) == "torch"
    with pytest.raises(LivsegError, match="runs on the CPU"):
        backend.resolve_backend("onnx", torch.device("cuda", 0))
    with pytest.raises(LivsegError, match="choose one of"):
        backend.resolve_backend("tensorrt", cpu)


@pytest.mark.parametrize("kind", ["crunet", "densefcn_liver", "tumour", "runet_tumour"])
def test_onnx_network_equals_torch(kind, ckpts, cache):
    model, spec = load_model(ckpts[kind])
    size = int(spec.preprocess.size)
    shape = (1, int(spec.preprocess.channels), size, size)
    (net,) = backend.prepare([model], [ckpts[kind]], shape, "onnx")
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 5):  # any batch size, one export
        x = torch.rand(batch, *shape[1:], generator=gen)
        with torch.inference_mode():
            want = model(x)
        got = net(x)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert len(list(cache.glob("*.onnx"))) == 1
    with pytest.raises(LivsegError, match="built for inputs"):
        net(torch.rand(1, shape[1], size * 2, size * 2))


def test_export_cache_reused_and_keyed_by_the_weights(ckpts, cache, monkeypatch, tmp_path):
    model, spec = load_model(ckpts["tumour"])
    shape = (1, 3, 32, 32)
    backend.prepare([model], [ckpts["tumour"]], shape, "onnx")
    (first,) = cache.glob("*.onnx")

    def no_export(*_):
        raise AssertionError("exported again")

    monkeypatch.setattr(backend, "_export", no_export)
    backend.prepare([model], [ckpts["tumour"]], shape, "onnx")  # from the cache
    # other weights in a checkpoint of the same name: another key, so a new export
    other = make_checkpoint(tmp_path / "other" / ckpts["tumour"].name, "tumour", seed=4)
    with pytest.raises(AssertionError, match="exported again"):
        backend.prepare([model], [other], shape, "onnx")
    assert list(cache.glob("*.onnx")) == [first]


def test_unwritable_cache_keeps_the_export_in_memory(ckpts, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LIVSEG_CACHE", str(blocker))
    model, _ = load_model(ckpts["tumour"])
    (net,) = backend.prepare([model], [ckpts["tumour"]], (1, 3, 32, 32), "onnx")
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(net(x), model(x), atol=1e-4)


def test_torch_backend_uses_channels_last_with_the_same_outputs(ckpts):
    model, _ = load_model(ckpts["crunet"])
    x = torch.rand(3, 1, 32, 32)
    with torch.inference_mode():
        want = model(x)
        (fast,) = backend.prepare([model], [ckpts["crunet"]], (1, 1, 32, 32), "torch")
        got = fast(x.contiguous(memory_format=torch.channels_last))
    convs = [p for p in fast.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert torch.allclose(got, want, atol=1e-5)


def test_cascade_labels_identical_with_either_backend(ckpts, cache):
    hu, _ = synthetic_ct((10, 40, 48))
    ct = Volume.image(hu, (2.5, 0.8, 0.8))
    labels = {}
    for name in ("torch", "onnx"):
        cascade = Cascade.load(
            liver_model=ckpts["densefcn_liver"],
            tumour_model=ckpts["tumour"],
            paper=True,
            device="cpu",
            backend=name,
        )
        labels[name] = cascade.segment(ct).labels.array
    assert np.array_equal(labels["torch"], labels["onnx"])
    assert len(list(cache.glob("*.onnx"))) == 2  # the liver and the tumour network


def _coarse_checkpoint(folder: Path) -> Path:
    from livseg.models import build_model
    from livseg.train.checkpoint import save_checkpoint
    from livseg.train.config import config_from_dict

    cfg = config_from_dict(
        {
            "name": "tiny_coarse",
            "model": {"name": "unet3d", "options": {"base_width": 2, "depth": 2}},
            "loss": {"name": "soft_dice", "options": {}},
            "data": {"pipeline": "coarse", "spacing_mm": 4.0, "windows": [[-250.0, 350.0]]},
        }
    )
    torch.manual_seed(5)
    return save_checkpoint(folder, build_model("unet3d", base_width=2, depth=2), cfg)


def test_coarse_stage_in_onnx_runtime_takes_any_size(cache, tmp_path):
    """The coarse 3-D networks are exported once with free D, H and W: every CT's coarse grid
    runs through the same ONNX file, with the probabilities of PyTorch."""
    from livseg.infer.cascade import _load_coarse

    ckpt = _coarse_checkpoint(tmp_path / "coarse")
    stages = {name: _load_coarse(ckpt, torch.device("cpu"), name) for name in ("torch", "onnx")}
    assert all(isinstance(m, backend.OnnxNetwork) for m in stages["onnx"].models)
    rng = np.random.default_rng(1)
    for shape in ((20, 40, 48), (33, 64, 40)):  # two coarse grids of other sizes than the export
        hu = rng.uniform(-300, 400, shape).astype(np.float32)
        want, spacing = stages["torch"].probability(hu, (2.0, 1.5, 1.5))
        got, same = stages["onnx"].probability(hu, (2.0, 1.5, 1.5))
        assert got.shape == want.shape and same == spacing
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert len(list(cache.glob("*.onnx"))) == 1
    with pytest.raises(LivsegError, match="built for inputs"):
        stages["onnx"].models[0](torch.zeros(1, 1, 16, 16))  # a slice, not a volume


NO_TORCH = """
import sys


class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"{name}: torch is blocked in this test")


sys.meta_path.insert(0, NoTorch())
from livseg.cli import main

code = main()
assert "torch" not in sys.modules
sys.exit(code)
"""


def test_segment_runs_without_torch_on_a_warm_onnx_cache(ckpts, cache, tmp_path):
    """With every network in ONNX Runtime and its export cached, ``livseg segment`` never
    imports torch (about 1 s of start-up); its labels are those of the in-process ONNX run."""
    import os
    import subprocess
    import sys

    from livseg.io import read_volume, write_volume

    hu, _ = synthetic_ct((10, 40, 48))
    ct = Volume.image(hu, (2.5, 0.8, 0.8))
    write_volume(ct, tmp_path / "ct.nii.gz")
    models = {"liver_model": ckpts["densefcn_liver"], "tumour_model": ckpts["tumour"]}
    cascade = Cascade.load(**models, paper=True, device="cpu", backend="onnx")  # warms the cache
    want = cascade.segment(ct).labels.array
    exports = sorted(cache.glob("*.onnx"))
    cmd = [sys.executable, "-c", NO_TORCH, "segment", str(tmp_path / "ct.nii.gz")]
    cmd += ["-o", str(tmp_path / "out"), "--paper", "--device", "cpu", "--backend", "onnx"]
    cmd += ["--liver-model", str(models["liver_model"])]
    cmd += ["--tumour-model", str(models["tumour_model"])]
    env = {**os.environ, "LIVSEG_CACHE": str(cache.parent)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = read_volume(tmp_path / "out" / "ct_seg.nii.gz", kind="label")
    assert got.same_geometry(ct) and np.array_equal(got.array, want)
    assert sorted(cache.glob("*.onnx")) == exports  # nothing exported again


def test_numpy_resizing_uses_torchs_weights_bit_for_bit():
    """:func:`livseg.preprocess.resample.linear_weights` reproduces the weights of torch's
    bilinear ``interpolate`` (anti-aliased or not) exactly; resized images agree to 1-2 float32
    rounding steps (the order of the sums may differ)."""
    import torch.nn.functional as F

    from livseg.preprocess.resample import linear_weights, resize_slices

    def torch_weights(n_in: int, n_out: int, aa: bool) -> np.ndarray:
        eye = torch.eye(n_in)[:, None, None, :]  # each input sample alone
        out = F.interpolate(
            eye, size=(1, n_out), mode="bilinear", align_corners=False, antialias=aa
        )
        return out[:, 0, 0, :].numpy().T  # (n_out, n_in)

    for n_in, n_out, aa in [
        (300, 192, True),
        (512, 160, True),
        (160, 411, True),
        (7, 3, True),
        (160, 411, False),
        (60, 61, False),
        (192, 333, False),
        (7, 20, False),
    ]:
        first, w = linear_weights(n_in, n_out, aa)
        dense = np.zeros((n_out, n_in), np.float32)
        for k in range(w.shape[1]):
            np.add.at(dense, (np.arange(n_out), np.minimum(first + k, n_in - 1)), w[:, k])
        assert np.array_equal(dense, torch_weights(n_in, n_out, aa)), (n_in, n_out, aa)
    rng = np.random.default_rng(0)
    for (ih, iw), size in [((300, 280), (192, 192)), ((160, 160), (411, 390)), ((100, 300), 192)]:
        x = rng.random((5, ih, iw)).astype(np.float32)
        out = resize_slices(x, size)
        aa = out.shape[-2] < ih or out.shape[-1] < iw
        want = F.interpolate(
            torch.from_numpy(x)[:, None],
            size=out.shape[-2:],
            mode="bilinear",
            align_corners=False,
            antialias=aa,
        )[:, 0].numpy()
        np.testing.assert_allclose(out, want, rtol=0, atol=3e-7)


def test_cpu_is_known_without_torch(monkeypatch):
    from livseg.device import no_cuda_here

    assert no_cuda_here("cpu") and not no_cuda_here("cuda") and not no_cuda_here("cuda:1")
    assert not no_cuda_here("auto")  # torch is imported in this process: ask it instead
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter([Path("/dev/nvidia0")]))
    assert not no_cuda_here("auto")  # an NVIDIA device file: maybe CUDA
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter([]))
    assert no_cuda_here("auto")


def test_concurrent_exports_in_one_process(ckpts, cache):
    """Two threads loading ONNX networks with a cold cache (two Segmenters, say): torch's ONNX
    export keeps global state, so exports run one at a time; both threads get working networks
    and each checkpoint is exported once."""
    import threading

    kinds = ["tumour", "runet_tumour", "crunet", "densefcn_liver"]
    start, results, errors = threading.Barrier(len(kinds)), {}, []

    def load(kind: str) -> None:
        model, spec = load_model(ckpts[kind])
        size = int(spec.preprocess.size)
        shape = (1, int(spec.preprocess.channels), size, size)
        start.wait()
        try:
            (results[kind],) = backend.prepare([model], [ckpts[kind]], shape, "onnx")
        except Exception as exc:  # reported below, in the test's thread
            errors.append(f"{kind}: {exc!r}")

    threads = [threading.Thread(target=load, args=(k,)) for k in kinds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == sorted(kinds)
    assert len(list(cache.glob("*.onnx"))) == len(kinds)
    assert not list(cache.glob(".*.tmp"))
