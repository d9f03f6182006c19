"""InfluxDB line protocol for point values: `<measurement>,<tags> <field>=<value> <time ns>`.

Naming (docs/export.md): the measurement is the point type; the tags are the node's id, its
description, its node type, the point's key and its metadata (`tag` points, see tags.py). The
field's name says the value's kind, so each field keeps one type for ever: a device that sends
`21` one day and `21.5` the next writes `valueInt` then `value`, where one `value` field would
have its second write refused by InfluxDB as a field type conflict.

| value | field |
|---|---|
| float | `value=21.5` |
| int (64-bit signed) | `valueInt=21i` |
| bool | `valueBool=true` |
| str | `valueText="..."` |
| list, map | `valueText="<JSON>"` |

nil and bytes values are not written (there is no field type for them).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

FLOAT_FIELD = "value"
INT_FIELD = "valueInt"
BOOL_FIELD = "valueBool"
TEXT_FIELD = "valueText"

# Line protocol escapes, per element. InfluxDB 1.x and 2.x read `\\` in a name or tag
# differently (1.x keeps both backslashes, 2.x one), and 1.x cannot parse a backslash at the end
# of a tag; a plain backslash elsewhere is itself for both. So a backslash is kept as it is,
# except where it would escape what follows or end the element: there it is written as `/`.
_AMBIGUOUS_BACKSLASH = re.compile(r"\\(?=[,= ]|$)")
_NEWLINES = str.maketrans({"\n": " ", "\r": " "})
_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})
_TAG_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\"})


def escape_measurement(name: str) -> str:
    return _AMBIGUOUS_BACKSLASH.sub("/", name.translate(_NEWLINES)).translate(_MEASUREMENT_ESCAPES)


def escape_tag(text: str) -> str:
    """A tag key or value. Line protocol cannot hold a newline there: it becomes a space (as in
    a measurement name)."""
    return _AMBIGUOUS_BACKSLASH.sub("/", text.translate(_NEWLINES)).translate(_TAG_ESCAPES)


def series_key(measurement: str, tags: Mapping[str, str]) -> str:
    """`measurement,k=v,...` with tags sorted by key (what InfluxDB sorts them to anyway); tags with
    an empty value are left out, as line protocol has no empty tag value."""
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):
        value = tags[key]
        if key and value:
            parts.append(f"{escape_tag(key)}={escape_tag(value)}")
    return ",".join(parts)


def field(value: object) -> str | None:
    """`<field>=<value>` for a point value, or None when it has no line protocol form."""
    if isinstance(value, bool):
        return f"{BOOL_FIELD}={'true' if value else 'false'}"
    if isinstance(value, int):
        return f"{INT_FIELD}={value}i"
    if isinstance(value, float):
        if not math.isfinite(value):  # the write path refuses these; a defence, not a case
            return None
        return f"{FLOAT_FIELD}={value!r}"
    if isinstance(value, str):
        return f'{TEXT_FIELD}="{value.translate(_STRING_ESCAPES)}"'
    if isinstance(value, (list, dict)):
        try:
            text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=_bytes_as_hex)
        except (TypeError, ValueError):  # a map with keys of mixed types cannot be sorted
            return None
        return f'{TEXT_FIELD}="{text.translate(_STRING_ESCAPES)}"'
    return None


def _bytes_as_hex(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} has no JSON form")


def tag_text(value: object) -> str:
    """A `tag` point's value as a tag value: strings as they are, bools as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)
