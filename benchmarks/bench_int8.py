"""int8 quantization of the exported backbone in ONNX Runtime and OpenVINO vs f32 (issue 16, optional).

Quantizes `descriptors.runtimes.exported_onnx(efficientnet-lite0)` (dynamic H/W: images keep their
aspect ratio), calibrated on `--calibration` Paris photos that are not timed:
- ONNX Runtime (`onnxruntime.quantization`): dynamic (`quantize_dynamic`, uint8 weights) and
  static QDQ (`quant_pre_process` + `quantize_static`, per-channel);
- OpenVINO with NNCF post-training quantization (`nncf.quantize`, performance preset): its
  defaults, the first and last convolutions kept f32, and those plus the depthwise convolutions
  kept f32 (`OPENVINO_INT8_VARIANTS`). Skipped with a message when nncf is not installed
  (`pip install 'dffsearch[quantization]'`). OpenVINO 2026.4's CPU plugin computes wrong
  activations around int8 depthwise convolutions when the model keeps its dynamic H/W (relative
  error ~1.1, correlation ~0.02 with torch; the same graph compiled for the input's static shape:
  ~0.3), so the variants that quantize them are compiled once per input shape (`int8_loader`);
  `openvino-f32-static` is the f32 model compiled the same way, to separate the static-shape
  gain from the int8 one.
Then, batch 1, at the product's image size, interleaved in one run, for each of `--threads`:
forward ms per variant, its speedup vs its runtime's f32 (`openvino-f32` is compiled exactly as
`descriptors.runtimes` does), and its activations' max / mean relative error vs torch (a variant
whose feature map has another shape than torch's reports `shape_ok: false`).
Prints a table and writes `--json FILE` with `forward_ms[threads][variant]`,
`speedup_vs_f32[threads][variant]`, `max_rel_error[variant]`, `mean_rel_error[variant]`,
`shape_ok[variant]`, `dynamic_compile_max_rel_error[variant]` (OpenVINO int8 compiled with dynamic
H/W), `quantize_seconds[runtime]`. Photos: the Paris subset in $DFF_SHARED_DATA, else scikit-image's.

    python benchmarks/bench_int8.py [--images 8] [--calibration 16] [--rounds 3] [--threads 2,1] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import descriptors  # noqa: E402  (first: passive OpenMP waiting before torch/numpy load)

descriptors.configure_environment()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from descriptors.backbones import load_backbone, retrieval_image_size  # noqa: E402
from descriptors.runtimes import RUNTIMES, exported_onnx, openvino_cpu_config  # noqa: E402
from descriptors.threads import setup_threads  # noqa: E402

# NNCF variants: name -> which convolutions stay f32 (the rest: int8 weights and activations)
OPENVINO_INT8_VARIANTS = {
    "openvino-int8-nncf": (),  # NNCF's defaults
    "openvino-int8-nncf-f32-ends": ("first", "last"),
    "openvino-int8-nncf-f32-ends-dw": ("first", "last", "depthwise"),
}
Run = Callable[[np.ndarray], np.ndarray]
MAX_COMPILED_SHAPES = 32  # openvino_per_shape: box crops give many shapes, each compiled model its own buffers


def int8_loader(variant: str) -> Callable[[Path, int], Run]:
    """How an int8 variant is compiled: OpenVINO 2026.4's CPU plugin computes wrong activations
    around int8 depthwise convolutions with dynamic H/W (relative error ~1.1 vs ~0.35 compiled for the
    input's static shape), so a variant that quantizes them is compiled once per input shape; one
    that keeps them f32 runs dynamic, as the product compiles f32 (its error is the same both ways:
    `dynamic_compile_max_rel_error`)."""
    return openvino_dynamic if "depthwise" in OPENVINO_INT8_VARIANTS[variant] else openvino_per_shape


def onnxruntime_int8_models(source: Path, calibration: list[np.ndarray], folder: Path) -> dict[str, Path]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"images": x} for x in calibration])

        def get_next(self):
            return next(self.items, None)

    dynamic, prepared, static = folder / "dynamic.onnx", folder / "prepared.onnx", folder / "static.onnx"
    quantize_dynamic(str(source), str(dynamic), weight_type=QuantType.QUInt8)
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(static), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {"onnxruntime-int8-dynamic": dynamic, "onnxruntime-int8-static": static}


def nncf_int8_model(source: Path, calibration: list[np.ndarray], target: Path, keep_f32: tuple[str, ...] = ()) -> Path:
    """`source` (ONNX) quantized by NNCF post-training (calibrated on `calibration`, (1, 3, H, W)
    arrays of any sizes), the convolutions named in `keep_f32` left f32; saved as OpenVINO IR."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(source))
    convolutions = [op for op in model.get_ordered_ops() if op.get_type_name() in ("Convolution", "GroupConvolution")]
    names = ([convolutions[0].get_friendly_name()] if "first" in keep_f32 else []) + (
        [convolutions[-1].get_friendly_name()] if "last" in keep_f32 else [])
    types = ["GroupConvolution"] if "depthwise" in keep_f32 else []
    ignored = nncf.IgnoredScope(names=names, types=types) if names or types else None
    quantized = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration),
                              **({"ignored_scope": ignored} if ignored else {}))
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    return target


