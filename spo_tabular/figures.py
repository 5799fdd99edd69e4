"""Paper-style figures: one function per figure drawing a tidy DataFrame into a matplotlib Figure.

The data come from `spo_tabular.experiments` (the finite-data experiments and experiments/figure_data.py);
nothing here computes a policy. `save_figure` writes PNG and PDF atomically with fixed style and
metadata, so the same data give the same bytes; `make_figures` (`spo-tabular figures`) caches the
data under OUT/data and redraws every figure. Conventions and captions: docs/figures.md.
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from cycler import cycler
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from . import _validation as v
from .experiments import collapse as collapse_experiment
from .experiments import figure_data
from .experiments import scaling as scaling_experiment
from .experiments._common import mean_interval

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
OKABE_ITO = {"blue": "#0072B2", "vermillion": "#D55E00", "green": "#009E73", "orange": "#E69F00",
             "purple": "#CC79A7", "sky": "#56B4E9", "black": "#000000", "yellow": "#F0E442"}
COLORS = tuple(OKABE_ITO[k] for k in ("blue", "vermillion", "green", "orange", "purple", "sky", "black"))
GREY = "#7F7F7F"

SINGLE_COLUMN = 3.35     # inches: 85 mm, a one-column figure
DOUBLE_COLUMN = 6.9      # inches: 175 mm, a figure across both columns

# Every rcParam a figure depends on, fixed here so the output does not depend on the user's matplotlibrc.
STYLE = {
    "font.family": "DejaVu Sans", "mathtext.fontset": "dejavusans", "font.size": 8,
    "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "axes.prop_cycle": cycler(color=COLORS), "axes.linewidth": 0.6, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.linewidth": 0.4, "grid.alpha": 0.35,
    "axes.axisbelow": True, "axes.titlelocation": "left", "axes.formatter.use_mathtext": True,
    "lines.linewidth": 1.2, "lines.markersize": 3.5, "errorbar.capsize": 1.5,
    "legend.frameon": False, "legend.handlelength": 1.8, "legend.borderaxespad": 0.3,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.minor.width": 0.4, "ytick.minor.width": 0.4,
    "figure.dpi": 100, "savefig.dpi": 200, "savefig.format": "png", "savefig.bbox": None,
    "figure.constrained_layout.h_pad": 0.04, "figure.constrained_layout.w_pad": 0.04,
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "path", "svg.hashsalt": "spo_tabular",
    "path.simplify": True, "image.cmap": "cividis",
}
# Dropping the creator, producer and date keeps the bytes independent of the run's time and versions.
METADATA = {"png": {"Software": None},
            "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
            "svg": {"Creator": None, "Date": None}}
BAND_ALPHA = 0.2         # opacity of the 95% interval bands


def styled(fn):
    """Run a figure function under STYLE (rcParams are read when artists are created)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


def save_figure(fig: Figure, path, formats=("png", "pdf")) -> list[Path]:
    """Write fig to path with each suffix in formats (temp file + os.replace); returns the paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        v.choice("formats", fmt, METADATA)
        target = path.with_suffix("." + fmt)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with matplotlib.rc_context(STYLE):
                fig.savefig(tmp, format=fmt, metadata=METADATA[fmt])
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        written.append(target)
    return written


# --------------------------------------------------------------------------- helpers

def _require(df, columns, name: str) -> pd.DataFrame:
    """df itself after checking it is a non-empty DataFrame holding `columns` (ValueError naming the missing ones)."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks the column(s) {missing}; expected at least {list(columns)}")
    if df.empty:
        raise ValueError(f"{name} is empty")
    return df


def _mean_ci(df: pd.DataFrame, by, column: str) -> pd.DataFrame:
    """Mean and Student-t 95% interval over the rows (seeds) of each group: columns by + mean, low, high, n."""
    by = [by] if isinstance(by, str) else list(by)
    rows = [(*(key if isinstance(key, tuple) else (key,)), *mean_interval(g[column]), int(g[column].notna().sum()))
            for key, g in df.groupby(by, sort=True)]
    return pd.DataFrame(rows, columns=[*by, "mean", "low", "high", "n"])


def _band(ax, s: pd.DataFrame, x: str, *, color, label=None, marker="o", linestyle="-", positive=False, **kw):
    """Plot the mean of s against s[x] with its 95% band; positive=True clips the band to > 0 for log axes."""
    s = s[np.isfinite(s["mean"])]
    xs, mean, low, high = (s[c].to_numpy(dtype=float) for c in (x, "mean", "low", "high"))
    line, = ax.plot(xs, mean, color=color, marker=marker, linestyle=linestyle, label=label, **kw)
    ok = np.isfinite(low) & np.isfinite(high)
    if positive and np.any(mean > 0):   # a t-interval may reach below 0, which a log axis cannot show
        low = np.where(low > 0, low, mean[mean > 0].min() / 10)
    if ok.any():
        ax.fill_between(xs[ok], low[ok], high[ok], color=color, alpha=BAND_ALPHA, linewidth=0)
    return line


