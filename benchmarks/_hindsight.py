"""How much could any split of HM3's budget between its levels have bought? The split in hindsight.

HM3's runs decide, as they go, how much of the budget the path level spends (a preference's path search stops when
its paths stop paying; what it leaves goes back to the optimised upper level). Its ``param_only`` ablation spends
everything on the same upper-level optimiser, whose merges — same recipe, same seed — are HM3's first round and
then its second (checked here, merge by merge). So every split can be replayed from the two runs' logs without
scoring anything: a split that lets preference i's path search run for its first k_i candidates (in the order it
scored them, screens at their share) spends P on paths and leaves ⌊budget − P⌋ merges, which are ``param_only``'s
first ⌊budget − P⌋.

For each seed, on the search split (what any allocation rule can see), in the anytime table's normalisation:

* ``param_only``: all of the budget on merges;
* ``hm3``: HM3's own run;
* ``hm3 replayed``: HM3's own path searches, in full, and ``param_only``'s merges for the rest — a check of the
  model, which should match HM3's own search-split hypervolume;
* ``best split``: the prefixes (k_1, ..., k_P) whose replay has the highest hypervolume found by coordinate
  ascent over each preference's prefix length (every length of every preference against the others' best, three
  passes; not an exhaustive search) — what a better allocation rule could have made of *these* path searches,
  in hindsight.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

PASSES = 3


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "candidates.jsonl").read_text().splitlines()]


def _distinct(records: list[dict]) -> list[dict]:
    seen, kept = set(), []
    for record in records:
        if record["key"] not in seen:
            seen.add(record["key"])
            kept.append(record)
    return kept


def _merge_identity(record: dict) -> str:
    """A merge by its settings (two runs' keys differ when their scoring fingerprints do)."""
    return json.dumps(record["merge"], sort_keys=True)


def replay(hm3: Path, param_only: Path, names: list[str], signs: np.ndarray, normalization) -> dict:
    """The hindsight figures of one seed (see the module's docstring)."""
    hm3_records, po_records = _records(hm3), _records(param_only)
    full = next(r["documents"] for r in po_records if r.get("split") == "search")

    def points(records: list[dict]) -> np.ndarray:
        rows = [[r["scores"][o] for o in names] for r in records if r["split"] == "search"]
        return np.array(rows, dtype=float).reshape(-1, len(names)) * signs

    merges = _distinct([r for r in po_records if r.get("level") == "merge" and r.get("split") == "search"])
    upper = _distinct(
        [
            r
            for r in hm3_records
            if r.get("level") == "merge" and r.get("split") == "search" and r.get("preference_index") is None
        ]
    )
    same = all(_merge_identity(a) == _merge_identity(b) for a, b in zip(upper, merges, strict=False))
    searches: dict[int, list[tuple[float, dict]]] = {}
    for record in _distinct(
        [
            r
            for r in hm3_records
            if r.get("level") in ("merge", "path")
            and r.get("split") in ("search", "screen")
            and r.get("preference_index") is not None
        ]
    ):
        searches.setdefault(record["preference_index"], []).append((record["documents"] / full, record))
    order = sorted(searches)

    def value(prefixes: list[int]) -> tuple[float, float]:
        spent, chosen = 0.0, []
        for index, length in zip(order, prefixes, strict=True):
            for cost, record in searches[index][:length]:
                spent += cost
                chosen.append(record)
        kept = merges[: math.floor(len(merges) - spent + 1e-9)]
        return normalization.hypervolume(points(kept + chosen)), spent

    best = [0] * len(order)
    best_value, _ = value(best)
    for _ in range(PASSES):
        for position, index in enumerate(order):
            for length in range(len(searches[index]) + 1):
                trial = [*best[:position], length, *best[position + 1 :]]
                trial_value, _ = value(trial)
                if trial_value > best_value + 1e-12:
                    best_value, best = trial_value, trial
    own = _distinct(
        [r for r in hm3_records if r.get("level") in ("merge", "path") and r.get("split") == "search"]
    )
    full_prefixes = [len(searches[i]) for i in order]
    replayed, replayed_spent = value(full_prefixes)
    hindsight, hindsight_spent = value(best)
    return {
        "same_merges": same,
        "param_only": normalization.hypervolume(points(merges)),
        "hm3": normalization.hypervolume(points(own)),
        "hm3_replayed": replayed,
        "hm3_paths_spent": replayed_spent,
        "best": hindsight,
        "best_spent": hindsight_spent,
        "best_prefixes": best,
        "searched": full_prefixes,
    }


def hindsight_rows(
    kind: str, folders: dict[int, tuple[Path, Path]], names, signs, normalization
) -> list[str]:
    """A Markdown table, one row per seed: ``folders`` maps a seed to its (hm3, param_only) run folders."""
    rows = [
        f"Budget split in hindsight ({kind}; `benchmarks/_hindsight.py`): search-split hypervolume (the anytime "
        "table's normalisation) of `param_only`, of HM3's run, of HM3's own path searches replayed with `param_only`'s merges "
        "for the rest of the budget, and of the best split of the same path searches (a prefix of each "
        "preference's search; the budget it leaves to the upper level's next merges):",
        "",
        "| seed | param_only | hm3 | hm3 replayed | its path spend | best split | its path spend | paths kept per "
        "preference (of those searched) | same merge sequence |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for seed, (hm3, param_only) in sorted(folders.items()):
        r = replay(hm3, param_only, names, signs, normalization)
        kept = ", ".join(f"{k}/{n}" for k, n in zip(r["best_prefixes"], r["searched"], strict=True))
        rows.append(
            f"| {seed} | {r['param_only']:.4f} | {r['hm3']:.4f} | {r['hm3_replayed']:.4f} | {r['hm3_paths_spent']:.2f} | "
            f"{r['best']:.4f} | {r['best_spent']:.2f} | {kept} | {'yes' if r['same_merges'] else 'no'} |"
        )
    return [*rows, ""]
