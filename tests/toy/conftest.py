"""A tiny random world shared by the toy tests (built once per session, in seconds)."""

from __future__ import annotations

import pytest

from omniopd.toy import ToyWorld, build_tiny


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> ToyWorld:
    return build_tiny(tmp_path_factory.mktemp("tiny-world"))
