"""The driver of `dff-index build --ray` plans, validates and resumes without importing torch:
importing it costs seconds of CPU that the workers starting on the same machine need."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_config_cli_and_stage_one_planning_import_no_torch():
    code = (
        "import sys\n"
        "import indexer.cli, indexer.build, indexer.ray_build, indexer.partial\n"
        "from descriptors.threads import setup_threads\n"
        "from indexer.config import IndexConfig\n"
        "setup_threads(1, load_libraries=False)\n"
        "config = IndexConfig(ray_address='auto', nmf_solver='numba-mu', runtime='torch')\n"
        "config.extraction_fingerprint(); config.descriptor_config()\n"
        "heavy = [m for m in ('torch', 'timm', 'torchvision', 'numba', 'faiss') if m in sys.modules]\n"
        "print(heavy)\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "proto"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_torch_free_names_match_the_registries():
    from descriptors import backbones, nmf, pipeline, runtimes, settings

    assert tuple(pipeline.METHODS) == settings.METHOD_NAMES
    assert {name: s.algorithm for name, s in nmf.SOLVERS.items()} == settings.SOLVER_ALGORITHMS
    assert tuple(runtimes.RUNTIMES) == settings.RUNTIME_NAMES
    assert {name: s.retrieval_image_size for name, s in backbones.BACKBONES.items()} == settings.RETRIEVAL_IMAGE_SIZES
    assert pipeline.DescriptorConfig is settings.DescriptorConfig
