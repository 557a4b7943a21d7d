"""Inference back-ends of the slice networks: PyTorch, or ONNX Runtime on the CPU.

``benchmarks/onnx_speed.py`` (2 threads, AMD EPYC, batch 8) measured the shipped slice networks
run by ONNX Runtime (CPU execution provider, all graph optimisations, one shared memory arena,
no spinning threads) 1.1-2.7x faster than PyTorch as loaded, and ahead of PyTorch with
channels-last tensors for livseg's cascade (fine CR-U-Net 8.7 against 11.0 ms per slice,
tumour R-U-Net 14.0 against 23.2), with logits equal to 1.5e-5; end to end
(``benchmarks/segment_speed.py``) a 512 x 512 x 119 CT took 14.3 s instead of 22.7 s. So:

* ``torch``: the networks as loaded; 2-D networks on channels-last tensors (same results, faster
  convolutions on the CPU's oneDNN).
* ``onnx``: each slice network exported once to ONNX (fixed working size, any batch; the coarse
  3-D networks any size), kept in
  a cache (``$LIVSEG_CACHE`` or ``~/.cache/livseg/onnx``; key: the checkpoint's files, torch's
  and livseg's export version) and run by :mod:`onnxruntime` (optional dependency:
  ``pip install "livseg[onnx]"``). When the cache cannot be written the export is kept in memory.
* ``bf16``: the torch networks under bfloat16 autocast (weights stay float32), channels-last,
  the coarse 3-D stage included: faster on CPUs with native bfloat16 (AVX-512 BF16, AMX) and on
  GPUs, an approximation (probabilities differ by about 1e-3; ``benchmarks/segment_speed.py
  --backend bf16`` measures time and label agreement). CPUs without native bfloat16 emulate it
  (slower; a warning says so).
* ``auto`` (the default): ``onnx`` on the CPU when onnxruntime is installed, else ``torch``.

Not adopted: int8 static quantisation with ONNX Runtime (QDQ, per-channel weights, calibrated on
volume-0's tumour-stage inputs by ``onnxruntime.quantization.quantize_static``) ran a v0.8
tumour member 2.1x faster on one thread of an AMD EPYC with AVX-512 VNNI, but its tumour masks on
volume-1 agreed with float32 at Dice 0.96 only (the speed issue allows 0.999).

The coarse 3-D networks run by ONNX Runtime too (since v0.9), exported once with free depth,
height and width (each CT's coarse grid has its own size). On the shipped members
(``benchmarks/onnx_speed.py``, 2 threads, AMD EPYC) they ran 1.9-2.6x faster than PyTorch
(volume-0's 48 x 96 x 96 grid 0.28 s for the three members instead of 0.71 s, volume-4's
144 x 112 x 112 1.17 s instead of 2.20 s). Their logits differ from PyTorch's by up to 5e-2
(probabilities by 4e-3: float32 sums in another order through eight instance-normalised levels,
logits up to +-49), so the whole cascade's labels on the five LiTS cases differ in 0-27 voxels of
512 x 512 x 75-207 (liver Dice >= 0.99998, tumour Dice >= 0.99999 against the PyTorch coarse
stage; ``tests/test_shipped_models.py`` checks volume-1), within the speed issue's 0.999.

**No torch with ONNX Runtime** (v0.10): when every network of the cascade runs in ONNX Runtime
on the CPU and their exports are cached, ``livseg segment`` does not import torch (about 1 s of
start-up). The networks take and give numpy arrays (:class:`OnnxNetwork`), the probabilities are
taken in numpy (:func:`foreground_probability_np`), resizing uses torch's bilinear weights
computed in numpy (:func:`livseg.preprocess.resample.linear_weights`), the checkpoints' specs
come from :mod:`livseg.checkpoint_spec`, the CPU is recognised without torch
(:func:`livseg.device.no_cuda_here`) and :mod:`livseg.distributed` imports torch only for a
process group. A cache miss imports torch to export the network, as before. Labels on the five
LiTS cases are identical to the torch-based pre-processing's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from livseg.device import native_bf16, usable_cpus
from livseg.errors import LivsegError

log = logging.getLogger("livseg.infer.backend")

__all__ = [
    "BACKENDS",
    "resolve_backend",
    "onnx_available",
    "cache_dir",
    "OnnxNetwork",
    "onnx_networks",
    "cpu_threads",
    "numpy_networks",
    "foreground_probability_np",
    "channels_last",
    "memory_format",
    "autocast",
    "prepare",
]

BACKENDS = ("auto", "torch", "onnx", "bf16")

#: an input shape (1, C, ...): a size of None is any size
Shape = tuple[int | None, ...]

#: bump when the export changes (opset, names, axes): old cache entries are then not used
EXPORT_VERSION = "1"
OPSET = 17


def onnx_available() -> bool:
    """Whether :mod:`onnxruntime` can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: Any) -> str:
    """``"torch"``, ``"onnx"`` or ``"bf16"`` for a ``--backend`` value on ``device``.

    Raises:
        LivsegError: an unknown back-end, ``onnx`` without onnxruntime or on a GPU.
    """
    if backend not in BACKENDS:
        raise LivsegError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    if backend == "auto":
        return "onnx" if on_cpu and onnx_available() else "torch"
    if backend == "bf16" and on_cpu and not native_bf16():
        log.warning("--backend bf16: this CPU has no native bfloat16; it will be slower")
    if backend == "onnx" and not on_cpu:
        raise LivsegError("--backend onnx runs on the CPU; use --device cpu or --backend torch")
    if backend == "onnx" and not onnx_available():
        raise LivsegError(
            '--backend onnx needs onnxruntime: pip install "livseg[onnx]" (or --backend torch)'
        )
    return backend


