"""Serving benchmark for chapter 7 / lab 7: what a gRPC server costs, and what batching buys.

Prints one table (no assertions), all ratios measured in the same run:

* serving overhead: one gRPC ``Predict`` round trip against calling the SavedModel's
  signature directly, on the same batch (1 row and 32 rows);
* gRPC (TensorFlow Serving's ``PredictionService``) against a REST baseline (FastAPI +
  uvicorn, TensorFlow Serving's JSON format), one row per request;
* dynamic batching on (up to 32 rows, 2 ms) against off (``max_batch_size=1``).

The servers run in a child process with their own event loop, the load generator in
this one, so client and server each get a core of a 2-core machine. The model has the
lab's shape (6 inputs, 16 hidden units, 1 sigmoid output) with untrained weights: the
serving costs do not depend on the weights.

    .venv/bin/python benchmarks/serving.py            # about a minute on 2 cores
    .venv/bin/python benchmarks/serving.py --quick    # fewer requests
"""

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import socket
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

N_FEATURES = 6
MODEL_NAME = "flight_delay"
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def configure_tensorflow() -> None:
    """One thread per op: the benchmark machine has 2 cores for client and server."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def export_model(export_dir: Path) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(7)
    model = keras.Sequential([
        keras.Input((N_FEATURES,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])

    @tf.function(input_signature=[tf.TensorSpec([None, N_FEATURES], tf.float32, name="features")])
    def serve(features):
        return {"delay_probability": model(features, training=False)[:, 0]}

    tf.saved_model.save(model, str(export_dir), signatures={"serving_default": serve})


def load_predict_fn(export_dir: Path):
    import tensorflow as tf

    signature = tf.saved_model.load(str(export_dir)).signatures["serving_default"]

    def predict(features):
        return signature(features=tf.constant(features))["delay_probability"].numpy()

    return predict


# ----------------------------------------------------------------------------- server side
class Batcher:
    """The lab's dynamic batcher, reduced to what the benchmark needs."""

    def __init__(self, predict_fn, max_batch_size: int, batch_timeout_s: float):
        self.predict_fn, self.max_batch_size, self.batch_timeout_s = (
            predict_fn, max_batch_size, batch_timeout_s)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batches = self.rows = 0

    async def predict(self, rows):
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((rows, future))
        return await future

    async def run(self):
        import numpy as np

        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            n = len(batch[0][0])
            deadline = loop.time() + self.batch_timeout_s
            while n < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
                batch.append(item)
                n += len(item[0])
            live = [(r, f) for r, f in batch if not f.cancelled()]
            if not live:
                continue
            outputs = self.predict_fn(np.concatenate([r for r, _ in live]))
            self.batches += 1
            self.rows += len(outputs)
            start = 0
            for rows, future in live:
                if not future.done():
                    future.set_result(outputs[start:start + len(rows)])
                start += len(rows)


def _server_main(export_dir: str, ports: dict, ready) -> None:
    import grpc
    import numpy as np
    import tensorflow as tf
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    configure_tensorflow()
    predict_fn = load_predict_fn(Path(export_dir))
    batchers = {"on": Batcher(predict_fn, 32, 0.002), "off": Batcher(predict_fn, 1, 0.0)}

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        def __init__(self, batcher):
            self.batcher = batcher

        async def Predict(self, request, context):
            if request.model_spec.name != MODEL_NAME:
                wanted = f"Latest({request.model_spec.name})"
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    f"Servable not found for request: {wanted}")
            features = tf.make_ndarray(request.inputs["features"]).astype(np.float32)
            response = predict_pb2.PredictResponse()
            response.outputs["delay_probability"].CopyFrom(
                tf.make_tensor_proto(await self.batcher.predict(features)))
            return response

    class Body(BaseModel):
        instances: list[list[float]]

    app = FastAPI()

    @app.post(f"/v1/models/{MODEL_NAME}:predict")
    async def rest_predict(body: Body):
        return {"predictions": predict_fn(np.asarray(body.instances, dtype=np.float32)).tolist()}

    @app.get("/stats")
    async def stats():
        return {name: {"batches": b.batches, "rows": b.rows} for name, b in batchers.items()}

    class Quiet(uvicorn.Server):
        def capture_signals(self):
            return contextlib.nullcontext()

    async def main():
        servers = []
        for name, batcher in batchers.items():
            server = grpc.aio.server()
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
                Prediction(batcher), server)
            server.add_insecure_port(f"{LOOPBACK}:{ports[name]}")
            await server.start()
            servers.append(server)
            asyncio.create_task(batcher.run())
        rest = Quiet(uvicorn.Config(app, host=LOOPBACK, port=ports["rest"], log_level="warning",
                                    lifespan="off"))
        rest_task = asyncio.create_task(rest.serve())
        while not rest.started:
            await asyncio.sleep(0.02)
        ready.set()
        await rest_task  # until the parent terminates us

    asyncio.run(main())


# ----------------------------------------------------------------------------- client side
async def load_test(call, concurrency: int, requests_per_worker: int) -> dict:
    import numpy as np

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
    return {"rps": len(ms) / wall, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99))}


