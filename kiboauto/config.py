"""Reading YAML configuration files (rigs, stations) with errors that say where and why.

YAML is parsed with line numbers kept for every mapping key, then validated with pydantic; a
validation error is reported as ``file:line: devices.pump1.protocol: message``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

__all__ = ["ConfigError", "load_model"]

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file is missing, not YAML, or does not validate; the message says where."""


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of every key path."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.lines: dict[tuple[str | int, ...], int] = {}


Lines = dict[tuple[str | int, ...], int]


def _walk(node: yaml.Node, path: tuple[str | int, ...], lines: Lines) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            lines[(*path, name)] = key.start_mark.line + 1
            _walk(value, (*path, name), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _walk(item, (*path, i), lines)


def parse_yaml(text: str, source: str) -> tuple[Any, dict[tuple[str | int, ...], int]]:
    """Parse YAML text; return the data and the line of every key path."""
    try:
        loader = _LineLoader(text)
        try:
            node = loader.get_single_node()
            lines: dict[tuple[str | int, ...], int] = {}
            if node is not None:
                _walk(node, (), lines)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from e
    return data, lines


def load_model(model: type[M], path: str | Path | None, *, text: str | None = None) -> M:
    """Load a YAML file (or ``text``) into ``model``; raise :class:`ConfigError` with file:line."""
    source = str(path) if path is not None else "<text>"
    if text is None:
        if path is None:
            raise ConfigError("no file given")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from e
    data, lines = parse_yaml(text, source)
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            line = None
            probe = loc
            while probe and line is None:
                line = lines.get(probe)
                probe = probe[:-1]
            dotted = ".".join(str(p) for p in loc) or "(top level)"
            where = f"{source}:{line}" if line else source
            problems.append(f"{where}: {dotted}: {err['msg']}")
        raise ConfigError("\n".join(problems)) from None
