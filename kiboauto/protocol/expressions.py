"""A small, safe expression language for protocol conditions and watchdogs.

Conditions such as ``cell[2].max_length_um >= 100``, ``incubator.temperature > 25 degC`` and
watchdogs such as ``incubator.temperature > 25 degC for 5 min`` are read by a hand-written
tokenizer and a recursive-descent parser into a tree of frozen dataclasses. Nothing is ever given
to ``eval``: a tree can only compare, combine and do ``+ - * /`` on numbers, quantities with units
(pint, through :mod:`kiboauto.units`), booleans and strings that come from the text or from the
environment passed to :meth:`Expr.evaluate`.

Every error is an :class:`ExpressionError` that says, with a 1-based column, what was expected.
Texts are bounded (:data:`MAX_TEXT_LENGTH` characters, :data:`MAX_DEPTH` levels of nesting), so
no input can exhaust the stack. The grammar and the rules are in ``docs/expressions.md``.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pint

from kiboauto.units import Q_, ureg

__all__ = [
    "MAX_DEPTH",
    "MAX_TEXT_LENGTH",
    "Arith",
    "BoolLit",
    "BoolOp",
    "Compare",
    "Expr",
    "ExpressionError",
    "Name",
    "Neg",
    "Not",
    "Num",
    "Str",
    "Watchdog",
    "evaluate_condition",
    "parse_condition",
    "parse_expression",
    "parse_watchdog",
]

MAX_TEXT_LENGTH = 2000
"""The longest expression text accepted, in characters."""

MAX_DEPTH = 64
"""The deepest nesting accepted: parentheses, ``not``, unary minus and operator chains."""

KEYWORDS = frozenset({"and", "or", "not", "true", "false", "for"})
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")
EQ_TOLERANCE = 1e-9
"""Relative tolerance of ``==``/``!=`` between quantities written in different units."""

# precedence, loosest first
_P_OR, _P_AND, _P_NOT, _P_CMP, _P_ADD, _P_MUL, _P_NEG, _P_ATOM = range(1, 9)


class ExpressionError(ValueError):
    """An expression could not be parsed or evaluated.

    ``column`` is the 1-based column in the expression text where the problem is (``None`` when
    it is not about one place), ``expected`` says what would have been accepted there.
    """

    def __init__(
        self, message: str, column: int | None = None, expected: str | None = None
    ) -> None:
        if expected is not None and not re.search(r"\bexpected\b", message):
            message = f"{message}; expected {expected}"
        self.message = message
        self.column = column
        self.expected = expected
        super().__init__(f"column {column}: {message}" if column is not None else message)


# --------------------------------------------------------------------------------------------
# values


def _is_number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_quantity(v: object) -> bool:
    return isinstance(v, pint.Quantity)


def _dim_name(q: Any) -> str:
    if q.dimensionless:
        return "dimensionless"
    return str(q.dimensionality).replace("[", "").replace("]", "")


def _unit_text(q: Any) -> str:
    return f"{q.units:~P}" or "dimensionless"


def describe(v: object) -> str:
    """A short human description of a value, for error messages."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f"string {_quote(v)}"
    if _is_quantity(v):
        q: Any = v
        return f"{_dim_name(q)} ({q:~P})"
    if _is_number(v):
        return f"number {v!r}"
    return f"a {type(v).__name__}"


def _normalise(name: str, v: object, column: int) -> object:
    """Check a value from the environment and make numeric kinds plain ``int``/``float``."""
    if isinstance(v, bool | str) or _is_quantity(v):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    raise ExpressionError(
        f"'{name}' has a value of type {type(v).__name__}, which conditions cannot use",
        column,
        "a number, a quantity, true/false or a string",
    )


def _magnitude(v: object) -> float:
    if _is_quantity(v):
        q: Any = v
        return float(q.magnitude)
    return float(v)  # type: ignore[arg-type]


