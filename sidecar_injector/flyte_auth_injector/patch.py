"""RFC 6902 JSON Patch from a diff of before and after (never built by hand against positions).

`jsonpatch.make_patch` gives the same result but looks for moved list items, which cost
~1 ms per review on a typical pod, two thirds of the webhook's time (bench/README.md). This
diff is exact and simple: objects key by key, lists of equal length item by item, a list
that only grew gets `add` at the end, any other list change replaces the list. Applying the
patch to `before` always gives `after` (tested against jsonpatch with hypothesis).
"""

from __future__ import annotations

from typing import Any


def _pointer(path: str, key: str | int) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def diff(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    if before == after:  # Python equality: 1 == 1.0 == true; the mutation never swaps those
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        ops: list[dict[str, Any]] = [{"op": "remove", "path": _pointer(path, k)}
                                     for k in before if k not in after]
        for key, value in after.items():
            if key not in before:
                ops.append({"op": "add", "path": _pointer(path, key), "value": value})
            else:
                ops += diff(before[key], value, _pointer(path, key))
        return ops
    if isinstance(before, list) and isinstance(after, list):
        n = len(before)
        if len(after) == n:
            return [op for i in range(n) for op in diff(before[i], after[i], _pointer(path, i))]
        if len(after) > n and after[:n] == before:
            return [{"op": "add", "path": _pointer(path, "-"), "value": v} for v in after[n:]]
    return [{"op": "replace", "path": path, "value": after}]