def _proxy(color=GREY, marker="o", linestyle="-", **kw) -> Line2D:
    """A legend handle for a style shared by several lines."""
    return Line2D([], [], color=color, marker=marker, linestyle=linestyle, **kw)


def _log(ax, which: str = "x"):
    """Log scale on `which` ("x", "y" or "xy"), called once the data are drawn: over fewer than 2.5 decades the
    ticks are 1, 2, 5 × 10^k in plain numbers (powers of ten alone would leave one or two labels); minor
    ticks carry no labels (they collide)."""
    for name in which:
        axis = getattr(ax, f"{name}axis")
        getattr(ax, f"set_{name}scale")("log")
        low, high = getattr(ax, f"get_{name}lim")()
        if high / low < 10 ** 2.5:
            axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _panel_title(ax, letter: str, text: str = ""):
    ax.set_title(f"({letter}) {text}".rstrip(), loc="left")


def _fmt(x: float) -> str:
    return f"{x:g}"


# --------------------------------------------------------------------------- theorem1

THEOREM1_COLUMNS = ("n_pairs", "alpha", "exact_max_tv_to_target", "sgd_max_tv_to_target")
FLOOR_COLUMNS = ("alpha", "max_tv_to_target")


@styled
def theorem1(df: pd.DataFrame, floor: pd.DataFrame | None = None) -> Figure:
    """max TV(π̂_N, softmax(r/α)) against N (log-log), one line per α (mean, 95% band over seeds), SGD as
    crosses, an N^(−1/2) guide; `floor` (columns alpha, max_tv_to_target: the exact population solve)
    is drawn in a lower panel of a broken axis. df: the `scaling` experiment."""
    _require(df, THEOREM1_COLUMNS, "df")
    if floor is not None:
        _require(floor, FLOOR_COLUMNS, "floor")
    fig = Figure(figsize=(SINGLE_COLUMN, 3.1 if floor is not None else 2.7), layout="constrained")
    if floor is None:
        ax, ax_floor = fig.subplots(), None
    else:
        ax, ax_floor = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [5, 1], "hspace": 0.02})
    slopes = scaling_experiment.summarize(df)["slope_exact_by_alpha"]
    alphas = sorted(df["alpha"].unique())
    for i, alpha in enumerate(alphas):
        d = df[df["alpha"] == alpha]
        color = COLORS[i % len(COLORS)]
        _band(ax, _mean_ci(d, "n_pairs", "exact_max_tv_to_target"), "n_pairs", color=color, positive=True,
              label=rf"$\alpha = {_fmt(alpha)}$ (slope ${slopes[f'{alpha:g}']:+.2f}$)")
        sgd = _mean_ci(d, "n_pairs", "sgd_max_tv_to_target")
        ax.plot(sgd["n_pairs"], sgd["mean"], color=color, marker="x", linestyle="none", markersize=4.5)
    means = df.groupby(["alpha", "n_pairs"])["exact_max_tv_to_target"].mean().dropna()
    if len(means):
        n = np.array(sorted(df["n_pairs"].unique()), dtype=float)
        # The guide passes through the geometric mean of the curves at the smallest N: C·N^(−1/2).
        first = means.xs(n[0], level="n_pairs")
        c = float(np.exp(np.log(first[first > 0]).mean())) * np.sqrt(n[0])
        ax.plot(n, c / np.sqrt(n), color=OKABE_ITO["black"], linestyle=":", linewidth=1.0)
    _log(ax, "xy")
    ax.set_ylabel(r"max$_x$ TV$(\hat\pi_N,\ \mathrm{softmax}(r/\alpha))$")
    handles, labels = ax.get_legend_handles_labels()
    handles += [_proxy(marker="o"), _proxy(marker="x", linestyle="none", markersize=4.5),
                _proxy(color=OKABE_ITO["black"], marker=None, linestyle=":")]
    labels += ["exact solver (mean, 95% band)", "SGD (mean)", r"$\propto N^{-1/2}$"]
    ax.legend(handles, labels, loc="lower left", fontsize=6.5)
    bottom = ax_floor if ax_floor is not None else ax
    bottom.set_xlabel(r"$N$ (preference pairs)")
    if ax_floor is not None:
        values = floor.groupby("alpha")["max_tv_to_target"].max()
        tiny = 1e-16                  # zero cannot sit on a log axis: exact zeros are drawn at 1e-16
        shown = values.clip(lower=tiny)
        for i, alpha in enumerate(alphas):
            if alpha in shown.index:
                ax_floor.axhline(shown[alpha], color=COLORS[i % len(COLORS)], linestyle="--", linewidth=1.0)
        ax_floor.set_yscale("log")
        decade = np.floor(np.log10(shown.min()))
        ax_floor.set_ylim(10 ** (decade - 0.5), 10 ** (np.log10(shown.max()) + 1.7))
        ax_floor.yaxis.set_major_locator(matplotlib.ticker.FixedLocator([10 ** decade, 10 ** (decade + 1)]))
        ax_floor.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        worst = float(values.max())
        text = f"max TV = 0 (drawn at $10^{{-16}}$)" if worst == 0 else f"max TV ≤ {worst:.1e}" + (
            " (zeros drawn at $10^{-16}$)" if (values == 0).any() else "")
        ax_floor.text(0.98, 0.93, f"$N=\\infty$, exact population solve:\n{text}", fontsize=6.5, linespacing=1.1,
                      transform=ax_floor.transAxes, va="top", ha="right")
        # Broken-axis marks between the panels (the y-axis jumps from the data down to the floor).
        ax.spines["bottom"].set_visible(False)
        ax.tick_params(axis="x", which="both", bottom=False)
        ax_floor.spines["top"].set_visible(False)
        mark = {"marker": [(-1, -0.5), (1, 0.5)], "markersize": 6, "linestyle": "none", "color": "k",
                "mec": "k", "mew": 0.6, "clip_on": False}
        ax.plot([0], [0], transform=ax.transAxes, **mark)
        ax_floor.plot([0], [1], transform=ax_floor.transAxes, **mark)
    return fig


