"""Integration fixtures: one real local Ray for the whole run, and troupe runtimes started on it."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from troupe.config.settings import Settings
from troupe.control_panel.request_ids import IMPORT_PATH as REQUEST_ID_MIDDLEWARE
from troupe.runtime import Runtime

_namespaces = itertools.count()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    if not ray.is_initialized():
        # as troupe does when it starts Ray: Serve's made-up request ids are marked as not a caller's
        os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", REQUEST_ID_MIDDLEWARE)
        # a Ray of its own, even if another cluster runs on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="troupe-tests", log_to_driver=False)
    yield
    ray.shutdown()


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp,
        "model_backend": "fake",
        "session_pool_size": 1,
        "life_loops_enabled": False,
        "namespace": f"troupe-test-{os.getpid()}-{next(_namespaces)}",
        "supervisor_poll_s": 0.2,
        "restart_backoff_s": 0.05,
        "insecure": True,  # the suites of other features run open; tests/integration/test_security.py does not
    }
    values.update(overrides)
    return Settings(**values)


def write_script(path: Path, items: list[Any]) -> Path:
    path.write_text(json.dumps(items))
    return path


@pytest.fixture
def start_runtime(ray_session: None) -> Iterator[Any]:
    """Start a troupe runtime with given settings; every runtime started is stopped afterwards."""
    started: list[Runtime] = []

    def start(settings: Settings, **kwargs: Any) -> Runtime:
        runtime = Runtime.start(settings, **kwargs)
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        runtime.stop()


def wait_until_up(url: str, path: str = "/health", within: float = 60.0) -> None:
    """Poll a door until `path` answers 200 (a door that is starting refuses connections or answers 503)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url}{path} did not answer 200 within {within:.0f} s")
