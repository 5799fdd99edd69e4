"""Sequence mode, fast checks: sequences ↔ actions, structured rewards, the model, enumeration, KL estimators,
samplers, the objective's scaling against the tabular one, checkpoints and bad input."""
import os

import numpy as np
import pytest
import torch

from spo_tabular import TabularProblem, make_problem, metrics
from spo_tabular.objectives import SPOObjective
from spo_tabular.preferences import PairData, pair_mass
from spo_tabular.transformer import (GPTConfig, StructuredRewards, TaskConfig, build_task, enumerate_policy,
                                     enumerate_sequences, kl_gradient_bias, make_model, make_structured_rewards,
                                     sequence_index, structured_task, task_from_problem, tokenwise_expectation)
from spo_tabular.transformer.exact import (enumerate_logq, kl_estimates, model_inputs, sequence_logp,
                                           token_logprobs)
from spo_tabular.transformer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from spo_tabular.transformer.data import SequenceSampler, draw_pairs
from spo_tabular.transformer.distributed import Dist
from spo_tabular.transformer.train import KL_GRADS, RunConfig, TrainConfig, step_loss

SMALL = GPTConfig(vocab_size=4, n_contexts=2, seq_len=3, n_layer=2, n_head=2, n_embd=32)
ONE_PROCESS = Dist()


