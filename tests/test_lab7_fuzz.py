"""A bounded mutation fuzzer against lab 7's reference server, on 127.0.0.1.

The server is the lab's own solution: its cells run in this process as a kernel would
(`lab7_support.LabSession`) up to the cell that starts `main`. The fuzzer builds
PredictRequest, GetModelMetadataRequest, QuoteRequest and QuoteBatchRequest messages from
the real protos, good ones first, then mutated the way an attacker or a buggy client
would: wrong and unknown dtypes, absurd and negative shapes, content that does not fill
the shape, non-finite numbers, huge strings, missing fields, flights that do not exist; and raw bytes (random, bit
flipped, truncated, oversized) sent past the stubs' serializers. Every reply must be OK
or a status that says what is wrong, never UNKNOWN (an exception that escaped a
handler) and never a hang; afterwards health and a good request must still answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time

import grpc
import numpy as np
import pytest
from lab7_support import LabSession

# Runs the lab's server and cells: make test, not the quick make check.
pytestmark = pytest.mark.slow

SEED = 20131
REQUESTS = 400          # a fixed number of fuzzed calls
CONCURRENCY = 8         # sent in waves, so the batcher sees concurrent bad and good rows
CALL_TIMEOUT_S = 5.0
TIME_BOUND_S = 90.0     # the whole campaign, on a loaded 2-core machine
PREDICT = "/tensorflow.serving.PredictionService/Predict"
METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
GET_QUOTE = "/dlcloud.quotes.v1.QuoteService/GetQuote"
STREAM_QUOTES = "/dlcloud.quotes.v1.QuoteService/StreamQuotes"

# What a request that is wrong may get. INTERNAL is only for bytes that do not parse as
# the method's message: grpc's own deserializer says so before any handler runs.
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}
UNPARSEABLE = REFUSALS | {grpc.StatusCode.INTERNAL}


@pytest.fixture(scope="module")
def lab():
    session = LabSession()
    try:
        session.run_until("stock-client")  # every cell up to and including server-start
        yield session
    finally:
        session.close()


class Fuzzer:
    """Random and mutated messages of the lab's real protos, from one seed."""

    def __init__(self, ns: dict, seed: int) -> None:
        self.ns, self.rng = ns, random.Random(seed)
        self.predict_pb2 = __import__("tensorflow_serving.apis.predict_pb2", fromlist=["x"])
        self.metadata_pb2 = __import__("tensorflow_serving.apis.get_model_metadata_pb2", fromlist=["x"])
        self.pb = ns["pb"]

    def text(self) -> str:
        choice = self.rng.randrange(6)
        if choice == 0:
            return ""
        if choice == 1:
            return "x" * self.rng.choice([1_000, 100_000])
        if choice == 2:
            return "".join(chr(self.rng.randrange(0x20, 0x2FFF)) for _ in range(self.rng.randrange(1, 40)))
        name = self.ns["MODEL_NAME"]
        return self.rng.choice([name, f"{name} ", name.upper(), "serving_default", "../etc/passwd", "%s%n", "\x00"])

    def good_predict(self):
        rows = self.rng.randrange(1, 9)
        features = np.asarray(self.ns["X_probe"][:rows], dtype=np.float32)
        return self.ns["predict_request"](features) if "predict_request" in self.ns else self._request(features)

    def _request(self, features):
        import tensorflow as tf

        request = self.predict_pb2.PredictRequest()
        request.model_spec.name = self.ns["MODEL_NAME"]
        request.inputs["features"].CopyFrom(tf.make_tensor_proto(features, dtype=tf.float32))
        return request

    def mutate_predict(self, request) -> None:
        rng, tensor = self.rng, request.inputs["features"]
        mutation = rng.randrange(14)
        if mutation == 0:
            tensor.dtype = rng.choice([0, 2, 3, 7, 9, 19, 101, 999, -5, 2**31 - 1])
        elif mutation == 1:
            del tensor.tensor_shape.dim[:]
            for _ in range(rng.randrange(0, 5)):
                tensor.tensor_shape.dim.add(size=rng.choice([0, 1, 6, -1, 7, 4097, 5_000_000, 2**40, 2**62]))
        elif mutation == 2:
            tensor.tensor_shape.dim[0].size = rng.choice([0, -1, 2, 4096, 4097, 5_000_000, 2**40])
        elif mutation == 3:
            tensor.ClearField("tensor_content")
            tensor.float_val.extend(rng.uniform(-1e6, 1e6) for _ in range(rng.randrange(0, 60)))
        elif mutation == 4:
            tensor.tensor_content = rng.randbytes(rng.choice([0, 1, 3, 23, 24, 25, 200, 4096]))
        elif mutation == 5:
            tensor.tensor_content = np.full(len(tensor.tensor_content) // 4, rng.choice(
                [math.nan, math.inf, -math.inf, 3.4e38]), dtype="<f4").tobytes()
        elif mutation == 6:
            tensor.tensor_shape.unknown_rank = True
        elif mutation == 7:
            tensor.double_val.extend([1.0] * 12)
        elif mutation == 8:
            request.model_spec.name = self.text()
        elif mutation == 9:
            request.model_spec.version.value = rng.choice([0, 1, 2, -1, 2**62])
        elif mutation == 10:
            request.model_spec.signature_name = self.text()
        elif mutation == 11:
            request.inputs[self.text() or "extra"].dtype = 1
        elif mutation == 12:
            del request.inputs["features"]
        else:
            tensor.string_val.extend([b"a" * rng.randrange(1, 1000)])

    def predict(self):
        request = self.good_predict()
        for _ in range(self.rng.randrange(0, 4)):
            if "features" not in request.inputs:
                break
            self.mutate_predict(request)
        return request

    def metadata(self):
        request = self.metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.rng.choice([self.ns["MODEL_NAME"], self.text()])
        request.metadata_field.extend(self.rng.choice([[], ["signature_def"], [self.text()], ["signature_def"] * 3]))
        return request

    def real_flight(self):
        """A flight that exists: a row of the server's quote-time feature table."""
        row = self.ns["QUOTE_FEATURES"].iloc[self.rng.randrange(len(self.ns["QUOTE_FEATURES"]))]
        return self.pb.Flight(origin=row["origin"], carrier_code=row["carrier"], flight_number=int(row["flight"]),
                              date=row["sched_dep"].strftime("%Y-%m-%d"))

    def quote(self):
        rng = self.rng
        flight = self.real_flight()
        for _ in range(rng.randrange(0, 3)):  # zero to two fields made wrong
            field = rng.choice(["origin", "carrier_code", "flight_number", "date"])
            bad = {"origin": ["BOS", "jfk", "", self.text()],
                   "carrier_code": ["ua", "UAL", "", "U", "\u00dcA", self.text()],
                   "flight_number": [0, -1, 10_000, 9999, 2**31 - 1, -(2**31)],
                   "date": ["2013-02-30", "2013-1-1", "2013-01-01T00:00", "", "9999-12-31", self.text()]}[field]
            setattr(flight, field, rng.choice(bad))
        request = self.pb.QuoteRequest(payout_cents=rng.choice([1, 20_000, 1_000_000, 1_000_001, 0, -1,
                                                                2**63 - 1, -(2**63)]))
        if rng.random() < 0.9:
            request.flight.CopyFrom(flight)
        return request

    def quote_batch(self):
        size = self.rng.choice([0, 1, 3, 10, 4097])
        one = self.quote()
        return self.pb.QuoteBatchRequest(requests=[one if size > 100 else self.quote() for _ in range(size)])

    def raw_bytes(self, good: bytes) -> bytes:
        rng, choice = self.rng, self.rng.randrange(5)
        if choice == 0:
            return rng.randbytes(rng.randrange(0, 300))
        if choice == 1:
            flipped = bytearray(good)
            for _ in range(rng.randrange(1, 6)):
                if flipped:
                    flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            return bytes(flipped)
        if choice == 2:
            return good[:rng.randrange(len(good) + 1)]
        if choice == 3:
            return good + rng.randbytes(rng.randrange(1, 50))
        return b"\x0a" + b"\xff" * 10  # a length prefix that overflows


