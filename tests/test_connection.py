"""JointConnection: one "lost" and one "back" for several watchers of one etcd."""

from __future__ import annotations

from pytest_taskctl.etcd.connection import JointConnection


def test_lost_once_when_any_part_is_lost_and_back_once_when_all_are_back() -> None:
    heard: list[tuple[bool, str | None]] = []
    joint = JointConnection(lambda connected, error: heard.append((connected, str(error or ""))))
    first, second = joint.callback("flags"), joint.callback("status")

    first(False, OSError("refused"))
    second(False, OSError("refused"))
    first(False, OSError("again"))  # the same state twice changes nothing
    assert heard == [(False, "refused")]

    first(True, None)
    assert heard == [(False, "refused")]  # "status" is still lost
    second(True, None)
    assert heard == [(False, "refused"), (True, "")]
