"""HiMoLE: a hierarchical mixture of LoRA experts on a causal LM's FFN blocks (Jiang et al.).

Modules, in data-flow order:

* :mod:`hm3.himole.config` — the recipe's ``himole:`` section;
* :mod:`hm3.himole.data` — training pairs (JSONL or the toy zoo's generators), validation split, batches;
* :mod:`hm3.himole.clustering` — sentence embeddings and K-means into the N knowledge groups;
* :mod:`hm3.himole.experts` — LoRA experts, the two-level router, the mixture FFN (the math);
* :mod:`hm3.himole.model` — attaching the mixture to a llama / qwen2 model, in training and generation;
* :mod:`hm3.himole.training` — the phases (stage 1, stage 2, single-stage baselines) with early stopping;
* :mod:`hm3.himole.pipeline` — ``hm3 himole train``: data, clusters, stages, save;
* :mod:`hm3.himole.storage` — one adapter folder (adapters, routers, centroids), written atomically;
* :mod:`hm3.himole.evaluation` — ID and OOD scores through lm-eval.

Nothing heavy is imported here: the recipe schema imports :mod:`hm3.himole.config`.
"""
