"""Figures: every figure draws its --quick data with labelled axes, saves deterministic PNG/PDF, and the
`spo-tabular figures` command works end to end; the figure data agree with independent computations."""
import dataclasses

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from scipy import stats
from scipy.special import softmax

from spo_tabular import figures
from spo_tabular.cli import main
from spo_tabular.experiments import figure_data
from spo_tabular.problems import make_problem

AVAILABLE = figures.available_figures()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory):
    """A figures output folder whose data/ holds every --quick data source (computed once for the module)."""
    return tmp_path_factory.mktemp("figures")


@pytest.fixture(scope="module")
def quick_data(quick_dir):
    """{figure name: draw kwargs} on --quick data, computed through the command's own loader and cache."""
    cache = quick_dir / "data"
    memo = {}

    def load(source, quick):
        if source not in memo:
            memo[source] = figures.load_data(source, quick, cache)
        return memo[source]

    return {name: figures.FIGURES[name].data(True, load) for name in AVAILABLE}


def _labels(fig):
    return [(ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) for ax in fig.axes]


# Each figure: (axis index, which, substrings that label must contain).
EXPECTED_LABELS = {
    "theorem1": [(-1, "x", ["$N$"]), (0, "y", ["TV", r"\alpha", r"\hat\pi_N"])],
    "softness": [(0, "y", ["reward", "r(y)"]), (1, "y", [r"\pi(y)"]), (2, "x", [r"\alpha", r"\beta"]),
                 (2, "y", ["entropy", r"H(\pi)"])],
    "regularization": [(0, "x", [r"\beta"]), (0, "y", ["TV", r"\pi_\beta"]), (1, "y", ["KL", r"\pi_{\mathrm{ref}}"]),
                       (2, "y", ["entropy"])],
    "collapse": [(-1, "x", ["step"]), (0, "y", ["D1", r"\pi(y)"]), (0, "title", ["DPO", r"\beta"]),
                 (1, "title", ["IPO", r"\tau"]), (2, "title", ["SPO", r"\alpha"])],
    "frontier": [(0, "x", ["KL", r"\pi_{\mathrm{ref}}"]), (0, "y", ["expected reward"]), (1, "y", ["win rate"])],
    "noise": [(0, "x", [r"\varepsilon"]), (0, "y", ["TV", r"\alpha"]), (1, "y", ["win rate"])],
    "transformer": [(0, "x", ["step"]), (0, "y", ["TV", r"\pi_\theta"]), (1, "y", ["KL", r"\pi_\theta"])],
}
LOG_AXES = {"theorem1": [(0, "x"), (0, "y")], "softness": [(2, "x")], "regularization": [(0, "x"), (1, "y")],
            "frontier": [(0, "x"), (1, "x")], "noise": [(0, "y")], "transformer": [(0, "y")]}
WIDTHS = {"theorem1": figures.SINGLE_COLUMN}


def _check_labels(name, fig):
    for index, which, parts in EXPECTED_LABELS[name]:
        ax = fig.axes[index]
        text = {"x": ax.get_xlabel, "y": ax.get_ylabel, "title": ax.get_title}[which]()
        for part in parts:
            assert part in text, f"{name}: axis {index} {which} label {text!r} lacks {part!r}"


@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_every_figure_draws_quick_data_with_labelled_log_axes_and_a_legend(name, quick_data, tmp_path):
    if name not in AVAILABLE:
        pytest.skip("spo_tabular.transformer is not installed")
    fig = figures.FIGURES[name].draw(**quick_data[name])
    _check_labels(name, fig)
    for index, axis in LOG_AXES.get(name, []):
        assert getattr(fig.axes[index], f"get_{axis}scale")() == "log", (name, index, axis)
    assert fig.legends or any(ax.get_legend() for ax in fig.axes), f"{name} has no legend"
    assert fig.get_figwidth() == pytest.approx(WIDTHS.get(name, figures.DOUBLE_COLUMN))
    png, pdf = figures.save_figure(fig, tmp_path / name)
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 5_000
    # The PNG is the figure's size at savefig.dpi (bytes 16-24 of a PNG: width, height).
    width, height = (int.from_bytes(data[i:i + 4], "big") for i in (16, 20))
    assert width == round(fig.get_figwidth() * figures.STYLE["savefig.dpi"])
    assert height == round(fig.get_figheight() * figures.STYLE["savefig.dpi"])