def _compare(op: str, a: object, b: object, column: int) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        same = (isinstance(a, bool) and isinstance(b, bool)) or (
            isinstance(a, str) and isinstance(b, str)
        )
        if not same:
            raise ExpressionError(f"cannot compare {describe(a)} with {describe(b)}", column)
        if op not in ("==", "!="):
            kind = "strings" if isinstance(a, str) else "true/false values"
            raise ExpressionError(
                f"'{op}' cannot order {kind}; only '==' and '!=' compare them", column
            )
        return (a == b) == (op == "==")
    if not (_is_number(a) or _is_quantity(a)) or not (_is_number(b) or _is_quantity(b)):
        raise ExpressionError(f"cannot compare {describe(a)} with {describe(b)}", column)
    x: Any = a
    y: Any = b
    close = False
    if _is_quantity(x) and _is_quantity(y):
        if x.dimensionality != y.dimensionality:
            raise ExpressionError(
                f"cannot compare {_dim_name(x)} ({_unit_text(x)}) with "
                f"{_dim_name(y)} ({_unit_text(y)})",
                column,
            )
        if x.units != y.units:
            close = True
            try:
                y = y.to(x.units)
            except pint.errors.PintError as e:  # pragma: no cover - same dimension converts
                raise ExpressionError(f"cannot convert {y:~P} to {x.units:~P}: {e}", column) from e
        xm, ym = float(x.magnitude), float(y.magnitude)
    elif _is_quantity(x) or _is_quantity(y):
        q = x if _is_quantity(x) else y
        if not q.dimensionless:
            raise ExpressionError(
                f"cannot compare a plain number with {_dim_name(q)} ({_unit_text(q)}); "
                "give the number a unit",
                column,
            )
        xm = float(x.to("dimensionless").magnitude) if _is_quantity(x) else float(x)
        ym = float(y.to("dimensionless").magnitude) if _is_quantity(y) else float(y)
        close = True
    else:
        xm, ym = x, y
    if op in ("==", "!="):
        equal = math.isclose(xm, ym, rel_tol=EQ_TOLERANCE) if close else xm == ym
        return equal == (op == "==")
    result: bool = {
        "<": xm < ym,
        "<=": xm <= ym,
        ">": xm > ym,
        ">=": xm >= ym,
    }[op]
    return result


_OP_VERB = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda x, y: x + y,
    "-": lambda x, y: x - y,
    "*": lambda x, y: x * y,
    "/": lambda x, y: x / y,
}


def _arith(op: str, a: object, b: object, column: int) -> object:
    for v in (a, b):
        if not (_is_number(v) or _is_quantity(v)):
            raise ExpressionError(
                f"'{op}' needs numbers or quantities, found {describe(v)}", column
            )
    if op == "/" and _magnitude(b) == 0:
        raise ExpressionError(f"division by zero: {describe(b)}", column)
    try:
        return _OPS[op](a, b)
    except pint.errors.DimensionalityError as e:
        if _is_quantity(a) and _is_quantity(b):
            x: Any = a
            y: Any = b
            what = f"{_dim_name(x)} ({_unit_text(x)}) and {_dim_name(y)} ({_unit_text(y)})"
            raise ExpressionError(f"cannot {_OP_VERB[op]} {what}", column) from e
        raise ExpressionError(
            f"cannot {_OP_VERB[op]} a plain number and a quantity with a dimension "
            f"({describe(a)}, {describe(b)}); give the number a unit",
            column,
        ) from e
    except pint.errors.OffsetUnitCalculusError as e:
        raise ExpressionError(
            f"cannot {_OP_VERB[op]} {describe(a)} and {describe(b)}: a temperature on an offset "
            "scale (degC, degF) is a point, not an amount; write the difference in delta_degC or K",
            column,
        ) from e
    except (pint.errors.PintError, ArithmeticError, ValueError, TypeError) as e:
        raise ExpressionError(
            f"cannot {_OP_VERB[op]} {describe(a)} and {describe(b)}: {e}", column
        ) from e


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------------------------
# the tree


