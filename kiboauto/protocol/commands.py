"""What ``kiboauto validate`` and ``kiboauto schema`` do (the command line wires these).

``validate_main`` reads a protocol (and a station file, or none), runs every check and prints the
result for people (one ``file:line:column: path: message`` line per problem) or as JSON;
``schema_main`` gives the JSON Schema of protocol files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kiboauto.config import ConfigError
from kiboauto.protocol.loader import LoadedProtocol, Problem, ProtocolError, load_protocol
from kiboauto.protocol.model import BranchStep, GroupStep, RepeatStep, StepBase
from kiboauto.protocol.schema import protocol_json_schema
from kiboauto.protocol.validate import validate

__all__ = ["EXIT_INVALID", "EXIT_VALID", "count_steps", "schema_main", "validate_main"]

EXIT_VALID = 0
EXIT_INVALID = 2


def count_steps(steps: list[Any]) -> int:
    """How many steps there are, nested ones (in repeats, branches, groups) included."""
    n = 0
    for s in steps:
        n += 1
        if isinstance(s, RepeatStep):
            n += count_steps(s.repeat.steps)
        elif isinstance(s, BranchStep):
            n += count_steps(s.branch.then) + count_steps(s.branch.else_)
        elif isinstance(s, GroupStep):
            n += count_steps(s.group)
        else:
            assert isinstance(s, StepBase)
    return n


def _station_problems(path: Path, error: ConfigError) -> list[Problem]:
    """A station file's errors (``file:line: path: message`` lines) as problems."""
    out = []
    prefix = f"{path}: "
    for line in str(error).splitlines():
        m = _CONFIG_LINE.match(line)
        if m is not None:
            out.append(Problem(m["file"], int(m["line"]), 0, "", m["rest"]))
        else:
            out.append(Problem(str(path), 0, 0, "", line.removeprefix(prefix)))
    return out


_CONFIG_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<rest>.*)$")


def _summary(loaded: LoadedProtocol) -> str:
    p = loaded.protocol
    return (
        f"{count_steps(list(p.steps))} steps, {len(p.parameters)} parameters, "
        f"roles {', '.join(p.roles)}"
    )


def validate_main(path: Path, station: Path | None, as_json: bool) -> int:
    """Check a protocol (against ``station``, a station file, when given); print
    ``FILE: valid (...)`` or every problem; return 0 when valid, 2 when not."""
    from kiboauto.station import load_station

    problems: list[Problem] = []
    loaded: LoadedProtocol | None = None
    try:
        loaded = load_protocol(path)
    except ProtocolError as e:
        problems.extend(e.problems)
    station_file = None
    if station is not None:
        try:
            station_file = load_station(station)
        except ConfigError as e:
            problems.extend(_station_problems(station, e))
    if loaded is not None and (station is None or station_file is not None):
        problems.extend(validate(loaded, station_file))
    if as_json:
        report: dict[str, Any] = {
            "file": str(path),
            "station": None if station is None else str(station),
            "valid": not problems,
            "problems": [p.to_dict() for p in problems],
        }
        if loaded is not None:
            p = loaded.protocol
            report.update(
                name=p.name,
                sha256=loaded.sha256,
                steps=count_steps(list(p.steps)),
                parameters=list(p.parameters),
                roles={name: role.kind for name, role in p.roles.items()},
            )
        print(json.dumps(report, indent=2))
    elif problems:
        for problem in problems:
            print(problem)
    else:
        assert loaded is not None
        print(f"{path}: valid ({_summary(loaded)})")
    return EXIT_INVALID if problems else EXIT_VALID


def schema_main() -> str:
    """The JSON Schema of protocol files, as JSON text."""
    return json.dumps(protocol_json_schema(), indent=2, ensure_ascii=False) + "\n"
