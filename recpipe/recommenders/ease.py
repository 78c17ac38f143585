"""EASE behind the model interface: a strong closed-form baseline (Steck 2019), its
regularisation chosen every night on a validation window before the training cutoff."""
from __future__ import annotations

from recpipe.models.ease import EASEConfig, EASEModel, fit, fit_many
from recpipe.recommenders.base import merge_config
from recpipe.recommenders.item_item import ItemItemRecommender


class EASERecommender(ItemItemRecommender):
    name = "ease"
    # max_items: the item budget (EASEConfig): 10k items bound the fit near 1.2 GB
    # (ML-1M's 3.7k movies are all kept); null keeps every item.
    DEFAULTS = {"lambda_candidates": [100.0, 300.0, 1000.0, 3000.0], "min_rating": 4, "validation_days": 30,
                "max_items": 10_000}
    model_class = EASEModel

    def make_config(self, overrides, epochs) -> dict:
        config = merge_config(self.DEFAULTS, overrides, epochs, self.name, has_epochs=False)
        lambdas = config["lambda_candidates"]
        if not isinstance(lambdas, list) or not lambdas or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in lambdas):
            raise ValueError(f"ease lambda_candidates must be a non-empty list of positive numbers, got {lambdas!r}")
        _check_common(self.name, config)
        return config

    def candidates(self, config: dict) -> list[EASEConfig]:
        return [EASEConfig(lambda_=float(x), min_rating=config["min_rating"], max_items=config["max_items"])
                for x in config["lambda_candidates"]]

    def fit_model(self, ratings, candidate: EASEConfig):
        return fit(ratings, candidate)

    def fit_models(self, ratings, candidates: list[EASEConfig]):
        return fit_many(ratings, candidates)


def _check_common(name: str, config: dict) -> None:
    for key in ("min_rating", "validation_days"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} {key} must be an integer >= 1, got {value!r}")
    value = config["max_items"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} max_items must be an integer >= 1 or null (every item), got {value!r}")


RECOMMENDER = EASERecommender()
