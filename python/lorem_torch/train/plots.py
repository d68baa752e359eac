"""Plots people would rather look at: learning curves and parity plots (PNG)."""

from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(history: List[Dict[str, Any]], path: Path) -> None:
    if not history:
        return
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].semilogy(epochs, [row["train_loss"] for row in history], label="train")
    axes[0].semilogy(epochs, [row["valid_loss"] for row in history], label="validation")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].semilogy(epochs, [row["valid_energy_mae"] for row in history], label="MAE")
    axes[1].semilogy(epochs, [row["valid_energy_rmse"] for row in history], label="RMSE")
    axes[1].set_ylabel("validation energy error (meV/atom)")
    axes[1].legend()
    axes[2].semilogy(epochs, [row["valid_forces_mae"] for row in history], label="MAE")
    axes[2].semilogy(epochs, [row["valid_forces_rmse"] for row in history], label="RMSE")
    axes[2].set_ylabel("validation force error (meV/A)")
    axes[2].legend()
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 600, not 6 x 10^2
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()
        if high < 30 * low:  # intermediate ticks labelled only where decades are few
            ax.yaxis.set_minor_formatter(plain)
            ax.tick_params(axis="y", which="minor", labelsize=7)
        else:
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shared_offset(values: np.ndarray) -> float:
    """A round number to subtract from values that sit in a narrow band far from zero
    (energies per atom: -155.312 to -155.298), so that tick labels stay short; 0 when
    they need none. Named in the axis labels, instead of matplotlib's offset text,
    which collides with them."""
    low, high = float(np.min(values)), float(np.max(values))
    span, centre = high - low, 0.5 * (low + high)
    if span <= 0 or abs(centre) < 100 * span:
        return 0.0
    decimals = int(-np.floor(np.log10(span)))  # round at the span's leading digit
    return float(np.round(centre, decimals))


def _readable_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=5))
        formatter = ScalarFormatter(useOffset=False)
        formatter.set_scientific(False)
        axis.set_major_formatter(formatter)


def parity(
    reference: Sequence[float],
    predicted: Sequence[float],
    groups: Sequence[str],
    label: str,
    unit: str,
    path: Path,
) -> None:
    plt = _pyplot()
    fig = parity_figure(reference, predicted, groups, label, unit)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parity_figure(
    reference: Sequence[float],
    predicted: Sequence[float],
    groups: Sequence[str],
    label: str,
    unit: str,
):
    plt = _pyplot()
    reference, predicted = np.asarray(reference), np.asarray(predicted)
    offset = shared_offset(np.concatenate([reference, predicted]))
    reference, predicted = reference - offset, predicted - offset
    groups = np.asarray(groups)
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    for group in sorted(set(groups.tolist())):
        mask = groups == group
        ax.scatter(reference[mask], predicted[mask], s=6, alpha=0.6, label=group)
    low = float(min(reference.min(), predicted.min()))
    high = float(max(reference.max(), predicted.max()))
    pad = 0.05 * (high - low) or 1e-3
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="black", lw=0.8)
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal")
    mae = float(np.abs(predicted - reference).mean())
    ax.set_title(f"{label}: MAE {mae:.3g} {unit}")
    relative = f", relative to {offset:g}" if offset else ""
    ax.set_xlabel(f"reference {label} ({unit}{relative})")
    ax.set_ylabel(f"predicted {label} ({unit}{relative})")
    _readable_ticks(ax)
    if len(set(groups.tolist())) > 1:
        ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    return fig


def apt_parity(reference: np.ndarray, predicted: np.ndarray, path: Path) -> None:
    """3 x 3 grid of parity plots, one per Cartesian component of the Born effective
    charges; reference and predicted [M, 3, 3] (elementary charges)."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 3, figsize=(10, 9.5))
    names = "xyz"
    low = float(min(reference.min(), predicted.min()))
    high = float(max(reference.max(), predicted.max()))
    for a in range(3):
        for b in range(3):
            ax = axes[a, b]
            x, y = reference[:, a, b], predicted[:, a, b]
            ax.scatter(x, y, s=4, alpha=0.5)
            ax.plot([low, high], [low, high], color="black", lw=0.8)
            mae = float(np.abs(y - x).mean())
            ax.set_title(f"Z*_{names[a]}{names[b]}: MAE {mae:.3g} e", fontsize=9)
            ax.grid(alpha=0.3)
            if a == 2:
                ax.set_xlabel("reference (e)")
            if b == 0:
                ax.set_ylabel("predicted (e)")
    fig.suptitle(f"Born effective charges: MAE {float(np.abs(predicted - reference).mean()):.3g} e")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
