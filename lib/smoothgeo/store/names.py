"""The names under which a run stores its things: model names and attack setting ids.

* Model names: a checkpoint name (``natural-s0``: ``data/checkpoints/natural-s0.pt``) or an inference-time
  softplus copy ``BASE+softplus<beta>`` (``natural-s0+softplus3``: the base network with Softplus(3)).
  :func:`parse_model_name` splits one.
* Setting ids: one attack setting of ``params["attacks"]["settings"]`` at one epsilon, ``<name>-eps<epsilon>``
  (``SM-topk-eps0.1``), the key of the attack records and the ``setting`` column of the attack tables.
  :func:`setting_id` builds one; every stage, notebook and report builds it here.

Nothing here reads or writes a file.
"""
from __future__ import annotations

import math

__all__ = ["parse_model_name", "setting_id"]


def parse_model_name(name: str) -> tuple[str, float | None]:
    """``"natural-s0+softplus3"`` -> ``("natural-s0", 3.0)``; a plain checkpoint name -> ``(name, None)``.

    Raises:
        ValueError: a ``+softplus`` suffix without a finite beta > 0, or without a base name.
    """
    base, sep, beta = name.rpartition("+softplus")
    if not sep:
        return name, None
    try:
        value = float(beta)
    except ValueError:
        value = float("nan")
    if not base or not value > 0 or not math.isfinite(value):
        raise ValueError(f"model name {name!r} is invalid; allowed: a checkpoint name, or NAME+softplus<beta> "
                         "with beta > 0 (e.g. natural-s0+softplus3)")
    return base, value


def setting_id(name: str, epsilon: float) -> str:
    """The id of setting ``name`` at radius ``epsilon``: ``setting_id("SM-topk", 0.1) == "SM-topk-eps0.1"``.

    The epsilon is written in the shortest ``%g`` form (``0.0314``, ``1e-05``), so equal numbers give equal ids.
    """
    return f"{name}-eps{epsilon:g}"
