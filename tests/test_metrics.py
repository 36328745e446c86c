"""The LoCoMo F1 on hand-made cases."""

from __future__ import annotations

import pytest

from memory.metrics import f1, locomo_f1, multi_answer_f1, normalize, tokens


def test_normalisation_and_stemming() -> None:
    assert normalize("The Cat, and a Dog!") == "cat dog"
    assert tokens("Running to the paintings") == ["run", "to", "paint"]


@pytest.mark.parametrize("pred, gold, expected", [
    ("7 May 2023", "7 May 2023", 1.0),
    ("on 7 May", "7 May 2023", 2 * (2 / 3) * (2 / 3) / (4 / 3)),  # 2 of 3 tokens each way
    ("The painting of a sunrise", "painted sunrise", 0.8),  # articles dropped, stems match, "of" extra
    ("Paris", "London", 0.0),
    ("", "anything", 0.0),
])
def test_token_f1(pred: str, gold: str, expected: float) -> None:
    assert f1(pred, gold) == pytest.approx(expected)


def test_category_rules() -> None:
    # multi-hop: each gold part takes its best prediction part, then the mean
    assert multi_answer_f1("pottery, hiking", "hiking, pottery, painting") == pytest.approx(2 / 3)
    assert locomo_f1("pottery, hiking", "hiking, pottery, painting", 1) == pytest.approx(2 / 3)
    # open-domain: only the gold before ';' counts
    assert locomo_f1("psychology", "psychology; counseling certification", 3) == 1.0
    # temporal and single-hop: plain F1
    assert locomo_f1("2022", 2022, 2) == 1.0
    # adversarial: credit for abstaining only
    assert locomo_f1("Not mentioned in the conversation", None, 5) == 1.0
    assert locomo_f1("self-care is important", None, 5) == 0.0