@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_every_line_uses_the_colour_blind_safe_palette(name, quick_data):
    if name not in AVAILABLE:
        pytest.skip("spo_tabular.transformer is not installed")
    fig = figures.FIGURES[name].draw(**quick_data[name])
    allowed = {c.lower() for c in figures.OKABE_ITO.values()} | {figures.GREY.lower(), "#000000"}
    colours = {to_hex(line.get_color()).lower() for ax in fig.axes for line in ax.get_lines()}
    assert colours and colours <= allowed, colours - allowed


def test_same_data_give_byte_identical_png_and_pdf_whatever_the_callers_rcparams(quick_data, tmp_path):
    first = figures.save_figure(figures.theorem1(**quick_data["theorem1"]), tmp_path / "a")
    with matplotlib.rc_context({"lines.linewidth": 4.0, "font.size": 15, "axes.prop_cycle": matplotlib.cycler(
            color=["red", "green"])}):
        second = figures.save_figure(figures.theorem1(**quick_data["theorem1"]), tmp_path / "b")
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.suffix
    again = figures.save_figure(figures.collapse(**quick_data["collapse"]), tmp_path / "c", formats=("png",))
    once_more = figures.save_figure(figures.collapse(**quick_data["collapse"]), tmp_path / "d", formats=("png",))
    assert again[0].read_bytes() == once_more[0].read_bytes()


def test_save_figure_replaces_atomically_and_rejects_unknown_formats(quick_data, tmp_path):
    fig = figures.regularization(**quick_data["regularization"])
    (tmp_path / "r.png").write_bytes(b"old")
    figures.save_figure(fig, tmp_path / "r", formats=("png",))
    assert (tmp_path / "r.png").read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.png"]          # no temporary file left behind
    with pytest.raises(ValueError, match="formats"):
        figures.save_figure(fig, tmp_path / "r", formats=("gif",))


def test_figure_functions_name_what_is_wrong_with_their_input(quick_data):
    df = quick_data["noise"]["df"]
    with pytest.raises(ValueError, match="win_rate_vs_ref"):
        figures.noise(df.drop(columns=["win_rate_vs_ref"]))
    with pytest.raises(ValueError, match="empty"):
        figures.noise(df.iloc[:0])
    with pytest.raises(TypeError, match="DataFrame"):
        figures.theorem1(df.to_dict())
    with pytest.raises(ValueError, match="floor"):
        figures.theorem1(quick_data["theorem1"]["df"], floor=quick_data["collapse"]["df"])


def test_transformer_figure_draws_the_documented_frame_without_the_transformer_module():
    rng = np.random.default_rng(0)
    steps = np.arange(20, 220, 20)
    df = pd.DataFrame([{"step": s, "seed_index": k, "tv_to_target": 0.2 / np.sqrt(s) + 0.01 * rng.random(),
                        "kl_exact": 0.1 * (1 - np.exp(-s / 50)), "kl_tokenwise": 0.1 * (1 - np.exp(-s / 50)) + 0.002,
                        "loss": "spo", "alpha": 1.0, "beta": 0.5} for s in steps for k in range(3)])
    fig = figures.transformer(df)
    _check_labels("transformer", fig)
    assert len(fig.axes[1].get_lines()) == 2                  # exact KL and the token-wise estimate
    assert fig.axes[1].get_ylim()[0] == 0.0


def test_mean_ci_is_the_student_t_interval_of_the_mean():
    df = pd.DataFrame({"g": [0, 0, 0, 1, 1], "y": [1.0, 2.0, 3.0, 5.0, np.nan]})
    s = figures._mean_ci(df, "g", "y").set_index("g")
    half = stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)          # sample sd of (1, 2, 3) is 1
    assert s.loc[0, "mean"] == 2.0 and s.loc[0, "low"] == pytest.approx(2 - half)
    assert s.loc[0, "high"] == pytest.approx(2 + half) and s.loc[0, "n"] == 3
    assert s.loc[1, "mean"] == 5.0 and np.isnan(s.loc[1, "low"])   # one run: no interval


# --------------------------------------------------------------------------- the data of the figures

