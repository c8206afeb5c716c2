"""The claims table: one row per claim of the paper, each with an oriented effect, a 95 % interval, a
Holm-adjusted p-value and a verdict that follows from them by the rule of docs/protocol.md.

:data:`CLAIMS` is the one registry: each :class:`Claim` has a stable id (which also seeds its random draws), its
research question, a text that names the metric, the attack and epsilon, and a function of the run's tables
(:class:`Tables`) returning an :class:`~smoothgeo.analysis.seed_level.Inference`, or raising
:class:`NotEstimable` with the reason (such a claim gets no row; the reason goes to ``not_estimable``). Adding a
claim is one entry here and one test (tests/test_claims.py runs every entry on a synthetic run).

Orientation: ``effect`` is positive in the paper's direction (a robustness gain, a positive association of
curvature with damage, less transfer on the smoother model). Verdicts (:func:`verdict`), symmetric:
``reproduces`` when the interval lies above 0 and the Holm-adjusted p < 0.05, ``contradicted`` when it lies
below 0 and the adjusted p < 0.05, ``not shown`` otherwise; ``uncorrected`` says on which side the interval lies
before the correction. Holm runs over the rows of one ``family`` (``main``; the ``replication`` rows form their
own family and are shown beside the main estimates).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from smoothgeo.analysis import frames
from smoothgeo.analysis.seed_level import (Inference, across_correlation, claim_seed, seed_effect,
                                           within_correlation)
from smoothgeo.analysis.stats import holm

__all__ = ["COLUMNS", "VERDICTS", "VERDICT_RULE", "Claim", "NotEstimable", "Tables", "CLAIMS", "verdict",
           "claims_table", "plain_words"]

COLUMNS = ["rq", "id", "family", "claim", "metric", "attack", "epsilon", "effect", "ci_low", "ci_high", "p_value",
           "p_adjusted", "n_images", "n_seeds", "n_models", "uncorrected", "method", "verdict"]
VERDICTS = ("reproduces", "not shown", "contradicted")
VERDICT_RULE = ("95% CI above 0 and Holm p < 0.05: reproduces; CI below 0 and Holm p < 0.05: contradicted; "
                "otherwise not shown")


class NotEstimable(Exception):
    """The claim cannot be estimated from this run (missing models, settings or overlap); the message says why."""


def verdict(ci_low: float, ci_high: float, p_adjusted: float, *, alpha: float = 0.05) -> str:
    """The symmetric rule of the module docstring (a NaN interval or p-value: ``not shown``)."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high) and np.isfinite(p_adjusted)):
        return "not shown"
    if ci_low > 0 and p_adjusted < alpha:
        return "reproduces"
    if ci_high < 0 and p_adjusted < alpha:
        return "contradicted"
    return "not shown"


@dataclass
class Tables:
    """A run's tables, as the claims read them (see :mod:`smoothgeo.analysis.frames`)."""

    params: dict
    models: pd.DataFrame
    attacks: pd.DataFrame
    measures: pd.DataFrame
    eps: float = 0.1
    explanations: pd.DataFrame = field(default_factory=pd.DataFrame)   # results/explanations (faithfulness)
    _cache: dict = field(default_factory=dict)

    def group(self, role: str) -> list[str]:
        """The model names of a comparison role: ``natural``/``ssr``/``madry`` (comparisons.central) or any other
        key of ``comparisons`` (e.g. ``matched_accuracy``, ``weight_decay``, ``replication``)."""
        cmp = self.params.get("comparisons") or {}
        names = (cmp.get("central") or {}).get(role, cmp.get(role))
        if not names:
            raise NotEstimable(f"params 'comparisons' has no group {role!r}")
        if isinstance(names, dict):
            raise NotEstimable(f"comparisons.{role} is a mapping; name one of its groups")
        return list(names)

    def setting(self, name: str, eps: float | None = None) -> str:
        sid = f"{name}-eps{(self.eps if eps is None else eps):g}"
        if sid not in self._settings():
            raise NotEstimable(f"attack setting {sid} is not in results/attacks (params attacks.settings.{name})")
        return sid

    def _settings(self) -> set:
        if "settings" not in self._cache:
            self._cache["settings"] = set(self.attacks.setting.unique())
        return self._cache["settings"]

    def summary(self) -> pd.DataFrame:
        """The per-model summary under the headline ensemble and its floor (:func:`frames.model_summary`),
        computed once per run and shared by the claims, the support tables and the metrics."""
        if "summary" not in self._cache:
            grid = self.params["attacks"]["defaults"].get("surrogates", [10.0])
            self._cache["summary"] = frames.model_summary(self.models, self.attacks, self.measures,
                                                          head=self.setting("SM-topk"),
                                                          floor=self.setting("SM-random"), grid=grid)
        return self._cache["summary"]

    def beyond(self, attack: str, floor: str, *, eps: float | None = None, evaluated: str | None = None):
        key = ("beyond", attack, floor, eps, evaluated)
        if key not in self._cache:
            self._cache[key] = frames.beyond_noise(self.attacks, self.setting(attack, eps), self.setting(floor, eps),
                                                   evaluated_method=evaluated)
        return self._cache[key]


