"""pipeline.py
===========

Frames to backbone outputs in shared micro-batches, with preparation beside the forward.

:func:`embed_frames` takes frames from any iterable (a lazy one may decode as it goes, so
frames of many instances and studies can share batches), prepares each
(:func:`~sonoshot.model.backbones.prepare_image`), and runs the backbone under the
augmentation views in micro-batches of :attr:`~sonoshot.model.backbones.Backbone.batch_size`
frames. When the cores hold two teams of torch threads (``2 x torch threads <= cores``,
e.g. the default one thread on two cores), the iteration and preparation run in a second
thread, so decoding and preparing the next frames overlap the forward of the current batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch

from sonoshot.model.backbones import Backbone, prepare_image
from sonoshot.model.head import N_VIEWS, augment_views
from sonoshot.model.runtime import usable_cores

T = TypeVar("T")
_DONE = object()


def overlap_possible() -> bool:
    """Whether a second team of torch threads fits beside the current one on this machine."""
    return 2 * torch.get_num_threads() <= usable_cores()


def in_background(items: Iterable[T], depth: int = 8) -> Iterator[T]:
    """Iterate ``items`` in a daemon thread, at most ``depth`` items ahead of the consumer.

    An exception raised while iterating is raised again in the consumer, at the point the
    failing item would have arrived; a consumer that stops early stops the thread.
    """
    slots: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def offer(entry: tuple[object, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((_DONE, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, not swallowed
            offer((_DONE, exc))

    thread = threading.Thread(target=produce, name="prepare-frames", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()


def embed_frames(backbone: Backbone, frames: Iterable[np.ndarray], mask: bool = True,
                 n_views: int | None = None, overlap: bool | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """View embeddings ``(N, V, D)`` and patch features ``(N, V, P, C)`` (None when the
    backbone has none) of ``frames`` under the first ``n_views`` augmentation views.

    ``overlap`` (default :func:`overlap_possible`) prepares frames in a second thread.
    """
    prepared = (prepare_image(f, backbone.image_size, mask) for f in frames)
    if overlap is None:
        overlap = overlap_possible()
    source = in_background(prepared, 2 * backbone.batch_size) if overlap else prepared
    views, patches, pending = [], [], []

    def forward() -> None:
        batch = torch.stack(pending)
        pending.clear()
        variants = [batch] if n_views == 1 else augment_views(batch)[:n_views]
        outputs = [backbone.embed_tensors_with_patches(v) for v in variants]
        views.append(np.stack([emb for emb, _ in outputs], axis=1))
        if outputs[0][1] is not None:
            patches.append(np.stack([p for _, p in outputs], axis=1))

    for tensor in source:
        pending.append(tensor)
        if len(pending) == backbone.batch_size:
            forward()
    if pending:
        forward()
    if not views:
        return np.zeros((0, n_views or N_VIEWS, 0), np.float32), None
    return np.concatenate(views), np.concatenate(patches) if patches else None
