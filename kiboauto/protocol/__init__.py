"""Protocols: what an experiment does, written once, qualified on the HIL rig and flown.

For now this holds the expression language used by conditions and watchdogs
(:mod:`kiboauto.protocol.expressions`, described in ``docs/expressions.md``).
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

__all__ = [
    "Expr",
    "ExpressionError",
    "Watchdog",
    "evaluate_condition",
    "parse_condition",
    "parse_expression",
    "parse_watchdog",
]
