"""The protocol expression language: parsing, printing, names, evaluation with units, errors."""

from __future__ import annotations

import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiboauto.protocol import (
    Expr,
    ExpressionError,
    evaluate_condition,
    parse_condition,
    parse_expression,
    parse_watchdog,
)
from kiboauto.protocol.expressions import (
    KEYWORDS,
    MAX_DEPTH,
    MAX_TEXT_LENGTH,
    Arith,
    BoolLit,
    BoolOp,
    Compare,
    Name,
    Neg,
    Not,
    Num,
    Str,
)
from kiboauto.units import Q_


def ev(text: str, **env: object) -> object:
    return parse_expression(text).evaluate({k.replace("__", "."): v for k, v in env.items()})


def err(
    text: str, env: dict[str, object] | None = None, *, watchdog: bool = False
) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        if watchdog:
            parse_watchdog(text)
        elif env is None:
            parse_condition(text)
        else:
            evaluate_condition(parse_condition(text), env)
    return info.value


# --- precedence and associativity ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),  # left-associative
        ("10 - (4 - 3)", 9),
        ("24 / 4 / 2", 3.0),
        ("-2 * 3", -6),
        ("2 * -3", -6),
        ("--4", 4),
        ("-(1 + 2)", -3),
        ("1 + 2 > 2", True),
        ("not 1 > 2", True),
        ("true or false and false", True),  # and binds tighter than or
        ("(true or false) and false", False),
        ("not true or true", True),  # not binds tighter than or
        ("not (true or true)", False),
        ("false and 1 / 0 > 1", False),  # short-circuit: the division never runs
        ("true or missing", True),
    ],
)
@pytest.mark.req("KA-PRO-001")
def test_precedence_and_associativity(text: str, value: object) -> None:
    assert ev(text) == value


@pytest.mark.req("KA-PRO-001")
def test_tree_shape_and_canonical_text() -> None:
    e = parse_expression("a  -  b - c")
    assert e == Arith("-", Arith("-", Name(("a",)), Name(("b",))), Name(("c",)))
    assert str(e) == "a - b - c"
    assert str(parse_expression("a - (b - c)")) == "a - (b - c)"
    assert str(parse_expression("((a and b)) or not (c < 1)")) == "a and b or not c < 1"
    assert str(parse_expression("a and (b or c)")) == "a and (b or c)"
    assert str(parse_expression("(a < b) == true")) == "(a < b) == true"
    assert str(parse_expression("- (x + 1)")) == "-(x + 1)"
    assert str(parse_expression('cell [2] . class == "a\\"b"')) == 'cell[2].class == "a\\"b"'
    assert str(parse_expression("10uL/min*2")) == "10 uL/min * 2"
    assert parse_expression("1.5e3 um") == Num(1500.0, "um")


# --- units ------------------------------------------------------------------------------------


@pytest.mark.req("KA-PRO-001")
def test_quantities_compare_across_units() -> None:
    assert ev("t > 25 degC", t=Q_(300, "K")) is True
    assert ev("t > 25 degC", t=Q_(298, "K")) is False
    assert ev("1 mm == 1000 um") is True
    assert ev("1000 um != 1 mm") is False
    assert ev("cell.max >= 100 um", cell__max=Q_(0.1, "mm")) is True
    assert ev("10 uL/min * 6 min == 60 uL") is True
    assert ev("5 min < 301 s") is True
    assert ev("r == 0.5", r=Q_(50, "percent")) is True  # dimensionless quantity vs number
    assert ev("2 um / 1 um > 1") is True


@pytest.mark.req("KA-PRO-001")
def test_arithmetic_with_units() -> None:
    assert ev("t + 2 delta_degC", t=Q_(20, "degC")) == Q_(22, "degC")
    v = ev("10 uL/min * 30 s")
    assert Q_(5, "uL") == v


@pytest.mark.req("KA-PRO-001")
def test_units_spacing_rule() -> None:
    # no spaces inside a unit; spaces around / and * make them arithmetic
    assert parse_expression("10 uL/min") == Num(10, "uL/min")
    assert parse_expression("10 uL / t") == Arith("/", Num(10, "uL"), Name(("t",)))
    assert parse_expression("5 min*2") == Arith("*", Num(5, "min"), Num(2))
    assert parse_expression("3 mm^2") == Num(3, "mm^2")
    assert parse_expression("5 and x") == BoolOp("and", Num(5), Name(("x",)))


@pytest.mark.req("KA-PRO-001")
def test_dimension_errors_name_both_dimensions() -> None:
    e = err("x > 5 um", {"x": Q_(1, "degC")})
    assert e.column == 3
    assert "temperature" in str(e) and "length" in str(e)
    e = err("x + 1 um > 0 um", {"x": Q_(1, "s")})
    assert e.column == 3 and "time" in str(e) and "length" in str(e)
    e = err("x > 5", {"x": Q_(1, "um")})
    assert e.column == 3 and "plain number" in str(e) and "length" in str(e)
    e = err("x + 1 > 5", {"x": Q_(1, "um")})
    assert e.column == 3 and "plain number" in str(e)
    e = err("t + t > 0 K", {"t": Q_(1, "degC")})
    assert e.column == 3 and "offset" in str(e)


