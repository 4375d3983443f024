"""lm-eval's prompt templates compiled once per process (hm3.evaluate.templates): the same text as lm-eval's own
compile-on-every-call, its errors included."""

from __future__ import annotations

import pytest
from jinja2 import Environment

from hm3.evaluate.templates import compile_templates_once

TEMPLATES = [
    "Question: {{question}}\nAnswer:",
    "{{ text | regex_replace('[0-9]+', '#') }} -> {{ answer }}",
    "{% for c in choices %}{{ loop.index }}. {{ c }}\n{% endfor %}",
    "{{answer}}\n",  # lm-eval keeps the trailing newline
]
DOCS = [
    {"question": "2+2?", "text": "a1b22", "answer": "4", "choices": ["x", "y"]},
    {"question": "sort 312", "text": "no digits", "answer": "123", "choices": []},
]


def _fresh(template: str, doc: dict) -> str:
    """lm-eval 0.4.13's apply_template as it ships: a new compile on every call, in its own Environment."""
    from lm_eval import utils

    env = Environment(loader=utils.BaseLoader, undefined=utils.StrictUndefined, keep_trailing_newline=True)
    env.filters["regex_replace"] = utils.regex_replace
    return env.from_string(template).render(**doc)


def test_templates_compile_once_and_render_as_lm_eval_does() -> None:
    from jinja2.exceptions import UndefinedError
    from lm_eval import utils

    compile_templates_once()
    compile_templates_once()  # idempotent: the same wrapper
    assert utils.apply_template.compiles_once
    before = utils.apply_template.compiled.cache_info().misses
    for _ in range(3):
        for doc in DOCS:
            for template in TEMPLATES:
                assert utils.apply_template(template, doc) == _fresh(template, doc)
    assert utils.apply_template.compiled.cache_info().misses - before <= len(TEMPLATES)
    with pytest.raises(UndefinedError):  # a field the document lacks fails as before
        utils.apply_template("{{ missing }}", DOCS[0])
    with pytest.raises(UndefinedError):
        utils.apply_template("{{ missing }}", DOCS[1])  # and again, from the kept template
