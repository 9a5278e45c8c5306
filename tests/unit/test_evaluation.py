"""``rag eval``: metrics on hand-checked rankings, and the command on a small dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rag.engine import RAG
from rag.evaluation import (
    contains_answer,
    declines,
    evaluate,
    exact_match,
    load_dataset,
    mrr_at,
    ndcg_at,
    recall_at,
    retrieval_metrics,
    token_f1,
)
from rag.prompts import NO_ANSWER_EN, NO_ANSWER_ZH
from stores.errors import InvalidInput, NotFound


def test_ranking_metrics() -> None:
    ranked = ["a", "b", "c", "d"]
    assert recall_at(ranked, {"c"}, 2) == 0.0 and recall_at(ranked, {"c"}, 3) == 1.0
    assert recall_at(ranked, {"a", "z"}, 5) == 0.5
    assert mrr_at(ranked, {"c"}) == pytest.approx(1 / 3)
    assert mrr_at(ranked, {"z"}) == 0.0
    assert ndcg_at(ranked, {"a"}) == 1.0
    assert ndcg_at(ranked, {"b"}) == pytest.approx(1 / math.log2(3))
    assert ndcg_at(ranked, {"b", "a"}) == 1.0
    m = retrieval_metrics([["a", "b"], ["b", "a"]], [{"a"}, {"a"}], [1, 2])
    assert m == {"recall@1": 0.5, "recall@2": 1.0, "mrr@10": 0.75,
                 "ndcg@10": round((1 + 1 / math.log2(3)) / 2, 4)}


def test_answer_metrics_english_and_chinese() -> None:
    assert exact_match("The Eiffel Tower.", ["Eiffel tower"]) == 1.0
    assert token_f1("in the 10th century", ["10th and 11th centuries"]) == pytest.approx(2 / 7)
    assert token_f1("光荣和ω-force", ["光荣和ω-force"]) == 1.0
    assert 0 < token_f1("光荣公司", ["光荣和ω-force"]) < 1
    assert token_f1("", ["x"]) == 0.0
    # An answer is contained as whole words (characters for Chinese), not as a substring.
    assert contains_answer("An adult ticket costs 12 euros.", ["12 euros"]) == 1.0
    assert contains_answer("It costs 120 euros.", ["12", "12 euros"]) == 0.0
    assert contains_answer("西湖龙井产于浙江省杭州市。", ["浙江省杭州市"]) == 1.0
    assert contains_answer("西湖龙井产于浙江省。", ["浙江省杭州市"]) == 0.0
    assert contains_answer("anything", ["", "a"]) == 0.0  # nothing left once normalized


def test_dataset_loading_and_sampling(tmp_path: Path, mini_dataset: Path) -> None:
    ds = load_dataset(mini_dataset)
    assert [q.id for q in ds.sample(None)] == ["q1", "q2", "q3"]
    assert [q.id for q in ds.sample(None, answerable=False)] == ["q4"]
    assert ds.sample(2, seed=1) == ds.sample(2, seed=1) and len(ds.sample(2)) == 2
    with pytest.raises(NotFound, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "passages.jsonl").write_text("{not json\n")
    with pytest.raises(InvalidInput, match="line 1"):
        load_dataset(tmp_path / "bad")


def test_a_model_that_says_it_does_not_know_abstains() -> None:
    for text in ("I don't know.", "I don’t know the answer [1].", "不知道。",
                 "The passages do not mention Report R-2626.", "段落中没有提到这个问题的答案。",
                 "It is not mentioned in the passages.", NO_ANSWER_EN, NO_ANSWER_ZH):
        assert declines(text), text
    for text in ("The answer is: 12 euros [1].", "Guo Shoujing did not do anything [1].",
                 "I know that tickets cost 12 euros.", "西湖龙井产于浙江省杭州市。"):
        assert not declines(text), text


def test_the_abstention_rate_counts_answers_that_decline(fake_rag: RAG, tmp_path: Path
                                                         ) -> None:
    """The extractive test generator answers "I don't know." when no passage has a whole
    sentence: the passages are found (the engine does not abstain), the answer declines."""
    folder = tmp_path / "no-sentences"
    folder.mkdir()
    passages = [{"id": "p1", "title": "Observatory", "text": "adult tickets 12 euros"},
                {"id": "p2", "title": "Returns", "text": "refunds within 30 days"}]
    questions = [{"id": "q1", "question": "How much is an adult ticket?",
                  "gold_passage_ids": ["p1"], "answers": ["12 euros"]},
                 {"id": "q2", "question": "Who sells the adult tickets?",
                  "gold_passage_ids": [], "answers": [], "is_impossible": True}]
    (folder / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    (folder / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    report = evaluate(fake_rag, load_dataset(folder), "kb", ks=(1,), answers=1)
    assert fake_rag.ask("Who sells the adult tickets?", "kb").passages  # found, not abstained
    assert report.answers["unanswerable"] == 1 and report.answers["abstention_rate"] == 1.0
