"""JSON Schema of protocol files, for editors: completion and checking while a protocol is
written (``kiboauto schema > protocol.schema.json``, then point the editor's YAML plugin at it).

The schema comes from the pydantic model (:mod:`kiboauto.protocol.model`) by alias (``for``,
``if``, ``else``), with the shorthands the loader accepts added: a role may be just its kind
(``camera: Camera``) and ``on_failure`` may be just a policy (``on_failure: hold``). A step is
one of the step schemas (``oneOf``), each of which requires its kind key and allows no other kind,
so an editor can tell which step is meant. The schema describes shape and words; units,
conditions and everything :func:`kiboauto.protocol.validate.validate` checks are left to
``kiboauto validate``.
"""

from __future__ import annotations

from typing import Any

from kiboauto.protocol.model import DEVICE_KINDS, Protocol

__all__ = ["JSON_SCHEMA_DIALECT", "protocol_json_schema"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
"""The JSON Schema dialect of :func:`protocol_json_schema` (pydantic writes 2020-12)."""


def _with_shorthand(schema: dict[str, Any], shorthand: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or ``shorthand``: the full mapping, or the one-word form."""
    options = list(schema["anyOf"]) if "anyOf" in schema else [dict(schema)]
    extra = {k: v for k, v in schema.items() if k in ("default", "description", "title")}
    return {"anyOf": [*options, shorthand], **extra}


def protocol_json_schema() -> dict[str, Any]:
    """The JSON Schema of a protocol file, as a JSON-ready mapping."""
    schema = Protocol.model_json_schema(by_alias=True)
    defs: dict[str, Any] = schema.get("$defs", {})
    roles = schema["properties"]["roles"]
    roles["additionalProperties"] = _with_shorthand(
        roles["additionalProperties"],
        {"type": "string", "enum": list(DEVICE_KINDS), "description": "the role's kind"},
    )
    policy = {
        "type": "string",
        "pattern": r"^\s*(abort|skip|hold|fail|goto\s+[A-Za-z_][A-Za-z0-9_]*)\s*$",
        "description": "a policy without retries: abort, skip, hold, fail or 'goto STEP_ID'",
    }
    for definition in defs.values():
        props = definition.get("properties", {})
        if "on_failure" in props:
            props["on_failure"] = _with_shorthand(props["on_failure"], policy)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "kiboauto protocol",
        "description": (
            "An experiment protocol for kiboauto: roles, parameters, steps, monitoring, "
            "watchdogs, time limits and safe state (docs/protocol-language.md)."
        ),
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }
