"""Registration of every toy-entropy environment id with Gymnasium."""

from __future__ import annotations

import gymnasium

NAMESPACE = "ToyEntropy"


def _register(name: str, entry_point: str, vector_entry_point: str, **kwargs) -> None:
    env_id = f"{NAMESPACE}/{name}"
    if env_id in gymnasium.registry:
        return
    gymnasium.register(
        id=env_id, entry_point=entry_point, vector_entry_point=vector_entry_point, **kwargs
    )


def register_all() -> None:
    """Register the bandit and sequence-generation ids (idempotent)."""
    _register(
        "Bandit-v0",
        entry_point="toy_entropy.envs.bandit:BanditEnv",
        vector_entry_point="toy_entropy.envs.bandit_vector:BanditVectorEnv",
    )
    _register(
        "ContextualBandit-v0",
        entry_point="toy_entropy.envs.bandit:ContextualBanditEnv",
        vector_entry_point="toy_entropy.envs.bandit_vector:ContextualBanditVectorEnv",
    )
    from toy_entropy.envs.sequence import register_sequence_envs

    register_sequence_envs(_register)


def registered_ids() -> list[str]:
    """Every id registered under the toy-entropy namespace, sorted."""
    return sorted(env_id for env_id in gymnasium.registry if env_id.startswith(NAMESPACE + "/"))
