"""Reading a protocol file: YAML text to a validated :class:`~kiboauto.protocol.model.Protocol`,
with the line and column of every key and value kept for the messages of every later check.

A protocol is read in three stages, each of which reports *every* problem it finds as a
:class:`Problem` (``file:line:column: steps[3].dispense.volume: message``) inside one
:class:`ProtocolError`:

1. bytes: at most :data:`MAX_BYTES`, UTF-8;
2. YAML: composed into nodes by PyYAML's safe loader, refusing aliases (``*name``: an alias can
   make a few lines expand into millions of values), nesting deeper than :data:`MAX_DEPTH` and more
   than :data:`MAX_NODES` nodes; then walked by our own builder, which records positions, refuses
   duplicate keys (PyYAML would silently keep the last one) and keeps keys as the text written;
3. the model: pydantic errors are mapped back to the node they are about (the value for a wrong
   value, the mapping for a missing key, the key for an unknown key), with a message that says what
   was expected.

:func:`load_protocol` returns a :class:`LoadedProtocol`: the protocol, the text, its SHA-256 and
:meth:`LoadedProtocol.position` for checks that run later (:mod:`kiboauto.protocol.validate`).
"""

from __future__ import annotations

import difflib
import hashlib
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from kiboauto.protocol.expressions import ExpressionError, parse_condition, parse_watchdog
from kiboauto.protocol.model import STEP_KINDS, Protocol, StepBase

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "LoadedProtocol",
    "PathKey",
    "Positions",
    "Problem",
    "ProtocolError",
    "format_path",
    "load_protocol",
    "load_text",
]

MAX_BYTES = 1 << 20
"""The largest protocol file read, in bytes (1 MiB)."""

MAX_DEPTH = 64
"""The deepest nesting of YAML mappings and lists accepted."""

MAX_NODES = 100_000
"""The most YAML nodes (keys, values, list items) a protocol may have."""

PathKey = tuple[str | int, ...]
"""Where a value is in the document: keys and list indexes from the top (``('steps', 3)``)."""

Position = tuple[int, int]

_STEP_COMMON_KEYS = frozenset(StepBase.model_fields) | {"on_failure"}


# --------------------------------------------------------------------------------------------
# problems


def format_path(path: Sequence[str | int]) -> str:
    """A path as people read it: ``steps[3].dispense.volume``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True)
class Problem:
    """One mistake in a protocol: where it is (file, 1-based line and column, path of keys) and a
    message that says what was expected. ``line`` 0 means the whole file, ``column`` 0 the whole
    line."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            where = self.file
        elif self.column <= 0:
            where = f"{self.file}:{self.line}"
        else:
            where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """The problem as a JSON-ready mapping."""
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
        }


