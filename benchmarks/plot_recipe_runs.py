"""Curves of several ``recipe_across_tasks.py`` results side by side: one panel per curve, one line per run.

    python benchmarks/plot_recipe_runs.py --run "bonus, no target=runs/trap3_bonus.json" \\
        --run "bonus with entropy_target=runs/trap3_target.json" \\
        --tag grpo/entropy "mean token entropy" --tag grpo/reward/answer_only_format "strict reward" \\
        --out docs/images/trap3.png

Each ``--run LABEL=JSON`` draws every run recorded in that file (its first task, every seed); each ``--tag TAG
TITLE`` is one panel. Used for the traps of docs/tasks.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def trailing_mean(values: list[float], width: int) -> list[float]:
    """Each value replaced by the mean of it and the ``width - 1`` before it (fewer at the start)."""
    return [sum(window) / len(window) for window in (values[max(0, i - width + 1):i + 1] for i in range(len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=JSON")
    parser.add_argument("--tag", nargs=2, action="append", required=True, metavar=("TAG", "TITLE"))
    parser.add_argument("--title", default=None, help="a title over the panels")
    parser.add_argument("--smooth", type=int, default=1, metavar="W",
                        help="draw each curve as the mean of its last W points (a rollout's 32 answers are noisy)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.tag), figsize=(4.2 * len(args.tag), 3.3), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, spec in enumerate(args.run):
        label, _, path = spec.partition("=")
        if not path:
            parser.error(f"--run {spec!r}: write LABEL=JSON")
        task = json.loads(Path(path).read_text())["tasks"][0]
        for number, record in enumerate(task["runs"]):
            name = label if len(task["runs"]) == 1 else f"{label}, seed {record['seed']}"
            color, style = colors[index % len(colors)], ("-", "--", ":", "-.")[number % 4]  # a colour per --run
            for ax, (tag, _) in zip(axes[0], args.tag):
                points = record.get("curves", {}).get(tag, [])
                if points:
                    ax.plot([s for s, _ in points], trailing_mean([v for _, v in points], args.smooth), label=name,
                            color=color, linestyle=style, marker="." if tag.startswith("val/") else None)
    for ax, (_, title) in zip(axes[0], args.tag):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("rollout")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)  # the first panel holds every run's line
    if args.title:
        fig.suptitle(args.title, fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
