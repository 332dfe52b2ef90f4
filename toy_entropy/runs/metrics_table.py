"""The one table of every metric a run logs: key, TensorBoard tag, unit, meaning, producer.

The metrics glossary (``docs/metrics.md``, written by ``python -m toy_entropy.runs.metrics_table``)
is generated from it, and a test checks that every key a short run logs is in it. A key without a
slash (``entropy``) is a headline value, stored under that name in metrics.jsonl and under
``charts/<key>`` in TensorBoard; a key with a slash is stored as it is in both
(``toy_entropy.runs.runlog``). Keys written with ``<...>`` stand for a family
(``cov/top_<q>%_mean``).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

__all__ = ["Metric", "METRICS", "find_metric", "tensorboard_tag", "glossary_markdown"]


@dataclass(frozen=True)
class Metric:
    """One logged quantity.

    Attributes:
        key: the metrics.jsonl key (``<...>`` marks a variable part).
        unit: its unit (``nats``, ``tokens``, ``fraction``, ...).
        meaning: what it measures, in one sentence.
        producer: the module or experiment that logs it.
        kind: ``scalar`` (metrics.jsonl and TensorBoard), ``histogram``, ``image`` or ``text``
            (TensorBoard only).
    """

    key: str
    unit: str
    meaning: str
    producer: str
    kind: str = "scalar"

    @property
    def pattern(self) -> re.Pattern:
        parts = re.split(r"<[^>]+>", self.key)
        return re.compile("^" + "[^/]+".join(re.escape(part) for part in parts) + "$")


def tensorboard_tag(key: str) -> str:
    """The TensorBoard tag of metrics.jsonl key ``key``."""
    return key if "/" in key else f"charts/{key}"


TRAINER = "toy_entropy.training.trainer"
LOSSES = "toy_entropy.algorithms.losses"
METRICS: tuple[Metric, ...] = (
    Metric(
        "entropy",
        "nats",
        "H(pi, D) of the rollout, the paper's definition: per response the "
        "mean full-distribution entropy of its positions, then the mean over responses",
        TRAINER,
    ),
    Metric("reward", "reward", "mean verifier reward of the rollout (training prompts)", TRAINER),
    Metric(
        "entropy/token_mean", "nats", "the token-mean variant: all valid positions pooled", TRAINER
    ),
    Metric(
        "entropy/sampled_neg_log_prob",
        "nats",
        "the cheap estimate: mean -log pi of the sampled tokens",
        TRAINER,
    ),
    Metric(
        "entropy/per_state",
        "nats",
        "full-distribution entropy of every response position of the rollout",
        TRAINER,
        "histogram",
    ),
    Metric("rollout/response_length", "tokens", "mean response length, EOS included", TRAINER),
    Metric(
        "rollout/solved_groups",
        "fraction",
        "share of prompts with at least one correct response",
        TRAINER,
    ),
    Metric(
        "cov/mean",
        "nats x advantage",
        "mean token covariance (lp - mean lp)(A - mean A) over the optimisation batch",
        LOSSES,
    ),
    Metric("cov/pos_frac", "fraction", "share of tokens with a positive covariance", LOSSES),
    Metric(
        "cov/top_<q>%_mean",
        "nats x advantage",
        "mean covariance of the top q% of tokens (the paper's Table 1 fractions)",
        LOSSES,
    ),
    Metric(
        "cov/top_<q>%_share",
        "fraction",
        "share of the summed positive covariance held by the top q% of tokens (NaN when no "
        "covariance is positive)",
        LOSSES,
    ),
    Metric(
        "cov/tail_ratio",
        "ratio",
        "top-0.02% mean covariance / overall mean (the paper's Table 1: 5.654 / 0.003 = 1885)",
        LOSSES,
    ),
    Metric("cov/valid_tokens", "tokens", "valid tokens of the optimisation batch (N)", LOSSES),
    Metric(
        "cov/clip_higher_admitted_mean",
        "nats x advantage",
        "mean covariance of the tokens "
        "clip-higher admits beyond the symmetric clip (NaN-free mean over the updates)",
        LOSSES,
    ),
    Metric(
        "cov/clip_higher_admitted_frac",
        "fraction",
        "share of tokens clip-higher admits beyond the symmetric clip",
        LOSSES,
    ),
    Metric(
        "covariance/token_covariance",
        "nats x advantage",
        "the rollout's token covariances",
        TRAINER,
        "histogram",
    ),
    Metric(
        "select/frac",
        "fraction",
        "share of valid tokens Clip-Cov removes / KL-Cov penalises",
        LOSSES,
    ),
    Metric(
        "select/candidate_frac",
        "fraction",
        "share of valid tokens inside Clip-Cov's covariance band (candidates)",
        LOSSES,
    ),
    Metric("ratio/clipfrac_low", "fraction", "share of tokens clipped below 1 - eps_low", LOSSES),
    Metric("ratio/clipfrac_high", "fraction", "share of tokens clipped above 1 + eps_high", LOSSES),
    Metric("ratio/clipfrac_dual", "fraction", "share of tokens the dual clip bounds", LOSSES),
    Metric(
        "kl/rollout_k1", "nats", "k1 estimate of KL(pi_old || pi) to the rollout policy", LOSSES
    ),
    Metric(
        "kl/rollout_k3", "nats", "k3 estimate of KL(pi_old || pi) to the rollout policy", LOSSES
    ),
    Metric(
        "kl/reference_k3",
        "nats",
        "k3 estimate of the KL to the frozen warm-started reference, when kl_loss_coef > 0",
        TRAINER,
    ),
    Metric("loss/policy", "loss", "the policy loss, aggregated as loss_agg_mode says", LOSSES),
    Metric(
        "loss/entropy", "nats", "the aggregated entropy term (bonus when entropy_coeff > 0)", LOSSES
    ),
    Metric(
        "loss/entropy_coef",
        "coefficient",
        "the adaptive entropy-bonus coefficient of the update (use_adaptive_entropy)",
        TRAINER,
    ),
    Metric("loss/kl_ref", "nats", "the aggregated KL-to-reference term", LOSSES),
    Metric("loss/total", "loss", "the optimised loss", LOSSES),
    Metric("optim/grad_norm", "gradient norm", "gradient norm before clipping", TRAINER),
    Metric(
        "identity/actual_dH",
        "nats",
        "exact change of the probe states' entropy caused by this step's optimiser updates",
        TRAINER,
    ),
    Metric(
        "identity/predicted_dH",
        "nats",
        "first-order prediction of it: token-mean of "
        "-Cov_{a~pi}(log pi, dz) over the probe states, dz the measured logit change",
        TRAINER,
    ),
    Metric(
        "identity/scatter_actual_vs_predicted",
        "nats",
        "one point per optimiser step; the dashed line is y = x",
        "training_runs.py",
        "image",
    ),
    Metric("eval/greedy_accuracy", "fraction", "held-out prompts, argmax decoding", TRAINER),
    Metric(
        "eval/mean_at_<k>",
        "fraction",
        "held-out prompts, k samples at the rollout temperature: mean accuracy",
        TRAINER,
    ),
    Metric(
        "eval/pass_at_<k>", "fraction", "held-out prompts: unbiased pass@k from k samples", TRAINER
    ),
    Metric(
        "filter/empty_updates",
        "updates",
        "mini-batches left without a valid token by the all-equal group filter (skipped)",
        TRAINER,
    ),
    Metric(
        "guard/nonfinite",
        "flag",
        "1 when a metric, the loss or a gradient of the step was "
        "NaN or inf (the step was rolled back)",
        TRAINER,
    ),
    Metric(
        "guard/state_nonfinite",
        "flag",
        "1 when the state the step started from gave non-finite outputs",
        TRAINER,
    ),
    Metric("guard/skipped_updates", "steps", "roll-backs so far", TRAINER),
    Metric(
        "perf/rollout_tokens_per_s", "tokens/s", "sampling throughput (TensorBoard only)", TRAINER
    ),
    Metric(
        "perf/update_tokens_per_s",
        "tokens/s",
        "optimiser-step throughput (TensorBoard only)",
        TRAINER,
    ),
    Metric("config", "-", "the resolved config", "toy_entropy.runs.runlog", "text"),
    # bandits
    Metric("entropy/band_low", "nats", "seed mean - std of the sampled runs", "bandit-collapse"),
    Metric("entropy/band_high", "nats", "seed mean + std of the sampled runs", "bandit-collapse"),
    Metric(
        "identity/relative_error",
        "fraction",
        "|actual - predicted| / |actual| of one bandit update",
        "bandit-identity",
    ),
    Metric(
        "identity/log10_eta", "log10 step", "the step size of the bandit update", "bandit-identity"
    ),
    # hooks and probes of the named runs
    Metric(
        "cov_by_accuracy/<bucket>",
        "nats x advantage",
        "mean token covariance of the prompt "
        "groups whose accuracy is in the bucket (hard, medium, easy)",
        "collapse",
    ),
    Metric("cov_by_accuracy/<bucket>_groups", "groups", "prompt groups in the bucket", "collapse"),
    Metric(
        "granularity/neg_sequence_cov",
        "nats x advantage",
        "minus the per-prompt covariance "
        "of length-normalised log-prob and advantage over the G responses",
        "identity",
    ),
    Metric(
        "granularity/neg_token_cov",
        "nats x advantage",
        "minus the batch token covariance cov/mean",
        "identity",
    ),
    Metric(
        "identity/per_state_dH",
        "nats",
        "the per-state part of the prefix policy's exact entropy change",
        "identity",
    ),
    Metric(
        "identity/distribution_shift_dH", "nats", "the state-distribution part of it", "identity"
    ),
    Metric(
        "clip_higher/admitted_cov_mean",
        "nats x advantage",
        "mean covariance of the tokens clip-higher admits beyond the symmetric clip",
        "clip-higher-cov",
    ),
    Metric("clip_higher/admitted_frac", "fraction", "share of tokens it admits", "clip-higher-cov"),
    Metric("clip_higher/admitted_count", "tokens", "tokens it admits", "clip-higher-cov"),
    Metric(
        "clip_higher/cov_mean",
        "nats x advantage",
        "mean covariance of all tokens",
        "clip-higher-cov",
    ),
    Metric(
        "control/<knob>", "-", "the entropy controller's knob after its update", "entropy-targets"
    ),
    Metric("control/target", "nats", "the controller's target entropy", "entropy-targets"),
    Metric("control/error", "fraction", "(target - entropy) / target", "entropy-targets"),
    Metric(
        "anatomy/<what>",
        "as named",
        "which tokens hold the covariance tail of the fork task at each step: shares of the "
        "top 0.2% that are distractors / forks, their mean log-prob and advantage, the share "
        "of the summed covariance at fork and distractor tokens",
        "cure",
    ),
    Metric(
        "exact/removed",
        "fraction",
        "token weight whose policy gradient the selection removes in this exact expected "
        "update (0 at the last step)",
        "questions",
    ),
    Metric(
        "exact/cov_mean",
        "nats x advantage",
        "mean token covariance of the exact token batch (the infinite-batch limit)",
        "questions",
    ),
    Metric(
        "exact/optimum_distance",
        "nats",
        "KL(pi* || pi) = -mean over prompts of log P(correct response): distance to the "
        "unregularised optimum of the exact prefix policy",
        "questions",
    ),
    Metric(
        "select/entropy_kept_frac",
        "fraction",
        "share of the valid tokens top_entropy_quantile leaves a policy gradient",
        LOSSES,
    ),
    Metric(
        "select/entropy_threshold",
        "nats",
        "the lowest entropy among the tokens top_entropy_quantile keeps",
        LOSSES,
    ),
    Metric(
        "clip_asymmetry/dH_low<eps_low>_high<eps_high>",
        "nats",
        "expected exact entropy change after <step> updates of one rollout under random "
        "rewards, at the KL-matched learning rate (off: that side unclipped)",
        "clip-asymmetry",
    ),
    Metric(
        "exact/pass_at_<k>",
        "fraction",
        "exact pass@k of the prefix policy: mean over prompts of 1 - (1 - p_correct)^k",
        "sample-polarity",
    ),
    Metric(
        "predictors/<predictor>_correlation",
        "correlation",
        "correlation over tokens of a per-token predictor with the exact entropy change "
        "(step 1: on-policy update, later: off-policy update of the rollout)",
        "predictors",
    ),
    Metric(
        "band/<metric>_low",
        "as the metric",
        "seed mean - std, in <variant>/seeds-mean runs",
        "sweeps.py",
    ),
    Metric(
        "band/<metric>_high",
        "as the metric",
        "seed mean + std, in <variant>/seeds-mean runs",
        "sweeps.py",
    ),
)


def find_metric(key: str) -> Metric | None:
    """The table's entry for metrics.jsonl key ``key`` (a family entry matches), or None."""
    for metric in METRICS:
        if metric.key == key or metric.pattern.match(key):
            return metric
    return None


def glossary_markdown() -> str:
    """The metrics glossary page (docs/metrics.md), generated from :data:`METRICS`."""
    lines = [
        "# Metrics glossary",
        "",
        "Generated from `toy_entropy/runs/metrics_table.py` by "
        "`python -m toy_entropy.runs.metrics_table > docs/metrics.md`; do not edit by hand.",
        "",
        "A key without a slash is stored as such in metrics.jsonl and under `charts/` in "
        "TensorBoard; a key with a slash is stored as it is. `perf/...` values go to "
        "TensorBoard only, so that metrics.jsonl is identical for the same config and seed.",
        "",
        "| key (metrics.jsonl) | TensorBoard | unit | meaning | logged by |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in METRICS:
        where = tensorboard_tag(m.key) if m.kind == "scalar" else m.kind
        lines.append(f"| `{m.key}` | `{where}` | {m.unit} | {m.meaning} | {m.producer} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(glossary_markdown())
