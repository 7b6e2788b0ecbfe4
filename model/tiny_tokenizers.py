"""Small BPE tokenizers trained offline for tiny test models (no tokenizer files can be downloaded).

Each one mirrors its family's real tokenizer in the ways the runtime depends on: the same special tokens
(so chat templates, image placeholders and stop tokens work unchanged) and full byte coverage (so any
JSON the grammar allows can be spelled).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, cast

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<image>",
]
GEMMA_SPECIALS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]
_WORDS = [
    "no",
    "acute",
    "finding",
    "consolidation",
    "effusion",
    "pneumothorax",
    "nodule",
    "mass",
    "opacity",
    "left",
    "right",
    "bilateral",
    "lung",
    "lobe",
    "heart",
    "size",
    "normal",
    "mild",
    "moderate",
    "severe",
    "critical",
    "fracture",
    "bone",
    "brain",
    "haemorrhage",
    "infarct",
    "ct",
    "mr",
    "chest",
    "abdomen",
    "impression",
    "findings",
    "patient",
    "history",
    "creatinine",
    "mg",
    "dL",
    "mmol",
    "report",
    "evidence",
    "cites",
    "stable",
    "compared",
    "prior",
    "study",
    "series",
    "image",
    "slice",
    "window",
    "contrast",
    "axial",
    "coronal",
    "sagittal",
    "the",
    "a",
    "of",
    "with",
    "and",
    "in",
]
_JSON_BITS = ['{"', '":', '"', ",", "[", "]", "}", "text", "severity", "citations", "laterality", "codes"]


def _corpus() -> Iterator[str]:
    """A few hundred deterministic lines covering prose, numbers and JSON punctuation."""
    for i, (a, b, c) in enumerate(itertools.islice(itertools.product(_WORDS, repeat=3), 600)):
        yield f"{a} {b} {c} {i % 97}.{i % 7} " + " ".join(_JSON_BITS[i % len(_JSON_BITS) :])


def _train(
    tok: Tokenizer, specials: list[str], vocab_size: int, initial_alphabet: list[str] | None = None
) -> Tokenizer:
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=initial_alphabet or [],
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def _bpe_parts(tok: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    state = tok.model.__getstate__()
    import json

    data = json.loads(state) if isinstance(state, (str, bytes)) else state
    vocab: dict[str, int] = data["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in data["merges"]]
    return vocab, [(a, b) for a, b in merges]


def build_qwen_tokenizer(
    vocab_size: int = 600, image_token: str = "<|image_pad|>"
) -> PreTrainedTokenizerBase:
    """Byte-level BPE wrapped as `Qwen2Tokenizer`, with Qwen2-VL's special tokens first (stable ids)."""
    from transformers import Qwen2Tokenizer

    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    _train(raw, QWEN_SPECIALS, vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    vocab, merges = _bpe_parts(raw)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=cast(Any, merges),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=cast(Any, None),
        extra_special_tokens={"image_token": image_token, "video_token": "<|video_pad|>"},
    )
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    return tok


def build_gemma_tokenizer(vocab_size: int = 700) -> PreTrainedTokenizerBase:
    """Byte-fallback BPE wrapped as `GemmaTokenizer`, with Gemma 3's turn and image tokens."""
    from transformers import GemmaTokenizer

    raw = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    raw.normalizer = normalizers.Replace(" ", "▁")
    raw.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_previous")
    raw.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    _train(raw, GEMMA_SPECIALS + byte_tokens, vocab_size)
    vocab, merges = _bpe_parts(raw)
    tok = GemmaTokenizer(
        vocab=vocab,
        merges=cast(Any, merges),
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
    )
    tok.add_special_tokens({"additional_special_tokens": GEMMA_SPECIALS[4:]})
    return tok