# --------------------------------------------------------------------------- softness

SOFTNESS_COLUMNS = ("method", "param", "action", "reward", "ref_prob", "probability", "closed_form", "entropy",
                    "closed_form_entropy", "seed_index")


@styled
def softness(df: pd.DataFrame, alphas=(0.25, 1.0, 4.0)) -> Figure:
    """(a) the reward r(y); (b) learned π(y) (markers, mean and 95% interval over data sets) against the closed
    form softmax(r/α) (lines) for a few α; (c) entropy of the learned π against α (SPO, β = 0) and β (DPO),
    with the closed forms H(softmax(r/α)) and H(π_ref·exp(r/β)/Z). df: figure_data.run_softness."""
    _require(df, SOFTNESS_COLUMNS, "df")
    actions = df.drop_duplicates("action").sort_values("reward", ascending=False)
    order = {a: k for k, a in enumerate(actions["action"])}           # actions drawn by decreasing reward
    rank = np.arange(len(order))
    fig = Figure(figsize=(DOUBLE_COLUMN, 2.45), layout="constrained")
    ax_r, ax_p, ax_h = fig.subplots(1, 3, gridspec_kw={"width_ratios": [0.8, 1.1, 1.1]})

    ax_r.bar(rank, actions["reward"], color=OKABE_ITO["sky"], width=0.7)
    ax_r.axhline(0, color="k", linewidth=0.5)
    ax_r.set_xticks(rank)
    ax_r.set_xlabel(r"action $y$ (by decreasing $r$)")
    ax_r.set_ylabel(r"reward $r(y)$")
    _panel_title(ax_r, "a", "expert reward")

    spo = df[df["method"] == "spo"].assign(rank=lambda d: d["action"].map(order))
    available = np.array(sorted(spo["param"].unique()))
    picked = sorted({float(available[np.argmin(np.abs(np.log(available) - np.log(a)))]) for a in alphas})
    for i, alpha in enumerate(picked):
        d = spo[spo["param"] == alpha]
        closed = d.drop_duplicates("rank").sort_values("rank")
        color = COLORS[i % len(COLORS)]
        ax_p.plot(closed["rank"], closed["closed_form"], color=color, linewidth=1.0,
                  label=rf"$\alpha = {_fmt(alpha)}$")
        s = _mean_ci(d, "rank", "probability")
        ax_p.errorbar(s["rank"], s["mean"], yerr=_yerr(s), color=color, marker="o", linestyle="none",
                      markersize=3, elinewidth=0.8)
    ref = actions.assign(rank=rank)
    ax_p.plot(ref["rank"], ref["ref_prob"], color=GREY, linestyle="--", linewidth=0.9, label=r"$\pi_{\mathrm{ref}}$")
    handles, labels = ax_p.get_legend_handles_labels()
    handles += [_proxy(marker="o", linestyle="none"), _proxy(marker=None)]
    labels += ["learned (mean, 95%)", r"$\mathrm{softmax}(r/\alpha)$"]
    ax_p.legend(handles, labels, loc="upper right", fontsize=6.5)
    ax_p.set_xticks(rank)
    ax_p.set_xlabel(r"action $y$ (by decreasing $r$)")
    ax_p.set_ylabel(r"$\pi(y)$")
    _panel_title(ax_p, "b", r"SPO, $\beta = 0$")

    for method, color, marker, closed_label in (
            ("spo", OKABE_ITO["blue"], "o", r"SPO vs $\alpha$: $H(\mathrm{softmax}(r/\alpha))$"),
            ("dpo", OKABE_ITO["vermillion"], "s", r"DPO vs $\beta$: $H(\pi_{\mathrm{ref}}e^{r/\beta}/Z)$")):
        d = df[df["method"] == method].drop_duplicates(["param", "seed_index"])
        closed = d.drop_duplicates("param").sort_values("param")
        ax_h.plot(closed["param"], closed["closed_form_entropy"], color=color, label=closed_label)
        s = _mean_ci(d, "param", "entropy")
        ax_h.errorbar(s["param"], s["mean"], yerr=_yerr(s), color=color, marker=marker, linestyle="none",
                      markersize=3, elinewidth=0.8, markerfacecolor="white")
    n_actions = len(order)
    ref_entropy = float(-(actions["ref_prob"] * np.log(actions["ref_prob"])).sum())
    ax_h.axhline(np.log(n_actions), color=GREY, linestyle=":", linewidth=0.9)
    ax_h.axhline(ref_entropy, color=GREY, linestyle="--", linewidth=0.9)
    ax_h.text(0.02, np.log(n_actions), r"$\log n$ (uniform)", transform=ax_h.get_yaxis_transform(),
              va="bottom", fontsize=6.5, color=GREY)
    ax_h.text(0.02, ref_entropy, r"$H(\pi_{\mathrm{ref}})$", transform=ax_h.get_yaxis_transform(),
              va="bottom", fontsize=6.5, color=GREY)
    handles, labels = ax_h.get_legend_handles_labels()
    handles.append(_proxy(marker="o", linestyle="none", markerfacecolor="white"))
    labels.append("learned (mean, 95%)")
    ax_h.legend(handles, labels, loc="lower right", fontsize=6.5)
    _log(ax_h)
    ax_h.set_ylim(0, np.log(n_actions) * 1.12)
    ax_h.set_xlabel(r"$\alpha$ (SPO) or $\beta$ (DPO)")
    ax_h.set_ylabel(r"entropy $H(\pi)$ (nats)")
    _panel_title(ax_h, "c", "softness")
    return fig


