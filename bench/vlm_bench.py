#!/usr/bin/env python3
"""VLM runtime benchmark: naive one-study-at-a-time generate() vs Veritrace's BatchScheduler.

Same model, same run: a Qwen2.5-VL-7B-sized model (Lingshu-7B's architecture) with random weights built on
the device (the speed does not depend on the weights), Veritrace's own processor and `LoadedVlm`, images of
448 and 1008 px (alternating between studies), prompts of about 1,000 tokens, 256 new tokens forced.

Sections
  1. naive: `LoadedVlm.generate_batch([one study])` one after the other (what a worker does without
     batching): time to first token per image size, decode ms/step at batch 1, studies/hour
  2. scheduler: N studies submitted at once to a `BatchScheduler` (N = 8 / 32 / 64): decode tokens/s,
     studies/hour, time to first token (submit -> first token), peak GPU memory
  3. scheduler with a static KV cache (on CUDA transformers compiles the decode step), one concurrency,
     only while the time budget allows
  4. constrained decoding: the draft-report JSON schema through xgrammar, mask ms per token and the decode
     step with and without it
  5. the bandwidth floor: weight bytes / HBM bandwidth per decode step, and measured / floor
A table goes to stdout and JSON to $OUT/vlm_bench.json (or --json), rewritten after every section, and a
watchdog prints what there is and exits before --hard-timeout-s.

GPU run (H200):   python bench/vlm_bench.py
CPU smoke test:   python bench/vlm_bench.py --tiny --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_baseline

from model.batching import BatchScheduler
from model.draft import report_schema
from model.families import QWEN2_5_VL
from model.processors import VeritraceQwen2_5_VLImageProcessor
from model.runtime import Generation, GenerationRequest, LoadedVlm, ModelIdentity, choose_attention
from model.tiny import QWEN_CHAT_TEMPLATE
from model.tiny_tokenizers import build_qwen_tokenizer

_T0 = time.perf_counter()
WORDS = [
    "the",
    "left",
    "lower",
    "lobe",
    "shows",
    "a",
    "small",
    "nodule",
    "compared",
    "with",
    "the",
    "prior",
    "study",
    "creatinine",
    "stable",
]


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def build_vlm(tiny: bool, device: torch.device, dtype: torch.dtype, attn: str, max_px: int) -> LoadedVlm:
    """The 7B-sized (or tiny) Qwen2.5-VL with random weights, wrapped as `load_vlm` wraps a checkpoint."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = build_qwen_tokenizer()
    ids = {t: tok.get_vocab()[t] for t in ("<|endoftext|>", "<|im_end|>")}
    text = dict(gpu_baseline.TINY_TEXT if tiny else gpu_baseline.FULL_TEXT)
    rope = {
        "rope_type": "default",
        "rope_theta": text.pop("rope_theta"),
        "mrope_section": text.pop("mrope_section"),
    }
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], rope_parameters=rope)
    vision = dict(gpu_baseline.TINY_VISION if tiny else gpu_baseline.FULL_VISION)
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tok.get_vocab()["<|image_pad|>"],
        video_token_id=tok.get_vocab()["<|video_pad|>"],
        vision_start_token_id=tok.get_vocab()["<|vision_start|>"],
        vision_end_token_id=tok.get_vocab()["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype, attn_implementation=attn)
    model.eval()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=max_px * max_px)
    processor = VeritraceQwen2_5_VLImageProcessor(image_processor, tok, chat_template=QWEN_CHAT_TEMPLATE)
    identity = ModelIdentity(
        family="qwen2_5_vl",
        architecture=type(model).__name__,
        model_type="qwen2_5_vl",
        weights_sha256="0" * 64,
        dtype=str(dtype).removeprefix("torch."),
        attention=str(getattr(model.config, "_attn_implementation", attn)),
        device=str(device),
        parameter_count=sum(p.numel() for p in model.parameters()),
        untrained=True,
    )
    return LoadedVlm(model, processor, QWEN2_5_VL, identity, device)


def make_prompt(vlm: LoadedVlm, tokens: int) -> str:
    """Words until the prompt text is `tokens` long in this tokenizer."""
    words: list[str] = []
    step = 64
    while True:
        words += [WORDS[(len(words) + i) % len(WORDS)] for i in range(step)]
        n = len(vlm.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"])
        if n >= tokens:
            while (
                words and len(vlm.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) > tokens
            ):
                words.pop()
            return " ".join(words)


def noise_image(px: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((px, px)) * 255).astype(np.uint8)).convert("RGB")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def decode_ms_per_step(gen: Generation) -> float | None:
    """(total - time to first token) / (tokens - 1): the steady decode step of one batched call."""
    t = gen.timings
    if gen.token_count < 2:
        return None
    return (t.total_s - t.time_to_first_token_s) / (gen.token_count - 1) * 1e3


