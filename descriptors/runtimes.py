"""Backbone runtimes: the truncated CNN through PyTorch eager, ONNX Runtime or OpenVINO.

Why: the forward is ~80% of an image's cost, and a small CNN on a CPU runs faster through a
graph-compiling runtime than in eager mode (measured on the 2-core CPU, 320 px, batch 1: see
docs/results.md and `benchmarks/bench_descriptors.py`). The runtime only changes *how* the same
network runs: activations equal PyTorch's to a relative error <= 1e-3 (tests/descriptors/
test_runtimes.py, real photos), so an index built with one runtime is searched with another.

- The truncated backbone is exported once per (backbone, layer, padding, weights sha256) to ONNX
  with dynamic batch/height/width (images keep their aspect ratio), cached in
  `$DFF_RUNTIME_CACHE` (default `~/.cache/dffsearch/runtimes`), written atomically.
- ONNX Runtime: intra-op threads = the compute threads (descriptors.threads), no spinning.
- OpenVINO: `INFERENCE_PRECISION_HINT=f32` (its CPU default picks bf16/f16 where the CPU has it:
  max relative error 0.9 on these activations), `INFERENCE_NUM_THREADS` = the compute threads,
  no CPU pinning (pinned workers cannot leave a core another job keeps busy), and a model compiled
  for each input shape that recurs (`openvino_shapes`: the dynamic-shape model is 20-30% slower).
- A session's thread count is fixed when it is created, but a server's compute threads follow the
  load (descriptors.threads.follow_load): each forward runs on the session made for the calling
  thread's compute threads *now*, rounded down to a power of two or all CPUs
  (`session_threads`), so a server started on an idle machine drops to one thread when other
  work arrives instead of oversubscribing the cores with the thread count it started with.
- `RUNTIMES` registry name -> loader; `default_runtime(device)`: the fastest installed for the
  device, in the order measured here (OpenVINO, ONNX Runtime, torch); CUDA: torch.

The runtimes are optional dependencies (`pip install dffsearch[runtimes]`), imported where used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .atomic_files import atomic_write
from .openvino_shapes import ShapeCompiledModel
from .settings import RUNTIME_NAMES

# fastest first, as measured on the CPU (benchmarks/bench_descriptors.py, efficientnet-lite0 320 px)
CPU_PREFERENCE = ("openvino", "onnxruntime", "torch")
_MODULE_OF = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}
OPSET = 17
_SESSIONS_LOCK = threading.Lock()  # CompiledTrunk.session: one thread creates a session at a time


class RuntimeUnavailableError(RuntimeError):
    """The runtime asked for is not installed or cannot run on the device."""


def runtime_cache_dir() -> Path:
    return Path(os.environ.get("DFF_RUNTIME_CACHE", Path.home() / ".cache" / "dffsearch" / "runtimes"))


def is_installed(name: str) -> bool:
    if name not in _MODULE_OF:
        raise ValueError(f"unknown runtime {name!r}; choose one of {', '.join(RUNTIMES)}")
    return importlib.util.find_spec(_MODULE_OF[name]) is not None


def available_runtimes(device: str | torch.device = "cpu") -> list[str]:
    """The runtimes that can run a backbone on `device` here, fastest first."""
    if torch.device(device).type != "cpu":
        return ["torch"]
    return [name for name in CPU_PREFERENCE if is_installed(name)]


def default_runtime(device: str | torch.device = "cpu") -> str:
    return available_runtimes(device)[0]


def resolve_runtime(name: str | None, device: str | torch.device = "cpu") -> str:
    """`auto`/None -> `default_runtime(device)`; a name -> itself when it can run here, else an error."""
    if name in (None, "auto"):
        return default_runtime(device)
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; choose auto or one of {', '.join(RUNTIMES)}")
    if name != "torch" and torch.device(device).type != "cpu":
        raise RuntimeUnavailableError(f"runtime {name} runs on the CPU only; use --runtime torch with --device {device}")
    if not is_installed(name):
        raise RuntimeUnavailableError(
            f"runtime {name} is not installed: pip install 'dffsearch[runtimes]' (or {name}), or use --runtime torch"
        )
    return name


def export_key(backbone) -> str:
    """What determines the exported graph: backbone, layer (the truncation), reflection padding,
    weights sha256, opset, torch version (the exporter). Not the module itself: a registry backbone
    is built lazily (descriptors.backbones), and with its export cached it is never built."""
    text = (f"{backbone.name}|{backbone.layer}|reflection_padding={backbone.reflection_padding}|"
            f"{backbone.weights_sha256}|opset{OPSET}|{torch.__version__}")
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def exported_onnx(backbone) -> Path:
    """The backbone's truncated network as ONNX (dynamic N, H, W), exported once and cached."""
    cache = runtime_cache_dir()
    safe_name = backbone.name.replace(":", "_").replace("/", "_")
    path = cache / f"{safe_name}-{export_key(backbone)}.onnx"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    trunk = backbone.trunk.to(memory_format=torch.contiguous_format).cpu().eval()
    try:
        def export(temp: str) -> None:
            dummy = torch.zeros(1, 3, 224, 288)
            torch.onnx.export(
                trunk, (dummy,), temp, input_names=["images"], output_names=["activations"],
                dynamic_axes={"images": {0: "n", 2: "height", 3: "width"}, "activations": {0: "n", 2: "h", 3: "w"}},
                opset_version=OPSET, dynamo=False,
            )

        # atomic: a concurrent exporter or a crash never leaves half a file
        atomic_write(path, export, suffix=".onnx")
    finally:
        if backbone.channels_last:
            backbone.trunk.to(memory_format=torch.channels_last)
        backbone.trunk.to(backbone.device)
    return path


