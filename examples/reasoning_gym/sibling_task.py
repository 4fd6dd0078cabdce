"""Write a sibling of the built-in chat addition task as prompt-only JSONL: another operation, the same wording and
an ``answer`` column, the way a user brings a task of their own.

    python examples/reasoning_gym/sibling_task.py --operator '*' --max_operand 9 --out data/products.jsonl
    lightning-rlhf grpo fit --config examples/reasoning_gym/grpo.yaml --data.sources '[data/products.jsonl]' \\
        --model.reward_funcs '[answer_match, answer_only_format, brevity]'

``--seed`` draws the records (with replacement, as the built-in task does); evaluate on another seed's file.
"""

from __future__ import annotations

import argparse
import json
import operator
import random
from pathlib import Path

OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def records(op: str, max_operand: int, size: int, seed: int) -> list[dict[str, str]]:
    """``size`` records ``{"prompt", "answer"}``; for ``-`` the larger operand comes first (no negative answers)."""
    rng = random.Random(seed)
    out = []
    for _ in range(size):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if op == "-" and b > a:
            a, b = b, a
        out.append({"prompt": f"What is {a} {op} {b}? Answer with the number only.",
                    "answer": str(OPERATIONS[op](a, b))})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--operator", choices=sorted(OPERATIONS), default="*")
    parser.add_argument("--max_operand", type=int, default=9)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.max_operand < 1 or args.size < 1:
        parser.error("--max_operand and --size must be >= 1")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = records(args.operator, args.max_operand, args.size, args.seed)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"{len(rows)} records -> {path}")


if __name__ == "__main__":
    main()