@dataclass(frozen=True)
class Claim:
    """One registered claim (see the module docstring)."""

    id: str
    rq: str
    text: str
    metric: str
    attack: str
    epsilon: float | None
    compute: Callable[[Tables, np.random.Generator], Inference]
    family: str = "main"


def _rows(t: Tables, attack: str, floor: str, models: list[str], **kw) -> pd.DataFrame:
    b = t.beyond(attack, floor, **kw)
    rows = b[b.model.isin(models)]
    if rows.empty:
        raise NotEstimable(f"no attacked images of {models} under {attack}")
    return rows


def _paired(treatment: str, baseline: str, metric: str, *, attack="SM-topk", floor="SM-random", eps=None,
            sign=-1, replication=False):
    """Seed-level paired effect of group ``treatment`` over ``baseline``; ``sign=-1`` for damage (lower = better)."""
    def compute(t: Tables, rng) -> Inference:
        tm, bm = t.group(treatment), t.group(baseline)
        if replication:
            rep = set(t.group("replication"))
            tm, bm = [m for m in tm if m in rep], [m for m in bm if m in rep]
        rows_t, rows_b = _rows(t, attack, floor, tm, eps=eps), _rows(t, attack, floor, bm, eps=eps)
        if metric not in rows_t.columns:
            raise NotEstimable(f"the attack tables have no {metric} (a run from before the metric existed)")
        return seed_effect(rows_t, rows_b, metric, sign=sign)
    return compute


def _matched(treatment: str, metric: str):
    """Against the natural group (full or early-stopped) whose mean validation accuracy is closest to the
    treatment's (the rule of docs/protocol.md, decided before the run)."""
    def compute(t: Tables, rng) -> Inference:
        models = t.models.set_index("model")
        # validation accuracy (held-out training images); a profile without a validation split: test accuracy
        column = "val_accuracy" if "val_accuracy" in models and models.val_accuracy.notna().any() else "test_accuracy"
        acc = models[column].astype(float)
        target = acc.reindex(t.group(treatment)).mean()
        options = {role: acc.reindex(t.group(role)).mean() for role in ("natural", "matched_accuracy")}
        if not all(np.isfinite([target, *options.values()])):
            raise NotEstimable(f"no {column} for {treatment}, natural or matched_accuracy models")
        role = min(options, key=lambda r: abs(options[r] - target))
        res = _paired(treatment, role, metric)(t, rng)
        res.method += f"; baseline {role} ({column} {options[role]:.3f} vs {target:.3f})"
        return res
    return compute


def _smoothing(variant: str):
    """SG/UG against SM on the same natural models: damage beyond noise at one matched budget."""
    def compute(t: Tables, rng) -> Inference:
        models = t.group("smoothing")
        v = _rows(t, f"{variant}-topk-b10", f"{variant}-random-b10", models)
        s = _rows(t, "SM-topk-b10", "SM-random-b10", models)
        return seed_effect(v, s, "topk_beyond", sign=-1)
    return compute