class Expr:
    """A parsed expression: a node of the tree that :func:`parse_expression` builds.

    Trees are immutable and compare by structure (not by where they were written), ``str()``
    gives a canonical text that parses back to an equal tree, :meth:`names` lists the names a
    run must provide and :meth:`evaluate` computes the value against an environment.
    """

    precedence: ClassVar[int] = _P_ATOM
    column: int
    depth: int

    def children(self) -> tuple[Expr, ...]:
        """The direct sub-expressions."""
        return ()

    def names(self) -> set[str]:
        """Every canonical name the expression reads (``cell[2].max_length_um``)."""
        out: set[str] = set()
        for c in self.children():
            out |= c.names()
        return out

    def evaluate(self, env: Mapping[str, object]) -> object:
        """The value of the expression, names read from ``env`` (canonical name -> value)."""
        raise NotImplementedError

    def _set_depth(self) -> None:
        object.__setattr__(self, "depth", 1 + max((c.depth for c in self.children()), default=0))

    def _paren(self, child: Expr, strict: bool) -> str:
        """``child`` as text, in parentheses if it binds looser (or as loose, if strict)."""
        text = str(child)
        if child.precedence < self.precedence or (strict and child.precedence == self.precedence):
            return f"({text})"
        return text


@dataclass(frozen=True)
class Num(Expr):
    """A number literal, with an optional unit (``5``, ``2.5``, ``25 degC``, ``10 uL/min``)."""

    value: int | float
    unit: str | None = None
    column: int = field(default=0, compare=False, repr=False)
    depth: int = field(default=1, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not (math.isfinite(self.value) and self.value >= 0):
            raise ValueError(
                f"a number literal is finite and not negative (use Neg): {self.value!r}"
            )

    def __str__(self) -> str:
        return repr(self.value) if self.unit is None else f"{self.value!r} {self.unit}"

    def evaluate(self, env: Mapping[str, object]) -> object:
        if self.unit is None:
            return self.value
        return Q_(self.value, self.unit)


@dataclass(frozen=True)
class Str(Expr):
    """A string literal in double quotes (``"crystals"``); ``\\"`` and ``\\\\`` escape."""

    value: str
    column: int = field(default=0, compare=False, repr=False)
    depth: int = field(default=1, init=False, compare=False, repr=False)

    def __str__(self) -> str:
        return _quote(self.value)

    def evaluate(self, env: Mapping[str, object]) -> object:
        return self.value


@dataclass(frozen=True)
class BoolLit(Expr):
    """``true`` or ``false``."""

    value: bool
    column: int = field(default=0, compare=False, repr=False)
    depth: int = field(default=1, init=False, compare=False, repr=False)

    def __str__(self) -> str:
        return "true" if self.value else "false"

    def evaluate(self, env: Mapping[str, object]) -> object:
        return self.value


@dataclass(frozen=True)
class Name(Expr):
    """A dotted name with integer indexes: ``incubator.temperature``, ``cell[2].class``.

    ``path`` holds the identifiers (``str``) and indexes (``int``) in order; the canonical text
    (``str(name)``) is the key the environment uses.
    """

    path: tuple[str | int, ...]
    column: int = field(default=0, compare=False, repr=False)
    depth: int = field(default=1, init=False, compare=False, repr=False)

    def __str__(self) -> str:
        out = ""
        for part in self.path:
            if isinstance(part, int):
                out += f"[{part}]"
            else:
                out += f".{part}" if out else part
        return out

    def names(self) -> set[str]:
        return {str(self)}

    def evaluate(self, env: Mapping[str, object]) -> object:
        key = str(self)
        if key not in env:
            raise ExpressionError(f"no value for '{key}'", self.column)
        return _normalise(key, env[key], self.column)


@dataclass(frozen=True)
class Neg(Expr):
    """Unary minus: ``-x``."""

    precedence: ClassVar[int] = _P_NEG
    operand: Expr
    column: int = field(default=0, compare=False, repr=False)
    depth: int = field(default=1, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._set_depth()

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)

    def __str__(self) -> str:
        return "-" + self._paren(self.operand, strict=False)

    def evaluate(self, env: Mapping[str, object]) -> object:
        v = self.operand.evaluate(env)
        if not (_is_number(v) or _is_quantity(v)):
            raise ExpressionError(
                f"'-' needs a number or a quantity, found {describe(v)}", self.column
            )
        x: Any = v
        try:
            return -x
        except pint.errors.PintError as e:  # pragma: no cover - pint negates every quantity
            raise ExpressionError(f"cannot negate {describe(v)}: {e}", self.column) from e


@dataclass(frozen=True)
class Arith(Expr):
    """``left op right`` with ``op`` one of ``+ - * /`` (left-associative)."""

    op: str
    left: Expr
    right: Expr
    column: int = field(default=0, compare=False, repr=False)
    depth: int = field(default=1, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"not an arithmetic operator: {self.op!r}")
        self._set_depth()

    @property
    def precedence(self) -> int:  # type: ignore[override]
        return _P_ADD if self.op in "+-" else _P_MUL

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)

    def __str__(self) -> str:
        return f"{self._paren(self.left, False)} {self.op} {self._paren(self.right, True)}"

    def evaluate(self, env: Mapping[str, object]) -> object:
        a = self.left.evaluate(env)
        b = self.right.evaluate(env)
        return _arith(self.op, a, b, self.column)


