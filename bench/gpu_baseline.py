#!/usr/bin/env python3
# ruff: noqa
# Copied verbatim from shared/bench/gpu_baseline.py (the issue's naive baseline); kept unlinted to stay identical.
"""Naive Hugging Face baseline for a 7B-class medical VLM (Qwen2.5-VL architecture, e.g. Lingshu-7B).

Self-contained: needs only torch + transformers (5.x; 4.5x tried as a fallback). No internet, no weights,
no tokenizer: the model is built from a config equal to Qwen2.5-VL-7B-Instruct's, with random bf16 weights
created directly on the device, and every input is built by hand.

Measures
  1. model build time and parameter count
  2. image prefill (vision encoder + LLM prefill, one forward, batch 1): 448x448 and 1008x1008 images,
     512 text tokens each; median of N after warm-up (vision-encoder-only time reported alongside)
  3. decode with model.generate (greedy, min_new_tokens = max_new_tokens = 128, 1024-token random text
     prompt) at batch 1/8/32 with the default dynamic cache; then cache_implementation='static' at batch
     1/32, both eager (disable_compile=True) and as HF does it by default on CUDA (auto torch.compile,
     mode 'reduce-overhead'), each guarded
  4. the theoretical HBM floor for batch-1 decode (all weight bytes / bandwidth) and measured/floor
  5. a compact table on stdout; full JSON to $OUT/gpu_baseline.json when OUT is set (or --json PATH),
     rewritten after every section so that a killed run still leaves its results

GPU run (H200):   python3 bench/gpu_baseline.py
CPU smoke test:   python3 bench/gpu_baseline.py --tiny --device cpu
"""

import time

_T_START = time.perf_counter()

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402


def log(*a):
    print(*a, flush=True)


def elapsed():
    return time.perf_counter() - _T_START


def short_err(e, n=400):
    s = f"{type(e).__name__}: {e}".replace("\n", " ")
    return s if len(s) <= n else s[: n - 3] + "..."


# ----------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------

# Qwen2.5-VL-7B-Instruct (config.json on the hub), which Lingshu-7B shares.
FULL_TEXT = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    hidden_act="silu",
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    use_sliding_window=False,
    sliding_window=32768,
    max_window_layers=28,
    attention_dropout=0.0,
    bos_token_id=151643,
    eos_token_id=151645,
    rope_theta=1000000.0,
    mrope_section=[16, 24, 24],
)
FULL_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    in_channels=3,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    out_hidden_size=3584,
    tokens_per_second=2,
    hidden_act="silu",
)
# Tiny variant for CPU smoke tests: same image geometry and code paths, small vocabulary (special ids remapped).
TINY_TEXT = dict(
    FULL_TEXT,
    vocab_size=4096,
    bos_token_id=4000,
    eos_token_id=4001,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_window_layers=2,
    mrope_section=[2, 3, 3],  # sums to head_dim/2 = 16/2
)
TINY_VISION = dict(
    FULL_VISION,
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    fullatt_block_indexes=[1],
    out_hidden_size=64,
)
FULL_IDS = dict(
    image_token_id=151655,
    video_token_id=151656,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
)
TINY_IDS = dict(
    image_token_id=4004, video_token_id=4005, vision_start_token_id=4002, vision_end_token_id=4003
)