def _ignorm(t: Tables, rng) -> Inference:
    ft = (t.params.get("comparisons") or {}).get("finetune") or {}
    if not ft.get("ig_norm") or not ft.get("natural"):
        raise NotEstimable("comparisons.finetune has no ig_norm / natural groups")
    return seed_effect(_rows(t, "IG-topk", "IG-random", ft["ig_norm"]),
                       _rows(t, "IG-topk", "IG-random", ft["natural"]), "topk_beyond", sign=-1)


def _faithful(treatment: str, baseline: str, metric: str, *, method: str = "SM", baseline_method: str | None = None,
              sign: int = -1):
    """Seed-level paired difference of a faithfulness metric of the explanation tables (lower deletion AUC or
    infidelity = more faithful: ``sign=-1``), group ``treatment`` against ``baseline`` on one method, or two
    methods on the same models (``baseline_method``)."""
    def compute(t: Tables, rng) -> Inference:
        e = t.explanations
        if e is None or e.empty or metric not in e.columns:
            raise NotEstimable("no explanation tables (params measures.explain) in this run")
        e = frames.with_family(e)
        tm, bm = t.group(treatment), t.group(baseline)
        a = e[e.model.isin(tm) & (e.method == method)]
        b = e[e.model.isin(bm) & (e.method == (baseline_method or method))]
        if a.empty or b.empty:
            raise NotEstimable(f"no explanation rows of {treatment} / {baseline} for {method}")
        return seed_effect(a, b, metric, sign=sign)
    return compute


def _curvature_within(t: Tables, rng) -> Inference:
    b = _rows(t, "SM-topk", "SM-random", t.group("natural"))
    m = t.measures[["model", "image", "lambda_max"]]
    return within_correlation(b.merge(m, on=["model", "image"]), "lambda_max", "topk_beyond", rng=rng,
                              covariate="clean_conf")


def _curvature_across(t: Tables, rng) -> Inference:
    s = t.summary()
    s = s[s.family != "softplus"]
    return across_correlation(s, "lambda_max", "topk_beyond", rng=rng, covariate="test_accuracy")


def _bound(outcome: str):
    def compute(t: Tables, rng) -> Inference:
        m = t.measures[t.measures.model.isin(t.group("natural"))]
        if "bound_predicted_grad_change" not in m.columns or outcome not in m.columns:
            raise NotEstimable(f"the measure tables have no {outcome} (params measures.bound_setting)")
        return within_correlation(m, "bound_predicted_grad_change", outcome, rng=rng)
    return compute


def _transfer(smooth: str):
    def compute(t: Tables, rng) -> Inference:
        sets = {m: t.setting(f"{m}-topk-b10") for m in ("SM", "IG", "SG", "UG")}
        tr = frames.transfer_table(t.attacks, attack_settings=sets, random_setting=t.setting("SM-random-b10"))
        per = tr.dropna(subset=["relative_transfer"]).groupby(["model", "group", "seed"], as_index=False) \
            .relative_transfer.mean().assign(image=0)
        s, b = per[per.model.isin(t.group(smooth))], per[per.model.isin(t.group("natural"))]
        if s.empty or b.empty:
            raise NotEstimable(f"no transfer rows for {smooth} or natural (comparisons.transfer)")
        return seed_effect(s, b, "relative_transfer", sign=-1)
    return compute


