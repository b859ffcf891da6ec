"""`start_local` tries a new local Ray cluster a second time only when Ray's node-registration
wait ran out (a busy machine); any other failure is raised as it is. A stand-in for the `ray`
module records the calls (the real timeout needs an overloaded machine)."""

import pytest

from indexer.ray_cluster import LOCAL, LOCAL_START_TIMEOUT, start_local


class RayStandIn:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures, self.calls = failures, []

    def init(self, **options) -> None:
        self.calls.append(("init", options))
        if self.failures:
            raise self.failures.pop(0)

    def shutdown(self) -> None:
        self.calls.append(("shutdown", {}))


def test_a_missed_node_registration_is_retried_once():
    ray = RayStandIn([Exception(f"The current node {LOCAL_START_TIMEOUT}. This could happen ...")])
    start_local(ray, num_cpus=2)
    assert [name for name, _ in ray.calls] == ["init", "shutdown", "init"]
    assert ray.calls[-1][1] == {"address": LOCAL, "num_cpus": 2}


def test_other_failures_and_a_second_timeout_are_raised():
    ray = RayStandIn([ValueError("bad num_cpus")])
    with pytest.raises(ValueError, match="bad num_cpus"):
        start_local(ray, num_cpus=-1)
    assert [name for name, _ in ray.calls] == ["init"]
    timeout = Exception(f"node {LOCAL_START_TIMEOUT}")
    ray = RayStandIn([timeout, timeout])
    with pytest.raises(Exception, match=LOCAL_START_TIMEOUT):
        start_local(ray)
    assert [name for name, _ in ray.calls] == ["init", "shutdown", "init"]
