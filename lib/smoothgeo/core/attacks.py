"""The iterative attribution attack: one loop, four losses, two threat models (L-inf and L2).

Ghorbani et al. 2019 ("Interpretation of Neural Networks is Fragile", arXiv 1710.10547) for top-k, mass-centre
and random; Dombrowski et al. 2019 ("Explanations can be manipulated and geometry is to blame",
arXiv 1906.07983) for the targeted attack. Every kind runs the same loop (:func:`attack`)::

    x'_{t+1} = Proj_{B_inf(x, eps) ∩ [0,1]}(x'_t - step_size * sign(grad_x loss(x'_t)))

(``norm="l2"``: the L2 ball, with the step ``step_size * grad / ||grad||_2``; :mod:`smoothgeo.core.threat`
holds the projection, steps and noise of both balls.)

and the kinds differ only in the loss handed to it (``LOSSES``, each *minimised*, one value per image) and in
the score used to pick the returned iterate (``SCORES``, lower = more successful attack):

* ``topk``: loss = map mass on the clean top-k pixels; score = top-k intersection with the clean map.
* ``mass_center``: loss = -||C(map) - C(clean map)||^2; score = -(centre-of-mass dislocation).
* ``targeted``: loss = ``map_weight * mean_pixels (map - target)^2 + output_weight * sum_classes (softmax(x')
  - softmax(x))^2`` (Dombrowski et al.; the softmax is the surrogate's); score = mean squared distance between
  the map and the target map.
* ``random``: no loss; each step is a fresh draw ``x + eps * s``, s uniform in {-1, +1}^d (clipped to
  [0, 1]), independent of the previous iterate: the floor every real attack must beat. ``steps`` draws per
  restart, the accepted one with the lowest top-k intersection is kept. (Ghorbani et al.'s code instead walks
  with random signed steps of size ``step_size``.) The draws are ``steps * restarts`` sign draws plus one
  uniform start per restart after the first, whatever the method (the attribution only scores each draw), and
  an ensemble does not multiply them (``random`` runs once), so the same ``steps`` and ``restarts`` give every
  method the same floor; rejected draws count.

Losses are computed on the surrogate's map; scores on the original model's map.

Design choices (see :func:`attack` for the arguments):

* The attack direction comes from ``softplus_copy(model, beta)`` (a ReLU net's map has zero gradient almost
  everywhere); the label check, the clean map and every score use the original ``model``. ``beta=None`` uses
  the model itself (for already smooth models).
* A proposal whose prediction on the original model differs from ``y`` is rejected: it is never returned, and
  ``on_reject`` says what the image does next:

  - ``"backtrack"`` (default): the image stays at its last accepted iterate and its own step size is halved for
    its next proposal, down to a floor of ``step_size / 2**stall_window``; each accepted proposal doubles it
    again, up to ``step_size``. Since the label is kept at the accepted iterate, a small enough step is
    accepted, so the attack cannot get stuck on one rejected step. With no rejection the run is exactly the
    plain fixed-step loop.
  - ``"revert"``: the image goes back to its last accepted iterate with the same step size. Deterministic
    methods (SM, IG) then propose the same step again, so a rejected image *stalls* there for good; random
    ones (SG, UG) draw new noise and may move on. (The behaviour before ``"backtrack"`` existed.)
  - ``"continue"``: keep walking from the rejected point, as Ghorbani et al.'s reference code does (still never
    returning it).

  ``kind="random"`` draws every proposal around ``x`` itself, so ``on_reject`` does not change its proposals.
* A run (one restart) *ended stalled* for an image when its last ``stall_window`` proposals were all rejected.
  Under ``"revert"`` with SM/IG that is the first rejection repeated; under ``"backtrack"`` it means that even a
  step of at most ``step_size / 2**(stall_window - 1)`` changed the label (the image sits on the decision
  boundary, where the attack has nowhere left to go).
  ``AttackResult.stalled`` reports it for the run that produced ``x_adv``, ``stalled_runs`` counts all runs.
* Only correctly classified images (``model(x).argmax(1) == y``) are attacked; the others come back unchanged
  with ``attacked=False`` and NaN scores.
* Restart 0 starts at ``x``; later restarts start at ``x + U[-eps, eps]^d`` (itself a proposal that must keep
  the label, else the restart starts at ``x``). Per image the restart whose returned iterate has the lowest
  Kendall tau with the clean map wins, whatever the kind (the paper's protocol).
* Ensembles (adaptive attacks): ``surrogates=(1, 3, 10, 30)`` runs every restart once per surrogate beta (None =
  the model's own gradient) and returns per image the worst of all (member, restart) runs under one flat rule,
  ``select`` ("kendall" by default, as for restarts, so an ensemble is just more restarts and the choice does
  not depend on how runs are grouped; "score" picks by the kind's own objective instead). Every member reuses
  the same seeds, so member j's runs are bit for bit those of ``attack(..., surrogates=[beta_j])`` and the
  ensemble is never weaker than any member alone. The clean evaluation is shared by all members.
* Scores of SG/UG iterates use *common random numbers*: the original model's map is evaluated with a generator
  reseeded to the same seed for the clean image and every iterate, so iterates differ by the input, not by the
  noise draw. The evaluation engine (:mod:`smoothgeo.core.evaluation`) re-evaluates with independent draws.
  The surrogate's SG/UG noise for the attack direction is a fresh draw every step (one seeded generator).
* An image whose attack direction is exactly zero in a step (e.g. the mass-centre loss at the clean point when
  the surrogate *is* the model) takes a random sign step instead; ``AttackResult.zero_directions`` counts them.
* Reproducibility: every random draw comes from a ``torch.Generator`` on the inputs' device seeded from
  ``seed`` (via :func:`derive_seed`); with the same seed, inputs and ``batch_size`` results are identical.
"""
from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothgeo.core.attributions import METHODS, attribute, make_generator, map_of
from smoothgeo.core.checks import check_images, eval_mode, finite_number, finite_tensor
from smoothgeo.core.metrics import kendall_tau, mass_center, mass_center_dislocation, topk_intersection
from smoothgeo.core.models import softplus_copy
from smoothgeo.core.threat import NORMS, Threat, check_norm
from smoothgeo.core.threat import size as perturbation_size

