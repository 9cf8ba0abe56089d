"""Peak throughput of the devices the course trains on: a table for GPUs, an estimate for CPUs.

"What fraction of the peak did we reach?" needs a peak. For a GPU it comes from the
vendor's datasheet (:data:`GPU_TABLE`, every entry with its source). Datasheets quote
some figures "with sparsity": a matmul whose operands follow NVIDIA's 2:4 structured
sparsity pattern counts the skipped zeros as work done, which doubles the number.
A benchmark of dense matrices can only be compared with the *dense* peak, so every
figure below is dense (the sparse figure halved where the datasheet gives only that).

For a CPU no datasheet is at hand, so :func:`cpu_device` *estimates* the peak from the
machine itself (``/proc/cpuinfo``): physical cores x clock x floating-point operations
per cycle and core, the last from the vector instructions the flags announce. It is an
estimate, labelled as such: the clock of a virtual machine is nominal, turbo and
AVX-512 down-clocking move it, and some cores split a 512-bit instruction in two halves.

The table lives here, in the student runtime, rather than in a lab's folder, because
the lab and ``benchmarks/gpu_matmul.py`` must use the very same figures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SOURCES_CHECKED", "Device", "GPU_TABLE", "gpu_device", "cpu_device", "current_device",
           "read_cpuinfo", "vector_flops_per_cycle", "unknown_gpu"]

#: Where each figure of :data:`GPU_TABLE` comes from, checked on this date.
SOURCES_CHECKED = "2026-12-01"


@dataclass(frozen=True)
class Device:
    """One device and its dense peaks, in TFLOP/s by number format, and memory bandwidth.

    ``peak_tflops`` keys: ``float32`` (plain FP32 on vector units or CUDA cores), ``tf32``
    (tensor cores running float32 matmuls as TF32), ``bfloat16``, ``float16``, ``float8``.
    ``memory_gbps`` is the bandwidth of the device's main memory (HBM, GDDR or DRAM), or
    ``None`` when it is unknown and must be measured.
    """

    name: str
    kind: str  # "GPU" or "CPU"
    peak_tflops: dict[str, float]
    memory_gbps: float | None
    source: str
    estimated: bool = False
    #: How the figures were obtained (the CPU estimate's arithmetic, for instance).
    notes: list[str] = field(default_factory=list)

    def dense_peak_tflops(self, dtype: str, tf32: bool = True) -> float:
        """The dense peak of a matmul in ``dtype`` ("float32", "bfloat16", ...).

        On NVIDIA GPUs since Ampere, TensorFlow runs float32 matmuls on tensor cores as
        TF32 unless ``tf.config.experimental.enable_tensor_float_32_execution(False)``:
        pass ``tf32`` as that setting and the float32 peak follows it.
        """
        if dtype == "float32" and tf32 and "tf32" in self.peak_tflops:
            return self.peak_tflops["tf32"]
        if dtype not in self.peak_tflops:
            raise KeyError(
                f"{self.name} has no {dtype} peak in dlcloud.devices "
                f"(known: {', '.join(sorted(self.peak_tflops))})"
            )
        return self.peak_tflops[dtype]


def _gpu(name, fp32, tf32, bf16, fp16, fp8, memory_gbps, source) -> Device:
    peaks = {"float32": fp32, "tf32": tf32, "bfloat16": bf16, "float16": fp16, "float8": fp8}
    return Device(name, "GPU", {k: v for k, v in peaks.items() if v is not None}, memory_gbps,
                  source)


_HALVED = "; the datasheet's TF32/BF16/FP16/FP8 figures are 'with sparsity', halved here"

#: Dense peaks of the GPUs a course like this one meets on GKE, keyed by a substring of
#: the name CUDA reports (``tf.config.experimental.get_device_details(gpu)["device_name"]``,
#: for instance "NVIDIA H100 80GB HBM3"). Checked first to last: the more specific first.
GPU_TABLE: dict[str, Device] = {
    "H100 PCIe": _gpu(
        "NVIDIA H100 PCIe 80GB", 51.0, 378.0, 756.0, 756.0, 1513.0, 2000.0,
        "NVIDIA H100 Tensor Core GPU datasheet (PCIe column)" + _HALVED,
    ),
    "H100": _gpu(
        # 132 SMs x 4 tensor cores x 1024 dense BF16 FLOP per clock x 1.83 GHz = 989.4.
        "NVIDIA H100 SXM5 80GB", 66.9, 494.7, 989.4, 989.4, 1978.9, 3350.0,
        "NVIDIA H100 Tensor Core GPU datasheet (SXM column) and Hopper whitepaper" + _HALVED,
    ),
    "H200": _gpu(
        "NVIDIA H200 SXM 141GB", 66.9, 494.7, 989.4, 989.4, 1978.9, 4800.0,
        "NVIDIA H200 Tensor Core GPU datasheet (SXM column)" + _HALVED,
    ),
    "A100-SXM4-40GB": _gpu(
        "NVIDIA A100 SXM4 40GB", 19.5, 156.0, 312.0, 312.0, None, 1555.0,
        "NVIDIA A100 Tensor Core GPU datasheet (dense column; 2:4 sparse figures are 2x)",
    ),
    "A100": _gpu(
        "NVIDIA A100 SXM4 80GB", 19.5, 156.0, 312.0, 312.0, None, 2039.0,
        "NVIDIA A100 Tensor Core GPU datasheet (dense column; 2:4 sparse figures are 2x)",
    ),
    "L4": _gpu(
        "NVIDIA L4", 30.3, 60.0, 121.0, 121.0, 242.0, 300.0,
        "NVIDIA L4 Tensor Core GPU datasheet" + _HALVED,
    ),
    "T4": _gpu(
        # Turing: FP16 tensor cores, no TF32, no BF16, no sparsity.
        "NVIDIA T4", 8.1, None, None, 65.0, None, 320.0,
        "NVIDIA T4 Tensor Core GPU datasheet (FP16 mixed precision, dense)",
    ),
}


def gpu_device(device_name: str) -> Device | None:
    """The table entry for the GPU CUDA calls ``device_name``, or ``None`` if unknown."""
    for key, device in GPU_TABLE.items():
        if key.lower() in device_name.lower():
            return device
    return None


# ---------------------------------------------------------------------------- CPUs


def read_cpuinfo(path: str | Path = "/proc/cpuinfo") -> list[dict[str, str]]:
    """One dict per logical processor of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    processors = []
    for block in text.strip().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            entry[key.strip()] = value.strip()
        if entry:
            processors.append(entry)
    return processors