async def fuzz_call(channel, fuzzer: Fuzzer) -> tuple[str, grpc.StatusCode, str, object]:
    """One fuzzed call: (what was sent, status, details, reply)."""
    kind = fuzzer.rng.choice(["predict", "predict", "predict", "metadata", "quote", "batch", "raw", "huge"])
    if kind == "raw":
        method = fuzzer.rng.choice([PREDICT, METADATA, GET_QUOTE, STREAM_QUOTES])
        payload = fuzzer.raw_bytes(fuzzer.good_predict().SerializeToString())
        call = (channel.unary_stream if method == STREAM_QUOTES else channel.unary_unary)(method)
    elif kind == "huge":  # over the server's receive limit
        method, payload = PREDICT, b"\x0a\x00" + fuzzer.rng.randbytes(2 << 20)
        call = channel.unary_unary(method)
    else:
        message = {"predict": fuzzer.predict, "metadata": fuzzer.metadata, "quote": fuzzer.quote,
                   "batch": fuzzer.quote_batch}[kind]()
        method = {"predict": PREDICT, "metadata": METADATA, "quote": GET_QUOTE, "batch": STREAM_QUOTES}[kind]
        payload = message.SerializeToString()
        call = (channel.unary_stream if kind == "batch" else channel.unary_unary)(method)
    label = f"{kind} {method} ({len(payload)} bytes)"
    try:
        if method == STREAM_QUOTES:
            reply = [item async for item in call(payload, timeout=CALL_TIMEOUT_S)]
        else:
            reply = await call(payload, timeout=CALL_TIMEOUT_S)
        return label, grpc.StatusCode.OK, "", reply
    except grpc.RpcError as error:
        return label, error.code(), error.details() or "", None