_TOPK = "damage beyond noise (top-k)"
#: the registry of claims, fixed before the final run (docs/protocol.md)
CLAIMS: list[Claim] = [
    Claim("ssr-natural-beyond", "RQ4", "SSR (scale 10) leaves less top-k damage beyond random noise than natural "
          "training (SM, top-k ensemble attack, eps 0.1)", _TOPK, "SM-topk", 0.1,
          _paired("ssr", "natural", "topk_beyond")),
    Claim("madry-natural-beyond", "RQ4", "Madry training (eps 0.1) leaves less top-k damage beyond random noise "
          "than natural training (SM, top-k ensemble attack, eps 0.1)", _TOPK, "SM-topk", 0.1,
          _paired("madry", "natural", "topk_beyond")),
    Claim("ssr-natural-raw", "RQ4", "SSR (scale 10) keeps more of the SM top-k set than natural training under "
          "the top-k ensemble attack, eps 0.1 (raw top-k, noise included)", "top-k intersection", "SM-topk", 0.1,
          _paired("ssr", "natural", "topk", sign=1)),
    Claim("madry-natural-raw", "RQ4", "Madry training keeps more of the SM top-k set than natural training under "
          "the top-k ensemble attack, eps 0.1 (raw top-k, noise included)", "top-k intersection", "SM-topk", 0.1,
          _paired("madry", "natural", "topk", sign=1)),
    Claim("ssr-natural-kendall", "RQ4", "SSR (scale 10) loses less of SM's pixel ranking (worst Kendall over the "
          "ensemble) beyond random noise than natural training, eps 0.1", "damage beyond noise (Kendall)",
          "SM-topk", 0.1, _paired("ssr", "natural", "kendall_beyond")),
    Claim("ssr-madry-beyond", "RQ4", "SSR (scale 10) leaves less top-k damage beyond noise than Madry training "
          "at Madry's training eps (SM, top-k ensemble attack, eps 0.1)", _TOPK, "SM-topk", 0.1,
          _paired("ssr", "madry", "topk_beyond")),
    Claim("ssr-madry-beyond-eps0.2", "RQ4", "SSR (scale 10) leaves less top-k damage beyond noise than Madry "
          "training at twice Madry's training eps (SM, top-k attack, eps 0.2)", _TOPK, "SM-topk-large", 0.2,
          _paired("ssr", "madry", "topk_beyond", attack="SM-topk-large", floor="SM-random-large", eps=0.2)),
    Claim("ssr-matched-natural", "RQ4", "SSR (scale 10) leaves less top-k damage beyond noise than natural "
          "training at matched validation accuracy (SM, top-k ensemble attack, eps 0.1)", _TOPK, "SM-topk", 0.1,
          _matched("ssr", "topk_beyond")),
    Claim("madry-matched-natural", "RQ4", "Madry training leaves less top-k damage beyond noise than natural "
          "training at matched validation accuracy (SM, top-k ensemble attack, eps 0.1)", _TOPK, "SM-topk", 0.1,
          _matched("madry", "topk_beyond")),
    Claim("wd-natural-beyond", "RQ4", "L2 weight decay (5e-3), the 'weight-decay based' reading of SSR, leaves "
          "less top-k damage beyond noise than natural training (SM, top-k ensemble attack, eps 0.1)", _TOPK,
          "SM-topk", 0.1, _paired("weight_decay", "natural", "topk_beyond")),
    Claim("ignorm-natural-ig", "RQ4", "IG-NORM fine-tuning leaves less IG top-k damage beyond noise than "
          "natural fine-tuning of the same models (IG, top-k attack, eps 0.1)", _TOPK + " on IG", "IG-topk", 0.1,
          _ignorm),
    Claim("sg-sm-beyond", "RQ4", "SmoothGrad maps take less top-k damage beyond noise than SM maps on the same "
          "natural models (each attacked directly, beta 10, 10 steps, eps 0.1)", _TOPK, "SG-topk-b10", 0.1,
          _smoothing("SG")),
    Claim("ug-sm-beyond", "RQ4", "Uniform Gradient maps take less top-k damage beyond noise than SM maps on the "
          "same natural models (each attacked directly, beta 10, 10 steps, eps 0.1)", _TOPK, "UG-topk-b10", 0.1,
          _smoothing("UG")),
    Claim("curvature-within", "RQ1", "Within natural models, images with larger lambda_max take more top-k damage "
          "beyond noise, at equal clean confidence (SM, top-k ensemble attack, eps 0.1)",
          "Spearman(lambda_max, damage beyond noise | confidence)", "SM-topk", 0.1, _curvature_within),
    Claim("curvature-across", "RQ1", "Across models, smaller mean lambda_max goes with less top-k damage beyond "
          "noise, at equal clean accuracy (SM, top-k ensemble attack, eps 0.1)",
          "Spearman(lambda_max, damage beyond noise | accuracy) over models", "SM-topk", 0.1, _curvature_across),
    Claim("bound-topk", "RQ2", "On natural models a larger L*||delta|| (L measured at the attack's own ||delta|| "
          "on independent directions) goes with a larger top-k change under the attack (SM-topk, eps 0.1)",
          "Spearman(L*||delta||, 1 - top-k)", "SM-topk", 0.1, _bound("bound_topk_change")),
    Claim("bound-kendall", "RQ2", "On natural models a larger L*||delta|| goes with a larger Kendall change under "
          "the attack (SM-topk, eps 0.1)", "Spearman(L*||delta||, 1 - Kendall)", "SM-topk", 0.1,
          _bound("bound_kendall_change")),
    Claim("bound-l2", "RQ2", "On natural models a larger L*||delta|| goes with a larger L2 change of the "
          "normalised map under the attack (SM-topk, eps 0.1)", "Spearman(L*||delta||, ||m' - m||)", "SM-topk",
          0.1, _bound("bound_map_change")),
    Claim("transfer-ssr", "RQ3", "Attacks transfer less between SM, IG, SG and UG on SSR models than on natural "
          "models, relative to each method's direct attack, beyond noise (top-k, beta 10, eps 0.1)",
          "relative transfer beyond noise", "*-topk-b10", 0.1, _transfer("ssr")),
    Claim("transfer-madry", "RQ3", "Attacks transfer less between SM, IG, SG and UG on Madry models than on "
          "natural models, relative to each method's direct attack, beyond noise (top-k, beta 10, eps 0.1)",
          "relative transfer beyond noise", "*-topk-b10", 0.1, _transfer("madry")),
    # beyond the paper (family "beyond", its own Holm correction): other metrics, another threat model, and
    # whether the robustness gains keep the maps faithful
    Claim("ssr-natural-lens", "RQ4", "SSR (scale 10) leaves less LENS-top-k damage (3x3 neighbourhood, Kamath et "
          "al.) beyond random noise than natural training (SM, top-k ensemble attack, eps 0.1)",
          "damage beyond noise (3-LENS recall@k)", "SM-topk", 0.1, _paired("ssr", "natural", "lens_beyond"),
          family="beyond"),
    Claim("ssr-natural-l2", "RQ4", "SSR (scale 10) leaves less top-k damage beyond random noise than natural "
          "training under an L2 attack (SM, top-k attack, L2 radius 1.0)", _TOPK, "SM-topk-l2", 1.0,
          _paired("ssr", "natural", "topk_beyond", attack="SM-topk-l2", floor="SM-random-l2", eps=1.0),
          family="beyond"),
    Claim("ssr-natural-deletion", "faithfulness", "SSR (scale 10) SM maps are more faithful than natural "
          "training's: lower deletion AUC relative to the clean probability (no attack)",
          "deletion AUC (relative)", "none", None, _faithful("ssr", "natural", "deletion_auc_relative"),
          family="beyond"),
    Claim("madry-natural-deletion", "faithfulness", "Madry-trained SM maps are more faithful than natural "
          "training's: lower deletion AUC relative to the clean probability (no attack)",
          "deletion AUC (relative)", "none", None, _faithful("madry", "natural", "deletion_auc_relative"),
          family="beyond"),
    Claim("ssr-natural-infidelity", "faithfulness", "SSR (scale 10) SM attributions have lower infidelity "
          "(Yeh et al., scale-normalised) than natural training's (no attack)", "infidelity", "none", None,
          _faithful("ssr", "natural", "infidelity"), family="beyond"),
    Claim("sg-sm-deletion", "faithfulness", "On natural models SmoothGrad maps are more faithful than SM maps: "
          "lower deletion AUC relative to the clean probability (no attack)", "deletion AUC (relative)", "none",
          None, _faithful("natural", "natural", "deletion_auc_relative", method="SG", baseline_method="SM"),
          family="beyond"),
    Claim("rep-ssr-natural", "RQ4", "Replication (new images, seeds 3-4): SSR leaves less top-k damage beyond "
          "noise than natural training (SM, top-k ensemble attack, eps 0.1)", _TOPK, "SM-topk-rep", 0.1,
          _paired("ssr", "natural", "topk_beyond", attack="SM-topk-rep", floor="SM-random-rep", replication=True),
          family="replication"),
    Claim("rep-madry-natural", "RQ4", "Replication (new images, seeds 3-4): Madry training leaves less top-k "
          "damage beyond noise than natural training (SM, top-k ensemble attack, eps 0.1)", _TOPK, "SM-topk-rep",
          0.1, _paired("madry", "natural", "topk_beyond", attack="SM-topk-rep", floor="SM-random-rep",
                       replication=True), family="replication"),
    Claim("rep-ssr-madry", "RQ4", "Replication (new images, seeds 3-4): SSR leaves less top-k damage beyond noise "
          "than Madry training (SM, top-k ensemble attack, eps 0.1)", _TOPK, "SM-topk-rep", 0.1,
          _paired("ssr", "madry", "topk_beyond", attack="SM-topk-rep", floor="SM-random-rep", replication=True),
          family="replication"),
]