@dataclass(frozen=True)
class Compare(Expr):
    """``left op right`` with ``op`` one of ``< <= > >= == !=`` (never chained)."""

    precedence: ClassVar[int] = _P_CMP
    op: str
    left: Expr
    right: Expr
    column: int = field(default=0, compare=False, repr=False)
    depth: int = field(default=1, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.op not in COMPARISONS:
            raise ValueError(f"not a comparison: {self.op!r}")
        self._set_depth()

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)

    def __str__(self) -> str:
        return f"{self._paren(self.left, True)} {self.op} {self._paren(self.right, True)}"

    def evaluate(self, env: Mapping[str, object]) -> object:
        return _compare(self.op, self.left.evaluate(env), self.right.evaluate(env), self.column)


@dataclass(frozen=True)
class Not(Expr):
    """``not x``."""

    precedence: ClassVar[int] = _P_NOT
    operand: Expr
    column: int = field(default=0, compare=False, repr=False)
    depth: int = field(default=1, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._set_depth()

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)

    def __str__(self) -> str:
        return "not " + self._paren(self.operand, strict=False)

    def evaluate(self, env: Mapping[str, object]) -> object:
        v = self.operand.evaluate(env)
        if not isinstance(v, bool):
            raise ExpressionError(f"'not' needs true or false, found {describe(v)}", self.column)
        return not v


@dataclass(frozen=True)
class BoolOp(Expr):
    """``left and right`` / ``left or right`` (left-associative, short-circuit)."""

    op: str
    left: Expr
    right: Expr
    column: int = field(default=0, compare=False, repr=False)
    depth: int = field(default=1, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.op not in ("and", "or"):
            raise ValueError(f"not a boolean operator: {self.op!r}")
        self._set_depth()

    @property
    def precedence(self) -> int:  # type: ignore[override]
        return _P_OR if self.op == "or" else _P_AND

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)

    def __str__(self) -> str:
        return f"{self._paren(self.left, False)} {self.op} {self._paren(self.right, True)}"

    def _side(self, e: Expr, env: Mapping[str, object]) -> bool:
        v = e.evaluate(env)
        if not isinstance(v, bool):
            raise ExpressionError(
                f"'{self.op}' needs true or false on both sides, found {describe(v)}", self.column
            )
        return v

    def evaluate(self, env: Mapping[str, object]) -> object:
        left = self._side(self.left, env)
        if self.op == "and" and not left:
            return False
        if self.op == "or" and left:
            return True
        return self._side(self.right, env)


def evaluate_condition(expr: Expr, env: Mapping[str, object]) -> bool:
    """Evaluate ``expr`` and insist that the result is true or false."""
    v = expr.evaluate(env)
    if not isinstance(v, bool):
        raise ExpressionError(
            f"a condition must be true or false, but '{expr}' gave {describe(v)}",
            None,
            "true or false",
        )
    return v


@dataclass(frozen=True)
class Watchdog:
    """A condition that must hold for a time before it fires: ``cond for 5 min``.

    ``duration`` is the literal after ``for`` (a time greater than zero); :attr:`seconds` gives
    it in seconds for the monitor that watches the condition.
    """

    condition: Expr
    duration: Num

    @property
    def seconds(self) -> float:
        """The duration in seconds."""
        q: Any = self.duration.evaluate({})
        return float(q.to("s").magnitude)

    def names(self) -> set[str]:
        """The names the condition reads."""
        return self.condition.names()

    def holds(self, env: Mapping[str, object]) -> bool:
        """Whether the condition is true now (the caller times how long it stays true)."""
        return evaluate_condition(self.condition, env)

    def __str__(self) -> str:
        return f"{self.condition} for {self.duration}"


