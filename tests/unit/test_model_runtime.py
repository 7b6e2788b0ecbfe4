"""Tiny random models of each family, saved and loaded through the production path (`load_vlm`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import ModelConfig
from model.families import QWEN2_5_VL, ToolCall, adapter_for
from model.runtime import GenerationRequest, LoadedVlm, ModelLoadError, load_vlm
from model.tiny import TINY_FAMILIES, make_tiny
from model.weights_digest import weights_sha256

FAMILIES = sorted(TINY_FAMILIES)
torch.set_num_threads(1)  # shared CI box: one thread per tiny model is faster under contention


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {f: make_tiny(f, root / f, seed=1) for f in FAMILIES}


@pytest.fixture(scope="module")
def vlms(tiny_dirs: dict[str, Path]) -> dict[str, LoadedVlm]:
    return {f: load_vlm(ModelConfig(path=d, device="cpu")) for f, d in tiny_dirs.items()}


def _image(seed: int, size: tuple[int, int] = (64, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random(size) * 255).astype(np.uint8))


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_describes_the_loaded_checkpoint(family: str, vlms: dict[str, LoadedVlm], tiny_dirs) -> None:
    ident = vlms[family].identity
    assert ident.family == family
    assert ident.untrained is True
    assert ident.dtype == "float32" and ident.attention == "sdpa" and ident.device == "cpu"
    assert ident.weights_sha256 == weights_sha256(tiny_dirs[family])
    assert ident.parameter_count == sum(p.numel() for p in vlms[family].model.parameters()) > 10_000
    assert ident.architecture.endswith("ForConditionalGeneration")


def test_weights_digest_changes_with_the_weights(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dirs["gemma3"], copy)
    before = weights_sha256(copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    assert weights_sha256(copy) != before


def test_same_seed_same_weights(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    again = make_tiny("qwen2_5_vl", tmp_path / "again", seed=1)
    assert weights_sha256(again) == weights_sha256(tiny_dirs["qwen2_5_vl"])


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (None, "no model path"),
        ("Qwen/Qwen2.5-VL-7B-Instruct", "hub id"),
        ("/nonexistent/model", "not a local directory"),
    ],
)
def test_refuses_what_is_not_a_local_model(path: str | None, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_vlm(ModelConfig.model_validate({"path": path}))


def test_refuses_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_vlm(ModelConfig(path=tmp_path))


def test_refuses_remote_code_unless_allowed(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    copy = tmp_path / "remote"
    shutil.copytree(tiny_dirs["gemma3"], copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForImageTextToText": "modeling_evil.Evil"}
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_vlm(ModelConfig(path=copy))


def test_refuses_unknown_family(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    copy = tmp_path / "odd"
    shutil.copytree(tiny_dirs["gemma3"], copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["model_type"] = "mystery_vlm"
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unsupported model_type 'mystery_vlm'"):
        load_vlm(ModelConfig(path=copy))


def test_refuses_cuda_when_absent(tiny_dirs: dict[str, Path]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this check is for CPU-only machines")  # never skipped in CI: CI has no GPU
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load_vlm(ModelConfig(path=tiny_dirs["gemma3"], device="cuda"))


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_is_greedy_deterministic_and_bounded(family: str, vlms: dict[str, LoadedVlm]) -> None:
    vlm = vlms[family]
    first = vlm.generate([_image(0)], "Describe the image.", max_new_tokens=8)
    second = vlm.generate([_image(0)], "Describe the image.", max_new_tokens=8)
    assert first.token_ids == second.token_ids
    assert first.token_count == len(first.token_ids) <= 8
    assert first.prompt_token_count > 10
    assert not set(first.token_ids) & set(vlm.stop_token_ids)
    assert first.timings.total_s >= first.timings.time_to_first_token_s > 0
    assert first.constrained is False


@pytest.mark.parametrize("family", FAMILIES)
def test_images_change_the_output(family: str, vlms: dict[str, LoadedVlm]) -> None:
    """The image really reaches the model: a different image gives different first-step logits."""
    vlm = vlms[family]
    a = vlm.encode([GenerationRequest(images=[_image(1)], prompt="x", max_new_tokens=1)])
    b = vlm.encode([GenerationRequest(images=[_image(2)], prompt="x", max_new_tokens=1)])
    import torch

    with torch.inference_mode():
        la = vlm.model(**a).logits[0, -1]
        lb = vlm.model(**b).logits[0, -1]
    assert not torch.allclose(la, lb)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_prompt_works(family: str, vlms: dict[str, LoadedVlm]) -> None:
    gen = vlms[family].generate([], "No image today.", max_new_tokens=4)
    assert gen.token_count <= 4


SCHEMA = {
    "type": "object",
    "properties": {
        "severity": {"type": "string", "enum": ["normal", "critical"]},
        "citations": {
            "type": "array",
            "items": {"type": "string", "enum": ["obs-1", "img:9:0"]},
            "maxItems": 2,
        },
    },
    "required": ["severity", "citations"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("family", FAMILIES)
def test_json_schema_output_always_parses_and_validates(family: str, vlms: dict[str, LoadedVlm]) -> None:
    vlm = vlms[family]
    for seed in range(4):
        gen = vlm.generate([_image(seed)], f"Report {seed} as JSON.", max_new_tokens=96, json_schema=SCHEMA)
        assert gen.constrained and gen.stopped, gen.text
        data = json.loads(gen.text)
        assert set(data) == {"severity", "citations"}
        assert data["severity"] in ("normal", "critical")
        assert set(data["citations"]) <= {"obs-1", "img:9:0"} and len(data["citations"]) <= 2
        assert gen.timings.grammar_s > 0


def test_bad_schema_is_a_clear_error(vlms: dict[str, LoadedVlm]) -> None:
    with pytest.raises(ValueError, match="could not be compiled"):
        vlms["gemma3"].generate([], "x", max_new_tokens=2, json_schema={"type": "no-such-type"})


def test_tool_call_format_round_trips() -> None:
    call = ToolCall(name="get_labs", arguments={"code": "2160-0"})
    text = "thinking " + QWEN2_5_VL.format_tool_call(call) + " <tool_call>\nnot json\n</tool_call>"
    assert QWEN2_5_VL.parse_tool_calls(text) == [call]
    assert adapter_for("qwen2_vl") is QWEN2_5_VL


def test_hub_layout_qwen_checkpoint_loads_without_torchvision(tmp_path: Path, tiny_dirs, vlms) -> None:
    """Qwen2.5-VL as published: stock processor class, preprocessor_config.json, chat_template.json.

    The stock processor needs a video processor (torchvision); the loader must fall back to the image-only
    one and produce exactly the tokens of the Veritrace-saved layout.
    """
    hub = tmp_path / "hub"
    shutil.copytree(tiny_dirs["qwen2_5_vl"], hub)
    nested = json.loads((hub / "processor_config.json").read_text())
    image_cfg = dict(nested["image_processor"], processor_class="Qwen2_5_VLProcessor")
    (hub / "preprocessor_config.json").write_text(json.dumps(image_cfg))
    (hub / "processor_config.json").unlink()
    tok_cfg = json.loads((hub / "tokenizer_config.json").read_text())
    (hub / "tokenizer_config.json").write_text(
        json.dumps(dict(tok_cfg, processor_class="Qwen2_5_VLProcessor"))
    )
    template = (hub / "chat_template.jinja").read_text()
    (hub / "chat_template.jinja").unlink()
    (hub / "chat_template.json").write_text(json.dumps({"chat_template": template}))

    loaded = load_vlm(ModelConfig(path=hub, device="cpu"))
    assert type(loaded.processor).__name__ == "VeritraceQwen2_5_VLImageProcessor"
    image = _image(3)
    got = loaded.generate([image], "Hub layout.", max_new_tokens=6)
    want = vlms["qwen2_5_vl"].generate([image], "Hub layout.", max_new_tokens=6)
    assert got.token_ids == want.token_ids and got.prompt_token_count == want.prompt_token_count
