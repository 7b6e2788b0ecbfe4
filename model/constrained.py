"""Constrained decoding: JSON-schema grammars applied as a logits mask at every decode step (xgrammar).

A row of a batch may have its own schema or none, so one batched `generate()` can serve studies with
different evidence ids. Time spent building and applying masks is accumulated so the runtime can report
the per-token cost of constraint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase


class GrammarUnavailable(RuntimeError):
    """xgrammar is not installed, so a JSON schema cannot be enforced."""


def grammar_available() -> bool:
    """Whether xgrammar imports in this environment."""
    try:
        import xgrammar  # noqa: F401
    except ImportError:
        return False
    return True


class SchemaCompiler:
    """Compiles JSON schemas against one tokenizer and vocabulary; compiled grammars are cached by schema."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_token_ids: Sequence[int]
    ) -> None:
        try:
            import xgrammar as xgr
        except ImportError as exc:
            raise GrammarUnavailable("constrained decoding needs the xgrammar package") from exc
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
        )
        self._compiler = xgr.GrammarCompiler(info)
        self.vocab_size = vocab_size
        self._compile = lru_cache(maxsize=64)(self._compile_uncached)

    def _compile_uncached(self, schema_json: str) -> Any:
        return self._compiler.compile_json_schema(schema_json, strict_mode=True, any_whitespace=False)

    def compile(self, schema: dict[str, Any]) -> Any:
        """The compiled grammar for `schema` (a JSON Schema object); bad schemas raise ValueError."""
        try:
            return self._compile(json.dumps(schema, sort_keys=True))
        except RuntimeError as exc:
            raise ValueError(f"JSON schema could not be compiled: {exc}") from exc


class GrammarMask(LogitsProcessor):
    """Masks each row's logits to the tokens its grammar allows next; rows with `None` are left free.

    Use one instance per `generate()` call: matchers carry the state of the tokens accepted so far.
    """

    def __init__(self, grammars: Sequence[Any | None], vocab_size: int) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self._matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self._batch = xgr.BatchGrammarMatcher()
        self._bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self.vocab_size = vocab_size
        self._started = False
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        start = time.perf_counter()
        if input_ids.shape[0] != len(self._matchers):
            raise RuntimeError(f"batch of {input_ids.shape[0]} rows, but {len(self._matchers)} grammars")
        active: list[tuple[int, Any]] = []
        for row, matcher in enumerate(self._matchers):
            if matcher is None:
                continue
            if self._started and not matcher.is_terminated():
                matcher.accept_token(int(input_ids[row, -1]))
            if not matcher.is_terminated():  # a finished row is padded by generate(); its logits are moot
                active.append((row, matcher))
        constrained_rows = [row for row, _ in active]
        if len(active) == 1:
            active[0][1].fill_next_token_bitmask(self._bitmask, active[0][0])
        elif active:  # rows filled in parallel threads: the per-row fill is the costly part
            self._batch.batch_fill_next_token_bitmask(
                [m for _, m in active], self._bitmask, indices=constrained_rows
            )
        self._started = True
        if constrained_rows:
            bitmask = self._bitmask if scores.device.type == "cpu" else self._bitmask.to(scores.device)
            self._xgr.apply_token_bitmask_inplace(scores, bitmask, indices=constrained_rows)
            if scores.shape[1] > self.vocab_size:  # ids past the grammar's vocabulary are never allowed
                scores[constrained_rows, self.vocab_size :] = float("-inf")
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return scores