def build_config(tiny):
    from transformers import Qwen2_5_VLConfig

    text = dict(TINY_TEXT if tiny else FULL_TEXT)
    vision = dict(TINY_VISION if tiny else FULL_VISION)
    ids = dict(TINY_IDS if tiny else FULL_IDS)
    rope_theta = text.pop("rope_theta")
    mrope_section = list(text.pop("mrope_section"))
    errors = []

    # transformers 5.x: nested text_config / vision_config, RoPE settings in text_config.rope_parameters.
    try:
        rope = {"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope_section}
        t5 = dict(text, rope_parameters=rope)
        cfg = Qwen2_5_VLConfig(text_config=t5, vision_config=dict(vision), tie_word_embeddings=False, **ids)
        _check_config(cfg, text, vision, ids, rope_theta, mrope_section)
        return cfg, "5.x nested text_config/vision_config + rope_parameters"
    except Exception as e:  # pragma: no cover - only on other transformers versions
        errors.append("5.x form: " + short_err(e))

    # transformers 4.5x: flat text fields at the top level, rope_scaling={"type": "mrope", ...}.
    try:
        flat = dict(
            text, rope_theta=rope_theta, rope_scaling={"type": "mrope", "mrope_section": mrope_section}
        )
        cfg = Qwen2_5_VLConfig(vision_config=dict(vision), tie_word_embeddings=False, **flat, **ids)
        _check_config(cfg, text, vision, ids, rope_theta, mrope_section)
        return cfg, "4.x flat fields + rope_scaling"
    except Exception as e:  # pragma: no cover
        errors.append("4.x form: " + short_err(e))
    raise RuntimeError("could not build a Qwen2.5-VL config: " + " | ".join(errors))


def text_cfg(cfg):
    tc = getattr(cfg, "text_config", None)
    return tc if tc is not None else cfg


def _rope_info(tc):
    rp = getattr(tc, "rope_parameters", None) or {}
    rs = getattr(tc, "rope_scaling", None) or {}
    theta = rp.get("rope_theta", getattr(tc, "rope_theta", None))
    section = rp.get("mrope_section", rs.get("mrope_section"))
    return theta, section


def _check_config(cfg, text, vision, ids, rope_theta, mrope_section):
    tc, vc = text_cfg(cfg), cfg.vision_config
    bad = []
    for k, v in text.items():
        if k in ("sliding_window",):  # set to None when use_sliding_window is False
            continue
        if getattr(tc, k, None) != v:
            bad.append(f"text.{k}={getattr(tc, k, None)!r}!={v!r}")
    for k, v in vision.items():
        got = getattr(vc, k, None)
        if isinstance(got, tuple):
            got = list(got)
        if got != v:
            bad.append(f"vision.{k}={got!r}!={v!r}")
    theta, section = _rope_info(tc)
    if theta is None or float(theta) != float(rope_theta):
        bad.append(f"rope_theta={theta!r}")
    if section is None or list(section) != mrope_section:
        bad.append(f"mrope_section={section!r}")
    for k, v in ids.items():
        if getattr(cfg, k, None) != v:
            bad.append(f"{k}={getattr(cfg, k, None)!r}")
    if bad:
        raise ValueError("config fields did not take: " + ", ".join(bad))


def config_summary(cfg):
    tc, vc = text_cfg(cfg), cfg.vision_config
    theta, section = _rope_info(tc)
    keys_t = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rms_norm_eps",
    ]
    keys_v = [
        "depth",
        "hidden_size",
        "intermediate_size",
        "num_heads",
        "in_channels",
        "patch_size",
        "spatial_merge_size",
        "temporal_patch_size",
        "window_size",
        "fullatt_block_indexes",
        "out_hidden_size",
    ]
    out = {"text": {k: getattr(tc, k, None) for k in keys_t}, "vision": {}}
    out["text"].update(rope_theta=theta, mrope_section=list(section) if section is not None else None)
    for k in keys_v:
        v = getattr(vc, k, None)
        out["vision"][k] = list(v) if isinstance(v, tuple) else v
    out.update({k: getattr(cfg, k, None) for k in FULL_IDS})
    out.update(bos_token_id=getattr(tc, "bos_token_id", None), eos_token_id=getattr(tc, "eos_token_id", None))
    return out


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------


def build_model(cfg, device, dtype, attn):
    from transformers import Qwen2_5_VLForConditionalGeneration as Model

    notes = []
    attempts = [
        dict(dtype=dtype, attn_implementation=attn),
        dict(torch_dtype=dtype, attn_implementation=attn),
    ]
    model, last = None, None
    with torch.device(device):
        for kw in attempts:
            try:
                model = Model._from_config(cfg, **kw)
                break
            except TypeError as e:  # older versions do not know `dtype=`
                last = e
                notes.append(f"_from_config({', '.join(kw)}) failed: {short_err(e, 160)}")
    if model is None:
        raise RuntimeError(f"could not instantiate the model: {short_err(last)}")
    model.eval()
    p = next(model.parameters())
    if p.dtype != dtype or p.device.type != torch.device(device).type:
        notes.append(f"weights came out {p.dtype} on {p.device}; moving to {dtype} on {device}")
        model.to(device=device, dtype=dtype)
    dtypes = sorted({str(q.dtype) for q in model.parameters()})
    if len(dtypes) > 1:
        notes.append(f"mixed parameter dtypes {dtypes}; casting to {dtype}")
        model.to(dtype=dtype)
    return model, notes