def _yerr(s: pd.DataFrame) -> np.ndarray:
    """Asymmetric error-bar lengths (2, k) from the mean and the interval (0 where the interval is undefined)."""
    return np.nan_to_num(np.vstack([s["mean"] - s["low"], s["high"] - s["mean"]]), nan=0.0).clip(min=0)


# --------------------------------------------------------------------------- regularization

REGULARIZATION_COLUMNS = ("beta", "alpha", "mean_tv_to_target", "tv_to_ref", "kl_to_ref", "entropy",
                          "mean_tv_target_to_ref")


@styled
def regularization(df: pd.DataFrame) -> Figure:
    """The β path of the population SPO minimiser π_β: (a) ρ-mean TV to softmax(r/α) and to π_ref, (b) KL(π_β‖π_ref),
    (c) entropy, each against β (log), mean and 95% band over problems. df: the `regularization` experiment."""
    _require(df, REGULARIZATION_COLUMNS, "df")
    alpha = df["alpha"].iloc[0]
    fig = Figure(figsize=(DOUBLE_COLUMN, 2.3), layout="constrained")
    ax_tv, ax_kl, ax_h = fig.subplots(1, 3)
    _band(ax_tv, _mean_ci(df, "beta", "mean_tv_to_target"), "beta", color=OKABE_ITO["blue"], marker=None,
          label=r"to $\mathrm{softmax}(r/\alpha)$")
    _band(ax_tv, _mean_ci(df, "beta", "tv_to_ref"), "beta", color=OKABE_ITO["vermillion"], marker=None,
          label=r"to $\pi_{\mathrm{ref}}$")
    ends = float(df.drop_duplicates("seed_index")["mean_tv_target_to_ref"].mean())
    ax_tv.axhline(ends, color=GREY, linestyle=":", linewidth=0.9,
                  label=r"$\mathrm{TV}(\mathrm{softmax}(r/\alpha), \pi_{\mathrm{ref}})$")
    ax_tv.set_ylabel(r"$\rho$-mean TV$(\pi_\beta, \cdot)$")
    _panel_title(ax_tv, "a", "distance to the two ends")
    _band(ax_kl, _mean_ci(df, "beta", "kl_to_ref"), "beta", color=OKABE_ITO["green"], marker=None, positive=True)
    _log(ax_kl, "y")
    ax_kl.set_ylabel(r"$\mathrm{KL}(\pi_\beta\,\|\,\pi_{\mathrm{ref}})$")
    _panel_title(ax_kl, "b", "KL to the reference")
    _band(ax_h, _mean_ci(df, "beta", "entropy"), "beta", color=OKABE_ITO["purple"], marker=None)
    ax_h.set_ylabel(r"entropy $H(\pi_\beta)$ (nats)")
    _panel_title(ax_h, "c", "entropy")
    for ax in (ax_tv, ax_kl, ax_h):
        _log(ax)
        ax.set_xlabel(rf"$\beta$ (KL weight; $\alpha = {_fmt(alpha)}$)")
    handles, labels = ax_tv.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(handles), fontsize=6.5,
               title=r"$\pi_\beta$ = exact SPO minimiser; mean and 95% band over problems", title_fontsize=6.5)
    return fig


# --------------------------------------------------------------------------- collapse

