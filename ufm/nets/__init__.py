"""The flax (NNX) path: real networks whose last layer is the UFM, measured with the same
metrics (`ufm.analysis.nc`), losses (`ufm.model.losses`), results folders, plots and CLI.

    from ufm import nets
    data = nets.data.load("digits")
    model = nets.models.build("mlp", input_shape=data.input_shape, num_classes=10)
    result = nets.train(model, data, nets.TrainSettings(epochs=50))
"""
from ufm.nets import data, models, training
from ufm.nets.training import TrainResult, TrainSettings, evaluate, features, representations, train

__all__ = [
    "data",
    "models",
    "training",
    "train",
    "TrainSettings",
    "TrainResult",
    "evaluate",
    "features",
    "representations",
]
