"""Option values from text: each converter raises ValueError with a message that shows the
bad value (Settings turns it into one problem line naming the flag and its env var).
Stdlib only."""

from __future__ import annotations

import math
import re
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_DIGITS = re.compile(r"[0-9]{1,18}")


def to_bool(value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (use true or false)")


def to_path(value: str) -> Path:
    return Path(value)


def to_positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if not number > 0 or not math.isfinite(number):
        raise ValueError(f"{value!r} must be a finite number greater than 0")
    return number


def whole_number_in(value: str, low: int, high: int) -> int | None:
    """`value` as an int in [low, high], or None. ASCII digits only, at most 18 of them:
    str.isdigit() also accepts '²' and 5 000-digit strings, on which int() raises."""
    if not _DIGITS.fullmatch(value):
        return None
    number = int(value)
    return number if low <= number <= high else None


def to_positive_int(value: str) -> int:
    number = whole_number_in(value.strip(), 1, 10**18)
    if number is None:
        raise ValueError(f"{value!r} is not a whole number greater than 0")
    return number


def to_non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if not number >= 0:
        raise ValueError(f"{value!r} must be 0 or more")
    return number


def to_file_mode(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise ValueError(f"{value!r} is not an octal file mode (e.g. 0660)") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{value!r} is not an octal file mode between 0000 and 0777")
    return mode


def to_uids(value: str) -> frozenset[int]:
    uids: set[int] = set()
    for part in value.replace(" ", ",").split(","):
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"{part!r} is not a numeric uid (give a comma-separated list)")
        uids.add(int(part))
    if not uids:
        raise ValueError("the list of uids is empty")
    return frozenset(uids)


def to_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 0.0.0.0:8081)")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an empty host means all


def to_http_url(value: str) -> str:
    scheme, _, rest = value.partition("://")
    if scheme not in ("http", "https") or not rest or rest.startswith("/"):
        raise ValueError(f"{value!r} is not an http(s) URL (e.g. https://idp.example/oauth2/token)")
    return value
