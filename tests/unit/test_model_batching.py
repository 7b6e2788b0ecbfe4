"""The batching scheduler: batched greedy output equals one-at-a-time output, token for token."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from model.batching import BatchScheduler, SchedulerClosed, StudyTooLarge
from model.config import ModelConfig
from model.runtime import GenerationRequest, LoadedVlm, load_vlm
from model.tiny import TINY_FAMILIES, make_tiny

torch.set_num_threads(1)  # shared CI box: one thread per tiny model is faster under contention
FAMILIES = sorted(TINY_FAMILIES)
SCHEMA = {
    "type": "object",
    "properties": {"severity": {"type": "string", "enum": ["normal", "minor", "critical"]}},
    "required": ["severity"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def vlms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedVlm]:
    root = tmp_path_factory.mktemp("batching")
    return {f: load_vlm(ModelConfig(path=make_tiny(f, root / f, seed=7), device="cpu")) for f in FAMILIES}


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random(size) * 255).astype(np.uint8))


def _requests() -> list[GenerationRequest]:
    """Different prompt lengths, image counts and sizes, token limits, with and without a schema."""
    return [
        GenerationRequest(images=[_image(1, (64, 64))], prompt="Chest CT.", max_new_tokens=10),
        GenerationRequest(
            images=[_image(2, (80, 120)), _image(3, (64, 64))],
            prompt="Compare the two images of the left lung with the prior study; any new nodule?",
            max_new_tokens=6,
        ),
        GenerationRequest(images=[], prompt="No images in this study.", max_new_tokens=8),
        GenerationRequest(
            images=[_image(4, (96, 64))], prompt="JSON please.", max_new_tokens=40, json_schema=SCHEMA
        ),
        GenerationRequest(images=[_image(5, (64, 96))], prompt="Brain MR, axial.", max_new_tokens=9),
        GenerationRequest(
            images=[_image(6, (64, 64))], prompt="Severity?", max_new_tokens=40, json_schema=SCHEMA
        ),
    ]


def _submit_all(scheduler: BatchScheduler, requests: list[GenerationRequest]) -> list:
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        futures = [
            pool.submit(
                scheduler.generate,
                r.images,
                r.prompt,
                max_new_tokens=r.max_new_tokens,
                json_schema=r.json_schema,
                timeout_s=120,
            )
            for r in requests
        ]
        return [f.result() for f in futures]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_greedy_equals_sequential_token_for_token(family: str, vlms: dict[str, LoadedVlm]) -> None:
    vlm = vlms[family]
    requests = _requests()
    sequential = [
        vlm.generate(r.images, r.prompt, max_new_tokens=r.max_new_tokens, json_schema=r.json_schema)
        for r in requests
    ]
    scheduler = BatchScheduler(vlm, max_batch=8, max_wait_s=0.5)
    try:
        batched = _submit_all(scheduler, requests)
    finally:
        scheduler.close()
    assert scheduler.stats.largest_batch > 1, "requests were never batched together"
    for seq, bat, req in zip(sequential, batched, requests, strict=True):
        assert bat.token_ids == seq.token_ids, req.prompt
        assert bat.text == seq.text and bat.token_count <= req.max_new_tokens
    for row in (3, 5):  # constrained rows stay valid JSON inside a mixed batch
        assert batched[row].stopped and json.loads(batched[row].text)["severity"] in (
            "normal",
            "minor",
            "critical",
        )


def test_direct_generate_batch_matches_sequential(vlms: dict[str, LoadedVlm]) -> None:
    vlm = vlms["qwen2_5_vl"]
    requests = _requests()
    batched = vlm.generate_batch(requests)
    for req, bat in zip(requests, batched, strict=True):
        assert bat.token_ids == vlm.generate_batch([req])[0].token_ids


def test_kv_budget_splits_batches_and_refuses_oversized_requests(vlms: dict[str, LoadedVlm]) -> None:
    vlm = vlms["gemma3"]
    requests = _requests()
    one = max(vlm.estimate_prompt_tokens(r) + r.max_new_tokens for r in requests)
    scheduler = BatchScheduler(vlm, max_batch=8, kv_token_budget=2 * one, max_wait_s=0.5)
    try:
        batched = _submit_all(scheduler, requests)
        with pytest.raises(StudyTooLarge, match="budget"):
            scheduler.generate([_image(9, (64, 64))], "x " * 3 * one, max_new_tokens=4)
    finally:
        scheduler.close()
    assert scheduler.stats.largest_batch < len(requests) and scheduler.stats.batches >= 2
    for req, bat in zip(requests, batched, strict=True):
        assert (
            bat.token_ids
            == vlm.generate(
                req.images, req.prompt, max_new_tokens=req.max_new_tokens, json_schema=req.json_schema
            ).token_ids
        )


def test_out_of_memory_splits_the_batch(vlms: dict[str, LoadedVlm], monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU here, so memory exhaustion is simulated: batches of more than two rows raise the real
    # torch.OutOfMemoryError type, single oversize studies too when their prompt says so.
    vlm = vlms["llava"]
    real = vlm.generate_batch

    def limited(requests, **kw):
        if len(requests) > 2 or any("huge" in r.prompt for r in requests):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(requests, **kw)

    monkeypatch.setattr(vlm, "generate_batch", limited)
    scheduler = BatchScheduler(vlm, max_batch=8, max_wait_s=0.5)
    try:
        requests = _requests()[:4]  # one batch of four, split to two pairs
        batched = _submit_all(scheduler, requests)
        assert scheduler.stats.oom_splits >= 1
        assert all(b.token_count >= 0 for b in batched)
        with pytest.raises(StudyTooLarge, match="out of memory"):
            scheduler.generate([], "huge study", max_new_tokens=2, timeout_s=60)
    finally:
        scheduler.close()


def test_a_bad_request_fails_alone(vlms: dict[str, LoadedVlm]) -> None:
    vlm = vlms["qwen2_5_vl"]
    scheduler = BatchScheduler(vlm, max_batch=8, max_wait_s=0.5)
    try:
        good = scheduler.submit([], "fine", max_new_tokens=3)
        bad = scheduler.submit([], "bad schema", max_new_tokens=3, json_schema={"type": "no-such-type"})
        assert good.result(timeout=60).token_count <= 3
        with pytest.raises(ValueError, match="could not be compiled"):
            bad.result(timeout=60)
    finally:
        scheduler.close()
    with pytest.raises(SchedulerClosed):
        scheduler.submit([], "late", max_new_tokens=1)
