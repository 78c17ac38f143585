"""Leave-one-out protocol: the split on a hand-made frame, ranks and metrics by hand, and
a small end-to-end run (all four models, the CLI) on generated data."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recpipe.evaluation import loo
from recpipe.models import ease
from recpipe.source import load_ml1m_frames
from recpipe.synthetic import SyntheticSpec, write_movielens


def frame(rows):
    df = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"])
    df["line_no"] = np.arange(1, len(df) + 1)
    return df


def test_split_orders_by_time_then_line_and_drops_low_ratings():
    df = frame([
        # user 1: 103 and 102 share ts 20 -> file line decides (103 first); 109 rated 2 is dropped
        (1, 101, 5, 10), (1, 103, 3, 20), (1, 102, 4, 20), (1, 109, 2, 25), (1, 104, 4, 30),
        (1, 105, 5, 5),
        # user 2: two kept items -> validation target only, no test target
        (2, 201, 4, 1), (2, 202, 3, 2), (2, 203, 1, 3),
        # user 3: one kept item -> train only
        (3, 301, 5, 7), (3, 302, 2, 8),
        # user 4: exactly three items
        (4, 401, 3, 3), (4, 402, 3, 2), (4, 403, 3, 1),
    ])
    s = loo.loo_split(df)
    seq1 = s.events[s.events["user_id"] == 1]["movie_id"].tolist()
    assert seq1 == [105, 101, 103, 102, 104]
    assert 109 not in s.events["movie_id"].tolist() and 203 not in s.events["movie_id"].tolist()
    assert s.test[["user_id", "movie_id"]].values.tolist() == [[1, 104], [4, 401]]
    assert s.validation[["user_id", "movie_id"]].values.tolist() == [[1, 102], [2, 202], [4, 402]]
    assert sorted(s.train["movie_id"]) == [101, 103, 105, 201, 301, 403]
    # histories: everything before the target in the user's sequence
    assert [h.tolist() for h in s.histories(s.test)] == [[105, 101, 103, 102], [403, 402]]
    assert [h.tolist() for h in s.histories(s.validation)] == [[105, 101, 103], [201], [403]]
    full = s.train_full
    assert len(full) == len(s.events) - len(s.test) and 102 in full["movie_id"].tolist()


def test_metrics_by_hand():
    m = loo.loo_metrics([1, 2, 10, 11])
    assert m["hr@10"] == 0.75 and m["targets"] == 4
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 4)
    assert loo.loo_metrics([3], k=2) == {"hr@2": 0.0, "ndcg@2": 0.0, "targets": 1}


def test_target_ranks_mask_ties_and_unknown():
    scores = np.array([
        [0.9, 0.5, 0.7, 0.1],  # target 1; 0.9 and 0.7 above, but 0 is masked -> rank 2
        [0.2, 0.2, 0.2, 0.3],  # target 0; tied with 1 and 2 (against the model), 3 above -> 4
        [0.1, 0.2, 0.3, 0.4],  # target unknown to the model -> last
        [0.5, 0.4, 0.3, 0.2],  # target masked (cannot happen in loo) -> a miss
    ])
    masks = [np.array([0]), np.array([], int), np.array([], int), np.array([2])]
    assert loo.target_ranks(scores, [1, 0, -1, 2], masks).tolist() == [2, 4, 5, 5]
    assert scores[0, 0] == 0.9  # the caller's scores are not modified


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    src = write_movielens(tmp_path_factory.mktemp("ml"), SyntheticSpec(users=150, movies=60))
    ratings, _, _ = load_ml1m_frames(src)
    return src, loo.loo_split(ratings)


def test_end_to_end_on_generated_data(synth, tmp_path):
    from recpipe.models.gru4rec import GRU4RecConfig

    _, split = synth
    assert len(split.test) == split.events["user_id"].nunique()  # every user has >= 3 items
    pop = loo.run_popularity(split)
    ez = loo.run_ease(split, [1.0, 10.0])
    knn = loo.run_itemknn(split, [{"neighbours": 5, "shrinkage": 0.0}, {"neighbours": 20, "shrinkage": 0.0}])
    cfg = GRU4RecConfig(hidden=16, embedding_dim=16, batch_size=8, bptt=4, epochs=3, patience=0,
                        learning_rate=1e-2, monitor="val_ndcg@10")
    gru = loo.run_gru4rec(split, [cfg], [2, None], cache=tmp_path, verbose=0)
    # the validation figure of the kept (best) epoch is the one the choice log shows for L=all
    by_epoch = gru["choice_log"][1]["val_ndcg@10_by_epoch"]
    assert len(by_epoch) == 3 and gru["choice_log"][1]["ndcg@10"] == pytest.approx(max(by_epoch))
    for res in (ez, knn, gru):
        best = max(res["choice_log"], key=lambda e: e["ndcg@10"])
        assert res["validation"]["ndcg@10"] == best["ndcg@10"]
        assert res["test"]["targets"] == len(split.test)
    assert [e["candidate"]["history_length"] for e in gru["choice_log"]] == [2, None]
    # the planted genre preference and chain order are learnt: all beat item counts
    for res in (ez, knn, gru):
        assert res["test"]["ndcg@10"] > pop["test"]["ndcg@10"]
    # a second run finds the fitted GRU4Rec in the cache and scores it the same
    again = loo.run_gru4rec(split, [cfg], [2, None], cache=tmp_path, verbose=0)
    assert again["choice_log"][0]["cached"] and again["test"] == gru["test"]
    with pytest.raises(ValueError, match="monitor"):
        loo.run_gru4rec(split, [GRU4RecConfig(epochs=1)], [None], verbose=0)


def test_ranks_agree_with_model_top_k(synth):
    _, split = synth
    model = ease.fit(split.train_full, ease.EASEConfig(lambda_=10.0, min_rating=3))
    hists = split.histories(split.test)
    ranks = loo.target_ranks(model.scores(hists), ease.encode(model.movie_ids, split.test["movie_id"]),
                             [ease.encode(model.movie_ids, h) for h in hists])
    users = split.test["user_id"].tolist()
    top = model.score_top_k(dict(zip(users, hists)), k=10)
    for u, target, r in zip(users, split.test["movie_id"], ranks):
        listed = top[(top["user_id"] == u) & (top["movie_id"] == target)]["rank"].tolist()
        assert listed == ([r] if r <= 10 else [])


def test_cli_writes_table_and_json(synth, tmp_path, capsys):
    src, _ = synth
    out = tmp_path / "loo.json"
    assert loo.main(["--data", str(src), "--out", str(out), "--models", "popularity,ease",
                     "--ease-lambdas", "5,50"]) == 0
    res = json.loads(out.read_text())
    assert set(res["models"]) == {"popularity", "ease"}
    assert [e["candidate"]["lambda_"] for e in res["models"]["ease"]["choice_log"]] == [5.0, 50.0]
    assert res["split"]["test_targets"] == 150
    assert "test NDCG@10" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        loo.main(["--data", str(src), "--models", "sasrec"])


def test_recpipe_evaluate_runs_the_protocol(synth, tmp_path, monkeypatch, capsys):
    from recpipe import cli

    src, _ = synth
    monkeypatch.setenv("RECPIPE_SOURCE_DIR", str(src))
    monkeypatch.setenv("RECPIPE_HOME", str(tmp_path / "home"))
    out = tmp_path / "loo.json"
    assert cli.main(["evaluate", "--protocol", "loo", "--model", "popularity", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["models"]) == {"popularity"} and res["split"]["test_targets"] == 150
    with pytest.raises(SystemExit, match="not autoint"):
        cli.main(["evaluate", "--protocol", "loo", "--model", "autoint", "--out", str(out)])
