"""Generate seeds/requirements.md: each requirement with the tests that carry its marker.

python seeds/trace.py          # rewrite seeds/requirements.md
python seeds/trace.py --check  # exit 1 if a requirement has no test, a test names an unknown
                               # requirement, or seeds/requirements.md is out of date
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "seeds" / "requirements.in.md"
TARGET = ROOT / "seeds" / "requirements.md"
TESTS = ROOT / "tests"


def read_requirements() -> tuple[str, list[tuple[str, str, str]]]:
    head, reqs = [], []
    for line in SOURCE.read_text(encoding="utf-8").splitlines():
        if line.startswith("KA-"):
            rid, area, statement = (part.strip() for part in line.split("|", 2))
            reqs.append((rid, area, statement))
        elif not line.startswith("<!--"):
            head.append(line)
    return "\n".join(head).rstrip() + "\n", reqs


def _req_ids(decorators: list[ast.expr]) -> list[str]:
    ids = []
    for dec in decorators:
        if (
            isinstance(dec, ast.Call)
            and isinstance(dec.func, ast.Attribute)
            and dec.func.attr == "req"
            and dec.args
            and isinstance(dec.args[0], ast.Constant)
        ):
            ids.append(str(dec.args[0].value))
    return ids


def find_markers() -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                for rid in _req_ids(node.decorator_list):
                    found[rid].append(f"{path.relative_to(ROOT)}::{node.name}")
    return found


def render() -> tuple[str, list[str]]:
    head, reqs = read_requirements()
    markers = find_markers()
    problems = []
    lines = [head, "| id | area | requirement | tests |", "|---|---|---|---|"]
    known = {rid for rid, _, _ in reqs}
    for rid, area, statement in reqs:
        tests = markers.get(rid, [])
        if not tests:
            problems.append(f"{rid} has no test")
        shown = "<br>".join(f"`{t}`" for t in tests) or "**none yet**"
        lines.append(f"| {rid} | {area} | {statement} | {shown} |")
    for rid in sorted(set(markers) - known):
        problems.append(f"tests name unknown requirement {rid}: {markers[rid][0]}")
    return "\n".join(lines) + "\n", problems


def main() -> int:
    text, problems = render()
    if "--check" in sys.argv:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            problems.append("seeds/requirements.md is stale: run `python seeds/trace.py`")
        for p in problems:
            print(f"requirements: {p}", file=sys.stderr)
        return 1 if problems else 0
    TARGET.write_text(text, encoding="utf-8")
    for p in problems:
        print(f"requirements: {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
