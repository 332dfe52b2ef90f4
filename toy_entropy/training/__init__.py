"""Training: the run loop that turns models and algorithms into RL updates.

The ``Trainer`` and its step (``trainer``), ``TrainConfig`` and the key=value parser (``config``),
the typed rollout (``rollout``), data parallelism (``parallel``), checkpoints (``checkpoint``),
clean stops on SIGINT / SIGTERM (``interrupts``), scale presets (``scale_presets``) and the cached
supervised warm start (``warmstart``). May import ``theory``, ``models``, ``envs`` and
``algorithms``; never runs or experiments (``tests/test_layout.py``).
"""