def test_softness_closed_forms_are_softmax_r_over_alpha_and_ref_times_exp_r_over_beta(quick_data):
    df = quick_data["softness"]["df"]
    s = figure_data.SOFTNESS_QUICK
    problem = make_problem(1, s.n_actions, seed=s.problem_seed, reward_scale=s.reward_scale, ref=s.ref)
    r, ref = problem.rewards[0], problem.ref_policy[0]
    for (method, param), g in df[df["seed_index"] == 0].groupby(["method", "param"]):
        g = g.sort_values("action")
        expected = softmax(r / param) if method == "spo" else ref * np.exp(r / param) / (ref * np.exp(r / param)).sum()
        np.testing.assert_allclose(g["closed_form"], expected, rtol=1e-12)
        assert g["closed_form_entropy"].iloc[0] == pytest.approx(-(expected * np.log(expected)).sum(), rel=1e-12)
    # The learned policy on 5,000 pairs is near its closed form, and entropy grows with α (or β).
    assert (df["probability"] - df["closed_form"]).abs().max() < 0.1
    spo = df[df["method"] == "spo"].groupby("param")["closed_form_entropy"].first()
    assert np.all(np.diff(spo.to_numpy()) > 0)


def test_frontier_dpo_and_rlhf_coincide_and_spo_alpha_rows_are_softmax(quick_data):
    df = quick_data["frontier"]["df"]
    dpo = df[df["method"] == "dpo"].set_index("param")
    rlhf = df[df["method"] == "rlhf"].set_index("param")
    for col in ("kl_to_ref", "expected_reward", "win_rate_vs_ref"):
        np.testing.assert_allclose(dpo[col], rlhf[col], rtol=1e-9, atol=1e-12)
    s = figure_data.FRONTIER_QUICK
    problem = make_problem(s.n_contexts, s.n_actions, seed=s.problem_seed, reward_scale=s.reward_scale, ref=s.ref)
    for _, row in df[df["method"] == "spo_alpha"].iterrows():
        pi = softmax(problem.rewards / row["param"], axis=1)
        assert row["expected_reward"] == pytest.approx((pi * problem.rewards).sum(axis=1).mean(), rel=1e-9)
        kl = (pi * np.log(pi / problem.ref_policy)).sum(axis=1).mean()
        assert row["kl_to_ref"] == pytest.approx(kl, rel=1e-8)
    # Large β / τ: back at π_ref (KL → 0, win rate → 1/2).
    for method in ("dpo", "ipo", "spo_beta"):
        last = df[df["method"] == method].sort_values("param").iloc[-1]
        assert last["kl_to_ref"] < 1e-2 and abs(last["win_rate_vs_ref"] - 0.5) < 0.02


def test_theorem1_floor_is_the_exact_population_solution(quick_data):
    floor = quick_data["theorem1"]["floor"]
    assert (floor["status"] == "converged").all() and floor["max_tv_to_target"].max() < 1e-12


def test_transformer_curves_need_the_transformer_module(monkeypatch):
    monkeypatch.setattr(figure_data, "transformer_available", lambda: False)
    with pytest.raises(ImportError, match="spo_tabular.transformer"):
        figure_data.run_transformer_curves(quick=True)


# --------------------------------------------------------------------------- the command

@pytest.mark.slow
def test_cli_figures_quick_writes_every_png_and_pdf(quick_dir, quick_data, capsys):
    assert main(["figures", "--quick", "--out", str(quick_dir)]) == 0
    out = capsys.readouterr().out
    for name in AVAILABLE:
        assert (quick_dir / f"{name}.png").read_bytes().startswith(PNG_MAGIC)
        assert (quick_dir / f"{name}.pdf").stat().st_size > 0
        assert name in out
    assert "total" in out
    assert {"scaling-quick.csv", "softness-quick.csv"} <= {p.name for p in (quick_dir / "data").iterdir()}


def test_cli_figures_only_and_formats(quick_dir, quick_data, capsys):
    assert main(["figures", "--quick", "--out", str(quick_dir / "only"), "--only", "frontier", "regularization",
                 "--formats", "png"]) == 0
    written = sorted(p.name for p in (quick_dir / "only").iterdir() if p.is_file())
    assert written == ["frontier.png", "regularization.png"]


@pytest.mark.parametrize("argv", [["--only", "nosuch"], ["--formats", "gif"], ["--jobs", "0"], ["--bogus"],
                                  ["--only"]])
def test_cli_figures_exits_2_on_bad_arguments(argv, tmp_path, capsys):
    assert main(["figures", "--quick", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spo-tabular: error:")


def test_without_the_transformer_module_the_figure_is_left_out_and_refused(monkeypatch, tmp_path, capsys):
    spec = figures.FIGURES["transformer"]
    monkeypatch.setitem(figures.FIGURES, "transformer", dataclasses.replace(spec, available=lambda: False))
    assert "transformer" not in figures.available_figures()
    assert main(["figures", "--quick", "--out", str(tmp_path), "--only", "transformer"]) == 2
    assert "spo_tabular.transformer" in capsys.readouterr().err
