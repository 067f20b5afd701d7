"""Many streams, one model step: the server's batching scheduler.

Connections put audio into their slot's inbox (``feed``) and return at once; one ``Worker``
owns every stream object. When audio arrives the scheduler waits ``deadline_ms`` for more, then
hands the worker everything that came in: the worker turns the streams' new audio into features
(one batched call), runs the model's streaming step once over all the streams that have a chunk
ready (``Engine.decode_streams``: one batch), and returns each stream's messages (``partial``,
``final``, ``done``: ``mamba_asr.serve.protocol``), which the event loop queues for the
stream's connection. While the worker runs, new audio gathers for the next step, so the batch
grows with the load.

The worker runs on a thread of the server's process, or (``process=True``) in a process of its
own: then the model step and the event loop, which reads the packets and sends the messages, do
not take turns on one interpreter lock, and each has a core.

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
import multiprocessing
import signal
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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

__all__ = ["Close", "Job", "Scheduler", "Slot", "Worker"]

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

    The event loop owns it; the worker knows the stream by ``id`` only.
    """

    id: int
    fmt: AudioFormat
    inbox: list[np.ndarray] = field(default_factory=list)
    pending: int = 0  # samples in inbox
    ending: bool = False  # the client sent "end"
    closed: bool = False  # the connection is gone or going: nothing more is sent
    out: asyncio.Queue[str | Close] = field(default_factory=asyncio.Queue)
    space: asyncio.Event = field(default_factory=asyncio.Event)
    need: int = 0  # samples the stream still needs for its next chunk (worker's estimate)

    def take(self) -> tuple[list[np.ndarray], bool]:
        inbox, self.inbox, self.pending = self.inbox, [], 0
        self.space.set()
        return inbox, self.ending


class Job(NamedTuple):
    """A slot's share of one step: its new samples (n,) at ``rate``, and whether it ends."""

    id: int
    rate: int
    audio: np.ndarray
    ending: bool


class Reply(NamedTuple):
    """What a step gives back: per slot id, its messages and the samples (at its rate) its
    stream needs before its next chunk; the worker's counters."""

    out: dict[int, tuple[list[str | Close], int]]
    steps: int
    largest_batch: int


@dataclass(eq=False)
class _Row:
    """The worker's side of a slot: its stream and what was sent of it."""

    stream: Any
    finals: int = 0  # final messages sent
    decoded: float = 0.0  # seconds decoded at the last partial