# --- errors with their columns ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("cell[2].max_l >= ", 18, "expected a value after '>=', found end of text"),
        ("a < b < c", 7, "chained comparison"),
        ("a == b != c", 8, "chained comparison"),
        ("x = 3", 3, "expected '=='"),
        ("x ! 3", 3, "expected '!='"),
        ("x > 3 # y", 7, "unexpected character '#'"),
        ("(a > 1", 7, "expected ')' to close the '(' at column 1, found end of text"),
        ("x > 5 foo", 7, "unknown unit 'foo'"),
        ("x > 5 uL/foo", 7, "unknown unit 'uL/foo'"),
        ("a > 1 for 5 min", 7, "belongs in a watchdog"),
        ('x == "abc', 6, "string not closed"),
        ('x == "a\\n"', 8, "unknown escape"),
        ("cell[x] > 1", 6, "expected an integer index after '[', found name 'x'"),
        ("cell[1.5] > 1", 6, "expected an integer index"),
        ("cell[2 um] > 1", 6, "expected an integer index"),
        ("cell[2 > 1", 8, "expected ']' after the index"),
        ("cell. > 1", 7, "expected a field name after '.'"),
        ("a > 1 qq", 7, "unknown unit 'qq'"),
        ("a b", 3, "expected an operator or the end of the text, found name 'b'"),
        ("  5 + 3", 3, "is a value, not a condition"),
        ('"x"', 1, "is a value, not a condition"),
        ("", 1, "expected a value, found end of text"),
        ("a and", 6, "expected a value after 'and', found end of text"),
        ("not", 4, "expected a value after 'not'"),
        ("x > 1e999", 5, "too large"),
        ("x > (", 6, "expected a value after '(', found end of text"),
    ],
)
@pytest.mark.req("KA-PRO-001")
def test_parse_errors_say_what_was_expected_where(text: str, column: int, fragment: str) -> None:
    e = err(text)
    assert e.column == column, str(e)
    assert fragment in str(e), str(e)
    assert str(e).startswith(f"column {column}: ")


@pytest.mark.req("KA-PRO-001")
def test_example_message_from_the_brief() -> None:
    e = err("x.y.z_abc >=")
    assert str(e) == "column 13: expected a value after '>=', found end of text"
    assert e.expected == "a value"


@pytest.mark.req("KA-PRO-001")
def test_evaluation_errors() -> None:
    e = err("incubator.temperature > 25 degC", {})
    assert e.column == 1 and "'incubator.temperature'" in str(e)
    e = err("x / 0 > 1", {"x": 1})
    assert e.column == 3 and "division by zero" in str(e)
    e = err("x / (0 um) > 1 / um", {"x": 1})
    assert "division by zero" in str(e)
    e = err("x", {"x": 3})
    assert "must be true or false" in str(e)
    e = err("c == 3", {"c": "crystals"})
    assert e.column == 3 and "string" in str(e) and "number" in str(e)
    e = err('c < "z"', {"c": "crystals"})
    assert "only '==' and '!='" in str(e)
    e = err("b and 1 > 0", {"b": 1})
    assert e.column == 3 and "'and' needs true or false" in str(e)
    e = err("not x", {"x": 2.0})
    assert e.column == 1
    e = err("-s > 0", {"s": "a"})
    assert e.column == 1
    e = err("s + 1 > 0", {"s": "a"})
    assert e.column == 3
    e = err("x > 0", {"x": [1, 2]})
    assert "list" in str(e)


@pytest.mark.req("KA-PRO-001")
def test_string_and_bool_values() -> None:
    env = {"cell[1].class": "crystals", "door.open": False}
    assert evaluate_condition(parse_condition('cell[1].class == "crystals"'), env) is True
    assert evaluate_condition(parse_condition("not door.open"), env) is True
    assert evaluate_condition(parse_condition("door.open == false"), env) is True


@pytest.mark.req("KA-PRO-001")
def test_limits_are_clear_errors_not_recursion() -> None:
    e = err("(" * 200 + "a" + ")" * 200)
    assert e.column == MAX_DEPTH + 1 and "nested deeper than 64" in str(e)
    assert "nested deeper" in str(err("-" * 500 + "1 > 0"))
    assert "nested deeper" in str(err("not " * 300 + "a"))
    assert "nested deeper" in str(err(" and ".join(["a"] * 100)))
    assert "nested deeper" in str(err("+".join(["1"] * 900) + " > 0"))
    e = err("a" * (MAX_TEXT_LENGTH + 1))
    assert e.column == MAX_TEXT_LENGTH + 1 and "at most 2000 characters" in str(e)
    # at the limit it still works, including evaluation and printing
    deep = "(" * (MAX_DEPTH - 1) + "a" + ")" * (MAX_DEPTH - 1)
    assert parse_condition(deep) == Name(("a",))
    chain = parse_condition(" and ".join(["a"] * MAX_DEPTH))
    assert evaluate_condition(chain, {"a": True}) is True


