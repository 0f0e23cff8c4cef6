"""Training: the config, the methods registry and the one training loop.

from opdkit.train import load_config, train
result = train(load_config("tiny/scope", ["steps=20"]), "runs/scope")
"""

from opdkit.train.config import TrainConfig, config_from_dict, load_config
from opdkit.train.configio import ConfigError
from opdkit.train.loop import TrainResult, train
from opdkit.train.methods import METHODS

__all__ = ["METHODS", "ConfigError", "TrainConfig", "TrainResult", "config_from_dict", "load_config", "train"]
