"""Sequence mode, end to end: the CPU acceptance runs, resume, torchrun (gloo), DPO and the other options, the CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from spo_tabular import TabularProblem, make_problem, solve_exact
from spo_tabular.cli import main
from spo_tabular.transformer import GPTConfig, TaskConfig, build_task, task_from_problem
from spo_tabular.transformer.train import RunConfig, TrainConfig, task_fingerprint, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = GPTConfig(n_layer=2, n_head=2, n_embd=32)                # 26k parameters: quick secondary runs
SMALL_FLAGS = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32"]
QUIET = dict(log=lambda *a: None)


def run_cli(args, capsys):
    code = main(["transformer", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def tv(p, q):
    return float(0.5 * np.abs(p - q).sum(axis=1).max())


# --------------------------------------------------------------------------- acceptance (issue 6, item 6)

@pytest.mark.slow
def test_default_command_reaches_softmax_target(capsys):
    """Default config (V=4, L=3, one context, α=1, β=0): exact TV to softmax(r/α) ≤ 0.05 within 3 minutes."""
    code, out, err = run_cli(["--json"], capsys)
    metrics = json.loads(out)
    assert code == 0
    assert metrics["config"]["task"]["vocab_size"] == 4 and metrics["config"]["task"]["seq_len"] == 3
    assert metrics["config"]["train"]["alpha"] == 1.0 and metrics["config"]["train"]["beta"] == 0.0
    assert metrics["tv_target"] <= 0.05
    assert metrics["wall_s"] < 180          # the acceptance bound itself (measured: ~20 s on 2 cores)
    assert "step " in err and " tv " in err and " kl " in err and "tok/s" in err and "eta" in err


@pytest.mark.slow
def test_beta_positive_matches_the_exact_tabular_solution():
    """β > 0: TV ≤ 0.05 to solve_exact on the same regularised problem, with the enumerated π_ref as reference."""
    task_cfg, cfg = TaskConfig(), TrainConfig(beta=0.5)
    result = train(task_cfg, None, cfg, RunConfig(log_interval=0), **QUIET)
    task = build_task(task_cfg)
    # Independent of the trainer's own reference: pairs y, y' ~ π_ref with ties dropped is the "ref" sampler.
    exact = solve_exact(TabularProblem(task.reward_table(), result.ref_policy), alpha=1.0, beta=0.5, sampler="ref")
    assert exact.converged
    assert tv(result.policy, exact.policy) <= 0.05
    assert tv(exact.policy, task.problem(result.ref_policy).target(1.0)) > 0.2     # β really moved the optimum
    assert abs(result.metrics["tv_exact"] - tv(result.policy, exact.policy)) < 1e-9


# --------------------------------------------------------------------------- resume and torchrun

RESUME_CFG = TrainConfig(beta=0.3, steps=60, kl_refresh=7, ref_steps=5, warmup=5, batch_size=256, kl_samples=256)


def test_interrupted_run_resumes_to_the_same_numbers(tmp_path):
    """Stopped at step 25 (mid refresh period) and resumed: bitwise the same policy and metrics on CPU."""
    run = dict(log_interval=0, eval_samples=256)
    whole = train(None, SMALL, RESUME_CFG, RunConfig(**run), **QUIET)
    ck = str(tmp_path / "run.pt")
    first = train(None, SMALL, RESUME_CFG, RunConfig(**run, checkpoint=ck, checkpoint_interval=10, stop_after=25),
                  **QUIET)
    assert first.metrics["step"] == 25
    resumed = train(None, SMALL, RESUME_CFG, RunConfig(**run, checkpoint=ck, checkpoint_interval=10, resume=True),
                    **QUIET)
    assert np.array_equal(whole.policy, resumed.policy)
    for key, value in whole.metrics.items():
        if key not in ("wall_s", "step_s", "tokens_per_s", "pairs_per_s"):
            assert resumed.metrics[key] == value, key
    with pytest.raises(ValueError, match=f"checkpoint {ck} was written with another configuration.*train.beta"):
        train(None, SMALL, TrainConfig(**{**RESUME_CFG.__dict__, "beta": 0.2}),
              RunConfig(**run, checkpoint=ck, resume=True), **QUIET)


@pytest.mark.slow
def test_torchrun_two_gloo_processes_agree_with_one_process(tmp_path):
    """Global batch drawn once and sharded, gradients summed: two ranks follow the one-process run.

    Tolerance 1e-5 on every exact metric: only float summation order differs (measured: ~3e-7).
    """
    flags = [*SMALL_FLAGS, "--beta", "0.3", "--steps", "60", "--kl-refresh", "7", "--ref-steps", "5", "--warmup", "5",
             "--batch-size", "256", "--kl-samples", "256", "--log-interval", "20", "--eval-samples", "256",
             "--tol", "1", "--json"]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "spo_tabular.cli", "transformer", *flags],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)
    assert two["world_size"] == 2
    assert proc.stderr.count("step     20/60") == 1                  # rank 0 logs, rank 1 stays quiet
    one = subprocess.run([sys.executable, "-m", "spo_tabular.cli", "transformer", *flags],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    one = json.loads(one.stdout)
    assert one["world_size"] == 1
    for key in ("tv_target", "tv_exact", "kl_ref", "entropy", "win_rate", "expected_reward", "kl_tokenwise_mc"):
        assert abs(two[key] - one[key]) < 1e-5, key


# --------------------------------------------------------------------------- other losses and options

def test_dpo_on_the_same_data_reaches_its_population_optimum():
    """DPO, same pair stream as SPO: π → π_ref·exp(r/β) (SPEC §6), not softmax(r/α)."""
    beta = 2.0
    result = train(None, SMALL, TrainConfig(loss="dpo", beta=beta, steps=800), RunConfig(log_interval=0), **QUIET)
    rewards = build_task(TaskConfig()).reward_table()
    logits = rewards / beta + np.log(result.ref_policy)
    oracle = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert tv(result.policy, oracle) <= 0.05
    assert result.metrics["tv_target"] > 0.1


def test_fixed_data_set_matches_solve_exact_on_the_same_data():
    result = train(None, SMALL, TrainConfig(n_pairs=5000, beta=0.5, steps=400), RunConfig(log_interval=0), **QUIET)
    assert result.metrics["exact_reference"].startswith("solve_exact")
    assert result.metrics["tv_exact"] <= 0.05


def test_confidence_weights_keep_theorem_1():
    """Symmetric μ_γ (stop-gradient) leaves the β = 0 minimiser at softmax(r/α)."""
    result = train(None, SMALL, TrainConfig(weights="confidence", gamma=1.0, steps=800), RunConfig(log_interval=0),
                   **QUIET)
    assert result.metrics["tv_target"] <= 0.05


def test_a_tabular_problem_trains_as_a_sequence_task(tmp_path):
    """make_problem's 8 actions as the 2^3 sequences, Dirichlet π_ref: β > 0 lands on solve_exact."""
    problem = make_problem(1, 8, seed=0, ref="dirichlet")
    task = task_from_problem(problem, 2, 3)
    ck = str(tmp_path / "task.pt")
    result = train(None, SMALL, TrainConfig(beta=0.5, steps=400), RunConfig(log_interval=0, checkpoint=ck), task=task,
                   **QUIET)
    exact = solve_exact(TabularProblem(problem.rewards, result.ref_policy), alpha=1.0, beta=0.5, sampler="ref")
    assert tv(result.policy, exact.policy) <= 0.05
    assert result.metrics["ref_fit_tv"] < 0.1                  # the short supervised fit follows the Dirichlet π_ref
    other = task_from_problem(make_problem(1, 8, seed=1, ref="dirichlet"), 2, 3)
    assert task_fingerprint(other) != task_fingerprint(task)
    with pytest.raises(ValueError, match="another configuration.*task.sha256"):
        train(None, SMALL, TrainConfig(beta=0.5, steps=400), RunConfig(log_interval=0, checkpoint=ck, resume=True),
              task=other, **QUIET)