def spread(model, scale):
    """Scale every weight so the model is far from uniform (the initial model is nearly uniform)."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


@pytest.fixture(scope="module")
def pair_of_models():
    """(π_θ, π_ref): two differently seeded small models, spread out, on a 2-context V=4, L=3 task."""
    return spread(make_model(SMALL, seed=1), 4.0), spread(make_model(SMALL, seed=2), 4.0)


@pytest.fixture(scope="module")
def task2():
    return build_task(TaskConfig(vocab_size=4, seq_len=3, n_contexts=2))


# --------------------------------------------------------------------------- sequences and rewards

def test_sequences_are_lexicographic_and_index_inverts_them():
    seqs = enumerate_sequences(3, 2)
    expected = [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 2]]
    assert seqs.tolist() == expected
    assert sequence_index(seqs, 3).tolist() == list(range(9))
    big = enumerate_sequences(4, 5)
    assert np.array_equal(sequence_index(big, 4), np.arange(4 ** 5))


def test_structured_reward_by_hand():
    # L = 2, V = 2: r(y) = u[0, y0] + u[1, y1] + w[0, 1, y0, y1]; entries with s >= t must not count.
    u = np.array([[[0.0, 1.0], [10.0, 20.0]]])
    w = np.zeros((1, 2, 2, 2, 2))
    w[0, 0, 1, 1, 0] = 100.0
    w[0, 1, 0, 1, 1] = 1e6         # s > t: ignored
    w[0, 1, 1, 1, 1] = 1e6         # s = t: ignored
    r = StructuredRewards(u, w)
    assert r(np.zeros(4, dtype=int), enumerate_sequences(2, 2)).tolist() == [10.0, 20.0, 111.0, 21.0]
    assert r.table().tolist() == [[10.0, 20.0, 111.0, 21.0]]


def test_structured_table_matches_row_calls():
    r = make_structured_rewards(2, 3, 4, seed=0)
    seqs = enumerate_sequences(3, 4)
    table = r.table()
    assert table.shape == (2, 81)
    assert np.allclose(table[1], r(np.ones(81, dtype=int), seqs))


def test_task_from_problem_looks_up_the_tabular_rewards():
    problem = make_problem(2, 8, seed=0, ref="dirichlet")
    task = task_from_problem(problem, 2, 3)
    seqs = enumerate_sequences(2, 3)
    assert np.array_equal(task.rewards(np.ones(8, dtype=int), seqs), problem.rewards[1])
    assert np.array_equal(task.problem().ref_policy, problem.ref_policy)
    with pytest.raises(ValueError, match="n_actions"):
        task_from_problem(problem, 3, 2)


def test_large_structured_task_is_not_enumerable():
    task = structured_task(make_structured_rewards(1, 16, 5, seed=0))
    assert task.n_sequences == 2 ** 20 and not task.enumerable
    with pytest.raises(ValueError, match="ENUM_LIMIT"):
        task.problem()


@pytest.mark.parametrize("kwargs, match", [
    ({"vocab_size": 1}, "vocab_size"), ({"ref": "zipf"}, "ref"), ({"reward_scale": -1.0}, "reward_scale"),
    ({"vocab_size": 16, "seq_len": 5, "ref": "dirichlet"}, "dirichlet"),
])
def test_bad_task_config(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_task(TaskConfig(**kwargs))


# --------------------------------------------------------------------------- model

def test_default_model_has_a_few_hundred_thousand_parameters():
    n = make_model(GPTConfig(), seed=0).n_params()
    assert 1e5 < n < 1e6


def test_same_seed_same_model_and_global_rng_untouched():
    state = torch.get_rng_state()
    a, b = make_model(SMALL, seed=3), make_model(SMALL, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(make_model(SMALL, seed=4).parameters()), next(a.parameters()))


def test_model_is_causal(pair_of_models):
    model = pair_of_models[0]
    tokens = torch.tensor([[4, 0, 1], [4, 3, 1]])       # differ only at position 1
    with torch.no_grad():
        out = model(tokens)
    assert torch.equal(out[0, 0], out[1, 0])
    assert not torch.allclose(out[0, 1], out[1, 1])


@pytest.mark.parametrize("kwargs, match", [({"n_embd": 30, "n_head": 4}, "divisible"),
                                           ({"dropout": 1.0}, "dropout"), ({"n_layer": 0}, "n_layer")])
def test_bad_model_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)


# --------------------------------------------------------------------------- enumeration

def test_prefix_enumeration_equals_scoring_every_sequence(pair_of_models, task2):
    model = pair_of_models[0]
    policy = enumerate_policy(model, task2)
    seqs = torch.as_tensor(enumerate_sequences(4, 3))
    for x in range(2):
        ctx = torch.full((64,), x)
        with torch.no_grad():
            logp = sequence_logp(token_logprobs(model, model_inputs(ctx, seqs, 4)), seqs)
        assert np.allclose(policy[x], logp.double().exp().numpy(), rtol=1e-5, atol=1e-9)
    assert np.allclose(policy.sum(1), 1.0, atol=1e-12)


def test_enumerated_policy_is_a_valid_tabular_reference(pair_of_models, task2):
    ref = enumerate_policy(pair_of_models[1], task2)
    problem = task2.problem(ref)
    assert isinstance(problem, TabularProblem) and problem.n_actions == 64


# --------------------------------------------------------------------------- KL estimators

def _fresh_samples(model, n, seed, n_contexts=2):
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 4, generator=gen, dtype=torch.float64)
    ctx = torch.arange(n) % n_contexts
    from spo_tabular.transformer.exact import sample_sequences
    return ctx, sample_sequences(model, ctx, u[:, 1:], 4)


@pytest.mark.parametrize("scale, names", [(4.0, ("tokenwise",)), (1.5, ("tokenwise", "k1", "k3"))])
def test_tokenwise_kl_matches_exact_kl_within_three_standard_errors(task2, scale, names):
    """Fresh samples y ~ π_θ: the estimators' means lie within 3 SE of KL(π_θ‖π_ref) computed by enumeration.

    k1 and k3 are checked only on the milder pair: far from π_ref, k3 = r − 1 − log r is so heavy-tailed
    that its sample SE understates its error (the token-wise estimator has no such tail).
    """
    model, ref = spread(make_model(SMALL, seed=1), scale), spread(make_model(SMALL, seed=2), scale)
    exact = metrics.kl(enumerate_policy(model, task2), enumerate_policy(ref, task2)).mean()   # ρ uniform
    ctx, seqs = _fresh_samples(model, 4000, seed=0)
    with torch.no_grad():
        tokens = model_inputs(ctx, seqs, 4)
        est = kl_estimates(token_logprobs(model, tokens), token_logprobs(ref, tokens), seqs)
    for name in names:
        values = est[name].double()
        se = values.std() / len(values) ** 0.5
        assert abs(values.mean() - exact) <= 3 * se, (name, float(values.mean()), exact, float(se))
    # The token-wise estimator averages a conditional expectation: its spread is below k1's.
    assert est["tokenwise"].std() < est["k1"].std()


def test_tokenwise_expectation_is_the_exact_kl_with_fresh_samples_only(pair_of_models, task2):
    model, ref = pair_of_models
    with torch.no_grad():
        logq, prefixes = enumerate_logq(model, 2, 4, 3)
        logq_ref, _ = enumerate_logq(ref, 2, 4, 3)
    exact = metrics.kl(enumerate_policy(model, task2), enumerate_policy(ref, task2))
    fresh = tokenwise_expectation(logq, logq_ref, logq, prefixes).double().numpy()
    stale = tokenwise_expectation(logq, logq_ref, logq_ref, prefixes).double().numpy()   # sampler = π_ref
    assert np.allclose(fresh, exact, rtol=1e-4)
    assert np.all(np.abs(stale - exact) > 1e-2)


def test_chain_gradient_is_exact_and_tokenwise_gradient_is_biased(pair_of_models, task2):
    bias = kl_gradient_bias(pair_of_models[0], pair_of_models[1], task2)
    assert bias["chain"] < 1e-4
    assert bias["tokenwise"] > 1e-2


@pytest.mark.parametrize("mode", ["chain", "tokenwise"])
def test_training_kl_terms_in_expectation(pair_of_models, task2, mode):
    """Σ_y π(y) · (the trainer's per-sample KL term): its gradient is ∇KL for 'chain', not for 'tokenwise'."""
    model, ref = pair_of_models
    seqs = torch.as_tensor(enumerate_sequences(4, 3)).repeat(2, 1)
    ctx = torch.arange(2).repeat_interleave(64)
    tokens = model_inputs(ctx, seqs, 4)
    logq = token_logprobs(model, tokens)
    with torch.no_grad():
        logq_ref = token_logprobs(ref, tokens)
    logp = sequence_logp(logq, seqs)
    logp_ref = sequence_logp(logq_ref, seqs)
    exact = 0.5 * (logp.exp() * (logp - logp_ref)).sum()                       # ρ = ½ per context
    surrogate = 0.5 * (logp.detach().exp() * KL_GRADS[mode](logq, logq_ref, seqs)).sum()
    assert torch.allclose(surrogate, exact, rtol=1e-4)                         # same value either way
    params = list(model.parameters())
    g_exact = torch.cat([g.flatten() for g in torch.autograd.grad(exact, params, retain_graph=True)])
    g_sur = torch.cat([g.flatten() for g in torch.autograd.grad(surrogate, params)])
    rel = float((g_sur - g_exact).norm() / g_exact.norm())
    assert (rel < 1e-4) if mode == "chain" else (rel > 1e-2)


# --------------------------------------------------------------------------- sampling and data

def test_autoregressive_and_table_samplers_draw_the_model_distribution(pair_of_models, task2):
    model = pair_of_models[0]
    policy = enumerate_policy(model, task2)
    n = 20000
    ctx, seqs = _fresh_samples(model, n, seed=1)
    gen = torch.Generator().manual_seed(2)
    table_seqs = SequenceSampler(model, task2, "cpu")(ctx, torch.rand(n, 3, generator=gen, dtype=torch.float64))
    for drawn in (seqs, table_seqs):
        for x in range(2):
            emp = np.bincount(sequence_index(drawn[ctx == x].numpy(), 4), minlength=64) / (n / 2)
            # E TV ≈ ½ Σ_y sqrt(2π_y/(π N)) ≤ ½ sqrt(2·64/(π N)) = 0.032 for N = 10^4 per context.
            assert 0.5 * np.abs(emp - policy[x]).sum() < 0.08


@pytest.mark.parametrize("sampler", ["ref", "uniform"])
def test_drawn_pairs_have_the_tabular_pair_mass(sampler):
    """Pairs from π_ref with ties dropped have the tabular 'ref' sampler's pair mass, BT labels included."""
    task = build_task(TaskConfig(vocab_size=2, seq_len=2, n_contexts=2, ref="dirichlet"))
    ref_model = spread(make_model(GPTConfig(vocab_size=2, n_contexts=2, seq_len=2, n_layer=1, n_head=1,
                                            n_embd=16), seed=0), 3.0)
    ref_policy = enumerate_policy(ref_model, task)
    ctx, chosen, rejected, valid = draw_pairs(task, sampler, SequenceSampler(ref_model, task, "cpu"),
                                              torch.Generator().manual_seed(0), 200_000)
    data = PairData(ctx[valid].numpy(), sequence_index(chosen[valid].numpy(), 2),
                    sequence_index(rejected[valid].numpy(), 2), 2, 4)
    W = pair_mass(task.problem(ref_policy), sampler=sampler)
    assert 0.5 * np.abs(data.pair_mass() - W).sum() < 0.01
    if sampler == "ref":
        ties = 1.0 - valid.double().mean()
        assert abs(float(ties) - float((ref_policy ** 2).sum(1).mean())) < 0.01


def test_ranks_share_the_global_batch():
    task = build_task(TaskConfig(vocab_size=3, seq_len=2, n_contexts=3))
    whole = draw_pairs(task, "uniform", None, torch.Generator().manual_seed(5), 10)
    parts = [draw_pairs(task, "uniform", None, torch.Generator().manual_seed(5), 10,
                        Dist(rank=r, world=2)) for r in (0, 1)]
    for k in range(4):
        merged = torch.empty_like(whole[k])
        merged[0::2], merged[1::2] = parts[0][k], parts[1][k]
        assert torch.equal(merged, whole[k])


def test_preference_term_is_the_tabular_objective_on_the_same_pairs(pair_of_models, task2):
    """The step loss equals −(1/α) Σ W_emp log σ(α(z_i − z_j)) with W_emp summing to 1 (SPEC §5 scaling)."""
    model, ref = pair_of_models
    alpha = 0.7
    cfg = TrainConfig(alpha=alpha, beta=0.0)
    pairs = draw_pairs(task2, "uniform", None, torch.Generator().manual_seed(1), 3000)
    loss, _, _ = step_loss(model, ref, task2, cfg, ONE_PROCESS, pairs, None)
    ctx, chosen, rejected, valid = pairs
    data = PairData(ctx[valid].numpy(), sequence_index(chosen[valid].numpy(), 4),
                    sequence_index(rejected[valid].numpy(), 4), 2, 64)
    policy = enumerate_policy(model, task2)
    obj = SPOObjective(data.pair_mass(), alpha=alpha, beta=0.0, log_ref=np.log(policy),
                       context_probs=task2.context_probs)
    assert abs(float(loss.detach()) - obj.value(torch.as_tensor(np.log(policy)))) < 1e-5


# --------------------------------------------------------------------------- configs and checkpoints

@pytest.mark.parametrize("kwargs, match", [
    ({"loss": "kto"}, "loss"), ({"loss": "dpo", "beta": 0.0}, "beta"), ({"alpha": 0.0}, "alpha"),
    ({"sampler": "zipf"}, "sampler"), ({"kl_grad": "k2"}, "kl_grad"), ({"batch_size": 0}, "batch_size"),
    ({"lr_min_ratio": 2.0}, "lr_min_ratio"), ({"weights": "mean"}, "weights"),
])
def test_bad_train_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_bad_run_config():
    with pytest.raises(ValueError, match="checkpoint"):
        RunConfig(resume=True)
    with pytest.raises(ValueError, match="device"):
        RunConfig(device="tpu")


def test_checkpoint_round_trip_is_atomic(tmp_path):
    path = tmp_path / "ck.pt"
    state = {"version": 1, "step": 3, "x": torch.arange(4)}
    save_checkpoint(str(path), state)
    assert os.listdir(tmp_path) == ["ck.pt"]                   # no temporary file left behind
    loaded = load_checkpoint(str(path))
    assert loaded["step"] == 3 and torch.equal(loaded["x"], torch.arange(4))


def test_truncated_or_corrupt_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(str(path), {"version": 1, "x": torch.zeros(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is truncated or corrupt"):
        load_checkpoint(str(path))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pt"))
