# ruff: noqa: F821, F704, E501, B904 - one notebook cell: names come from earlier cells
# Mistake: start_server sets health to SERVING once and never watches the batcher: when the worker ends, health still says SERVING while every Predict fails.
# Replaces: server-lifecycle
# Loses points in: test-health-and-reflection
# Message names: NOT_SERVING
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
