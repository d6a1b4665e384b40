"""batching.py
===========

Batching across studies in a process that scores several at once (the daemon with more than
one worker): :class:`SharedScorer` owns the backbone in one scoring thread; callers submit the
images of a study and wait. The thread takes every request that arrives within ``wait_s`` of
the first (up to ``max_requests``, same detector) and scores them in one
:meth:`~sonoshot.model.detector.Detector.score_images` call, so the frames of all of them share
the backbone's batches, and only one team of torch threads runs however many workers there
are. A lone study waits at most ``wait_s``. An error raised by one request's images (its
decoding) fails that request only; an error of the model fails the requests scored with it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from sonoshot.model.detector import Detector, ImageScore
from sonoshot.model.inputs import InputImage


@dataclass(eq=False)
class _Request:
    detector: Detector
    images: Iterable[InputImage]
    done: threading.Event = field(default_factory=threading.Event)
    count: int = 0  # images this request contributed to the batch
    scores: list[ImageScore] = field(default_factory=list)
    error: BaseException | None = None

    def read(self) -> Iterator[InputImage]:
        try:
            for image in self.images:
                self.count += 1
                yield image
        except Exception as exc:  # noqa: BLE001 - raised again in the caller
            self.error = exc


class SharedScorer:
    """One scoring thread for many callers; see the module docstring.

    Raises
    ------
    ValueError
        If ``wait_s`` is negative or ``max_requests`` below 1.
    """

    def __init__(self, wait_s: float = 0.05, max_requests: int = 16) -> None:
        if wait_s < 0:
            raise ValueError(f'Argument "wait_s" must be 0 or more, got {wait_s}.')
        if max_requests < 1:
            raise ValueError(f'Argument "max_requests" must be at least 1, got {max_requests}.')
        self.wait_s = wait_s
        self.max_requests = max_requests
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._held: list[_Request] = []  # taken from the queue for a later batch
        self._thread = threading.Thread(target=self._run, name="shared-scorer", daemon=True)
        self._thread.start()

    def score(self, detector: Detector, images: Iterable[InputImage]) -> list[ImageScore]:
        """Score ``images`` (possibly lazy) with ``detector``, in a batch shared with other
        callers; blocks until done.

        Raises
        ------
        Exception
            Whatever iterating ``images`` or scoring raised.
        """
        request = _Request(detector, images)
        self._requests.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.scores

    def close(self) -> None:
        """Finish the requests in hand and stop the thread."""
        self._requests.put(None)
        self._thread.join()

    def _next_batch(self) -> list[_Request] | None:
        """The oldest request and those that arrive within ``wait_s`` (same detector); None
        once closed and nothing is left."""
        first = self._held.pop(0) if self._held else self._requests.get()
        if first is None:
            return None
        batch = [first, *[r for r in self._held if r.detector is first.detector]]
        batch = batch[:self.max_requests]
        self._held = [r for r in self._held if r not in batch]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_requests:
            remaining = deadline - time.monotonic()
            try:
                more = (self._requests.get(timeout=remaining) if remaining > 0
                        else self._requests.get_nowait())
            except queue.Empty:
                break
            if more is None:
                self._requests.put(None)  # close once the held requests are served
                break
            (batch if more.detector is first.detector else self._held).append(more)
        return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                scores = batch[0].detector.score_images(
                    image for request in batch for image in request.read())
            except Exception as exc:  # noqa: BLE001 - the model failed: every request hears it
                for request in batch:
                    request.error = request.error or exc
                    request.done.set()
                continue
            start = 0
            for request in batch:
                request.scores = scores[start:start + request.count]
                start += request.count
                request.done.set()
