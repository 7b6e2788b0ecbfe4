"""Processors registered with `AutoProcessor` so image-only checkpoints load without torchvision.

Qwen2.5-VL's stock processor insists on a video processor, and building one needs torchvision, which the
CPU image cannot carry (its only wheel is a CUDA build that breaks torch 2.13+cpu). Medical studies hold
no video, so the worker uses a processor that takes the image processor, tokenizer and chat template only.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoProcessor
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

QWEN_IMAGE_ONLY_KEY = "veritrace_qwen2_5_vl_image_only"


class VeritraceQwen2_5_VLImageProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without a video processor (studies are still images, frames or montages)."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    @classmethod
    def get_attributes(cls) -> list[str]:
        """Save and load only what an image-only processor has."""
        return ["image_processor", "tokenizer"]


def register_processors() -> None:
    """Make `AutoProcessor` resolve the class names above; idempotent, call in every loading process."""
    AutoProcessor.register(QWEN_IMAGE_ONLY_KEY, VeritraceQwen2_5_VLImageProcessor, exist_ok=True)
