"""Retrieval quality with an OpenVINO int8 backbone: `dff-eval` with the forward swapped for one
of `bench_int8.py`'s NNCF variants (issue 16, optional int8; not a product option).

The variant is quantized here (NNCF post-training, calibrated on the first `--calibration` Paris
photos at the evaluation's image size) and every backbone forward of the evaluation runs through
it, compiled as bench_int8.int8_loader says (once per input shape where OpenVINO's CPU plugin
computes wrong int8 activations with dynamic H/W). Its activations get their own cache: a temporary folder
removed at the end, unless `--cache-dir` is given (the cache folder's name carries the variant
and the calibration size, so f32 caches are never read or written). Everything after `--` is
`dff-eval`'s command line; compare with the same command run as plain `dff-eval`.

    python benchmarks/map_int8.py [--variant openvino-int8-nncf] [--calibration 16] [--calibration-photos samples] -- \\
        instance --dataset paris6k --root DIR --protocol landmark-loo --methods nmf-v,nmf-vu --qe 0 --rerank 0
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import descriptors  # noqa: E402  (first: passive OpenMP waiting before torch/numpy load)

descriptors.configure_environment()

from bench_int8 import OPENVINO_INT8_VARIANTS, int8_loader, nncf_int8_model  # noqa: E402

import descriptors.runtimes as runtimes  # noqa: E402
from descriptors.backbones import load_backbone, retrieval_image_size  # noqa: E402

# scikit-image's real photos (no network): calibration independent of the evaluated images
SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "cat", "stereo_motorcycle", "camera")


def install_int8_forward(variant: str, model: Path, label: str) -> None:
    """Every later `use_runtime(backbone, ...)` runs `backbone`'s forward through `model`."""

    def int8_runtime(backbone, name: str | None = "auto"):
        backbone.compiled_trunk = runtimes.CompiledTrunk(variant, int8_loader(variant), model)
        backbone.runtime = label  # names the activation cache's folder: never an f32 one
        return backbone

    runtimes.use_runtime = int8_runtime


def main() -> int:
    from bench_descriptors import load_photos

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="openvino-int8-nncf", choices=tuple(OPENVINO_INT8_VARIANTS))
    parser.add_argument("--calibration", type=int, default=16, help="calibration photos (the first Paris photos)")
    parser.add_argument("--calibration-photos", default="paris",
                        help="paris: the first Paris photos (also in the evaluation); samples: scikit-image's "
                             f"{len(SAMPLE_PHOTOS)} photos, none of them evaluated; a folder: its first images, sorted")
    parser.add_argument("--calibration-size", type=int, default=None,
                        help="their smaller side (default: efficientnet-lite0's retrieval size, 320)")
    parser.add_argument("eval_args", nargs=argparse.REMAINDER, help="-- then dff-eval's arguments")
    args = parser.parse_args()
    eval_args = args.eval_args[1:] if args.eval_args[:1] == ["--"] else args.eval_args
    if importlib.util.find_spec("nncf") is None:
        print("map_int8: nncf is not installed (pip install 'dffsearch[quantization]'); nothing measured", file=sys.stderr)
        return 2
    if "--backbone" in eval_args:
        print("map_int8: the int8 models are of efficientnet-lite0 only", file=sys.stderr)
        return 2
    from evaluation.cli import main as dff_eval

    backbone = load_backbone("efficientnet-lite0")
    size = args.calibration_size or retrieval_image_size("efficientnet-lite0")
    if args.calibration_photos == "samples":
        from descriptors.sample_photos import sample_photo

        photos = [sample_photo(name) for name in SAMPLE_PHOTOS[: args.calibration]]
        source = f"scikit-image sample photos ({len(photos)})"
    elif args.calibration_photos == "paris":
        photos, source = load_photos(args.calibration)
    else:
        from descriptors.images import decode_image, iter_image_files

        files = list(iter_image_files(args.calibration_photos))[: args.calibration]
        if not files:
            print(f"map_int8: no images in --calibration-photos {args.calibration_photos}", file=sys.stderr)
            return 2
        photos, source = [decode_image(f) for f in files], f"{args.calibration_photos} ({len(files)} images)"
    calibration = [backbone.preprocess(p, size).unsqueeze(0).numpy() for p in photos]
    print(f"map_int8: {args.variant}, calibrated on {source} at {size} px", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="map_int8_") as folder:
        model = nncf_int8_model(runtimes.exported_onnx(backbone), calibration, Path(folder) / "model.xml",
                                OPENVINO_INT8_VARIANTS[args.variant])
        install_int8_forward(args.variant, model, f"{args.variant}-{Path(args.calibration_photos).name}{len(calibration)}x{size}")
        if "--cache-dir" not in eval_args:
            eval_args += ["--cache-dir", str(Path(folder) / "activations")]
        return dff_eval(eval_args)


if __name__ == "__main__":
    sys.exit(main())
