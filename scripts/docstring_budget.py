"""Docstrings that stay true: the share of the package's non-blank lines that are docstrings or comments, and any
docstring or comment that quotes a figure that goes stale (a date, a timing, a size, a machine).

Figures belong in docs/ and benchmarks/, beside the command that measured them (docs/measurements.md).

    python scripts/docstring_budget.py        # exits 1 over the budget or on a stale figure
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lightning_rlhf"
BUDGET = 0.20
FIGURE = re.compile(r"(20\d\d-\d\d-\d\d|\b\d+(\.\d+)?\s?(ms|GiB|GB|MB|tok/s|tokens/s|CPU-s|GFLOP/s)\b|EPYC|Xeon|AVX"
                    r"|\bH100\b|\bA100\b|\b\d+(\.\d+)?x faster)")


def documentation_lines(source: str) -> tuple[set[int], list[tuple[int, str]]]:
    """Line numbers of docstrings (module, class, function, attribute) and comments; and the figures in them."""
    lines: set[int] = set()
    figures: list[tuple[int, str]] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for index, statement in enumerate(body):
            is_string = isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
                and isinstance(statement.value.value, str)
            if is_string and (index == 0 or isinstance(node, (ast.Module, ast.ClassDef))):
                lines.update(range(statement.lineno, statement.end_lineno + 1))
                figures += [(statement.lineno, m.group(0)) for m in FIGURE.finditer(statement.value.value)]
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            lines.add(token.start[0])
            figures += [(token.start[0], m.group(0)) for m in FIGURE.finditer(token.string)]
    return lines, figures


def main() -> int:
    documented = total = 0
    stale = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        non_blank = {i for i, line in enumerate(source.splitlines(), start=1) if line.strip()}
        lines, figures = documentation_lines(source)
        documented += len(lines & non_blank)
        total += len(non_blank)
        stale += [f"{path.relative_to(PACKAGE.parent)}:{line}: {figure!r}" for line, figure in figures]
    share = documented / total
    print(f"docstring and comment lines: {documented} of {total} non-blank ({share:.1%}; budget {BUDGET:.0%})")
    for line in stale:
        print(f"stale figure: {line}")
    return 0 if share <= BUDGET and not stale else 1


if __name__ == "__main__":
    sys.exit(main())
