"""Resume an interrupted run.

:mod:`.history` holds what earlier attempts left (result records in etcd and
in the local ``results.jsonl``, attempt entries of the meta) and the rule
that picks each test's latest result; :mod:`.plugin` records this attempt's
results and, with ``--resume``, deselects the tests that passed.
"""

from __future__ import annotations

from .history import RESULTS_FILE, LocalRecord, latest_results, passed_identities, result_json
from .plugin import ResumePlugin, make_plugin

__all__ = [
    "RESULTS_FILE",
    "LocalRecord",
    "ResumePlugin",
    "latest_results",
    "make_plugin",
    "passed_identities",
    "result_json",
]
