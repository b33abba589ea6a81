#!/usr/bin/env python3
"""Hugging Face transformers' batched `generate` on the shapes of marginal's engine benchmark.

The benchmark's synthetic models are written with a Hugging Face `config.json`
(models/bench-SHAPE/, made by `npm run bench:engine`); this builds LlamaForCausalLM from that
config with random weights (throughput does not depend on the weights' values) in float32 on
the GPU, and times greedy generation at each batch size the way bench/engine.ts does: a
`--prompt`-token prompt per sequence, then `--steps` new tokens, decode time = full generate minus a
one-token generate (the prefill). `min_new_tokens` keeps every sequence running to the end.

KV bytes copied per step are computed, not measured: transformers' default DynamicCache
appends each step's keys and values with torch.cat, which writes the whole cache anew (2 x
layers x batch x kv_heads x length x head_dim x 4 bytes).

    python3 bench/gpu/hf_generate.py --models stories15m,stories110m,llama-1b --batches 1,2,4,8,16,32,64
"""
import argparse
import json
import os
import sys
import time

import torch
from transformers import AutoConfig, LlamaForCausalLM


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="stories15m,stories110m,llama-1b")
    p.add_argument("--batches", default="1,2,4,8,16,32,64")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", "..", "models"))
    p.add_argument("--json")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("hf_generate: CUDA is not available to torch", file=sys.stderr)
        return 1
    dev = torch.device("cuda")
    rows = []
    for name in a.models.split(","):
        folder = os.path.join(a.root, f"bench-{name}")
        if not os.path.exists(os.path.join(folder, "config.json")):
            print(f"hf_generate: {folder}/config.json is missing (run npm run bench:engine -- --models {name} first)", file=sys.stderr)
            return 1
        cfg = AutoConfig.from_pretrained(folder)
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(device=dev, dtype=torch.float32).eval()
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        for batch in [int(b) for b in a.batches.split(",")]:
            ids = torch.randint(259, cfg.vocab_size, (batch, a.prompt), device=dev)
            ids[:, 0] = cfg.bos_token_id if cfg.bos_token_id is not None else 1
            mask = torch.ones_like(ids)

            def generate(n: int) -> float:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                with torch.no_grad():
                    model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, use_cache=True)
                torch.cuda.synchronize()
                return time.perf_counter() - t0

            generate(2)  # warm-up: kernels, allocator
            prefill = min(generate(1) for _ in range(2))
            total = generate(a.steps + 1)
            decode = max(total - prefill, 1e-9)
            mean_len = a.prompt + 1 + (a.steps - 1) / 2
            kv_bytes = 2 * cfg.num_hidden_layers * batch * cfg.num_key_value_heads * mean_len * head_dim * 4
            row = {"model": name, "batch": batch, "tok_s": batch * a.steps / decode, "step_ms": decode / a.steps * 1000, "kv_bytes_per_step": kv_bytes}
            rows.append(row)
            print(f"  {name} b={batch}: {row['tok_s']:.0f} tok/s", file=sys.stderr)
        del model
        torch.cuda.empty_cache()
    print(f"| model | batch | transformers generate tok/s | step ms | KV bytes copied per step (torch.cat, computed) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['tok_s']:.0f} | {r['step_ms']:.2f} | {r['kv_bytes_per_step'] / 1e6:.1f} MB |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "steps": a.steps, "prompt": a.prompt, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
