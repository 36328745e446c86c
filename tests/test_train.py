"""Listwise QR training on a tiny random model: loss, saved directories, resume, checkpointing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from typer.testing import CliRunner

from memory import QRRanker
from memory.qr.data import Record
from memory.qr.train import TrainConfig, listwise_loss, train
from qrmem.cli import app

WORDS = ["kitten Miso", "marathon Lisbon", "sunrise painting", "support group"]
HEADS = "2-1,3-0"


def records(n: int, group: str = "g") -> list[Record]:
    out = []
    for i in range(n):
        gold = i % 4
        out.append(Record(id=f"{group}{i}", group=f"{group}{i % 2}", question=f"about {WORDS[gold]}?",
                          paragraphs=[{"paragraph_text": f"This is about {w}.", "is_supporting": j == gold}
                                      for j, w in enumerate(WORDS)]))
    return out


def test_listwise_loss_is_the_groupwise_contrastive_loss() -> None:
    scores = torch.tensor([2.0, 4.0, 3.0, 0.0])
    gold = torch.tensor([False, True, True, False])
    s = torch.tensor([0.5, 1.0, 0.75, 0.0]) / 0.1  # max-min normalised, temperature 0.1
    expected = -math.log((math.exp(s[1]) + math.exp(s[2])) / sum(math.exp(x) for x in s))
    assert float(listwise_loss(scores, gold, 0.1)) == pytest.approx(expected, rel=1e-5)
    assert float(listwise_loss(scores * 3 + 1, gold, 0.1)) == pytest.approx(expected, rel=1e-5)


def trained_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path / "attention_weights.safetensors"))


@pytest.mark.parametrize("method", ["lora", "attention"])
def test_training_lowers_the_loss_and_writes_a_loadable_directory(tiny_lm, tmp_path: Path, method: str) -> None:
    ranker = QRRanker.load(str(tiny_lm("llama")), heads=HEADS, dtype="float32")
    cfg = TrainConfig(method=method, epochs=4, grad_accum=2, lr=5e-3, layers_from=1, seed=1)
    out = tmp_path / "trained"
    report = train(ranker, records(8), records(4, "v"), out, cfg, base=str(tiny_lm("llama")))
    losses = [e.train_loss for e in report.epochs]
    assert losses[-1] < losses[0], losses
    manifest = json.loads((out / "qrmem_ranker.json").read_text())
    assert manifest["heads"] == ["2-1", "3-0"] and manifest["trained_layers"] == [1, 2, 3]
    names = list(trained_tensors(out))
    assert names and all(".layers.0." not in n for n in names)  # layer 0 is not trained
    if method == "lora":
        assert all("lora_" in n for n in names)
    else:
        assert all(n.endswith("proj.weight") for n in names)

    loaded = QRRanker.load(str(out), dtype="float32")
    docs = [f"This is about {w}." for w in WORDS]
    assert type(loaded.model.layers[2].self_attn.q_proj).__name__ == "Linear"  # LoRA merged away
    np.testing.assert_allclose(loaded.score("about kitten Miso?", docs),
                               ranker.score("about kitten Miso?", docs), atol=1e-4)
    import torch

    half = QRRanker.load(str(out), dtype="bfloat16", device="cpu")  # merged in fp32, then cast
    for (name, a), (_, b) in zip(half.model.named_parameters(), loaded.model.named_parameters(), strict=True):
        assert a.dtype is torch.bfloat16 and torch.equal(a, b.to(torch.bfloat16)), name
    untrained = QRRanker.load(str(tiny_lm("llama")), heads=HEADS, dtype="float32")
    assert not np.allclose(loaded.score("about kitten Miso?", docs),
                           untrained.score("about kitten Miso?", docs), atol=1e-4)


def test_resume_continues_exactly_where_it_stopped(tiny_lm, tmp_path: Path) -> None:
    def run(out: Path, max_steps: int, resume: bool = False) -> None:
        ranker = QRRanker.load(str(tiny_lm("llama")), heads=HEADS, dtype="float32")
        cfg = TrainConfig(epochs=2, grad_accum=2, lr=5e-3, layers_from=2, max_steps=max_steps, seed=2)
        train(ranker, records(4), [], out, cfg, resume=resume)

    run(tmp_path / "straight", 3)
    run(tmp_path / "stopped", 1)
    state = json.loads((tmp_path / "stopped" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 1 and state["position"] == 2
    run(tmp_path / "stopped", 3, resume=True)
    a, b = trained_tensors(tmp_path / "straight"), trained_tensors(tmp_path / "stopped")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6, err_msg=name)


def test_gradient_checkpointing_gives_the_same_update(tiny_lm, tmp_path: Path) -> None:
    results = []
    for gc in (False, True):
        ranker = QRRanker.load(str(tiny_lm("llama")), heads=HEADS, dtype="float32")
        cfg = TrainConfig(epochs=1, grad_accum=4, lr=5e-3, layers_from=1, seed=3, gradient_checkpointing=gc)
        train(ranker, records(4), [], tmp_path / f"gc{gc}", cfg)
        results.append(trained_tensors(tmp_path / f"gc{gc}"))
    for name in results[0]:
        np.testing.assert_allclose(results[0][name], results[1][name], atol=1e-5, err_msg=name)


def test_cli_train_on_records(tiny_lm, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(r.model_dump_json() for r in records(6, "a") + records(4, "b")))
    out = tmp_path / "model"
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out), "--model",
                                   str(tiny_lm("llama")), "--heads", HEADS, "--val-conversations",
                                   "b0,b1", "--grad-accum", "2", "--lr", "1e-3"])
    assert res.exit_code == 0, res.output
    assert "training on 6 queries" in res.stdout and "validating on 4 (b0, b1)" in res.stdout
    assert "epoch 1: loss" in res.stdout
    assert QRRanker.load(str(out)).heads[0].layer == 2


def test_cli_train_keeps_the_scoring_asked_for(tiny_lm, tmp_path: Path) -> None:
    """--no-calibrate / --calibrate reach the model that trains and the manifest it writes."""
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(r.model_dump_json() for r in records(4, "a")))
    for flag, want in (("--no-calibrate", False), ("--calibrate", True)):
        out = tmp_path / flag.strip("-")
        res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out), "--model",
                                       str(tiny_lm("llama")), "--heads", HEADS, flag, "--max-steps", "1",
                                       "--grad-accum", "2"])
        assert res.exit_code == 0, res.output
        assert json.loads((out / "qrmem_ranker.json").read_text())["scoring"]["calibrate"] is want
        assert QRRanker.load(str(out)).config.calibrate is want


def test_train_under_a_layer_budget_refuses_heads_above_it(tiny_lm, tmp_path: Path) -> None:
    from memory.qr.train import train_heads

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(r.model_dump_json() for r in records(4, "a") + records(2, "b")))
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "m"), "--model",
                                   str(tiny_lm("llama")), "--heads", "2-1,3-0", "--max-layer", "2",
                                   "--val-conversations", "b0,b1"])
    assert res.exit_code == 1 and "heads 3-0 lie above the layer budget 2" in res.stderr
    assert not (tmp_path / "m").exists()
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "q"), "--model",
                                   str(tiny_lm("llama")), "--heads", "1-1", "--quantize", "int8"])
    assert res.exit_code == 1 and "cannot be trained" in res.stderr
    cfg = TrainConfig(grad_accum=2, max_steps=1)
    report = train_heads(records(4, "a"), [], tmp_path / "ok", cfg, model=str(tiny_lm("llama")),
                         heads="1-1,2-0", max_layer=2, dtype="float32")
    assert report.out.is_dir()
    ranker = QRRanker.load(str(tmp_path / "ok"))
    assert len(ranker.model.layers) == 3 and [str(h) for h in ranker.heads] == ["1-1", "2-0"]