def get_visual(model):
    for path in ("model.visual", "visual"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    return None


def param_breakdown(model):
    total = sum(p.numel() for p in model.parameters())
    visual = get_visual(model)
    n_vis = sum(p.numel() for p in visual.parameters()) if visual is not None else 0
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    n_emb = emb.numel()
    tied = out is not None and (
        out.weight is emb or (emb.device.type != "meta" and out.weight.data_ptr() == emb.data_ptr())
    )
    n_head = 0 if (out is None or tied) else out.weight.numel()
    elem = next(model.parameters()).element_size()
    # what one decode step must stream from HBM: every LM weight except the embedding table (only B rows are
    # gathered) unless the table doubles as lm_head
    read = total - n_vis - (0 if tied else n_emb)
    return dict(
        total=total,
        visual=n_vis,
        language=total - n_vis,
        embed_tokens=n_emb,
        lm_head=n_head,
        lm_head_tied=tied,
        bytes_per_param=elem,
        weight_bytes=total * elem,
        decode_read_bytes=read * elem,
    )


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


class BenchTimeout(BaseException):
    """Raised from SIGALRM; a BaseException so that library `except Exception` blocks do not swallow it."""


class alarm_after:
    def __init__(self, seconds):
        self.seconds = seconds
        self.active = (
            seconds is not None
            and seconds > 0
            and hasattr(signal, "setitimer")
            and threading.current_thread() is threading.main_thread()
        )

    def _handler(self, signum, frame):
        raise BenchTimeout(f"time limit of {self.seconds:.0f}s reached")

    def __enter__(self):
        if self.active:
            self._old = signal.signal(signal.SIGALRM, self._handler)
            # re-fires every 5 s in case something still swallows the first one
            signal.setitimer(signal.ITIMER_REAL, float(self.seconds), 5.0)
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)
        return False


def make_sync(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def peak_reset(device):
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device):
    if torch.device(device).type == "cuda":
        return round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return None


def accepted_kwargs(fn):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return set(params) | {"**"}
    return set(params)


def filter_kwargs(fn, kwargs, notes=None):
    ok = accepted_kwargs(fn)
    if ok is None:
        return kwargs
    out = {}
    for k, v in kwargs.items():
        if k in ok:
            out[k] = v
        elif notes is not None:
            notes.append(f"forward() does not take {k!r}; dropped")
    return out


def dynamo_graph_count():
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return None


def first_special_id(cfg):
    """Ids below the smallest special id are ordinary text tokens (Qwen2: 151643 = <|endoftext|>)."""
    tc = text_cfg(cfg)
    cand = [getattr(cfg, k, None) for k in FULL_IDS] + [tc.bos_token_id, tc.eos_token_id, tc.vocab_size]
    flat = []
    for c in cand:
        flat += list(c) if isinstance(c, (list, tuple)) else [c]
    return min(c for c in flat if isinstance(c, int))


def random_text_ids(cfg, batch, length, gen):
    return torch.randint(0, first_special_id(cfg), (batch, length), generator=gen, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------
# Benchmarks
# ----------------------------------------------------------------------------------------------------------


def bench_prefill(model, cfg, device, dtype, image_px, text_tokens, repeats, warmup, gen, notes):
    vc = cfg.vision_config
    patch = vc.patch_size if isinstance(vc.patch_size, int) else vc.patch_size[0]
    tps = vc.temporal_patch_size if isinstance(vc.temporal_patch_size, int) else vc.temporal_patch_size[0]
    merge = vc.spatial_merge_size
    in_ch = getattr(vc, "in_channels", None) or getattr(vc, "in_chans", 3)
    if image_px % (patch * merge):
        raise ValueError(f"image size {image_px}px is not a multiple of patch*merge = {patch * merge}px")
    grid_t, grid_h, grid_w = 1, image_px // patch, image_px // patch
    n_patches = grid_t * grid_h * grid_w
    n_img = n_patches // (merge * merge)
    sync = make_sync(device)

    pixel_values = torch.randn(n_patches, in_ch * tps * patch * patch, generator=gen).to(
        device=device, dtype=dtype
    )
    image_grid_thw = torch.tensor([[grid_t, grid_h, grid_w]], dtype=torch.long, device=device)
    ids = (
        torch.cat(
            [
                torch.tensor([cfg.vision_start_token_id]),
                torch.full((n_img,), cfg.image_token_id),
                torch.tensor([cfg.vision_end_token_id]),
                random_text_ids(cfg, 1, text_tokens, gen)[0],
            ]
        )
        .unsqueeze(0)
        .to(device)
    )
    mm_types = (ids == cfg.image_token_id).to(torch.int32)
    kwargs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=pixel_values,
        image_grid_thw=image_grid_thw,
        mm_token_type_ids=mm_types,  # 5.x needs it for 3-D (M-RoPE) positions; older versions infer them
        use_cache=True,  # as generate's prefill does (the KV cache is built)
    )
    kwargs = filter_kwargs(model.forward, kwargs, notes)
    # only the last position's logits, as generate's prefill does (5.x name first, then the 4.4x one)
    ok = accepted_kwargs(model.forward) or set()
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in ok:
            kwargs[name] = 1
            break
    else:
        notes.append("forward() takes no logits_to_keep: prefill computes logits for every position")
    row = dict(
        image=f"{image_px}x{image_px}",
        grid_thw=[grid_t, grid_h, grid_w],
        patches=n_patches,
        image_tokens=n_img,
        text_tokens=text_tokens,
        seq_len=int(ids.shape[1]),
        batch=1,
    )

    def full():
        out = model(**kwargs)
        return out.logits

    visual = get_visual(model)

    def vision_only():
        if hasattr(model, "get_image_features"):
            return model.get_image_features(pixel_values, image_grid_thw)
        return visual(pixel_values, grid_thw=image_grid_thw)

    # no_grad, not inference_mode: no inference tensor (e.g. the cached rope_deltas) may leak into later generate calls
    with torch.no_grad():
        peak_reset(device)
        for name, fn in (("prefill", full), ("vision", vision_only)):
            sync()
            t0 = time.perf_counter()
            first = fn()  # cold call, timed on its own (kernel selection, allocator growth, ...)
            sync()
            row[f"{name}_first_call_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
            if name == "prefill":  # correctness probe
                row["logits_shape"] = list(first.shape)
                row["logits_finite"] = bool(torch.isfinite(first).all())
                deltas = getattr(getattr(model, "model", None), "rope_deltas", None)
                if torch.is_tensor(deltas):
                    # M-RoPE in use: the image spans max(h, w)/merge positions, so delta = that - image tokens
                    row["mrope_delta"] = int(deltas.flatten()[0])
            del first
            for _ in range(max(0, warmup - 1)):
                fn()
                sync()
            times = []
            for _ in range(repeats):
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times.append(time.perf_counter() - t0)
            row[f"{name}_ms_median"] = round(statistics.median(times) * 1e3, 2)
            row[f"{name}_ms_all"] = [round(t * 1e3, 2) for t in times]
        row["peak_mem_gb"] = peak_gb(device)
    row["llm_part_ms_est"] = round(row["prefill_ms_median"] - row["vision_ms_median"], 2)
    row["prefill_tok_s"] = round(row["seq_len"] / (row["prefill_ms_median"] / 1e3), 1)
    return row


def generate_once(model, ids, mask, new_tokens, extra, pad_id, eos_id, sync):
    sync()
    t0 = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        **extra,
    )
    sync()
    dt = time.perf_counter() - t0
    seqs = out if torch.is_tensor(out) else out.sequences
    return dt, int(seqs.shape[1] - ids.shape[1])


