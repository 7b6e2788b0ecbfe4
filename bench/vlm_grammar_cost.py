#!/usr/bin/env python3
"""Per-token cost of constrained decoding (xgrammar) with a realistically sized vocabulary, on the CPU.

The tiny test tokenizers have ~600 tokens, which flatters the grammar mask; real VLM vocabularies have
150k-260k. No real tokenizer can be downloaded here, so this trains a byte-level BPE of --vocab tokens on
local text (the Python sources of the installed packages) and pads the model vocabulary to 152,064
(Qwen2.5-VL's). It then walks a valid draft report, token by token, through a GrammarMatcher compiled
from Veritrace's draft-report schema and times what the runtime's `GrammarMask` does each step: accept the
previous token, fill the next-token bitmask, apply it to a logits row.

    python bench/vlm_grammar_cost.py            # 32k vocab
    python bench/vlm_grammar_cost.py --vocab 8000 --max-chars 4000000   # quicker
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import xgrammar as xgr
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer

from model.draft import report_schema
from model.tiny_tokenizers import QWEN_SPECIALS

MODEL_VOCAB = 152_064


def corpus(max_chars: int) -> Iterator[str]:
    """Lines of the installed packages' Python sources, up to `max_chars` characters."""
    root = Path(sysconfig.get_paths()["purelib"])
    seen = 0
    for path in sorted(root.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield text
        seen += len(text)
        if seen >= max_chars:
            return


def train_tokenizer(vocab: int, max_chars: int) -> Any:
    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=QWEN_SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(corpus(max_chars), trainer=trainer)
    data = json.loads(raw.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in data["merges"]]
    tok = Qwen2Tokenizer(
        vocab=data["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    return tok


def sample_report(ids: list[str]) -> str:
    statement = {
        "text": "Spiculated nodule in the left upper lobe, 14 mm, new since the prior study.",
        "severity": "moderate",
        "laterality": "left",
        "codes": ["RID5745"],
        "citations": [ids[0], ids[-1]],
    }
    normal = dict(statement, text="No pleural effusion.", severity="normal", laterality="none", codes=[])
    return json.dumps({"findings": [statement, normal], "impression": [statement]}, separators=(", ", ": "))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32_000)
    ap.add_argument("--max-chars", type=int, default=20_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32, help="rows for the batched fill (0 to skip)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    tok = train_tokenizer(args.vocab, args.max_chars)
    train_s = time.perf_counter() - t0
    ids = ["obs-creat", "cond-copd", "img:1.2.840.113619.2.55.3:0"]
    schema = report_schema(ids)
    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=MODEL_VOCAB, stop_token_ids=[tok.eos_token_id])
    compiled = xgr.GrammarCompiler(info).compile_json_schema(
        json.dumps(schema), strict_mode=True, any_whitespace=False
    )
    compile_s = time.perf_counter() - t0
    text = sample_report(ids)
    token_ids = [*tok.encode(text, add_special_tokens=False), tok.eos_token_id]
    logits = torch.zeros(1, MODEL_VOCAB)
    bitmask = xgr.allocate_token_bitmask(1, MODEL_VOCAB)
    per_step: list[float] = []
    fill_only: list[float] = []
    for _ in range(args.repeats):
        matcher = xgr.GrammarMatcher(compiled)
        for i, token in enumerate(token_ids):
            start = time.perf_counter()
            if i and not matcher.accept_token(token_ids[i - 1]):
                raise SystemExit(f"grammar rejected token {i - 1} of the sample report")
            matcher.fill_next_token_bitmask(bitmask, 0)
            filled = time.perf_counter()
            xgr.apply_token_bitmask_inplace(logits, bitmask)
            per_step.append(time.perf_counter() - start)
            fill_only.append(filled - start)
            if not torch.isfinite(logits[0, token]):
                raise SystemExit(f"grammar masks token {i} of a valid report")
            logits.zero_()
        if not matcher.accept_token(token_ids[-1]) or not matcher.is_terminated():
            raise SystemExit("the sample report did not complete the grammar")
    ms = sorted(x * 1e3 for x in per_step)
    print("=" * 90)
    print(
        f"constrained decoding cost | xgrammar | CPU {torch.get_num_threads()} threads | "
        f"tokenizer {len(tok):,} tokens (BPE trained here in {train_s:.0f}s), model vocab {MODEL_VOCAB:,}"
    )
    print(f"schema: Veritrace draft report ({len(ids)} citable ids); compile {compile_s * 1e3:.0f} ms")
    print(f"sample report: {len(token_ids)} tokens x {args.repeats} walks")
    print(
        f"mask per token (accept + fill bitmask + apply): median {statistics.median(ms):.3f} ms, "
        f"p90 {ms[int(0.9 * len(ms))]:.3f} ms, max {ms[-1]:.3f} ms, mean {statistics.fmean(ms):.3f} ms"
    )
    print(
        f"  of which accept + fill: median {statistics.median(fill_only) * 1e3:.3f} ms; the rest is applying "
        f"the mask to a {MODEL_VOCAB:,}-wide float32 logits row on the CPU"
    )
    if args.batch:
        serial, batched = batch_walk(compiled, token_ids, args.batch)
        print(
            f"batch of {args.batch} rows, per decode step: one row after another {serial:.2f} ms, "
            f"BatchGrammarMatcher ({torch.get_num_threads()} CPU threads here) {batched:.2f} ms"
        )
    print("=" * 90)
    return 0


def batch_walk(compiled: Any, token_ids: list[int], rows: int) -> tuple[float, float]:
    """Median ms per step to fill `rows` bitmasks, serially and with xgrammar's threaded batch fill."""
    bitmask = xgr.allocate_token_bitmask(rows, MODEL_VOCAB)
    results = []
    for threaded in (False, True):
        matchers = [xgr.GrammarMatcher(compiled) for _ in range(rows)]
        batch = xgr.BatchGrammarMatcher()
        steps = []
        for i in range(len(token_ids) - 1):
            start = time.perf_counter()
            if i:
                for m in matchers:
                    m.accept_token(token_ids[i - 1])
            if threaded:
                batch.batch_fill_next_token_bitmask(matchers, bitmask)
            else:
                for row, m in enumerate(matchers):
                    m.fill_next_token_bitmask(bitmask, row)
            steps.append((time.perf_counter() - start) * 1e3)
        results.append(statistics.median(steps))
    return results[0], results[1]


if __name__ == "__main__":
    sys.exit(main())
