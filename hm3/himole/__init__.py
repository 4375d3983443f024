"""HiMoLE: a hierarchical mixture of LoRA experts on a causal LM's FFN blocks (Jiang et al.).

Modules, in data-flow order:

* :mod:`hm3.himole.config` — the recipe's ``himole:`` section (:mod:`hm3.himole.checks`: its files);
* :mod:`hm3.himole.data` — training pairs (JSONL or the toy zoo's generators), validation split, batches;
* :mod:`hm3.himole.clustering` — sentence embeddings and K-means into the N knowledge groups;
* :mod:`hm3.himole.experts` — LoRA experts, the two-level gate (the paper's "router"), the mixture FFN (the
  math);
* :mod:`hm3.himole.model` — attaching the mixture to a llama / qwen2 model, in training and generation;
* :mod:`hm3.himole.training` — one training phase: validation every E steps, early stopping, best state kept;
* :mod:`hm3.himole.stages` — the schedules: stage 1 per cluster + stage 2, or one phase (baselines);
* :mod:`hm3.himole.pipeline` — ``hm3 himole train``: data, clusters, stages, save;
* :mod:`hm3.himole.storage` — one adapter folder (experts, gates, centroids), written atomically;
* :mod:`hm3.himole.evaluation` — ID and OOD scores through lm-eval.

Nothing heavy is imported here: the recipe schema imports :mod:`hm3.himole.config`.
"""
