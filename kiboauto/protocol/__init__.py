"""Protocols: what an experiment does, written once, qualified on the HIL rig and flown.

* :mod:`kiboauto.protocol.model`: the protocol as pydantic models (roles, parameters, steps ...);
* :mod:`kiboauto.protocol.loader`: YAML files to models, every error with its line and column;
* :mod:`kiboauto.protocol.validate`: checks of the whole protocol and against a station;
* :mod:`kiboauto.protocol.schema`: the JSON Schema for editors;
* :mod:`kiboauto.protocol.expressions`: the condition language (``docs/expressions.md``).

The language is described in ``docs/protocol-language.md``.
"""

from kiboauto.protocol.expressions import (
    Expr,
    ExpressionError,
    Watchdog,
    evaluate_condition,
    parse_condition,
    parse_expression,
    parse_watchdog,
)
from kiboauto.protocol.loader import (
    LoadedProtocol,
    Problem,
    ProtocolError,
    load_protocol,
    load_text,
)
from kiboauto.protocol.model import Protocol
from kiboauto.protocol.schema import protocol_json_schema
from kiboauto.protocol.validate import validate

__all__ = [
    "Expr",
    "ExpressionError",
    "LoadedProtocol",
    "Problem",
    "Protocol",
    "ProtocolError",
    "Watchdog",
    "evaluate_condition",
    "load_protocol",
    "load_text",
    "parse_condition",
    "parse_expression",
    "parse_watchdog",
    "protocol_json_schema",
    "validate",
]