# --------------------------------------------------------------------------------------------
# tokenizer


@dataclass(frozen=True)
class _Token:
    kind: str  # "num", "str", "name", "kw", "op", "end"
    text: str
    column: int
    value: object = None
    unit: str | None = None


_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNIT_ATOM = re.compile(r"[A-Za-zµ_]+(?:\^-?[0-9]+)?")
_UNIT_WORD = re.compile(r"[A-Za-zµ_]+")
_TWO_CHAR = ("<=", ">=", "==", "!=")
_ONE_CHAR = "<>+-*/()[]."
_UNIT_HINT = "a unit known to pint, e.g. um, degC, min, uL/min"


def _describe_token(tok: _Token) -> str:
    if tok.kind == "end":
        return "end of text"
    if tok.kind == "num":
        return f"number {tok.text}"
    if tok.kind == "str":
        return f"string {tok.text}"
    if tok.kind == "name":
        return f"name '{tok.text}'"
    return f"'{tok.text}'"


def _read_unit(text: str, start: int) -> tuple[str, int] | None:
    """The unit written at ``start`` (no spaces inside) and where it ends, or ``None``."""
    m = _UNIT_ATOM.match(text, start)
    if m is None:
        return None
    word = _UNIT_WORD.match(text, start)
    if word is not None and word.group() in KEYWORDS:
        return None
    end = m.end()
    while end + 1 < len(text) and text[end] in "/*":
        nxt = _UNIT_ATOM.match(text, end + 1)
        if nxt is None:
            break
        end = nxt.end()
    return text[start:end], end


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            tokens.append(_Token("end", "", n + 1))
            return tokens
        col = i + 1
        c = text[i]
        if "0" <= c <= "9":
            m = _NUMBER.match(text, i)
            assert m is not None
            literal = m.group()
            value: int | float
            if "." in literal or "e" in literal or "E" in literal:
                value = float(literal)
                if math.isinf(value):
                    raise ExpressionError(f"number {literal} is too large", col, "a finite number")
            else:
                value = int(literal)
            i = m.end()
            j = i
            while j < n and text[j] in " \t":
                j += 1
            unit: str | None = None
            read = _read_unit(text, j)
            if read is not None:
                unit, end = read
                try:
                    ureg.parse_units(unit)
                except Exception as e:  # pint's own parser: anything it refuses is unknown
                    raise ExpressionError(f"unknown unit '{unit}'", j + 1, _UNIT_HINT) from e
                i = end
            tokens.append(_Token("num", text[col - 1 : i], col, value, unit))
        elif c.isascii() and (c.isalpha() or c == "_"):
            m = _IDENT.match(text, i)
            assert m is not None
            word = m.group()
            tokens.append(_Token("kw" if word in KEYWORDS else "name", word, col))
            i = m.end()
        elif c == '"':
            j = i + 1
            chars: list[str] = []
            while True:
                if j >= n:
                    raise ExpressionError(
                        "string not closed", col, "a closing '\"' before the end of the text"
                    )
                d = text[j]
                if d == '"':
                    break
                if d == "\\":
                    if j + 1 < n and text[j + 1] in '"\\':
                        chars.append(text[j + 1])
                        j += 2
                        continue
                    raise ExpressionError(
                        "unknown escape in a string", j + 1, "'\\\"' or '\\\\' after '\\'"
                    )
                chars.append(d)
                j += 1
            tokens.append(_Token("str", text[i : j + 1], col, "".join(chars)))
            i = j + 1
        elif text[i : i + 2] in _TWO_CHAR:
            tokens.append(_Token("op", text[i : i + 2], col))
            i += 2
        elif c in _ONE_CHAR:
            tokens.append(_Token("op", c, col))
            i += 1
        elif c == "=":
            raise ExpressionError(
                "a single '=' does not compare", col, "'==' (or '<=', '>=', '!=')"
            )
        elif c == "!":
            raise ExpressionError("'!' alone is not an operator", col, "'!='")
        else:
            raise ExpressionError(
                f"unexpected character {c!r}", col, "a value, a name or an operator"
            )


