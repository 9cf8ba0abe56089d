# ruff: noqa: F821, F704, E501, B904 - one notebook cell: names come from earlier cells
# Mistake: The model is called directly in _run, on the event loop: simpler, and fast for one row, but while a batch computes the server answers nothing, health checks included.
# Replaces: dynamic-batcher
# Loses points in: test-batcher-groups-requests
# Message names: off the event loop
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
            outputs = np.asarray(self.predict_fn(features))
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