def run_naive(
    vlm: LoadedVlm, requests: list[GenerationRequest], sizes: list[int], new: int
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for i, req in enumerate(requests):
        t0 = time.perf_counter()
        (gen,) = vlm.generate_batch([req], min_new_tokens=new)
        sync(vlm.device)
        rows.append(
            dict(
                image_px=sizes[i % len(sizes)],
                wall_s=time.perf_counter() - t0,
                ttft_s=gen.timings.time_to_first_token_s,
                tokens=gen.token_count,
                prompt_tokens=gen.prompt_token_count,
                decode_ms_per_step=decode_ms_per_step(gen),
            )
        )
        log(
            f"naive study {i}: {rows[-1]['wall_s']:.2f}s, ttft {rows[-1]['ttft_s'] * 1e3:.0f} ms, "
            f"{gen.token_count} tokens, prompt {gen.prompt_token_count}"
        )
    walls = [r["wall_s"] for r in rows]
    steps = [r["decode_ms_per_step"] for r in rows if r["decode_ms_per_step"] is not None]
    ttft_by_px = {
        px: statistics.median([r["ttft_s"] for r in rows if r["image_px"] == px])
        for px in sizes
        if any(r["image_px"] == px for r in rows)
    }
    total_tokens = sum(r["tokens"] for r in rows)
    return dict(
        mode="naive",
        concurrency=1,
        studies=len(rows),
        wall_s=sum(walls),
        tokens_per_s=total_tokens / sum(walls),
        studies_per_hour=3600 * len(rows) / sum(walls),
        ttft_ms_median=statistics.median([r["ttft_s"] for r in rows]) * 1e3,
        ttft_ms_by_image_px={str(k): round(v * 1e3, 1) for k, v in ttft_by_px.items()},
        decode_ms_per_step=statistics.median(steps) if steps else None,
        rows=rows,
    )


def run_scheduler(
    vlm: LoadedVlm, requests: list[GenerationRequest], new: int, static_cache: bool, label: str
) -> dict[str, Any]:
    scheduler = BatchScheduler(
        vlm,
        max_batch=len(requests),
        kv_token_budget=10**9,
        max_wait_s=0.25,
        static_cache=static_cache,
        min_new_tokens=new,
    )
    reset_peak(vlm.device)
    try:
        t0 = time.perf_counter()
        submitted = []
        for req in requests:
            submitted.append(
                (
                    time.perf_counter(),
                    scheduler.submit(req.images, req.prompt, max_new_tokens=req.max_new_tokens),
                )
            )
        results = [(at, fut.result()) for at, fut in submitted]
        sync(vlm.device)
        wall = time.perf_counter() - t0
    finally:
        scheduler.close()
    ttfts = [gen.timings.first_token_at - at for at, gen in results]
    steps = [s for _, g in results if (s := decode_ms_per_step(g)) is not None]
    tokens = sum(g.token_count for _, g in results)
    return dict(
        mode=label,
        concurrency=len(requests),
        studies=len(requests),
        batches=scheduler.stats.batches,
        largest_batch=scheduler.stats.largest_batch,
        wall_s=wall,
        tokens_per_s=tokens / wall,
        studies_per_hour=3600 * len(requests) / wall,
        ttft_ms_median=statistics.median(ttfts) * 1e3,
        ttft_ms_max=max(ttfts) * 1e3,
        decode_ms_per_step=statistics.median(steps) if steps else None,
        peak_gpu_gb=peak_gb(vlm.device),
    )


def run_constrained(vlm: LoadedVlm, image: Image.Image, prompt: str, tokens: int) -> dict[str, Any]:
    """Per-token cost of the xgrammar mask on the draft-report schema (same request, with and without)."""
    schema = report_schema(["obs-1", "cond-2", "img:1.2.3:0"])
    vlm.schema_compiler().compile(schema)  # compile once outside the timing, as a worker does
    req = GenerationRequest(images=[image], prompt=prompt, max_new_tokens=tokens)
    (free,) = vlm.generate_batch([req], min_new_tokens=tokens)
    (bound,) = vlm.generate_batch([req.model_copy(update={"json_schema": schema})])
    t = bound.timings
    return dict(
        tokens=bound.token_count,
        mask_ms_per_token=(t.grammar_s / t.grammar_calls * 1e3) if t.grammar_calls else None,
        decode_ms_per_step_free=decode_ms_per_step(free),
        decode_ms_per_step_constrained=decode_ms_per_step(bound),
        output_prefix=bound.text[:80],
    )


def fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(res: dict[str, Any]) -> None:
    m = res["meta"]
    print("=" * 110)
    print(
        f"VLM runtime benchmark | {m['model']} | {m['device_name']} | {m['dtype']} | attn {m['attention']} "
        f"| {m['parameters'] / 1e9:.2f}B params"
    )
    print(
        f"prompt ~{m['prompt_tokens']} text tokens + one image ({m['images']}), "
        f"{m['new_tokens']} new tokens forced"
    )
    print(
        f"{'mode':<22}{'conc':>5}{'tok/s':>10}{'studies/h':>11}{'TTFT med ms':>13}{'TTFT max ms':>13}"
        f"{'ms/step':>9}{'x floor':>9}{'GPU GB':>8}"
    )
    # the floor is the GPU's (HBM bandwidth); against a CPU run the ratio means nothing
    floor = res.get("floor", {}).get("floor_ms_per_step") if m.get("device") == "cuda" else None
    for r in res.get("runs", []):
        if "error" in r:
            print(f"{r['mode']:<22}{r.get('concurrency', ''):>5}  ERROR {r['error'][:70]}")
            continue
        xf = r["decode_ms_per_step"] / floor if floor and r.get("decode_ms_per_step") else None
        print(
            f"{r['mode']:<22}{r['concurrency']:>5}{r['tokens_per_s']:>10.1f}{r['studies_per_hour']:>11.0f}"
            f"{r['ttft_ms_median']:>13.0f}{fmt(r.get('ttft_ms_max'), '.0f'):>13}"
            f"{fmt(r.get('decode_ms_per_step'), '.2f'):>9}{fmt(xf, '.1f'):>9}"
            f"{fmt(r.get('peak_gpu_gb'), '.1f'):>8}"
        )
    naive = next((r for r in res.get("runs", []) if r["mode"] == "naive" and "error" not in r), None)
    if naive:
        print(f"naive TTFT by image size (ms): {naive['ttft_ms_by_image_px']}")
        for r in res["runs"]:
            if r["mode"] != "naive" and "error" not in r:
                print(
                    f"  {r['mode']} x{r['concurrency']}: "
                    f"{r['studies_per_hour'] / naive['studies_per_hour']:.1f}x naive studies/hour"
                )
    if "floor" in res:
        f = res["floor"]
        print(
            f"floor: {f['weight_bytes'] / 1e9:.2f} GB weights / {f['hbm_bytes_per_s'] / 1e12:.1f} TB/s = "
            f"{f['floor_ms_per_step']:.2f} ms per decode step"
        )
    if "constrained" in res:
        c = res["constrained"]
        print(
            f"constrained decoding: mask {fmt(c.get('mask_ms_per_token'), '.3f')} ms/token; decode step "
            f"{fmt(c.get('decode_ms_per_step_free'), '.2f')} ms free vs "
            f"{fmt(c.get('decode_ms_per_step_constrained'), '.2f')} ms constrained ({c.get('tokens')} tokens)"
        )
    for e in res.get("errors", []):
        print(f"[error] {e}")
    print("=" * 110, flush=True)


def write_json(res: dict[str, Any], path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(res, indent=2, default=str))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny config from gpu_baseline (CPU smoke test)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="default bfloat16 on cuda, float32 on cpu")
    ap.add_argument(
        "--attn", default="auto", help="auto (flash_attention_2 if it imports on cuda, else sdpa)"
    )
    ap.add_argument("--images", default="448,1008", help="image sizes in px, alternating between studies")
    ap.add_argument("--prompt-tokens", type=int, default=1000)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--naive-studies", type=int, default=4)
    ap.add_argument("--concurrency", default="8,32,64")
    ap.add_argument("--static-concurrency", default="32", help="'none' to skip the static-cache run")
    ap.add_argument("--constrained-tokens", type=int, default=128)
    ap.add_argument("--hbm-bw", type=float, default=4.3e12)
    ap.add_argument("--hard-timeout-s", type=float, default=540.0)
    ap.add_argument("--json", default=None, help="default $OUT/vlm_bench.json when OUT is set")
    args = ap.parse_args(argv)
    if args.json is None and os.environ.get("OUT"):
        args.json = str(Path(os.environ["OUT"]) / "vlm_bench.json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but CUDA is not available (use --tiny --device cpu for a smoke test)")
        return 2
    dtype = (
        getattr(torch, args.dtype)
        if args.dtype
        else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    attn = choose_attention(device) if args.attn == "auto" else args.attn
    sizes = [int(x) for x in args.images.split(",") if x.strip()]
    torch.manual_seed(0)
    res: dict[str, Any] = dict(meta={}, runs=[], errors=[])

    def watchdog() -> None:
        res["errors"].append(f"hard timeout {args.hard_timeout_s:.0f}s: run cut short")
        write_json(res, args.json)
        print_table(res)
        os._exit(3)

    timer = threading.Timer(args.hard_timeout_s, watchdog)
    timer.daemon = True
    timer.start()

    t0 = time.perf_counter()
    vlm = build_vlm(args.tiny, device, dtype, attn, max(sizes))
    sync(device)
    params = vlm.identity.parameter_count
    elem = torch.finfo(dtype).bits // 8
    model: Any = vlm.model
    visual = sum(p.numel() for p in model.model.visual.parameters())
    embed = model.get_input_embeddings().weight.numel()
    res["meta"] = dict(
        model=("TINY " if args.tiny else "") + "Qwen2.5-VL-7B-arch (random weights)",
        device_name=torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__,
        transformers=transformers.__version__,
        dtype=str(dtype).removeprefix("torch."),
        attention=vlm.identity.attention,
        parameters=params,
        images=args.images,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        build_s=round(time.perf_counter() - t0, 1),
        cpu_threads=torch.get_num_threads(),
        device=device.type,
    )
    # per decode step the LM streams every weight except the vision tower and the embedding table
    res["floor"] = dict(
        hbm_bytes_per_s=args.hbm_bw,
        weight_bytes=params * elem,
        decode_read_bytes=(params - visual - embed) * elem,
        floor_ms_per_step=params * elem / args.hbm_bw * 1e3,
    )
    log(f"model built in {res['meta']['build_s']}s: {params / 1e9:.3f}B params, {dtype}, attn {attn}")
    prompt = make_prompt(vlm, args.prompt_tokens)

    def requests(n: int, seed: int) -> list[GenerationRequest]:
        return [
            GenerationRequest(
                images=[noise_image(sizes[i % len(sizes)], seed + i)],
                prompt=f"Study {seed + i}. {prompt}",
                max_new_tokens=args.new_tokens,
            )
            for i in range(n)
        ]

    # warm-up: kernels, allocator, tokenizer caches
    vlm.generate_batch(requests(2, 10_000)[:2], min_new_tokens=4)
    sync(device)
    log("warm-up done")

    try:
        res["runs"].append(run_naive(vlm, requests(args.naive_studies, 0), sizes, args.new_tokens))
        naive_step = res["runs"][-1]["decode_ms_per_step"]
        res["floor"]["measured_ms_per_step_b1"] = naive_step
        res["floor"]["x_floor_b1"] = naive_step / res["floor"]["floor_ms_per_step"] if naive_step else None
    except Exception as exc:  # a failed section is reported, the others still run
        res["runs"].append(dict(mode="naive", concurrency=1, error=f"{type(exc).__name__}: {exc}"))
    write_json(res, args.json)

    for c in [int(x) for x in args.concurrency.split(",") if x.strip()]:
        try:
            res["runs"].append(run_scheduler(vlm, requests(c, 1000 * c), args.new_tokens, False, "scheduler"))
            r = res["runs"][-1]
            log(f"scheduler x{c}: {r['wall_s']:.1f}s, {r['tokens_per_s']:.0f} tok/s, batches {r['batches']}")
        except Exception as exc:
            res["runs"].append(dict(mode="scheduler", concurrency=c, error=f"{type(exc).__name__}: {exc}"))
        write_json(res, args.json)

    if args.static_concurrency != "none":
        left = args.hard_timeout_s - (time.perf_counter() - _T0)
        c = int(args.static_concurrency)
        if left < 90 and not args.tiny:
            res["errors"].append(f"static-cache run skipped: {left:.0f}s left")
        else:
            try:
                res["runs"].append(
                    run_scheduler(vlm, requests(c, 7000), args.new_tokens, True, "scheduler+static")
                )
            except Exception as exc:
                res["runs"].append(
                    dict(mode="scheduler+static", concurrency=c, error=f"{type(exc).__name__}: {exc}")
                )
            write_json(res, args.json)

    try:
        res["constrained"] = run_constrained(vlm, noise_image(sizes[0], 5), prompt, args.constrained_tokens)
    except Exception as exc:
        res["errors"].append(f"constrained: {type(exc).__name__}: {exc}")
    write_json(res, args.json)
    timer.cancel()
    print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
