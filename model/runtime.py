"""Load a hospital's VLM from a local directory and generate from images plus a prompt.

One `LoadedVlm` is created per worker process and shared by its threads: `generate` serialises on a
lock, and `generate_batch` runs many studies through one forward pass per step (the batching scheduler
feeds it). Nothing here reads patient data from anywhere but its arguments, and nothing is logged.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    ProcessorMixin,
)

from model.config import ModelConfig
from model.constrained import GrammarMask, SchemaCompiler
from model.families import FamilyAdapter, adapter_for
from model.processors import VeritraceQwen2_5_VLImageProcessor, register_processors
from model.tiny import UNTRAINED_FLAG
from model.weights_digest import weights_sha256

IMAGE_TOKENS_FALLBACK = 256  # a family whose processor cannot count its image tokens: assume Gemma 3's


class ModelLoadError(ValueError):
    """The configured model cannot be loaded as asked (not local, remote code, unknown family, ...)."""


class ModelIdentity(BaseModel):
    """What produced an output: recorded in every trace so a report can be tied to exact weights."""

    model_config = ConfigDict(frozen=True)

    family: str
    architecture: str
    model_type: str
    weights_sha256: str
    dtype: str
    attention: str
    device: str
    parameter_count: int
    untrained: bool


class GenerationTimings(BaseModel):
    """Wall-clock phases of one generation, in seconds (batch-wide for a batched call)."""

    preprocess_s: float
    time_to_first_token_s: float
    total_s: float
    decode_tokens_per_s: float
    grammar_s: float = 0.0
    grammar_calls: int = 0
    batch_size: int = 1
    first_token_at: float = Field(default=0.0, description="time.perf_counter() when the first token came")


class Generation(BaseModel):
    """One study's output: decoded text, the ids that made it and how long it took."""

    text: str
    token_ids: list[int]
    token_count: int
    prompt_token_count: int
    stopped: bool = Field(description="True when a stop token ended it, False when max_new_tokens did")
    constrained: bool
    timings: GenerationTimings


class VlmHealth(BaseModel):
    """What a worker reports about its model: where it runs and how much accelerator memory it holds."""

    device: str
    memory_allocated_gb: float | None = None
    memory_reserved_gb: float | None = None
    memory_total_gb: float | None = None
    weights_sha256: str


class GenerationRequest(BaseModel):
    """One study's input to a batched generation."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    images: list[Image.Image]
    prompt: str
    max_new_tokens: int = Field(ge=1)
    json_schema: dict[str, Any] | None = None


def resolve_device(device: str) -> torch.device:
    """`auto` means the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return resolved


def choose_attention(device: torch.device) -> str:
    """flash-attn 2 on CUDA when it imports, else PyTorch SDPA (also the only sensible choice on the CPU)."""
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return "sdpa"
        return "flash_attention_2"
    return "sdpa"


def _local_model_dir(config: ModelConfig) -> Path:
    if config.path is None:
        raise ModelLoadError("no model path configured (set VERITRACE_MODEL_PATH to a local directory)")
    path = Path(config.path)
    if not path.is_dir():
        hint = (
            " (it looks like a hub id; Veritrace loads local directories only)"
            if "/" in str(config.path) and not path.is_absolute()
            else ""
        )
        raise ModelLoadError(f"model path {str(config.path)!r} is not a local directory{hint}")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model directory {path} has no config.json")
    return path


def _read_config_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path / 'config.json'} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path / 'config.json'} is not a JSON object")
    return data


def _refuse_remote_code(path: Path, raw_config: dict[str, Any], allowed: bool) -> None:
    if "auto_map" in raw_config and not allowed:
        raise ModelLoadError(
            f"model at {path} needs trust_remote_code (its config has auto_map); "
            "enable allow_remote_code only after reviewing its Python files"
        )


def _load_processor(path: Path, model_type: str, trust_remote_code: bool) -> ProcessorMixin:
    """AutoProcessor first; for Qwen checkpoints whose stock processor needs torchvision, image-only."""
    register_processors()
    error: Exception | None = None
    try:
        processor = AutoProcessor.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
        if isinstance(processor, ProcessorMixin) and getattr(processor, "image_processor", None) is not None:
            return processor
    except (OSError, ValueError, TypeError, ImportError) as exc:
        error = exc
    if model_type in ("qwen2_5_vl", "qwen2_vl"):
        return _qwen_image_only_processor(path)
    raise ModelLoadError(f"no multimodal processor could be loaded from {path}: {error}")


