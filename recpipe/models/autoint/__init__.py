"""AutoInt+ (AutoInt with a parallel DNN) as small serializable Keras 3 layers.

Model: the 14 field codes (int32, 0 = unknown) -> one shared embedding table with
per-field offsets -> `att_layers` interacting layers (multi-head self-attention over
the fields, residual projection, ReLU, optional layer norm) -> flatten -> 1 logit;
in parallel a DNN tower over the flattened embeddings -> 1 logit. The probability is
sigmoid(attention logit + DNN logit). Unlike seed 000 there is no ReLU and no dropout
on either logit, so the model can predict below 0.5 and its log-loss is meaningful.

Everything uses `keras.ops`, so the model also runs under KERAS_BACKEND=jax or torch.

    config.py   AutoIntConfig, SEED000_CONFIG, DEFAULT_CONFIG (and how it was chosen)
    layers.py   FieldEmbedding, InteractingLayer, DNNTower
    network.py  build_autoint, compile_autoint, save_model, load_model
    fit.py      fit_autoint, predict_proba

The model knows arrays of codes only: catalogue scoring (which fields belong to the
user, the movie and the scoring time) lives with the model interface in
recpipe.recommenders.autoint.
"""
from importlib import import_module

# Lazy exports: importing the package (e.g. for its config) does not load Keras.
_EXPORTS = {
    "AutoIntConfig": "config",
    "DEFAULT_CONFIG": "config",
    "SEED000_CONFIG": "config",
    "fit_autoint": "fit",
    "predict_proba": "fit",
    "DNNTower": "layers",
    "FieldEmbedding": "layers",
    "InteractingLayer": "layers",
    "build_autoint": "network",
    "compile_autoint": "network",
    "load_model": "network",
    "save_model": "network",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
