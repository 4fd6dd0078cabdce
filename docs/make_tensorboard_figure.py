"""Draw the PPO curves of a real run's TensorBoard event file into ``docs/images/ppo_curves.png``.

::

    lightning-rlhf pipeline --output_dir runs/pipeline        # the embedded tiny run
    python docs/make_tensorboard_figure.py runs/pipeline/ppo/lightning_logs/version_0

The picture on the TensorBoard docs page is made this way from the tiny run, so it shows what a
user of that command sees in TensorBoard, not a drawing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PANELS = [
    ("ppo/reward_mean", "reward (mean score - KL penalty)"),
    ("ppo/task_success", "task success (rollouts)"),
    ("ppo/kl", "KL to the reference"),
    ("ppo/policy_loss", "policy loss"),
    ("ppo/value_loss", "value loss"),
    ("ppo/entropy", "entropy"),
]


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the event files under ``log_dir``: ``tag -> [(step, value), ...]``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(log_dir).is_dir():
        raise FileNotFoundError(f"{log_dir}: no such folder; pass a lightning_logs/version_N folder of a PPO run")
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def draw(log_dir: Path, output: Path) -> Path:
    """Plot :data:`PANELS` (those the run logged) from ``log_dir`` into ``output``.

    Args:
        log_dir: a ``lightning_logs/version_N`` folder of a PPO run.
        output: the PNG to write.

    Raises:
        FileNotFoundError: when ``log_dir`` holds none of the PPO scalars.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = read_scalars(log_dir)
    panels = [(tag, title) for tag, title in PANELS if tag in scalars]
    if not panels:
        raise FileNotFoundError(f"{log_dir}: no PPO scalars ({', '.join(t for t, _ in PANELS)}) in its event files")
    columns = 3
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    for ax, (tag, title) in zip(axes.flat, panels):
        steps, values = zip(*scalars[tag])
        ax.plot(steps, values, linewidth=1.5)
        ax.set_title(f"{title}\n{tag}", fontsize=9)
        ax.set_xlabel("trainer step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    title = "PPO curves of `lightning-rlhf pipeline` (the embedded tiny run), as TensorBoard shows them"
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    return output


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "images" / "ppo_curves.png")
    args = parser.parse_args()
    print(draw(args.log_dir, args.output))
