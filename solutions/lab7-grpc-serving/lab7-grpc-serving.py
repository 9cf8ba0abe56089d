# %% [markdown] given="intro"
# # Lab 7: A gRPC server that TensorFlow Serving clients can talk to
#
# A small insurer sells **flight-delay cover** at checkout (the product of lab 1,
# `dlcloud.product`): the customer pays a premium and gets a payout if the flight arrives
# at least 60 minutes late, is cancelled or is diverted. The premium is the expected payout
# plus a loading, so it needs the probability of a payout, and that comes from the
# course's TensorFlow model. It has to be ready within the checkout's time budget. Three
# kinds of clients will call it:
#
# * the checkout team, through the insurer's own API, `QuoteService`, defined in a
#   `.proto` file that ships with this lab;
# * the analytics team, whose tooling already speaks **TensorFlow Serving's gRPC API**
#   (`PredictionService.Predict`, `GetModelMetadata`) and which must work unchanged;
# * lab 1's insurance service, whose quotes the model server prices from now on.
#
# You will build **one** `grpc.aio` server that offers both APIs over the same port, with
# dynamic batching, health checking, reflection, deadlines, retries and a graceful
# shutdown, load-test it against a plain REST baseline, and plug it into lab 1's service.
#
# | section | what you do | graded |
# | --- | --- | --- |
# | 1 | find and load the course's shipped model, as TensorFlow Serving would | `model-versions` |
# | 2 | the quote-time features, computed once and indexed by flight | |
# | 3 | read and compile the Protocol Buffers schema | |
# | 4 | write a dynamic batcher | `dynamic-batcher` |
# | 5 | implement TensorFlow Serving's `PredictionService` | `prediction-service` |
# | 6 | implement `QuoteService` (unary and server streaming) | `quote-service` |
# | 7 | start one server: both services, health, reflection, graceful stop, optional TLS | `server-lifecycle` |
# | 8 | a client with deadlines and retries | `client-deadlines-retries` |
# | 9 | a load generator; gRPC vs REST, batching on vs off; read the results | `load-generator`, `reading-the-results` |
# | 10 | TLS with a self-signed certificate, as an option of the same server | `tls-channel` |
# | 11 | lab 1's insurance service prices its quotes over gRPC | `grpc-pricing` |
#
# **How this notebook runs.** A Jupyter kernel already runs an asyncio event loop, so
# cells can use `await` at top level and the `grpc.aio` server you start lives in that
# loop, serving requests whenever a cell is awaiting something (or the kernel is idle).
# The flip side: *blocking* code in a cell freezes the server. When we use a synchronous
# client (like the stock TensorFlow Serving client) we therefore run it in a worker
# thread with `await asyncio.to_thread(...)`. Every server binds `127.0.0.1` on a free
# port, every call carries a deadline, and the last cell stops everything.

# %% given="setup"
import asyncio
import contextlib
import datetime
import inspect
import json
import math
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

# TensorFlow's and gRPC's C++ cores log to stderr (a failed TLS handshake, say), and nbgrader
# fails a graded cell that writes there. So: TensorFlow errors only, no gRPC core log lines,
# whatever this machine's environment says. Every failure still reaches you as an exception
# or a status code; to see gRPC's own log, restart with GRPC_VERBOSITY=debug set here.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
os.environ["GRPC_VERBOSITY"] = "NONE"
os.environ.pop("GRPC_TRACE", None)

import grpc
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import tensorflow as tf
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from dlcloud.features import FEATURES, ORIGINS, TEST_MONTHS, model_dir, quote_features
from dlcloud.net import LOOPBACK, free_port
from dlcloud.product import LOADING, PAYOUT_CENTS, premium_cents
from dlcloud.protos import compile_protos

tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(1)

LAB_DIR = Path.cwd()
WORK = Path(tempfile.mkdtemp(prefix="lab7-"))
RUNNING = []  # every server this notebook starts; the last cell stops them all
print("TensorFlow", tf.__version__, "| gRPC", grpc.__version__, "| scratch folder", WORK)

# %% [markdown] given="model-text"
# ## 1. The model: the course's payout model, as TensorFlow Serving finds it
#
# This lab does not train a model: it serves the one the whole course shares. It predicts
# the product's payout event (`dlcloud.product.pays_out`) from the twelve point-in-time
# features of `dlcloud.features.FEATURES`, was trained on the train months (January to
# August 2013) and ships with the course as a **SavedModel**, the format TensorFlow Serving
# loads. A SavedModel is a folder with the computation graph (`saved_model.pb`) and the
# weights (`variables/`): the server never runs the training code, only the graph. What a
# client may call is described by the model's **signatures**: named, typed entry points
# that map input names to tensor specs (dtype and shape, `-1` or `None` for the batch
# dimension) and output names to tensors. TensorFlow Serving calls the signature named
# `serving_default` unless a request names another one.
#
# TensorFlow Serving expects **one folder per version** under the model's base path
# (`.../pays_out/1`, `.../pays_out/2`, ...) and by default serves the highest version it
# finds. Versions are numbers, not names: `10` is newer than `9`, although `"10" < "9"` as
# text. And in this lab a version only counts once its `saved_model.pb` is there: a
# deployment that copies version 2 into place leaves a half-written folder for a moment,
# and a server that picks it up too early fails to load it.
#
# **Your task.** Write `latest_version(model_base)`: the highest version under `model_base`,
# as an `int`, counting only folders whose name is a positive whole number and that hold a
# `saved_model.pb`; raise `FileNotFoundError`, naming `model_base`, when there is none.

# %% solution="model-versions"
MODEL_BASE = model_dir()  # the course's shipped model: MODEL_BASE / "<version>" / saved_model.pb


def latest_version(model_base: Path) -> int:
    ### BEGIN SOLUTION
    versions = [int(folder.name) for folder in Path(model_base).iterdir()
                if folder.is_dir() and folder.name.isdigit() and int(folder.name) > 0
                and (folder / "saved_model.pb").is_file()]
    if not versions:
        raise FileNotFoundError(f"no servable version (a numbered folder with saved_model.pb) in {model_base}")
    return max(versions)
    ### END SOLUTION


print("versions found in", MODEL_BASE.name, "->", latest_version(MODEL_BASE))


# %% [markdown] given="model-load-text"
# The server loads that version exactly as TensorFlow Serving would, with
# `tf.saved_model.load`, and calls its `serving_default` signature: input `features`, a
# `float32` tensor of shape `[batch, 12]` in `FEATURES` order; output `output_0`, the
# probability of a payout, shape `[batch, 1]`. The names come from the signature, not
# from us: a TensorFlow Serving client sees the same ones. `predict_fn` is the function the
# batcher will call. We also read the signatures from `saved_model.pb` as protobuf
# messages (`SignatureDef`): `GetModelMetadata` returns them to clients, which is how a
# generic client discovers input names, dtypes and shapes. `metadata.json`, next to the
# versions, records the model's name, what it was trained on and its test metrics; the
# version the server reports is the folder's number, the name the metadata's.

# %% given="model-load"
def read_signature_defs(export_dir: Path) -> dict:
    # The SignatureDef protos stored in saved_model.pb, by signature name.
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(export_dir) / "saved_model.pb").read_bytes())
    defs = saved.meta_graphs[0].signature_def
    return {name: defs[name] for name in defs if not name.startswith("__")}


METADATA = json.loads((MODEL_BASE / "metadata.json").read_text())
MODEL_NAME, MODEL_VERSION = METADATA["name"], latest_version(MODEL_BASE)
MODEL_LABEL = f"{MODEL_NAME}/{MODEL_VERSION}"  # names the model in every quote, for audits
EXPORT_DIR = MODEL_BASE / str(MODEL_VERSION)
SIGNATURE_DEFS = read_signature_defs(EXPORT_DIR)
serving_signature = SIGNATURE_DEFS["serving_default"]
(SIGNATURE_INPUT,) = serving_signature.inputs  # "features"
(SIGNATURE_OUTPUT,) = serving_signature.outputs  # "output_0"
N_FEATURES = len(FEATURES)
assert list(METADATA["features"]) == list(FEATURES), (
    "The shipped model was trained on other features than dlcloud.features.FEATURES: run `make model` (section 1)")

loaded = tf.saved_model.load(str(EXPORT_DIR))
serving_fn = loaded.signatures["serving_default"]


def predict_fn(features: np.ndarray) -> np.ndarray:
    # The model's output for a [batch, N_FEATURES] float32 array: [batch, 1] probabilities.
    return serving_fn(**{SIGNATURE_INPUT: tf.constant(features, dtype=tf.float32)})[SIGNATURE_OUTPUT].numpy()


print(serving_signature)
test = METADATA["metrics"]["test"]
print(f"{MODEL_LABEL}: test months Brier {test['brier']:.4f}, AUC {test['auc']:.3f}, "
      f"payout rate {test['payout_rate']:.1%}")

# %% tests="test-model-versions" points=2
assert latest_version(MODEL_BASE) == 1, (
    f"The course ships version 1 of {MODEL_BASE.name}, latest_version found {latest_version(MODEL_BASE)} (section 1)")
assert isinstance(latest_version(MODEL_BASE), int), "latest_version must return the version as an int (section 1)"
### BEGIN HIDDEN TESTS
with tempfile.TemporaryDirectory() as base:
    base = Path(base)
    for name in ("1", "9", "10", "0", "tmp"):
        shutil.copytree(EXPORT_DIR, base / name)
    (base / "11").mkdir()  # a version still being copied: no saved_model.pb yet
    (base / "12").write_text("a file, not a folder")
    found = latest_version(base)
    assert found == 10, (
        f"With versions 1, 9, 10, a half-written 11, a file 12, 0 and tmp, the latest servable version is 10, "
        f"got {found!r}: compare numbers, not names, and skip folders without saved_model.pb (section 1)")
    for name in ("1", "9", "10"):
        shutil.rmtree(base / name)
    try:
        latest_version(base)
    except FileNotFoundError as error:
        assert str(base) in str(error), f"The FileNotFoundError must name the folder searched, got {error} (section 1)"
    else:
        raise AssertionError("A folder with no servable version must raise FileNotFoundError (section 1)")
### END HIDDEN TESTS
print("latest servable version:", latest_version(MODEL_BASE))


# %% [markdown] given="features-text"
# ## 2. What the model sees: the features as of quote time
#
# The model's twelve inputs are what the insurer knows at the purchase deadline, two hours
# before departure: the origin, calendar and schedule, the distance, the weather observed at
# the origin at that moment, and the payout rates of the origin and of the carrier over the
# previous week (`dlcloud.features` defines them once, for every lab). That decides what
# each API takes:
#
# * `Predict` takes the **feature vector**, as TensorFlow Serving does: its clients are
#   analysts who already hold feature tables (lab 5 builds them at scale), and the server
#   stays a generic model server that knows nothing about flights.
# * `GetQuote` takes **a flight** (carrier, flight number, date, origin), as lab 1's service
#   names it, and the server builds its features. The checkout has neither the weather nor
#   the recent payout rates, and should not: features computed by each client drift from
#   the ones the model was trained on (*training/serving skew*), and a client that sends
#   its own features can pick the ones that give it the lowest premium.
#
# The course replays 2013, so the server computes every flight's quote-time features once,
# at start-up, with `dlcloud.features.quote_features` (the same function the model was
# trained with) and indexes them by flight. A production system would read them from a
# *feature store* that computes them as time passes; the lookup would be the same.

# %% given="features"
class FlightFeatures:
    """The quote-time features of every flight, looked up by (carrier, flight, date, origin)."""

    def __init__(self, table: pd.DataFrame):
        self.matrix = table[list(FEATURES)].to_numpy(np.float32)
        dates = table["sched_dep"].dt.strftime("%Y-%m-%d")
        keys = zip(table["carrier"], table["flight"].astype(int), dates, table["origin"])
        self.row_of = {key: row for row, key in enumerate(keys)}

    def lookup(self, carrier: str, flight: int, date: str, origin: str) -> np.ndarray | None:
        # The flight's [1, N_FEATURES] feature row, or None if there is no such flight.
        row = self.row_of.get((carrier, flight, date, origin))
        return None if row is None else self.matrix[row:row + 1]


started = time.perf_counter()
QUOTE_FEATURES = quote_features()
FLIGHT_FEATURES = FlightFeatures(QUOTE_FEATURES)
print(f"{len(FLIGHT_FEATURES.row_of):,} flights indexed in {time.perf_counter() - started:.1f} s")

# Rows the checks below reuse: 64 flights of the test months, and what the model says of them.
rng = np.random.default_rng(7)
test_rows = np.flatnonzero(QUOTE_FEATURES["sched_dep"].dt.month.isin(TEST_MONTHS).to_numpy())
X_probe = FLIGHT_FEATURES.matrix[rng.choice(test_rows, size=64, replace=False)]
expected_probe = predict_fn(X_probe)[:, 0]
print(pd.DataFrame(X_probe[:3], columns=FEATURES).assign(probability=expected_probe[:3]).round(3).T.to_string())

# %% [markdown] given="protobuf-text"
# ## 3. The course's own API, in Protocol Buffers
#
# `quote_service.proto` (next to this notebook) is the contract between the checkout team
# and us. Read it: every field has a **number**, and on the wire a message is a sequence
# of *(field number, wire type, value)* records; names never travel. That is why the
# rules for evolving a schema are about numbers: never change or reuse a field's number
# or type, add fields with new numbers (old readers skip unknown fields, old writers
# leave new fields at their defaults), and `reserve` the numbers and names of removed
# fields. The file shows two such changes: the retired `carrier` field of version 0, and
# version 1's `month`, `hour` and `distance_miles`, the model's inputs computed by the
# client, which gave way to the flight's identity when the model started to use what only
# the server knows (section 2). The carrier came back as `carrier_code`: a new number and a
# new name, because the old ones stay reserved.
#
# `dlcloud.protos.compile_protos` runs `grpc_tools.protoc` (the protobuf compiler shipped
# as a Python wheel) with the right include paths, writes `quote_service_pb2.py`
# (messages), `quote_service_pb2_grpc.py` (client stub, servicer base class,
# `add_QuoteServiceServicer_to_server`) and a `.pyi` for your editor, and imports them.

