"""toy-entropy: a simulator of policy-entropy dynamics in RL for language-model-like policies."""

__version__ = "0.1.0"