# --------------------------------------------------------------------------------------------
# parser


class _Parser:
    def __init__(self, text: str) -> None:
        if len(text) > MAX_TEXT_LENGTH:
            raise ExpressionError(
                f"expression is {len(text)} characters long",
                MAX_TEXT_LENGTH + 1,
                f"at most {MAX_TEXT_LENGTH} characters",
            )
        self.tokens = _tokenize(text)
        self.pos = 0
        self.nesting = 0

    # helpers
    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def advance(self) -> _Token:
        tok = self.tokens[self.pos]
        if tok.kind != "end":
            self.pos += 1
        return tok

    def at(self, kind: str, *texts: str) -> bool:
        tok = self.peek()
        return tok.kind == kind and (not texts or tok.text in texts)

    def fail(self, expected: str, tok: _Token, hint: str = "") -> ExpressionError:
        return ExpressionError(
            f"expected {expected}, found {_describe_token(tok)}{hint}", tok.column, expected
        )

    def enter(self, tok: _Token) -> None:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise ExpressionError(
                f"expression nested deeper than {MAX_DEPTH} levels",
                tok.column,
                f"at most {MAX_DEPTH} levels of nesting",
            )

    def check_depth(self, node: Expr) -> Expr:
        if node.depth > MAX_DEPTH:
            raise ExpressionError(
                f"expression nested deeper than {MAX_DEPTH} levels (a long chain of operators "
                "counts too); split it",
                node.column,
                f"at most {MAX_DEPTH} levels of nesting",
            )
        return node

    # grammar
    def parse_or(self, after: _Token | None = None) -> Expr:
        left = self.parse_and(after)
        while self.at("kw", "or"):
            tok = self.advance()
            right = self.parse_and(tok)
            left = self.check_depth(BoolOp("or", left, right, tok.column))
        return left

    def parse_and(self, after: _Token | None = None) -> Expr:
        left = self.parse_not(after)
        while self.at("kw", "and"):
            tok = self.advance()
            right = self.parse_not(tok)
            left = self.check_depth(BoolOp("and", left, right, tok.column))
        return left

    def parse_not(self, after: _Token | None = None) -> Expr:
        if self.at("kw", "not"):
            tok = self.advance()
            self.enter(tok)
            operand = self.parse_not(tok)
            self.nesting -= 1
            return self.check_depth(Not(operand, tok.column))
        return self.parse_compare(after)

    def parse_compare(self, after: _Token | None = None) -> Expr:
        left = self.parse_add(after)
        if self.at("op", *COMPARISONS):
            tok = self.advance()
            right = self.parse_add(tok)
            node = self.check_depth(Compare(tok.text, left, right, tok.column))
            if self.at("op", *COMPARISONS):
                again = self.peek()
                raise ExpressionError(
                    f"chained comparison: '{tok.text}' followed by '{again.text}'; write "
                    "'a < b and b < c' instead of 'a < b < c'",
                    again.column,
                    "'and', 'or', ')' or the end after a comparison",
                )
            return node
        return left

    def parse_add(self, after: _Token | None = None) -> Expr:
        left = self.parse_mul(after)
        while self.at("op", "+", "-"):
            tok = self.advance()
            right = self.parse_mul(tok)
            left = self.check_depth(Arith(tok.text, left, right, tok.column))
        return left

    def parse_mul(self, after: _Token | None = None) -> Expr:
        left = self.parse_unary(after)
        while self.at("op", "*", "/"):
            tok = self.advance()
            right = self.parse_unary(tok)
            left = self.check_depth(Arith(tok.text, left, right, tok.column))
        return left

    def parse_unary(self, after: _Token | None = None) -> Expr:
        if self.at("op", "-"):
            tok = self.advance()
            self.enter(tok)
            operand = self.parse_unary(tok)
            self.nesting -= 1
            return self.check_depth(Neg(operand, tok.column))
        return self.parse_primary(after)

    def parse_primary(self, after: _Token | None) -> Expr:
        tok = self.advance()
        if tok.kind == "num":
            assert isinstance(tok.value, int | float)
            return Num(tok.value, tok.unit, tok.column)
        if tok.kind == "str":
            assert isinstance(tok.value, str)
            return Str(tok.value, tok.column)
        if tok.kind == "kw" and tok.text in ("true", "false"):
            return BoolLit(tok.text == "true", tok.column)
        if tok.kind == "name":
            return self.parse_name(tok)
        if tok.kind == "op" and tok.text == "(":
            self.enter(tok)
            inner = self.parse_or(tok)
            self.nesting -= 1
            close = self.advance()
            if not (close.kind == "op" and close.text == ")"):
                raise self.fail(f"')' to close the '(' at column {tok.column}", close)
            return inner
        where = f" after '{after.text}'" if after is not None else ""
        raise ExpressionError(
            f"expected a value{where}, found {_describe_token(tok)}", tok.column, "a value"
        )

    def parse_name(self, first: _Token) -> Name:
        path: list[str | int] = [first.text]
        while True:
            if self.at("op", "."):
                self.advance()
                part = self.advance()
                if part.kind != "name":
                    raise self.fail("a field name after '.'", part)
                path.append(part.text)
            elif self.at("op", "["):
                self.advance()
                idx = self.advance()
                if not (idx.kind == "num" and isinstance(idx.value, int) and idx.unit is None):
                    raise self.fail("an integer index after '['", idx)
                path.append(idx.value)
                close = self.advance()
                if not (close.kind == "op" and close.text == "]"):
                    raise self.fail("']' after the index", close)
            else:
                return Name(tuple(path), first.column)

    def expect_end(self, hint: str = "") -> None:
        tok = self.peek()
        if tok.kind != "end":
            raise self.fail("an operator or the end of the text", tok, hint)