class ProtocolError(ValueError):
    """A protocol could not be read: every problem found, one per line in ``str()``."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column))
        super().__init__("\n".join(str(p) for p in self.problems))


# --------------------------------------------------------------------------------------------
# positions


@dataclass
class Positions:
    """Where each key and value of the document was written (1-based line, column).

    ``keys[path]`` is the key of a mapping entry, ``values[path]`` the start of its value (for
    list items, the item). ``texts[path]`` is where the characters of a one-line text value start
    when each character of the value is one column of the file (plain or quoted without escapes),
    so that a column inside a condition maps to a column of the file.
    """

    keys: dict[PathKey, Position] = field(default_factory=dict)
    values: dict[PathKey, Position] = field(default_factory=dict)
    texts: dict[PathKey, Position] = field(default_factory=dict)

    def value(self, path: Sequence[str | int]) -> Position:
        """The position of the value at ``path``, else of the nearest enclosing value."""
        p = tuple(path)
        while p:
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get((), (1, 1))

    def key(self, path: Sequence[str | int]) -> Position:
        """The position of the key of ``path`` (of the item, for a list index)."""
        p = tuple(path)
        if p in self.keys:
            return self.keys[p]
        return self.value(p)

    def in_text(self, path: Sequence[str | int], column: int | None) -> Position:
        """The file position of 1-based ``column`` inside the text value at ``path`` (its start
        when the column cannot be mapped)."""
        p = tuple(path)
        if column is not None and column >= 1 and p in self.texts:
            line, col = self.texts[p]
            return line, col + column - 1
        return self.value(p)


@dataclass(frozen=True)
class LoadedProtocol:
    """A protocol read from a file: the model, the text it came from, the SHA-256 of its bytes,
    where it came from, and the position of every key and value for later messages."""

    protocol: Protocol
    text: str
    sha256: str
    source: str
    positions: Positions

    def position(self, path: Sequence[str | int]) -> Position:
        """(line, column) of the value at ``path`` (or of the nearest enclosing value)."""
        return self.positions.value(path)

    def key_position(self, path: Sequence[str | int]) -> Position:
        """(line, column) of the key at ``path``."""
        return self.positions.key(path)

    def problem(
        self,
        path: Sequence[str | int],
        message: str,
        *,
        at_key: bool = False,
        column_in_text: int | None = None,
    ) -> Problem:
        """A :class:`Problem` about the value (or key) at ``path``; ``column_in_text`` points
        inside a one-line text value (a condition)."""
        if at_key:
            line, col = self.positions.key(path)
        else:
            line, col = self.positions.in_text(path, column_in_text)
        return Problem(self.source, line, col, format_path(path), message)


# --------------------------------------------------------------------------------------------
# YAML


class _Refused(Exception):
    def __init__(self, mark: Any, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with aliases refused and nesting and size bounded while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                event.start_mark,
                f"YAML alias '*{event.anchor}' is not allowed in a protocol (aliases can expand "
                "a few lines into millions of values); expected the value written out",
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(
                event.start_mark,
                f"more than {MAX_NODES} YAML values; expected a protocol of at most "
                f"{MAX_NODES} keys, values and list items",
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(
                    event.start_mark,
                    f"nested deeper than {MAX_DEPTH} levels; expected at most {MAX_DEPTH} "
                    "levels of mappings and lists",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _pos(mark: yaml.Mark) -> Position:
    return mark.line + 1, mark.column + 1


def _line_col(text: str, index: int) -> Position:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


_MAP_TAG = "tag:yaml.org,2002:map"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null"))
_SEQ_TAG = "tag:yaml.org,2002:seq"


def _describe_node(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.value!r}"


class _Builder:
    """Builds Python data from YAML nodes, recording positions and refusing duplicate keys."""

    def __init__(self, loader: _BoundedLoader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.positions = Positions()
        self.problems: list[Problem] = []

    def problem(self, at: Position, path: PathKey, message: str) -> None:
        self.problems.append(Problem(self.source, at[0], at[1], format_path(path), message))

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        self.positions.values[path] = _pos(node.start_mark)
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                self.problem(
                    _pos(node.start_mark), path, f"tag {node.tag!r}: expected a plain mapping"
                )
            out: dict[str, Any] = {}
            first: dict[str, Position] = {}
            for key, value in node.value:
                at = _pos(key.start_mark)
                if not isinstance(key, yaml.ScalarNode):
                    self.problem(
                        at, path, f"a key is {_describe_node(key)}; expected a name as the key"
                    )
                    continue
                name = key.value
                if name in first:
                    line, col = first[name]
                    self.problem(
                        at,
                        (*path, name),
                        f"duplicate key '{name}' (first at line {line}, column {col}); "
                        "expected each key once in a mapping",
                    )
                    continue
                first[name] = at
                self.positions.keys[(*path, name)] = at
                out[name] = self.build(value, (*path, name))
            return out
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                self.problem(
                    _pos(node.start_mark), path, f"tag {node.tag!r}: expected a plain list"
                )
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        self._text_position(node, path)
        if node.tag == _TIMESTAMP_TAG:
            return node.value  # a date is text here: no field of a protocol is a date
        if node.tag not in _SCALAR_TAGS:
            self.problem(
                _pos(node.start_mark),
                path,
                f"tag {node.tag!r}; expected a plain value (text, a number, true/false, null)",
            )
            return None
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:  # pragma: no cover - the tags left construct plainly
            problem = getattr(e, "problem", None) or str(e)
            self.problem(_pos(node.start_mark), path, f"{problem}; expected a plain value")
        except (ValueError, OverflowError) as e:
            reason = str(e).split(";")[0]
            self.problem(
                _pos(node.start_mark),
                path,
                f"cannot read {node.value[:20]!r}...: {reason}; expected a number, text or "
                "true/false",
            )
        return None

    def _text_position(self, node: yaml.ScalarNode, path: PathKey) -> None:
        start, end = node.start_mark, node.end_mark
        if start.line != end.line or not isinstance(start.buffer, str):
            return
        raw = start.buffer[start.pointer : end.pointer]
        if node.style is None and raw == node.value:
            self.positions.texts[path] = _pos(start)
        elif node.style in ("'", '"') and raw[1:-1] == node.value:
            self.positions.texts[path] = (start.line + 1, start.column + 2)


def _parse_yaml(text: str, source: str) -> tuple[Any, Positions]:
    """The data and positions of a YAML text; :class:`ProtocolError` for anything unreadable."""

    def fail(at: Position, message: str) -> ProtocolError:
        return ProtocolError([Problem(source, at[0], at[1], "", message)])

    loader: _BoundedLoader | None = None
    try:
        try:
            loader = _BoundedLoader(text)
            node = loader.get_single_node()
        except _Refused as e:
            raise fail(_pos(e.mark) if e.mark else (1, 1), e.message) from None
        except yaml.reader.ReaderError as e:
            at = _line_col(text, min(e.position, len(text)))
            char = e.character if isinstance(e.character, str) else chr(e.character)
            raise fail(
                at,
                f"character U+{ord(char):04X} is not allowed in YAML; expected printable text",
            ) from None
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            message = f"not valid YAML: {e.problem or e.context or 'syntax error'}"
            if e.context and e.problem and e.problem.startswith("but "):
                message = f"not valid YAML: {e.context}, {e.problem}"
            elif e.context and e.context_mark is not None and e.problem_mark is not None:
                c = e.context_mark
                message += f" ({e.context} at line {c.line + 1}, column {c.column + 1})"
            raise fail(_pos(mark) if mark else (1, 1), message) from None
        except yaml.YAMLError as e:
            raise fail((1, 1), f"not valid YAML: {e}") from None
        except RecursionError:  # pragma: no cover - nesting is bounded far below the limit
            raise fail((1, 1), "not valid YAML: nested too deeply") from None
        if node is None:
            raise fail(
                (1, 1), "the file holds no protocol; expected a mapping with name, roles and steps"
            )
        builder = _Builder(loader, source)
        data = builder.build(node, ())
        if builder.problems:
            raise ProtocolError(builder.problems)
        return data, builder.positions
    finally:
        if loader is not None:
            loader.dispose()


# --------------------------------------------------------------------------------------------
# pydantic errors to problems


def _is_step_list(path: PathKey) -> bool:
    """Whether ``path`` is a list of steps (where pydantic puts the step kind into ``loc``)."""
    if path == ("steps",):
        return True
    if len(path) >= 2:
        last, before = path[-1], path[-2]
        return (
            (last == "steps" and before == "repeat")
            or (last in ("then", "else") and before == "branch")
            or (last == "group" and isinstance(before, int))
        )
    return False


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation allows (Annotated, unions and None taken apart)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    return [annotation]


def _model_at(data: Any, path: PathKey) -> type[BaseModel] | None:
    """The pydantic model that reads the mapping at ``path`` of ``data``, if one does."""
    candidates: list[Any] = [Protocol]
    here = data
    for part in path:
        nxt: list[Any] = []
        for ann in candidates:
            for t in _unwrap(ann):
                origin = typing.get_origin(t)
                if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str):
                    for name, f in t.model_fields.items():
                        if part in (f.alias, name):
                            nxt.append(f.annotation)
                elif origin is dict and isinstance(part, str):
                    nxt.append(typing.get_args(t)[1])
                elif origin in (list, tuple) and isinstance(part, int):
                    args = [a for a in typing.get_args(t) if a is not Ellipsis]
                    if origin is tuple and part < len(args):
                        nxt.append(args[part])
                    elif origin is list and args:
                        nxt.append(args[0])
        if isinstance(here, dict) and isinstance(part, str):
            here = here.get(part)
        elif isinstance(here, list) and isinstance(part, int) and 0 <= part < len(here):
            here = here[part]
        else:
            here = None
        candidates = nxt
    models = list(
        dict.fromkeys(
            t
            for ann in candidates
            for t in _unwrap(ann)
            if isinstance(t, type) and issubclass(t, BaseModel)
        )
    )
    steps = [m for m in models if issubclass(m, StepBase)]
    if steps and isinstance(here, dict):
        kinds = [k for k in here if k in STEP_KINDS]
        for m in steps:
            if len(kinds) == 1 and kinds[0] in m.model_fields:
                return m
        return None
    return models[0] if len(models) == 1 else None


def _keys_of(m: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in m.model_fields.items()]


def _describe_input(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return repr(text)
    return repr(value)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


_SHOULD_BE = "Input should be "


def _plain(expected: str) -> str:
    """pydantic's 'a valid string or a valid number' in plainer words."""
    words = []
    for part in expected.split(" or "):
        part = part.split(", got ")[0]
        part = {
            "a valid string": "text",
            "a valid number": "a number",
            "a valid integer": "a whole number",
            "a valid boolean": "true or false",
            "a valid dictionary": "a mapping",
            "a valid list": "a list",
            "a valid tuple": "a list",
        }.get(part, part)
        if part not in words:
            words.append(part)
    if "a number" in words and "a whole number" in words:
        words.remove("a whole number")
    return " or ".join(words)


