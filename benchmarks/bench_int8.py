"""int8 quantization of the exported backbone in ONNX Runtime vs its f32 graph (issue 16, optional).

Quantizes `descriptors.runtimes.exported_onnx(efficientnet-lite0)` two ways with
`onnxruntime.quantization`: dynamic (`quantize_dynamic`, uint8 weights) and static QDQ
(`quant_pre_process` + `quantize_static`, per-channel, calibrated on `--calibration` photos that
are not timed). Then, one thread, batch 1, at the product's image size, interleaved in one run:
forward ms per variant and its activations' relative error against torch's (a variant whose
feature map has another shape than torch's reports `shape_ok: false`).
Prints a table and writes `--json FILE` with `forward_ms`, `speedup_vs_f32`, `max_rel_error`,
`shape_ok` (each per variant). Photos: the Paris subset in $DFF_SHARED_DATA, else scikit-image's.

    python benchmarks/bench_int8.py [--images 8] [--calibration 16] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import descriptors  # noqa: E402  (first: passive OpenMP waiting before torch/numpy load)

descriptors.configure_environment()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from descriptors.backbones import load_backbone, retrieval_image_size  # noqa: E402
from descriptors.runtimes import exported_onnx  # noqa: E402
from descriptors.threads import setup_threads  # noqa: E402


def quantized_models(source: Path, calibration: list[np.ndarray], folder: Path) -> dict[str, Path]:
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
    return {"f32": source, "int8-dynamic": dynamic, "int8-static": static}


def one_thread_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x})[0]


def main() -> None:
    from bench_descriptors import load_photos

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="timed photos")
    parser.add_argument("--calibration", type=int, default=16, help="static calibration photos (not timed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=retrieval_image_size("efficientnet-lite0"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    setup_threads(1, verbose=True, prog="bench_int8")
    backbone = load_backbone("efficientnet-lite0")
    photos, source = load_photos(args.images + args.calibration)
    inputs = [backbone.preprocess(p, args.image_size).unsqueeze(0).numpy() for p in photos]
    timed, calibration = inputs[: args.images], inputs[args.images:] or inputs[:1]
    with torch.inference_mode():
        reference = [backbone.extract([torch.from_numpy(x[0])])[0].numpy() for x in timed]
    with tempfile.TemporaryDirectory(prefix="bench_int8_") as folder:
        start = time.perf_counter()
        models = quantized_models(exported_onnx(backbone), calibration, Path(folder))
        quantize_s = time.perf_counter() - start
        runs = {name: one_thread_session(path) for name, path in models.items()}
        results: dict = {"source": source, "image_size": args.image_size, "quantize_seconds": quantize_s,
                         "shape_ok": {}, "max_rel_error": {}}
        for name, run in runs.items():
            outputs = [run(x)[0] for x in timed]
            results["shape_ok"][name] = all(o.shape == r.shape for o, r in zip(outputs, reference, strict=True))
            errors = [float(np.linalg.norm(o - r) / np.linalg.norm(r)) for o, r in zip(outputs, reference, strict=True)
                      if o.shape == r.shape]
            results["max_rel_error"][name] = max(errors) if errors else None
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():  # interleaved: every variant sees the same load
                for x in timed:
                    start = time.perf_counter()
                    run(x)
                    samples[name].append(1000 * (time.perf_counter() - start))
    results["forward_ms"] = {name: statistics.median(v) for name, v in samples.items()}
    results["speedup_vs_f32"] = {name: results["forward_ms"]["f32"] / v for name, v in results["forward_ms"].items()}
    print(f"\nint8 vs f32, ONNX Runtime, efficientnet-lite0, {args.image_size} px, 1 thread, {source}\n")
    print(f"| {'variant':<13} | {'forward ms':>10} | {'vs f32':>6} | {'max rel. error':>14} | shape ok |")
    print(f"|{'-' * 15}|{'-' * 12}|{'-' * 8}|{'-' * 16}|{'-' * 10}|")
    for name in runs:
        error = results["max_rel_error"][name]
        print(f"| {name:<13} | {results['forward_ms'][name]:10.1f} | {results['speedup_vs_f32'][name]:6.2f} | "
              f"{'-' if error is None else f'{error:.2e}':>14} | {results['shape_ok'][name]!s:>8} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
