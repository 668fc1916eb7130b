"""Micro-batching: concurrent requests scored together in one network pass.

Requests put their job on a bounded queue and wait for it. One worker takes
the first job, gathers the jobs that arrive within ``max_wait_ms`` (up to
``max_batch_images`` images in all) and runs them in one call, in a thread, so
that the event loop keeps answering. The model runs one batch at a time: on
a CPU the network already uses every core.
"""

import asyncio
import time


class QueueFull(Exception):
    """The queue of waiting requests is full: answer 503 and try later."""


class MicroBatcher:
    """Gather jobs into batches and run them with ``run(model, jobs)``.

    Parameters
    ----------
    run : callable
        ``run(jobs)`` scores a list of jobs in place (in a worker thread).
    size_of : callable
        The number of images (rows) of a job.
    max_batch_images : int
        A batch stops growing at this many images.
    max_wait_ms : float
        How long the first job of a batch waits for company.
    max_queue : int
        Jobs waiting at most; beyond, :meth:`submit` raises :class:`QueueFull`.
    on_batch : callable or None
        ``on_batch(n_images, seconds)`` after each batch (metrics).
    """

    def __init__(self, run, size_of, *, max_batch_images=16, max_wait_ms=5.0,
                 max_queue=256, on_batch=None):
        self.run = run
        self.size_of = size_of
        self.max_batch_images = max_batch_images
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.queue = asyncio.Queue(max_queue)
        self.worker = None

    def start(self):
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self):
        """Finish the queued jobs, then stop the worker."""
        if self.worker is None:
            return
        await self.queue.join()
        self.worker.cancel()
        try:
            await self.worker
        except asyncio.CancelledError:
            pass
        self.worker = None

    async def submit(self, job):
        """Queue `job` and wait until a batch has run it; its exception, if any,
        is raised here."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((job, future))
        except asyncio.QueueFull:
            raise QueueFull(
                f"{self.queue.maxsize} requests are already waiting") from None
        return await future

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            n_images = self.size_of(batch[0][0])
            deadline = loop.time() + self.max_wait
            while n_images < self.max_batch_images:
                timeout = deadline - loop.time()
                try:
                    item = (self.queue.get_nowait() if timeout <= 0 else
                            await asyncio.wait_for(self.queue.get(), timeout))
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                batch.append(item)
                n_images += self.size_of(item[0])
            live = [(job, future) for job, future in batch if not future.done()]
            if live:
                await self._run(live)
            for _ in batch:
                self.queue.task_done()

    async def _run(self, live):
        jobs = [job for job, _ in live]
        start = time.perf_counter()
        try:
            await asyncio.to_thread(self.run, jobs)
        except Exception as exc:
            if len(live) > 1:
                # One job's fault must not fail its neighbours: run them alone.
                for item in live:
                    item[0].results.clear()
                    await self._run([item])
                return
            if not live[0][1].done():
                live[0][1].set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(sum(map(self.size_of, jobs)), time.perf_counter() - start)
        for job, future in live:
            if not future.done():
                future.set_result(job)
