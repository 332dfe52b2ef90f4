"""Gymnasium environments of toy-entropy, registered under the ``ToyEntropy/`` namespace.

Importing this package registers every id; ``gymnasium.make("ToyEntropy/Bandit-v0")`` then
works (Gymnasium also imports ``envs`` by itself through the ``module:`` prefix).
"""

from toy_entropy.envs.registration import NAMESPACE, register_all, registered_ids

register_all()

__all__ = ["NAMESPACE", "register_all", "registered_ids"]