def test_non_enumerable_task_trains_on_sampled_sequences():
    lines = []
    result = train(TaskConfig(vocab_size=16, seq_len=5), SMALL,
                   TrainConfig(beta=0.1, steps=3, ref_init="init", batch_size=64, kl_samples=64),
                   RunConfig(log_interval=1, eval_samples=64), log=lines.append)
    assert result.policy is None and "tv_target" not in result.metrics
    assert np.isfinite(result.metrics["kl_tokenwise_mc"])
    assert "tv n/a" in lines[-1]
    with pytest.raises(ValueError, match="ref_init='fit'"):
        train(TaskConfig(vocab_size=16, seq_len=5), SMALL, TrainConfig(steps=1), RunConfig(log_interval=0), **QUIET)


# --------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("args", [["--steps", "0"], ["--loss", "kto"], ["--device", "tpu"], ["--bogus"],
                                  ["--steps", "abc"], ["--resume"], ["--loss", "dpo"], ["--kl-grad", "k2"]])
def test_bad_arguments_exit_2_with_one_line(capsys, args):
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert err.startswith("spo-tabular: error:") and err.count("\n") == 1


def test_corrupt_checkpoint_exits_2_naming_the_file(capsys, tmp_path):
    ck = tmp_path / "broken.pt"
    ck.write_bytes(b"\x00" * 100)
    code, out, err = run_cli([*SMALL_FLAGS, "--steps", "2", "--ref-steps", "1", "--checkpoint", str(ck), "--resume"],
                             capsys)
    assert code == 2 and f"checkpoint {ck} is truncated or corrupt" in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_device_without_a_gpu_exits_2(capsys):
    code, out, err = run_cli(["--device", "cuda"], capsys)
    assert code == 2 and "cuda" in err and err.count("\n") == 1


