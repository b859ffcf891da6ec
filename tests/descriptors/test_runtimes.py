"""descriptors.runtimes: the backbone through ONNX Runtime / OpenVINO gives PyTorch's activations."""

from __future__ import annotations

import pytest
import torch

from descriptors.backbones import load_backbone
from descriptors.runtimes import (
    RUNTIMES,
    RuntimeUnavailableError,
    available_runtimes,
    default_runtime,
    export_key,
    exported_onnx,
    is_installed,
    resolve_runtime,
    session_threads,
    use_runtime,
)
from descriptors.threads import available_cpus

COMPILED = [name for name in ("onnxruntime", "openvino") if is_installed(name)]


@pytest.fixture(scope="module")
def photos_and_reference(sample_photos):
    backbone = load_backbone("efficientnet-lite0")
    # three aspect ratios: the exported graph has a dynamic height and width
    images = [backbone.preprocess(sample_photos[name], 224) for name in ("chelsea", "astronaut", "hubble_deep_field")]
    return images, backbone.extract(images)


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPILED)
def test_runtime_activations_equal_torch_on_real_photos(name, photos_and_reference):
    images, reference = photos_and_reference
    backbone = use_runtime(load_backbone("efficientnet-lite0"), name)
    assert backbone.runtime == name
    activations = backbone.extract(images)
    assert len({tuple(a.shape) for a in activations}) == 3, "the photos should give three map sizes"
    for got, want in zip(activations, reference, strict=True):
        assert got.shape == want.shape and got.dtype == torch.float32
        assert float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want)) <= 1e-3
        assert float((got - want).abs().max() / want.abs().max()) <= 1e-3


@pytest.mark.parametrize("name", COMPILED)
def test_extract_of_several_images_equals_one_at_a_time(name, sample_photos):
    """`extract` of several images (two of one size: one batch of 2) gives exactly the
    activations of one image at a time through the caller's session."""
    backbone = use_runtime(load_backbone("efficientnet-lite0"), name)
    images = [backbone.preprocess(sample_photos[n], 160) for n in ("chelsea", "astronaut", "coffee", "rocket", "chelsea")]
    one_at_a_time = [backbone.compiled_trunk(x[None])[0] for x in images]
    extracted = backbone.extract(images)
    for got, want in zip(extracted, one_at_a_time, strict=True):
        assert got.shape == want.shape
        assert float((got - want).abs().max() / want.abs().max()) <= 1e-5


def test_export_is_cached_per_weights(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    monkeypatch.setenv("DFF_RUNTIME_CACHE", str(tmp_path))
    backbone = load_backbone("efficientnet-lite0")
    first = exported_onnx(backbone)
    assert first.parent == tmp_path and first.suffix == ".onnx"
    stamp = first.stat().st_mtime_ns
    # with its export cached, a fresh backbone is never built (no timm import, no weights load)
    fresh = load_backbone("efficientnet-lite0")
    assert not fresh.trunk_built
    assert exported_onnx(fresh) == first and first.stat().st_mtime_ns == stamp
    assert not fresh.trunk_built
    assert use_runtime(fresh, "torch").trunk_built  # torch runs the module: built at load time
    assert export_key(load_backbone("efficientnet-lite0", reflection_padding=True)) != export_key(backbone)
    assert export_key(backbone) in first.name
    other_weights = load_backbone("efficientnet-lite0")
    other_weights.weights_sha256 = "0" * 64
    assert export_key(other_weights) != export_key(backbone)
    assert [p.name for p in tmp_path.iterdir()] == [first.name], "no temporary file is left behind"


def test_runtime_choice_and_its_errors():
    assert available_runtimes("cpu")[-1] == "torch"
    assert default_runtime("cpu") == available_runtimes("cpu")[0]
    assert resolve_runtime("auto", "cpu") == default_runtime("cpu")
    assert resolve_runtime("torch", "cuda") == "torch"
    assert set(RUNTIMES) == {"torch", "onnxruntime", "openvino"}
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        resolve_runtime("tensorrt")
    with pytest.raises(RuntimeUnavailableError, match="CPU only"):
        resolve_runtime("openvino", "cuda")


@pytest.mark.parametrize(
    ("compute", "cpus", "expected"),
    [(1, 16, 1), (3, 16, 2), (5, 16, 4), (15, 16, 8), (16, 16, 16), (11, 12, 8), (12, 12, 12), (0, 4, 1), (20, 4, 4)],
)
def test_session_threads_are_all_cpus_or_a_power_of_two(compute, cpus, expected):
    assert session_threads(compute, cpus) == expected


@pytest.mark.skipif(not COMPILED, reason="neither onnxruntime nor openvino is installed")
def test_each_forward_uses_the_session_for_its_callers_threads_now(photos_and_reference):
    """A load-following server changes a pool thread's compute threads between requests
    (descriptors.threads.follow_load); the compiled forward must follow, not keep the count the
    session was created with."""
    import threading

    images, reference = photos_and_reference
    backbone = use_runtime(load_backbone("efficientnet-lite0"), COMPILED[0])
    trunk = backbone.compiled_trunk
    requested: list[int] = []
    real_loader = RUNTIMES[COMPILED[0]]

    def recording_loader(path, threads):
        requested.append(threads)
        return real_loader(path, threads)

    trunk._loader = recording_loader
    results = {}

    def forward_with(threads: int) -> None:
        torch.set_num_threads(threads)  # what follow_load does in a pool thread
        results[threads] = backbone.extract(images[:1])[0]

    cpus = available_cpus()
    for threads in (1, cpus):
        worker = threading.Thread(target=forward_with, args=(threads,))
        worker.start()
        worker.join()
    assert requested == [1, cpus]
    for got in results.values():
        want = reference[0]
        assert float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want)) <= 1e-3
    assert trunk.session(1) is trunk.session(1), "one session per thread count, created once"


@pytest.mark.parametrize(("threads", "cpus", "expected"), [(1, 2, 2), (2, 2, 1), (1, 16, 16), (4, 16, 4), (3, 16, 5), (8, 4, 1)])
def test_openvino_streams_fill_the_cpus(threads, cpus, expected):
    from descriptors.runtimes import openvino_cpu_config, openvino_streams

    assert openvino_streams(threads, cpus) == expected
    config = openvino_cpu_config(threads, expected)
    assert config["NUM_STREAMS"] == expected and config["INFERENCE_NUM_THREADS"] == threads * expected


@pytest.mark.skipif(not is_installed("openvino"), reason="openvino is not installed")
def test_openvino_session_runs_concurrent_requests_on_their_own_streams(photos_and_reference):
    """Two searches forwarding at once on one-thread sessions each get a stream (with one stream
    OpenVINO queued them), and concurrent requests give the sequential results."""
    import threading

    from descriptors.runtimes import RUNTIMES, openvino_streams

    images, _ = photos_and_reference
    backbone = load_backbone("efficientnet-lite0")
    run = RUNTIMES["openvino"](exported_onnx(backbone), 1)
    assert int(run.compiled.get_property("NUM_STREAMS")) == openvino_streams(1) == available_cpus()
    inputs = [image[None].numpy() for image in images]
    sequential = [run(x).copy() for x in inputs]
    got: dict[int, list] = {}

    def forward_all(worker: int) -> None:
        got[worker] = [run(x).copy() for x in inputs for _ in range(2)]

    workers = [threading.Thread(target=forward_all, args=(w,)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for results in got.values():
        for index, result in enumerate(results):
            assert (result == sequential[index // 2]).all()
