"""Models: the policies, a nanoGPT-style decoder and the exactly enumerable prefix policy.

The transformer with its KV-cache sampler (``model``), the tabular prefix policy whose response
distribution is known exactly (``prefix_policy``) and chunked per-token log-probs and entropies
(``token_stats``). May import ``theory`` only (and the envs, which sit beside it and import
nothing of the library); never algorithms, training, runs or experiments
(``tests/test_layout.py``).
"""
