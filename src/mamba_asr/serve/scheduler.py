"""Many streams, one model step: the server's batching scheduler.

Connections put audio into their slot's inbox (``feed``) and return at once; one worker thread
owns every stream object. When audio arrives the scheduler waits ``deadline_ms`` for more, then
hands the worker everything that came in: the worker turns each stream's new audio into
features, runs the model's streaming step once over all the streams that have a chunk ready
(``Engine.decode_streams``: one batch), and returns each stream's messages (``partial``,
``final``, ``done``: ``mamba_asr.serve.protocol``), which the event loop queues for the
stream's connection. While the worker runs, new audio gathers for the next step, so the batch
grows with the load.

Bounds: at most ``max_streams`` open streams (more are refused with close code 1013);
``feed`` waits while a stream has more than ``max_pending_s`` seconds of audio not yet taken
(backpressure: a client sending faster than real time is slowed down by TCP, not buffered);
a client that does not read its results gets at most ``max_queued`` messages queued before
it is closed (1008), so it holds no more memory than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mamba_asr.serve.engine import Engine
from mamba_asr.serve.protocol import (
    CLOSE_BUSY,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_SHUTDOWN,
    AudioFormat,
    ProtocolError,
    control,
    message,
)

__all__ = ["Close", "Scheduler", "Slot"]

logger = logging.getLogger(__name__)
CLOSE_INTERNAL = 1011


@dataclass(frozen=True)
class Close:
    """The last item of a slot's queue: close the connection with ``code`` and ``reason``."""

    code: int
    reason: str


@dataclass(eq=False)
class Slot:
    """One open stream: audio waiting for the worker, messages waiting for the client.

    The event loop owns ``inbox`` and ``out``; the worker owns ``stream`` and its counters.
    """

    id: int
    fmt: AudioFormat
    inbox: list[np.ndarray] = field(default_factory=list)
    pending: int = 0  # samples in inbox
    ending: bool = False  # the client sent "end"
    closed: bool = False  # the connection is gone or going: nothing more is sent
    out: asyncio.Queue[str | Close] = field(default_factory=asyncio.Queue)
    space: asyncio.Event = field(default_factory=asyncio.Event)
    stream: Any = None
    need: int = 0  # samples the stream still needs for its next chunk (worker's estimate)
    finals: int = 0  # final messages sent
    decoded: float = 0.0  # seconds decoded at the last partial

    def take(self) -> tuple[list[np.ndarray], bool]:
        inbox, self.inbox, self.pending = self.inbox, [], 0
        self.space.set()
        return inbox, self.ending


