# ruff: noqa: F821, F704, E501, B904 - one notebook cell: names come from earlier cells
# Mistake: The distance check is `distance_miles > 0`: it refuses nan (every comparison with nan is False) but lets inf through, and the model prices it.
# Replaces: quote-service
# Loses points in: test-quote-service
# Message names: non-finite
MAX_DISTANCE_MILES = 6000        # New York to Honolulu is 4,983 miles
MAX_PAYOUT_CENTS = 1_000_000     # $10,000: the most the product pays for one flight


class QuoteService(quotes.pb2_grpc.QuoteServiceServicer):
    def __init__(self, batcher):
        self.batcher = batcher

    @staticmethod
    def _problem(request) -> str | None:
        ### BEGIN SOLUTION
        flight = request.flight
        if flight.origin not in ORIGINS:
            return f"flight.origin must be one of {', '.join(ORIGINS)}, got {clip(repr(flight.origin))}"
        if not 1 <= flight.month <= 12:
            return f"flight.month must be 1..12, got {flight.month}"
        if not 0 <= flight.hour <= 23:
            return f"flight.hour must be 0..23, got {flight.hour}"
        if not flight.distance_miles > 0:
            return (f"flight.distance_miles must be a finite number in (0, {MAX_DISTANCE_MILES}], "
                    f"got {flight.distance_miles}")
        if not 1 <= request.payout_cents <= MAX_PAYOUT_CENTS:
            return f"payout_cents must be 1..{MAX_PAYOUT_CENTS}, got {request.payout_cents}"
        return None
        ### END SOLUTION

    async def GetQuote(self, request, context):
        ### BEGIN SOLUTION
        problem = self._problem(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        f = request.flight
        probability = float((await predict_or_abort(
            self.batcher, featurize(f.month, f.hour, f.distance_miles, f.origin), context))[0])
        return quotes.pb2.Quote(delay_probability=probability,
                                premium_cents=premium_cents(probability, request.payout_cents),
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
        flights_ = [item.flight for item in request.requests]
        features = featurize([f.month for f in flights_], [f.hour for f in flights_],
                             [f.distance_miles for f in flights_], [f.origin for f in flights_])
        probabilities = await predict_or_abort(self.batcher, features, context)
        for item, probability in zip(request.requests, probabilities):
            yield quotes.pb2.Quote(delay_probability=float(probability),
                                   premium_cents=premium_cents(probability, item.payout_cents),
                                   payout_cents=item.payout_cents, model_version=MODEL_LABEL)
        ### END SOLUTION