# --- names ------------------------------------------------------------------------------------


@pytest.mark.req("KA-PRO-001")
def test_names_are_canonical() -> None:
    e = parse_condition(
        "cell [2].max_length_um >= params.target_size and step.inspect_1.count > 0"
        ' or cell[1].class == "crystals" and incubator.temperature > 25 degC'
    )
    assert e.names() == {
        "cell[2].max_length_um",
        "params.target_size",
        "step.inspect_1.count",
        "cell[1].class",
        "incubator.temperature",
    }
    assert parse_condition("a[0][1].b > 1").names() == {"a[0][1].b"}
    assert parse_condition("true").names() == set()


# --- watchdogs --------------------------------------------------------------------------------


@pytest.mark.req("KA-PRO-001")
def test_watchdog_parsing() -> None:
    w = parse_watchdog("incubator.temperature > 25 degC for 5 min")
    assert w.condition == Compare(">", Name(("incubator", "temperature")), Num(25, "degC"))
    assert w.duration == Num(5, "min")
    assert w.seconds == 300.0
    assert w.names() == {"incubator.temperature"}
    assert str(w) == "incubator.temperature > 25 degC for 5 min"
    assert parse_watchdog(str(w)) == w
    assert w.holds({"incubator.temperature": Q_(26, "degC")}) is True
    assert parse_watchdog("(a or b) for 1.5 h").seconds == 5400.0


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("t > 25 degC", 12, "expected 'for' and a duration"),
        ("t > 25 degC for", 16, "expected a duration with a time unit"),
        ("t > 25 degC for 5", 17, "expected a duration with a time unit"),
        ("t > 25 degC for x", 17, "expected a duration with a time unit"),
        ("t > 25 degC for 5 um", 17, "not a time"),
        ("t > 25 degC for 0 s", 17, "greater than zero"),
        ("t > 25 degC for 5 min and x", 23, "expected an operator or the end"),
        ("t + 1 for 5 min", 1, "not a condition"),
    ],
)
@pytest.mark.req("KA-PRO-001")
def test_watchdog_errors(text: str, column: int, fragment: str) -> None:
    e = err(text, watchdog=True)
    assert e.column == column, str(e)
    assert fragment in str(e), str(e)


# --- properties -------------------------------------------------------------------------------


@pytest.mark.req("KA-PRO-001")
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80))
def test_random_text_only_raises_expression_error(text: str) -> None:
    try:
        parse_condition(text)
    except ExpressionError as e:
        assert e.column is None or 1 <= e.column <= len(text) + 1


_ALPHABET = "abcxyz()[]. 0123456789+-*/<>=!\"'\\ndotrufalsemin degC um uL/min for"


@pytest.mark.req("KA-PRO-001")
@settings(max_examples=400)
@given(st.text(alphabet=_ALPHABET, max_size=60))
def test_near_miss_text_only_raises_expression_error(text: str) -> None:
    try:
        e = parse_watchdog(text) if " for " in text else parse_condition(text)
    except ExpressionError:
        return
    str(e)


_idents = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(
    lambda s: s not in KEYWORDS
)
_names = st.builds(
    lambda head, rest: Name((head, *rest)),
    _idents,
    st.lists(st.one_of(_idents, st.integers(0, 99)), max_size=3),
)
_nums = st.builds(
    Num,
    st.one_of(
        st.integers(0, 10**20),
        st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    ),
    st.sampled_from([None, None, "um", "degC", "min", "uL/min", "K", "mm^2", "s^-1"]),
)
_leaves = st.one_of(
    _nums, _names, st.builds(Str, st.text(max_size=8)), st.builds(BoolLit, st.booleans())
)


def _extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    return st.one_of(
        st.builds(Neg, children),
        st.builds(Not, children),
        st.builds(Arith, st.sampled_from("+-*/"), children, children),
        st.builds(Compare, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), children, children),
        st.builds(BoolOp, st.sampled_from(["and", "or"]), children, children),
    )


@pytest.mark.req("KA-PRO-001")
@settings(max_examples=500)
@given(st.recursive(_leaves, _extend, max_leaves=20))
def test_round_trip_of_random_trees(expr: Expr) -> None:
    text = str(expr)
    assert parse_expression(text) == expr
    assert str(parse_expression(text)) == text


@pytest.mark.req("KA-PRO-001")
def test_no_recursion_error_near_the_stack_limit() -> None:
    # the parser's own bounds keep it far from Python's recursion limit
    assert sys.getrecursionlimit() >= 1000
    for text in ["(" * 2000, "-" * 2000, "not " * 500, "a<" * 1000]:
        with pytest.raises(ExpressionError):
            parse_condition(text)