def claims_table(tables: Tables, *, claims: list[Claim] | None = None, seed: int = 0,
                 alpha: float = 0.05) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every claim as a row (Holm within each family, verdicts) and the claims that could not be estimated."""
    rows, gaps = [], []
    for c in CLAIMS if claims is None else claims:
        rng = np.random.default_rng(claim_seed(seed, c.id))
        try:
            res = c.compute(tables, rng)
        except NotEstimable as exc:
            gaps.append({"id": c.id, "rq": c.rq, "claim": c.text, "reason": str(exc)})
            continue
        if not np.isfinite(res.estimate):
            gaps.append({"id": c.id, "rq": c.rq, "claim": c.text, "reason": f"no estimate ({res.method})"})
            continue
        side = ("paper's side" if res.ci_low > 0 else "other side" if res.ci_high < 0 else "includes 0") \
            if np.isfinite(res.ci_low) else "no interval"
        rows.append({"rq": c.rq, "id": c.id, "family": c.family, "claim": c.text, "metric": c.metric,
                     "attack": c.attack, "epsilon": c.epsilon, "effect": res.estimate, "ci_low": res.ci_low,
                     "ci_high": res.ci_high, "p_value": res.p_value, "n_images": res.n_images,
                     "n_seeds": res.n_seeds, "n_models": res.n_models, "uncorrected": side, "method": res.method})
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_adjusted", "verdict")])
    table["p_adjusted"] = np.nan
    for _, idx in table.groupby("family").groups.items():
        p = table.loc[idx, "p_value"].to_numpy(float)
        table.loc[idx, "p_adjusted"] = holm(np.where(np.isfinite(p), p, 1.0))
    table["verdict"] = [verdict(lo, hi, p, alpha=alpha) for lo, hi, p in
                        zip(table.ci_low, table.ci_high, table.p_adjusted)]
    return table[COLUMNS], pd.DataFrame(gaps, columns=["id", "rq", "claim", "reason"])


_FOUND = {"reproduces": "our data support it", "not shown": "our data cannot tell at this power",
          "contradicted": "our data point the other way"}


def plain_words(row) -> str:
    """"The paper says ... We found ..." for one claims-table row (a dict or a pandas row); never cut."""
    r = dict(row)
    return (f"{r['claim']}: effect {r['effect']:+.3g} (95% CI {r['ci_low']:.3g} to {r['ci_high']:.3g}; positive = "
            f"the paper's direction; Holm p = {r['p_adjusted']:.2g}; {int(r['n_seeds'])} seeds, "
            f"{int(r['n_images'])} images, {int(r['n_models'])} models), so {_FOUND[r['verdict']]} "
            f"({r['verdict']}).")
