"""QRRanker latency and memory on CPU (or GPU), every lever measured side by side in one run.

    python benchmarks/qr_latency.py --db DB [--questions 5] [--ks 20] [--repeats 2] [--threads 2]
        [--budgets 11,15] [--batches 1,4,16] [--batch-questions 16] [--no-naive] [--load-times]

For real LoCoMo prompts (hybrid top-K of locomo_dev questions, dates as context) it times, median
over questions x repeats, all interleaved per question on the same token ids:
  shipped         QRRanker.rank, the shipped (trained) reranker, float32
  shipped bf16    the same in bfloat16 (the CPU default where the CPU has native bf16: AVX512-BF16/AMX)
  shipped int8    the same with quantize="int8" (linear layers in int8, dynamic activations)
  budget N        heads within layers 0..N (N+1 layers run), float32, bf16 and int8
  honest          one prefill of the *full* base model over exactly the ranker's prompt, without
                  all-position logits (logits_to_keep=1), float32: what any generation step pays to
                  read it; every ratio is to this row
  honest bf16     the same prefill in bfloat16 (the like-for-like baseline of the bf16 rows)
  (a) old         the previous baseline: full model with logits for every position
  (b) naive       full model, eager attention, output_attentions=True, and a second full pass for
                  the null query
and reports each ratio to `honest`, the peak resident memory added by each step, and queries/s of
`QRRanker.rank_many` at the given batch sizes (shipped float32 and int8).
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
    ap.add_argument("--ks", default="20")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (set explicitly)")
    ap.add_argument("--budgets", default="11,15", help="layer budgets N to time (heads in layers 0..N)")
    ap.add_argument("--batches", default="1,4,16", help="rank_many batch sizes")
    ap.add_argument("--batch-questions", type=int, default=16)
    ap.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--load-times", action="store_true", help="also time the one-time GGUF conversion")
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from agent.locomo import first_stage_candidates, locomo_questions
    from memory import Memory, QRRanker, models
    from memory.qr.prompt import NULL_QUERY

    torch.set_num_threads(args.threads)
    results: dict = {"threads": args.threads, "interop_threads": torch.get_num_interop_threads()}
    if args.load_times:  # a fresh cache dir forces the one-time GGUF dequantisation
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
        results["load"] = {"gguf_first": first_load, "cached": cached_load}
        print(f"load: GGUF first time {first_load:.1f}s, cached {cached_load:.2f}s")

    cpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu"
    fp32 = "float32" if cpu else "auto"
    rankers = {"shipped": QRRanker.load(device=args.device, dtype=fp32)}
    if cpu:
        rankers["shipped bf16"] = QRRanker.load(device=args.device, dtype="bfloat16")
        rankers["shipped int8"] = QRRanker.load(device=args.device, quantize="int8")
    for n in (int(x) for x in args.budgets.split(",") if x):
        rankers[f"budget {n}"] = QRRanker.load(heads=f"{n}-0", calibrate=False, device=args.device, dtype=fp32)
        if cpu:
            rankers[f"budget {n} bf16"] = QRRanker.load(heads=f"{n}-0", calibrate=False, device=args.device,
                                                         dtype="bfloat16")
            rankers[f"budget {n} int8"] = QRRanker.load(heads=f"{n}-0", calibrate=False, device=args.device,
                                                         quantize="int8")
    ranker = rankers["shipped"]
    device = next(ranker.model.parameters()).device
    source = models.resolve(None)
    full = AutoModelForCausalLM.from_pretrained(source.path, dtype=ranker.model.dtype,
                                                attn_implementation="sdpa").eval().to(device)
    full_bf16 = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.bfloat16,
                                                     attn_implementation="sdpa").eval().to(device) if cpu else None
    naive = AutoModelForCausalLM.from_pretrained(source.path, dtype=ranker.model.dtype,
                                                 attn_implementation="eager").eval().to(device) if args.naive else None
    print(f"device {device}, dtype {ranker.model.dtype}, torch threads {torch.get_num_threads()} "
          f"(interop {torch.get_num_interop_threads()})")
    for name, r in rankers.items():
        print(f"  {name:18s} heads {','.join(map(str, r.heads))}: {len(r.model.layers)} of "
              f"{r.n_model_layers} layers run")

    mem = Memory(args.db)
    all_q = locomo_questions(json.loads(Path(args.data).read_text()))
    questions = all_q[:: 37][: args.questions]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for k in (int(x) for x in args.ks.split(",")):
        cands = first_stage_candidates(mem, questions, k)
        names = (list(rankers) + ["honest"] + (["honest bf16"] if full_bf16 is not None else [])
                 + ["(a) old"] + (["(b) naive"] if naive is not None else []))
        rows: dict[str, list[float]] = {n: [] for n in names}
        mems: dict[str, list[float]] = {n: [] for n in names}
        tokens = []
        for qi, c in enumerate(cands):
            q, docs, ctx = c.question.question, list(c.texts), list(c.dates)
            layout = ranker.layout(q, docs, ctx, None)
            null = ranker.layout(NULL_QUERY, docs, ctx, None)
            tokens.append(len(layout))
            ids = torch.tensor([layout.input_ids], device=device)
            null_ids = torch.tensor([null.input_ids], device=device)
            fns = {}  # called within this iteration only; defaults bind this question's inputs
            for name, r in rankers.items():
                fns[name] = (lambda r=r, q=q, docs=docs, ctx=ctx: (r.rank(q, docs, contexts=ctx), sync()))
            fns["honest"] = lambda ids=ids: (full(input_ids=ids, logits_to_keep=1), sync())
            if full_bf16 is not None:
                fns["honest bf16"] = lambda ids=ids: (full_bf16(input_ids=ids, logits_to_keep=1), sync())
            fns["(a) old"] = lambda ids=ids: (full(input_ids=ids), sync())
            if naive is not None:
                fns["(b) naive"] = lambda ids=ids, null_ids=null_ids: (
                    naive(input_ids=ids, output_attentions=True),
                    naive(input_ids=null_ids, output_attentions=True), sync())
            with torch.inference_mode():
                for rep in range(args.repeats + (1 if qi == 0 else 0)):  # one warm-up round per K
                    for name in names:
                        if name == "(b) naive" and rep > (1 if qi == 0 else 0):
                            continue  # the naive path is slow: one timed run per question
                        dt, added = peak_added(fns[name])
                        if qi == 0 and rep == 0:
                            continue
                        rows[name].append(dt)
                        mems[name].append(added)
        med = {n: statistics.median(v) for n, v in rows.items()}
        peak = {n: max(v) for n, v in mems.items()}
        base = med["honest"]
        print(f"\nK={k}: {len(cands)} questions, prompt tokens median {statistics.median(tokens):.0f}")
        for n in names:
            print(f"  {n:18s} {med[n]:7.3f}s  {med[n] / base:5.2f}x honest  peak +{peak[n]:.0f} MiB")
        if naive is not None:
            print("  naive / shipped = " + f"{med['(b) naive'] / med['shipped']:.1f}x; naive / best = "
                  + f"{med['(b) naive'] / min(med[n] for n in rankers):.1f}x")
        if "honest bf16" in med:
            print(f"  like for like: shipped bf16 / honest bf16 = {med['shipped bf16'] / med['honest bf16']:.2f}x")
        results[f"k{k}"] = {"questions": len(cands), "tokens_median": statistics.median(tokens),
                            "median_s": med, "ratio_to_honest": {n: med[n] / base for n in names},
                            "peak_added_mib": peak}

    # Batched throughput: rank_many over the same questions at several batch sizes.
    batch_q = all_q[:: 11][: args.batch_questions]
    cands = first_stage_candidates(mem, batch_q, 20)
    qs, lists, ctxs = ([c.question.question for c in cands], [list(c.texts) for c in cands],
                       [list(c.dates) for c in cands])
    results["batch"] = {}
    batch_rankers = [n for n in ("shipped", "shipped bf16", "shipped int8") if n in rankers]
    for name in batch_rankers:
        rankers[name].rank_many(qs[:2], lists[:2], ctxs[:2], batch_size=2)  # warm-up
    print(f"\nrank_many, {len(qs)} questions (K=20, dates):")
    for bs in (int(x) for x in args.batches.split(",")):
        for name in batch_rankers:  # interleaved
            dt, added = peak_added(lambda name=name, bs=bs: rankers[name].rank_many(qs, lists, ctxs, batch_size=bs))
            results["batch"][f"{name} b{bs}"] = {"queries_per_s": len(qs) / dt, "peak_added_mib": added}
            print(f"  {name:14s} batch {bs:2d}: {len(qs) / dt:5.2f} queries/s  peak +{added:.0f} MiB")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
