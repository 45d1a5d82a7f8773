"""Encoding and decoding the JSON records kept in etcd and in ``results.jsonl``.

Anything may sit in a key (a person with ``etcdctl``, an older version, a
torn write), so readers never raise on a bad value: they get ``None``.
"""

from __future__ import annotations

import json
from typing import Any

#: ``json.dumps(value, ensure_ascii=False)`` without building an encoder on every call
#: (``dumps`` reuses its own only with the default arguments).
encode_json = json.JSONEncoder(ensure_ascii=False).encode


def json_object(raw: bytes | str | None) -> dict[str, Any] | None:
    """The JSON object in ``raw``; ``None`` when missing, empty, not JSON or not an object."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