def bench_decode(
    model,
    cfg,
    device,
    batch,
    prompt_len,
    new_tokens,
    cache,
    compile_mode,
    warmup_tokens,
    gen,
    time_limit_s=None,
):
    """compile_mode: 'n/a' (dynamic cache), 'off' (disable_compile=True), 'auto' (HF default), 'force' (CPU test)."""
    tc = text_cfg(cfg)
    sync = make_sync(device)
    eos = tc.eos_token_id if tc.eos_token_id is not None else getattr(cfg, "eos_token_id", None)
    eos_id = eos[0] if isinstance(eos, (list, tuple)) else eos
    pad_id = tc.bos_token_id if tc.bos_token_id is not None else eos_id  # <|endoftext|>; never produced here
    ids = random_text_ids(cfg, batch, prompt_len, gen).to(device)
    mask = torch.ones_like(ids)
    extra = {}
    if cache:
        extra["cache_implementation"] = cache
    if compile_mode == "off":
        extra["disable_compile"] = True
    elif compile_mode == "force":
        from transformers import CompileConfig

        cc = CompileConfig()
        cc._compile_all_devices = True
        extra["compile_config"] = cc
    row = dict(
        cache=cache or "dynamic",
        compile=compile_mode,
        batch=batch,
        prompt_len=prompt_len,
        new_tokens=new_tokens,
    )
    g0 = dynamo_graph_count()
    t_start = time.perf_counter()
    try:
        with alarm_after(time_limit_s):
            peak_reset(device)
            t_w, n_w = generate_once(model, ids, mask, warmup_tokens, extra, pad_id, eos_id, sync)
            row.update(warmup_tokens=warmup_tokens, warmup_s=round(t_w, 3))
            t1, n1 = generate_once(model, ids, mask, 1, extra, pad_id, eos_id, sync)
            t, n = generate_once(model, ids, mask, new_tokens, extra, pad_id, eos_id, sync)
    except BenchTimeout as e:
        row["error"] = f"timeout: {e} (after {time.perf_counter() - t_start:.0f}s)"
        return row, True
    except Exception as e:
        row["error"] = short_err(e)
        row["traceback_tail"] = traceback.format_exc().strip().splitlines()[-6:]
        return row, False
    g1 = dynamo_graph_count()
    if g0 is not None and g1 is not None:
        row["dynamo_graphs_compiled"] = g1 - g0
    if n != new_tokens:
        row["warning"] = f"generated {n} tokens, expected {new_tokens}"
    row.update(
        generated=n,
        ttft_s=round(t1, 4),  # generate(max_new_tokens=1): prefill of the prompt + first token
        total_s=round(t, 4),
        tok_s=round(batch * n / t, 1),  # end to end, prefill included
        ms_per_step=round(t / n * 1e3, 2),  # end to end / new tokens
        peak_mem_gb=peak_gb(device),
    )
    if n > 1 and t > t1:
        step = (t - t1) / (n - 1)
        row.update(decode_ms_per_step=round(step * 1e3, 2), decode_tok_s=round(batch / step, 1))
    return row, False


