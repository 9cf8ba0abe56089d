# ruff: noqa: F821, F704, E501, B904 - one notebook cell: names come from earlier cells
# Mistake: The retry policy retries every error that looked transient in testing, INVALID_ARGUMENT and INTERNAL included: a request that is wrong is sent four times.
# Replaces: client-deadlines-retries
# Loses points in: test-deadline-and-retries
# Message names: INVALID_ARGUMENT must not be retried
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
            "retryableStatusCodes": ["UNAVAILABLE", "INTERNAL", "INVALID_ARGUMENT"],
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
