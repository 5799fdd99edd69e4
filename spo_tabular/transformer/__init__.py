"""Sequence (small-transformer) mode: a causal transformer trained with the same losses, checked by enumeration.

SPEC §8. model.py holds the network, task.py the enumerable sequence problems, exact.py the
enumeration and KL estimators, train.py the training loop (single process or torchrun DDP).
"""
from .exact import enumerate_policy, exact_metrics, kl_estimates, kl_gradient_bias, tokenwise_expectation
from .model import GPT, GPTConfig, make_model
from .task import (ENUM_LIMIT, SequenceTask, StructuredRewards, TaskConfig, build_task, enumerate_sequences,
                   make_structured_rewards, sequence_index, structured_task, task_from_problem)

__all__ = [
    "GPT", "GPTConfig", "make_model",
    "ENUM_LIMIT", "SequenceTask", "StructuredRewards", "TaskConfig", "build_task", "enumerate_sequences",
    "make_structured_rewards", "sequence_index", "structured_task", "task_from_problem",
    "enumerate_policy", "exact_metrics", "kl_estimates", "kl_gradient_bias", "tokenwise_expectation",
]