class Scheduler:
    """See the module docstring. ``max_batch``: streams per model step (``None``: all that
    are ready; 1 decodes one stream at a time, for comparison)."""

    def __init__(
        self,
        engine: Engine,
        max_streams: int = 32,
        deadline_ms: float = 10.0,
        max_batch: int | None = None,
        max_pending_s: float = 10.0,
        max_queued: int = 100,
    ) -> None:
        self.engine, self.max_streams, self.max_batch = engine, max_streams, max_batch
        self.deadline = deadline_ms / 1000
        self.max_pending = int(max_pending_s * engine.sample_rate)
        self.max_queued = max_queued
        self.slots: set[Slot] = set()
        self.stopping = False
        self.steps = 0  # model steps taken
        self.largest_batch = 0  # most streams with a chunk ready in one step
        self._ids = itertools.count(1)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mamba-asr-streams")

    # --- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="mamba-asr-scheduler")

    async def drain(self, timeout: float = 30.0) -> None:
        """Graceful shutdown: end every open stream, send its finals and ``done``, then close
        it with 1001; refuse new streams."""
        self.stopping = True
        for slot in list(self.slots):
            slot.ending = True
        self._poke()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.slots and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True, cancel_futures=True)

    # --- what connections call ---------------------------------------------------------------

    def open(self, fmt: AudioFormat) -> Slot:
        """A new slot; a ``ProtocolError`` (1013 or 1001) when full or shutting down."""
        if self.stopping:
            raise ProtocolError("the server is shutting down", CLOSE_SHUTDOWN)
        if len(self.slots) >= self.max_streams:
            raise ProtocolError(
                f"the server is busy: {len(self.slots)} streams open (--max-streams); try "
                "again later",
                CLOSE_BUSY,
            )
        slot = Slot(next(self._ids), fmt)
        slot.space.set()
        self.slots.add(slot)
        return slot

    async def feed(self, slot: Slot, samples: np.ndarray) -> None:
        """Queue ``samples`` (n,) of ``slot``; waits while too much audio is queued."""
        if samples.size:
            slot.inbox.append(samples)
            slot.pending += samples.size
            self._poke()
        while slot.pending > self.max_pending and not slot.closed:
            slot.space.clear()
            await slot.space.wait()

    def end(self, slot: Slot) -> None:
        """The client's audio is over: finish the stream, send ``done`` and close."""
        slot.ending = True
        self._poke()

    def release(self, slot: Slot) -> None:
        """The connection is gone: forget the slot (the worker drops its stream)."""
        slot.closed = True
        slot.space.set()
        self.slots.discard(slot)

    # --- the loop ---------------------------------------------------------------------------

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.deadline > 0:
                await asyncio.sleep(self.deadline)  # let more chunks arrive: a bigger batch
            work = [
                (slot, *slot.take())
                for slot in self.slots
                if not slot.closed and ((slot.inbox and slot.pending >= slot.need) or slot.ending)
            ]
            if not work:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._step, work)
            except Exception as exc:  # a bug, not a client's fault: those streams end, others live
                logger.exception("decoding failed")
                results = [
                    (s, [Close(CLOSE_INTERNAL, f"decoding failed: {exc}")]) for s, *_ in work
                ]
            for slot, items in results:
                self._deliver(slot, items)

    def _deliver(self, slot: Slot, items: Iterable[str | Close]) -> None:
        if slot.closed:
            return
        for item in items:
            if isinstance(item, str) and slot.out.qsize() >= self.max_queued:
                reason = f"the client does not read its results ({self.max_queued} messages queued)"
                logger.warning("stream %d: %s", slot.id, reason)
                slot.closed = True
                self.slots.discard(slot)
                slot.out.put_nowait(Close(CLOSE_POLICY, reason))
                return
            slot.out.put_nowait(item)
            if isinstance(item, Close):
                slot.closed = True
                self.slots.discard(slot)
                return

    # --- the worker thread --------------------------------------------------------------------

    def _step(
        self, work: list[tuple[Slot, list[np.ndarray], bool]]
    ) -> list[tuple[Slot, list[str | Close]]]:
        """Features for each slot's new audio, one batched model step, then the messages."""
        out: dict[Slot, list[str | Close]] = {}
        live, ending = [], {slot: end for slot, _, end in work}
        for slot, chunks, _ in work:
            try:
                if slot.stream is None:
                    slot.stream = self.engine.create_stream()
                if chunks:
                    slot.stream.accept_waveform(slot.fmt.sample_rate, np.concatenate(chunks))
                live.append(slot)
            except ValueError as exc:  # audio the stream refuses
                out[slot] = [control("error", message=str(exc)), Close(1007, str(exc))]
        ready = sum(1 for s in live if s.stream.ready)
        self.steps += 1
        self.largest_batch = max(self.largest_batch, min(ready, self.max_batch or ready))
        self.engine.decode_streams([s.stream for s in live], self.max_batch)
        for slot in live:
            out[slot] = self._messages(slot, ending[slot])
            # hand this stream audio again once it makes a chunk: features in fewer calls
            needed = getattr(slot.stream, "samples_needed", 0)
            slot.need = -(-needed * slot.fmt.sample_rate // self.engine.sample_rate)
        return list(out.items())

    def _messages(self, slot: Slot, ending: bool) -> list[str | Close]:
        stream = slot.stream
        if ending:
            transcript = stream.finish()
        items: list[str | Close] = []
        for segment in stream.segments[slot.finals :]:
            items.append(message("final", slot.finals, stream.decoded, segment))
            slot.finals += 1
        if ending:
            items.append(message("done", slot.finals, stream.decoded, transcript))
            code = CLOSE_SHUTDOWN if self.stopping else CLOSE_NORMAL
            items.append(Close(code, "server shutting down" if self.stopping else "done"))
            return items
        if stream.decoded > slot.decoded:
            slot.decoded = stream.decoded
            part = stream.current
            items.append(message("partial", slot.finals, stream.decoded, part))
        return items
