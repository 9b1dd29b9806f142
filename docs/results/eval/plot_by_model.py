"""A second view of the three eval.json files here: one colour per model, k on the x axis.

posttrain's own eval.png colours by strategy and dashes every compared model alike; this one
separates the models. Run from this directory: python plot_by_model.py -> by_model.png
"""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MODELS = [("before SFT", "before-sft.eval.json", "C7"), ("after SFT", "sft.eval.json", "C0"),
          ("after DAPO", "dapo.eval.json", "C3")]
PANELS = [("pass@k (any of k right)", "pass@k"), ("maj@k (plain vote)", "maj@k"),
          ("weighted maj@k (verifier-weighted vote)", "weighted_maj@k"), ("pass^k (all k right)", "pass^k")]

fig, axes = plt.subplots(1, 4, figsize=(15, 4), sharey=True)
for ax, (title, strategy) in zip(axes, PANELS):
    for label, path, colour in MODELS:
        rows = json.load(open(path))["strategies"]
        picked = [r for r in rows if r["strategy"] == strategy]
        k = [r["k"] for r in picked]
        y = [r["accuracy"] for r in picked]
        lo = [r["accuracy"] - r["interval"][0] for r in picked]
        hi = [r["interval"][1] - r["accuracy"] for r in picked]
        ax.errorbar(k, y, yerr=[lo, hi], marker="o", capsize=3, color=colour, label=label)
        greedy = next(r["accuracy"] for r in rows if r["strategy"] == "greedy")
        if strategy != "pass^k":
            ax.axhline(greedy, color=colour, linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
    ax.set_xlabel("k (samples per problem, T = 1)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
axes[0].set_ylabel("accuracy, 200 held-out a+b problems")
axes[0].set_ylim(-0.02, 1.02)
axes[0].legend(fontsize=8, loc="upper left", title="solid: k samples; dotted: greedy", title_fontsize=7)
fig.tight_layout()
fig.savefig("by_model.png", dpi=110)