# %% given="protobuf-compile"
print((LAB_DIR / "quote_service.proto").read_text())
quotes = compile_protos(LAB_DIR / "quote_service.proto", out_dir=WORK / "generated")
pb = quotes.pb2
print("generated:", [p.name for p in quotes.files], "services:", quotes.service_names())

request = pb.QuoteRequest(flight=pb.Flight(origin="EWR", carrier_code="UA", flight_number=1545, date="2013-01-01"),
                          payout_cents=PAYOUT_CENTS)
wire = request.SerializeToString()
print(f"{len(wire)} bytes on the wire:", wire.hex(" "))
# The first byte 0x0a = (field 1 << 3) | wire type 2 (length-delimited): the nested Flight.
assert pb.QuoteRequest.FromString(wire) == request, "A QuoteRequest must survive its own wire format (section 3)"

# %% [markdown] given="pricing-text"
# The premium is the expected payout plus a 25 % loading for costs and profit:
# `dlcloud.product.premium_cents(payout_cents, probability)`, the one definition lab 1's
# service uses too. Money travels and is stored as **integer cents** (`int64 payout_cents`):
# a `double` cannot hold most cent amounts exactly (0.1 + 0.2 != 0.3), and it can be `inf`
# or `nan`, which no ledger accepts. Version 0 of the schema sent `double payout_usd`; the
# file shows how it moved to cents without breaking anyone: the old fields' numbers and
# names are `reserved`, and the new fields take new numbers (reusing number 2 for an
# `int64` would make an old client's 8-byte double be read as garbage cents). The pricing
# function rounds to the nearest cent once, at the end.

# %% given="pricing"
print(f"payout {PAYOUT_CENTS} cents, loading {LOADING:.0%}: a 10 % payout probability costs "
      f"{premium_cents(PAYOUT_CENTS, 0.10)} cents")


# %% [markdown] given="batcher-text"
# ## 4. Dynamic batching
#
# One model call on 32 rows costs barely more than one call on one row: the fixed cost
# (Python, dispatch, kernel launches on a GPU) dominates small batches. A **dynamic
# batcher** exploits that under load: requests wait in a queue; a single worker takes
# the first one, adds whatever else is already waiting, runs the model once on the
# concatenated rows, and hands each caller its own slice. While the model runs, new
# requests queue up, so the busier the server, the fuller the next batch.
#
# When should the worker *wait* for company? A classic batcher always waits up to
# `batch_timeout_s` for the batch to fill, and so charges a lone caller the whole timeout
# for company that never comes (here a round trip takes about a millisecond, so a 2 ms
# timeout would cut a single caller's throughput to about a third). Ours waits only when there is load:
# if nothing else was waiting when it took the first request, it runs that request at
# once; if others were waiting (they arrived while the model was busy), more are likely
# on their way, and it keeps collecting until the batch holds `max_batch_size` rows or
# `batch_timeout_s` has passed. With `max_batch_size=1` batching is off. (TensorFlow
# Serving's `--enable_batching` has the same two knobs, `max_batch_size` and
# `batch_timeout_micros`.)
#
# Two rules keep the server alive whatever a batch does. The model runs **off the event
# loop** (`asyncio.to_thread` runs a function in a worker thread): a model call that takes
# a second in the loop would freeze every other call, health checks included, for that
# second. And the worker **survives every exception**: anything that goes wrong with a
# batch (the model raising, `np.concatenate` running out of memory) fails exactly the
# callers of that batch, and the worker moves on. Should the worker end anyway, `predict`
# refuses new work at once with `BatcherNotRunning` instead of leaving callers waiting for
# a worker that is gone.
#
# **Your task.** Complete `DynamicBatcher`:
#
# * `start()` starts `_run()` as a task and returns it; `stop()` cancels it (calling it
#   twice is fine); `running` says whether the task is alive;
# * `predict(rows)` raises `BatcherNotRunning` if the worker is not running, else puts
#   `(rows, future)` on the queue and returns the awaited result, the model's outputs for
#   exactly those rows, in order;
# * `_run()` loops forever: take one item (`self._carry`, an item left over from the
#   previous batch, first if there is one), then, as described above, take what is
#   waiting and wait (`asyncio.wait_for(self._queue.get(), remaining)`) only if there was
#   company; never exceed `max_batch_size` rows unless a single request is larger (run
#   that one alone), skip callers that have gone away (`future.cancelled()`), call
#   `predict_fn` once in a worker thread, update the counters, then set each future's
#   result (or exception, if anything failed). The counters make the batcher observable:
#   `batches_run`, `rows_run`, `largest_batch` (in rows) and `mean_batch_size`.

# %% solution="dynamic-batcher"
class BatcherNotRunning(RuntimeError):
    """The batcher's worker is not running: nothing would ever answer this request."""


class DynamicBatcher:
    def __init__(self, predict_fn, max_batch_size: int = 32, batch_timeout_s: float = 0.002):
        self.predict_fn = predict_fn
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_s
        self._queue: asyncio.Queue = asyncio.Queue()
        self._carry = None
        self._task = None
        self.reset_counters()

    def reset_counters(self) -> None:
        self.batches_run = 0
        self.rows_run = 0
        self.largest_batch = 0

    @property
    def mean_batch_size(self) -> float:
        return self.rows_run / self.batches_run if self.batches_run else 0.0

    @property
    def running(self) -> bool:
        ### BEGIN SOLUTION
        return self._task is not None and not self._task.done()
        ### END SOLUTION

    async def start(self) -> asyncio.Task:
        ### BEGIN SOLUTION
        if not self.running:
            self._task = asyncio.create_task(self._run())
        return self._task
        ### END SOLUTION

    async def stop(self) -> None:
        ### BEGIN SOLUTION
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        ### END SOLUTION

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        ### BEGIN SOLUTION
        if not self.running:
            raise BatcherNotRunning("the batcher's worker is not running")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((np.asarray(rows, dtype=np.float32), future))
        return await future
        ### END SOLUTION

    async def _run(self) -> None:
        ### BEGIN SOLUTION
        while True:
            batch = await self._collect()
            live = [(rows, future) for rows, future in batch if not future.cancelled()]
            if live:
                await self._run_batch(live)

    async def _collect(self) -> list:
        # One batch: the first request, what is waiting, and what arrives in time if there was load.
        loop = asyncio.get_running_loop()
        if self._carry is not None:
            first, self._carry, company = self._carry, None, True
        else:
            first = await self._queue.get()
            await asyncio.sleep(0)  # let handlers that are already runnable queue their rows
            company = not self._queue.empty()  # others queued while the model was busy
        batch, n_rows = [first], len(first[0])
        deadline = loop.time() + self.batch_timeout_s
        while n_rows < self.max_batch_size:
            if not self._queue.empty():
                item = self._queue.get_nowait()
            else:
                remaining = deadline - loop.time()
                if not company or remaining <= 0:
                    break  # alone: waiting would only add latency
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if n_rows + len(item[0]) > self.max_batch_size:
                self._carry = item  # would overflow: it opens the next batch
                break
            batch.append(item)
            n_rows += len(item[0])
        return batch

    async def _run_batch(self, live: list) -> None:
        # Any failure (the model, or concatenating the rows) fails this batch's callers only.
        try:
            features = np.concatenate([rows for rows, _ in live])
            outputs = np.asarray(await asyncio.to_thread(self.predict_fn, features))
        except Exception as error:
            for _, future in live:
                if not future.done():
                    future.set_exception(error)
            return
        self.batches_run += 1
        self.rows_run += len(features)
        self.largest_batch = max(self.largest_batch, len(features))
        start = 0
        for rows, future in live:
            if not future.done():
                future.set_result(outputs[start:start + len(rows)])
            start += len(rows)
        ### END SOLUTION


# %% tests="test-batcher-groups-requests" points=3
async def _batcher_check(max_batch_size, callers=32, timeout_s=0.02):
    calls = []

    def counting_predict(x):
        calls.append(len(x))
        return predict_fn(x)

    batcher = DynamicBatcher(counting_predict, max_batch_size=max_batch_size, batch_timeout_s=timeout_s)
    await batcher.start()
    try:
        rows = [X_probe[i:i + 1] for i in range(callers)]
        results = await asyncio.wait_for(asyncio.gather(*(batcher.predict(r) for r in rows)), 10)
    finally:
        await batcher.stop()
    return batcher, calls, results

batcher, calls, results = await _batcher_check(max_batch_size=16)
got = np.concatenate([np.asarray(r).reshape(-1) for r in results])
np.testing.assert_allclose(got, expected_probe[:32], atol=1e-5,
                           err_msg="Each caller must get the model's output for its own row, in order (section 4, _run)")
assert batcher.rows_run == 32, f"rows_run should count the 32 rows served, got {batcher.rows_run} (section 4, DynamicBatcher)"
assert batcher.batches_run == len(calls), f"batches_run={batcher.batches_run} but the model was called {len(calls)} times (section 4, DynamicBatcher)"
assert batcher.mean_batch_size > 1, (
    f"32 concurrent callers were served in {batcher.batches_run} batches (mean size "
    f"{batcher.mean_batch_size}): the batcher must group requests that arrive within batch_timeout_s (section 4, DynamicBatcher)")

off, off_calls, _ = await _batcher_check(max_batch_size=1, callers=8)
assert off_calls == [1] * 8 and off.mean_batch_size == 1, (
    f"With max_batch_size=1 every batch must hold one row; the model saw batches {off_calls} (section 4, DynamicBatcher)")
### BEGIN HIDDEN TESTS
assert max(calls) <= 16 and batcher.largest_batch == max(calls), (
    f"Batches must not exceed max_batch_size=16: saw {calls}, largest_batch={batcher.largest_batch} (section 4, DynamicBatcher)")

b = DynamicBatcher(predict_fn, max_batch_size=8, batch_timeout_s=0.02)
await b.start()
try:
    mixed = await asyncio.wait_for(asyncio.gather(
        b.predict(X_probe[0:3]), b.predict(X_probe[3:10]), b.predict(X_probe[10:11]), b.predict(X_probe[11:23])), 10)
finally:
    await b.stop()
got = np.concatenate([np.asarray(m).reshape(-1) for m in mixed])
np.testing.assert_allclose(got, expected_probe[:23], atol=1e-5, err_msg="Multi-row requests must come back whole and in order (section 4, DynamicBatcher)")
assert [len(m) for m in mixed] == [3, 7, 1, 12], (
    f"Each caller must get exactly its own rows back, got sizes {[len(m) for m in mixed]}: see DynamicBatcher (section 4)")
b = DynamicBatcher(predict_fn, max_batch_size=32, batch_timeout_s=0.02)
await b.start()
try:
    small_first = await asyncio.wait_for(asyncio.gather(
        b.predict(X_probe[0:1]), b.predict(X_probe[1:6]), b.predict(X_probe[6:8])), 10)
except TimeoutError:
    raise AssertionError("3 requests (8 rows) with max_batch_size=32 were not answered within 10 s: a batch "
                         "that cannot fill must run once batch_timeout_s has passed (section 4, _run)") from None
finally:
    await b.stop()
np.testing.assert_allclose(np.concatenate([np.asarray(m).reshape(-1) for m in small_first]), expected_probe[:8],
                           atol=1e-5, err_msg="Requests of 1, 5 and 2 rows in one batch must each get their own "
                           "rows back, in order: slice the outputs in the order the rows were concatenated (section 4)")

state = {"fail": True}
def flaky_predict(x):
    if state["fail"]:
        state["fail"] = False
        raise RuntimeError("model exploded")
    return predict_fn(x)
b = DynamicBatcher(flaky_predict, max_batch_size=4, batch_timeout_s=0.001)
await b.start()
try:
    model_error = None
    try:
        await asyncio.wait_for(b.predict(X_probe[:1]), 5)
    except RuntimeError as error:
        model_error = error
    assert model_error is not None, "A model error must reach the caller as an exception (section 4, DynamicBatcher)"
    after = await asyncio.wait_for(b.predict(X_probe[:2]), 5)
    np.testing.assert_allclose(np.asarray(after).reshape(-1), expected_probe[:2], atol=1e-5,
                               err_msg="The batcher must keep working after a model error (section 4, DynamicBatcher)")
finally:
    await b.stop()
await b.stop()  # stopping twice is harmless
assert not b.running, "After stop(), running must be False (section 4, DynamicBatcher)"
try:
    await asyncio.wait_for(b.predict(X_probe[:1]), 2)
except BatcherNotRunning:
    pass
else:
    raise AssertionError("predict() on a stopped batcher must raise BatcherNotRunning, not wait or compute (section 4, DynamicBatcher)")

b = DynamicBatcher(predict_fn, max_batch_size=8, batch_timeout_s=0.05)
await b.start()
try:
    few = await asyncio.wait_for(asyncio.gather(*(b.predict(X_probe[i:i + 1]) for i in range(3))), 2)
except TimeoutError:
    raise AssertionError(
        "3 callers with max_batch_size=8 and a 50 ms batch_timeout_s were not answered within 2 s: a batch "
        "that cannot fill must run when batch_timeout_s has passed (section 4, _run)") from None
finally:
    await b.stop()
assert [len(f) for f in few] == [1, 1, 1], f"Each of 3 callers must get its own row back, got {few} (section 4, DynamicBatcher)"

def slow_predict(x):
    time.sleep(0.5)  # a model that takes half a second
    return predict_fn(x)
b = DynamicBatcher(slow_predict, max_batch_size=8, batch_timeout_s=2.0)
await b.start()
try:
    started = time.perf_counter()
    pending = asyncio.ensure_future(b.predict(X_probe[:1]))
    tick_started = time.perf_counter()
    for _ in range(10):
        await asyncio.sleep(0.01)
    loop_waited = time.perf_counter() - tick_started
    assert loop_waited < 0.35, (
        f"While the model computed, ten 10 ms sleeps on the event loop took {loop_waited:.2f} s: predict_fn "
        "must run off the event loop (asyncio.to_thread) so the server keeps answering (section 4, _run)")
    await asyncio.wait_for(pending, 5)
    alone = time.perf_counter() - started
    assert alone < 1.5, (
        f"A lone request took {alone:.2f} s with a 0.5 s model and a 2 s batch timeout: with nothing else "
        "waiting, the batcher must run it at once instead of waiting for company (section 4, _run)")