__all__ = ["attack", "AttackResult", "KINDS", "LOSSES", "SCORES", "CONVENTIONS", "RANDOM_METHODS",
           "derive_seed", "eval_mode", "check_images", "NORMS"]

KINDS = ("topk", "mass_center", "targeted", "random")
CONVENTIONS = ("grad_times_input", "abs")
RANDOM_METHODS = frozenset({"SG", "UG"})
ON_REJECT = ("backtrack", "revert", "continue")
SELECT = ("kendall", "score")
#: block size (elements) of :func:`~smoothgeo.core.metrics.kendall_tau` here: cache-sized blocks are ~5x faster than its
#: default on 28x28 maps, and the result is bit-identical (the block sums are integers, exact in float64)
KENDALL_BLOCK = 2 ** 18
#: most steps (and restarts) one attack takes: a larger number is a typo (1e300 would never finish)
MAX_STEPS = 1_000_000


def derive_seed(seed: int, *keys) -> int:
    """A 63-bit seed from ``seed`` and any hashable-by-repr keys (stable across runs, unlike ``hash``)."""
    digest = hashlib.sha256(repr((int(seed),) + tuple(keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class AttackResult:
    """What :func:`attack` returns; every tensor has the batch first and lives on ``x``'s device.

    Attributes:
        x_adv: (N, C, H, W) the returned iterate per image (``x`` itself where nothing was accepted or the image
            was not attacked).
        attacked: (N,) bool, the image was correctly classified and hence attacked.
        label_kept: (N,) bool, the original model predicts the same class on ``x_adv`` as on ``x`` (a check: the
            loop only returns accepted iterates).
        score: (N,) the kind's score of ``x_adv`` (see the module table; lower = stronger attack), NaN where
            not attacked.
        kendall: (N,) Kendall tau between the clean map and the map at ``x_adv`` (original model), NaN where
            not attacked.
        restart: (N,) long, the restart that produced ``x_adv``.
        member: (N,) long, the ensemble member (index into ``surrogates``) that produced ``x_adv``; 0 without an
            ensemble and for ``kind="random"``.
        accepted_steps: (N,) long, proposals accepted (label kept), over all members and restarts; a random start
            counts as a proposal.
        rejected_steps: (N,) long, proposals rejected for changing the label, over all members and restarts.
        stalled: (N,) bool, the run that produced ``x_adv`` ended stalled: its last ``stall_window`` proposals
            were all rejected (see the module docstring); False where not attacked.
        stalled_runs: (N,) long, runs (member x restart) that ended stalled.
        zero_directions: (N,) long, steps whose attack direction was exactly zero (a random sign step was taken),
            over all members and restarts.
        kendall_worst: (N,) the lowest Kendall tau over all (member, restart) runs, each run's best iterate: the
            ensemble's worst case for Kendall, whichever run ``select`` returned (equal to ``kendall`` with
            ``select="kendall"``); NaN where not attacked.
        linf: (N,) L-inf size of ``x_adv - x``.
        l2: (N,) L2 size of ``x_adv - x``.
        kind, method, epsilon, norm: the attack's settings.
        surrogates: the softplus betas of the members (None = the model's own gradient); ``(None,)`` for
            ``kind="random"``, which uses no surrogate.
    """

    x_adv: Tensor
    attacked: Tensor
    label_kept: Tensor
    score: Tensor
    kendall: Tensor
    restart: Tensor
    member: Tensor
    accepted_steps: Tensor
    rejected_steps: Tensor
    stalled: Tensor
    stalled_runs: Tensor
    zero_directions: Tensor
    linf: Tensor
    kendall_worst: Tensor
    kind: str
    method: str
    epsilon: float
    surrogates: tuple = (None,)
    l2: Tensor | None = None
    norm: str = "linf"


# ----------------------------------------------------------------------------------------------------- losses
@dataclass
class _Context:
    """What the losses and scores need to know about the clean images (one attacked batch)."""

    clean_map: Tensor            # (n, H, W) original model's map at x
    clean_mask: Tensor           # (n, H, W) the clean top-k pixels
    clean_center: Tensor         # (n, 2) centre of mass of the clean map
    target_map: Tensor | None    # (n, H, W) normalised target map (targeted)
    clean_probs: Tensor | None   # (n, classes) surrogate's softmax at x (targeted)
    surrogate: nn.Module
    k: int
    map_weight: float
    output_weight: float


def topk_loss(maps: Tensor, x: Tensor, ctx: _Context) -> Tensor:
    """Total map mass on the clean top-k pixels (Ghorbani et al.'s top-k attack)."""
    return (maps * ctx.clean_mask).flatten(1).sum(1)


def mass_center_loss(maps: Tensor, x: Tensor, ctx: _Context) -> Tensor:
    """Minus the squared distance between the map's centre of mass and the clean one."""
    return -(mass_center(maps) - ctx.clean_center).pow(2).sum(1)


def targeted_loss(maps: Tensor, x: Tensor, ctx: _Context) -> Tensor:
    """Dombrowski et al.: ``map_weight * MSE(map, target) + output_weight * ||softmax(x') - softmax(x)||^2``."""
    probs = F.softmax(ctx.surrogate(x), dim=1)
    return (ctx.map_weight * (maps - ctx.target_map).pow(2).flatten(1).mean(1)
            + ctx.output_weight * (probs - ctx.clean_probs).pow(2).sum(1))


#: kind -> loss minimised by the attack step (``random`` has none: its steps are fresh noise draws)
LOSSES: dict[str, Callable[[Tensor, Tensor, _Context], Tensor]] = {
    "topk": topk_loss, "mass_center": mass_center_loss, "targeted": targeted_loss,
}

#: kind -> score of an iterate's map on the original model; lower = stronger attack, the lowest accepted is kept
SCORES: dict[str, Callable[[Tensor, _Context], Tensor]] = {
    "topk": lambda m, ctx: topk_intersection(ctx.clean_map, m, ctx.k),
    "random": lambda m, ctx: topk_intersection(ctx.clean_map, m, ctx.k),
    "mass_center": lambda m, ctx: -mass_center_dislocation(ctx.clean_map, m),
    "targeted": lambda m, ctx: (m - ctx.target_map).pow(2).flatten(1).mean(1),
}


# ---------------------------------------------------------------------------------------------- validation
def _integer(value, name: str, allowed: str, lo: int, hi: float = float("inf")) -> None:
    """ValueError naming ``name`` unless ``value`` is an integer (or an integral float) in [lo, hi]."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and int(value) == value and lo <= value <= hi)
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_settings(*, method, kind, epsilon, step_size, steps, k, beta, restarts, convention, on_reject,
                    n_pixels, batch_size, stall_window, surrogates, select, norm="linf", n_features=1):
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; method must be one of {sorted(METHODS)}")
    if kind not in KINDS:
        raise ValueError(f"unknown attack kind {kind!r}; kind must be one of {list(KINDS)}")
    check_norm(norm, finite_number(epsilon, "epsilon"), n_features)
    if not finite_number(step_size, "step_size") > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    _integer(steps, "steps", f"an integer >= 0 (at most {MAX_STEPS})", 0, MAX_STEPS)
    _integer(k, "k", f"an integer in [1, {n_pixels}] (the number of pixels in a map)", 1, n_pixels)
    if beta is not None and not finite_number(beta, "beta (softplus surrogate)") > 0:
        raise ValueError(f"beta (softplus surrogate) must be > 0, or None to use the model itself, got {beta}")
    _integer(restarts, "restarts", f"an integer >= 1 (at most {MAX_STEPS})", 1, MAX_STEPS)
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown map convention {convention!r}; convention must be one of {list(CONVENTIONS)}")
    if on_reject not in ON_REJECT:
        raise ValueError(f"on_reject must be one of {list(ON_REJECT)}, got {on_reject!r}")
    if select not in SELECT:
        raise ValueError(f"select must be one of {list(SELECT)}, got {select!r}")
    if surrogates is not None:
        if isinstance(surrogates, (str, bytes)) or not hasattr(surrogates, "__len__") or len(surrogates) == 0:
            raise ValueError(f"surrogates must be a non-empty sequence of softplus betas (> 0) or None entries, "
                             f"got {surrogates!r}")
        for b in surrogates:
            if b is not None and not (isinstance(b, numbers.Real) and not isinstance(b, bool) and b > 0
                                      and math.isfinite(b)):
                raise ValueError(f"every entry of surrogates must be a finite softplus beta > 0 or None (the "
                                 f"model's own gradient), got {b!r}")
        if len(set(surrogates)) != len(surrogates):
            raise ValueError(f"surrogates has repeated entries {list(surrogates)}; each member must differ")
    _integer(stall_window, "stall_window", "an integer in [1, 30]", 1, 30)
    if batch_size is not None:
        _integer(batch_size, "batch_size", "an integer >= 1 or None (all images at once)", 1)


def _normalise_target_map(target_map, x: Tensor) -> Tensor:
    n, _, h, w = x.shape
    t = finite_tensor(torch.as_tensor(target_map, dtype=x.dtype, device=x.device), "target_map")
    if t.shape == (h, w):
        t = t.expand(n, h, w)
    if t.shape != (n, h, w):
        raise ValueError(f"target_map must have shape ({h}, {w}) or ({n}, {h}, {w}), got {tuple(t.shape)}")
    if float(t.min()) < 0:
        raise ValueError("target_map must be non-negative (it is compared with normalised |attribution| maps)")
    total = t.flatten(1).sum(1)
    if bool((total <= 0).any()):
        raise ValueError("every target_map must have positive mass")
    return t * (h * w) / total.view(-1, 1, 1)


# --------------------------------------------------------------------------------------------- the loop
def _original_eval(model, x, y, method, options, seed, convention):
    """Logits and map of the original model at ``x``. SG/UG reseed to ``seed`` (common random numbers)."""
    if method == "SM":  # logits and saliency from one forward/backward pass
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xg)
            (grad,) = torch.autograd.grad(logits.gather(1, y.view(-1, 1)).sum(), xg)
        return logits.detach(), map_of(method, grad, x, convention=convention)
    with torch.no_grad():
        logits = model(x)
    gen = make_generator(x.device, seed) if method in RANDOM_METHODS else None
    attr = attribute(method, model, x.detach(), y, generator=gen, **options)
    return logits, map_of(method, attr.detach(), x, convention=convention)


def _direction(kind, surrogate, x, y, method, options, generator, convention, ctx) -> Tensor:
    """``-grad_x loss`` through the surrogate's attribution (double backpropagation); the threat model turns it
    into a step (its sign for L-inf)."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        attr = attribute(method, surrogate, xg, y, generator=generator, create_graph=True, **options)
        loss = LOSSES[kind](map_of(method, attr, xg, convention=convention), xg, ctx)
        (grad,) = torch.autograd.grad(loss.sum(), xg, allow_unused=True)
    return torch.zeros_like(x) if grad is None else -grad


def _attack_batch(model, surrogates, x, y, *, kind, method, options, direction_options, epsilon, step_size, steps,
                  k, restarts, seed, target_map, convention, map_weight, output_weight, on_reject, stall_window,
                  select, bar, norm="linf"):
    """Attack a batch of correctly classified images with every surrogate (member) and restart.

    Returns a dict of per-image tensors named as :class:`AttackResult`'s fields. Every member uses the same
    generators' seeds, so member j's runs are exactly those of an attack with ``surrogates=[surrogates[j]]``.
    """
    n, dev, dt = x.shape[0], x.device, x.dtype
    eval_seed = derive_seed(seed, "select")

    def evaluate(z):
        return _original_eval(model, z, y, method, options, eval_seed, convention)

    _, clean_map = evaluate(x)  # the original model's clean map: computed once, shared by all members
    mask = torch.zeros_like(clean_map.flatten(1), dtype=torch.bool)
    mask.scatter_(1, clean_map.flatten(1).topk(k, dim=1).indices, True)
    base = _Context(clean_map, mask.view_as(clean_map).to(dt), mass_center(clean_map), target_map, None,
                    surrogates[0], k, map_weight, output_weight)
    score_of = SCORES[kind]
    clean_score = score_of(clean_map, base)

    threat = Threat(x, epsilon, norm)
    counts = torch.zeros(n, dtype=torch.long, device=dev)
    out = {"x_adv": x.clone(), "score": clean_score.clone(), "kendall": torch.full((n,), float("nan"), device=dev,
           dtype=dt), "restart": counts.clone(), "member": counts.clone(), "accepted_steps": counts.clone(),
           "rejected_steps": counts.clone(), "stalled": torch.zeros(n, dtype=torch.bool, device=dev),
           "stalled_runs": counts.clone(), "zero_directions": counts.clone()}
    col = (-1,) + (1,) * (x.dim() - 1)
    floor = step_size / 2 ** stall_window

    for j, surrogate in enumerate(surrogates):
        ctx = base
        if kind == "targeted":
            with torch.no_grad():
                ctx = replace(base, surrogate=surrogate, clean_probs=F.softmax(surrogate(x), dim=1))
        g_direction = make_generator(dev, derive_seed(seed, "direction"))   # surrogate SG/UG noise
        g_threat = make_generator(dev, derive_seed(seed, "threat"))         # random steps, starts, fallbacks
        for r in range(restarts):
            best_x, best_map, best_score = x.clone(), clean_map.clone(), clean_score.clone()
            x_cur = x.clone()
            alpha = torch.full((n,), step_size, device=dev, dtype=dt)    # per-image step size ("backtrack")
            run_rejected = torch.zeros(n, dtype=torch.long, device=dev)  # consecutive rejections so far

            def propose(x_prop, x_cur):
                nonlocal best_x, best_map, best_score, alpha, run_rejected
                logits, m = evaluate(x_prop)
                ok = logits.argmax(1) == y
                s = score_of(m, ctx)
                better = ok & (s < best_score)
                best_x = torch.where(better.view(col), x_prop, best_x)
                best_map = torch.where(better.view(-1, 1, 1), m, best_map)
                best_score = torch.where(better, s, best_score)
                out["accepted_steps"] += ok.long()
                out["rejected_steps"] += (~ok).long()
                run_rejected = torch.where(ok, 0, run_rejected + 1)
                if on_reject == "continue":
                    return x_prop
                if on_reject == "backtrack":
                    alpha = torch.where(ok, (2 * alpha).clamp_max(step_size), (alpha / 2).clamp_min(floor))
                return torch.where(ok.view(col), x_prop, x_cur)

            if r > 0:  # random start inside the ball
                x_cur = propose(threat.project(threat.random_start(g_threat)), x_cur)
            for _ in range(steps):
                if kind == "random":
                    x_prop = threat.noise(g_threat)
                else:
                    d = _direction(kind, surrogate, x_cur, y, method, direction_options, g_direction, convention,
                                   ctx)
                    flat = d.flatten(1).abs().amax(1) == 0
                    if bool(flat.any()):
                        out["zero_directions"] += flat.long()
                        d = torch.where(flat.view(col), threat.fallback(g_threat), d)
                    d = threat.step(d)
                    x_prop = x_cur + (step_size * d if on_reject != "backtrack" else alpha.view(col) * d)
                x_cur = propose(threat.project(x_prop), x_cur)
                bar.update(1)

            tau = kendall_tau(clean_map, best_map, max_elements=KENDALL_BLOCK)
            run_stalled = run_rejected >= stall_window
            out["stalled_runs"] += run_stalled.long()
            if j == 0 and r == 0:
                take = torch.ones(n, dtype=torch.bool, device=dev)
            else:  # one flat rule over all (member, restart) runs; ties keep the earlier run
                take = tau < out["kendall"] if select == "kendall" else best_score < out["score"]
            out["kendall_worst"] = tau if j == 0 and r == 0 else torch.minimum(out["kendall_worst"], tau)
            out["x_adv"] = torch.where(take.view(col), best_x, out["x_adv"])
            for key, value in (("score", best_score), ("kendall", tau), ("stalled", run_stalled),
                               ("restart", torch.full_like(counts, r)), ("member", torch.full_like(counts, j))):
                out[key] = torch.where(take, value, out[key])
    return out


def attack(model: nn.Module, x: Tensor, y, *, method: str = "SM", kind: str = "topk", epsilon: float = 0.1,
           step_size: float = 0.01, steps: int = 100, k: int = 100, beta: float | None = 10.0,
           restarts: int = 1, seed: int = 0, method_options: dict | None = None,
           direction_options: dict | None = None, target_map=None,
           convention: str = "grad_times_input", map_weight: float = 1.0, output_weight: float = 1.0,
           on_reject: str = "backtrack", batch_size: int | None = None, progress: bool = False,
           stall_window: int = 5, surrogates: Sequence[float | None] | None = None,
           select: str = "kendall", norm: str = "linf") -> AttackResult:
    """Iterative attack on an attribution method (see the module docstring for the loop and the kinds).

    Args:
        model: maps (N, C, H, W) images in [0, 1] to logits; every score and the label check use it.
        x: (N, C, H, W) clean images in [0, 1].
        y: (N,) labels; only images with ``model(x).argmax(1) == y`` are attacked.
        method: the attacked attribution, one of "SM", "IG", "SG", "UG".
        kind: "topk", "mass_center", "targeted" or "random".
        epsilon: radius of the ball: L-inf in pixel units, in [0, 1]; L2 in [0, sqrt(C*H*W)].
        step_size: alpha, the size of each step (> 0; unused by "random"): the signed step's size for L-inf, the
            step's L2 length for L2.
        steps: iterations per restart (for "random": noise draws per restart, the same for every method).
        k: pixels in the top-k set, in [1, H*W].
        beta: softplus beta of the surrogate that gives the attack direction; None uses ``model`` itself.
            Ignored when ``surrogates`` is given.
        restarts: runs per image; restarts after the first start at a uniform random point of the ball; per
            image the run with the lowest Kendall tau wins.
        seed: seeds every random draw (noise of SG/UG, random steps and starts).
        method_options: keyword options of the attribution, e.g. ``{"steps": 50}`` for IG,
            ``{"noise_level": 0.1, "samples": 50}`` for SG, ``{"radius": 0.1, "samples": 50}`` for UG,
            ``{"chunk_size": 10}``. Used for the surrogate and the original model alike.
        direction_options: overrides of ``method_options`` for the surrogate's attribution only (the attack
            direction), e.g. ``{"samples": 10}`` for SG/UG or ``{"steps": 10}`` for IG: much cheaper, while
            the scores and the label check keep the full ``method_options``. SG/UG draw fresh noise every
            step, so fewer samples make a stochastic gradient rather than a biased one.
        target_map: (H, W) or (N, H, W) non-negative target for ``kind="targeted"`` (normalised to sum H*W).
        convention: the map convention of :func:`smoothgeo.core.attributions.map_of`.
        map_weight, output_weight: weights of the two squared errors of the targeted loss.
        on_reject: what a label-changing proposal does (it is never returned): "backtrack" (default; back to the
            last accepted iterate with the image's step size halved, floor ``step_size / 2**stall_window``,
            doubled again after each acceptance), "revert" (back to the last accepted iterate, same step: SM/IG
            stall there) or "continue" (keep walking from it, as the reference code).
        batch_size: attack this many images at a time (memory); None = all at once. Results with a fixed seed
            are reproducible for a fixed batch_size.
        progress: show a tqdm bar over the iterations.
        stall_window: a run ended *stalled* for an image when its last ``stall_window`` proposals were all
            rejected (``AttackResult.stalled``); also sets the backtracking floor. Integer in [1, 30].
        surrogates: an attack ensemble: one softplus beta per member (None = the model's own gradient, for
            already smooth models), e.g. ``(1, 3, 10, 30)``. Each member runs all ``restarts`` with the same seeds
            (so member j alone is ``attack(..., surrogates=[surrogates[j]])``), and per image the worst run over
            members and restarts is returned (``select``); ``AttackResult.member`` says which. None (default):
            one member, ``beta``. ``kind="random"`` uses no surrogate and runs once.
        select: how the returned run is chosen per image among all (member, restart) runs, one flat rule:
            "kendall" (default; lowest Kendall tau with the clean map, the paper's restart rule, defined and
            comparable for every kind) or "score" (lowest score of the kind, i.e. the kind's own objective:
            top-k intersection, dislocation, distance to the target). Ties keep the earlier run (members in
            the given order, restarts inside each member). Within a run the iterate is always the one with the
            lowest score.
        norm: the threat model, "linf" (default) or "l2" (:mod:`smoothgeo.core.threat`).
    Returns:
        :class:`AttackResult`.
    Raises:
        ValueError: a setting is out of range or the inputs have the wrong shape or range.
    """
    y = check_images(x, y, model=model)
    _, _, h, w = x.shape
    _check_settings(method=method, kind=kind, epsilon=epsilon, step_size=step_size, steps=steps, k=k, beta=beta,
                    restarts=restarts, convention=convention, on_reject=on_reject, n_pixels=h * w,
                    batch_size=batch_size, stall_window=stall_window, surrogates=surrogates, select=select,
                    norm=norm, n_features=x[0].numel())
    for weight, value in (("map_weight", map_weight), ("output_weight", output_weight)):
        finite_number(value, weight)
    betas = (beta,) if surrogates is None else tuple(None if b is None else float(b) for b in surrogates)
    if kind == "random":
        betas = (None,)
    options = dict(method_options or {})
    direction_options = {**options, **(direction_options or {})}
    if "generator" in direction_options:
        raise ValueError("method_options must not contain 'generator'; randomness comes from seed")
    if kind == "targeted":
        if target_map is None:
            raise ValueError("kind='targeted' needs target_map, an (H, W) or (N, H, W) non-negative map")
        target_map = _normalise_target_map(target_map, x)
    elif target_map is not None:
        raise ValueError(f"target_map is only used by kind='targeted', not kind={kind!r}")
    if None in betas and kind != "random" and any(isinstance(m, nn.ReLU) for m in model.modules()):
        import warnings
        warnings.warn("attack(beta=None) or a None surrogate on a model with nn.ReLU: the map's gradient is zero "
                      "almost everywhere, so that attack degenerates to random steps; pass beta (e.g. 10) for a "
                      "softplus surrogate", stacklevel=2)
    from tqdm.auto import tqdm

    n, dev = x.shape[0], x.device
    x = x.detach()
    with eval_mode(model):
        with torch.no_grad():
            clean_pred = model(x).argmax(1)
        attacked = clean_pred == y
        try:  # surface bad method_options with a clear message before any work
            for opts in [options] + ([direction_options] if direction_options != options else []):
                attribute(method, model, x[:1], y[:1], generator=make_generator(dev, 0), **opts)
        except TypeError as exc:
            raise ValueError(f"method_options {opts} not accepted by method {method!r}: {exc}") from None
        members = []
        for b in betas:
            surrogate = model
            if b is not None:
                surrogate = softplus_copy(model, b).eval()
                for p in surrogate.parameters():
                    p.requires_grad_(False)
            members.append(surrogate)

        nan = torch.full((n,), float("nan"), device=dev, dtype=x.dtype)
        counts = torch.zeros(n, dtype=torch.long, device=dev)
        out = {"x_adv": x.clone(), "score": nan, "kendall": nan.clone(), "kendall_worst": nan.clone(),
               "restart": counts,
               "member": counts.clone(), "accepted_steps": counts.clone(), "rejected_steps": counts.clone(),
               "stalled": torch.zeros(n, dtype=torch.bool, device=dev), "stalled_runs": counts.clone(),
               "zero_directions": counts.clone()}
        index = attacked.nonzero().flatten()
        size = len(index) if batch_size is None else int(batch_size)
        chunks = [index[i:i + size] for i in range(0, len(index), max(size, 1))]
        bar = tqdm(total=len(chunks) * len(members) * restarts * steps, disable=not progress, leave=False,
                   desc=f"{kind} {method} eps={epsilon:g}")
        try:
            for b, idx in enumerate(chunks):
                tm = None if target_map is None else target_map[idx]
                part = _attack_batch(model, members, x[idx], y[idx], kind=kind, method=method, options=options,
                                    direction_options=direction_options,
                                    epsilon=float(epsilon), step_size=float(step_size), steps=int(steps), k=int(k),
                                    restarts=int(restarts), seed=derive_seed(seed, "batch", b), target_map=tm,
                                    convention=convention, map_weight=map_weight, output_weight=output_weight,
                                    on_reject=on_reject, stall_window=int(stall_window), select=select,
                                    bar=bar, norm=norm)
                for key, value in part.items():
                    out[key][idx] = value
        finally:
            bar.close()
        with torch.no_grad():
            label_kept = model(out["x_adv"]).argmax(1) == clean_pred
    return AttackResult(**out, attacked=attacked, label_kept=label_kept,
                        linf=perturbation_size(out["x_adv"] - x, "linf"), l2=perturbation_size(out["x_adv"] - x, "l2"), kind=kind,
                        method=method, epsilon=float(epsilon), surrogates=betas, norm=norm)
