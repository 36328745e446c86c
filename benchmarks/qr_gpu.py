"""QRRanker on a CUDA GPU: a QRRanker-4B-shaped model and a SmolLM2-shaped one, random weights, built
locally (no download), timed in bf16 with SDPA and with flash-attention 2 when it is installed.

    python benchmarks/qr_gpu.py [--k 50] [--batches 1,8] [--repeats 5] [--shapes qrranker-4b,smollm2]
        [--out benchmarks/results/qr_gpu.json]
    python benchmarks/qr_gpu.py --small      # a few seconds: tiny shapes (what tests/test_qr_gpu.py runs)

Shapes (the scoring path only sees the architecture, so random weights time it exactly):
  qrranker-4b  Qwen3-4B-Instruct-2507 as on the QRRanker card: 25 of 36 layers kept, 32 query heads,
               8 KV heads (GQA), head_dim 128, hidden 2560, MLP 9728, vocab 151,936
  smollm2      SmolLM2-135M: Llama, 24 of 30 layers kept (the shipped heads reach layer 23), 9 heads,
               3 KV heads, hidden 576
The prompt holds K candidates of about 80 tokens each (K=50: about 4k tokens) and a query; the
tokenizer is a byte-level BPE trained on the spot. Reported per shape, kernel and batch size: ms per
query (median of `--repeats` timed `rank_many` calls after a warm-up), queries/s and peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

SHAPES = {
    "qrranker-4b": {"kind": "qwen3", "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                    "keep": 25, "heads": ("20-15,21-11,17-27,23-10,22-4,21-10,21-8,21-18,18-15,18-19,17-25,"
                                          "17-17,24-13,17-4,19-12,21-31")},
    "smollm2": {"kind": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
                "keep": 24, "heads": "21-2,15-6,18-7,23-2,23-4,17-4,23-7,21-8"},
    "tiny": {"kind": "qwen3", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
             "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1000,
             "keep": 3, "heads": "1-0,2-5"},
}
WORDS = ["kitten", "marathon", "sunrise", "painting", "support", "group", "Lisbon", "grey", "tabby", "violin",
         "passport", "river", "volcano", "documentary", "fence", "weather", "pasta", "mushrooms", "bridge",
         "traffic", "brother", "sister", "flat"]


def tokenizer():
    """A byte-level BPE trained here (as tests/conftest.py does): no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    glue = "Here are some retrieved chunks: Use the retrieved chunks to answer the user's query. Query:"
    tok.train_from_iterator([" ".join(WORDS)] * 20 + [glue] * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def build(shape: str, attn: str, device: str, dtype):
    """A QRRanker over a randomly initialised decoder stack of the given shape, cut as `load` cuts."""
    import torch
    import transformers

    from memory.qr import QRConfig, QRRanker
    from memory.qr.loading import prepare_stack

    spec = dict(SHAPES[shape])
    kind, keep, heads = spec.pop("kind"), spec.pop("keep"), spec.pop("heads")
    cls_cfg, cls_model = ((transformers.Qwen3Config, transformers.Qwen3Model) if kind == "qwen3"
                          else (transformers.LlamaConfig, transformers.LlamaModel))
    n_model = spec["num_hidden_layers"]
    cfg = cls_cfg(**{**spec, "num_hidden_layers": keep}, max_position_embeddings=32768)
    torch.manual_seed(0)
    with torch.device(device):
        base = cls_model._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    prepare_stack(base, keep, attn)
    base.eval()
    return QRRanker(base, tokenizer(), QRConfig(heads=heads.split(","), calibrate=False),
                    name=f"{shape} (random)", n_model_layers=n_model)


def prompts(ranker, k: int, n: int, chunk_words: int = 70):
    import random

    rng = random.Random(0)
    queries = [f"When did the {rng.choice(WORDS)} meet the {rng.choice(WORDS)}?" for _ in range(n)]
    lists = [[" ".join(rng.choice(WORDS) for _ in range(chunk_words)) for _ in range(k)] for _ in range(n)]
    return queries, lists


def time_one(ranker, queries, lists, batch: int, repeats: int):
    import torch

    qs, ls = queries[:batch], lists[:batch]
    ranker.rank_many(qs, ls, batch_size=batch)  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ranker.rank_many(qs, ls, batch_size=batch)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"ms_per_query": 1000 * med / batch, "queries_per_s": batch / med,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20}


def run(shapes, k: int, batches, repeats: int, device: str = "cuda") -> dict:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("qr_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    kernels = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "k": k, "kernels": kernels,
           "flash_attn_installed": "flash_attention_2" in kernels, "runs": []}
    print(f"{out['device']}, torch {torch.__version__}, K={k}, kernels: {', '.join(kernels)}")
    for shape in shapes:
        for attn in kernels:
            ranker = build(shape, attn, device, torch.bfloat16)
            queries, lists = prompts(ranker, k, max(batches))
            tokens = len(ranker.layout(queries[0], lists[0]))
            for batch in batches:
                row = {"shape": shape, "attn": attn, "batch": batch, "tokens": tokens,
                       "layers_run": len(ranker.model.layers), **time_one(ranker, queries, lists, batch, repeats)}
                out["runs"].append(row)
                print(f"  {shape:12s} {attn:18s} batch {batch:2d}, {tokens} tokens: "
                      f"{row['ms_per_query']:7.1f} ms/query  {row['queries_per_s']:6.1f} queries/s  "
                      f"peak {row['peak_gpu_mib']:,.0f} MiB", flush=True)
            del ranker
            torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="qrranker-4b,smollm2")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--small", action="store_true", help="tiny shape, K=5, batches 1,2, 2 repeats")
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    args = ap.parse_args()
    if args.small:
        args.shapes, args.k, args.batches, args.repeats = "tiny", 5, "1,2", 2
    for s in args.shapes.split(","):
        if s not in SHAPES:
            raise SystemExit(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")
    out = run(args.shapes.split(","), args.k, [int(b) for b in args.batches.split(",")], args.repeats)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
