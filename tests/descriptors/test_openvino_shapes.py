"""descriptors.openvino_shapes: a recurring input shape runs on a model compiled for it, same values."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from descriptors.runtimes import exported_onnx, is_installed, openvino_cpu_config

pytestmark = pytest.mark.skipif(not is_installed("openvino"), reason="openvino is not installed")


@pytest.fixture(scope="module")
def model_and_inputs(sample_photos):
    import openvino as ov

    from descriptors.backbones import load_backbone

    backbone = load_backbone("efficientnet-lite0")
    # two real photos at two aspect ratios (small: each static compile takes ~0.1-0.4 s)
    inputs = [backbone.preprocess(sample_photos[name], 64)[None].numpy() for name in ("chelsea", "hubble_deep_field")]
    assert inputs[0].shape != inputs[1].shape
    return ov.Core(), str(exported_onnx(backbone)), inputs


def make(model_and_inputs, **options):
    from descriptors.openvino_shapes import ShapeCompiledModel

    core, path, inputs = model_and_inputs
    options.setdefault("background", False)  # an in-process server test may have set dff-serve's mode
    return ShapeCompiledModel(core, path, openvino_cpu_config(1, 1), **options), inputs


def dynamic_result(run, x: np.ndarray) -> np.ndarray:
    request = run.compiled.create_infer_request()
    return request.infer({0: x})[run.compiled.output(0)].copy()


def test_the_shapes_nth_forward_compiles_it_and_the_values_stay(model_and_inputs):
    run, inputs = make(model_and_inputs, static_after=3)
    x = inputs[0]
    want = dynamic_result(run, x)
    results = []
    for count in range(1, 5):
        results.append(run(x).copy())
        assert run.static_shapes == ([x.shape] if count >= 3 else []), count
    for got in results:
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))
    assert run.static_shapes == [x.shape] and inputs[1].shape not in run.static_shapes


def test_at_most_max_static_shapes_are_compiled(model_and_inputs):
    run, inputs = make(model_and_inputs, static_after=1, max_static=1)
    first, second = inputs
    want = dynamic_result(run, second)
    run(first)
    got = [run(second).copy() for _ in range(3)]
    assert run.static_shapes == [first.shape], "the second shape stays on the dynamic model"
    for result in got:
        np.testing.assert_allclose(result, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))


def test_concurrent_forwards_compile_a_shape_once_and_agree(model_and_inputs):
    run, inputs = make(model_and_inputs, static_after=2)
    wants = [dynamic_result(run, x) for x in inputs]
    compiled_models: list = []
    real_compile = run._core.compile_model

    def counting_compile(model, *args):
        compiled = real_compile(model, *args)
        if not isinstance(model, str):  # a reshaped model (the dynamic one was compiled from the path)
            compiled_models.append(tuple(model.input(0).get_partial_shape().to_shape()))
        return compiled

    run._core = type("Core", (), {"compile_model": staticmethod(counting_compile),
                                  "read_model": staticmethod(model_and_inputs[0].read_model)})()
    got: dict[int, list] = {}

    def forward_all(worker: int) -> None:
        got[worker] = [(i, run(x).copy()) for _ in range(3) for i, x in enumerate(inputs)]

    workers = [threading.Thread(target=forward_all, args=(w,)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(compiled_models) == sorted(x.shape for x in inputs), "each shape compiled exactly once"
    assert run.static_shapes == sorted(x.shape for x in inputs)
    for results in got.values():
        for index, result in results:
            np.testing.assert_allclose(result, wants[index], rtol=1e-5, atol=1e-6 * float(np.abs(wants[index]).max()))


def test_shape_models_stay_out_of_the_on_disk_cache(model_and_inputs, tmp_path):
    """Only the dynamic model's blob is cached: one per shape and thread count would pile up."""
    import openvino as ov

    from descriptors.openvino_shapes import ShapeCompiledModel

    _, path, inputs = model_and_inputs
    core = ov.Core()
    core.set_property({"CACHE_DIR": str(tmp_path)})
    run = ShapeCompiledModel(core, path, openvino_cpu_config(1, 1), static_after=1, background=False)
    blobs = sorted(tmp_path.iterdir())
    assert len(blobs) == 1
    for x in inputs:
        run(x)
    assert run.static_shapes == sorted(x.shape for x in inputs) and sorted(tmp_path.iterdir()) == blobs


def test_a_server_compiles_in_the_background_and_the_values_stay(model_and_inputs):
    """dff-serve's mode: the triggering forward runs on the dynamic model, no request waits."""
    from descriptors import openvino_shapes

    run, inputs = make(model_and_inputs, static_after=2, background=None)
    x = inputs[1]
    want = dynamic_result(run, x)
    openvino_shapes.compile_in_background(True)  # what dff-serve's start_server calls
    try:
        got = [run(x).copy() for _ in range(2)]
        run.wait_for_compiles(timeout=120)
        assert run.static_shapes == [x.shape]
        got.append(run(x).copy())
    finally:
        openvino_shapes.compile_in_background(False)
    for result in got:
        np.testing.assert_allclose(result, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))