def _compute_threads() -> int:
    """The calling thread's compute threads (descriptors.threads sets torch's per thread)."""
    return max(1, torch.get_num_threads())


def session_threads(compute: int, cpus: int | None = None) -> int:
    """The session size for `compute` threads: all `cpus`, else the largest power of two <= compute.

    Bounds the sessions a load-following server creates to ~log2(cpus) + 2."""
    from .threads import available_cpus

    cpus = cpus or available_cpus()
    compute = max(1, min(compute, cpus))
    return compute if compute == cpus else 1 << (compute.bit_length() - 1)


@lru_cache(maxsize=16)
def _onnxruntime_session(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """One session per (model, threads) in a process; `session.run` is thread-safe."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # idle workers sleep instead of spinning (the spin-waiting that made shared machines crawl)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _first_run_here(lambda x: session.run(None, {"images": x})[0])


def openvino_streams(threads: int, cpus: int | None = None) -> int:
    """Streams of a session whose requests each run on `threads` threads: as many as fit the CPUs.

    Why: a compiled model runs one request per stream at a time. With the latency hint's single
    stream, two searches forwarding on one-thread sessions (a server on a loaded machine, or with
    `--threads 1`: two compute slots) queued behind each other inside OpenVINO with a core idle."""
    from .threads import available_cpus

    return max(1, (cpus or available_cpus()) // max(1, threads))


def openvino_cpu_config(threads: int, streams: int = 1) -> dict:
    """The OpenVINO CPU compile settings of every backbone forward (benchmarks compile with them too):
    `streams` requests at once, each on `threads` threads."""
    return {
        "INFERENCE_PRECISION_HINT": "f32",  # the CPU default (bf16/f16) is far off: max rel. error 0.9
        "INFERENCE_NUM_THREADS": threads * streams,
        "NUM_STREAMS": streams,
        "PERFORMANCE_HINT": "LATENCY",
        # its default on Linux pins each worker to a core: on a shared machine a pinned worker
        # waits for the other job's time slice instead of moving to a free core
        "ENABLE_CPU_PINNING": False,
    }


@lru_cache(maxsize=16)
def _openvino_model(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """One compiled model per (model, threads) in a process, with a stream per `threads` CPUs
    (`openvino_streams`), one infer request per calling thread (a request is not thread-safe; the
    searcher forwards from several compute threads), and models compiled for the input shapes
    that recur (`openvino_shapes.ShapeCompiledModel`; `.compiled` is the dynamic one)."""
    import openvino as ov

    core = ov.Core()
    # compiled blobs cached on disk (keyed by OpenVINO on model + config + device): a later process,
    # e.g. each `dff-index build`, loads instead of compiling (measured 5.1 s -> see docs/indexer.md)
    cache = runtime_cache_dir() / "openvino"
    cache.mkdir(parents=True, exist_ok=True)
    core.set_property({"CACHE_DIR": str(cache)})
    config = openvino_cpu_config(threads, openvino_streams(threads))
    # a recurring input shape runs on a model compiled for it: 20-30% faster (openvino_shapes)
    run = ShapeCompiledModel(core, str(path), config)
    return _first_run_here(run)


def _first_run_here(run: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """`run` after one inference on a tiny image in the creating thread (under `_SESSIONS_LOCK`).

    Why: the bindings initialize function-local statics on a process's first inference; two
    threads making their first inference at once deadlocked in
    pyopenvino (observed: one thread held the GIL waiting on the static's guard, the other held
    the guard waiting for the GIL)."""
    run(np.zeros((1, 3, 64, 64), dtype=np.float32))
    return run


class CompiledTrunk:
    """`(B, 3, H, W)` float tensor -> `(B, C, h, w)` float32 tensor through a compiled runtime,
    on the session sized for the calling thread's compute threads (`session_threads`)."""

    def __init__(self, name: str, loader: Callable[[Path, int], Callable[[np.ndarray], np.ndarray]], path: Path) -> None:
        self.name = name
        self._loader = loader  # lru-cached per (path, threads): a lookup after the first call
        self._path = path

    def session(self, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
        """The run function for `threads` (default: the calling thread's), created on first use."""
        with _SESSIONS_LOCK:  # created (and first run: _first_run_here) by one thread at a time
            return self._loader(self._path, session_threads(threads or _compute_threads()))

    def prepare(self, threads: int) -> None:
        """Create the session for `threads` now (a server: before the first request needs it)."""
        self.session(threads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        # copied: OpenVINO reuses its output buffer on the next inference
        return torch.from_numpy(np.array(self.session()(array), dtype=np.float32, copy=True))


# name -> loader(onnx path, threads) -> run(images (B,3,H,W) float32) -> activations
RUNTIMES: dict[str, Callable[[Path, int], Callable[[np.ndarray], np.ndarray]] | None] = {
    "torch": None,  # the backbone's own eager module
    "onnxruntime": _onnxruntime_session,
    "openvino": _openvino_model,
}
# the names live in descriptors.settings (importable without torch); the registry must match them
assert tuple(RUNTIMES) == RUNTIME_NAMES, "descriptors.settings.RUNTIME_NAMES is out of date"


def use_runtime(backbone, name: str | None = "auto"):
    """Run `backbone`'s forward through runtime `name` (`auto`: the fastest installed); returns it.

    Sets `backbone.runtime` to the runtime used. The session for the calling thread's compute
    threads is created now; each forward then uses the one for its caller's threads at that time.
    """
    resolved = resolve_runtime(name, backbone.device)
    if resolved == "torch":
        backbone.trunk  # noqa: B018  (built now, at load time, not in the first forward)
        backbone.compiled_trunk = None
    else:
        trunk = CompiledTrunk(resolved, RUNTIMES[resolved], exported_onnx(backbone))
        trunk.prepare(_compute_threads())  # compile now: a missing or broken runtime fails here
        backbone.compiled_trunk = trunk
    backbone.runtime = resolved
    return backbone
