"""dlcloud.devices (the peak table and the CPU estimate) and benchmarks/gpu_matmul.py on CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from labtools import REPO

from dlcloud import devices

# A cut-down /proc/cpuinfo: two hyperthreads of one core, and a second core.
CPUINFO = """\
processor\t: 0
model name\t: Test CPU
physical id\t: 0
core id\t\t: 0
cpu MHz\t\t: 2500.000
flags\t\t: fpu sse avx avx2 fma avx512f avx512_bf16

processor\t: 1
model name\t: Test CPU
physical id\t: 0
core id\t\t: 0
cpu MHz\t\t: 2500.000
flags\t\t: fpu sse avx avx2 fma avx512f avx512_bf16

processor\t: 2
model name\t: Test CPU
physical id\t: 0
core id\t\t: 1
cpu MHz\t\t: 3000.000
flags\t\t: fpu sse avx avx2 fma avx512f avx512_bf16
"""


@pytest.mark.parametrize(("name", "bf16", "tf32"), [
    ("NVIDIA H100 80GB HBM3", 989.4, 494.7),
    ("NVIDIA H200", 989.4, 494.7),
    ("NVIDIA H100 PCIe", 756.0, 378.0),
    ("NVIDIA A100-SXM4-80GB", 312.0, 156.0),
    ("NVIDIA L4", 121.0, 60.0),
])
def test_gpu_table_holds_dense_peaks(name, bf16, tf32):
    gpu = devices.gpu_device(name)
    assert gpu is not None, f"{name!r} matches no entry of dlcloud.devices.GPU_TABLE"
    assert gpu.dense_peak_tflops("bfloat16") == bf16, f"{name}: dense BF16 peak (not 'with sparsity')"
    assert gpu.dense_peak_tflops("float32", tf32=True) == tf32, f"{name}: float32 runs as TF32"
    assert gpu.dense_peak_tflops("float32", tf32=False) < tf32, f"{name}: FP32 without tensor cores"
    assert gpu.source and not gpu.estimated, f"{name}: a datasheet figure needs its source"


def test_specific_gpu_names_win_over_general_ones():
    assert devices.gpu_device("NVIDIA H100 PCIe").name.endswith("PCIe 80GB")
    assert devices.gpu_device("NVIDIA A100-SXM4-40GB").memory_gbps == 1555.0
    assert devices.gpu_device("Some Future GPU") is None


def test_unknown_dtype_says_what_is_known():
    with pytest.raises(KeyError, match="bfloat16"):
        devices.GPU_TABLE["T4"].dense_peak_tflops("bfloat16")


def test_cpu_estimate_counts_physical_cores_clock_and_vector_width(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    # No cpufreq in the sandbox of this test: the clock comes from cpuinfo.
    monkeypatch.setattr(devices, "_clock_ghz", lambda processors: (
        max(float(p["cpu MHz"]) for p in processors) / 1000, "cpuinfo"))
    cpu = devices.cpu_device(cpuinfo, usable_cpus={0, 1, 2})
    # 2 physical cores (processors 0 and 1 are one core) x 3.0 GHz x 64 FLOPs per cycle.
    assert cpu.peak_tflops["float32"] == pytest.approx(2 * 3.0 * 64 / 1000)
    assert cpu.peak_tflops["bfloat16"] == pytest.approx(2 * cpu.peak_tflops["float32"])
    assert cpu.estimated and cpu.kind == "CPU" and cpu.memory_gbps is None
    assert "2 physical core(s)" in cpu.notes[0]
    only_first = devices.cpu_device(cpuinfo, usable_cpus={0})
    assert only_first.peak_tflops["float32"] == pytest.approx(3.0 * 64 / 1000)


@pytest.mark.parametrize(("flags", "fp32", "bf16"), [
    ({"avx512f", "fma", "amx_bf16", "avx512_bf16"}, 64, 1024),
    ({"avx", "avx2", "fma"}, 32, 32),
    ({"sse", "sse2"}, 8, 8),
    ({"asimd"}, 16, 16),
])
def test_flops_per_cycle_follow_the_vector_flags(flags, fp32, bf16):
    assert devices.vector_flops_per_cycle(flags) == {"float32": fp32, "bfloat16": bf16}


def test_this_machine_has_an_estimate():
    cpu = devices.cpu_device()
    assert cpu.peak_tflops["float32"] > 0, f"no float32 estimate for this machine: {cpu.notes}"


def test_gpu_matmul_benchmark_runs_on_cpu(tmp_path):
    out = tmp_path / "matmul.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_matmul.py"), "--sizes", "64", "128",
         "--repeats", "3", "--warmup", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, f"gpu_matmul.py failed on CPU:\n{result.stderr[-3000:]}"
    assert "fraction" in result.stdout, f"gpu_matmul.py printed no table:\n{result.stdout}"
    report = json.loads(out.read_text())
    assert report["environment"]["tensorflow"] and report["environment"]["date"]
    rows = report["results"]
    assert {(r["dtype"], r["size"]) for r in rows} == {
        (d, s) for d in ("bfloat16", "float32") for s in (64, 128)}
    for row in rows:
        assert row["tflops"] == pytest.approx(2 * row["size"] ** 3 / row["median_s"] / 1e12)
        assert len(row["times_s"]) == 3
        assert 0 < row["fraction_of_peak"] < 2, (
            f"{row['dtype']} {row['size']}: {row['fraction_of_peak']:.2f} of the CPU estimate: "
            "is the estimate in dlcloud.devices.cpu_device wrong?"
        )


@pytest.mark.gpu
def test_gpu_matmul_reaches_three_quarters_of_dense_bf16_peak(tmp_path):
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA GPU here (nvidia-smi is missing): the BF16 fraction of a GPU's "
                    "dense peak can only be measured on one")
    out = tmp_path / "matmul.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_matmul.py"), "--sizes",
                    "8192", "--dtypes", "bfloat16", "--out", str(out)], check=True, timeout=600)
    row = json.loads(out.read_text())["results"][0]
    assert row["fraction_of_peak"] >= 0.75, (
        f"BF16 8192 matmul reached {row['fraction_of_peak']:.0%} of the dense peak, goal 75 %"
    )