def _qwen_image_only_processor(path: Path) -> ProcessorMixin:
    """Rebuild a hub-style Qwen2.5-VL processor (stock class, separate files) without its video half.

    The PIL image processor is named directly: without torchvision `AutoImageProcessor` refuses the
    stock `Qwen2VLImageProcessor` name. The chat template may sit in chat_template.json or .jinja.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=True)
    template = getattr(tokenizer, "chat_template", None)
    if template is None and (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text()
    if template is None and (path / "chat_template.json").is_file():
        template = json.loads((path / "chat_template.json").read_text()).get("chat_template")
    if template is None:
        raise ModelLoadError(f"{path} has no chat template (chat_template.jinja/json or tokenizer config)")
    return VeritraceQwen2_5_VLImageProcessor(image_processor, tokenizer, chat_template=template)


class _StepClock(LogitsProcessor):
    """Records when each decode step's logits arrive; the first arrival is the time to first token."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.stamps.append(time.perf_counter())
        return scores


class LoadedVlm:
    """A model, its processor and family adapter, held once per worker process."""

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        adapter: FamilyAdapter,
        identity: ModelIdentity,
        device: torch.device,
        *,
        max_new_tokens: int = 96,
        max_images: int = 4,
    ) -> None:
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.max_images = max_images
        self.processor = processor
        self.adapter = adapter
        self.device = device
        self._identity = identity
        self._lock = threading.Lock()
        self._schema_compiler: SchemaCompiler | None = None
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # batched decoding appends on the right
        vocab = self.tokenizer.get_vocab()
        self.stop_token_ids = sorted({vocab[t] for t in adapter.stop_tokens if t in vocab})
        if not self.stop_token_ids and self.tokenizer.eos_token_id is not None:
            self.stop_token_ids = [int(self.tokenizer.eos_token_id)]
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.stop_token_ids[0]

    @property
    def identity(self) -> ModelIdentity:
        """The model identity that goes into every trace."""
        return self._identity

    @property
    def vocab_size(self) -> int:
        """Rows of the output embedding (may exceed the tokenizer's length by padding)."""
        head = self.model.get_output_embeddings()
        assert head is not None
        return int(head.weight.shape[0])

    def health(self) -> VlmHealth:
        """Device and (on CUDA) memory in use, for the worker's health report; no patient data."""
        report = VlmHealth(device=str(self.device), weights_sha256=self._identity.weights_sha256)
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            report.memory_allocated_gb = round(torch.cuda.memory_allocated(index) / 1e9, 3)
            report.memory_reserved_gb = round(torch.cuda.memory_reserved(index) / 1e9, 3)
            report.memory_total_gb = round(torch.cuda.get_device_properties(index).total_memory / 1e9, 3)
        return report

    def schema_compiler(self) -> SchemaCompiler:
        """The JSON-schema compiler for this tokenizer, built on first use (needs xgrammar)."""
        if self._schema_compiler is None:
            self._schema_compiler = SchemaCompiler(self.tokenizer, self.vocab_size, self.stop_token_ids)
        return self._schema_compiler

    def estimate_prompt_tokens(self, request: GenerationRequest) -> int:
        """Prompt length in tokens (text plus image placeholders) without running the image processor."""
        text = len(self.tokenizer(request.prompt, add_special_tokens=False)["input_ids"]) + 16  # + template
        if not request.images:
            return text
        sizes = [(im.height, im.width) for im in request.images]
        try:
            count_tokens = getattr(self.processor, "_get_num_multimodal_tokens")  # noqa: B009 - private API
            counts = count_tokens(image_sizes=sizes).num_image_tokens
        except (AttributeError, TypeError, ValueError):
            counts = [IMAGE_TOKENS_FALLBACK] * len(sizes)
        return text + sum(int(c) for c in counts) + 2 * len(sizes)

    def generate(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        *,
        max_new_tokens: int,
        json_schema: dict[str, Any] | None = None,
    ) -> Generation:
        """Greedy generation for one study; `json_schema` constrains the output to matching JSON."""
        request = GenerationRequest(
            images=list(images), prompt=prompt, max_new_tokens=max_new_tokens, json_schema=json_schema
        )
        return self.generate_batch([request])[0]

    def encode(self, requests: Sequence[GenerationRequest]) -> dict[str, torch.Tensor]:
        """Chat-format, tokenize and preprocess a batch (left-padded) into model inputs on the device."""
        texts = [
            self.processor.apply_chat_template(
                self.adapter.messages(len(r.images), r.prompt), add_generation_prompt=True, tokenize=False
            )
            for r in requests
        ]
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
        if any(r.images for r in requests):
            if self.adapter.nested_images:
                kwargs["images"] = [[im.convert("RGB") for im in r.images] for r in requests]
            else:
                kwargs["images"] = [im.convert("RGB") for r in requests for im in r.images]
        batch = self.processor(**kwargs)
        out: dict[str, torch.Tensor] = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self.model.dtype)
            out[key] = value
        return out

    def generate_batch(
        self, requests: Sequence[GenerationRequest], *, static_cache: bool = False, min_new_tokens: int = 0
    ) -> list[Generation]:
        """Greedy generation for several studies in one batch; row i of the result answers request i.

        Requests are left-padded together, so each row's greedy tokens equal what it gets alone (the
        batching test checks this token for token). `static_cache` pre-allocates the KV cache, which on
        CUDA lets transformers compile the decode step into CUDA graphs (worth it for a fixed batch size);
        `min_new_tokens` suppresses stop tokens until then (benchmarks force a fixed length with it).
        """
        if not requests:
            return []
        with self._lock, torch.inference_mode():
            start = time.perf_counter()
            inputs = self.encode(requests)
            encoded = time.perf_counter()
            grammars = [
                self.schema_compiler().compile(r.json_schema) if r.json_schema is not None else None
                for r in requests
            ]
            clock = _StepClock()
            processors: list[LogitsProcessor] = []
            mask = None
            if any(g is not None for g in grammars):
                mask = GrammarMask(grammars, self.vocab_size)
                processors.append(mask)
            processors.append(clock)
            limit = max(r.max_new_tokens for r in requests)
            output = self.model.generate(  # type: ignore[operator]
                **inputs,
                max_new_tokens=limit,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=self.stop_token_ids,
                pad_token_id=self.pad_token_id,
                logits_processor=LogitsProcessorList(processors),
                min_new_tokens=min_new_tokens or None,
                **({"cache_implementation": "static"} if static_cache else {}),
            )
            done = time.perf_counter()
        prompt_len = int(inputs["input_ids"].shape[1])
        attention = inputs.get("attention_mask")
        first = clock.stamps[0] if clock.stamps else done
        steps = max(len(clock.stamps) - 1, 0)
        timings = GenerationTimings(
            preprocess_s=encoded - start,
            time_to_first_token_s=first - start,
            total_s=done - start,
            decode_tokens_per_s=(steps * len(requests) / (done - first)) if steps and done > first else 0.0,
            grammar_s=mask.seconds if mask is not None else 0.0,
            grammar_calls=mask.calls if mask is not None else 0,
            batch_size=len(requests),
            first_token_at=first,
        )
        results: list[Generation] = []
        for row, request in enumerate(requests):
            ids = [int(t) for t in output[row, prompt_len:].tolist()][: request.max_new_tokens]
            stopped = False
            for i, tok in enumerate(ids):
                if tok in self.stop_token_ids:
                    ids, stopped = ids[:i], True
                    break
            results.append(
                Generation(
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    token_ids=ids,
                    token_count=len(ids),
                    prompt_token_count=int(attention[row].sum()) if attention is not None else prompt_len,
                    stopped=stopped,
                    constrained=grammars[row] is not None,
                    timings=timings,
                )
            )
        return results