COLLAPSE_COLUMNS = ("dataset", "method", "loss", "param", "run", "step", "action", "probability")
COLLAPSE_TITLES = {"dpo": "DPO", "ipo": "IPO", "spo": "SPO"}
DATASET_LABELS = {"D1": r"D1: $a\succ b,\ b\succ c,\ a\succ c$", "D2": r"D2: $a\succ b,\ b\succ c,\ c\succ a$",
                  "D3": r"D3: $a\succ b,\ b\succ a$"}
PARAM_SYMBOLS = {"alpha": r"\alpha", "beta": r"\beta", "tau": r"\tau"}


def _sweep_tex(params) -> str:
    """['alpha=1,beta=0.1', 'alpha=1,beta=0.5'] -> '$\\alpha = 1,\\ \\beta = 0.1, 0.5$' (the last key varies)."""
    items = [item.partition("=") for item in str(params[0]).split(",")]
    fixed = [f"{PARAM_SYMBOLS.get(k.strip(), k.strip())} = {x.strip()}" for k, _, x in items[:-1]]
    key = items[-1][0].strip()
    values = ", ".join(str(p).rsplit("=", 1)[-1] for p in params)
    return "$" + r",\ ".join(fixed + [f"{PARAM_SYMBOLS.get(key, key)} = {values}"]) + "$"


LINESTYLES = ("-", "--", ":")


def _param_value(param: str) -> float:
    """The last value of a param string ('alpha=1,beta=0.1' -> 0.1): the regulariser the sweep varies."""
    return float(str(param).rsplit("=", 1)[-1])


@styled
def collapse(df: pd.DataFrame) -> Figure:
    """π(a), π(b), π(c) against the Adam step on the IPO toy sets D1–D3 (rows) for DPO, IPO and SPO (columns),
    mean and 95% band over runs; line style = the method's regulariser (β, τ or SPO's β) from weakest (solid) to
    strongest (dotted). df: the `collapse` experiment."""
    _require(df, COLLAPSE_COLUMNS, "df")
    losses = [loss for loss in COLLAPSE_TITLES if loss in set(df["loss"])]
    # Per loss, its methods sorted by the regulariser: a larger β (DPO, SPO) or τ (IPO) stays closer to π_ref.
    methods = {loss: sorted(df.loc[df["loss"] == loss, ["method", "param"]].drop_duplicates().itertuples(index=False),
                            key=lambda mp: _param_value(mp.param))[:len(LINESTYLES)] for loss in losses}
    datasets = sorted(df["dataset"].unique())
    curves = collapse_experiment.learning_curves(df[df["method"].isin([m.method for ms in methods.values()
                                                                       for m in ms])])
    action_colors = {a: c for a, c in zip(sorted(df["action"].unique()), COLORS)}
    fig = Figure(figsize=(DOUBLE_COLUMN, 1.6 * len(datasets) + 0.7), layout="constrained")
    axes = fig.subplots(len(datasets), len(losses), sharex=True, sharey=True, squeeze=False)
    for r, dataset in enumerate(datasets):
        for c, loss in enumerate(losses):
            ax = axes[r, c]
            for (method, _), linestyle in zip(methods[loss], LINESTYLES):
                d = curves[(curves["dataset"] == dataset) & (curves["method"] == method)]
                for action, color in action_colors.items():
                    _band(ax, d[d["action"] == action], "step", color=color, marker=None, linestyle=linestyle,
                          linewidth=1.0)
            ax.axhline(1 / len(action_colors), color=GREY, linestyle=(0, (1, 3)), linewidth=0.8)
            ax.set_ylim(-0.02, 1.02)
            if r == 0:
                ax.set_title(f"{COLLAPSE_TITLES[loss]} ({_sweep_tex([p for _, p in methods[loss]])})", loc="center")
            if c == 0:
                ax.set_ylabel(DATASET_LABELS.get(dataset, dataset) + "\n" + r"$\pi(y)$")
            if r == len(datasets) - 1:
                ax.set_xlabel("Adam step")
    handles = [_proxy(color=color, marker=None) for color in action_colors.values()]
    labels = [rf"$\pi({a})$" for a in action_colors]
    handles += [_proxy(color="k", marker=None, linestyle=ls, linewidth=1.0) for ls in LINESTYLES]
    labels += ["weakest", "middle", "strongest"][:len(LINESTYLES)]
    handles.append(_proxy(marker=None, linestyle=(0, (1, 3))))
    labels.append(r"$\pi_{\mathrm{ref}} = 1/3$")
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), fontsize=6.5, title_fontsize=6.5,
               title=f"line style: the regulariser's values in the panel title, weakest (solid) to strongest "
                     f"(dotted); mean and 95% band over {df['run'].nunique()} runs")
    return fig


# --------------------------------------------------------------------------- frontier