def time_direct(predict_fn, rows, repeats: int) -> float:
    predict_fn(rows)
    started = time.perf_counter()
    for _ in range(repeats):
        predict_fn(rows)
    return (time.perf_counter() - started) / repeats * 1000


async def measure(export_dir: Path, ports: dict, quick: bool) -> list[tuple[str, str, str]]:
    import grpc
    import httpx
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    scale = 0.25 if quick else 1.0
    per_worker = {1: int(400 * scale), 8: int(60 * scale), 32: int(30 * scale)}
    rng = np.random.default_rng(0)
    batches = {n: rng.normal(size=(n, N_FEATURES)).astype(np.float32) for n in (1, 32)}
    predict_fn = load_predict_fn(export_dir)
    table = []

    def request_for(rows):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL_NAME
        request.inputs["features"].CopyFrom(tf.make_tensor_proto(rows))
        return request

    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{ports['on']}") as on_ch, \
            grpc.aio.insecure_channel(f"{LOOPBACK}:{ports['off']}") as off_ch, \
            httpx.AsyncClient(timeout=10) as http:
        stubs = {"on": prediction_service_pb2_grpc.PredictionServiceStub(on_ch),
                 "off": prediction_service_pb2_grpc.PredictionServiceStub(off_ch)}
        url = f"http://{LOOPBACK}:{ports['rest']}/v1/models/{MODEL_NAME}:predict"

        def grpc_call(which, rows):
            request = request_for(rows)

            async def call():
                await stubs[which].Predict(request, timeout=10)
            return call

        def rest_call(rows):
            body = {"instances": rows.tolist()}

            async def call():
                (await http.post(url, json=body)).raise_for_status()
            return call

        one_row = batches[1]
        for call in (grpc_call("on", one_row), grpc_call("off", one_row), rest_call(one_row)):
            await load_test(call, 4, 20)  # warm-up

        # 1. Serving overhead at concurrency 1, same batch, batching off (no batch wait).
        for n, rows in batches.items():
            direct_ms = time_direct(predict_fn, rows, per_worker[1])
            served = await load_test(grpc_call("off", rows), 1, per_worker[1])
            table.append((f"overhead, {n:>2} rows/request",
                          f"direct {direct_ms:.2f} ms, gRPC p50 {served['p50']:.2f} ms",
                          f"gRPC/direct = {served['p50'] / direct_ms:.1f}x"))

        # 2. gRPC against REST, one row per request, no batching on either side.
        for c in (1, 8):
            g = await load_test(grpc_call("off", batches[1]), c, per_worker[c])
            r = await load_test(rest_call(batches[1]), c, per_worker[c])
            table.append((f"gRPC vs REST, concurrency {c}",
                          f"gRPC {g['rps']:.0f} rps p50 {g['p50']:.2f} ms; "
                          f"REST {r['rps']:.0f} rps p50 {r['p50']:.2f} ms",
                          f"throughput gRPC/REST = {g['rps'] / r['rps']:.2f}x"))

        # 3. Batching on against off, one row per request.
        for c in (1, 8, 32):
            stats_before = (await http.get(f"http://{LOOPBACK}:{ports['rest']}/stats")).json()
            on = await load_test(grpc_call("on", batches[1]), c, per_worker[c])
            stats_after = (await http.get(f"http://{LOOPBACK}:{ports['rest']}/stats")).json()
            off = await load_test(grpc_call("off", batches[1]), c, per_worker[c])
            rows_run = stats_after["on"]["rows"] - stats_before["on"]["rows"]
            batches_run = stats_after["on"]["batches"] - stats_before["on"]["batches"]
            table.append((f"batching on vs off, concurrency {c:>2}",
                          f"on {on['rps']:.0f} rps p99 {on['p99']:.1f} ms "
                          f"(mean batch {rows_run / batches_run:.1f}); "
                          f"off {off['rps']:.0f} rps p99 {off['p99']:.1f} ms",
                          f"throughput on/off = {on['rps'] / off['rps']:.2f}x, "
                          f"p99 on/off = {on['p99'] / off['p99']:.2f}x"))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the requests")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        export_dir = Path(tmp) / MODEL_NAME / "1"
        configure_tensorflow()
        export_model(export_dir)
        ports = {"on": free_port(), "off": free_port(), "rest": free_port()}
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        server = ctx.Process(target=_server_main, args=(str(export_dir), ports, ready), daemon=True)
        server.start()
        try:
            if not ready.wait(120):
                raise TimeoutError("the server process did not start within 120 s")
            started = time.perf_counter()
            table = asyncio.run(measure(export_dir, ports, args.quick))
            took = time.perf_counter() - started
        finally:
            server.terminate()
            server.join(10)

    width = max(len(row[0]) for row in table)
    print(f"\nServing benchmark ({os.cpu_count()} CPUs, {took:.0f} s of load; server and client in "
          "separate processes)\n")
    for name, detail, ratio in table:
        print(f"{name:<{width}}  {ratio:<45}  {detail}")


if __name__ == "__main__":
    main()