class Worker:
    """Owns every stream: new audio in, one batched model step, messages out (``step``).
    ``max_batch``: as ``Scheduler``'s."""

    def __init__(self, engine: Engine, max_batch: int | None = None) -> None:
        self.engine, self.max_batch = engine, max_batch
        self.rows: dict[int, _Row] = {}
        self.steps = 0  # model steps taken
        self.largest_batch = 0  # most streams with a chunk ready in one step

    def step(self, jobs: Sequence[Job], stopping: bool, dropped: Sequence[int] = ()) -> Reply:
        """Forget the streams of ``dropped`` slots; features for each job's audio, one batched
        model step, then the messages (the last ones of a job that ends, with its ``Close``,
        1001 when ``stopping``)."""
        for i in dropped:
            self.rows.pop(i, None)
        out: dict[int, tuple[list[str | Close], int]] = {}
        live: list[tuple[Job, _Row]] = []
        for job in jobs:
            try:
                row = self.rows.get(job.id)
                if row is None:
                    row = self.rows[job.id] = _Row(self.engine.create_stream())
                if job.audio.size:
                    row.stream.accept_waveform(job.rate, job.audio)
                live.append((job, row))
            except ValueError as exc:  # audio the stream refuses
                self.rows.pop(job.id, None)
                out[job.id] = ([control("error", message=str(exc)), Close(1007, str(exc))], 0)
        ready = sum(1 for _, row in live if row.stream.ready)
        self.steps += 1
        self.largest_batch = max(self.largest_batch, min(ready, self.max_batch or ready))
        self.engine.decode_streams([row.stream for _, row in live], self.max_batch)
        for job, row in live:
            items = self._messages(row, job.ending, stopping)
            if job.ending:
                del self.rows[job.id]
            # hand this stream audio again once it makes a chunk: features in fewer calls
            needed = getattr(row.stream, "samples_needed", 0)
            out[job.id] = (items, -(-needed * job.rate // self.engine.sample_rate))
        return Reply(out, self.steps, self.largest_batch)

    def _messages(self, row: _Row, ending: bool, stopping: bool) -> list[str | Close]:
        stream = row.stream
        if ending:
            transcript = stream.finish()
        items: list[str | Close] = []
        for segment in stream.segments[row.finals :]:
            items.append(message("final", row.finals, stream.decoded, segment))
            row.finals += 1
        if ending:
            items.append(message("done", row.finals, stream.decoded, transcript))
            code = CLOSE_SHUTDOWN if stopping else CLOSE_NORMAL
            items.append(Close(code, "server shutting down" if stopping else "done"))
            return items
        if stream.decoded > row.decoded:
            row.decoded = stream.decoded
            items.append(message("partial", row.finals, stream.decoded, stream.current))
        return items


def _worker_process(conn: Any, engine: Engine, max_batch: int | None, threads: int) -> None:
    """A ``Worker`` in a process of its own: a ``(jobs, stopping, dropped)`` in, its ``Reply``
    (or the error's text) out, until ``None`` or the server's end of the pipe closes."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's: it drains first
    torch.set_num_threads(threads)
    worker = Worker(engine, max_batch)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        try:
            reply: Reply | str = worker.step(*request)
        except Exception as exc:  # the server logs it and ends those streams
            reply = f"{type(exc).__name__}: {exc}"
        conn.send(reply)


class Scheduler:
    """See the module docstring. ``max_batch``: streams per model step (``None``: all that
    are ready; 1 decodes one stream at a time, for comparison); ``process``: the worker in a
    process of its own (the engine must pickle: a PyTorch model)."""

    def __init__(
        self,
        engine: Engine,
        max_streams: int = 32,
        deadline_ms: float = 10.0,
        max_batch: int | None = None,
        max_pending_s: float = 10.0,
        max_queued: int = 100,
        process: bool = False,
    ) -> None:
        self.engine, self.max_streams, self.max_batch = engine, max_streams, max_batch
        self.deadline = deadline_ms / 1000
        self.max_pending = int(max_pending_s * engine.sample_rate)
        self.max_queued = max_queued
        self.slots: set[Slot] = set()
        self._connected: set[Slot] = set()  # slots whose connection has not ended yet
        self.stopping = False
        self.steps = 0  # model steps taken
        self.largest_batch = 0  # most streams with a chunk ready in one step
        self._ids = itertools.count(1)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mamba-asr-streams")
        self._dropped: list[int] = []  # slots released since the last step
        self._worker: Worker | None = None if process else Worker(engine, max_batch)
        self._process: Any = None
        self._conn: Any = None

    # --- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._worker is None:
            import torch

            context = multiprocessing.get_context("spawn")  # no fork of a threaded process
            self._conn, child = context.Pipe()
            args = (child, self.engine, self.max_batch, torch.get_num_threads())
            self._process = context.Process(
                target=_worker_process, args=args, name="mamba-asr-worker", daemon=True
            )
            self._process.start()
            child.close()
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
        # until every connection has ended: its last messages and close frame sent, not only
        # queued (the server closes what is left with 1012 after this)
        while self._connected and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._process is not None:
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
            self._conn.close()

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
        self._connected.add(slot)
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
        self._dropped.append(slot.id)
        self.slots.discard(slot)
        self._connected.discard(slot)

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
            slots = [
                slot
                for slot in self.slots
                if not slot.closed and ((slot.inbox and slot.pending >= slot.need) or slot.ending)
            ]
            if not slots:
                continue
            jobs = [_job(slot) for slot in slots]
            dropped, self._dropped = self._dropped, []
            try:
                reply = await loop.run_in_executor(
                    self._executor, self._step, jobs, self.stopping, dropped
                )
            except Exception as exc:  # a bug, not a client's fault: those streams end, others live
                logger.exception("decoding failed")
                close = Close(CLOSE_INTERNAL, f"decoding failed: {exc}")
                reply = Reply({slot.id: ([close], 0) for slot in slots}, self.steps, 0)
            self.steps = reply.steps
            self.largest_batch = max(self.largest_batch, reply.largest_batch)
            for slot in slots:
                items, slot.need = reply.out[slot.id]
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

    def _step(self, jobs: list[Job], stopping: bool, dropped: list[int]) -> Reply:
        """The worker's step, on the scheduler's thread: here or in the worker's process."""
        if self._worker is not None:
            return self._worker.step(jobs, stopping, dropped)
        self._conn.send((jobs, stopping, dropped))
        reply = self._conn.recv()
        if isinstance(reply, str):
            raise RuntimeError(reply)
        return reply


def _job(slot: Slot) -> Job:
    chunks, ending = slot.take()
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return Job(slot.id, slot.fmt.sample_rate, audio, ending)