FRONTIER_COLUMNS = ("method", "param", "kl_to_ref", "expected_reward", "win_rate_vs_ref")
FRONTIER_STYLE = {   # method -> (label, colour, marker, linestyle)
    "spo_alpha": (r"SPO, $\alpha$ sweep ($\beta = 0$)", OKABE_ITO["blue"], "o", "-"),
    "spo_beta": (r"SPO, $\beta$ sweep ($\alpha = {alpha}$)", OKABE_ITO["green"], "^", "-"),
    "dpo": (r"DPO, $\beta$ sweep", OKABE_ITO["vermillion"], None, "-"),
    "rlhf": (r"RLHF, $\beta$ sweep", OKABE_ITO["vermillion"], "x", "none"),
    "ipo": (r"IPO, $\tau$ sweep", OKABE_ITO["purple"], "s", "-"),
}


@styled
def frontier(df: pd.DataFrame) -> Figure:
    """Exact expected reward E_π[r] (a) and exact win rate against π_ref (b) against KL(π‖π_ref) (log) along each
    method's sweep of its parameter. df: figure_data.run_frontier (population minimisers)."""
    _require(df, FRONTIER_COLUMNS, "df")
    fig = Figure(figsize=(DOUBLE_COLUMN, 2.55), layout="constrained")
    ax_r, ax_w = fig.subplots(1, 2)
    handles = []
    for method, (label, color, marker, linestyle) in FRONTIER_STYLE.items():
        d = df[(df["method"] == method) & (df["kl_to_ref"] > 0)].sort_values("kl_to_ref")
        if d.empty:
            continue
        if "{alpha}" in label:
            label = label.format(alpha=_fmt(d["alpha"].iloc[0]) if "alpha" in d else "?")
        # Hollow markers, and DPO's line wide and underneath: IPO's and RLHF's points fall on it.
        style = {"markersize": 4.5 if marker == "x" else 3.2, "linewidth": 2.2 if method == "dpo" else 1.0,
                 "zorder": 1.5 if method == "dpo" else 2.5}
        if marker in ("o", "^", "s"):
            style["markerfacecolor"] = "none"
        for ax, y in ((ax_r, "expected_reward"), (ax_w, "win_rate_vs_ref")):
            line, = ax.plot(d["kl_to_ref"], d[y], color=color, marker=marker, linestyle=linestyle, label=label,
                            **style)
        handles.append(line)
    ax_w.axhline(0.5, color=GREY, linestyle=":", linewidth=0.9)
    for ax in (ax_r, ax_w):
        _log(ax)
        ax.set_xlabel(r"$\mathrm{KL}(\pi\,\|\,\pi_{\mathrm{ref}})$ ($\rho$-mean, exact)")
    ax_r.set_ylabel(r"expected reward $\mathbb{E}_{\pi}[r]$")
    ax_w.set_ylabel(r"win rate $\mathrm{WR}(\pi, \pi_{\mathrm{ref}})$")
    _panel_title(ax_r, "a", "reward–KL frontier")
    _panel_title(ax_w, "b", r"win rate against $\pi_{\mathrm{ref}}$")
    fig.legend(handles, [h.get_label() for h in handles], loc="outside upper center", ncols=len(handles),
               fontsize=6.5)
    return fig


# --------------------------------------------------------------------------- noise

NOISE_COLUMNS = ("noise", "method", "loss", "alpha", "beta", "tau", "max_tv_to_target", "win_rate_vs_ref")
NOISE_STYLE = {"spo": (OKABE_ITO["blue"], "o", "-"), "spo_kl": (OKABE_ITO["green"], "^", "-"),
               "dpo": (OKABE_ITO["vermillion"], "s", "--"), "ipo": (OKABE_ITO["purple"], "D", "-")}


def _method_label(row) -> str:
    """'SPO (α = 1, β = 0.1)' from a row's loss and hyperparameter columns (NaN ones left out)."""
    names = {"spo": ("alpha", "beta"), "dpo": ("beta",), "ipo": ("tau",)}.get(row["loss"], ("alpha", "beta", "tau"))
    values = [f"{PARAM_SYMBOLS[k]} = {_fmt(row[k])}" for k in names if pd.notna(row[k])
              and not (row["loss"] == "spo" and k == "beta" and row[k] == 0)]
    return f"{row['loss'].upper()} (" + "$" + r",\ ".join(values) + "$)" if values else row["loss"].upper()


