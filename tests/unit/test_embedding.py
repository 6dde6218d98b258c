"""The embedding model as recall uses it: the ONNX graph gives all-MiniLM-L6-v2's own vectors, is built
once per machine into the cache, and still works where the cache cannot be written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from troupe.store import embedding

MODEL = embedding._model_dir()
pytestmark = pytest.mark.skipif(MODEL is None, reason="the embedding model's weights are not installed")

TEXTS = ["Her daughter Maya starts school in March.", "The vendor Acme keeps missing deadlines."]
# all-MiniLM-L6-v2's vectors for TEXTS, first three numbers, from the reference forward pass (numpy,
# weight by weight, as sentence-transformers computes it) that this graph replaced
REFERENCE = np.array([[0.02925, -0.02890, 0.03287], [-0.08877, -0.01948, 0.02693]], dtype=np.float32)
REFERENCE_COSINE = 0.16209


def test_the_graph_gives_the_models_own_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TROUPE_CACHE_DIR", str(tmp_path))
    assert MODEL is not None
    vectors = embedding.Embedder(MODEL).embed(TEXTS)
    assert vectors.shape == (2, embedding.DIMENSIONS) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[:, :3], REFERENCE, atol=1e-4)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(REFERENCE_COSINE, abs=1e-4)


def test_padding_does_not_change_a_texts_vector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A short text embedded beside a long one (so padded) gets the vector it gets alone."""
    monkeypatch.setenv("TROUPE_CACHE_DIR", str(tmp_path))
    assert MODEL is not None
    model = embedding.Embedder(MODEL)
    alone = model.embed([TEXTS[0]])[0]
    padded = model.embed([TEXTS[0], "a much longer sentence " * 12])[0]
    assert float(alone @ padded) > 0.9999
    assert model.embed([]).shape == (0, embedding.DIMENSIONS)


def test_the_graph_is_built_once_and_then_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TROUPE_CACHE_DIR", str(tmp_path / "cache"))
    assert MODEL is not None
    first = embedding._graph_file(MODEL)
    assert isinstance(first, Path) and first.parent == tmp_path / "cache"
    data = first.with_suffix(".data")
    assert data.stat().st_size > 80_000_000  # the weights beside the graph, not inside it
    assert first.stat().st_size < 1_000_000
    written = (first.stat().st_mtime_ns, data.stat().st_mtime_ns)
    assert embedding._graph_file(MODEL) == first
    assert (first.stat().st_mtime_ns, data.stat().st_mtime_ns) == written  # not rebuilt
    left = sorted(p.name for p in first.parent.iterdir())
    assert left == sorted([first.name, data.name, first.with_suffix(".lock").name])  # no half-written graph


def test_an_unwritable_cache_still_embeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("TROUPE_CACHE_DIR", str(blocked / "cache"))
    assert MODEL is not None
    assert isinstance(embedding._graph_file(MODEL), bytes)
    vectors = embedding.Embedder(MODEL).embed(TEXTS)
    assert np.allclose(vectors[:, :3], REFERENCE, atol=1e-4)
