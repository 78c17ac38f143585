"""Popularity behind the model interface: the baseline every model must beat, and the
fallback list for users no other model can serve."""
from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from recpipe.models.popularity import Popularity, fit_popularity, score_top_k
from recpipe.recommenders.base import Fitted, History, Store, merge_config

MODEL_FILE = "popularity.json"
DEFAULTS = {"window_days": 90}


class PopularityRecommender:
    name = "popularity"

    def make_config(self, overrides, epochs) -> dict:
        config = merge_config(DEFAULTS, overrides, epochs, self.name, has_epochs=False)
        if not isinstance(config["window_days"], (int, float)) or config["window_days"] <= 0:
            raise ValueError(f"popularity window_days must be a positive number, got {config['window_days']!r}")
        return config

    def prepare(self, store: Store, plan, inputs, config: dict, train_until):
        return store.ratings(before=train_until), train_until

    def fit(self, data, config: dict, out_dir: Path, verbose: int) -> Fitted:
        ratings, train_until = data
        started = time.perf_counter()
        model = fit_popularity(ratings, train_until, timedelta(days=config["window_days"]))
        model.save(Path(out_dir) / MODEL_FILE)
        stats = {"train_until": train_until.isoformat(), "window_days": config["window_days"],
                 "movies_in_window": int((model.counts > 0).sum())}
        return Fitted(stats, {"seconds": round(time.perf_counter() - started, 2)}, {"movies": len(model.movie_ids)})

    def load(self, bundle, run, store: Store) -> Popularity:
        return Popularity.from_json(bundle.read_text(MODEL_FILE))

    def recommend(self, model: Popularity, store: Store, history: History, user_ids, k: int):
        return score_top_k(model, user_ids, history.seen, k)

    def extra_metrics(self, model, store: Store, holdout) -> dict:
        return {}


RECOMMENDER = PopularityRecommender()