finally:
    await b.stop()
### END HIDDEN TESTS
print(f"batching OK: 32 callers -> {batcher.batches_run} batches, mean {batcher.mean_batch_size:.1f} rows")

# %% [markdown] given="prediction-service-text"
# ## 5. Speaking TensorFlow Serving's API
#
# The `tensorflow-serving-api` package ships the compiled protos of TensorFlow Serving:
# `PredictRequest` holds a `model_spec` (model name, optional version, signature name)
# and a map from input name to `TensorProto`; `PredictResponse` holds a map of output
# `TensorProto`s. `prediction_service_pb2_grpc.PredictionServiceServicer` is the base
# class generated from `prediction_service.proto`; subclass it, implement `Predict` and
# `GetModelMetadata`, and any TensorFlow Serving client works against your server.
# `tf.make_ndarray` and `tf.make_tensor_proto` convert between `TensorProto` and NumPy.
#
# A server is judged by its errors as much as by its answers. In `grpc.aio` a handler
# ends a call with a status by `await context.abort(code, details)`. Mirror TensorFlow
# Serving, so that clients' error handling keeps working:
#
# | problem | status | details |
# | --- | --- | --- |
# | unknown model name, or a version that is not loaded | `NOT_FOUND` | `Servable not found for request: Latest(<name>)`, or `Specific(<name>, <version>)` when a version was given |
# | unknown signature name (`""` means `serving_default`) | `FAILED_PRECONDITION` | `Serving signature key "<name>" not found.` |
# | missing input, unknown input name, wrong dtype, wrong shape, content that does not fill the shape, values that are not finite | `INVALID_ARGUMENT` | a message that names the input and says what was expected and what was sent |
# | `GetModelMetadata` without `metadata_field`, or a field other than `signature_def` | `INVALID_ARGUMENT` | `GetModelMetadataRequest must specify at least one metadata_field` / `Metadata field <f> is not supported` |
# | the batcher is not running (`BatcherNotRunning`) | `UNAVAILABLE` | try another replica: this one cannot compute |
# | the model failed on a batch | `INTERNAL` | the kind of error, never a traceback |
#
# **Bounded work per request.** A `TensorProto` *declares* its shape and *carries* its
# values separately (`tensor_content` as raw little-endian bytes, or the repeated
# `float_val`). A 45-byte request can declare a shape of `[5000000, 12]` and carry no
# values at all; `tf.make_ndarray` would then allocate and zero-fill 240 MB, and the
# model would compute 5 million rows while every other caller waits. TensorFlow's own
# converter even pads short content with its last value. So a server that faces the
# network checks *before allocating anything*: the dtype, then the declared shape against
# a limit (`MAX_ROWS_PER_REQUEST`), then that the content holds exactly
# `rows x N_FEATURES` values (never padded: a short tensor is a client bug to report, not
# to guess around), and only then decodes the values (`np.frombuffer` reads the bytes
# without a copy). The order matters: every check is cheap and runs before the expensive
# step it protects. The server also caps the size of any incoming message
# (`MAX_MESSAGE_BYTES`), so the decoder never reads more than that.
#
# **Only finite numbers.** A float32 can be `nan` or `inf`, and a network answers for any
# input: `nan` goes through the model and comes out as a `nan` probability, which no premium
# can be computed from, and `inf` saturates the network into a confident 0 or 1. Every
# feature is a finite measurement, so the server refuses rows with a value that is not
# finite (`np.isfinite`), naming the input, before they reach the batcher.
#
# Error details are read by people and stored in logs: when they quote what the client
# sent (a model name, an input alias) they quote at most a few dozen characters of it
# (`clip`), so that a 100 kB model name does not come back as a 100 kB error, and an
# unknown dtype number gets a name (`dtype_name`), not an exception, which gRPC would
# turn into the meaningless `UNKNOWN`.
#
# **Your task.** Implement `_check_model_spec`, `_features_from`, `Predict` and
# `GetModelMetadata`. `Predict` runs the rows through the batcher (`predict_or_abort`
# below maps its failures to the statuses of the table) and answers with the signature's
# output, `SIGNATURE_OUTPUT` (`output_0`: a float32 `TensorProto` of shape `[batch, 1]`, as
# the model returns it) and a `model_spec` that names the model, its version and the
# signature used. `GetModelMetadata` packs a `SignatureDefMap`
# holding `self.signature_defs` into `response.metadata["signature_def"]` (`Any.Pack`).

# %% given="request-limits"
MAX_ROWS_PER_REQUEST = 4096  # a request is one checkout's worth of flights, not a data set
MAX_MESSAGE_BYTES = 1 << 20  # 4096 rows of 12 float32 take 192 KiB; 1 MiB leaves room, no more
MAX_QUOTED_CHARS = 64        # how much of a client's string an error message may quote


def clip(text, limit: int = MAX_QUOTED_CHARS) -> str:
    # A client-supplied string, short enough to quote in an error message.
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def dtype_name(dtype: int) -> str:
    # DT_FLOAT for 1; a readable name, not a ValueError, for numbers TensorFlow does not define.
    return types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else f"unknown dtype {dtype}"


class Unparseable:
    """Stands in for a request whose bytes are not a valid message of the method's type."""

    def __init__(self, message_type: str, problem: str):
        self.message_type, self.problem = message_type, problem


class RefuseUnparseableRequests(grpc.aio.ServerInterceptor):
    # grpc.aio answers bytes that fail to parse with UNKNOWN and logs a traceback on stderr;
    # this turns them into INVALID_ARGUMENT, which tells the client what is wrong.
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse, method = handler.request_deserializer, handler_call_details.method

        def tolerant_parse(data: bytes):
            try:
                return parse(data)
            except Exception as error:  # DecodeError, or bad UTF-8 in a string field
                return Unparseable(clip(method), clip(error))

        async def refuse(request, context):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"The request to {request.message_type} is not a valid message: {request.problem}")

        if handler.response_streaming:
            behaviour = handler.unary_stream

            async def stream(request, context):
                if isinstance(request, Unparseable):
                    await refuse(request, context)
                result = behaviour(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:  # a handler that writes with context.write()
                    await result

            return handler._replace(request_deserializer=tolerant_parse, unary_stream=stream)
        behaviour = handler.unary_unary

        async def unary(request, context):
            if isinstance(request, Unparseable):
                await refuse(request, context)
            return await behaviour(request, context)

        return handler._replace(request_deserializer=tolerant_parse, unary_unary=unary)


async def predict_or_abort(batcher, rows: np.ndarray, context) -> np.ndarray:
    # The batcher's answer for `rows`, or the call ends with a status that says what happened.
    try:
        return await batcher.predict(rows)
    except BatcherNotRunning:
        code, details = grpc.StatusCode.UNAVAILABLE, "The model is not being served here: try another replica"
    except Exception as error:  # the model failed: say what kind of failure, not how
        code, details = grpc.StatusCode.INTERNAL, f"Prediction failed: {type(error).__name__}"
    await context.abort(code, details)


# %% solution="prediction-service"
class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, batcher, model_name=MODEL_NAME, version=MODEL_VERSION, signature_defs=None):
        self.batcher = batcher
        self.model_name = model_name
        self.version = version
        self.signature_defs = signature_defs if signature_defs is not None else SIGNATURE_DEFS

    async def _check_model_spec(self, spec, context) -> str:
        # Abort with NOT_FOUND / FAILED_PRECONDITION, else return the signature name used.
        ### BEGIN SOLUTION
        wants_version = spec.HasField("version")
        if spec.name != self.model_name or (wants_version and spec.version.value != self.version):
            wanted = (f"Specific({clip(spec.name)}, {spec.version.value})" if wants_version
                      else f"Latest({clip(spec.name)})")
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {wanted}")
        signature = spec.signature_name or "serving_default"
        if signature not in self.signature_defs:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f'Serving signature key "{clip(signature)}" not found.')
        return signature
        ### END SOLUTION

    async def _features_from(self, request, context) -> np.ndarray:
        # Validate request.inputs and return the [batch, N_FEATURES] float32 array.
        ### BEGIN SOLUTION
        unknown = sorted(set(request.inputs) - {SIGNATURE_INPUT})
        if unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"input tensor alias not found in signature: {clip(', '.join(unknown))}. "
                                f"Inputs expected to be in the set {{{SIGNATURE_INPUT}}}.")
        if SIGNATURE_INPUT not in request.inputs:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Missing input '{SIGNATURE_INPUT}': send a DT_FLOAT tensor of shape "
                                f"[batch, {N_FEATURES}] ({', '.join(FEATURES)}).")
        tensor = request.inputs[SIGNATURE_INPUT]
        if tensor.dtype != types_pb2.DT_FLOAT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Input '{SIGNATURE_INPUT}' must be DT_FLOAT, got {dtype_name(tensor.dtype)}.")
        shape = [dim.size for dim in tensor.tensor_shape.dim]
        if (tensor.tensor_shape.unknown_rank or len(shape) != 2 or shape[1] != N_FEATURES
                or not 1 <= shape[0] <= MAX_ROWS_PER_REQUEST):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Input '{SIGNATURE_INPUT}' must have shape [batch, {N_FEATURES}] with "
                                f"1 <= batch <= {MAX_ROWS_PER_REQUEST}, got {clip(shape)}.")
        # Only now is the declared size known to be small: check the content fills it exactly.
        n_values = shape[0] * N_FEATURES
        sent = len(tensor.tensor_content) // 4 if tensor.tensor_content else len(tensor.float_val)
        if sent != n_values or len(tensor.tensor_content) % 4:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Input '{SIGNATURE_INPUT}' content does not fill its shape {shape}: "
                                f"{n_values} float values declared, {len(tensor.tensor_content)} bytes "
                                f"and {len(tensor.float_val)} float_val sent.")
        if tensor.tensor_content:
            features = np.frombuffer(tensor.tensor_content, dtype="<f4").reshape(shape)
        else:
            features = np.asarray(tensor.float_val, dtype=np.float32).reshape(shape)
        if not np.isfinite(features).all():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Input '{SIGNATURE_INPUT}' holds values that are not finite (nan or inf): "
                                "every feature must be a finite number.")
        return features
        ### END SOLUTION

    async def Predict(self, request, context):
        ### BEGIN SOLUTION
        signature = await self._check_model_spec(request.model_spec, context)
        features = await self._features_from(request, context)
        probabilities = await predict_or_abort(self.batcher, features, context)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = signature
        response.outputs[SIGNATURE_OUTPUT].CopyFrom(
            tf.make_tensor_proto(np.asarray(probabilities, dtype=np.float32)))
        return response
        ### END SOLUTION

    async def GetModelMetadata(self, request, context):
        ### BEGIN SOLUTION
        await self._check_model_spec(request.model_spec, context)
        if not request.metadata_field:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"Metadata field {clip(field)} is not supported")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in self.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = self.version
        response.metadata["signature_def"].Pack(signature_map)
        return response
        ### END SOLUTION


# %% [markdown] given="quote-service-text"
# ## 6. The quote service: unary and server streaming
#
# `QuoteService` has two methods. `GetQuote` is **unary** (one request, one response).
# `StreamQuotes` is **server streaming**: the client sends a batch of flights and the server
# yields quotes one by one, in request order, as an async generator (`yield` in an
# `async def` handler). A client can start rendering the first quotes before the last is
# priced, and a very long answer never has to sit in memory as one message.
#
# A quote names a flight; the server looks up its features (`FlightFeatures.lookup`,
# section 2), runs them through the batcher and prices the probability. Validation is
# where a service decides what it will not price, and it comes before the lookup: every
# field is checked against what the business knows (a New York origin, a two-letter
# airline code, a flight number of at most four digits, a real calendar date) and the
# payout is capped (`MAX_PAYOUT_CENTS`), so that no premium can overflow or become
# meaningless. A well-formed request for a flight that does not exist is a different
# answer: `NOT_FOUND`, as for an unknown model.
#
# **Your task.** Implement `QuoteService`:
#
# * `_problem(request)` returns `None` for a valid request, else a message that names the
#   field and says what is wrong: `flight.origin` not one of `ORIGINS`,
#   `flight.carrier_code` not two upper-case letters or digits, `flight.flight_number`
#   outside 1..9999, `flight.date` not a `YYYY-MM-DD` date (`datetime.date.fromisoformat`
#   on exactly 10 characters), `payout_cents` outside `1..MAX_PAYOUT_CENTS`;
# * `_features_of(flight, context)` returns the flight's feature row, or aborts with
#   `NOT_FOUND` and a message that names the flight (clipped);
# * `GetQuote` aborts with `INVALID_ARGUMENT` and `_problem`'s message, else prices the
#   flight through the batcher (`await predict_or_abort(self.batcher, rows, context)`) and
#   returns a `Quote` with `delay_probability` (the payout probability),
#   `premium_cents` (`premium_cents(payout_cents, probability)`), `payout_cents` and
#   `model_version=MODEL_LABEL`;
# * `StreamQuotes` refuses more than `MAX_ROWS_PER_REQUEST` requests, validates every
#   request first (the message names the index of the bad one, `requests[3]: ...`), looks
#   up every flight, then prices them all with **one** batcher call and yields one `Quote`
#   per request.

# %% solution="quote-service"
MAX_PAYOUT_CENTS = 1_000_000     # $10,000: the most the product pays for one flight


def flight_label(flight) -> str:
    # How a message names a flight: "UA 1545 on 2013-01-01 from EWR" (client strings clipped).
    return f"{clip(flight.carrier_code)} {flight.flight_number} on {clip(flight.date)} from {clip(flight.origin)}"