@dataclass
class _Mapped:
    path: PathKey
    at: Position
    message: str
    expected: str | None = None  # "Input should be X" errors of one place are merged
    found: Any = None


class _ErrorMapper:
    def __init__(self, data: Any, positions: Positions, source: str) -> None:
        self.data = data
        self.positions = positions
        self.source = source

    def locate(self, loc: Sequence[str | int], kind: str) -> tuple[PathKey, Any]:
        """The data path of a pydantic ``loc`` and the value there.

        Elements of ``loc`` that are not keys of the data are dropped: the tag pydantic inserts
        after the index of a step (``('steps', 0, 'dispense', 'dispense', 'volume')``) and the
        names of union members (``'str'``, ``'int'``, ``'function-after[...]'``). A missing key
        is kept as the last element.
        """
        path: list[str | int] = []
        here: Any = self.data
        after_step_index = False
        for i, part in enumerate(loc):
            if after_step_index and isinstance(part, str) and part in STEP_KINDS:
                after_step_index = False
                continue  # the tag of the discriminated step union, not a key
            after_step_index = False
            if isinstance(here, dict) and isinstance(part, str) and part in here:
                path.append(part)
                here = here[part]
            elif (
                isinstance(here, list)
                and isinstance(part, int)
                and not isinstance(part, bool)
                and 0 <= part < len(here)
            ):
                after_step_index = _is_step_list(tuple(path))
                path.append(part)
                here = here[part]
            elif i == len(loc) - 1 and kind == "missing" and isinstance(part, str):
                path.append(part)
                here = None
        return tuple(path), here

    def map(self, err: ErrorDetails) -> _Mapped:
        kind = err["type"]
        path, value = self.locate(err["loc"], kind)
        msg = err["msg"]
        if kind == "missing":
            parent = path[:-1]
            name = path[-1] if path else "?"
            m = _model_at(self.data, parent)
            desc = ""
            if m is not None:
                for fname, f in m.model_fields.items():
                    if name in (f.alias, fname) and f.description:
                        desc = f" ({f.description})"
            return _Mapped(
                path,
                self.positions.value(parent),
                f"missing key '{name}'{desc}; expected '{name}:' in this mapping",
            )
        if kind == "extra_forbidden":
            name = str(path[-1]) if path else "?"
            m = _model_at(self.data, path[:-1])
            expected = ""
            if m is not None:
                keys = _keys_of(m)
                expected = f"; expected one of: {', '.join(keys)}{_suggest(name, keys)}"
            return _Mapped(path, self.positions.key(path), f"unknown key '{name}'{expected}")
        if kind == "step_kind":
            return self._step_kind(path, value)
        if kind == "value_error":
            text = msg.removeprefix("Value error, ")
            column = self._condition_column(value, text)
            if column is not None and path in self.positions.texts:
                return _Mapped(path, self.positions.in_text(path, column), text)
            return _Mapped(path, self.positions.value(path), text)
        if kind == "too_short":
            ctx = err.get("ctx") or {}
            n = ctx.get("min_length", 1)
            return _Mapped(
                path,
                self.positions.value(path),
                f"expected at least {n} item{'s' if n != 1 else ''}, found none",
            )
        if msg.startswith(_SHOULD_BE):
            return _Mapped(
                path,
                self.positions.value(path),
                "",
                expected=msg.removeprefix(_SHOULD_BE),
                found=value,
            )
        return _Mapped(path, self.positions.value(path), msg)

    def _condition_column(self, value: Any, text: str) -> int | None:
        if not isinstance(value, str):
            return None
        try:
            if text.startswith("condition "):
                parse_condition(value)
            elif text.startswith("watchdog "):
                parse_watchdog(value)
            else:
                return None
        except ExpressionError as e:
            return e.column
        return None  # pragma: no cover - the model refused it, so it does not parse

    def _step_kind(self, path: PathKey, value: Any) -> _Mapped:
        kinds_text = ", ".join(STEP_KINDS)
        if not isinstance(value, dict):
            return _Mapped(
                path,
                self.positions.value(path),
                f"a step is {_describe_input(value)}; expected a mapping with one step kind "
                f"(e.g. 'wait: 5 min'), one of: {kinds_text}",
            )
        kinds = [k for k in value if k in STEP_KINDS]
        if len(kinds) > 1:
            second = (*path, kinds[1])
            return _Mapped(
                second,
                self.positions.key(second),
                f"a step has one kind, this one has {len(kinds)} ({', '.join(kinds)}); "
                "expected exactly one kind key per step (write one step for each)",
            )
        unknown = [k for k in value if k not in _STEP_COMMON_KEYS]
        if unknown:
            key = (*path, unknown[0])
            return _Mapped(
                key,
                self.positions.key(key),
                f"unknown step kind '{unknown[0]}'; expected one of: {kinds_text}"
                f"{_suggest(unknown[0], STEP_KINDS)}",
            )
        return _Mapped(
            path,
            self.positions.value(path),
            f"this step has no kind; expected exactly one of: {kinds_text}",
        )

    def problems(self, error: ValidationError) -> list[Problem]:
        merged: dict[PathKey, _Mapped] = {}
        out: list[_Mapped] = []
        for err in error.errors():
            mapped = self.map(err)
            if mapped.expected is not None:
                prior = merged.get(mapped.path)
                if prior is not None and prior.expected is not None:
                    if mapped.expected not in prior.expected.split(" or "):
                        prior.expected += f" or {mapped.expected}"
                    continue
                merged[mapped.path] = mapped
            out.append(mapped)
        problems: list[Problem] = []
        seen: set[tuple[Position, str]] = set()
        for m in out:
            message = m.message
            if m.expected is not None:
                message = f"expected {_plain(m.expected)}, found {_describe_input(m.found)}"
            if (m.at, message) in seen:
                continue
            seen.add((m.at, message))
            problems.append(Problem(self.source, m.at[0], m.at[1], format_path(m.path), message))
        return problems


