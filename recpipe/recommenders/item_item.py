"""What EASE and item-kNN share behind the model interface: the configuration chosen on
a validation window before the training cutoff (a night's refit keeps the gated run's
choice), then a fit on everything before the cutoff, and scoring each user from the
positives of the user's history.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from recpipe.recommenders.base import Fitted, History, Store, empty_lists


class ItemItemRecommender:
    """Subclasses set name, DEFAULTS and define candidates(config), fit_model(ratings,
    candidate), model_class; and fit_models(ratings, candidates) where the candidates'
    fits share work."""

    name = ""
    DEFAULTS: dict = {}

    def fit_models(self, ratings, candidates):
        """A model per candidate, in order (a generator: one fit in memory at a time)."""
        return (self.fit_model(ratings, candidate) for candidate in candidates)

    def prepare(self, store: Store, plan, inputs, config: dict, train_until):
        ratings = store.ratings(before=train_until)
        if ratings.empty:
            raise ValueError(f"no ratings before {train_until}: nothing to train {self.name} on")
        return ratings, train_until

    def fit(self, data, config: dict, out_dir: Path, verbose: int | None = None) -> Fitted:
        from recpipe.models.ease import choose

        ratings, train_until = data
        started = time.perf_counter()
        candidates = self.candidates(config)
        validation = ratings.iloc[:0]
        if config.get("gated_choice"):  # a refit: the gated run's choice, on every rating before the night
            chosen, choice_log = type(candidates[0])(**config["gated_choice"]), []
            reason = "the gated run's choice (a refit never chooses again)"
        else:
            split = train_until - timedelta(days=config["validation_days"])
            train = ratings[ratings["rated_at"] < pd.Timestamp(split)]
            validation = ratings[(ratings["rated_at"] >= pd.Timestamp(split))
                                 & ratings["user_id"].isin(train["user_id"].unique())]
            if len(candidates) > 1 and not train.empty and (validation["rating"] >= config["min_rating"]).any():
                _, chosen, choice_log = choose(zip(candidates, self.fit_models(train, candidates)), train, validation)
                reason = f"best NDCG@10 on the {config['validation_days']}-day validation window before the cutoff"
            else:
                chosen, choice_log = candidates[0], []
                reason = "the first candidate: the validation window has no positives of known users"
            del train
        model = self.fit_model(ratings, chosen)  # refit on everything before the cutoff
        model.save(out_dir)
        positives = ratings.loc[ratings["rating"] >= config["min_rating"], "movie_id"]
        budget = {"max_items": config["max_items"], "items_kept": int(len(model.movie_ids)),
                  "items_with_positives": int(positives.nunique()),
                  "positives_kept_share": float(positives.isin(model.movie_ids).mean()) if len(positives) else 1.0}
        stats = {"train_until": train_until.isoformat(), "ratings": int(len(ratings)),
                 "items": int(len(model.movie_ids)), "chosen": asdict(chosen), "chosen_because": reason,
                 "choice_log": choice_log, "validation_users": int(validation["user_id"].nunique()),
                 "item_budget": budget}
        return Fitted(stats, {"seconds": round(time.perf_counter() - started, 2), **budget},
                      {"items": len(model.movie_ids)})

    def refit_config(self, config: dict, gated_stats: dict) -> dict:
        return {**config, "gated_choice": gated_stats["chosen"]}

    def load(self, bundle, run, store: Store):
        return self.model_class.load(bundle.path(f"{self.name}.npz").parent)

    def recommend(self, model, store: Store, history: History, user_ids, k: int) -> pd.DataFrame:
        liked = history.ratings[(history.ratings["rating"] >= model.config.min_rating)
                                & history.ratings["user_id"].isin(np.asarray(user_ids))]
        known = liked[liked["movie_id"].isin(model.movie_ids)]
        # Users without a positive the model knows get nothing here: the fallback serves them.
        histories = {int(u): m.tolist() for u, m in known.groupby("user_id")["movie_id"]}
        if not histories:
            return empty_lists()
        return model.score_top_k(histories, {u: history.seen.get(u, ()) for u in histories}, k,
                                 chunk_size=store.settings.chunk_users)

    def extra_metrics(self, model, store: Store, holdout) -> dict:
        return {}
