"""``rag eval``: metrics on hand-checked rankings, and the command on a small dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rag.evaluation import (
    exact_match,
    load_dataset,
    mrr_at,
    ndcg_at,
    recall_at,
    retrieval_metrics,
    token_f1,
)
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


def write_dataset(folder: Path) -> Path:
    folder.mkdir()
    passages = [
        {"id": "p1", "title": "Observatory", "text": "An adult ticket costs 12 euros."},
        {"id": "p2", "title": "Tea", "text": "西湖龙井产于浙江省杭州市，是绿茶。"},
        {"id": "p3", "title": "Returns", "text": "Refunds are possible within 30 days."},
    ]
    questions = [
        {"id": "q1", "question": "How much is an adult ticket?", "gold_passage_ids": ["p1"],
         "answers": ["12 euros"]},
        {"id": "q2", "question": "西湖龙井产于哪里？", "gold_passage_ids": ["p2"],
         "answers": ["浙江省杭州市"]},
        {"id": "q3", "question": "Within how many days are refunds possible?",
         "gold_passage_ids": ["p3"], "answers": ["30 days"]},
        {"id": "q4", "question": "Who built the pyramids?", "gold_passage_ids": [],
         "answers": [], "is_impossible": True},
    ]
    (folder / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    (folder / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return folder


def test_dataset_loading_and_sampling(tmp_path: Path) -> None:
    ds = load_dataset(write_dataset(tmp_path / "mini"))
    assert [q.id for q in ds.sample(None)] == ["q1", "q2", "q3"]
    assert [q.id for q in ds.sample(None, answerable=False)] == ["q4"]
    assert ds.sample(2, seed=1) == ds.sample(2, seed=1) and len(ds.sample(2)) == 2
    with pytest.raises(NotFound, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "passages.jsonl").write_text("{not json\n")
    with pytest.raises(InvalidInput, match="line 1"):
        load_dataset(tmp_path / "bad")


def test_rag_eval_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from rag.cli import app

    data = write_dataset(tmp_path / "mini")
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runner = CliRunner()
    first = runner.invoke(app, ["eval", "--dataset", str(data), "--kb", "mini", "--mode",
                                "keyword", "--k", "1,3", "--json"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    assert report["questions"] == 3 and report["mode"] == "keyword"
    assert report["retrieval"]["recall@1"] == 1.0 and report["retrieval"]["mrr@10"] == 1.0
    assert report["ingest"]["documents"] == 3 and not report["ingest"]["reused"]
    again = runner.invoke(app, ["eval", "--dataset", str(data), "--kb", "mini"])
    assert again.exit_code == 0, again.output
    assert "recall@5" in again.output and "hybrid" in again.output
    bad = runner.invoke(app, ["eval", "--dataset", str(data), "--kb", "mini", "--k", "x"])
    assert bad.exit_code == 2 and "--k takes integers" in bad.output