# --------------------------------------------------------------------------------------------
# entry points


def _decode(raw: bytes, source: str) -> str:
    if len(raw) > MAX_BYTES:
        raise ProtocolError(
            [
                Problem(
                    source,
                    0,
                    0,
                    "",
                    f"the file is larger than {MAX_BYTES} bytes; expected a protocol of at most "
                    f"{MAX_BYTES} bytes (1 MiB)",
                )
            ]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        column = len(raw[line_start : e.start].decode("utf-8", errors="replace")) + 1
        raise ProtocolError(
            [
                Problem(
                    source,
                    line,
                    column,
                    "",
                    f"byte 0x{raw[e.start]:02x} is not UTF-8; expected UTF-8 text (save the "
                    "file as UTF-8)",
                )
            ]
        ) from None
    return text.removeprefix("\ufeff")


def load_text(text: str | bytes, source: str = "<text>") -> LoadedProtocol:
    """Read a protocol from YAML ``text`` (``source`` names it in messages).

    Raises :class:`ProtocolError` with every problem found.
    """
    raw = text.encode("utf-8", errors="surrogatepass") if isinstance(text, str) else text
    decoded = _decode(raw, source)
    data, positions = _parse_yaml(decoded, source)
    if not isinstance(data, dict):
        raise ProtocolError(
            [
                Problem(
                    source,
                    *positions.value(()),
                    "",
                    f"the file holds {_describe_input(data)}; expected a mapping with name, "
                    "roles and steps",
                )
            ]
        )
    try:
        protocol = Protocol.model_validate(data)
    except ValidationError as e:
        raise ProtocolError(_ErrorMapper(data, positions, source).problems(e)) from None
    return LoadedProtocol(
        protocol=protocol,
        text=decoded,
        sha256=hashlib.sha256(raw).hexdigest(),
        source=source,
        positions=positions,
    )


def load_protocol(path: str | Path) -> LoadedProtocol:
    """Read the protocol file at ``path``.

    Raises :class:`ProtocolError` with every problem found (file missing, too large, not UTF-8,
    not YAML, not a valid protocol), each with its line and column.
    """
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ProtocolError(
            [Problem(source, 0, 0, "", f"cannot read the file: {e.strerror or e}")]
        ) from None
    return load_text(raw, source)