def vector_flops_per_cycle(flags: set[str]) -> dict[str, int]:
    """FLOPs per cycle and core for float32 and bfloat16 matmuls, from the CPU's flags.

    float32: lanes of the widest vector (AVX-512: 16, AVX/AVX2: 8, SSE or NEON: 4) x 2
    for a fused multiply-add (a multiply and an add in one instruction, when ``fma`` is
    there) x 2 FMA units, which recent x86 server cores have. bfloat16: AVX512_BF16's
    dot-product instruction does two bfloat16 multiply-adds per float32 lane (x2); AMX
    tiles do 1024 bfloat16 FLOPs per cycle and core. Without either, bfloat16 is
    converted to float32 and computed at the float32 rate at best.
    """
    if "avx512f" in flags:
        lanes = 16
    elif "avx" in flags or "avx2" in flags:
        lanes = 8
    else:
        lanes = 4  # SSE on x86, NEON (asimd) on Arm
    fma = 2 if ("fma" in flags or "asimd" in flags or "avx512f" in flags) else 1
    fp32 = lanes * fma * 2
    if "amx_bf16" in flags:
        bf16 = 1024
    elif "avx512_bf16" in flags:
        bf16 = fp32 * 2
    else:
        bf16 = fp32
    return {"float32": fp32, "bfloat16": bf16}


def _physical_cores(processors: list[dict[str, str]], usable: set[int]) -> int:
    # Hyperthreads of one core share its FMA units: count (package, core) pairs once.
    cores = {
        (p.get("physical id", "0"), p.get("core id", p.get("processor")))
        for p in processors
        if int(p.get("processor", -1)) in usable
    }
    return max(1, len(cores))


def _clock_ghz(processors: list[dict[str, str]]) -> tuple[float, str]:
    # The highest frequency the kernel knows of (turbo), else the current one of cpuinfo.
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(max_freq.read_text()) / 1e6, "cpufreq's cpuinfo_max_freq (turbo)"
    except (OSError, ValueError):
        pass
    mhz = [float(p["cpu MHz"]) for p in processors if "cpu MHz" in p]
    if mhz:
        return max(mhz) / 1000, "/proc/cpuinfo 'cpu MHz' (nominal on a virtual machine)"
    return 2.0, "unknown: 2 GHz assumed"


def cpu_device(cpuinfo_path: str | Path = "/proc/cpuinfo", usable_cpus: set[int] | None = None,
               memory_gbps: float | None = None) -> Device:
    """An *estimate* of this machine's dense peak: cores x clock x FLOPs per cycle.

    ``usable_cpus`` are the logical CPUs this process may run on (its affinity by
    default). ``memory_gbps`` is left unknown unless given: no file tells DRAM
    bandwidth, so the lab measures it.
    """
    processors = read_cpuinfo(cpuinfo_path)
    if usable_cpus is None:
        usable_cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(
            range(os.cpu_count() or 1))
    cores = _physical_cores(processors, usable_cpus) if processors else len(usable_cpus)
    ghz, clock_source = _clock_ghz(processors)
    flags = set(processors[0].get("flags", processors[0].get("Features", "")).split()) \
        if processors else set()
    per_cycle = vector_flops_per_cycle(flags)
    peaks = {dtype: cores * ghz * flops / 1000 for dtype, flops in per_cycle.items()}
    model = processors[0].get("model name", "CPU") if processors else "CPU"
    arithmetic = (f"{cores} physical core(s) x {ghz:.2f} GHz ({clock_source}) x "
                  f"{per_cycle['float32']} float32 / {per_cycle['bfloat16']} bfloat16 "
                  "FLOPs per cycle")
    method = ("FLOPs per cycle from the vector flags (avx512f, fma, avx512_bf16, amx_bf16): "
              "lanes x 2 (FMA) x 2 FMA units")
    notes = [arithmetic, method]
    return Device(f"{model} ({cores} cores)", "CPU", peaks, memory_gbps,
                  "estimated from /proc/cpuinfo", estimated=True, notes=notes)


def unknown_gpu(device_name: str) -> Device:
    """A GPU the table does not know: no peak, so no fraction of peak (add it to GPU_TABLE)."""
    return Device(device_name, "GPU", {}, None, "not in dlcloud.devices.GPU_TABLE")


def current_device() -> Device:
    """The device TensorFlow computes on: the first GPU if there is one, else this CPU.

    Imports TensorFlow (so call it after the lab has configured its devices).
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return cpu_device()
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return gpu_device(name) or unknown_gpu(name)
