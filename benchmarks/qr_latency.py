"""QRRanker latency and memory on CPU (or GPU), measured side by side in one run.

    python benchmarks/qr_latency.py --db DB [--questions 8] [--ks 20,50] [--repeats 3]

For real LoCoMo prompts (hybrid top-K of locomo_dev questions, dates as context) it times, median
over questions x repeats:
  fast   QRRanker.score with the shipped heads (cut model, query-row capture, KV prefix reused for
         the null query)
  (a)    one plain forward pass of the *full* causal LM (all layers, LM head) over the same prompt
  (b)    a naive implementation: full model, eager attention, output_attentions=True, and a second
         full pass for the null query
and reports fast/(a) and (b)/fast, the peak resident memory added by each step, and model load
times (GGUF dequantisation once vs the cached safetensors).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/locomo/locomo_dev.json"


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_added(fn):
    """Run fn(); return (seconds, MiB of peak RSS above the RSS before it)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    before = rss_kb("VmRSS")
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return dt, max(0, rss_kb("VmHWM") - before) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--db", required=True)
    ap.add_argument("--questions", type=int, default=5)
    ap.add_argument("--ks", default="20,50")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from agent.locomo import first_stage_candidates, locomo_questions
    from memory import Memory, QRRanker, models
    from memory.qr.prompt import NULL_QUERY

    # Load times: a fresh cache dir forces the one-time GGUF dequantisation.
    with tempfile.TemporaryDirectory() as tmp:
        old = os.environ.get("QRMEM_CACHE")
        os.environ["QRMEM_CACHE"] = tmp
        t0 = time.perf_counter()
        QRRanker.load(device=args.device)
        first_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        QRRanker.load(device=args.device)
        cached_load = time.perf_counter() - t0
        if old is None:
            del os.environ["QRMEM_CACHE"]
        else:
            os.environ["QRMEM_CACHE"] = old

    ranker = QRRanker.load(device=args.device)
    device = next(ranker.model.parameters()).device
    source = models.resolve(None)
    full = AutoModelForCausalLM.from_pretrained(source.path, dtype=ranker.model.dtype,
                                                attn_implementation="sdpa").eval().to(device)
    naive = AutoModelForCausalLM.from_pretrained(source.path, dtype=ranker.model.dtype,
                                                 attn_implementation="eager").eval().to(device)
    print(f"device {device}, dtype {ranker.model.dtype}, torch threads {torch.get_num_threads()}")
    print(f"heads {', '.join(map(str, ranker.heads))}: {len(ranker.model.layers)} of "
          f"{ranker.n_model_layers} layers run")
    print(f"load: GGUF first time {first_load:.1f}s, cached {cached_load:.2f}s "
          f"({first_load / cached_load:.0f}x)")

    mem = Memory(args.db)
    questions = locomo_questions(json.loads(Path(args.data).read_text()))[:: 37][: args.questions]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for k in (int(x) for x in args.ks.split(",")):
        cands = first_stage_candidates(mem, questions, k)
        rows = {"fast": [], "a": [], "b": []}
        mems = {"fast": [], "a": [], "b": []}
        tokens = []
        for c in cands:
            q, docs, ctx = c.question.question, list(c.texts), list(c.dates)
            layout = ranker._layout(q, docs, ctx, None)
            null = ranker._layout(NULL_QUERY, docs, ctx, None)
            tokens.append(len(layout))
            ids = torch.tensor([layout.input_ids], device=device)
            null_ids = torch.tensor([null.input_ids], device=device)

            def fast() -> None:
                ranker.score(q, docs, contexts=ctx)
                sync()

            def plain() -> None:
                with torch.inference_mode():
                    full(input_ids=ids)
                sync()

            def reference() -> None:
                with torch.inference_mode():
                    naive(input_ids=ids, output_attentions=True)
                    naive(input_ids=null_ids, output_attentions=True)
                sync()

            for name, fn in (("fast", fast), ("a", plain), ("b", reference)):
                if not tokens[:-1]:
                    fn()  # warm-up, once per K
                for _ in range(args.repeats):
                    dt, added = peak_added(fn)
                    rows[name].append(dt)
                    mems[name].append(added)
        med = {n: statistics.median(v) for n, v in rows.items()}
        peak = {n: max(v) for n, v in mems.items()}
        print(f"\nK={k}: {len(cands)} questions, prompt tokens median {statistics.median(tokens):.0f}")
        print(f"  fast QRRanker        {med['fast']:.3f}s  peak +{peak['fast']:.0f} MiB")
        print(f"  (a) full forward     {med['a']:.3f}s  peak +{peak['a']:.0f} MiB")
        print(f"  (b) naive reference  {med['b']:.3f}s  peak +{peak['b']:.0f} MiB")
        print(f"  fast / (a) = {med['fast'] / med['a']:.2f}x   (b) / fast = {med['b'] / med['fast']:.1f}x")


if __name__ == "__main__":
    main()