def cache_dir() -> Path:
    """Where exported ONNX files are kept."""
    if os.environ.get("LIVSEG_CACHE"):
        return Path(os.environ["LIVSEG_CACHE"]) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "livseg" / "onnx"


def _cache_key(checkpoint: Path, shape: Shape) -> str:
    """Hash of the checkpoint's files, the input shape and the exporting software (torch's
    version as installed: read without importing torch)."""
    from importlib.metadata import version

    h = hashlib.sha256(f"{EXPORT_VERSION}|{OPSET}|{version('torch')}|{shape}".encode())
    for p in sorted(checkpoint.iterdir()):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:32]


def _export(model: Any, shape: Shape, example: tuple[int, ...] | None = None) -> bytes:
    """The ONNX bytes of ``model`` for inputs ``(any batch, *shape[1:])``; a None size is
    dynamic too (traced at ``example``'s size)."""
    import torch

    x = torch.zeros(example or shape, dtype=torch.float32)
    axes = {0: "batch", **{i: f"size{i}" for i, n in enumerate(shape) if i and n is None}}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about the fixed working size
        torch.onnx.export(
            model,
            (x,),
            buf,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": axes, "logits": axes},
            opset_version=OPSET,
            dynamo=False,
        )
    return buf.getvalue()


def _onnx_source(
    checkpoint: Path, shape: Shape, load: Callable[[], Any], example: tuple[int, ...] | None = None
) -> bytes | str:
    """The cached ONNX file of a checkpoint; on a miss ``load()`` gives the torch network, which
    is exported and cached (bytes when the cache cannot be written)."""
    path = cache_dir() / f"{_cache_key(checkpoint, shape)}.onnx"
    if path.is_file():
        return str(path)
    with _EXPORTING:  # torch's ONNX export keeps global state: one at a time in a process
        if path.is_file():  # another thread exported it meanwhile
            return str(path)
        return _export_to_cache(checkpoint, path, load, shape, example)