@lru_cache(maxsize=16)
def openvino_per_shape(path: Path, threads: int) -> Run:
    """An OpenVINO model compiled once per input shape (static H/W), with the product's CPU settings:
    the workaround for the CPU plugin's wrong int8 activations with dynamic H/W. Usable as a
    `descriptors.runtimes.CompiledTrunk` loader."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    requests: OrderedDict[tuple[int, ...], tuple] = OrderedDict()  # the most recent shapes (memory bound)

    def run(x: np.ndarray) -> np.ndarray:
        entry = requests.get(x.shape)
        if entry is None:
            static = model.clone()
            static.reshape(list(x.shape))
            compiled = core.compile_model(static, "CPU", openvino_cpu_config(threads))
            entry = requests[x.shape] = (compiled.create_infer_request(), compiled.output(0))
            if len(requests) > MAX_COMPILED_SHAPES:
                requests.popitem(last=False)
        requests.move_to_end(x.shape)
        request, output = entry
        return request.infer({0: x})[output]

    return run


@lru_cache(maxsize=16)
def openvino_dynamic(path: Path, threads: int) -> Run:
    """An OpenVINO model compiled with dynamic H/W, the product's settings (no compiled-blob cache)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", openvino_cpu_config(threads))
    request, output = compiled.create_infer_request(), compiled.output(0)
    return lambda x: request.infer({0: x})[output]


def relative_errors(run: Run, inputs: list[np.ndarray], reference: list[np.ndarray]) -> tuple[bool, list[float]]:
    outputs = [run(x)[0] for x in inputs]
    shape_ok = all(o.shape == r.shape for o, r in zip(outputs, reference, strict=True))
    errors = [float(np.linalg.norm(o - r) / np.linalg.norm(r)) for o, r in zip(outputs, reference, strict=True)
              if o.shape == r.shape]
    return shape_ok, errors


def build_variants(source: Path, calibration: list[np.ndarray], folder: Path, results: dict) -> dict[str, tuple]:
    """variant -> (loader(path, threads) -> run, model path, its runtime's f32 variant)."""
    variants: dict[str, tuple] = {}
    start = time.perf_counter()
    for name, path in {"onnxruntime-f32": source, **onnxruntime_int8_models(source, calibration, folder)}.items():
        variants[name] = (RUNTIMES["onnxruntime"], path, "onnxruntime-f32")
    results["quantize_seconds"]["onnxruntime"] = time.perf_counter() - start
    variants["openvino-f32"] = (RUNTIMES["openvino"], source, "openvino-f32")
    variants["openvino-f32-static"] = (openvino_per_shape, source, "openvino-f32")
    if importlib.util.find_spec("nncf") is None:
        results["skipped"] = "OpenVINO int8 variants skipped: nncf is not installed (pip install 'dffsearch[quantization]')"
        print(results["skipped"], file=sys.stderr)
        return variants
    for name, keep_f32 in OPENVINO_INT8_VARIANTS.items():
        start = time.perf_counter()
        path = nncf_int8_model(source, calibration, folder / f"{name}.xml", keep_f32)
        results["quantize_seconds"][name] = time.perf_counter() - start
        variants[name] = (int8_loader(name), path, "openvino-f32")
    return variants


