"""Tiny randomly initialised VLMs of each supported family, saved like a hospital's checkpoint.

Tests and the demo load them through exactly the production path (`load_vlm`), so the loader, the
adapters, batching and constrained decoding are exercised end to end without any downloadable weights.
Every saved config carries `veritrace_untrained: true`, which the runtime turns into the report's
`untrained_model` label: their output is gibberish by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForImageTextToText,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from model.processors import VeritraceQwen2_5_VLImageProcessor, register_processors
from model.tiny_tokenizers import build_gemma_tokenizer, build_qwen_tokenizer

UNTRAINED_FLAG = "veritrace_untrained"

QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}"
    "{% if c.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c.text }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m.role == 'assistant' else m.role }}\n"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}"
    "{% if c.type == 'image' %}<start_of_image>{% else %}{{ c.text }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m.role | upper }}: "
    "{% if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}"
    "{% if c.type == 'image' %}<image>\n{% else %}{{ c.text }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)


def _token_id(tok: PreTrainedTokenizerBase) -> Callable[[str], int]:
    """A lookup that fails loudly when a family's special token is missing from its tokenizer."""

    def lookup(token: str) -> int:
        value = tok.convert_tokens_to_ids(token)
        if not isinstance(value, int) or (value == tok.unk_token_id and token != tok.unk_token):
            raise ValueError(f"tokenizer has no id for {token!r}")
        return value

    return lookup


def _tiny_qwen_text(vocab: int, bos: int, eos: int) -> dict[str, Any]:
    return dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=bos,
        eos_token_id=eos,
    )


def _qwen2_5_vl() -> tuple[PretrainedConfig, ProcessorMixin]:
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = build_qwen_tokenizer()
    ids = _token_id(tok)
    text = _tiny_qwen_text(len(tok), ids("<|endoftext|>"), ids("<|im_end|>"))
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            in_channels=3,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
            out_hidden_size=64,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    # 56x56 .. 112x112 px keeps a tiny model's image at 4..16 tokens while still exercising the merge.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = VeritraceQwen2_5_VLImageProcessor(image_processor, tok, chat_template=QWEN_CHAT_TEMPLATE)
    return cfg, processor


def _gemma3() -> tuple[PretrainedConfig, ProcessorMixin]:
    from transformers import Gemma3Config, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tok = build_gemma_tokenizer()
    ids = _token_id(tok)
    image_size, tokens_per_image = 32, 4  # 4x4 SigLIP patches pooled to a 2x2 (perfect square) grid
    cfg = Gemma3Config(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=64,
            max_position_embeddings=4096,
            pad_token_id=ids("<pad>"),
            bos_token_id=ids("<bos>"),
            eos_token_id=ids("<eos>"),
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
        ),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(
        image_processor, tok, chat_template=GEMMA_CHAT_TEMPLATE, image_seq_length=tokens_per_image
    )
    return cfg, processor


def _llava() -> tuple[PretrainedConfig, ProcessorMixin]:
    from transformers import LlavaConfig, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = build_qwen_tokenizer(image_token="<image>")
    ids = _token_id(tok)
    text = _tiny_qwen_text(len(tok), ids("<|endoftext|>"), ids("<|im_end|>"))
    text["model_type"] = "qwen2"
    image_size, patch = 28, 14
    cfg = LlavaConfig(
        text_config=text,
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch,
            projection_dim=32,
        ),
        image_token_index=ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor,
        tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return cfg, processor


TINY_FAMILIES: dict[str, Callable[[], tuple[PretrainedConfig, ProcessorMixin]]] = {
    "qwen2_5_vl": _qwen2_5_vl,
    "gemma3": _gemma3,
    "llava": _llava,
}


def _randomise_zero_matrices(model: torch.nn.Module) -> None:
    """Give zero-initialised matrices (Gemma 3's image projection) random values.

    Some families start a projection at zero so fine-tuning begins from the text model; left at zero in a
    random test model, images would never influence the output and image tests would prove nothing.
    """
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2 and not param.any():
                param.normal_(0.0, 1.0 / max(1, param.shape[0]) ** 0.5)


def make_tiny(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Write a random tiny model of `family` plus its processor to `out_dir`; return `out_dir`.

    The same seed gives the same weights, so tests can compare runs; the directory loads with
    `load_vlm` like any hospital checkpoint.
    """
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {sorted(TINY_FAMILIES)}")
    register_processors()
    cfg, processor = TINY_FAMILIES[family]()
    setattr(cfg, UNTRAINED_FLAG, True)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.float32)
    _randomise_zero_matrices(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
