"""Each lm-eval prompt template compiled once per process, not once per document.

lm-eval renders every ``doc_to_text`` / ``doc_to_target`` / few-shot context through
``lm_eval.utils.apply_template``, which compiles its Jinja template from the string on every call
(lm-evaluation-harness issue #1286, open). Building one split's requests compiles the same few templates once
per document and field: on the small toy zoo 1,686 compilations, 1.3 s of the 2.3 s that ``hm3 select --rollout``
spends opening a run and scoring one path (every open of a run builds its requests once: ``hm3 merge``,
``--resume``, ``select``, ``pareto``). :func:`compile_templates_once` makes ``apply_template`` keep the compiled
template of each string (lm-eval's own ``Environment``, the same source: the same rendering, tested against a
fresh compile in ``tests/test_templates.py``).
"""

from __future__ import annotations

import functools

TEMPLATES_KEPT = 1024
"""Compiled templates kept (least recently used first out): a task has a handful; many tasks, some hundreds."""


def compile_templates_once() -> None:
    """Make ``lm_eval.utils.apply_template`` compile each template string once per process (idempotent)."""
    from lm_eval import utils

    if getattr(utils.apply_template, "compiles_once", False):
        return
    compiled = functools.lru_cache(maxsize=TEMPLATES_KEPT)(utils.env.from_string)

    def apply_template(template: str, doc: dict) -> str:
        return compiled(template).render(**doc)

    apply_template.compiles_once = True  # type: ignore[attr-defined]
    apply_template.compiled = compiled  # type: ignore[attr-defined]  # its cache_info(): what was compiled
    apply_template.__doc__ = utils.apply_template.__doc__
    utils.apply_template = apply_template
