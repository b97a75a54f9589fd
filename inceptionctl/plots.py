"""Plots (matplotlib, headless): confusion matrices and throughput curves, as PNG, SVG or PDF
by the file's suffix."""

from __future__ import annotations

from pathlib import Path

from .files import atomic_path

FORMATS = ("png", "svg", "pdf")


def plot_format(path: Path) -> str:
    """The format ``path``'s suffix names (png, svg or pdf), or the one-line error: a PNG
    written into ``cm.txt`` would be a file its name misdescribes."""
    from .errors import InceptionError

    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InceptionError(f"--plot {path}: give a file ending in "
                             f"{', '.join('.' + f for f in FORMATS)}")
    return fmt


def confusion_png(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> Path:
    """Write a confusion matrix (rows: true class, columns: predicted) as a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    side = min(12.0, max(4.0, 0.35 * n + 2))
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(confusion, cmap="Blues")
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
        if n <= 20:
            top = max(max(row) for row in confusion) or 1
            for i, row in enumerate(confusion):
                for j, v in enumerate(row):
                    if v:
                        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                                color="white" if v > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=plot_format(path), dpi=100)
    plt.close(fig)
    return path
