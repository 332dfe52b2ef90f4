"""Theory: the exact math of policy entropy, with no model, loss or run in it.

Entropy and the covariance identity (``entropy``), tabular policy gradient / natural gradient on
bandits (``tabular``), the entropy-reward law fit (``lawfit``), curve statistics over seeds
(``curve_stats``) and unit conversions (``units``). The lowest layer: it imports no other layer
of ``toy_entropy`` (layer order, each importing only the layers before it: theory, models and
envs, algorithms, training, runs; experiments and the CLIs on top; ``tests/test_layout.py``).
"""