@styled
def noise(df: pd.DataFrame) -> Figure:
    """(a) max TV to the noiseless target softmax(r/α) (log) and (b) the expert's win rate against π_ref, against
    the label-noise rate ε, per method (mean and 95% band over data sets). df: the `noise` experiment."""
    _require(df, NOISE_COLUMNS, "df")
    fig = Figure(figsize=(DOUBLE_COLUMN, 2.45), layout="constrained")
    ax_tv, ax_w = fig.subplots(1, 2)
    handles = []
    for i, method in enumerate(sorted(df["method"].unique(), key=lambda m: list(NOISE_STYLE).index(m)
                                      if m in NOISE_STYLE else len(NOISE_STYLE))):
        d = df[df["method"] == method]
        color, marker, linestyle = NOISE_STYLE.get(method, (COLORS[i % len(COLORS)], "o", "-"))
        label = _method_label(d.iloc[0])
        kw = {"color": color, "marker": marker, "linestyle": linestyle, "markerfacecolor": "white",
              "markersize": 3.5 if linestyle == "-" else 5}
        line = _band(ax_tv, _mean_ci(d, "noise", "max_tv_to_target"), "noise", label=label, positive=True, **kw)
        _band(ax_w, _mean_ci(d, "noise", "win_rate_vs_ref"), "noise", **kw)
        handles.append(line)
    _log(ax_tv, "y")
    ax_tv.set_ylabel(r"max$_x$ TV$(\hat\pi, \mathrm{softmax}(r/\alpha))$")
    ax_w.axhline(0.5, color=GREY, linestyle=":", linewidth=0.9)
    ax_w.set_ylabel(r"win rate $\mathrm{WR}(\hat\pi, \pi_{\mathrm{ref}})$")
    _panel_title(ax_tv, "a", "distance to the noiseless target")
    _panel_title(ax_w, "b", "win rate (noiseless expert)")
    for ax in (ax_tv, ax_w):
        ax.set_xlabel(r"label noise $\varepsilon$")
    title = [f"$N = {int(df['n_pairs'].iloc[0]):,}$ pairs".replace(",", "{,}")] if "n_pairs" in df else []
    by_method = df.pivot_table(index=["noise", "seed_index"], columns="method", values="max_tv_to_target")
    if {"spo", "dpo"} <= set(by_method.columns) and np.allclose(by_method["spo"], by_method["dpo"], rtol=1e-6):
        # With uniform π_ref and β_DPO = α, DPO's objective is SPO's up to a factor (noise experiment docstring).
        title.append("SPO and DPO coincide (uniform $\\pi_{\\mathrm{ref}}$, $\\beta = \\alpha$)")
    fig.legend(handles, [h.get_label() for h in handles], loc="outside upper center", ncols=len(handles),
               fontsize=6.5, title="; ".join(title) or None, title_fontsize=6.5)
    return fig


# --------------------------------------------------------------------------- transformer

TRANSFORMER_COLUMNS = ("step", "tv_to_target", "kl_exact", "kl_tokenwise", "seed_index")


@styled
def transformer(df: pd.DataFrame) -> Figure:
    """Sequence mode: (a) exact TV between the enumerated π_θ and the exact minimiser (log) and (b) the exact
    KL(π_θ‖π_ref) next to the token-wise estimate the objective trains with, against the training step, mean and
    95% band over seeds. df columns: step, tv_to_target, kl_exact, kl_tokenwise, seed_index
    (figure_data.run_transformer_curves)."""
    _require(df, TRANSFORMER_COLUMNS, "df")
    fig = Figure(figsize=(DOUBLE_COLUMN, 2.4), layout="constrained")
    ax_tv, ax_kl = fig.subplots(1, 2)
    _band(ax_tv, _mean_ci(df, "step", "tv_to_target"), "step", color=OKABE_ITO["blue"], marker=None, positive=True)
    _log(ax_tv, "y")
    ax_tv.set_ylabel(r"exact $\mathrm{TV}(\pi_\theta, \pi^\star)$")
    _band(ax_kl, _mean_ci(df, "step", "kl_exact"), "step", color=OKABE_ITO["green"], marker=None,
          label=r"exact $\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})$")
    if df["kl_tokenwise"].notna().any():
        _band(ax_kl, _mean_ci(df, "step", "kl_tokenwise"), "step", color=OKABE_ITO["vermillion"], marker=None,
              linestyle="--", label="token-wise estimate (training batch)")
    ax_kl.set_ylabel(r"$\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})$")
    ax_kl.set_ylim(bottom=0)                              # KL ≥ 0: a t-band may reach below, the quantity cannot
    ax_kl.legend(loc="lower right", fontsize=6.5)
    desc = []
    for col, sym in (("alpha", r"\alpha"), ("beta", r"\beta")):
        if col in df and df[col].notna().any():
            desc.append(f"{sym} = {_fmt(df[col].iloc[0])}")
    loss = str(df["loss"].iloc[0]).upper() if "loss" in df else ""
    suffix = f"{loss} (" + "$" + r",\ ".join(desc) + "$)" if desc else loss
    _panel_title(ax_tv, "a", ("distance to the exact minimiser, " + suffix).rstrip(", "))
    _panel_title(ax_kl, "b", "global KL")
    for ax in (ax_tv, ax_kl):
        ax.set_xlabel("training step")
    return fig


# --------------------------------------------------------------------------- the figure set and its CLI

@dataclass(frozen=True)
class FigureSpec:
    """A figure: how to get its data (quick, load) -> draw kwargs, how to draw it, and what it needs."""

    name: str
    help: str
    data: Callable      # data(quick, load) -> {draw argument: DataFrame}; load(name, quick) runs a cached data source
    draw: Callable
    available: Callable = lambda: True


def _from(source: str, key: str = "df"):
    return lambda quick, load: {key: load(source, quick)}


