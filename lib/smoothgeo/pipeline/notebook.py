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
"""
from __future__ import annotations

import argparse
import datetime
import difflib
import gzip
import json
import logging
import math
import os
import re
import sys
import warnings
from pathlib import Path

from smoothgeo.store.progress import set_mode as progress  # noqa: F401 - `smoothgeo.pipeline.notebook.progress("quiet")`
from smoothgeo.analysis.render import display_path, find_machine_paths, repo_root, scrub_paths

__all__ = ["declared_sections", "select_params", "cell_defaults", "notebook_parameters", "parameters_source", "sync",
           "check", "run", "postprocess", "check_paths", "stderr_lines", "image_outputs", "progress", "main"]

HEADER = ("# Parameters: generated from params.yaml by `python -m smoothgeo.pipeline.notebook sync` (edit params.yaml,\n"
          "# then sync). papermill replaces them with the same sections of the params file it is given.\n")
SECTIONS = re.compile(r"^#\s*sections:\s*(.*)$", re.MULTILINE)
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
TEXT_SUFFIXES = {".csv", ".md", ".tex", ".json", ".txt", ".yaml", ".yml", ".html", ".svg", ".ipynb", ".log"}


# --- the parameters cell ---------------------------------------------------------------------------------------

def _read(path):
    import nbformat

    return nbformat.read(str(path), as_version=4)


def parameters_cell(nb):
    """The cell tagged ``parameters`` (``ValueError`` when there is none)."""
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    raise ValueError("no cell tagged 'parameters': tag the notebook's parameters cell (JupyterLab: property "
                     "inspector, 'Cell Tags')")


def declared_sections(nb) -> list[str]:
    """The params.yaml sections the notebook declares on its ``# sections:`` line (or in
    ``metadata.smoothgeo.sections``)."""
    match = SECTIONS.search(parameters_cell(nb).source)
    if match:
        names = [s.strip() for s in match.group(1).split(",") if s.strip()]
    else:
        names = list(nb.metadata.get("smoothgeo", {}).get("sections", []))
    if not names:
        raise ValueError("the parameters cell has no '# sections: a, b, c' line naming the params.yaml sections "
                         "the notebook uses")
    return names


def _plain(value, key: str):
    """``value`` as the notebook sees it, the same through :func:`sync` and papermill (:func:`run`).

    Dates and times become their ``str()`` (what papermill passes for them); mapping keys must be strings
    (papermill turns every key into a string, so ``{1: ...}`` would be ``{"1": ...}`` in a DVC run but not in the
    synced cell): another key, and any value that is not a YAML scalar, list or mapping (``!!set``, ``!!binary``),
    is refused with ``ValueError`` naming its key.
    """
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"params key {key}.{k!r} is a {type(k).__name__}, not a string: papermill passes "
                                 f"every key as a string, so the notebook would see different keys in a DVC run "
                                 f"and after sync; quote it in the params file ('{k}': ...)")
            out[k] = _plain(v, f"{key}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (datetime.date, datetime.time)):
        return str(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ValueError(f"params value {key}={value!r} is a {type(value).__name__}; notebooks take YAML scalars, lists "
                     f"and mappings only")


def select_params(params: dict, sections) -> dict:
    """``{variable: value}`` for the declared sections; ``a.b`` keeps key ``b`` of section ``a`` (merged).

    Values go through :func:`_plain` (dates as strings, string keys only), so :func:`sync` and :func:`run` give
    the notebook the same values."""
    out: dict = {}
    for name in sections:
        head, _, key = name.partition(".")
        if head not in params:
            raise KeyError(f"section {head!r} is declared by the notebook but not in the params file")
        if not key:
            out[head] = _plain(params[head], head)
            continue
        if not isinstance(params[head], dict) or key not in params[head]:
            raise KeyError(f"{name!r} is declared by the notebook but {head!r} has no key {key!r}")
        out.setdefault(head, {})[key] = _plain(params[head][key], name)
    return out


def _default_value(node):
    """The value of a parameters-cell right-hand side: a Python literal, or ``float("inf")``/``float("nan")``
    (what :func:`_literal` writes for non-finite floats), possibly nested; ``ValueError`` for anything else."""
    import ast

    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float"
            and len(node.args) == 1 and not node.keywords and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
        return float(node.args[0].value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_default_value(node.operand)
    if isinstance(node, ast.Dict):
        return {_default_value(k): _default_value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_default_value(v) for v in node.elts]
    return ast.literal_eval(node)


def cell_defaults(nb) -> dict:
    """``{variable: value}`` assigned in the notebook's parameters cell (its defaults): top-level ``name = value``
    statements whose value is a literal (see :func:`_default_value`); other statements are skipped."""
    import ast

    try:
        tree = ast.parse(parameters_cell(nb).source)
    except SyntaxError:
        return {}
    out = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                out[stmt.targets[0].id] = _default_value(stmt.value)
            except (ValueError, TypeError, SyntaxError):
                continue
    return out


def notebook_parameters(params: dict, sections, defaults: dict, *, notebook: str = "the notebook",
                        warn=None) -> dict:
    """Like :func:`select_params`, but a section (or ``a.b`` key) missing from ``params`` is taken from
    ``defaults`` (the parameters cell, :func:`cell_defaults`); ``warn(message)`` is called once per fallback.
    ``KeyError`` when neither defines it."""
    out: dict = {}
    for name in sections:
        head, _, key = name.partition(".")
        try:
            part = select_params(params, [name])
        except KeyError:
            default = defaults.get(head)
            if key:
                if not isinstance(default, dict) or key not in default:
                    raise KeyError(f"{name!r} is declared by {notebook} but neither the params file nor its "
                                   f"parameters cell defines it") from None
                part = {head: {key: default[key]}}
            elif head in defaults:
                part = {head: default}
            else:
                raise KeyError(f"section {head!r} is declared by {notebook} but neither the params file nor its "
                               f"parameters cell defines it") from None
            if warn is not None:
                warn(f"{notebook}: {name!r} is not in the params file; using the notebook's default")
        if key:
            out.setdefault(head, {}).update(part[head])
        else:
            out[head] = part[head]
    return out


def _literal(value) -> str:
    """``value`` as a one-line Python literal, strings in double quotes (the notebooks' style)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and not math.isfinite(value):  # repr gives inf / nan: NameError in the cell
        return 'float("nan")' if math.isnan(value) else ('float("inf")' if value > 0 else 'float("-inf")')
    return repr(value)


def _format(value, column: int, width: int) -> str:
    """``value`` as a Python literal starting at ``column``: one line if it fits, else one item per line."""
    flat = _literal(value)
    if column + len(flat) <= width or not isinstance(value, (dict, list, tuple)) or not value:
        return flat
    pad = "\n" + " " * (column + 1)
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            key = _literal(k) + ": "
            parts.append(key + _format(v, column + 1 + len(key), width))
        return "{" + ("," + pad).join(parts) + "}"
    return "[" + ("," + pad).join(_format(v, column + 1, width) for v in value) + "]"


def _assign(name: str, value, width: int = 110) -> str:
    return f"{name} = " + _format(value, len(name) + 3, width)


def parameters_source(params: dict, sections, defaults: dict | None = None) -> str:
    """The source of a parameters cell holding ``sections`` of ``params`` (header, sections line, values); a
    section ``params`` lacks is taken from ``defaults`` (the cell's current values) when given."""
    values = select_params(params, sections) if defaults is None else notebook_parameters(params, sections, defaults)
    lines = [HEADER + "# sections: " + ", ".join(sections)]
    lines += [_assign(name, value) for name, value in values.items()]
    return "\n".join(lines)


def _write_notebook(nb, path) -> None:
    """``nbformat.write`` to a temporary file next to ``path``, then ``os.replace``: never a half-written notebook."""
    import nbformat

    from smoothgeo.store.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        nbformat.write(nb, fh)


def _load_params(path) -> dict:
    from smoothgeo.store.atomic import load_params

    return load_params(Path(path))


def _notebooks(paths) -> list[Path]:
    if paths:
        return [Path(p) for p in paths]
    return sorted((repo_root() / "notebooks").glob("*.ipynb"))


def _expected(nb, params: dict) -> tuple[str, str]:
    cell = parameters_cell(nb)
    return cell.source, parameters_source(params, declared_sections(nb), cell_defaults(nb))


def sync(notebooks=(), *, params="params.yaml") -> list[Path]:
    """Rewrite the parameters cell of each notebook from ``params``; returns the notebooks that changed.
    Raises ``ValueError`` naming every notebook that declares no sections or an unknown one (the others are
    synced all the same)."""
    import nbformat

    values = _load_params(params)
    changed, errors = [], []
    for path in _notebooks(notebooks):
        nb = _read(path)
        try:
            current, wanted = _expected(nb, values)
        except (ValueError, KeyError) as exc:
            errors.append(f"{display_path(path)}: {exc}")
            continue
        if current != wanted:
            parameters_cell(nb).source = wanted
            _write_notebook(nb, path)
            changed.append(path)
    if errors:
        raise ValueError("not synced:\n" + "\n".join(errors))
    return changed


def check(notebooks=(), *, params="params.yaml") -> dict[Path, str]:
    """``{notebook: unified diff}`` for each notebook whose parameters cell differs from ``params`` (empty: fine)."""
    values = _load_params(params)
    problems = {}
    for path in _notebooks(notebooks):
        try:
            current, wanted = _expected(_read(path), values)
        except (ValueError, KeyError) as exc:
            problems[path] = f"{display_path(path)}: {exc}\n"
            continue
        if current != wanted:
            diff = difflib.unified_diff(current.splitlines(True), wanted.splitlines(True),
                                        f"{display_path(path)} (parameters cell)",
                                        f"{display_path(params)} (declared sections)")
            problems[path] = "".join(line if line.endswith("\n") else line + "\n" for line in diff)
    return problems


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
    nb = _read(notebook)
    parameters = notebook_parameters(_load_params(params), declared_sections(nb), cell_defaults(nb),
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
