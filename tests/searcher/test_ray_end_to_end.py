"""End to end on a real Ray cluster started with `ray start --head` (non-default ports): a killed
`dff-index build --ray auto` resumes at its unfinished shards, `dff-serve --ray auto` serves the
index with 2 shards, `dff-query` gets the answer, and the cluster is stopped."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else shutil.which(name) or name


@pytest.fixture(scope="module")
def ray_head():
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    gcs, client, agent, agent_grpc, metrics, runtime_env = _free_ports(6)
    # Ray's token auth keeps its token in ~/.ray/auth_token, which concurrent clusters of the same
    # user can rewrite under each other; this loopback test cluster runs without it
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{gcs}", "PYTHONWARNINGS": "ignore", "RAY_AUTH_MODE": "disabled"}
    # --block: this process owns the cluster; SIGTERM to it stops exactly this cluster (never `ray stop`,
    # which would stop every Ray on the machine)
    head = subprocess.Popen(
        [_tool("ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
         "--object-store-memory=300000000", "--include-dashboard=false", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}", "--disable-usage-stats"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env,
    )
    output = []
    try:
        # `ray start` prints "Ray runtime started." once the head node is up (it blocks after that)
        for line in head.stdout:
            output.append(line)
            if "Ray runtime started" in line:
                break
        else:
            pytest.fail(f"ray start --head exited: {''.join(output)[-2000:]}")
        threading.Thread(target=head.stdout.read, daemon=True).start()  # keep its pipe drained
    except BaseException:
        head.kill()
        raise
    try:
        yield env
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=120)


def test_ray_build_kill_resume_serve_query(ray_head, tmp_path: Path):
    from searcher_fixtures import INDEXED_PHOTOS, photo

    folder, index = tmp_path / "photos", tmp_path / "index"
    folder.mkdir()
    for i in range(16):  # 16 distinct crops of the sample photos
        base = photo(INDEXED_PHOTOS[i % len(INDEXED_PHOTOS)], 256)
        x0 = 9 * (i // len(INDEXED_PHOTOS))
        base.crop((x0, x0, x0 + 160, x0 + 160)).resize((96, 96)).save(folder / f"img_{i:03d}.jpg", quality=90)
    build = [_tool("dff-index"), "build", str(folder), "--out", str(index), "--ray", "auto", "--workers", "1",
             "--shard-size", "1", "--image-size", "96", "--max-iter", "30", "--threads", "1", "--quiet", "--json"]
    journal = Path(str(index) + ".partial") / "journal.json"
    first = subprocess.Popen(build, env=ray_head, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    done = 0
    while first.poll() is None and done < 2:
        with contextlib.suppress(OSError, ValueError, KeyError):
            done = len(json.loads(journal.read_text())["completed"])
        time.sleep(0.05)
    assert first.poll() is None, f"the first build exited with {first.returncode}: {first.stderr.read()[-3000:]}"
    os.killpg(first.pid, signal.SIGKILL)  # the driver dies mid-build (its Ray workers go with it)
    first.wait()
    assert not index.exists(), "the first build finished before it could be killed"
    second = subprocess.run(build, env=ray_head, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout)
    assert summary["total_indexed"] == 16 and summary["resumed_shards"] >= 2
    assert summary["processed_this_run"] == 16 - summary["resumed_shards"]

    port = _free_ports(1)[0]
    serve = subprocess.Popen(
        [_tool("dff-serve"), "--index", str(index), "--ray", "auto", "--port", str(port), "--shards", "2"],
        env=ray_head, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    try:
        line = serve.stdout.readline()  # printed once the app is deployed and healthy
        assert "listening" in line, f"dff-serve --ray exited with {serve.poll()}"
        query = subprocess.run(
            [_tool("dff-query"), str(folder / "img_005.jpg"), "--port", str(port), "--top-k", "3", "--json"],
            env=ray_head, capture_output=True, text=True, timeout=300,
        )
        assert query.returncode == 0, query.stderr[-2000:]
        results = json.loads(query.stdout)["results"]
        assert Path(results[0]["path"]).name == "img_005.jpg" and results[0]["score"] > 0.99
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=120) == 0
