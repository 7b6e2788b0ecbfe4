"""A batching scheduler: many studies' requests, one model, one batched generation at a time.

Celery threads (or any threads) call `generate`, which blocks until their result is ready; a single
scheduler thread gathers whatever is waiting, up to `max_batch` requests and `kv_token_budget`
tokens of KV cache, and runs them as one left-padded greedy batch (prefill and decode together).
Requests that arrive during a batch form the next one. Greedy rows are independent, so results are
token-for-token those of one-at-a-time generation.

A batch that runs out of GPU memory is split in half and retried; a single request that still does not
fit fails with `StudyTooLarge`, so the worker can retry that study with fewer images instead of crashing.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from model.runtime import Generation, GenerationRequest, LoadedVlm, ModelIdentity


class StudyTooLarge(RuntimeError):
    """One request alone does not fit in memory (or in the KV budget); retry it with fewer images."""


class SchedulerClosed(RuntimeError):
    """The scheduler was closed before this request ran."""


@dataclass
class _Pending:
    request: GenerationRequest
    tokens: int
    future: Future[Generation] = field(default_factory=Future)


@dataclass
class SchedulerStats:
    """Counters for health reporting and the benchmark."""

    batches: int = 0
    requests: int = 0
    oom_splits: int = 0
    largest_batch: int = 0
    busy_s: float = 0.0


class BatchScheduler:
    """Serves concurrent generation requests from one `LoadedVlm` in batches.

    `kv_token_budget` bounds the sum over a batch of (prompt + max new tokens), i.e. the KV cache a batch
    may hold; `max_wait_s` is how long the scheduler lingers for more requests once one is waiting.
    """

    def __init__(
        self,
        vlm: LoadedVlm,
        *,
        max_batch: int = 32,
        kv_token_budget: int = 262_144,
        max_wait_s: float = 0.005,
        static_cache: bool = False,
        min_new_tokens: int = 0,
    ) -> None:
        if max_batch < 1 or kv_token_budget < 1:
            raise ValueError(f"max_batch ({max_batch}) and kv_token_budget ({kv_token_budget}) must be >= 1")
        self.vlm = vlm
        self.max_batch = max_batch
        self.kv_token_budget = kv_token_budget
        self.max_wait_s = max_wait_s
        self.static_cache = static_cache
        self.min_new_tokens = min_new_tokens  # benchmarks force a fixed output length with it
        self.stats = SchedulerStats()
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._carry: _Pending | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vlm-batch-scheduler", daemon=True)
        self._thread.start()

    @property
    def identity(self) -> ModelIdentity:
        """The served model's identity (so a scheduler can stand in for a `LoadedVlm` in `draft_report`)."""
        return self.vlm.identity

    @property
    def max_new_tokens(self) -> int:
        """The served model's configured output budget per study."""
        return self.vlm.max_new_tokens

    @property
    def max_images(self) -> int:
        """The served model's configured image budget per study."""
        return self.vlm.max_images

    def health(self) -> dict[str, Any]:
        """Scheduler counters, queue depth and the model's memory, for the worker's health report."""
        return {
            "queued": self._queue.qsize(),
            "batches": self.stats.batches,
            "requests": self.stats.requests,
            "largest_batch": self.stats.largest_batch,
            "oom_splits": self.stats.oom_splits,
            "busy_s": round(self.stats.busy_s, 3),
            "running": self._thread.is_alive(),
            **self.vlm.health().model_dump(),
        }

    def submit(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        *,
        max_new_tokens: int,
        json_schema: dict[str, Any] | None = None,
    ) -> Future[Generation]:
        """Queue one request; the future resolves to its `Generation` or to the error it raised."""
        if self._closed.is_set():
            raise SchedulerClosed("scheduler is closed")
        request = GenerationRequest(
            images=list(images), prompt=prompt, max_new_tokens=max_new_tokens, json_schema=json_schema
        )
        tokens = self.vlm.estimate_prompt_tokens(request) + max_new_tokens
        pending = _Pending(request, tokens)
        if tokens > self.kv_token_budget:
            pending.future.set_exception(
                StudyTooLarge(f"request needs ~{tokens} KV tokens, budget is {self.kv_token_budget}")
            )
            return pending.future
        self._queue.put(pending)
        return pending.future

    def generate(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        *,
        max_new_tokens: int,
        json_schema: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Generation:
        """Blocking form of `submit`, with `LoadedVlm.generate`'s signature, for worker threads."""
        future = self.submit(images, prompt, max_new_tokens=max_new_tokens, json_schema=json_schema)
        return future.result(timeout=timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop after the batch in flight; requests still queued fail with `SchedulerClosed`."""
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout_s)
        leftovers = [self._carry] if self._carry is not None else []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                leftovers.append(item)
        for item in leftovers:
            if not item.future.done():
                item.future.set_exception(SchedulerClosed("scheduler closed before this request ran"))

    def _next_batch(self) -> list[_Pending]:
        """Block for one request, then take more until the batch or KV budget is full or the wait ends."""
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is None:
            return []
        batch, tokens = [first], first.tokens
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self._closed.set()
                break
            if tokens + item.tokens > self.kv_token_budget:
                self._carry = item  # first in line for the next batch
                break
            batch.append(item)
            tokens += item.tokens
        return batch

    def _run(self) -> None:
        while not (self._closed.is_set() and self._carry is None and self._queue.empty()):
            batch = self._next_batch()
            if not batch:
                if self._closed.is_set():
                    break
                continue
            live = [p for p in batch if p.future.set_running_or_notify_cancel()]
            started = time.perf_counter()
            self._serve(live)
            self.stats.busy_s += time.perf_counter() - started
            self.stats.batches += 1
            self.stats.requests += len(live)
            self.stats.largest_batch = max(self.stats.largest_batch, len(live))

    def _serve(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        try:
            results = self.vlm.generate_batch(
                [p.request for p in batch], static_cache=self.static_cache, min_new_tokens=self.min_new_tokens
            )
        except torch.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(batch) == 1:
                batch[0].future.set_exception(StudyTooLarge(f"out of memory for a single study: {exc}"))
                return
            self.stats.oom_splits += 1
            half = len(batch) // 2
            self._serve(batch[:half])
            self._serve(batch[half:])
            return
        except Exception as exc:  # never kill the scheduler thread; isolate the failing request
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for p in batch:
                self._serve([p])
            return
        for p, result in zip(batch, results, strict=True):
            p.future.set_result(result)
