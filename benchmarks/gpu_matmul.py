"""Matmul TFLOP/s and fraction of the dense peak, in BF16 and TF32 (float32), on this device.

    python benchmarks/gpu_matmul.py [--sizes 1024 2048 4096 8192] [--out gpu-matmul.json]

The one prepared script for chapter 6's GPU figures: on an H100 or H200 it measures
square products up to 8192 and prints a table of TFLOP/s and fraction of the dense peak
(from dlcloud.devices); the goal is at least 75 % of dense BF16 peak. On a CPU it runs
smaller sizes by default, so that it is tested everywhere. The raw figures, with the
date, device, driver and library versions, go to a JSON file for the repository.

The method is lab 6's: random operands (never zeros), warm-up, sync_devices before and
after every timed product, the median of repeats, FLOPs counted as 2·M·N·K. A chain of
products per timed run amortises the launch and synchronisation cost, which matters
for the small sizes on a GPU (a 1024 product takes a few microseconds there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

GPU_SIZES = [1024, 2048, 4096, 8192]
CPU_SIZES = [128, 256, 512]
DTYPES = ["bfloat16", "float32"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+",
                        help=f"square sizes (default {GPU_SIZES} on a GPU, {CPU_SIZES} on a CPU)")
    parser.add_argument("--dtypes", nargs="+", default=DTYPES, choices=DTYPES)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs; the median is kept")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--chain", type=int, default=0,
                        help="products per timed run (default: 10 on a GPU, 1 on a CPU)")
    parser.add_argument("--out", type=Path, default=Path("gpu-matmul.json"),
                        help="where the raw figures go (JSON)")
    return parser.parse_args(argv)


def nvidia_smi() -> dict:
    """Driver version and GPU name as nvidia-smi reports them (empty without a GPU)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    name, driver, memory, clock = (field.strip() for field in out[0].split(","))
    return {"name": name, "driver": driver, "memory": memory, "max_sm_clock": clock}


def time_chain(tf, a, b, chain: int, repeats: int, warmup: int) -> list[float]:
    """Seconds per product, for `repeats` timed runs of `chain` products each."""
    for _ in range(warmup):
        tf.matmul(a, b)
    times = []
    for _ in range(repeats):
        tf.test.experimental.sync_devices()
        start = time.perf_counter()
        for _ in range(chain):
            tf.matmul(a, b)
        tf.test.experimental.sync_devices()
        times.append((time.perf_counter() - start) / chain)
    return times


def measure(tf, device, sizes, dtypes, repeats, warmup, chain) -> list[dict]:
    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    generator = tf.random.Generator.from_seed(0)
    rows = []
    for dtype in dtypes:
        for size in sizes:
            a = tf.cast(generator.normal((size, size)), dtype)
            b = tf.cast(generator.normal((size, size)), dtype)
            times = time_chain(tf, a, b, chain, repeats, warmup)
            seconds = statistics.median(times)
            tflops = 2 * size**3 / seconds / 1e12
            try:
                peak = device.dense_peak_tflops(dtype, tf32=tf32)
            except KeyError:
                peak = None  # a device the table does not know: no fraction
            rows.append({
                "dtype": dtype, "size": size, "format": "tf32" if dtype == "float32" and tf32
                and "tf32" in device.peak_tflops else dtype,
                "median_s": seconds, "times_s": times, "tflops": tflops,
                "dense_peak_tflops": peak, "fraction_of_peak": tflops / peak if peak else None,
            })
            print(f"  {dtype:>9} {size:>5}: {tflops:9.3f} TFLOP/s"
                  + (f"  {tflops / peak:6.1%} of dense peak" if peak else ""), flush=True)
            del a, b
    return rows


def environment(tf, device) -> dict:
    build = tf.sysconfig.get_build_info()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device.name, "kind": device.kind, "peak_source": device.source,
        "peak_estimated": device.estimated, "notes": device.notes,
        "tensorflow": tf.__version__, "cuda_build": build.get("cuda_version"),
        "cudnn_build": build.get("cudnn_version"), "python": platform.python_version(),
        "host": platform.node(), "nvidia_smi": nvidia_smi(),
        "tf32_enabled": tf.config.experimental.tensor_float_32_execution_enabled(),
    }


def print_table(rows: list[dict]) -> None:
    print(f"\n{'format':>9} {'size':>5} {'TFLOP/s':>10} {'dense peak':>10} {'fraction':>9}")
    for row in rows:
        peak = f"{row['dense_peak_tflops']:10.1f}" if row["dense_peak_tflops"] else f"{'?':>10}"
        fraction = f"{row['fraction_of_peak']:9.1%}" if row["fraction_of_peak"] else f"{'?':>9}"
        print(f"{row['format']:>9} {row['size']:>5} {row['tflops']:10.3f} {peak} {fraction}")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from dlcloud.devices import current_device

    device = current_device()
    on_gpu = device.kind == "GPU"
    sizes = args.sizes or (GPU_SIZES if on_gpu else CPU_SIZES)
    chain = args.chain or (10 if on_gpu else 1)
    print(f"{device.name} ({device.source}); TensorFlow {tf.__version__}; sizes {sizes}, "
          f"{args.repeats} repeats of {chain} product(s)", flush=True)
    with tf.device("/GPU:0" if on_gpu else "/CPU:0"):
        rows = measure(tf, device, sizes, args.dtypes, args.repeats, args.warmup, chain)
    print_table(rows)
    args.out.write_text(json.dumps({"environment": environment(tf, device), "results": rows},
                                   indent=2) + "\n")
    print(f"\nraw figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