FIGURES = {spec.name: spec for spec in (
    FigureSpec("theorem1", "max TV to softmax(r/α) against N, with the exact population floor",
               lambda quick, load: {"df": load("scaling", quick), "floor": load("theorem1-floor", quick)}, theorem1),
    FigureSpec("softness", "learned π and entropy against α (SPO) and β (DPO)", _from("softness"), softness),
    FigureSpec("regularization", "the β path from softmax(r/α) to π_ref", _from("regularization"), regularization),
    FigureSpec("collapse", "IPO toy sets D1–D3: DPO, IPO, SPO learning curves", _from("collapse"), collapse),
    FigureSpec("frontier", "exact reward and win rate against KL(π‖π_ref)", _from("frontier"), frontier),
    FigureSpec("noise", "label noise ε: SPO vs DPO vs IPO", _from("noise"), noise),
    FigureSpec("transformer", "sequence mode: exact TV and KL against the step", _from("transformer-curves"),
               transformer, figure_data.transformer_available),
)}

# Data sources that are not finite-data experiments: name -> run(quick=..., **sweep options).
DATA_SOURCES = {"theorem1-floor": figure_data.run_population_floor, "softness": figure_data.run_softness,
                "frontier": figure_data.run_frontier, "transformer-curves": figure_data.run_transformer_curves}


def load_data(name: str, quick: bool = False, cache=None, *, jobs: int = 1, quiet: bool = True) -> pd.DataFrame:
    """The DataFrame of an experiment or data source; with `cache` (a folder) resumed from and written to
    cache/NAME[-quick].jsonl / .csv, so a second call only reads."""
    from .experiments import EXPERIMENTS, run_experiment
    from .experiments.sweep import atomic_write_text
    if name in EXPERIMENTS:
        return run_experiment(name, quick=quick, out=cache, jobs=jobs, quiet=quiet)[0]
    v.choice("name", name, DATA_SOURCES)
    stem = name + ("-quick" if quick else "")
    sweep = {"jobs": jobs, "quiet": quiet}
    if cache is not None:
        sweep["journal"] = Path(cache) / f"{stem}.jsonl"
    df = DATA_SOURCES[name](quick=quick, **sweep)
    if cache is not None:
        atomic_write_text(Path(cache) / f"{stem}.csv", df.to_csv(index=False))
    return df


def available_figures() -> list[str]:
    """Names of the figures this installation can make (transformer only with spo_tabular.transformer)."""
    return [name for name, spec in FIGURES.items() if spec.available()]


def make_figures(out="figures", *, quick: bool = False, only=None, formats=("png", "pdf"), jobs: int = 1,
                 quiet: bool = True, log=None) -> list[dict]:
    """Compute (or read from out/data) every figure's data, draw it and write out/NAME.{png,pdf}.

    Returns one record per figure: name, files, data_s (seconds computing or loading data), draw_s.
    """
    out = Path(out)
    names = list(only) if only else available_figures()
    for name in names:
        v.choice("only", name, FIGURES)
        if not FIGURES[name].available():
            raise ValueError(f"figure {name!r} needs spo_tabular.transformer, which this installation lacks")
    cache = out / "data"
    memo: dict = {}

    def load(source, quick_):
        if (source, quick_) not in memo:
            memo[(source, quick_)] = load_data(source, quick_, cache, jobs=jobs, quiet=quiet)
        return memo[(source, quick_)]

    records = []
    for name in names:
        spec = FIGURES[name]
        t0 = time.perf_counter()
        data = spec.data(quick, load)
        t1 = time.perf_counter()
        fig = spec.draw(**data)
        files = save_figure(fig, out / name, formats)
        record = {"figure": name, "files": " ".join(str(f) for f in files), "data_s": round(t1 - t0, 2),
                  "draw_s": round(time.perf_counter() - t1, 2)}
        records.append(record)
        if log is not None:
            log(record)
    return records


def configure(p):
    """Arguments of `spo-tabular figures`."""
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: figures, or figures/quick with --quick); data cached in DIR/data")
    p.add_argument("--quick", action="store_true", help="tiny settings (seconds); never overwrites the full figures")
    p.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(FIGURES),
                   help="only these figures: " + ", ".join(f"{k} ({s.help})" for k, s in FIGURES.items()))
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=sorted(METADATA),
                   help="file formats (default: png pdf)")
    p.add_argument("--jobs", type=int, default=1, help="local worker processes for the sweeps (1: inline)")


def run(args) -> int:
    """Make the figures; print one line per figure and the total time; exit code 0."""
    out = args.out or ("figures/quick" if args.quick else "figures")
    v.positive_int("jobs", args.jobs)
    start = time.perf_counter()
    skipped = [n for n in FIGURES if not FIGURES[n].available()] if not args.only else []
    make_figures(out, quick=args.quick, only=args.only, formats=tuple(args.formats), jobs=args.jobs,
                 log=lambda r: print(f"{r['figure']:15s} data {r['data_s']:7.2f} s  draw {r['draw_s']:5.2f} s  "
                                     f"-> {r['files']}", flush=True))
    for name in skipped:
        print(f"{name:15s} skipped: needs spo_tabular.transformer")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0
