"""The Dockerfile builds an image whose `troupe serve` answers /health from a running container (podman).

Skipped without podman or without a base image: set TROUPE_TEST_CONTAINER_BASE to a local image with
Python 3.11 (`.ci/run` makes one with debootstrap, since CI reaches no container registry)."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = os.environ.get("TROUPE_TEST_CONTAINER_BASE", "python:3.11-slim")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

pytestmark = pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # crun cannot start containers on a host with hybrid cgroups (CI's); runc can
    runtime = ["--runtime", "runc"] if shutil.which("runc") else []
    return subprocess.run(["podman", *runtime, *args], capture_output=True, text=True, timeout=timeout)


def ulimits() -> list[str]:
    """Limits no higher than this process's: podman's defaults are higher, and raising them needs a
    capability a sandboxed CI runner lacks."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nofile = 65536 if nofile == resource.RLIM_INFINITY else nofile
    nproc = 8192 if nproc == resource.RLIM_INFINITY else min(nproc - 1, 8192)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if podman("image", "exists", BASE).returncode != 0:
        pytest.skip(f"base image {BASE} is not on this machine (set TROUPE_TEST_CONTAINER_BASE)")
    tag = f"localhost/troupe-test:{uuid.uuid4().hex[:8]}"
    cert = []
    if CA_BUNDLE.exists():  # pip in the build trusts what this machine trusts (a proxy's CA included)
        cert = ["--build-arg", "PIP_CERT=/run/host-ca.crt", "-v", f"{CA_BUNDLE}:/run/host-ca.crt:ro"]
    began = time.monotonic()
    built = podman(
        "build", "--format", "docker", "--build-arg", f"BASE={BASE}", *cert, *ulimits(), "-t", tag, str(ROOT),
        timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    size = podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    print(f"image built in {time.monotonic() - began:.0f} s, {int(size) / 1e9:.2f} GB")
    yield tag
    podman("rmi", "-f", tag)


@pytest.mark.timeout(900)
def test_container_answers_health_and_its_healthcheck_passes(image: str) -> None:
    port = free_port()
    name = f"troupe-test-{uuid.uuid4().hex[:8]}"
    started = podman(
        "run", "-d", "--name", name, *ulimits(), "--shm-size=512m", "-p", f"127.0.0.1:{port}:3000",
        "-e", "TROUPE_MODEL_BACKEND=fake", "-e", "TROUPE_LIFE_LOOPS_ENABLED=false", image,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        began = time.monotonic()
        status = None
        while time.monotonic() - began < 180:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=3).status_code
            except httpx.TransportError:
                status = None
            if status == 200:
                break
            assert podman("container", "exists", name).returncode == 0
            state = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            assert state == "true", podman("logs", name).stderr[-3000:]
            time.sleep(2)
        logs = podman("logs", name)
        assert status == 200, (logs.stdout + logs.stderr)[-3000:]
        print(f"/health answered 200 {time.monotonic() - began:.0f} s after the container started")
        # the image's own HEALTHCHECK (python's urllib: slim images have no curl) passes too
        check = podman("healthcheck", "run", name)
        assert check.returncode == 0, check.stdout + check.stderr
        # it runs as the non-root user and keeps its store in the volume
        assert podman("exec", name, "id", "-u").stdout.strip() == "1000"
        assert podman("exec", name, "test", "-f", "/data/troupe.db").returncode == 0
    finally:
        podman("stop", "-t", "20", name)
        podman("rm", "-f", name)
