"""Batches prepared ahead of the step: a background producer filling a bounded queue.

``Prefetcher(make, first, last, depth)`` calls ``make(it)`` for ``it = first, first + 1, ...,
last - 1`` on one daemon thread and keeps at most ``depth`` finished items waiting, so the host
decodes and augments batch ``it + 1`` while the device runs step ``it``. Items come out strictly
in iteration order, and ``make`` is the only thing the thread runs, so when ``make(it)`` is a pure
function of ``it`` (``BatchStream``: seed, stream and shard) the consumer sees exactly what a
serial loop would, whatever the depth: resume, sharding and gradient accumulation stay exact.

The producer stops cleanly: an exception in ``make`` is handed to the consumer and re-raised by
:meth:`get` (with the original traceback); :meth:`close` (also on ``with`` exit, KeyboardInterrupt
included) signals the thread, drains the queue so a blocked ``put`` returns, joins it, and then
calls ``cleanup`` (the trainer closes its batch generators there, stopping their decode threads).
``depth=0`` runs ``make`` inline on the caller's thread (no thread at all; for debugging).
"""
import queue
import threading

_POLL_SECONDS = 0.1  # how often a blocked producer or consumer re-checks for shutdown


class PrefetchClosed(RuntimeError):
    """:meth:`Prefetcher.get` after :meth:`Prefetcher.close`, or past ``last``."""


class Prefetcher:
    def __init__(self, make, first, last, depth=2, name="prefetch", cleanup=None):
        if depth < 0:
            raise ValueError(f"data.prefetch must be >= 0 (batches prepared ahead; 0 = none), got {depth}")
        self.make, self.next_it, self.last, self.depth = make, first, last, int(depth)
        self.cleanup = cleanup  # called once by close() when the producer has stopped (e.g. closes generators)
        self._stop = threading.Event()
        self._thread = None
        if self.depth > 0 and first < last:
            self._queue = queue.Queue(maxsize=self.depth)
            self._thread = threading.Thread(target=self._produce, args=(first,), name=name, daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ producer thread
    def _produce(self, first):
        for it in range(first, self.last):
            if self._stop.is_set():
                return
            try:
                item = (it, self.make(it), None)
            except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
                self._put((it, None, err))
                return
            if not self._put(item):
                return

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    # ------------------------------------------------------------------ consumer side
    def get(self):
        """The item of the next iteration (blocks until the producer has it)."""
        if self._stop.is_set() or self.next_it >= self.last:
            raise PrefetchClosed(f"no batch for iteration {self.next_it}: the prefetcher is closed or past "
                                 f"iteration {self.last - 1}")
        it = self.next_it
        if self._thread is None:
            item = self.make(it)
        else:
            while True:
                try:
                    got_it, item, err = self._queue.get(timeout=_POLL_SECONDS)
                    break
                except queue.Empty:
                    if not self._thread.is_alive() and self._queue.empty():
                        raise PrefetchClosed(f"the batch producer stopped before iteration {it}") from None
            if err is not None:
                self.close()
                raise err
            assert got_it == it, (got_it, it)  # one producer, FIFO queue: cannot happen
        self.next_it = it + 1
        return item

    def close(self, timeout=10.0):
        """Stop the producer and wait for it; returns True when no thread is left running."""
        self._stop.set()
        if self._thread is None:
            self._clean()
            return True
        while self._thread.is_alive():
            try:  # unblock a producer waiting on a full queue
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(min(_POLL_SECONDS, timeout))
            timeout -= _POLL_SECONDS
            if timeout <= 0:
                break
        if self._thread.is_alive():
            return False  # stuck inside make(): the daemon thread is left to exit with the process
        self._clean()
        return True

    def _clean(self):
        cleanup, self.cleanup = self.cleanup, None
        if cleanup is not None:
            cleanup()

    @property
    def alive(self):
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
