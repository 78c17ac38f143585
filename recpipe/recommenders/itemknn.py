"""Item-kNN behind the model interface: cosine neighbours of the positives, the number of
neighbours and the shrinkage chosen every night on a validation window."""
from __future__ import annotations

from recpipe.models.itemknn import ItemKNNConfig, ItemKNNModel, fit, fit_many
from recpipe.recommenders.base import merge_config
from recpipe.recommenders.ease import _check_common
from recpipe.recommenders.item_item import ItemItemRecommender


class ItemKNNRecommender(ItemItemRecommender):
    name = "itemknn"
    # max_items: the item budget (ItemKNNConfig): the fit's time grows with items^2;
    # ML-1M's 3.7k movies are all kept; null keeps every item.
    DEFAULTS = {"neighbours_candidates": [50, 200], "shrinkage_candidates": [0.0, 10.0], "min_rating": 4,
                "validation_days": 30, "max_items": 20_000}
    model_class = ItemKNNModel

    def make_config(self, overrides, epochs) -> dict:
        config = merge_config(self.DEFAULTS, overrides, epochs, self.name, has_epochs=False)
        for key, low in (("neighbours_candidates", 1), ("shrinkage_candidates", 0)):
            values = config[key]
            if not isinstance(values, list) or not values or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and x >= low for x in values):
                raise ValueError(f"itemknn {key} must be a non-empty list of numbers >= {low}, got {values!r}")
        _check_common(self.name, config)
        return config

    def candidates(self, config: dict) -> list[ItemKNNConfig]:
        return [ItemKNNConfig(neighbours=int(n), shrinkage=float(s), min_rating=config["min_rating"],
                              max_items=config["max_items"])
                for n in config["neighbours_candidates"] for s in config["shrinkage_candidates"]]

    def fit_model(self, ratings, candidate: ItemKNNConfig):
        return fit(ratings, candidate)

    def fit_models(self, ratings, candidates: list[ItemKNNConfig]):
        return fit_many(ratings, candidates)


RECOMMENDER = ItemKNNRecommender()
