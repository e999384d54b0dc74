"""Reading a run's ``metrics.jsonl`` (MindSpore-free, so tools read run directories without it).

The trainer appends one JSON record per log point (``phase``, ``iter``, losses; evaluation
records also ``target_<metric>``). A resumed run logs again the points after its last
checkpoint and a killed run may leave a line cut short, so readers keep the last copy of each
``(phase, iter)`` and skip unreadable lines.
"""
import json


def read_run_log(path, keep=None):
    """``(records, skipped)``: the records with a ``phase`` and an ``iter`` (and passing ``keep(rec)``), last copy
    of each ``(phase, iter)`` wins, ordered by phase (in order of first appearance) then iteration; ``skipped``
    counts the lines that were not JSON."""
    records, phases, skipped = {}, [], 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                skipped += 1
                continue
            if not isinstance(rec, dict) or "phase" not in rec or "iter" not in rec:
                continue
            if keep is not None and not keep(rec):
                continue
            if rec["phase"] not in phases:
                phases.append(rec["phase"])
            records[(rec["phase"], int(rec["iter"]))] = rec
    ordered = sorted(records.values(), key=lambda r: (phases.index(r["phase"]), int(r["iter"])))
    return ordered, skipped


def is_evaluation(rec):
    """An evaluation record: it holds a target score (``target_acc``, ``target_miou``, ...)."""
    return any(k.startswith("target_") for k in rec)