def test_short_cli_run_prints_metrics_and_fails_a_strict_tolerance(capsys):
    code, out, err = run_cli([*SMALL_FLAGS, "--steps", "5", "--ref-steps", "2", "--log-interval", "5",
                              "--eval-samples", "64", "--tol", "1e-9"], capsys)
    assert code == 1                                              # 5 steps cannot meet TV ≤ 1e-9
    assert "step      5/5" in out and "tv_target" in out and "kl_tokenwise_bias" in out


@pytest.mark.slow
def test_benchmark_quick_runs(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_transformer.py"), "--quick",
                           "--device", "cpu", "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert rows["training"][0]["ratio"] > 1                        # deduplication pays on 64 sequences
    assert all(r["max |Δ log p|"] < 1e-4 for r in rows["enumeration"])   # prefix pass = scoring every sequence


# --------------------------------------------------------------------------- CUDA (skipped without a GPU)

@pytest.mark.cuda
@pytest.mark.parametrize("compile_", [False, True])
def test_cuda_bf16_run(compile_):
    result = train(None, SMALL, TrainConfig(beta=0.3, steps=30, ref_steps=5),
                   RunConfig(device="cuda", amp=True, compile=compile_, log_interval=0, eval_samples=256), **QUIET)
    assert result.metrics["device"] == "cuda"
    assert np.isfinite(result.metrics["tv_exact"]) and np.isfinite(result.metrics["kl_ref"])


def test_checkpoint_with_one_flipped_byte_is_refused(tmp_path):
    """The sha256 trailer catches a single changed byte (plain torch.load read most such files silently)."""
    from spo_tabular.transformer.checkpoint import CHECKPOINT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
    path = tmp_path / "c.pt"
    save_checkpoint(str(path), {"version": CHECKPOINT_VERSION, "w": torch.arange(1000, dtype=torch.float32)})
    assert load_checkpoint(str(path))["w"].sum() == sum(range(1000))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="c.pt"):
        load_checkpoint(str(path))


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_and_loses_nothing(tmp_path):
    """A real `spo-tabular transformer` process, SIGKILLed after its first checkpoints, then --resume:
    the final exact metrics equal those of an uninterrupted run of the same configuration."""
    import signal
    import time
    flags = [*SMALL_FLAGS, "--beta", "0.3", "--steps", "400", "--kl-refresh", "7", "--ref-steps", "5",
             "--warmup", "5", "--batch-size", "256", "--kl-samples", "256", "--log-interval", "0",
             "--eval-samples", "256", "--tol", "1", "--json"]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "spo_tabular.cli", "transformer", *flags]
    ck = tmp_path / "run.pt"
    proc = subprocess.Popen([*cmd, "--checkpoint", str(ck), "--checkpoint-interval", "20"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)                                   # let it get past a few more checkpoints
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert ck.exists()
    resumed = subprocess.run([*cmd, "--checkpoint", str(ck), "--checkpoint-interval", "20", "--resume"],
                             env=env, capture_output=True, text=True, timeout=300)
    whole = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and whole.returncode == 0, resumed.stderr[-1000:] + whole.stderr[-1000:]
    assert killed, "the first run finished before it could be killed: raise --steps"
    a, b = json.loads(resumed.stdout), json.loads(whole.stdout)
    assert a["step"] == b["step"] == 400
    for key in ("tv_target", "tv_exact", "kl_ref", "entropy", "win_rate", "expected_reward", "kl_tokenwise_mc"):
        assert a[key] == b[key], key


# --------------------------------------------------------------------------- row deduplication

def test_row_bucket_rounds_up_by_at_most_an_eighth_to_eight_sizes_an_octave():
    from spo_tabular.transformer.train import _row_bucket
    sizes = [_row_bucket(r) for r in range(1, 5000)]
    for r, b in zip(range(1, 5000), sizes):
        assert r <= b <= r + max(r // 8, 0) + 1 and b <= 1.125 * r + 1
    for lo in (16, 1024, 2048):                # an octave's sizes go to lo, lo + lo/8, ..., 2·lo
        assert {b for r, b in zip(range(1, 5000), sizes) if lo <= r < 2 * lo} == {lo + k * lo // 8 for k in range(9)}


@pytest.mark.parametrize("pad", [False, True])
def test_unique_rows_rebuild_every_input_row_and_padding_is_never_pointed_to(pad):
    from spo_tabular.transformer.train import _row_bucket, _unique_rows
    task = build_task(TaskConfig(vocab_size=4, seq_len=3, n_contexts=3))
    gen = torch.Generator().manual_seed(0)
    ctx = torch.randint(0, 3, (500,), generator=gen)
    seqs = torch.randint(0, 4, (500, 3), generator=gen)
    u_ctx, u_seqs, inv = _unique_rows(task, ctx, seqs, pad=pad)
    assert torch.equal(u_ctx[inv], ctx) and torch.equal(u_seqs[inv], seqs)
    distinct = len({(int(c), *map(int, s)) for c, s in zip(ctx, seqs)})
    assert int(inv.max()) == distinct - 1                      # the padding rows come after every real one
    assert u_ctx.shape[0] == (_row_bucket(distinct) if pad else distinct)
