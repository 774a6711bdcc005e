"""The profile as a picture: layers x KV heads, score and class, saved next to the JSON."""

from __future__ import annotations

from pathlib import Path

from redknot_sglang.heads.profile import HeadProfile


def save_heatmap(profile: HeadProfile, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    score = np.array([[s.score if s.score is not None else np.nan for s in row] for row in profile.heads])
    cls = np.array(profile.is_global_matrix(), dtype=float)
    layers, heads = score.shape
    fig, axes = plt.subplots(1, 2, figsize=(3 + 2 * max(2.5, 0.45 * heads), 1.5 + 0.22 * layers), sharey=True)
    im = axes[0].imshow(score, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axes[0].set_title("score", fontsize=9)
    fig.colorbar(im, ax=axes[0], fraction=0.08)
    axes[1].imshow(cls, aspect="auto", cmap="coolwarm", vmin=0, vmax=1)
    axes[1].set_title(f"class: red = global ({profile.global_fraction:.0%})", fontsize=9)
    for ax in axes:
        ax.set_xlabel("KV head")
        ax.set_xticks(range(heads))
    axes[0].set_ylabel("layer")
    fig.suptitle(f"{profile.model.architecture}: {profile.provenance.method}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
