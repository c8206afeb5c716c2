"""smoothgeo: smoothed geometry for robust attribution (Wang et al., NeurIPS 2020).

Modules, one per concern:
    data           Fashion-MNIST / CIFAR-10 / Flowers-102 / ImageNet loaders (images in [0, 1])
    standins       synthetic stand-ins in the real file layouts; data_stage: the data stage (real or stand-in)
    profiles       the toy version of a paper-scale profile (``bash scripts/repro.sh cifar10-toy``)
    experiments    the seeded evaluation images every stage shares; clean test accuracy
    models         the networks, ``softplus_copy``
    attributions   SM, IG, SmoothGrad, Uniform Gradient and the 2-D attribution map
    captum_methods any Captum attribution as an evaluated method (``captum:<Class>``)
    metrics        top-k intersection, Kendall (ranks: the O(P log P) route), Spearman, mass-centre, cosine
    attacks        the one iterative L-inf attribution attack loop: losses, surrogate ensemble, backtracking
    targets        target maps of the targeted attack
    evaluation     compute_maps / compare_maps, the evaluation engine, noise floors
    training       natural / weight decay / Madry / IG-NORM / SSR recipes; train: the training CLI
    geometry       lambda_max (exact, Ritz, merged classes, power iteration), scale-invariant curvature,
                   Lipschitz ratios, the bound test
    attack_stage   pipeline stage: every attack of one model, once (distributed: sharded over processes);
                   attack_config: the params ``attacks`` section, its checks and the settings of a model
    measure_stage  pipeline stage: per-image geometry of one model, once
    results        the tidy result tables; analysis: per-model tables, frontiers, diagnostics
    stats          bootstrap over seeds and images, paired differences, Holm, partial Spearman, transfer
    claims         claim rows and verdicts; summary: the claims stage and the report
    notebook       parameters cells from params.yaml and the papermill runner; progress: compact progress
    timed          stage wall time and peak memory
    checkpoints    checksummed checkpoints loaded with weights_only=True; io: atomic writes, params
"""

__version__ = "0.1.0"
