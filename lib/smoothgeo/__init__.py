"""smoothgeo: smoothed geometry for robust attribution (Wang et al., NeurIPS 2020).

Modules, one per concern:
    data          Fashion-MNIST / CIFAR-10 / Flowers-102 / ImageNet loaders (images in [0, 1])
    models        the networks, ``softplus_copy``
    attributions  SM, IG, SmoothGrad, Uniform Gradient and the 2-D attribution map
    metrics       top-k intersection, Kendall, Spearman, mass-centre, cosine (batched torch)
    attacks       the one iterative L-inf attribution attack loop and its losses
    evaluation    the evaluation engine (tidy DataFrame) and noise floors
    training      natural / weight decay / Madry / IG-NORM / SSR recipes
    geometry      input-Hessian lambda_max and empirical gradient-Lipschitz estimates
    checkpoints   atomic checkpoint and JSON writing, safe loading
"""

__version__ = "0.1.0"