def _first_column(text: str) -> int:
    return len(text) - len(text.lstrip()) + 1


def parse_expression(text: str) -> Expr:
    """Parse any expression (a value or a condition) into a tree."""
    p = _Parser(text)
    expr = p.parse_or()
    p.expect_end()
    return expr


def _check_condition_shape(expr: Expr, text: str) -> None:
    if isinstance(expr, Num | Str | Arith | Neg):
        raise ExpressionError(
            f"'{expr}' is a value, not a condition",
            _first_column(text),
            "a condition: a comparison, and/or/not, true/false or a name",
        )


def parse_condition(text: str) -> Expr:
    """Parse a condition (``cell[2].max_length_um >= 100``).

    A bare number, string or arithmetic is refused here; whether a name or a comparison of
    booleans really gives true/false is checked by :func:`evaluate_condition`.
    """
    p = _Parser(text)
    expr = p.parse_or()
    hint = " (a duration with 'for' belongs in a watchdog)" if p.at("kw", "for") else ""
    p.expect_end(hint)
    _check_condition_shape(expr, text)
    return expr


def parse_watchdog(text: str) -> Watchdog:
    """Parse a watchdog: a condition and how long it must hold (``... > 25 degC for 5 min``)."""
    p = _Parser(text)
    condition = p.parse_or()
    tok = p.peek()
    if not (tok.kind == "kw" and tok.text == "for"):
        raise p.fail("'for' and a duration (e.g. 'for 5 min')", tok)
    _check_condition_shape(condition, text)
    p.advance()
    d = p.advance()
    if d.kind != "num" or d.unit is None:
        raise p.fail("a duration with a time unit after 'for' (e.g. '5 min')", d)
    assert isinstance(d.value, int | float)
    duration = Num(d.value, d.unit, d.column)
    q: Any = duration.evaluate({})
    if q.dimensionality != ureg.s.dimensionality:
        raise ExpressionError(
            f"the duration after 'for' is {_dim_name(q)} ({_unit_text(q)}), not a time",
            d.column,
            "a time, e.g. '30 s', '5 min', '2 h'",
        )
    if not q.magnitude > 0:
        raise ExpressionError(
            f"the duration after 'for' must be greater than zero, found {d.text}",
            d.column,
            "a duration greater than zero",
        )
    p.expect_end()
    return Watchdog(condition, duration)
