"""Pictures of a profile, saved next to its JSON: the heatmap (score and class per layer x KV head) and
the fidelity-vs-memory trade-off of the search that chose it."""

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


def save_tradeoff(rows: list[dict], chosen: str, bucket: str, criteria, path: str | Path) -> Path:
    """Fidelity against memory: accuracy and teacher-forced agreement in ``bucket`` against the KV
    bytes ratio at the target length, one line per (window, sink) through its global ratios under
    the chosen candidate's ranking (other rankings' measurements as grey crosses); the chosen
    candidate starred, the criteria dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    star = [r for r in rows if r["key"] == chosen]
    ranking = star[0]["ranking"] if star else rows[0]["ranking"]
    mine = [r for r in rows if r["ranking"] == ranking]
    others = [r for r in rows if r["ranking"] != ranking]
    shapes = sorted({(r["window"], r["sink"]) for r in mine})
    dense = rows[0]["buckets"][bucket]["dense_accuracy"]
    for metric, ax in zip(("accuracy", "top1_agreement"), axes):
        for w, s in shapes:
            line = sorted((r for r in mine if (r["window"], r["sink"]) == (w, s)), key=lambda r: r["kv_ratio"])
            xs, ys = [r["kv_ratio"] for r in line], [r["buckets"][bucket][metric] for r in line]
            ax.plot(xs, ys, marker="o", ms=3, label=f"window {w}" + (f", sink {s}" if len(shapes) > len({x for x, _ in shapes}) else ""))
            for r, x, y in zip(line, xs, ys):
                ax.annotate(f"{r['global_ratio']:.0%}", (x, y), fontsize=6, textcoords="offset points", xytext=(2, 2))
        if others:
            ax.plot([r["kv_ratio"] for r in others], [r["buckets"][bucket][metric] for r in others], "x", color="grey",
                    ms=4, label="other rankings")
        if star:
            ax.plot([star[0]["kv_ratio"]], [star[0]["buckets"][bucket][metric]], "k*", ms=12, label="chosen")
        floor = dense - criteria.max_accuracy_drop if metric == "accuracy" else criteria.min_agreement
        ax.axhline(floor, color="grey", ls="--", lw=0.8)
        if metric == "accuracy":
            ax.axhline(dense, color="black", lw=0.8, label="dense")
        ax.set_xlabel(f"KV bytes / dense at {criteria.target_length} tokens")
        ax.set_ylabel(metric.replace("_", " ") + f" ({bucket} prompts)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"fidelity vs memory, {ranking} ranking (labels: fraction of global heads); grey dashed: criteria")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
