"""Algorithms: advantage estimators and policy losses, and their exact forms on a prefix policy.

GRPO / RLOO / REINFORCE advantages (``advantages``); PPO, clip-higher, Clip-Cov, KL-Cov, the
regularisers and the batch-global token selection (``losses``, whose ``__init__`` is its public
API); the noise-free expected selection and PPO updates of a prefix policy (``exact_selection``,
``exact_ppo``) and the per-rank / per-micro-batch selection emulation (``local_selection``),
which evaluate these losses exactly. May import ``theory``, ``models`` and ``envs``; never
training, runs or experiments (``tests/test_layout.py``).
"""
