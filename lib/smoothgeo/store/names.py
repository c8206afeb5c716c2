"""The names under which a run stores its things: model names and attack setting ids.

* Model names: a checkpoint name (``natural-s0``: ``data/checkpoints/natural-s0.pt``) or an inference-time
  softplus copy ``BASE+softplus<beta>`` (``natural-s0+softplus3``: the base network with Softplus(3)).
  :func:`parse_model_name` splits one.
* Setting ids: one attack setting of ``params["attacks"]["settings"]`` at one epsilon, ``<name>-eps<epsilon>``
  (``SM-topk-eps0.1``), the key of the attack records and the ``setting`` column of the attack tables.
  :func:`setting_id` builds one; every stage, notebook and report builds it here.
* The name rule (:data:`NAME_RULE`, ``^[A-Za-z0-9][A-Za-z0-9_.+-]*$``): every model, run, setting and profile
  name becomes a file name and is pasted into DVC's shell commands, so it may hold only letters, digits and
  ``_ . + -``, starting with a letter or digit (no ``/``, ``..`` as a path, spaces, ``;``, ``$`` or a leading
  ``-``). :func:`check_name` checks one; :func:`check_param_names` every name of a params file (called by
  :func:`smoothgeo.store.atomic.load_params`); :func:`cli_name` is the ``type=`` of the CLIs' ``--name`` and
  ``--model``.

Nothing here reads or writes a file.
"""
from __future__ import annotations

import math
import re

__all__ = ["parse_model_name", "family_and_seed", "setting_id", "NAME_RULE", "check_name", "check_param_names", "cli_name"]


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


_FAMILY = re.compile(r"^(?P<family>.+?)-s(?P<seed>\d+)(?P<suffix>\+.*)?$")


def family_and_seed(name: str) -> tuple[str, int]:
    """``"ssr10-s2"`` -> ("ssr10", 2); ``"natural-s0+softplus3"`` -> ("natural+softplus3", 0); no ``-sN``: seed 0.

    The one parser of the naming convention ``<group>-s<seed>[+softplus<beta>]`` (params.yaml's model names).
    """
    m = _FAMILY.match(str(name))
    if not m:
        return str(name), 0
    return m["family"] + (m["suffix"] or ""), int(m["seed"])


def setting_id(name: str, epsilon: float) -> str:
    """The id of setting ``name`` at radius ``epsilon``: ``setting_id("SM-topk", 0.1) == "SM-topk-eps0.1"``.

    The epsilon is written in the shortest ``%g`` form (``0.0314``, ``1e-05``), so equal numbers give equal ids.
    """
    return f"{name}-eps{epsilon:g}"


#: model, run, setting and profile names: letters, digits and ``_ . + -``, starting with a letter or digit
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def check_name(name, key: str) -> str:
    """``name`` if it follows :data:`NAME_RULE`, else ``ValueError`` naming ``key`` (where the name came from).

    ``key`` is the params key or CLI option, e.g. ``"models.natural-s0"`` or ``"--model"``.
    """
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise ValueError(f"{key}={name!r} is not a valid name; allowed: letters, digits and _ . + - , starting "
                         f"with a letter or digit (e.g. natural-s0, natural-s0+softplus3): names become file "
                         f"names and parts of DVC's shell commands, so '/', '..', spaces, ';' and the like are "
                         f"refused")
    return name


def _names_in(value, key: str):
    """(name, key) for every string of a comparisons entry: mapping keys and list items, nested."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, f"{key}.{k}"
            yield from _names_in(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _names_in(v, f"{key}[{i}]")
    else:
        yield value, key


def check_param_names(params: dict) -> dict:
    """Check every name a params file gives (``ValueError`` naming the key); returns ``params`` unchanged.

    The names checked: the run names of ``train.scratch`` and ``train.finetune`` and each fine-tuning run's
    ``init``, the keys and checkpoint names of ``models``, every name in ``comparisons``, the setting names of
    ``attacks.settings`` and the top-level ``profile``. Sections of another type are left to their own checks.
    """
    if not isinstance(params, dict):
        return params
    if isinstance(params.get("profile"), str):
        check_name(params["profile"], "profile")
    train = params.get("train")
    if isinstance(train, dict):
        for kind in ("scratch", "finetune"):
            runs = train.get(kind)
            if isinstance(runs, dict):
                for name, entry in runs.items():
                    check_name(name, f"train.{kind}.{name}")
                    if isinstance(entry, dict) and entry.get("init") is not None:
                        check_name(entry["init"], f"train.{kind}.{name}.init")
    models = params.get("models")
    if isinstance(models, dict):
        for name, base in models.items():
            check_name(name, f"models.{name}")
            check_name(base, f"models.{name}")
    comparisons = params.get("comparisons")
    if isinstance(comparisons, (dict, list)):
        for name, key in _names_in(comparisons, "comparisons"):
            check_name(name, key)
    attacks = params.get("attacks")
    if isinstance(attacks, dict) and isinstance(attacks.get("settings"), dict):
        for name in attacks["settings"]:
            check_name(name, f"attacks.settings.{name}")
    return params


def cli_name(option: str):
    """An ``argparse`` ``type=`` that applies :func:`check_name` to the value of ``option`` (``--name``, ...)."""
    import argparse

    def parse(text: str) -> str:
        try:
            return check_name(text, option)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = "name"
    return parse