class QuoteService(quotes.pb2_grpc.QuoteServiceServicer):
    def __init__(self, batcher, flight_features=None):
        self.batcher = batcher
        self.flight_features = flight_features if flight_features is not None else FLIGHT_FEATURES

    @staticmethod
    def _problem(request) -> str | None:
        ### BEGIN SOLUTION
        flight = request.flight
        if flight.origin not in ORIGINS:
            return f"flight.origin must be one of {', '.join(ORIGINS)}, got {clip(repr(flight.origin))}"
        code = flight.carrier_code
        if not (len(code) == 2 and code.isascii() and code.isalnum() and code == code.upper()):
            return f"flight.carrier_code must be two upper-case letters or digits, got {clip(repr(code))}"
        if not 1 <= flight.flight_number <= 9999:
            return f"flight.flight_number must be 1..9999, got {flight.flight_number}"
        try:
            if len(flight.date) != 10:
                raise ValueError
            datetime.date.fromisoformat(flight.date)
        except ValueError:
            return f"flight.date must be a date YYYY-MM-DD, got {clip(repr(flight.date))}"
        if not 1 <= request.payout_cents <= MAX_PAYOUT_CENTS:
            return f"payout_cents must be 1..{MAX_PAYOUT_CENTS}, got {request.payout_cents}"
        return None
        ### END SOLUTION

    async def _features_of(self, flight, context) -> np.ndarray:
        ### BEGIN SOLUTION
        rows = self.flight_features.lookup(flight.carrier_code, flight.flight_number, flight.date, flight.origin)
        if rows is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"No flight {flight_label(flight)} to quote")
        return rows
        ### END SOLUTION

    async def GetQuote(self, request, context):
        ### BEGIN SOLUTION
        problem = self._problem(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        rows = await self._features_of(request.flight, context)
        probability = float(np.asarray(await predict_or_abort(self.batcher, rows, context)).reshape(-1)[0])
        return quotes.pb2.Quote(delay_probability=probability,
                                premium_cents=premium_cents(request.payout_cents, probability),
                                payout_cents=request.payout_cents, model_version=MODEL_LABEL)
        ### END SOLUTION

    async def StreamQuotes(self, request, context):
        ### BEGIN SOLUTION
        if len(request.requests) > MAX_ROWS_PER_REQUEST:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"At most {MAX_ROWS_PER_REQUEST} requests per call, got {len(request.requests)}")
        for index, item in enumerate(request.requests):
            problem = self._problem(item)
            if problem:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"requests[{index}]: {problem}")
        if not request.requests:
            return
        rows = [await self._features_of(item.flight, context) for item in request.requests]
        probabilities = np.asarray(await predict_or_abort(self.batcher, np.concatenate(rows), context)).reshape(-1)
        for item, probability in zip(request.requests, probabilities):
            yield quotes.pb2.Quote(delay_probability=float(probability),
                                   premium_cents=premium_cents(item.payout_cents, float(probability)),
                                   payout_cents=item.payout_cents, model_version=MODEL_LABEL)
        ### END SOLUTION


# %% [markdown] given="server-text"
# ## 7. One server, two APIs, health, reflection, graceful shutdown
#
# A `grpc.aio.server()` can host any number of services: each `add_..._to_server` call
# registers the methods of one servicer under its fully qualified service name
# (`tensorflow.serving.PredictionService`, `dlcloud.quotes.v1.QuoteService`). Two more
# standard services make it a good citizen in a cluster:
#
# * **Health checking** (`grpc.health.v1.Health`, package `grpcio-health-checking`):
#   load balancers and Kubernetes probes call `Check(service)` and get `SERVING` or
#   `NOT_SERVING`; `""` stands for the whole server. Use the asyncio servicer,
#   `health.aio.HealthServicer()`, and `await health_servicer.set(name, status)`.
# * **Server reflection** (`grpcio-reflection`): clients such as `grpcurl` ask the server
#   which services it offers and fetch their schemas, with no `.proto` at hand.
#   `reflection.enable_server_reflection(names, server)` takes the service names to
#   advertise (include `reflection.SERVICE_NAME` and `health.SERVICE_NAME`).
#
# A **graceful shutdown** first tells the load balancer to stop sending traffic (health
# goes `NOT_SERVING`: `await health_servicer.enter_graceful_shutdown()`), then stops
# accepting new calls while in-flight calls get `grace_s` seconds to finish
# (`await server.stop(grace_s)`), and only then stops the batcher.
#
# **Health that tells the truth.** A health check is only useful if it fails when the
# server cannot serve. Here the server can serve exactly as long as the batcher's worker
# runs: if that task ever ends (a bug, someone stopping it), every `Predict` would fail,
# so health must say `NOT_SERVING` and the load balancer must send traffic elsewhere.
# `start_server` therefore watches the worker's task (`watch_batcher`, given below) and
# sets every service `NOT_SERVING` the moment it ends. Health checks keep answering while
# a big batch computes, because the model runs in a worker thread, off the event loop.
#
# The server also refuses any message larger than `MAX_MESSAGE_BYTES`
# (`grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])`):
# gRPC then answers `RESOURCE_EXHAUSTED` before your code sees a byte. And bytes that are
# not a valid message at all (a client with the wrong `.proto`, a corrupted frame) would
# get `UNKNOWN` and a traceback in the server's log; the interceptor given in section 5,
# `RefuseUnparseableRequests()`, passed as `grpc.aio.server(interceptors=[...])`, answers
# them with `INVALID_ARGUMENT` instead.
#
# **Your task.** Write `start_server(batcher, port)` and `stop_server(handle, grace_s)`.
# `start_server` creates the server with that message limit and interceptor, registers
# `PredictionService(batcher)` and `QuoteService(batcher)` (which looks flights up in
# `FLIGHT_FEATURES`), the health servicer (overall
# health and each of the two services `SERVING`) and reflection, binds
# `127.0.0.1:<port>` with `server.add_insecure_port` (a free port when `port` is `None`),
# starts the batcher (keep the task `start()` returns) and the server, starts
# `watch_batcher` as a task, and returns a `ServingHandle`.
# `start_server` also takes `tls`: `None` (plaintext, as above) or a pair
# `(private_key_pem, certificate_pem)` of bytes, in which case it binds the same address
# with `server.add_secure_port(address, grpc.ssl_server_credentials([(private_key_pem,
# certificate_pem)]))` instead. Section 10 explains and uses it.

# %% solution="server-lifecycle"
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
QUOTE_SERVICE = quotes.service_names()[0]


SERVICE_NAMES = (health.OVERALL_HEALTH, PREDICTION_SERVICE, QUOTE_SERVICE)


@dataclass
class ServingHandle:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    batcher: DynamicBatcher
    watcher: asyncio.Task | None = None  # watch_batcher's task

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"


async def watch_batcher(batcher_task: asyncio.Task, health_servicer) -> None:
    # When the batcher's worker ends, for whatever reason, this server can no longer serve.
    await asyncio.wait([batcher_task])
    for name in SERVICE_NAMES:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


async def start_server(batcher: DynamicBatcher, port: int | None = None,
                       tls: tuple[bytes, bytes] | None = None) -> ServingHandle:
    # tls: None for plaintext, or (private_key_pem, certificate_pem) to serve over TLS.
    ### BEGIN SOLUTION
    port = port or free_port()
    server = grpc.aio.server(interceptors=[RefuseUnparseableRequests()],
                             options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(batcher), server)
    quotes.pb2_grpc.add_QuoteServiceServicer_to_server(QuoteService(batcher), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in SERVICE_NAMES:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [PREDICTION_SERVICE, QUOTE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    address = f"{LOOPBACK}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        private_key_pem, certificate_pem = tls
        bound = server.add_secure_port(
            address, grpc.ssl_server_credentials([(private_key_pem, certificate_pem)]))
    batcher_task = await batcher.start()
    await server.start()
    watcher = asyncio.create_task(watch_batcher(batcher_task, health_servicer))
    return ServingHandle(server=server, port=bound, health=health_servicer, batcher=batcher, watcher=watcher)
    ### END SOLUTION


async def stop_server(handle: ServingHandle, grace_s: float = 2.0) -> None:
    ### BEGIN SOLUTION
    await handle.health.enter_graceful_shutdown()
    await handle.server.stop(grace_s)
    await handle.batcher.stop()
    ### END SOLUTION


# %% [markdown] given="server-start-text"
# Start the server the rest of the lab talks to: batches of up to 32 rows, a 2 ms batch
# timeout. It is recorded in `RUNNING` so the last cell can stop it whatever happens.

# %% given="server-start"
main = await start_server(DynamicBatcher(predict_fn, max_batch_size=32, batch_timeout_s=0.002))
RUNNING.append(main)
print("serving on", main.target)


# %% [markdown] given="stock-client-text"
# ### The stock TensorFlow Serving client
#
# This is the code the analytics team already has: synchronous, unaware of our server.
# It runs in a worker thread (`asyncio.to_thread`) because a blocking call in this cell
# would block the event loop our server runs in.

# %% given="stock-client"
def stock_tf_serving_predict(target: str, rows: np.ndarray, model_name=MODEL_NAME, timeout_s=5.0):
    # Straight from TensorFlow Serving's client examples: no knowledge of our server.
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = "serving_default"
        request.inputs["features"].CopyFrom(tf.make_tensor_proto(rows, dtype=tf.float32))
        response = stub.Predict(request, timeout=timeout_s)
        return response, tf.make_ndarray(response.outputs["output_0"])[:, 0]


def predict_request(rows, model_name=MODEL_NAME, signature_name="", tensor=None):
    # A PredictRequest for the checks below; `tensor` replaces the features TensorProto.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["features"].CopyFrom(
        tensor if tensor is not None else tf.make_tensor_proto(rows, dtype=tf.float32))
    return request


async def rpc_error(call, expected="an error status") -> grpc.RpcError:
    # Await `call` and return the RpcError it raised (AssertionError if it succeeded).
    try:
        await call
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"The call succeeded, but {expected} was expected: see the section the test names")


response, probabilities = await asyncio.to_thread(stock_tf_serving_predict, main.target, X_probe[:5])
print(response.model_spec, probabilities, expected_probe[:5], sep="\n")

# %% tests="test-stock-client-matches-model" points=3
response, got = await asyncio.to_thread(stock_tf_serving_predict, main.target, X_probe)
np.testing.assert_allclose(got, expected_probe, atol=1e-5,
                           err_msg="Predict through the stock PredictionServiceStub must equal the SavedModel's own answer (section 5, Predict)")
assert response.model_spec.name == MODEL_NAME and response.model_spec.version.value == MODEL_VERSION, (
    f"The response's model_spec must name {MODEL_NAME} version {MODEL_VERSION}, got {response.model_spec} (section 5, PredictionService)")
### BEGIN HIDDEN TESTS
assert response.model_spec.signature_name == "serving_default", "An empty or default signature name resolves to serving_default (section 5, PredictionService)"
_, one = await asyncio.to_thread(stock_tf_serving_predict, main.target, X_probe[:1])
np.testing.assert_allclose(one, expected_probe[:1], atol=1e-5, err_msg="A single-row request must work (section 5, PredictionService)")
async with grpc.aio.insecure_channel(main.target) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_request(X_probe[:7])
    request.model_spec.version.value = MODEL_VERSION
    reply = await stub.Predict(request, timeout=5)
    np.testing.assert_allclose(tf.make_ndarray(reply.outputs[SIGNATURE_OUTPUT])[:, 0], expected_probe[:7], atol=1e-5,
                               err_msg="A request naming version 1 explicitly must be served (section 5, _check_model_spec)")
    assert list(reply.outputs) == ["output_0"] and tf.make_ndarray(reply.outputs["output_0"]).shape == (7, 1), (
        f"Predict must answer the signature's output output_0 with shape [batch, 1], as the model returns it, got "
        f"{ {name: list(tf.make_ndarray(t).shape) for name, t in reply.outputs.items()} } (section 5, Predict)")
    meta_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta_request.model_spec.name = MODEL_NAME
    meta = await stub.GetModelMetadata(meta_request, timeout=5)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert meta.metadata["signature_def"].Unpack(signature_map), "metadata['signature_def'] must pack a SignatureDefMap (section 5, PredictionService)"
    sig_def = signature_map.signature_def["serving_default"]
    assert list(sig_def.inputs) == ["features"] and list(sig_def.outputs) == ["output_0"], (
        "GetModelMetadata must describe the model's serving_default signature: input features, output output_0 "
        "(section 5, GetModelMetadata)")
    assert meta.model_spec.name == MODEL_NAME and meta.model_spec.version.value == MODEL_VERSION, (
        f"GetModelMetadata must name the model it describes, got {meta.model_spec}: see section 5")
### END HIDDEN TESTS
print("the stock TensorFlow Serving client gets the model's predictions")