def check_reply(ns: dict, label: str, code, details: str, reply) -> str | None:
    """What is wrong with one reply, or None."""
    allowed = UNPARSEABLE if label.startswith(("raw", "huge")) else REFUSALS
    if code != grpc.StatusCode.OK:
        if code not in allowed:
            return f"{label}: {code.name} {details[:200]!r}"
        if len(details) > 1000:
            return f"{label}: {code.name} with {len(details)} characters of details (clip what the client sent)"
        return None
    if label.startswith("quote"):
        quote = ns["pb"].Quote.FromString(reply)
        if not 0 <= quote.premium_cents <= 1.25 * quote.payout_cents + 1 or quote.payout_cents <= 0:
            return f"{label}: answered an implausible quote {quote}"
    if label.startswith("batch"):
        for item in reply:
            quote = ns["pb"].Quote.FromString(item)
            if not 0 <= quote.premium_cents <= 1.25 * quote.payout_cents + 1:
                return f"{label}: streamed an implausible quote {quote}"
    return None


async def campaign(ns: dict, target: str) -> tuple[list[str], dict, float]:
    fuzzer = Fuzzer(ns, SEED)
    problems, counts = [], {}
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(target) as channel:
        for _ in range(REQUESTS // CONCURRENCY):
            wave = await asyncio.gather(*(fuzz_call(channel, fuzzer) for _ in range(CONCURRENCY)))
            for label, code, details, reply in wave:
                counts[code.name] = counts.get(code.name, 0) + 1
                problem = check_reply(ns, label, code, details, reply)
                if problem:
                    problems.append(problem)
            if time.perf_counter() - started > TIME_BOUND_S:
                problems.append(f"the campaign ran past its {TIME_BOUND_S:.0f} s bound")
                break
    return problems, counts, time.perf_counter() - started


async def still_serving(ns: dict, target: str) -> None:
    import tensorflow as tf
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        status = (await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, (
            f"After the fuzz campaign health says {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""),
                                                          timeout=CALL_TIMEOUT_S)
        first = await watch.read()  # a streaming handler behind the server's interceptor
        watch.cancel()
        assert first.status == health_pb2.HealthCheckResponse.SERVING, f"Health Watch answered {first}"
        reply = await prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            ns["predict_request"](ns["X_probe"][:5]), timeout=CALL_TIMEOUT_S)
        np.testing.assert_allclose(tf.make_ndarray(reply.outputs["output_0"])[:, 0], ns["expected_probe"][:5],
                                   atol=1e-5, err_msg="After the fuzz campaign a good Predict must be answered right")
        quote = await ns["quotes"].pb2_grpc.QuoteServiceStub(channel).GetQuote(
            ns["pb"].QuoteRequest(flight=ns["pb"].Flight(origin="EWR", carrier_code="UA", flight_number=1545,
                                                         date="2013-01-01"),
                                  payout_cents=20_000), timeout=CALL_TIMEOUT_S)
        assert quote.payout_cents == 20_000 and 0 < quote.premium_cents < 25_000, (
            f"After the fuzz campaign a good GetQuote must be answered: {quote}")


class ErrorRecords(logging.Handler):
    """The ERROR records of a logger, kept while the campaign runs."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_every_fuzzed_request_gets_a_clear_status(lab):
    ns = lab.namespace
    lab.run_cell("stock-client")  # predict_request and rpc_error, as the lab defines them
    target = ns["main"].target
    errors, grpc_logger = ErrorRecords(), logging.getLogger("grpc")
    grpc_logger.addHandler(errors)
    try:
        problems, counts, took = lab.loop.run_until_complete(campaign(ns, target))
    finally:
        grpc_logger.removeHandler(errors)
    # grpc.aio logs "Unexpected [...] raised by servicer method" when a handler lets an exception out
    escaped = [record.getMessage()[:200] for record in errors.records]
    assert not escaped, f"{len(escaped)} exceptions escaped the server's handlers: {escaped[:5]}"
    print("statuses:", counts)
    assert not problems, f"{len(problems)} of {REQUESTS} fuzzed calls were answered badly:\n" + "\n".join(problems[:20])
    assert counts.get("OK", 0) > 0 and counts.get("INVALID_ARGUMENT", 0) > 0, (
        f"The fuzzer should produce both good and refused requests, got {counts}")
    assert took < TIME_BOUND_S, f"The campaign took {took:.0f} s, over its bound of {TIME_BOUND_S:.0f} s"
    lab.loop.run_until_complete(still_serving(ns, target))
