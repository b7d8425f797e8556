"""Checks where users' files enter quasr: manifests, sweep configs, and the JSON-lines records that a
resumable run appends to. Shapes are small declarative rules (`Fields`, `ListOf`, `MapOf` over scalar
rules); a value that breaks one raises InputError naming the file, the key or line, what was expected
and what was found. InputError is a ValueError, which `quasr` prints as one `quasr: error:` line."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable


class InputError(ValueError):
    """Bad input, with where it is and how to fix it."""


class _Mismatch(Exception):
    """A rule's failure at `path` (keys and indices from the checked value's root); `check` turns it
    into an InputError naming the source."""

    def __init__(self, path: tuple, text: str):
        super().__init__(text)
        self.path, self.text = path, text


def describe(value: Any) -> str:
    """A value as a message shows it, in YAML/JSON terms."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        text = repr(value)
        return f"the string {text if len(text) <= 60 else text[:56] + '...' + text[0]}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def shown(text: str) -> str:
    """`text` as a one-line message shows it: quoted and escaped when it has control characters."""
    return text if text.isprintable() else repr(text)


def _key_path(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{shown(p)}" if out else shown(p))
    return f"`{out}`"


def _and(items) -> str:
    items = [f"`{i}`" for i in items]
    return " and ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " and " + items[-1]


def error_at(source: str, key: str | tuple, text: str) -> InputError:
    """InputError for `key` (a key path such as "datasets[1].limit", or a tuple of its parts) of `source`."""
    return InputError(f"{source}: {_key_path(key if isinstance(key, tuple) else (key,))} {text}")


class Rule:
    """What a value must be: `expected` reads in messages ("a positive integer"), `accepts` tests the
    value itself, `check_parts` (containers) its items."""

    def __init__(self, expected: str, accepts: Callable[[Any], bool] = lambda v: True):
        self.expected, self.accepts = expected, accepts

    def check(self, value: Any, path: tuple = ()) -> None:
        if not self.accepts(value):
            raise _Mismatch(path, f"must be {self.expected}, got {describe(value)}")
        self.check_parts(value, path)

    def check_parts(self, value: Any, path: tuple) -> None:
        pass

    def or_null(self) -> "Rule":
        return _Nullable(self)


class _Nullable(Rule):
    def __init__(self, rule: Rule):
        super().__init__(f"{rule.expected} or null", lambda v: v is None or rule.accepts(v))
        self.rule = rule

    def check_parts(self, value, path):
        if value is not None:
            self.rule.check_parts(value, path)


class ListOf(Rule):
    def __init__(self, item: Rule, expected: str, min_items: int = 0):
        super().__init__(expected, lambda v: isinstance(v, list) and len(v) >= min_items)
        self.item = item

    def check(self, value, path=()):
        if isinstance(value, str):  # `models: whisper-tiny.en` would otherwise be read letter by letter
            raise _Mismatch(path, f"must be {self.expected}, got {describe(value)} (write one item as [{value!r}])")
        super().check(value, path)

    def check_parts(self, value, path):
        for i, v in enumerate(value):
            self.item.check(v, path + (i,))


def _named_keys(value: dict, path: tuple) -> None:
    for k in value:
        if not isinstance(k, str):
            raise _Mismatch(path, f"has a key that is not a name (a string): {describe(k)}")


class MapOf(Rule):
    """A mapping of any names to values of one rule."""

    def __init__(self, value: Rule, expected: str):
        super().__init__(expected, lambda v: isinstance(v, dict))
        self.value = value

    def check_parts(self, value, path):
        _named_keys(value, path)
        for k, v in value.items():
            self.value.check(v, path + (k,))


class Fields(Rule):
    """A mapping with `required` and `optional` keys, each with its rule; other keys are refused unless
    `other_keys` (a manifest row may carry a license or an origin)."""

    def __init__(self, expected: str, required: dict[str, Rule] | None = None, optional: dict[str, Rule] | None = None,
                 other_keys: bool = False):
        super().__init__(expected, lambda v: isinstance(v, dict))
        self.required, self.optional, self.other_keys = required or {}, optional or {}, other_keys
        self.known = {**self.required, **self.optional}

    def check_parts(self, value, path):
        _named_keys(value, path)
        missing = [k for k in self.required if k not in value]
        if missing:
            raise _Mismatch(path, f"must be {self.expected}: missing {_and(missing)}")
        unknown = [k for k in value if k not in self.known]
        if unknown and not self.other_keys:
            raise _Mismatch(path, f"has unknown keys {sorted(unknown)} (known: {sorted(self.known)})")
        for k, rule in self.known.items():
            if k in value:
                rule.check(value[k], path + (k,))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


ANY = Rule("anything")
STRING = Rule("a string", lambda v: isinstance(v, str))
TEXT = Rule("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")
BOOL = Rule("true or false", lambda v: isinstance(v, bool))
NUMBER = Rule("a number", _is_number)
NON_NEGATIVE = Rule("a finite number >= 0", lambda v: _is_number(v) and math.isfinite(v) and v >= 0)
COUNT = Rule("a whole number >= 0", lambda v: _is_int(v) and v >= 0)
POSITIVE_INT = Rule("a positive whole number", lambda v: _is_int(v) and v > 0)


def check(rule: Rule, value: Any, source: str, name: str, fix: str = "") -> Any:
    """`value` if it follows `rule`, else InputError naming `source` (a file, or file:line), the key
    that is wrong (`name` when it is the whole value), and `fix` if given."""
    try:
        rule.check(value)
    except _Mismatch as m:
        where = _key_path(m.path) if m.path else name
        raise InputError(f"{source}: {where} {m.text}" + (f"; {fix}" if fix else "")) from None
    return value


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a user's file; unreadable or binary is an InputError naming it."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: the {what} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror or exc}); check the path and its permissions") from None


def _json(raw: bytes) -> Any:
    """One line's JSON value; raises ValueError (UnicodeDecodeError, JSONDecodeError) if it has none."""
    return json.loads(raw.decode("utf-8"))


def _why_not_json(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    return "not UTF-8 text"


# What to do about a bad line of a file quasr appends results to (cells.jsonl).
RECORD_FIX = "fix the line, or delete it and rerun to redo that cell"


def read_json_lines(path: Path, rule: Rule, what: str, fix: str, cut_truncated_tail: bool = False) -> list[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON-lines file, each checked against `rule`.
    A bad line is an InputError naming file, line and `fix`. With `cut_truncated_tail` (a file quasr
    appends to), a last line with no newline that is not JSON is what a run killed mid-write leaves:
    it is cut from the file with a warning, so the next append starts a clean line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    out = []
    for n, raw in enumerate(lines + [tail], 1):
        if not raw.strip():
            continue
        try:
            value = _json(raw)
        except ValueError as exc:
            if n == len(lines) + 1 and cut_truncated_tail:
                with path.open("r+b") as f:
                    f.truncate(len(data) - len(tail))
                warnings.warn(f"{path}:{n}: dropped a truncated last line (a run stopped while writing it) and cut "
                              "it from the file; what it recorded is redone", stacklevel=2)
                break
            raise InputError(f"{path}:{n}: {_why_not_json(exc)}; {fix}") from None
        out.append((n, check(rule, value, f"{path}:{n}", "the line", fix)))
    return out


def append_json_line(path: Path, value: Any) -> None:
    """Append `value` as one JSON line: one write of the whole line, flushed and synced, so a killed run
    leaves at most a partial last line (which read_json_lines cuts). A file whose last line lacks its
    newline (edited by hand) gets one first, so the two lines stay apart."""
    line = (json.dumps(value) + "\n").encode()
    with path.open("a+b") as f:  # appends land at the end whatever the position; reads follow it
        if f.seek(0, os.SEEK_END):
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
