"""Data stage: put the profile's data set under ``data.root``, real or a synthetic stand-in.

    python -m smoothgeo.pipeline.data --params params.yaml

Reads the ``data`` section of the params file:

* without ``standin`` (every real profile): :func:`smoothgeo.data.datasets.prepare` copies Fashion-MNIST from the Debian
  package, downloads CIFAR-10/Flowers-102 through torchvision when online, or checks the ImageNet folder, and
  fails with a message that says where the files must go when it cannot;
* with ``standin: {train: N, test: M}`` (the toy profiles, ``bash scripts/repro.sh cifar10-toy``):
  :func:`smoothgeo.data.standins.write_standin` writes a small synthetic set with the data set's real shapes, class
  count and file layout, so every later stage reads it through the real loader. Stand-in folders carry a
  ``STANDIN`` marker file and the stage prints that the data are synthetic.
"""
from __future__ import annotations

import argparse

from smoothgeo.data import datasets as data_mod
from smoothgeo.store.atomic import load_params

__all__ = ["run", "main"]


def run(data: dict) -> str:
    """Prepare the data set of a params ``data`` section; return a one-line description of what was done."""
    name, root = data.get("dataset"), data.get("root", "data/raw")
    data_mod.dataset_info(name)
    standin = data.get("standin")
    if standin is None:
        folder = data_mod.prepare(name, root=root)
        return f"{name}: real data in {folder}"
    if not isinstance(standin, dict) or set(standin) - {"train", "test", "seed"}:
        raise ValueError(f"params 'data.standin' must be a mapping with keys train, test (and optional seed), got "
                         f"{standin!r}; e.g. standin: {{train: 64, test: 32}}")
    from smoothgeo.data.standins import write_standin

    folder = write_standin(name, root, n_train=int(standin.get("train", 64)), n_test=int(standin.get("test", 32)),
                           seed=int(standin.get("seed", 0)))
    return (f"{name}: SYNTHETIC stand-in in {folder} (train {standin.get('train', 64)}, test "
            f"{standin.get('test', 32)}): results of this run say nothing about the real data set")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m smoothgeo.pipeline.data", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        print(run(load_params(args.params).get("data") or {}))
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        parser.exit(1, f"error: {exc}\n")


if __name__ == "__main__":
    main()
