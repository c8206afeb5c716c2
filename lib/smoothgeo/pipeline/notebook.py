"""Notebooks that cannot drift from params.yaml, executed the same way by DVC and by hand.

Each notebook's cell tagged ``parameters`` declares the params.yaml sections it uses on a line

    # sections: seed, device, data, attack, methods, robust_training

(a dotted name such as ``robust_training.models`` takes one key of a section). The rest of that cell is generated
from params.yaml, so the notebook opened in JupyterLab runs the default profile as it stands.

    python -m smoothgeo.pipeline.notebook sync  [NOTEBOOK ...] [--params params.yaml]   rewrite the parameters cells
    python -m smoothgeo.pipeline.notebook check [NOTEBOOK ...] [--params params.yaml]   fail, with a diff, if they differ
    python -m smoothgeo.pipeline.notebook run NOTEBOOK OUTPUT [--params params.yaml]    execute with papermill
    python -m smoothgeo.pipeline.notebook check-paths [PATH ...]                         no machine paths in outputs

Defaults: the parameters cell as committed is the notebook's defaults. A declared section (or key) that a params
file lacks (a profile that predates the notebook, or a notebook-only section kept out of the profiles) is taken
from the cell, with a note on stderr, by ``run`` and kept as it is by ``sync``; only a section that neither the
params file nor the cell defines is an error. So a new notebook runs on every profile.

``run`` passes papermill only the declared sections (so no "Passed unknown parameter" lines), uses the
``python3`` kernel, compact progress output (``SMOOTHGEO_PROGRESS=quiet`` unless set) and matplotlib's inline
backend (figures are stored in the executed notebook), then removes timestamps and durations and replaces
machine paths in the outputs, so that re-running on the same inputs gives the same bytes.
Without arguments, ``sync`` and ``check`` take every ``notebooks/*.ipynb`` of the repository.

This module runs notebooks, post-processes them and checks outputs; generating, syncing and checking the
parameters cells is :mod:`smoothgeo.pipeline.notebook_params`.
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from smoothgeo.store.progress import set_mode as progress  # noqa: F401 - `smoothgeo.pipeline.notebook.progress("quiet")`
from smoothgeo.analysis.render import display_path, find_machine_paths, repo_root, scrub_paths
from smoothgeo.pipeline.notebook_params import (cell_defaults, check, declared_sections, notebook_parameters,
                                                read_notebook, read_params, sync)

__all__ = ["run", "postprocess", "check_paths", "stderr_lines", "image_outputs", "progress", "main"]

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
TEXT_SUFFIXES = {".csv", ".md", ".tex", ".json", ".txt", ".yaml", ".yml", ".html", ".svg", ".ipynb", ".log"}


# --- executing a notebook --------------------------------------------------------------------------------------

_TIMING_KEYS = ("start_time", "end_time", "duration")
_CELL_FILE = re.compile(r"\S*ipykernel_\d+[/\\]\d+\.py")  # a warning's source: the kernel's temporary cell file


def _clean(text: str, root: Path) -> str:
    return _CELL_FILE.sub("<cell>", scrub_paths(text, root))


def postprocess(nb, *, root=None):
    """Make an executed notebook reproducible and machine-independent, in place: drop timestamps and durations
    (papermill's and the kernel's), widget state, and replace machine paths in every text output."""
    root = Path(root) if root is not None else repo_root()
    meta = nb.metadata.get("papermill")
    if meta is not None:
        for key in (*_TIMING_KEYS, "environment_variables"):
            meta.pop(key, None)
        for key in ("input_path", "output_path"):
            if meta.get(key):
                meta[key] = scrub_paths(str(meta[key]), root)
    nb.metadata.pop("widgets", None)
    for index, cell in enumerate(nb.cells):
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = f"injected-parameters-{index}"  # papermill gives the new cell a random id
        cell.metadata.pop("execution", None)
        pm = cell.metadata.get("papermill")
        if pm is not None:
            for key in _TIMING_KEYS:
                pm.pop(key, None)
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = _clean(out["text"], root)
            if "traceback" in out:
                out["traceback"] = [_clean(line, root) for line in out["traceback"]]
            if "evalue" in out:
                out["evalue"] = _clean(out["evalue"], root)
            for mime, data in list(out.get("data", {}).items()):
                if mime.startswith("image/") and mime != "image/svg+xml":
                    continue
                if mime == "application/vnd.jupyter.widget-view+json":
                    del out["data"][mime]  # widget state is not saved; keep the text form
                    continue
                if isinstance(data, str):
                    out["data"][mime] = _clean(data, root)
                elif isinstance(data, list):
                    out["data"][mime] = [_clean(x, root) if isinstance(x, str) else x for x in data]
    return nb


def run(notebook, output, *, params="params.yaml", overrides: dict | None = None, kernel: str = "python3",
        cwd=None, root=None) -> Path:
    """Execute ``notebook`` into ``output`` with papermill and the declared sections of ``params`` (plus
    ``overrides``, ``{variable: value}``), then :func:`postprocess` it. Raises papermill's error when a cell
    fails (the output notebook, post-processed, shows where)."""
    import nbformat
    import papermill

    notebook, output = Path(notebook), Path(output)
    root = Path(root) if root is not None else repo_root(cwd)
    nb = read_notebook(notebook)
    parameters = notebook_parameters(read_params(params), declared_sections(nb), cell_defaults(nb),
                                     notebook=display_path(notebook),
                                     warn=lambda message: print(f"[notebook] {message}", file=sys.stderr))
    parameters.update(overrides or {})
    os.environ.setdefault("SMOOTHGEO_PROGRESS", "quiet")
    os.environ["MPLBACKEND"] = INLINE_BACKEND  # an inherited MPLBACKEND=Agg would hide every figure
    logging.getLogger("papermill").setLevel(logging.WARNING)
    output.parent.mkdir(parents=True, exist_ok=True)
    from smoothgeo.store.atomic import atomic_path

    # papermill writes into a temporary file next to the output (it rewrites the file after every cell); the
    # post-processed notebook replaces the output in one os.replace, so a killed run never leaves half of one.
    # A failing cell still gives the complete notebook (it shows where), then papermill's error.
    failure = None
    with atomic_path(output) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*does not end in one of")
                papermill.execute_notebook(str(notebook), str(tmp), parameters=parameters, kernel_name=kernel,
                                           progress_bar=False, log_output=False,
                                           cwd=None if cwd is None else str(cwd))
        except papermill.PapermillExecutionError as exc:
            failure = exc
        nb = nbformat.read(str(tmp), as_version=4)
        if nb.metadata.get("papermill", {}).get("output_path"):
            nb.metadata["papermill"]["output_path"] = str(output)  # the name it has, not the temporary one
        with open(tmp, "w", encoding="utf-8") as fh:
            nbformat.write(postprocess(nb, root=root), fh)
    if failure is not None:
        raise failure
    return output


# --- checks on executed notebooks and committed outputs -------------------------------------------------------

def stderr_lines(nb) -> int:
    """Number of stderr lines in an executed notebook (progress bars, warnings)."""
    return sum(out.get("text", "").count("\n") + (0 if out.get("text", "").endswith("\n") else 1)
               for cell in nb.cells for out in cell.get("outputs", [])
               if out.get("output_type") == "stream" and out.get("name") == "stderr" and out.get("text"))


def image_outputs(nb) -> int:
    """Number of image outputs (``image/png`` etc.) in an executed notebook."""
    return sum(1 for cell in nb.cells for out in cell.get("outputs", [])
               if any(m.startswith("image/") for m in out.get("data", {})))


def _text_without_images(path: Path) -> str:
    if path.suffix == ".ipynb":
        data = json.loads(path.read_text())
        for cell in data.get("cells", []):
            for out in cell.get("outputs", []):
                for mime in list(out.get("data", {})):
                    if mime.startswith("image/") and mime != "image/svg+xml":
                        del out["data"][mime]
        return json.dumps(data, indent=1)
    if path.name.endswith(".gz"):
        return gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
    return path.read_text(errors="replace")


def _is_text(path: Path) -> bool:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return Path(name).suffix in TEXT_SUFFIXES


def check_paths(paths=(), *, root=None) -> dict[Path, list[str]]:
    """``{file: machine paths found}`` over the text files under ``paths`` (default: ``results/``)."""
    root = Path(root) if root is not None else repo_root()
    paths = [Path(p) for p in paths] or [root / "results"]
    found = {}
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if not _is_text(path):
                continue
            hits = find_machine_paths(_text_without_images(path), root)
            if hits:
                found[path] = hits
    return found


# --- command line ---------------------------------------------------------------------------------------------

def _parse_override(text: str):
    import yaml

    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"-p {text!r}: write NAME=VALUE (VALUE in YAML)")
    return name, yaml.safe_load(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smoothgeo.pipeline.notebook", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("sync", "check"):
        p = sub.add_parser(name, help=f"{name} the parameters cells with params.yaml")
        p.add_argument("notebooks", nargs="*")
        p.add_argument("--params", default=None, help="params file (default: params.yaml of the repository)")
    p = sub.add_parser("run", help="execute a notebook with papermill and the sections it declares")
    p.add_argument("notebook")
    p.add_argument("output")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("-p", "--parameter", action="append", type=_parse_override, default=[],
                   help="NAME=VALUE (YAML) overriding one declared variable")
    p.add_argument("-k", "--kernel", default="python3")
    p = sub.add_parser("check-paths", help="fail if committed outputs contain absolute paths of this machine")
    p.add_argument("paths", nargs="*")
    args = parser.parse_args(argv)

    if args.command in ("sync", "check"):
        params = args.params or repo_root() / "params.yaml"
        if args.command == "sync":
            try:
                changed = sync(args.notebooks, params=params)
            except ValueError as exc:
                print(exc, file=sys.stderr)
                return 1
            for path in changed:
                print(f"rewrote the parameters cell of {display_path(path)}")
            return 0
        problems = check(args.notebooks, params=params)
        for path, diff in problems.items():
            sys.stdout.write(diff)
        if problems:
            print(f"{len(problems)} notebook(s) differ from {display_path(params)}: run "
                  "`python -m smoothgeo.pipeline.notebook sync`")
            return 1
        return 0
    if args.command == "run":
        run(args.notebook, args.output, params=args.params, overrides=dict(args.parameter), kernel=args.kernel)
        return 0
    found = check_paths(args.paths)
    for path, hits in found.items():
        print(f"{display_path(path)}: {', '.join(hits)}")
    if found:
        print(f"{len(found)} file(s) contain absolute paths of this machine: print paths with "
              "smoothgeo.analysis.render.display_path, or run notebooks with `python -m smoothgeo.pipeline.notebook run`")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