def load_vlm(config: ModelConfig) -> LoadedVlm:
    """Load the model at `config.path` (a local directory only) for inference on `config.device`.

    bf16 on CUDA, float32 on the CPU; flash-attn 2 when it imports on CUDA, else SDPA. Hub ids,
    missing directories, checkpoints needing remote code (unless allowed) and unknown families raise
    `ModelLoadError`.
    """
    path = _local_model_dir(config)
    raw = _read_config_json(path)
    _refuse_remote_code(path, raw, config.allow_remote_code)
    model_type = str(raw.get("model_type", ""))
    try:
        adapter = adapter_for(model_type)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    device = resolve_device(config.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    attention = choose_attention(device)
    processor = _load_processor(path, model_type, config.allow_remote_code)
    model = AutoModelForImageTextToText.from_pretrained(
        path,
        dtype=dtype,
        attn_implementation=attention,
        local_files_only=True,
        trust_remote_code=config.allow_remote_code,
    )
    torch.nn.Module.to(model, device)
    model.eval()
    identity = ModelIdentity(
        family=adapter.family,
        architecture=type(model).__name__,
        model_type=model_type,
        weights_sha256=weights_sha256(path),
        dtype=str(dtype).removeprefix("torch."),
        attention=str(getattr(model.config, "_attn_implementation", attention)),
        device=str(device),
        parameter_count=sum(p.numel() for p in model.parameters()),
        untrained=bool(raw.get(UNTRAINED_FLAG, False)),
    )
    return LoadedVlm(
        model,
        processor,
        adapter,
        identity,
        device,
        max_new_tokens=config.max_new_tokens,
        max_images=config.max_images,
    )