def _export_to_cache(
    checkpoint: Path,
    path: Path,
    load: Callable[[], Any],
    shape: Shape,
    example: tuple[int, ...] | None,
) -> bytes | str:
    """Export ``load()`` and write it to ``path`` atomically (bytes when it cannot be written)."""
    data = _export(load(), shape, example)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.info("ONNX cache %s not writable (%s); keeping the export in memory", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return data
    log.info("exported %s to %s", checkpoint, path)
    return str(path)


_ARENA: list[bool] = []
_ARENA_LOCK = threading.Lock()
_EXPORTING = threading.Lock()


def _shared_arena(ort: Any) -> None:
    """Register one CPU arena allocator with ONNX Runtime's environment (once, also when
    several threads load networks)."""
    with _ARENA_LOCK:
        if _ARENA:
            return
        info = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        _ARENA.append(True)


class OnnxNetwork:
    """A network run by ONNX Runtime, called like the torch module it replaces.

    ``net(x)`` takes a float32 (B, C, ...) tensor of the shape it was exported for and returns
    the logits as a torch tensor; ``to()`` and ``eval()`` return the network itself.

    Args:
        source: the ``.onnx`` file, or its bytes.
        shape: ``(1, C, H, W)`` (a slice network at its working size) or ``(1, C, None, None,
            None)`` (the coarse 3-D network, any size): the input it was exported for (any batch
            size; None: any size).
        threads: intra-op threads.
    """

    def __init__(self, source: bytes | str, shape: Shape, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # one memory arena for every network (they run one after the other): the arena's
        # speed without one arena per network (peak RSS 2.5 GB instead of 1 GB with six)
        _shared_arena(ort)
        opts.add_session_config_entry("session.use_env_allocators", "1")
        # no busy-waiting threads: PyTorch's run between the networks' calls
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        self.shape = shape

    def to(self, *_: Any, **__: Any) -> OnnxNetwork:
        return self

    def eval(self) -> OnnxNetwork:
        return self

    def __call__(self, x: Any) -> Any:
        """The logits of ``x``: a numpy array gives a numpy array (no torch needed), a torch
        tensor a torch tensor."""
        import numpy as np

        given_numpy = isinstance(x, np.ndarray)
        arr = x if given_numpy else x.detach().cpu().numpy()
        fixed = all(
            n is None or n == m for n, m in zip(self.shape[1:], arr.shape[1:], strict=False)
        )
        if arr.ndim != len(self.shape) or not fixed:
            raise LivsegError(
                f"ONNX network built for inputs (B, {self.shape[1:]}), given {tuple(arr.shape)}"
            )
        out = self.session.run(None, {"x": np.ascontiguousarray(arr, dtype=np.float32)})[0]
        if given_numpy:
            return out
        import torch

        return torch.from_numpy(out)


def cpu_threads() -> int:
    """Intra-op threads for ONNX Runtime: torch's count when torch is imported, else
    ``OMP_NUM_THREADS`` when set, else the CPUs this process may use."""
    if "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    with contextlib.suppress(ValueError):
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    return usable_cpus()


def onnx_networks(
    checkpoints: list[Path],
    shape: Shape,
    load: Callable[[int], Any],
    example: tuple[int, ...] | None = None,
) -> list[OnnxNetwork]:
    """ONNX Runtime networks of the checkpoints; ``load(k)`` (the torch network of checkpoint
    ``k``) is called only for those not in the export cache, so a warm cache reads no weights.
    ``example``: an input size the networks accept, for sizes that are None in ``shape``."""
    return [
        OnnxNetwork(_onnx_source(c, shape, lambda k=k: load(k), example), shape, cpu_threads())
        for k, c in enumerate(checkpoints)
    ]


def numpy_networks(models: list[Any], bf16: bool) -> bool:
    """Whether every network runs in ONNX Runtime (and no autocast is asked for): then numpy
    arrays go in and out, and no torch is needed."""
    return not bf16 and all(isinstance(m, OnnxNetwork) for m in models)


def foreground_probability_np(logits: Any) -> Any:
    """:func:`livseg.models.foreground_probability` on a numpy array: sigmoid of one channel,
    or the softmax's channel 1 of two; float32 (B, *spatial)."""
    import numpy as np
    from scipy.special import expit

    if logits.ndim not in (4, 5) or logits.shape[1] not in (1, 2):
        raise LivsegError(f"foreground probability of logits shaped {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        return expit(logits[:, 0]).astype(np.float32, copy=False)
    return expit(logits[:, 1] - logits[:, 0]).astype(np.float32, copy=False)


def memory_format(ndim: int) -> Any:
    """The channels-last memory format of 4-D (slices) or 5-D (volumes) tensors."""
    import torch

    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def channels_last(models: list[Any], ndim: int = 4) -> list[Any]:
    """The torch networks with channels-last weights (faster convolutions on the CPU); ``ndim``
    5 for 3-D networks."""
    return [m.to(memory_format=memory_format(ndim)) for m in models]


def autocast(device: Any, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``bf16``, else nothing."""
    if not bf16:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(getattr(device, "type", str(device)), dtype=torch.bfloat16)


def prepare(
    models: list[Any], checkpoints: list[Path], shape: tuple[int, ...], backend: str
) -> list[Any]:
    """Loaded torch networks ready for ``backend`` (``"torch"`` or ``"onnx"``, resolved).

    Args:
        models: the loaded torch networks (eval mode).
        checkpoints: their checkpoint folders (the ONNX cache key).
        shape: one input ``(1, C, H, W)`` of the working size.
        backend: ``"torch"``, ``"bf16"``: :func:`channels_last`; ``"onnx"``:
            :func:`onnx_networks`.
    """
    if backend == "onnx":
        return onnx_networks(checkpoints, shape, lambda k: models[k])
    return channels_last(models)
