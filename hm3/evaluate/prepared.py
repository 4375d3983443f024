"""One objective's lm-eval requests on one split, built once and scored for any number of models.

``lm_eval.evaluator.evaluate`` rebuilds a task's requests (prompt templates, few-shot contexts) on every call —
a quarter of a toy candidate's scoring (``benchmarks/results/eval_profile.md``) spent on text that never
changes between candidates. :class:`PreparedSplit` builds them once, with the same arguments ``evaluate`` would
pass, and then replays ``evaluate``'s steps for each model: the requests through the ``HFLM`` (or, for plain
greedy generation, :mod:`hm3.evaluate.greedy`'s exact shortcut), the task's own filters, ``process_results``
per document and the task's aggregation. Exact-match scores of the usual kind are computed in one call of
lm-eval's metric over all documents instead of one call per document (the same comparison, element by
element; their mean is the same count over the same total).

``LanguageObjective.score_with_lm_eval`` keeps the plain ``evaluate`` call; the parity tests
(``tests/test_fast_scoring.py``) compare the two on every zoo task.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lm_eval.api import metrics as lm_metrics
from lm_eval.api.task import ConfigurableTask

from hm3.evaluate.greedy import GreedyRequests, greedy_requests, greedy_texts
from hm3.evaluate.templates import compile_templates_once

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance
    from lm_eval.api.task import Task


@dataclass
class ShortcutUse:
    """How many documents' texts came from the greedy shortcut, and how many from lm-eval's decoding."""

    greedy: int = 0
    lm_eval: int = 0


@dataclass
class PreparedSplit:
    """A task's requests on a split's documents, built once (see the module docstring).

    Attributes:
        task: lm-eval's task object (its filters and metrics run on these instances).
        metric: The metric scored (``exact_match``).
        filter_key: The filter whose output is scored (``none``).
        instances: The requests, in ``build_all_requests`` order.
        documents: ``(doc_id, doc)`` in lm-eval's document order, each with its instances.
        greedy: The shortcut's tokenised requests, or ``None`` where lm-eval's decoding is always used.
        golds: Each document's exact-match reference, where one vectorised metric call replaces
            ``process_results``; else ``None``.
        use: Which decoding each scoring used.
    """

    task: Task
    metric: str
    filter_key: str
    instances: list[Instance]
    documents: list[tuple[dict, list[Instance]]]
    greedy: GreedyRequests | None
    golds: list[str] | None
    use: ShortcutUse = field(default_factory=ShortcutUse)
    _batches: tuple[int, list[list[int]]] | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls, task: Task, indices: list[int], lm: Any, metric_key: str, chat: bool, shortcut: bool = True
    ) -> PreparedSplit:
        """Build the requests of ``indices`` as ``lm_eval.evaluator.evaluate`` would (few-shot already seeded
        by the caller).

        Args:
            shortcut: Allow the greedy shortcut and the vectorised exact match (False: lm-eval's steps only).
        """
        compile_templates_once()  # the same prompts, each template compiled once (hm3.evaluate.templates)
        task.build_all_requests(
            samples=indices,
            rank=0,
            world_size=1,
            apply_chat_template=chat,
            fewshot_as_multiturn=chat,
            chat_template=lm.apply_chat_template if chat else None,
            tokenizer_name=getattr(lm, "tokenizer_name", "") if chat else "",
        )
        instances = list(task.instances)
        by_document: dict[int, list[Instance]] = defaultdict(list)
        for instance in instances:
            by_document[instance.doc_id].append(instance)
        for group in by_document.values():
            group.sort(key=lambda instance: instance.idx)
        documents = [
            (doc, by_document[doc_id])
            for doc_id, doc in task.doc_iterator(rank=0, limit=None, world_size=1, samples=indices)
        ]
        metric, filter_key = metric_key.split(",", 1)
        golds = _exact_match_golds(task, metric, documents) if shortcut else None
        greedy = None
        if shortcut and task.OUTPUT_TYPE == "generate_until":
            firsts = [group[0] for _, group in documents]
            if len(firsts) == len(instances) and all(a is b for a, b in zip(firsts, instances, strict=True)):
                # one request per document, in document order: drafts and references line up with the rows
                greedy = greedy_requests(lm, instances, [task.doc_to_target(doc) for doc, _ in documents])
        return cls(task, metric, filter_key, instances, documents, greedy, golds)

    def score(self, lm: Any) -> float:
        """The metric of the model inside ``lm`` on these documents, as ``evaluate`` reports it."""
        for instance in self.instances:
            instance.resps = []
            instance.filtered_resps = {}
        if self.greedy is None:
            self.use.lm_eval += len(self.instances)
            self._run_lm(lm, self.instances)
        else:
            self._generate(lm)
        self.task._instances = self.instances
        self.task.apply_filters()
        return float(self._aggregate())

    def _generate(self, lm: Any) -> None:
        """Greedy texts from the shortcut; a document it cannot decide gets lm-eval's decoding of the very batch
        lm-eval puts it in (same rows, same order, same padding: the same numbers)."""
        golds = self.golds if self.plain_exact_match else None
        texts = greedy_texts(lm, self.greedy, golds)  # type: ignore[arg-type]
        undecided = {row for row, text in enumerate(texts) if text is None}
        for batch in self._lm_eval_batches(lm):
            if undecided.intersection(batch):
                requests = [self.instances[row] for row in batch]
                for row, text in zip(batch, lm.generate_until(requests, disable_tqdm=True), strict=True):
                    texts[row] = text
                self.use.lm_eval += len(batch)
            else:
                self.use.greedy += len(batch)
        for instance, text in zip(self.instances, texts, strict=True):
            instance.resps.append(text)

    def _lm_eval_batches(self, lm: Any) -> list[list[int]]:
        """The rows of each batch ``HFLM.generate_until`` forms: longest context first (ties by text), cut into
        ``batch_size`` rows."""
        size = int(lm.batch_size)
        if self._batches is None or self._batches[0] != size:
            contexts = [instance.args[0] for instance in self.instances]
            order = sorted(
                range(len(contexts)), key=lambda row: (-len(lm.tok_encode(contexts[row])), contexts[row])
            )
            self._batches = (size, [order[start : start + size] for start in range(0, len(order), size)])
        return self._batches[1]

    @property
    def plain_exact_match(self) -> bool:
        """Exact match on the raw generation (no filter, no normalisation): a text that differs from the
        reference scores 0 whatever it is, so the shortcut may stop decoding it (see ``greedy_texts``)."""
        kwargs = self.task._metric_fn_kwargs.get(self.metric, {})
        return (
            self.golds is not None
            and self.filter_key == "none"
            and self.task.config.filter_list is None
            and not any(kwargs.values())
        )

    def _run_lm(self, lm: Any, instances: list[Instance]) -> None:
        """``evaluate``'s model step: each request type through the ``HFLM``, ``repeats`` copies each."""
        by_type: dict[str, list[Instance]] = defaultdict(list)
        for instance in instances:
            by_type[instance.request_type].extend([instance] * instance.repeats)
        for request_type, requests in by_type.items():
            for response, request in zip(getattr(lm, request_type)(requests), requests, strict=True):
                request.resps.append(response)

    def _aggregate(self) -> Any:
        if self.golds is not None:
            predictions = [group[0].filtered_resps[self.filter_key] for _, group in self.documents]
            kwargs = self.task._metric_fn_kwargs.get(self.metric, {})
            return lm_metrics.exact_match_hf_evaluate(
                predictions=predictions, references=self.golds, **kwargs
            )["exact_match"]
        items = []
        for doc, group in self.documents:
            values = self.task.process_results(
                doc, [request.filtered_resps[self.filter_key] for request in group]
            )
            if self.metric in values:
                items.append(values[self.metric])
        aggregate = self.task.aggregation().get(self.metric, lm_metrics.mean)
        return aggregate(items)


def _exact_match_golds(
    task: Task, metric: str, documents: list[tuple[dict, list[Instance]]]
) -> list[str] | None:
    """The references of a plain exact-match task (one generation per document, one string target, lm-eval's
    own metric and mean), where one metric call over all documents equals the per-document calls; else None."""
    plain = (
        metric == "exact_match"
        and task.OUTPUT_TYPE == "generate_until"
        and type(task).process_results is ConfigurableTask.process_results
        and task.config.process_results is None
        and task.config.doc_to_choice is None
        and not task.multiple_target
        and task._metric_fn_list.get("exact_match") is lm_metrics.exact_match_fn
        and task.aggregation().get("exact_match") is lm_metrics.mean
        and all(len(group) == 1 for _, group in documents)
    )
    if not plain:
        return None
    golds = [task.doc_to_target(doc) for doc, _ in documents]
    if any(isinstance(gold, list) for gold in golds):
        return None
    return [gold if isinstance(gold, str) else str(gold) for gold in golds]