# %% tests="test-bad-requests-status-codes" points=3
async with grpc.aio.insecure_channel(main.target) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    error = await rpc_error(stub.Predict(predict_request(X_probe[:2], model_name="no_such_model"), timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND, f"Unknown model: expected NOT_FOUND, got {error.code()} (section 5)"
    assert error.details() == "Servable not found for request: Latest(no_such_model)", (
        f"Use TensorFlow Serving's message for an unknown model, got {error.details()!r} (section 5, PredictionService)")

    error = await rpc_error(stub.Predict(predict_request(X_probe[:2, :3]), timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"Wrong shape: expected INVALID_ARGUMENT, got {error.code()} (section 5, PredictionService)"
    assert "features" in error.details() and str(N_FEATURES) in error.details(), (
        f"The shape error must name the input and the expected width {N_FEATURES}: {error.details()!r} (section 5, PredictionService)")

    error = await rpc_error(stub.Predict(predict_request(None, tensor=tf.make_tensor_proto(X_probe[:2].astype(np.float64))), timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"Wrong dtype: expected INVALID_ARGUMENT, got {error.code()} (section 5, PredictionService)"
    assert "DT_FLOAT" in error.details(), f"The dtype error must say DT_FLOAT is expected: {error.details()!r} (section 5, PredictionService)"

    huge = predict_pb2.PredictRequest()  # 45 bytes that declare 30 million floats and carry none
    huge.model_spec.name = MODEL_NAME
    huge.inputs["features"].dtype = types_pb2.DT_FLOAT
    huge.inputs["features"].tensor_shape.dim.add(size=5_000_000)
    huge.inputs["features"].tensor_shape.dim.add(size=N_FEATURES)
    started = time.perf_counter()
    error = await rpc_error(stub.Predict(huge, timeout=5))
    refused_in = time.perf_counter() - started
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and refused_in < 0.5, (
        f"A tensor declaring [5000000, {N_FEATURES}] with no values must be refused with INVALID_ARGUMENT before "
        f"any allocation; got {error.code()} after {refused_in:.2f} s (section 5, _features_from)")

    missing = predict_pb2.PredictRequest()
    missing.model_spec.name = MODEL_NAME
    error = await rpc_error(stub.Predict(missing, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"Missing input: expected INVALID_ARGUMENT, got {error.code()} (section 5, PredictionService)"
    assert "features" in error.details(), f"The error must name the missing input 'features': {error.details()!r} (section 5, PredictionService)"

    reply = await stub.Predict(predict_request(X_probe[:3]), timeout=5)
    np.testing.assert_allclose(tf.make_ndarray(reply.outputs[SIGNATURE_OUTPUT])[:, 0], expected_probe[:3], atol=1e-5,
                               err_msg="The server must keep serving correctly after bad requests (section 5, PredictionService)")
    ### BEGIN HIDDEN TESTS
    versioned = predict_request(X_probe[:1])
    versioned.model_spec.version.value = 7
    error = await rpc_error(stub.Predict(versioned, timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details() == f"Servable not found for request: Specific({MODEL_NAME}, 7)", (
        f"An unloaded version must give NOT_FOUND 'Specific(name, version)', got {error.code()} {error.details()!r} (section 5, PredictionService)")

    error = await rpc_error(stub.Predict(predict_request(X_probe[:1], signature_name="no_sig"), timeout=5))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and 'Serving signature key "no_sig" not found.' == error.details(), (
        f"Unknown signature: expected FAILED_PRECONDITION, got {error.code()} {error.details()!r} (section 5, PredictionService)")

    extra = predict_request(X_probe[:1])
    extra.inputs["carrier"].CopyFrom(tf.make_tensor_proto(["UA"]))
    error = await rpc_error(stub.Predict(extra, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "carrier" in error.details(), (
        f"An unknown input must give INVALID_ARGUMENT naming it, got {error.code()} {error.details()!r} (section 5, PredictionService)")

    rank1 = predict_request(None, tensor=tf.make_tensor_proto(X_probe[0]))
    error = await rpc_error(stub.Predict(rank1, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"A rank-1 tensor must be refused, got {error.code()} (section 5, PredictionService)"

    broken = tf.make_tensor_proto(X_probe[:2])
    broken.tensor_shape.dim[0].size = 5  # claims 5 rows, carries 2
    error = await rpc_error(stub.Predict(predict_request(None, tensor=broken), timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"Content that does not fill the shape: expected INVALID_ARGUMENT, got {error.code()} (section 5, PredictionService)"

    meta_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta_request.model_spec.name = "nope"
    error = await rpc_error(stub.GetModelMetadata(meta_request, timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details() == "Servable not found for request: Latest(nope)", (
        f"GetModelMetadata of an unknown model must fail like TF Serving, got {error.code()}: {error.details()} (section 5)")
    meta_request = get_model_metadata_pb2.GetModelMetadataRequest()
    meta_request.model_spec.name = MODEL_NAME
    error = await rpc_error(stub.GetModelMetadata(meta_request, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"Metadata without fields: expected INVALID_ARGUMENT, got {error.code()} (section 5, PredictionService)"

    short = tf.make_tensor_proto(X_probe[:2])
    short.ClearField("tensor_content")
    short.float_val.extend(X_probe[:2].reshape(-1)[:7])  # 7 of the 12 values declared
    error = await rpc_error(stub.Predict(predict_request(None, tensor=short), timeout=5),
                            "INVALID_ARGUMENT for content that does not fill its shape (refused, not padded)")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
        f"float_val with 7 of 12 declared values must be refused, not padded: got {error.code()} (section 5, _features_from)")

    for rows in (2**40, MAX_ROWS_PER_REQUEST + 1, -1):
        absurd = predict_pb2.PredictRequest()
        absurd.model_spec.name = MODEL_NAME
        absurd.inputs["features"].dtype = types_pb2.DT_FLOAT
        absurd.inputs["features"].tensor_shape.dim.add(size=rows)
        absurd.inputs["features"].tensor_shape.dim.add(size=N_FEATURES)
        error = await rpc_error(stub.Predict(absurd, timeout=5))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
            f"A declared batch of {rows} rows must be refused with INVALID_ARGUMENT, got {error.code()}: "
            f"check the shape against MAX_ROWS_PER_REQUEST (section 5, _features_from)")

    odd_dtype = predict_request(X_probe[:1])
    odd_dtype.inputs["features"].dtype = 999
    error = await rpc_error(stub.Predict(odd_dtype, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
        f"dtype 999 must give INVALID_ARGUMENT, got {error.code()}: name it with dtype_name (section 5)")

    for value in (math.inf, -math.inf, math.nan):
        for encoding in ("tensor_content", "float_val"):
            rows = X_probe[:3].copy()
            rows[1, FEATURES.index("distance")] = value
            tensor = tf.make_tensor_proto(rows)
            if encoding == "float_val":
                tensor.ClearField("tensor_content")
                tensor.float_val.extend(rows.reshape(-1))
            error = await rpc_error(stub.Predict(predict_request(None, tensor=tensor), timeout=5),
                                    f"INVALID_ARGUMENT (values must be finite) for a distance of {value}")
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "finite" in error.details(), (
                f"A row with distance {value} (in {encoding}) must be refused with INVALID_ARGUMENT saying the values "
                f"must be finite, got {error.code()} {error.details()!r}: no probability may come from a non-finite "
                "input (section 5, _features_from)")

    not_a_message = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")  # raw bytes
    error = await rpc_error(not_a_message(b"\x0a\xff\xff\xff", timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
        f"Bytes that are not a PredictRequest must give INVALID_ARGUMENT, got {error.code()}: pass "
        "interceptors=[RefuseUnparseableRequests()] to grpc.aio.server (section 7, start_server)")

    long_name = "m" * 100_000
    error = await rpc_error(stub.Predict(predict_request(X_probe[:1], model_name=long_name), timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND and len(error.details()) < 300, (
        f"An unknown 100 kB model name must be quoted clipped, got {len(error.details())} characters "
        "of details: see clip (section 5, _check_model_spec)")
    long_field = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["f" * 100_000])
    long_field.model_spec.name = MODEL_NAME
    error = await rpc_error(stub.GetModelMetadata(long_field, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and len(error.details()) < 300, (
        f"An unsupported 100 kB metadata field must be refused with INVALID_ARGUMENT and quoted clipped, got "
        f"{error.code()} with {len(error.details())} characters of details: see clip (section 5, GetModelMetadata)")

    _, again = await asyncio.to_thread(stock_tf_serving_predict, main.target, X_probe[:4])
    np.testing.assert_allclose(again, expected_probe[:4], atol=1e-5, err_msg="The server must survive all bad requests (section 5, PredictionService)")
    ### END HIDDEN TESTS
print("bad requests get the right status codes, and the server keeps serving")


# %% tests="test-quote-service" points=2
def quote_request_for(row: int, payout_cents: int):
    # A QuoteRequest for row `row` of QUOTE_FEATURES: a flight that exists.
    flight = QUOTE_FEATURES.iloc[row]
    return pb.QuoteRequest(payout_cents=payout_cents, flight=pb.Flight(
        origin=flight["origin"], carrier_code=flight["carrier"], flight_number=int(flight["flight"]),
        date=flight["sched_dep"].strftime("%Y-%m-%d")))


async with grpc.aio.insecure_channel(main.target) as channel:
    stub = quotes.pb2_grpc.QuoteServiceStub(channel)
    quote = await stub.GetQuote(quote_request_for(0, 30_000), timeout=5)  # UA 1545 on 2013-01-01 from EWR
    p = float(predict_fn(FLIGHT_FEATURES.matrix[0:1])[0, 0])
    assert abs(quote.delay_probability - p) < 1e-5, (
        f"GetQuote's probability {quote.delay_probability} is not the model's {p} for this flight's quote-time "
        "features (section 6, GetQuote and _features_of)")
    assert quote.premium_cents == premium_cents(30_000, p) and quote.payout_cents == 30_000 and quote.model_version == MODEL_LABEL, (
        f"The quote must carry premium_cents(payout_cents, p), the payout and MODEL_LABEL: {quote} (section 6)")

    picked = [5, 120_000, 330_000]
    batch = pb.QuoteBatchRequest(requests=[quote_request_for(row, 10_000 + i) for i, row in enumerate(picked)])
    streamed = [q async for q in stub.StreamQuotes(batch, timeout=5)]
    assert len(streamed) == 3, f"StreamQuotes must yield one quote per request, got {len(streamed)} (section 6)"
    assert [q.payout_cents for q in streamed] == [10_000, 10_001, 10_002], (
        "Quotes must come back in request order (section 6, StreamQuotes)")

    bad = quote_request_for(0, 10_000)
    bad.flight.origin = "BOS"
    error = await rpc_error(stub.GetQuote(bad, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "origin" in error.details(), (
        f"An unknown origin must give INVALID_ARGUMENT naming 'origin', got {error.code()} {error.details()!r} "
        "(section 6, _problem)")
    missing = quote_request_for(0, 10_000)
    missing.flight.flight_number = 9999  # no UA 9999 left New York in 2013
    error = await rpc_error(stub.GetQuote(missing, timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "9999" in error.details(), (
        f"A well-formed request for a flight that does not exist must give NOT_FOUND naming the flight, got "
        f"{error.code()} {error.details()!r} (section 6, _features_of)")
    ### BEGIN HIDDEN TESTS
    expected = predict_fn(FLIGHT_FEATURES.matrix[picked])[:, 0]
    np.testing.assert_allclose([q.delay_probability for q in streamed], expected, atol=1e-5,
                               err_msg="Streamed quotes must price each flight with the model, in request order (section 6)")
    assert [q.premium_cents for q in streamed] == [premium_cents(q.payout_cents, q.delay_probability) for q in streamed], (
        f"Each streamed quote's premium must be premium_cents(payout_cents, probability): {streamed} (section 6)")
    for field, value in [("carrier_code", "ua"), ("carrier_code", "UAL"), ("carrier_code", ""), ("flight_number", 0),
                         ("flight_number", 10_000), ("flight_number", -5), ("date", "2013-13-01"),
                         ("date", "2013-1-1"), ("date", "x" * 100_000), ("origin", "")]:
        request = quote_request_for(0, 5_000)
        setattr(request.flight, field, value)
        error = await rpc_error(stub.GetQuote(request, timeout=5), f"INVALID_ARGUMENT for {field}={value!r:.20}")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field in error.details(), (
            f"{field}={value!r:.20} must be refused with INVALID_ARGUMENT naming {field}, got {error.code()} "
            f"{error.details()[:200]!r} (section 6, _problem)")
        assert len(error.details()) < 300, (
            f"The message for {field}={value!r:.20} quotes {len(error.details())} characters: clip what the client "
            "sent (section 6, _problem)")
    no_payout = quote_request_for(0, 0)
    error = await rpc_error(stub.GetQuote(no_payout, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "payout" in error.details(), (
        f"A zero payout must be refused with INVALID_ARGUMENT naming payout_cents, got {error.code()} (section 6, _problem)")
    for payout in (2**62, -1, MAX_PAYOUT_CENTS + 1):
        error = await rpc_error(stub.GetQuote(quote_request_for(0, payout), timeout=5))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "payout" in error.details(), (
            f"A payout of {payout} cents, outside 1..MAX_PAYOUT_CENTS, must be refused, got {error.code()} "
            "(section 6, _problem)")
    no_flight = pb.QuoteRequest(payout_cents=5_000)
    error = await rpc_error(stub.GetQuote(no_flight, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
        f"A request without a flight must be refused with INVALID_ARGUMENT, got {error.code()} (section 6, _problem)")
    bad_batch = pb.QuoteBatchRequest(requests=[batch.requests[0], batch.requests[1], bad])
    async def drain(request):
        return [q async for q in stub.StreamQuotes(request, timeout=5)]
    error = await rpc_error(drain(bad_batch))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "requests[2]" in error.details(), (
        f"StreamQuotes must name the bad request's index: {error.details()!r} (section 6, StreamQuotes)")
    error = await rpc_error(drain(pb.QuoteBatchRequest(requests=[batch.requests[0], missing])))
    assert error.code() == grpc.StatusCode.NOT_FOUND, (
        f"StreamQuotes with a flight that does not exist must give NOT_FOUND, got {error.code()} (section 6, StreamQuotes)")
    flood = pb.QuoteBatchRequest(requests=[batch.requests[0]] * (MAX_ROWS_PER_REQUEST + 1))
    error = await rpc_error(drain(flood))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
        f"More than MAX_ROWS_PER_REQUEST quotes in one call must be refused, got {error.code()} (section 6, StreamQuotes)")
    empty = await drain(pb.QuoteBatchRequest())
    assert empty == [], f"An empty batch streams nothing, got {empty} (section 6, StreamQuotes)"
    ### END HIDDEN TESTS
print("quotes OK:", quote)


# %% tests="test-health-and-reflection" points=2
async with grpc.aio.insecure_channel(main.target) as channel:
    health_stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", PREDICTION_SERVICE, QUOTE_SERVICE):
        status = (await health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, (
            f"Health of {service or 'the server'} is {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}, "
            "expected SERVING (section 7, start_server)")


def reflected_services(target):
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        quote_methods = sorted(DescriptorPool(database).FindServiceByName(QUOTE_SERVICE).methods_by_name)
        return services, quote_methods


services, quote_methods = await asyncio.wait_for(asyncio.to_thread(reflected_services, main.target), 20)
for name in (PREDICTION_SERVICE, QUOTE_SERVICE, "grpc.health.v1.Health"):
    assert name in services, f"Reflection lists {services}; {name} is missing (section 7, enable_server_reflection)"
### BEGIN HIDDEN TESTS
assert quote_methods == ["GetQuote", "StreamQuotes"], f"Reflection must serve QuoteService's schema, got {quote_methods} (section 7, start_server)"
assert "grpc.reflection.v1alpha.ServerReflection" in services, "Advertise the reflection service itself too (section 7, start_server)"
async with grpc.aio.insecure_channel(main.target) as channel:
    error = await rpc_error(health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND, (
        f"Health of an unknown service must be NOT_FOUND, got {error.code()} (section 7, start_server)")

def slow_predict(x):
    time.sleep(1.0)  # a batch that takes a second to compute
    return predict_fn(x)
probe = await start_server(DynamicBatcher(slow_predict, max_batch_size=8, batch_timeout_s=0.002))
RUNNING.append(probe)
try:
    async with grpc.aio.insecure_channel(probe.target) as channel:
        busy = asyncio.ensure_future(prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            predict_request(X_probe[:1]), timeout=5))
        await asyncio.sleep(0.25)  # the batch is computing now
        try:
            status = (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                       timeout=0.5)).status
        except grpc.RpcError as error:
            raise AssertionError(
                f"A health check during a 1 s batch got {error.code()}: the model must run off the event loop "
                "so health keeps answering (section 4, _run)") from None
        assert status == health_pb2.HealthCheckResponse.SERVING, "A busy server is still SERVING (section 7, start_server)"
        await asyncio.wait_for(busy, 5)
    await probe.batcher.stop()  # the worker is gone: this server can no longer compute
    await asyncio.sleep(0.1)
    async with grpc.aio.insecure_channel(probe.target) as channel:
        status = (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                   timeout=2)).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING, (
            f"With the batcher stopped, health must say NOT_SERVING, got "
            f"{health_pb2.HealthCheckResponse.ServingStatus.Name(status)} (section 7, watch_batcher in start_server)")
        error = await rpc_error(prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            predict_request(X_probe[:1]), timeout=3))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (
            f"Predict without a running batcher must fail at once with UNAVAILABLE, got {error.code()} "
            "(sections 4 and 5: BatcherNotRunning, predict_or_abort)")
finally:
    await probe.server.stop(0)
    await probe.batcher.stop()
### END HIDDEN TESTS
print("health SERVING; reflection lists", services)

# %% [markdown] given="client-text"
# ## 8. Clients: deadlines and retries
#
# A gRPC call without a deadline can wait forever, holding a thread, a connection and a
# customer's checkout hostage. Every call in this notebook passes `timeout=` (seconds);
# gRPC turns it into an absolute **deadline** that travels with the request (the
# `grpc-timeout` header), so the server also knows when the client has given up, and
# the call fails with `DEADLINE_EXCEEDED` once it passes. The test below uses a server whose
# model takes a second, far beyond the checkout's budget, to show what that looks like.
#
# **Retries** belong in the channel, not in every call site: a gRPC *service config*
# (JSON, passed as the channel option `grpc.service_config`) can give each method a
# `retryPolicy`: up to `maxAttempts` tries with exponential
# backoff (`initialBackoff`, `backoffMultiplier`, `maxBackoff`), only for the
# `retryableStatusCodes`. The retries of one call all share that call's deadline. Retry `UNAVAILABLE` (the server was restarting, the connection
# dropped): such a call never reached the model. Never retry `INVALID_ARGUMENT` (it will
# fail again) and be careful with `DEADLINE_EXCEEDED` (the work may be half done, and
# retrying at the deadline multiplies load exactly when the server is overloaded).
#
# **Your task.** Fill in `RETRY_SERVICE_CONFIG` (a `methodConfig` for both
# `QUOTE_SERVICE` and `PREDICTION_SERVICE`: at least 4 attempts, backoff starting at 0.05 s,
# retry only `UNAVAILABLE`) and `make_channel(target)`, which returns a
# `grpc.aio.insecure_channel` with retries enabled (`grpc.enable_retries`) and that
# service config.

# %% solution="client-deadlines-retries"
# A methodConfig for QUOTE_SERVICE and PREDICTION_SERVICE with a retryPolicy.
### BEGIN SOLUTION
RETRY_SERVICE_CONFIG = {
    "methodConfig": [{
        "name": [{"service": QUOTE_SERVICE}, {"service": PREDICTION_SERVICE}],
        "retryPolicy": {
            "maxAttempts": 4,
            "initialBackoff": "0.05s",
            "maxBackoff": "0.5s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
}
### END SOLUTION


def make_channel(target: str) -> grpc.aio.Channel:
    ### BEGIN SOLUTION
    return grpc.aio.insecure_channel(target, options=[
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(RETRY_SERVICE_CONFIG)),
    ])
    ### END SOLUTION


# %% tests="test-deadline-and-retries" points=3
def one_second_model(x):
    time.sleep(1.0)  # a model, or a queue, slower than the client's budget
    return predict_fn(x)


slow = await start_server(DynamicBatcher(one_second_model, max_batch_size=64, batch_timeout_s=0.002))
RUNNING.append(slow)
try:
    async with make_channel(slow.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        started = time.perf_counter()
        error = await rpc_error(stub.Predict(predict_request(X_probe[:1]), timeout=0.1))
        waited = time.perf_counter() - started
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"A 0.1 s deadline against a 1 s model must give DEADLINE_EXCEEDED, got {error.code()} (section 8)"
        assert waited < 0.8, f"The client must give up at its deadline, not wait {waited:.2f} s (section 8)"
        reply = await stub.Predict(predict_request(X_probe[:1]), timeout=5)
        np.testing.assert_allclose(tf.make_ndarray(reply.outputs[SIGNATURE_OUTPUT])[:, 0], expected_probe[:1], atol=1e-5,
                                   err_msg="After a call timed out, the server must still answer (skip cancelled futures in _run) (section 8)")
finally:
    await slow.server.stop(0)
    await slow.batcher.stop()


class FlakyQuotes(quotes.pb2_grpc.QuoteServiceServicer):
    # Fails the first `failures` calls with `code`, then quotes.
    def __init__(self, failures, code):
        self.failures, self.code, self.calls = failures, code, 0

    async def GetQuote(self, request, context):
        self.calls += 1
        if self.calls <= self.failures:
            await context.abort(self.code, "try again")
        return pb.Quote(premium_cents=100, model_version="flaky")


async def calls_until_answer(failures, code):
    flaky = FlakyQuotes(failures, code)
    server = grpc.aio.server()
    quotes.pb2_grpc.add_QuoteServiceServicer_to_server(flaky, server)
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    await server.start()
    try:
        async with make_channel(f"{LOOPBACK}:{port}") as channel:
            try:
                quote = await quotes.pb2_grpc.QuoteServiceStub(channel).GetQuote(pb.QuoteRequest(), timeout=5)
                return flaky.calls, quote.model_version
            except grpc.RpcError as error:
                return flaky.calls, error.code()
    finally:
        await server.stop(0)


calls, outcome = await calls_until_answer(2, grpc.StatusCode.UNAVAILABLE)
assert outcome == "flaky" and calls == 3, (
    f"Two UNAVAILABLE answers must be retried by the channel's retry policy: the server saw {calls} calls, "
    f"the client got {outcome} (section 8, RETRY_SERVICE_CONFIG and make_channel)")
### BEGIN HIDDEN TESTS
calls, outcome = await calls_until_answer(1, grpc.StatusCode.INVALID_ARGUMENT)
assert calls == 1 and outcome == grpc.StatusCode.INVALID_ARGUMENT, (
    f"INVALID_ARGUMENT must not be retried: the server saw {calls} calls (section 8)")
calls, outcome = await calls_until_answer(3, grpc.StatusCode.UNAVAILABLE)
assert outcome == "flaky" and calls == 4, f"maxAttempts must allow at least 4 attempts, the server saw {calls} (section 8)"
### END HIDDEN TESTS
print("deadlines and retries OK")


# %% tests="test-graceful-shutdown" points=2
def one_second_model(x):
    time.sleep(1.0)  # long enough to stop the server while a call is in flight
    return predict_fn(x)


draining = await start_server(DynamicBatcher(one_second_model, max_batch_size=64, batch_timeout_s=0.002))
RUNNING.append(draining)
try:
    async with grpc.aio.insecure_channel(draining.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        in_flight = asyncio.ensure_future(stub.Predict(predict_request(X_probe[:2]), timeout=5))
        await asyncio.sleep(0.2)  # the call is now being computed
        assert not in_flight.done(), "The call should still be waiting for the model (section 7, stop_server)"
        await asyncio.wait_for(stop_server(draining, grace_s=3), 10)
        try:
            reply = await asyncio.wait_for(in_flight, 5)
        except (grpc.RpcError, TimeoutError) as error:
            raise AssertionError(
                f"A call in flight during a graceful stop must finish normally, got {error!r:.200}: stop the "
                "batcher only after server.stop(grace_s) has let in-flight calls finish (section 7, stop_server)") from None
        np.testing.assert_allclose(tf.make_ndarray(reply.outputs[SIGNATURE_OUTPUT])[:, 0], expected_probe[:2], atol=1e-5,
                                   err_msg="A call in flight during a graceful stop must finish normally (section 7, stop_server)")
        error = await rpc_error(stub.Predict(predict_request(X_probe[:1]), timeout=2))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, f"After the stop, new calls must fail with UNAVAILABLE, got {error.code()} (section 7, stop_server)"
    ### BEGIN HIDDEN TESTS
    assert draining.batcher._task is None or draining.batcher._task.done(), "stop_server must stop the batcher too (section 7, stop_server)"
    status = (await draining.health.Check(health_pb2.HealthCheckRequest(service=""), None)).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING, "stop_server must first set health to NOT_SERVING (section 7, stop_server)"
    ### END HIDDEN TESTS
finally:
    await draining.server.stop(0)
    await draining.batcher.stop()
print("graceful shutdown OK")


# %% [markdown] given="load-text"
# ## 9. Load testing: throughput, tail latency, batching, REST
#
# A service is described by its **throughput** (requests per second) and its latency
# **distribution**: the median (p50) is what a typical request sees, but the 95th and
# 99th percentiles are what a checkout page with many backend calls sees on almost every
# page view. A *closed-loop* load generator runs `concurrency` workers; each sends a
# request, waits for the answer, records the latency and sends the next one.
#
# **Your task.** Write `load_test(call, concurrency, requests_per_worker)`: `call` is an
# async function with no arguments that performs one request. Run `concurrency` workers
# concurrently (`asyncio.gather`), each calling `call()` `requests_per_worker` times in
# sequence and recording each latency with `time.perf_counter()`. Return a dict with
# `concurrency`, `requests` (the number of calls made), `throughput_rps` (calls divided by
# the wall time of the whole run) and `p50_ms`, `p95_ms`, `p99_ms` (`np.percentile` of
# the latencies, in milliseconds).

# %% solution="load-generator"
async def load_test(call, concurrency: int, requests_per_worker: int) -> dict:
    ### BEGIN SOLUTION
    latencies = []

    async def worker():
        for _ in range(requests_per_worker):
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "throughput_rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }
    ### END SOLUTION


# %% tests="test-load-generator" points=2
in_flight = {"now": 0, "peak": 0, "calls": 0}

async def fake_call():
    in_flight["now"] += 1
    in_flight["peak"] = max(in_flight["peak"], in_flight["now"])
    in_flight["calls"] += 1
    slow = in_flight["calls"] % 10 == 0  # every 10th call is slow
    await asyncio.sleep(0.06 if slow else 0)
    in_flight["now"] -= 1

report = await asyncio.wait_for(load_test(fake_call, concurrency=8, requests_per_worker=10), 30)
for key in ("concurrency", "requests", "throughput_rps", "p50_ms", "p95_ms", "p99_ms"):
    assert key in report, f"load_test's report lacks {key!r}: {report} (section 9, load_test)"
assert in_flight["calls"] == 80 and report["requests"] == 80, (
    f"8 workers x 10 requests = 80 calls, made {in_flight['calls']}, reported {report['requests']} (section 9, load_test)")
assert in_flight["peak"] == 8, f"8 workers must run concurrently: at most {in_flight['peak']} calls were in flight (section 9, load_test)"
assert report["p50_ms"] <= report["p95_ms"] <= report["p99_ms"], f"Percentiles out of order: {report} (section 9, load_test)"
### BEGIN HIDDEN TESTS
assert report["p99_ms"] >= 55, f"10% of calls took 60 ms, so p99 must be >= 55 ms, got {report['p99_ms']:.1f} (section 9, load_test)"
assert report["p50_ms"] < 40, f"Most calls were instant, so p50 must be small, got {report['p50_ms']:.1f} (section 9, load_test)"
assert 10 < report["throughput_rps"] < 5000, f"Implausible throughput {report['throughput_rps']} (section 9, load_test)"
in_flight.update(now=0, peak=0, calls=0)
single = await asyncio.wait_for(load_test(fake_call, concurrency=1, requests_per_worker=5), 30)
assert single["requests"] == 5 and in_flight["peak"] == 1 and single["concurrency"] == 1, (
    f"At concurrency 1, load_test must keep exactly one call in flight and count 5 requests, got {single} "
    f"with a peak of {in_flight['peak']} in flight: see section 9")
### END HIDDEN TESTS
print(report)

# %% [markdown] given="rest-text"
# ### The REST baseline
#
# For comparison, the same model behind a plain FastAPI endpoint speaking TensorFlow
# Serving's REST format (`POST /v1/models/pays_out:predict` with
# `{"instances": [[...12 numbers...]]}`), JSON over HTTP/1.1, no batching. Uvicorn runs it
# in this notebook's event loop, like the gRPC server (we only keep it from taking over
# the kernel's Ctrl-C handler).

# %% given="rest-baseline"
import httpx
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel


class PredictBody(BaseModel):
    instances: list[list[float]]


def make_rest_app() -> FastAPI:
    app = FastAPI()

    @app.post(f"/v1/models/{MODEL_NAME}:predict")
    async def rest_predict(body: PredictBody):
        rows = np.asarray(body.instances, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != N_FEATURES:
            raise HTTPException(400, f"instances must be rows of {N_FEATURES} numbers")
        return {"predictions": predict_fn(rows).tolist()}

    return app


class InLoopServer(uvicorn.Server):
    def capture_signals(self):  # leave the kernel's signal handlers alone
        return contextlib.nullcontext()


async def start_rest(port: int):
    server = InLoopServer(uvicorn.Config(make_rest_app(), host=LOOPBACK, port=port,
                                         log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    for _ in range(100):
        if server.started:
            return server, task
        await asyncio.sleep(0.05)
    server.should_exit = True
    raise TimeoutError("uvicorn did not start within 5 s")


async def stop_rest(server, task):
    server.should_exit = True
    await asyncio.wait_for(task, 10)


# %% [markdown] given="benchmark-text"
# ### The experiment
#
# Three set-ups, each at concurrency 1, 8 and 32, each request carrying one flight: gRPC
# with batching on (`main`, up to 32 rows, 2 ms), gRPC with batching off (a second server
# with `max_batch_size=1`), and REST. Request counts are kept small so the lab stays fast;
# expect some noise. Client and servers share one process and one event loop here, so the
# absolute numbers understate what separate machines would do, but the comparisons are
# fair: every set-up pays the same client costs.

# %% given="benchmark"
CONCURRENCY = (1, 8, 32)
REQUESTS_PER_WORKER = {1: 120, 8: 25, 32: 8}
row = X_probe[:1]
rest_url = None
rows = []

off = await start_server(DynamicBatcher(predict_fn, max_batch_size=1, batch_timeout_s=0.0))
RUNNING.append(off)
rest_server, rest_task = await start_rest(free_port())
rest_url = f"http://{LOOPBACK}:{rest_server.config.port}/v1/models/{MODEL_NAME}:predict"
try:
    async with grpc.aio.insecure_channel(main.target) as on_channel, \
               grpc.aio.insecure_channel(off.target) as off_channel, \
               httpx.AsyncClient(timeout=5) as http:
        request = predict_request(row)
        setups = {
            "gRPC, batching on": (main, prediction_service_pb2_grpc.PredictionServiceStub(on_channel)),
            "gRPC, batching off": (off, prediction_service_pb2_grpc.PredictionServiceStub(off_channel)),
        }
        for label, (handle, stub) in setups.items():
            async def call(stub=stub):
                await stub.Predict(request, timeout=5)
            await load_test(call, 4, 5)  # warm-up: connections, TensorFlow's first calls
            for c in CONCURRENCY:
                handle.batcher.reset_counters()
                report = await load_test(call, c, REQUESTS_PER_WORKER[c])
                rows.append({"setup": label, **report, "mean_batch_size": handle.batcher.mean_batch_size})

        async def rest_call():
            response = await http.post(rest_url, json={"instances": row.tolist()})
            response.raise_for_status()
        await load_test(rest_call, 4, 5)
        for c in CONCURRENCY:
            rows.append({"setup": "REST (FastAPI)", **await load_test(rest_call, c, REQUESTS_PER_WORKER[c]),
                         "mean_batch_size": float("nan")})
finally:
    await stop_rest(rest_server, rest_task)
    await off.server.stop(0)
    await off.batcher.stop()

results = pd.DataFrame(rows)
print(results.round(2).to_string(index=False))

# %% given="benchmark-plot"
fig, (ax_tput, ax_p99) = plt.subplots(1, 2, figsize=(10, 3.8))
for label, group in results.groupby("setup", sort=False):
    ax_tput.plot(group["concurrency"], group["throughput_rps"], marker="o", label=label)
    ax_p99.plot(group["concurrency"], group["p99_ms"], marker="o", label=label)
for ax, title in ((ax_tput, "throughput (requests/s)"), (ax_p99, "p99 latency (ms)")):
    ax.set_xscale("log", base=2)
    ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
    ax.set_xlabel("concurrent callers")
    ax.set_title(title)
    ax.grid(alpha=0.3)
ax_tput.legend()
fig.tight_layout()
plt.show()


# %% tests="test-batching-under-load" points=2
def cell(setup, concurrency, column):
    match = results[(results["setup"] == setup) & (results["concurrency"] == concurrency)]
    assert len(match) == 1, f"No benchmark row for {setup} at concurrency {concurrency}: run the benchmark cell (sections 4 and 9)"
    return float(match[column].iloc[0])

on_32 = cell("gRPC, batching on", 32, "mean_batch_size")
assert on_32 > 1, (f"Under 32 concurrent callers the batcher must group requests: mean batch size {on_32:.2f} "
                   "(sections 4 and 7)")
off_32 = cell("gRPC, batching off", 32, "mean_batch_size")
assert off_32 == 1, f"With batching off every batch must hold one row, mean {off_32:.2f} (sections 4 and 9)"
### BEGIN HIDDEN TESTS
for setup in ("gRPC, batching on", "gRPC, batching off", "REST (FastAPI)"):
    for c in CONCURRENCY:
        assert cell(setup, c, "requests") == c * REQUESTS_PER_WORKER[c], f"{setup} at {c}: wrong request count (sections 4 and 9)"
assert cell("gRPC, batching on", 1, "mean_batch_size") <= 1.0 + 1e-9, "One caller at a time cannot form batches (sections 4 and 9)"
### END HIDDEN TESTS
print(f"mean batch size at 32 callers: on {on_32:.1f}, off {off_32:.1f}")

# %% [markdown] answer="reading-the-results" points=3
# ### Reading the results
#
# **Question.** Use the table and the plot above (quote your own numbers) to answer:
#
# 1. At concurrency 1, what does batching cost here, and what would it cost if the
#    batcher always waited `batch_timeout_s` for company?
# 2. At concurrency 32, how does the mean batch size relate to the throughput gain of
#    batching? Why can throughput not grow past the point where the event loop is busy
#    all the time?
# 3. Why does p99 grow with concurrency even when throughput is flat (think of Little's
#    law: requests in the system = throughput x latency)?
# 4. gRPC or REST: where does the difference come from here (JSON encoding, HTTP/1.1
#    versus HTTP/2, the client libraries)? Would it grow or shrink with 10,000-row requests?
#
# ### BEGIN SOLUTION
# Rubric (3 points; numbers must be the student's own, from their table).
# - 1 point for questions 1 and 2. (1) At one caller the two gRPC rows should be within
#   noise of each other (ratio about 1.0; the notebook runs the set-ups one after the other,
#   so on a shared machine they can differ either way, which a good answer notices): with
#   nobody else queued the batcher runs the request at once and adds only a queue hop. A batcher that always waited would add the whole
#   timeout, 2 ms, to every request: at a model call well under a millisecond that is
#   about half the throughput, or worse. (2) Mean batch size near 32 at 32 callers means
#   one model call serves ~32 requests, so the model's cost per request falls ~32-fold;
#   the gain in throughput is much smaller (about 1.5 to 3x) because what is left per
#   request is the same with or without batching: the gRPC framework's work, decoding
#   and encoding protos, the handler, and (here) the client, all on one event loop and one
#   interpreter (the GIL). Once that loop is busy 100 % of the time, more callers only
#   queue longer: the gain is bounded by (model time + per-request overhead) / per-request
#   overhead.
# - 1 point for question 3: with the server saturated, throughput X is fixed, and the
#   callers are always in the system, so N = X x R gives latency R = N / X: it grows
#   linearly with the number of callers; the tail grows faster (queueing behind a batch,
#   event-loop scheduling, garbage collection). Accept any correct use of Little's law.
# - 1 point for question 4: per request, REST pays JSON encoding and parsing of the
#   numbers, pydantic validation, HTTP/1.1 with a connection per in-flight request, and a
#   heavier client (httpx); gRPC sends 48 bytes of packed float32 over one multiplexed
#   HTTP/2 connection. With 10,000-row requests the fixed per-request costs matter less,
#   but the payload costs grow: JSON text of 120,000 numbers is several times larger and
#   far slower to parse than 480 kB of binary, so the gap in payload handling grows
#   (both grow, gRPC slower), while the model's own time becomes a bigger share of both.
#   Accept a well-argued "shrinks relatively" if it names the fixed costs.
# ### END SOLUTION

# %% [markdown] given="tls-text"
# ## 10. TLS with a self-signed certificate (an option)
#
# Every call so far travelled in plaintext over the loopback interface. Between machines,
# gRPC traffic must be encrypted, and the client must know that it talks to the real
# server and not to whoever answers on that address: that is what **TLS** gives. The
# server proves its identity with a **certificate** (its public key, its names and a
# validity period, signed by an issuer) and the matching **private key**, which never
# leaves the server. During the handshake, before any call is made, the client checks
# that the certificate was signed by an issuer it trusts (a *root* certificate) and that
# one of its **subject alternative names** (SANs) matches the host it dialled, here
# `127.0.0.1`. Only then are keys agreed and the HTTP/2 connection starts, encrypted.
#
# In production the issuer is a certificate authority: an internal one for services inside
# a company (often run for you by a service mesh or cert-manager, which also renews the
# certificates), or a public one such as Let's Encrypt for public names. For development a
# **self-signed** certificate is enough: it is its own issuer, and the client trusts
# exactly that certificate. The helper below makes one with the `cryptography` package:
# an elliptic-curve key (P-256), the SANs `DNS:localhost` and `IP:127.0.0.1` (the names
# this lab dials), a validity of one day (a short life limits the damage a leaked key can
# do) and `BasicConstraints(ca=False)`, so that it cannot sign other certificates. The
# key stays in memory here; written to disk, it must be readable by the server only.

# %% given="tls-certificate"
import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def self_signed_certificate(hosts=("localhost", LOOPBACK), valid_for=datetime.timedelta(days=1)):
    # A new private key and a self-signed certificate for `hosts`, both as PEM bytes.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    alt_names = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:  # not an IP address: a DNS name
            alt_names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)  # self-signed: the issuer is the subject
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate a little clock skew
        .not_valid_after(now + valid_for)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


TLS_KEY_PEM, TLS_CERT_PEM = self_signed_certificate()
tls_certificate = x509.load_pem_x509_certificate(TLS_CERT_PEM)
print("subject", tls_certificate.subject.rfc4514_string(), "| issuer", tls_certificate.issuer.rfc4514_string())
print("valid", tls_certificate.not_valid_before_utc, "to", tls_certificate.not_valid_after_utc)
print(tls_certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
print(TLS_CERT_PEM.decode().splitlines()[0], "...")


# %% [markdown] given="tls-task-text"
# The server side is the `tls` option of `start_server` (section 7):
# `grpc.ssl_server_credentials([(private_key_pem, certificate_pem)])` holds the key and
# the certificate chain the server presents, and `server.add_secure_port` binds the same
# `127.0.0.1` address as before, with the same services, health checking and reflection.
# A server can also bind a plaintext and a TLS port at once; here each server has one.
#
# **Your task.** Make sure `start_server(..., tls=(key_pem, cert_pem))` serves over TLS,
# then write `tls_channel(target, root_certificate_pem)`: a `grpc.aio.secure_channel` to
# `target` whose credentials, `grpc.ssl_channel_credentials(root_certificates=...)`, trust
# exactly the given certificate. (Without `root_certificates`, gRPC trusts the public
# certificate authorities known to the system, and none of them signed ours.)

# %% solution="tls-channel"
def tls_channel(target: str, root_certificate_pem: bytes) -> grpc.aio.Channel:
    ### BEGIN SOLUTION
    credentials = grpc.ssl_channel_credentials(root_certificates=root_certificate_pem)
    return grpc.aio.secure_channel(target, credentials)
    ### END SOLUTION


# %% [markdown] given="tls-demo-text"
# A second server, with the same services, now on a TLS port. A plaintext client that
# dials it opens with HTTP/2's preface where the server expects a TLS *ClientHello*: the
# server drops the connection and the call fails with `UNAVAILABLE`, like any call that
# never reached a server (gRPC's core library would log the failed handshake on stderr; the setup cell turned that off). A
# client that trusts the certificate gets its quote, encrypted.

# %% given="tls-demo"
secure = await start_server(DynamicBatcher(predict_fn, max_batch_size=32, batch_timeout_s=0.002),
                            tls=(TLS_KEY_PEM, TLS_CERT_PEM))
RUNNING.append(secure)
try:
    async with grpc.aio.insecure_channel(secure.target) as channel:
        error = await rpc_error(prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            predict_request(X_probe[:1]), timeout=5))
    print("plaintext client:", error.code().name, "|", error.details())

    async with tls_channel(secure.target, TLS_CERT_PEM) as channel:
        flight = pb.Flight(origin="EWR", carrier_code="UA", flight_number=1545, date="2013-01-01")
        quote = await quotes.pb2_grpc.QuoteServiceStub(channel).GetQuote(
            pb.QuoteRequest(flight=flight, payout_cents=PAYOUT_CENTS), timeout=5)
    print("client trusting the certificate:", quote)
finally:
    await secure.server.stop(0)
    await secure.batcher.stop()


# %% tests="test-tls-option" points=2
async def tls_predict(target, root_certificate_pem, rows):
    async with tls_channel(target, root_certificate_pem) as channel:
        return await prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            predict_request(rows), timeout=5)


tls_server = await start_server(DynamicBatcher(predict_fn, max_batch_size=32, batch_timeout_s=0.002),
                                tls=(TLS_KEY_PEM, TLS_CERT_PEM))
RUNNING.append(tls_server)
try:
    async with grpc.aio.insecure_channel(main.target) as channel:
        plain = await prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            predict_request(X_probe[:8]), timeout=5)
    try:
        secure_reply = await tls_predict(tls_server.target, TLS_CERT_PEM, X_probe[:8])
    except grpc.RpcError as error:
        raise AssertionError(
            f"A client trusting the certificate must be served over TLS, got {error.code()}: {error.details()} "
            "(section 7, start_server's tls option, and section 10, tls_channel)") from None
    np.testing.assert_allclose(
        tf.make_ndarray(secure_reply.outputs[SIGNATURE_OUTPUT]), tf.make_ndarray(plain.outputs[SIGNATURE_OUTPUT]),
        atol=1e-6, err_msg="Predict over TLS must return the same probabilities as over plaintext (sections 7 and 10)")
    assert secure_reply.model_spec == plain.model_spec, (
        f"The TLS server must answer with the same model_spec: {secure_reply.model_spec} vs {plain.model_spec} (sections 7 and 10)")

    async with grpc.aio.insecure_channel(tls_server.target) as channel:
        error = await rpc_error(prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            predict_request(X_probe[:1]), timeout=5))
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (
        f"A plaintext client against the TLS port must fail with UNAVAILABLE, got {error.code()}: "
        "bind with add_secure_port when tls is given (section 7, start_server)")
    ### BEGIN HIDDEN TESTS
    _, other_cert_pem = self_signed_certificate()
    try:
        await tls_predict(tls_server.target, other_cert_pem, X_probe[:1])
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (
            f"A client trusting a different certificate must fail the handshake with UNAVAILABLE, got {error.code()} (sections 7 and 10)")
    else:
        raise AssertionError("A client trusting a different certificate was served: tls_channel must trust "
                             "root_certificate_pem only (section 10)")
    async with tls_channel(tls_server.target, TLS_CERT_PEM) as channel:
        quote = await quotes.pb2_grpc.QuoteServiceStub(channel).GetQuote(
            pb.QuoteRequest(flight=pb.Flight(origin="JFK", carrier_code="AA", flight_number=1141, date="2013-01-01"),
                            payout_cents=15_000),
            timeout=5)
        status = (await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=QUOTE_SERVICE), timeout=5)).status
    assert quote.model_version == MODEL_LABEL and quote.payout_cents == 15_000, f"QuoteService over TLS: {quote} (sections 7 and 10)"
    assert status == health_pb2.HealthCheckResponse.SERVING, "Health checking must be served on the TLS port too (sections 7 and 10)"
    ### END HIDDEN TESTS
finally:
    await tls_server.server.stop(0)
    await tls_server.batcher.stop()
print("TLS OK: same prediction as plaintext; plaintext clients are refused")

# %% [markdown] given="insurance-pricing-text"
# ## 11. Lab 1's insurance service prices by the model
#
# Lab 1's service priced every quote with one flat probability, and left a hook for this
# lab: `create_app(..., price=...)` takes a **pricing function**, `price(flight_key) ->
# Pricing(probability, model_version)`, that the `POST /quotes` route calls before it stores
# the quote; the premium is `premium_cents(payout_cents, probability)` and the model version
# lands in the policy and in its audit trail. The module `insurance_service.py` next to this
# notebook is lab 1's service, generated from lab 1's solution for lab 2's container.
#
# The pricing function is a **gRPC client inside an HTTP service**, and it runs on the
# checkout's critical path, so three decisions matter:
#
# * **One channel, many calls.** A channel holds the HTTP/2 connection; opening one per quote
#   would add a connection set-up (and, with TLS, a handshake) to every checkout. Create it
#   once, with the retry policy of section 8 (a restarting replica is retried, within the
#   deadline), and close it when the service stops.
# * **A deadline on every call.** The checkout waits for the quote; a model server that is
#   slow must cost the customer `PRICING_TIMEOUT_S` at most, never an open-ended wait that
#   also holds one of the service's worker threads.
# * **No price is better than a wrong price.** When the model server is down or too slow,
#   the tempting fallback is the old flat probability. But a policy sold at a price nobody
#   computed is a liability that looks like revenue: the audit trail would say which model
#   priced it, and the answer would be "none, silently". So the quote fails, loudly and
#   retryably: `HTTPException(503, detail)` (FastAPI turns it into the HTTP answer, and no
#   policy is stored because the route raises before it writes), with a detail that says
#   the model server could not price the flight and names the gRPC status code, so that
#   whoever reads the log knows whether it was `UNAVAILABLE` (down) or `DEADLINE_EXCEEDED`
#   (slow). A checkout that gets `503` can retry or offer the cover later; lab 1's
#   readiness and an orchestrator's load balancing take care of the rest.
#
# Lab 1's routes are plain `def` functions that FastAPI runs in a thread pool, so the
# pricing function is synchronous: a `grpc.insecure_channel`, not `grpc.aio`. In this
# notebook the insurance service runs in a worker thread (`asyncio.to_thread`), so that the
# event loop stays free to serve the gRPC calls it makes.
#
# **Your task.** Write `GrpcPricing`: `GrpcPricing(target, timeout_s=PRICING_TIMEOUT_S)`
# opens one channel to `target` with retries enabled and `RETRY_SERVICE_CONFIG`; calling it
# with a `FlightKey` sends `GetQuote` for that flight (with `payout_cents=PAYOUT_CENTS`) with
# `timeout=timeout_s` and returns `Pricing(quote.delay_probability, quote.model_version)`; any
# `grpc.RpcError` becomes `HTTPException(503, ...)` as described above; `close()` closes the
# channel.

# %% given="insurance-service"
sys.path.insert(0, str(LAB_DIR))  # insurance_service.py ships next to this notebook
# Starlette 1.x prefers the package `httpx2` for its TestClient and warns when it falls back to
# `httpx`, which works the same: we silence that one warning (it would go to stderr).
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

import insurance_service
from fastapi import HTTPException
from fastapi.testclient import TestClient

from dlcloud.data import table_path

FlightKey, Pricing = insurance_service.FlightKey, insurance_service.Pricing
FLIGHTS_PATH = table_path("flights")  # lab 1's service reads the flights table itself
# The checkout's budget for pricing one quote: generous, for a notebook on a shared machine
# (a quote takes milliseconds here); a production budget follows from the page's (chapter 7).
PRICING_TIMEOUT_S = 1.0


async def load_insurance_flights() -> None:
    # Lab 1's service reads the flights table once per process, in a background thread, and
    # answers 503 while it loads (several seconds on 2 cores). Read it now, so that every app
    # below starts with it loaded; in a worker thread, so that the gRPC servers keep serving.
    await asyncio.to_thread(insurance_service.cached_flight_outcomes, str(FLIGHTS_PATH))
    await asyncio.to_thread(insurance_service.cached_departures, str(FLIGHTS_PATH))


started = time.perf_counter()
await load_insurance_flights()
print(f"lab 1's flight data loaded in {time.perf_counter() - started:.1f} s")


def insurance_quotes(price, db_path: Path, flights: list[dict]) -> list[tuple[int, dict]]:
    # Lab 1's service priced by `price`: POST /quotes for each flight, (status, answer) each.
    # Run it in a worker thread: it blocks, and the gRPC server needs the event loop meanwhile.
    with TestClient(insurance_service.create_app(db_path, FLIGHTS_PATH, price=price)) as client:
        answers = [client.post("/quotes", json=flight) for flight in flights]
    return [(answer.status_code, answer.json()) for answer in answers]


def count_policies(db_path: Path) -> int:
    # How many policies the service's database holds.
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        return connection.execute("SELECT count(*) FROM policies").fetchone()[0]


# %% solution="grpc-pricing"
class GrpcPricing:
    """Lab 1's pricing function, backed by the model server's QuoteService over gRPC."""

    def __init__(self, target: str, timeout_s: float = PRICING_TIMEOUT_S):
        ### BEGIN SOLUTION
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(RETRY_SERVICE_CONFIG)),
        ])
        self.stub = quotes.pb2_grpc.QuoteServiceStub(self.channel)
        ### END SOLUTION

    def __call__(self, key) -> Pricing:
        ### BEGIN SOLUTION
        flight = pb.Flight(carrier_code=key.carrier, flight_number=key.flight, date=key.date, origin=key.origin)
        try:
            quote = self.stub.GetQuote(pb.QuoteRequest(flight=flight, payout_cents=PAYOUT_CENTS),
                                       timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise HTTPException(503, f"The model server could not price {key.carrier} {key.flight} on {key.date} "
                                     f"({error.code().name}): no quote was made, try again shortly") from None
        return Pricing(quote.delay_probability, quote.model_version)
        ### END SOLUTION

    def close(self) -> None:
        ### BEGIN SOLUTION
        self.channel.close()
        ### END SOLUTION


# %% [markdown] given="insurance-demo-text"
# The insurance service, priced by the server `main`: a quote for UA 1545 on New Year's
# Day 2013, with the model's probability and version in the answer.

# %% given="insurance-demo"
UA_1545 = {"carrier": "UA", "flight": 1545, "date": "2013-01-01", "origin": "EWR"}
demo_pricing = GrpcPricing(main.target)
try:
    ((status, answer),) = await asyncio.to_thread(insurance_quotes, demo_pricing, WORK / "demo.db", [UA_1545])
finally:
    demo_pricing.close()
print(status, {name: answer.get(name) for name in ("id", "premium_cents", "payout_cents", "model_version", "state")})

# %% tests="test-insurance-service-prices-by-the-model" points=3
where = "section 11, GrpcPricing"
key = FlightKey("UA", 1545, "2013-01-01", "EWR")
p = float(predict_fn(FLIGHT_FEATURES.lookup(*key))[0, 0])
pricing_server = await start_server(DynamicBatcher(predict_fn, max_batch_size=32, batch_timeout_s=0.002))
RUNNING.append(pricing_server)
pricing = GrpcPricing(pricing_server.target)
db_path = WORK / "priced-by-the-model.db"
try:
    ((status, answer),) = await asyncio.to_thread(insurance_quotes, pricing, db_path, [key._asdict()])
    assert status == 201, f"With the model server up, the quote must succeed, got {status}: {answer} ({where})"
    assert answer["premium_cents"] == premium_cents(PAYOUT_CENTS, p), (
        f"The premium must be premium_cents(PAYOUT_CENTS, p) = {premium_cents(PAYOUT_CENTS, p)} for the model's "
        f"p = {p:.5f}, got {answer['premium_cents']}: price with the served model's probability ({where})")
    assert answer["model_version"] == MODEL_LABEL, (
        f"The policy must name the served model {MODEL_LABEL}, got {answer['model_version']!r} ({where})")
    trail = insurance_service.PolicyStore(db_path).audit_trail(answer["id"])
    assert [row["model_version"] for row in trail] == [MODEL_LABEL], (
        f"The quote's audit row must name the served model {MODEL_LABEL}, got {trail} ({where})")

    await stop_server(pricing_server, grace_s=1)  # the model server goes away
    before = count_policies(db_path)
    ((status, answer),) = await asyncio.to_thread(insurance_quotes, pricing, db_path, [key._asdict()])
    assert status == 503, (
        f"With the model server stopped the quote must fail with 503, never a silent fallback price: got {status} "
        f"{answer} ({where})")
    assert "UNAVAILABLE" in answer.get("detail", ""), (
        f"The 503's detail must name the gRPC status (UNAVAILABLE), got {answer} ({where})")
    assert count_policies(db_path) == before, (
        f"A quote the model could not price must store no policy: {before} before, "
        f"{count_policies(db_path)} after ({where})")
finally:
    pricing.close()
    await pricing_server.server.stop(0)
    await pricing_server.batcher.stop()
### BEGIN HIDDEN TESTS
def three_second_model(x):
    time.sleep(3.0)  # a model server that is up, but far too slow for a checkout
    return predict_fn(x)


slow_server = await start_server(DynamicBatcher(three_second_model, max_batch_size=32, batch_timeout_s=0.002))
RUNNING.append(slow_server)
slow_pricing = GrpcPricing(slow_server.target, timeout_s=0.5)
try:
    started = time.perf_counter()
    try:  # in a worker thread: a call that blocks the event loop would block the server it waits for
        await asyncio.wait_for(asyncio.to_thread(slow_pricing, key), 10)
    except HTTPException as error:
        waited = time.perf_counter() - started
        assert error.status_code == 503 and "DEADLINE_EXCEEDED" in str(error.detail), (
            f"A model server slower than the deadline must give 503 naming DEADLINE_EXCEEDED, got "
            f"{error.status_code} {error.detail!r} ({where})")
        assert waited < 2.5, (
            f"With timeout_s=0.5 the pricing call waited {waited:.1f} s for a 3 s model: pass timeout= on every "
            f"call, the deadline ({where})")
    else:
        raise AssertionError(f"A 3 s model behind a 0.5 s deadline priced the quote: set the call's deadline ({where})")
finally:
    slow_pricing.close()
    await slow_server.server.stop(0)
    await slow_server.batcher.stop()

fast_server = await start_server(DynamicBatcher(predict_fn, max_batch_size=32, batch_timeout_s=0.002))
RUNNING.append(fast_server)
direct = GrpcPricing(fast_server.target)
try:
    priced = await asyncio.to_thread(direct, FlightKey("AA", 1141, "2013-01-01", "JFK"))
    expected = float(predict_fn(FLIGHT_FEATURES.lookup("AA", 1141, "2013-01-01", "JFK"))[0, 0])
    assert isinstance(priced, Pricing) and abs(priced.probability - expected) < 1e-6 and priced.model_version == MODEL_LABEL, (
        f"GrpcPricing(key) must return Pricing(the model's probability, {MODEL_LABEL}), got {priced!r} ({where})")
finally:
    direct.close()
    await fast_server.server.stop(0)
    await fast_server.batcher.stop()
### END HIDDEN TESTS
print("lab 1's service prices by the served model; without it, quotes fail with 503")

# %% given="cleanup"
# Stop every server this notebook started (safe to run more than once).
for handle in RUNNING:
    with contextlib.suppress(Exception):
        await handle.server.stop(0)
    with contextlib.suppress(Exception):
        await handle.batcher.stop()
RUNNING.clear()
shutil.rmtree(WORK, ignore_errors=True)  # the scratch folder: generated code, certificates
print("all servers stopped, scratch folder removed")