# ----------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------


def json_path(args):
    if args.json:
        return args.json
    out = os.environ.get("OUT")
    return os.path.join(out, "gpu_baseline.json") if out else None


def write_json(res, path):
    if not path:
        return
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        res["total_wall_s"] = round(elapsed(), 1)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1, default=str)
        os.replace(tmp, path)
    except Exception as e:
        log(f"[warn] could not write JSON to {path}: {short_err(e)}")


def fmt(v, spec=""):
    if v is None:
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def print_table(res):
    m = res.get("meta", {})
    p = res.get("params", {})
    log("")
    log("=" * 100)
    log(
        f"GPU BASELINE  {m.get('model', '?')}  |  {m.get('device_name', '?')}  |  torch {m.get('torch')}  "
        f"transformers {m.get('transformers')}  |  {m.get('dtype')} {m.get('attn_implementation')}"
    )
    if p:
        log(
            f"params {p['total'] / 1e9:.3f}B (vision {p['visual'] / 1e9:.3f}B, language {p['language'] / 1e9:.3f}B)"
            f"  weights {p['weight_bytes'] / 1e9:.2f} GB  |  model build {fmt(res.get('model_init_s'), '.1f')} s"
        )
    if res.get("prefill"):
        log("-" * 100)
        log("PREFILL  batch 1, one forward (vision encoder + LLM prefill), median ms")
        log(
            f"  {'image':<10}{'img_tok':>8}{'seq':>7}{'prefill_ms':>12}{'vision_ms':>11}{'llm_ms~':>9}"
            f"{'tok/s':>10}{'1st_call_ms':>13}{'peak_GB':>9}"
        )
        for r in res["prefill"]:
            if "error" in r:
                log(f"  {r.get('image', '?'):<10} ERROR {r['error']}")
                continue
            log(
                f"  {r['image']:<10}{r['image_tokens']:>8}{r['seq_len']:>7}{r['prefill_ms_median']:>12.1f}"
                f"{r['vision_ms_median']:>11.1f}{r['llm_part_ms_est']:>9.1f}{r['prefill_tok_s']:>10.0f}"
                f"{fmt(r.get('prefill_first_call_ms'), '.0f'):>13}{fmt(r.get('peak_mem_gb')):>9}"
            )
    if res.get("decode"):
        log("-" * 100)
        d0 = res["decode"][0]
        log(
            f"DECODE  model.generate greedy, prompt {d0.get('prompt_len')} random tokens, "
            f"{d0.get('new_tokens')} new tokens (min=max)"
        )
        log(
            f"  {'cache':<8}{'compile':<8}{'batch':>5}{'total_s':>9}{'tok/s':>9}{'ms/step':>9}{'ttft_s':>8}"
            f"{'dec_ms/step':>12}{'dec_tok/s':>10}{'x_floor':>8}{'peak_GB':>8}"
        )
        for r in res["decode"]:
            head = f"  {r['cache']:<8}{r['compile']:<8}{r['batch']:>5}"
            if "error" in r or "skipped" in r:
                log(head + "  " + ("ERROR " + r["error"] if "error" in r else "SKIPPED " + r["skipped"])[:90])
                continue
            log(
                head + f"{r['total_s']:>9.2f}{r['tok_s']:>9.1f}{r['ms_per_step']:>9.2f}{r['ttft_s']:>8.3f}"
                f"{fmt(r.get('decode_ms_per_step'), '.2f'):>12}{fmt(r.get('decode_tok_s'), '.1f'):>10}"
                f"{fmt(r.get('x_floor'), '.1f'):>8}{fmt(r.get('peak_mem_gb')):>8}"
            )
        for r in res["decode"]:
            if r.get("compile") in ("auto", "force") and "warmup_s" in r:
                log(
                    f"  static/{r['compile']} batch {r['batch']}: first generate (torch.compile + cudagraph capture + "
                    f"{r['warmup_tokens']} tokens) took {r['warmup_s']:.1f} s, "
                    f"{fmt(r.get('dynamo_graphs_compiled'))} dynamo graph(s)"
                )
        log("  tok/s = batch*new_tokens/total_s (prefill included); ms/step = total_s/new_tokens;")
        log(
            "  dec_* exclude prefill: (total_s - ttft_s)/(new_tokens-1); "
            "x_floor = dec_ms/step / HBM floor at that batch"
        )
    f = res.get("floor")
    if f:
        log("-" * 100)
        log(
            f"FLOOR  batch-1 decode >= {f['floor_ms_per_token_all_weights']:.2f} ms/token "
            f"({f['weight_bytes'] / 1e9:.2f} GB all weights / {f['hbm_bytes_per_s'] / 1e12:.1f} TB/s); "
            f"LM-only read {f['floor_ms_per_token_lm_read']:.2f} ms"
        )
        if f.get("measured_ms_per_step_b1") is not None:
            log(
                f"       measured batch-1: {f['measured_ms_per_step_b1']:.2f} ms/step end-to-end "
                f"-> {f['ratio_measured_over_floor']:.1f}x floor; decode-only "
                f"{fmt(f.get('measured_decode_ms_per_step_b1'), '.2f')} ms -> "
                f"{fmt(f.get('ratio_decode_over_floor'), '.1f')}x"
            )
    for e in res.get("errors", []):
        log(f"[error] {e}")
    log(f"total wall {elapsed():.1f} s" + (f"  |  JSON: {res['json_path']}" if res.get("json_path") else ""))
    log("=" * 100)


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tiny", action="store_true", help="tiny config (2 layers, hidden 64; vision depth 2, hidden 32)"
    )
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument(
        "--attn", default="sdpa", help="attn_implementation (sdpa, eager, flash_attention_2, ...)"
    )
    ap.add_argument("--images", default="448,1008", help="square image sizes in px for the prefill test")
    ap.add_argument(
        "--text-tokens", type=int, default=512, help="text tokens after the image in the prefill test"
    )
    ap.add_argument("--prefill-repeats", type=int, default=5)
    ap.add_argument("--prefill-warmup", type=int, default=2)
    ap.add_argument("--batches", default="1,8,32", help="batch sizes for dynamic-cache generate")
    ap.add_argument("--static-batches", default="1,32", help="batch sizes for cache_implementation='static'")
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument(
        "--warmup-tokens", type=int, default=4, help="warm-up generate length (dynamic / static eager)"
    )
    ap.add_argument(
        "--static",
        default="eager,auto",
        help="static-cache variants, comma list of: eager (disable_compile=True), auto (HF default: "
        "torch.compile 'reduce-overhead' on CUDA), force (compile on any device, for testing); "
        "'none' to skip",
    )
    ap.add_argument("--hbm-bw", type=float, default=4.3e12, help="HBM bandwidth for the floor, bytes/s")
    ap.add_argument(
        "--hard-timeout-s",
        type=float,
        default=295.0,
        help="watchdog: print the table, write JSON and exit 3 after this many seconds (0 = off)",
    )
    ap.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="soft budget (default: hard timeout - 25 s, or 270 s): compiled static runs get only what "
        "is left of it, split over the batch sizes, and are skipped when under 45 s",
    )
    ap.add_argument("--json", default=None, help="JSON path (default $OUT/gpu_baseline.json when OUT is set)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.time_budget_s is None:
        args.time_budget_s = (
            args.hard_timeout_s - 25 if args.hard_timeout_s and args.hard_timeout_s > 0 else 270.0
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    import transformers

    try:
        transformers.logging.set_verbosity_error()
    except Exception:
        pass

    device = args.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        log(
            "[fatal] --device cuda but torch.cuda.is_available() is False (use --device cpu for a smoke test)"
        )
        return 2
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    path = json_path(args)

    res = dict(meta={}, errors=[], notes=[], json_path=path)
    res["meta"] = dict(
        model=("TINY " if args.tiny else "") + "Qwen2.5-VL-7B-arch (random weights)",
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        torch_cuda=torch.version.cuda,
        device=device,
        device_name=(
            torch.cuda.get_device_name(0)
            if torch.device(device).type == "cuda"
            else platform.processor() or platform.machine()
        ),
        dtype=args.dtype,
        attn_implementation=args.attn,
        argv=sys.argv[1:],
        hbm_bytes_per_s=args.hbm_bw,
    )
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(0)
        res["meta"].update(
            gpu_mem_gb=round(props.total_memory / 1e9, 1),
            capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
        )
    log(
        f"[{elapsed():6.1f}s] torch {torch.__version__} (cuda {torch.version.cuda}), transformers "
        f"{transformers.__version__}, device {res['meta']['device_name']}"
    )

    # hard watchdog: whatever hangs, the table and JSON still come out
    if args.hard_timeout_s and args.hard_timeout_s > 0:

        def _watchdog():
            log(f"\n[watchdog] hard timeout {args.hard_timeout_s:.0f}s reached; printing partial results")
            res["errors"].append(f"hard timeout {args.hard_timeout_s:.0f}s: run cut short")
            try:
                write_json(res, path)
                print_table(res)
            finally:
                sys.stdout.flush()
                os._exit(3)

        wd = threading.Timer(max(1.0, args.hard_timeout_s - elapsed()), _watchdog)
        wd.daemon = True
        wd.start()

    # 1. config + model --------------------------------------------------------------------------------------
    cfg, cfg_form = build_config(args.tiny)
    res["config_form"] = cfg_form
    res["config"] = config_summary(cfg)
    log(f"[{elapsed():6.1f}s] config ({cfg_form}): {json.dumps(res['config'])}")
    t0 = time.perf_counter()
    model, notes = build_model(cfg, device, dtype, args.attn)
    make_sync(device)()
    res["model_init_s"] = round(time.perf_counter() - t0, 2)
    res["notes"] += notes
    res["params"] = param_breakdown(model)
    p = res["params"]
    res["meta"]["attn_implementation_effective"] = getattr(model.config, "_attn_implementation", None)
    log(
        f"[{elapsed():6.1f}s] model built in {res['model_init_s']:.1f}s: {p['total']:,} params "
        f"({p['total'] / 1e9:.3f}B; vision {p['visual']:,}, language {p['language']:,}), "
        f"{p['weight_bytes'] / 1e9:.2f} GB, attn={res['meta']['attn_implementation_effective']}"
    )
    for n in notes:
        log(f"  note: {n}")
    write_json(res, path)

    # 2. image prefill ---------------------------------------------------------------------------------------
    res["prefill"] = []
    for px in [int(x) for x in args.images.split(",") if x.strip()]:
        pnotes = []
        try:
            row = bench_prefill(
                model,
                cfg,
                device,
                dtype,
                px,
                args.text_tokens,
                args.prefill_repeats,
                args.prefill_warmup,
                gen,
                pnotes,
            )
            log(
                f"[{elapsed():6.1f}s] prefill {row['image']}: {row['image_tokens']} img tok, seq {row['seq_len']}: "
                f"{row['prefill_ms_median']:.1f} ms (vision {row['vision_ms_median']:.1f} ms)"
            )
        except Exception as e:
            row = dict(
                image=f"{px}x{px}",
                error=short_err(e),
                traceback_tail=traceback.format_exc().strip().splitlines()[-6:],
            )
            res["errors"].append(f"prefill {px}px: {row['error']}")
            log(f"[{elapsed():6.1f}s] prefill {px}px FAILED: {row['error']}")
        for n in pnotes:
            if n not in res["notes"]:
                res["notes"].append(n)
        res["prefill"].append(row)
        write_json(res, path)

    # 3. decode, dynamic cache ------------------------------------------------------------------------------
    res["decode"] = []
    for b in [int(x) for x in args.batches.split(",") if x.strip()]:
        row, _ = bench_decode(
            model, cfg, device, b, args.prompt_len, args.new_tokens, None, "n/a", args.warmup_tokens, gen
        )
        res["decode"].append(row)
        _log_decode(row)
        write_json(res, path)

    # 4. floor ---------------------------------------------------------------------------------------------
    tc = text_cfg(cfg)
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    kv_bytes_per_token = 2 * tc.num_hidden_layers * tc.num_key_value_heads * head_dim * p["bytes_per_param"]
    floor = dict(
        hbm_bytes_per_s=args.hbm_bw,
        weight_bytes=p["weight_bytes"],
        floor_ms_per_token_all_weights=p["weight_bytes"] / args.hbm_bw * 1e3,
        floor_ms_per_token_lm_read=p["decode_read_bytes"] / args.hbm_bw * 1e3,
        kv_bytes_per_token=kv_bytes_per_token,
        note="floor = all weight bytes (params*bytes) / bandwidth, as briefed; lm_read excludes vision + embedding "
        "table. x_floor per row = decode ms/step / ((LM weight bytes + batch*avg_ctx*kv_bytes)/bandwidth)",
    )
    _annotate_floor(res["decode"], p, kv_bytes_per_token, args.hbm_bw)
    b1 = next(
        (r for r in res["decode"] if r["batch"] == 1 and r["cache"] == "dynamic" and "total_s" in r), None
    )
    if b1:
        floor.update(
            measured_ms_per_step_b1=b1["ms_per_step"],
            ratio_measured_over_floor=round(b1["ms_per_step"] / floor["floor_ms_per_token_all_weights"], 2),
            measured_decode_ms_per_step_b1=b1.get("decode_ms_per_step"),
            ratio_decode_over_floor=(
                round(b1["decode_ms_per_step"] / floor["floor_ms_per_token_all_weights"], 2)
                if b1.get("decode_ms_per_step")
                else None
            ),
        )
    res["floor"] = floor
    log(f"[{elapsed():6.1f}s] floor: {floor['floor_ms_per_token_all_weights']:.2f} ms/token (all weights)")
    write_json(res, path)

    # 5. static cache ----------------------------------------------------------------------------------------
    variants = [v.strip() for v in args.static.split(",") if v.strip() and v.strip() != "none"]
    static_batches = [int(x) for x in args.static_batches.split(",") if x.strip()]
    is_cuda = torch.device(device).type == "cuda"
    timed_out = False
    for variant in variants:
        if variant not in ("eager", "auto", "force"):
            res["errors"].append(f"unknown --static variant {variant!r}")
            continue
        compile_mode = "off" if variant == "eager" else variant
        compiling = variant == "force" or (variant == "auto" and is_cuda)
        for i, b in enumerate(static_batches):
            row_base = dict(
                cache="static",
                compile=compile_mode,
                batch=b,
                prompt_len=args.prompt_len,
                new_tokens=args.new_tokens,
            )
            if variant == "auto" and not is_cuda:
                row = dict(
                    row_base, skipped="HF auto-compiles only on cuda/xpu; use --static force to test compile"
                )
                res["decode"].append(row)
                _log_decode(row)
                continue
            limit = None
            if compiling and timed_out:
                row = dict(row_base, skipped="an earlier compiled run hit its time limit")
                res["decode"].append(row)
                _log_decode(row)
                continue
            if compiling:
                left = args.time_budget_s - elapsed()
                runs_left = len(static_batches) - i
                # an even share of what is left, but at least 45 s while that much remains
                limit = max(left / runs_left, min(left, 45.0))
                if limit < 45:
                    row = dict(
                        row_base, skipped=f"time budget: {left:.0f}s of {args.time_budget_s:.0f}s left"
                    )
                    res["decode"].append(row)
                    _log_decode(row)
                    continue
                try:  # a fresh compile per batch size, as a server pinned to that batch would have
                    torch._dynamo.reset()
                except Exception as e:
                    res["notes"].append(f"torch._dynamo.reset() failed: {short_err(e, 120)}")
                log(
                    f"[{elapsed():6.1f}s] static/{compile_mode} batch {b}: compiling (limit {limit:.0f}s) ..."
                )
            # compiled runs warm up at full length: a shorter warm-up would size the static cache differently
            # and force a recompile inside the timed run
            warm = args.new_tokens if compiling else args.warmup_tokens
            row, to = bench_decode(
                model,
                cfg,
                device,
                b,
                args.prompt_len,
                args.new_tokens,
                "static",
                compile_mode,
                warm,
                gen,
                time_limit_s=limit,
            )
            timed_out = timed_out or to
            res["decode"].append(row)
            _log_decode(row)
            if "error" in row:
                res["errors"].append(f"static/{compile_mode} batch {b}: {row['error'][:200]}")
            _annotate_floor(res["decode"], p, kv_bytes_per_token, args.hbm_bw)
            write_json(res, path)

    # 6. report ---------------------------------------------------------------------------------------------
    _annotate_floor(res["decode"], p, kv_bytes_per_token, args.hbm_bw)
    for r in res["decode"]:
        if r.get("cache") == "dynamic" and "error" in r:
            res["errors"].append(f"dynamic batch {r['batch']}: {r['error'][:200]}")
    write_json(res, path)
    print_table(res)
    if timed_out:
        # an interrupted torch.compile can leave compile workers behind; do not wait for them
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _annotate_floor(rows, p, kv_bytes_per_token, bw):
    for r in rows:
        if "decode_ms_per_step" not in r:
            continue
        avg_ctx = r["prompt_len"] + r["new_tokens"] / 2
        floor_s = (p["decode_read_bytes"] + r["batch"] * avg_ctx * kv_bytes_per_token) / bw
        r["floor_ms_per_step"] = round(floor_s * 1e3, 3)
        r["x_floor"] = round(r["decode_ms_per_step"] / (floor_s * 1e3), 2)


def _log_decode(r):
    head = f"[{elapsed():6.1f}s] decode {r['cache']}/{r['compile']} batch {r['batch']}:"
    if "skipped" in r:
        log(f"{head} SKIPPED ({r['skipped']})")
    elif "error" in r:
        log(f"{head} ERROR {r['error']}")
    else:
        log(
            f"{head} {r['total_s']:.2f}s total, {r['tok_s']:.1f} tok/s, {r['ms_per_step']:.2f} ms/step e2e, "
            f"decode {fmt(r.get('decode_ms_per_step'), '.2f')} ms/step, ttft {r['ttft_s']:.3f}s, "
            f"warm-up {r.get('warmup_s')}s"
            + (f", graphs {r['dynamo_graphs_compiled']}" if r.get("dynamo_graphs_compiled") else "")
        )


if __name__ == "__main__":
    sys.exit(main())
