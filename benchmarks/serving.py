"""Serving benchmark for chapter 7 / lab 7: what a gRPC server costs, and what batching buys.

Prints one table (no assertions), all ratios measured in the same run:

* serving overhead: one gRPC ``Predict`` round trip against calling the SavedModel's
  signature directly, on the same batch (1 row and 32 rows);
* gRPC (TensorFlow Serving's ``PredictionService``) against a REST baseline (FastAPI +
  uvicorn, TensorFlow Serving's JSON format), one row per request;
* dynamic batching on (up to 32 rows, 2 ms or ``--batch-timeout-ms``, waiting only when
  others are queued) against
  off (``max_batch_size=1``), measured in interleaved slices so that drift on a shared
  machine falls on both alike.

The servers run in a child process with their own event loop, the load generator in
this one, so client and server each get a core of a 2-core machine. The model is the one
lab 7 serves: the course's shipped SavedModel (``dlcloud.features.model_dir() / "1"``,
12 float32 features in, ``output_0`` [batch, 1] out). The load average is printed with
the table: on a shared machine it says how much the figures can be trusted.

    .venv/bin/python benchmarks/serving.py            # about a minute on 2 cores
    .venv/bin/python benchmarks/serving.py --quick    # fewer requests
"""

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import socket
import time
from pathlib import Path

# TensorFlow logs "failed call to cuInit" as an error on a machine without a GPU: noise here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

N_FEATURES = 12   # dlcloud.features.FEATURES
MODEL_NAME = "pays_out"  # dlcloud.features.MODEL_NAME
OUTPUT = "output_0"  # the serving_default signature's output
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


def load_predict_fn(export_dir: Path):
    import tensorflow as tf

    signature = tf.saved_model.load(str(export_dir)).signatures["serving_default"]

    def predict(features):
        return signature(features=tf.constant(features))[OUTPUT].numpy()

    return predict


# ----------------------------------------------------------------------------- server side
class Batcher:
    """The lab's dynamic batcher, reduced to what the benchmark needs.

    It waits for company only under load: a request that finds the queue empty runs at
    once (so a lone caller pays nothing for batching); one that finds others waiting (they
    queued while the model ran) collects until the batch is full or the timeout passes.
    The model runs in a worker thread, off the event loop, as in the lab.
    """

    def __init__(self, predict_fn, max_batch_size: int, batch_timeout_s: float):
        self.predict_fn, self.max_batch_size, self.batch_timeout_s = (
            predict_fn, max_batch_size, batch_timeout_s)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batches = self.rows = 0

    async def predict(self, rows):
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((rows, future))
        return await future

    async def collect(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        await asyncio.sleep(0)  # let handlers that are already runnable enqueue first
        company = not self.queue.empty()
        n = len(batch[0][0])
        deadline = loop.time() + self.batch_timeout_s
        while n < self.max_batch_size:
            if not self.queue.empty():
                item = self.queue.get_nowait()
            elif not company or (remaining := deadline - loop.time()) <= 0:
                break
            else:
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            batch.append(item)
            n += len(item[0])
        return batch

    async def run(self):
        import numpy as np

        while True:
            live = [(r, f) for r, f in await self.collect() if not f.cancelled()]
            if not live:
                continue
            try:
                outputs = await asyncio.to_thread(
                    self.predict_fn, np.concatenate([r for r, _ in live]))
            except Exception as error:  # a failed batch fails its callers, not the batcher
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            self.rows += len(outputs)
            start = 0
            for rows, future in live:
                if not future.done():
                    future.set_result(outputs[start:start + len(rows)])
                start += len(rows)


def _server_main(export_dir: str, ports: dict, ready, batch_timeout_s: float) -> None:
    import grpc
    import numpy as np
    import tensorflow as tf
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    configure_tensorflow()
    predict_fn = load_predict_fn(Path(export_dir))
    batchers = {"on": Batcher(predict_fn, 32, batch_timeout_s), "off": Batcher(predict_fn, 1, 0.0)}

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
            response.outputs[OUTPUT].CopyFrom(
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

    latencies = []

    async def worker():
        for _ in range(requests_per_worker):
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return summary(latencies, wall)


def summary(latencies: list[float], wall: float) -> dict:
    import numpy as np

    ms = np.asarray(latencies) * 1000
    return {"rps": len(ms) / wall, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "latencies": latencies, "wall": wall}


async def interleaved(calls: dict, concurrency: int, requests_per_worker: int,
                      rounds: int = 4) -> dict:
    """Each call's load test in `rounds` slices, alternating which goes first, pooled.

    A shared machine drifts (other jobs start and stop); running the set-ups one after the
    other would charge that drift to whichever ran in the slower minute.
    """
    pooled = {name: ([], 0.0) for name in calls}
    per_round = max(1, requests_per_worker // rounds)
    for round_ in range(rounds):
        order = list(calls) if round_ % 2 == 0 else list(reversed(calls))
        for name in order:
            part = await load_test(calls[name], concurrency, per_round)
            latencies, wall = pooled[name]
            pooled[name] = (latencies + part["latencies"], wall + part["wall"])
    return {name: summary(latencies, wall) for name, (latencies, wall) in pooled.items()}


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
            measured = await interleaved(
                {"on": grpc_call("on", batches[1]), "off": grpc_call("off", batches[1])},
                c, per_worker[c])
            stats_after = (await http.get(f"http://{LOOPBACK}:{ports['rest']}/stats")).json()
            on, off = measured["on"], measured["off"]
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
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0,
                        help="the batcher's wait for company under load (default 2, as in the lab)")
    args = parser.parse_args()

    from dlcloud.features import model_dir

    export_dir = model_dir() / "1"
    configure_tensorflow()
    ports = {"on": free_port(), "off": free_port(), "rest": free_port()}
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=_server_main, args=(str(export_dir), ports, ready, args.batch_timeout_ms / 1000),
                         daemon=True)
    server.start()
    load_before = os.getloadavg()[0]
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
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(f"\nServing benchmark of {MODEL_NAME}/1 ({os.cpu_count()} CPUs, {load}; batch timeout "
          f"{args.batch_timeout_ms:g} ms; {took:.0f} s of load; "
          "server and client in separate processes)\n")
    for name, detail, ratio in table:
        print(f"{name:<{width}}  {ratio:<45}  {detail}")


if __name__ == "__main__":
    main()