def main() -> None:
    from bench_descriptors import load_photos

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="timed photos")
    parser.add_argument("--calibration", type=int, default=16, help="calibration photos (not timed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="2,1", help="thread counts, each timed (default 2,1)")
    parser.add_argument("--image-size", type=int, default=retrieval_image_size("efficientnet-lite0"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    setup_threads(max(thread_counts), verbose=True, prog="bench_int8")
    backbone = load_backbone("efficientnet-lite0")
    photos, source = load_photos(args.images + args.calibration)
    inputs = [backbone.preprocess(p, args.image_size).unsqueeze(0).numpy() for p in photos]
    timed, calibration = inputs[: args.images], inputs[args.images:] or inputs[:1]
    with torch.inference_mode():
        reference = [backbone.extract([torch.from_numpy(x[0])])[0].numpy() for x in timed]
    results: dict = {"source": source, "image_size": args.image_size, "input_shapes": sorted({x.shape[2:] for x in timed}),
                     "quantize_seconds": {}, "shape_ok": {}, "max_rel_error": {}, "mean_rel_error": {},
                     "dynamic_compile_max_rel_error": {}}
    with tempfile.TemporaryDirectory(prefix="bench_int8_") as folder:
        variants = build_variants(exported_onnx(backbone), calibration, Path(folder), results)
        runs = {(name, t): loader(path, t) for name, (loader, path, _) in variants.items() for t in thread_counts}
        for name, (_, path, _) in variants.items():
            shape_ok, errors = relative_errors(runs[name, thread_counts[0]], timed, reference)
            results["shape_ok"][name] = shape_ok
            results["max_rel_error"][name] = max(errors) if errors else None
            results["mean_rel_error"][name] = statistics.mean(errors) if errors else None
            if name.startswith("openvino-int8"):  # the plugin's dynamic-shape int8 result, for the record
                errors = relative_errors(openvino_dynamic(path, thread_counts[0]), timed, reference)[1]
                results["dynamic_compile_max_rel_error"][name] = max(errors) if errors else None
        for run in runs.values():  # warm-up: every shape compiled / allocated before timing
            for x in timed:
                run(x)
        samples: dict[tuple[str, int], list[float]] = {key: [] for key in runs}
        for _ in range(args.rounds):
            for key, run in runs.items():  # interleaved: every variant and thread count sees the same load
                for x in timed:
                    start = time.perf_counter()
                    run(x)
                    samples[key].append(1000 * (time.perf_counter() - start))
    results["forward_ms"] = {str(t): {name: statistics.median(samples[name, t]) for name in variants} for t in thread_counts}
    results["speedup_vs_f32"] = {str(t): {name: results["forward_ms"][str(t)][f32] / results["forward_ms"][str(t)][name]
                                          for name, (_, _, f32) in variants.items()} for t in thread_counts}
    print_table(results, list(variants), thread_counts, args.image_size, source)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_table(results: dict, names: list[str], thread_counts: list[int], image_size: int, source: str) -> None:
    def number(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print(f"\nint8 vs f32, efficientnet-lite0, {image_size} px, batch 1, {source}\n")
    timing = " | ".join(f"{t} thr. ms | vs f32" for t in thread_counts)
    print(f"| {'variant':<30} | {timing} | max rel. err | mean rel. err | shape ok |")
    print("|" + "|".join(["-" * 32] + ["-" * 11, "-" * 8] * len(thread_counts) + ["-" * 14, "-" * 15, "-" * 10]) + "|")
    for name in names:
        cells = " | ".join(f"{results['forward_ms'][str(t)][name]:9.1f} | {results['speedup_vs_f32'][str(t)][name]:6.2f}"
                           for t in thread_counts)
        print(f"| {name:<30} | {cells} | {number(results['max_rel_error'][name], '12.2e'):>12} | "
              f"{number(results['mean_rel_error'][name], '13.2e'):>13} | {results['shape_ok'][name]!s:>8} |")
    for name, error in results["dynamic_compile_max_rel_error"].items():
        print(f"{name} compiled with dynamic H/W (as the product compiles f32): max rel. error {number(error, '.2e')}")
    if "skipped" in results:
        print(results["skipped"])


if __name__ == "__main__":
    main()
