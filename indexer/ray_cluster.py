"""Joining or starting a Ray cluster: the one place that imports `ray` for dff-index and dff-serve.

`address`: "local" starts a private local Ray (small object store, this machine's CPUs), "auto"
joins the cluster `ray start` started on this machine, "ray://host:10001" connects through the
Ray client, any other string is passed to `ray.init(address=...)` as is.
"""

from __future__ import annotations

import os

from .errors import IndexerError

LOCAL = "local"
# a private local Ray keeps its object store small: the collection flows through it one shard at a time
LOCAL_OBJECT_STORE_MB = 400

RAY_MISSING = (
    "--ray needs Ray (ray[data,serve]), which is not installed; install the extra: "
    "pip install -e '.[ray]' (or pip install 'dffsearch[ray]')"
)


class RayUnavailableError(IndexerError):
    """`ray` is not installed, or the cluster cannot be reached."""


def import_ray():
    """`ray`, or a `RayUnavailableError` that names the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailableError(RAY_MISSING) from exc
    return ray


# the message of Ray's fixed 30 s wait for a new local node to register
LOCAL_START_TIMEOUT = "timed out during startup"


def start_local(ray, **init_options) -> None:
    """`ray.init` of a new local cluster, tried twice: Ray waits a fixed 30 s for the new node to
    register, which a busy machine (a build or a test suite beside it) can miss once."""
    try:
        ray.init(address=LOCAL, **init_options)
    except Exception as exc:  # Ray raises a bare Exception for this one
        if LOCAL_START_TIMEOUT not in str(exc):
            raise
        ray.shutdown()
        ray.init(address=LOCAL, **init_options)


def connect(address: str | None, *, num_cpus: int | None = None, object_store_mb: int | None = None):
    """`ray.init` for `address` (see module docstring); a no-op when this process is connected already.

    Worker processes import this package by name, so every node needs dffsearch installed (or
    the repository on its PYTHONPATH); a local cluster inherits this process's environment.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    address = address or LOCAL
    options: dict = {"logging_level": "WARNING", "log_to_driver": True, "include_dashboard": False}
    try:
        if address == LOCAL:
            mb = object_store_mb or int(os.environ.get("DFF_RAY_OBJECT_STORE_MB", LOCAL_OBJECT_STORE_MB))
            # "local", not None: None would join a cluster `ray start` left on this machine
            start_local(ray, num_cpus=num_cpus, object_store_memory=mb * 1024 * 1024, **options)
        else:
            options.pop("include_dashboard")
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailableError(
            f"cannot join the Ray cluster at {address!r}: {exc}; start one with `ray start --head` "
            "or pass --ray with no address for a local one"
        ) from exc
    return ray


def cluster_resources() -> dict[str, float]:
    """The cluster's total resources (`CPU`, `GPU`, ...), as Ray reports them."""
    ray = import_ray()
    return dict(ray.cluster_resources())
