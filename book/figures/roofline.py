"""Draw chapter 6's roofline figure (roofline.svg) from the peak table in dlcloud.devices.

    python book/figures/roofline.py      # rewrites book/figures/roofline.svg

A static figure, committed: the book builds offline and does not execute code.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from dlcloud.devices import GPU_TABLE

HERE = Path(__file__).resolve().parent
SHOWN = [("H200", "tab:purple"), ("H100", "tab:blue"), ("A100", "tab:green"), ("L4", "tab:orange")]


def main() -> None:
    plt.rcParams["svg.hashsalt"] = "dlcloud-chapter-6"  # the same SVG on every run
    _, axes = plt.subplots(figsize=(8, 5))
    intensity = np.logspace(-1, 4, 400)
    for key, colour in SHOWN:
        gpu = GPU_TABLE[key]
        peak, bandwidth = gpu.peak_tflops["bfloat16"], gpu.memory_gbps
        axes.plot(intensity, np.minimum(peak, intensity * bandwidth / 1000), color=colour,
                  label=f"{gpu.name}: {peak:g} TFLOP/s BF16, {bandwidth / 1000:g} TB/s")
        ridge = peak * 1000 / bandwidth
        axes.plot([ridge], [peak], "o", color=colour)
        axes.annotate(f"{ridge:.0f}", (ridge, peak), textcoords="offset points",
                      xytext=(-22, 4) if key == "H200" else (4, -12), fontsize=8, color=colour)
    # Square BF16 matmuls: 2n³ FLOPs over 3n² two-byte numbers, n/3 FLOPs per byte.
    for n in (256, 1024, 8192):
        axes.axvline(n / 3, color="grey", linestyle=":", linewidth=1)
        axes.text(n / 3 * 1.05, 0.15, f"matmul {n}", rotation=90, fontsize=8, color="grey")
    axes.axvline(1 / 6, color="black", linestyle=":", linewidth=1)
    axes.text(1 / 6 * 1.05, 0.15, "BF16 addition", rotation=90, fontsize=8)
    axes.set(xscale="log", yscale="log", xlim=(0.1, 1e4), ylim=(0.1, 20000),
             xlabel="arithmetic intensity (FLOPs per byte of memory traffic)",
             ylabel="attainable TFLOP/s (dense)",
             title="Rooflines of four GPUs in BF16 (ridge points marked, in FLOPs per byte)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    plt.tight_layout()
    plt.savefig(HERE / "roofline.svg", metadata={"Date": None})


if __name__ == "__main__":
    main()
