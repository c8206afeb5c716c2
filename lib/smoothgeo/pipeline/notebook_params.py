"""The parameters cell of a notebook, generated from params.yaml: reading the declared sections and the cell's
defaults, selecting and formatting the parameters, and ``sync`` / ``check`` of the committed cells.

See :mod:`smoothgeo.pipeline.notebook` for the rules (the ``# sections:`` line, defaults from the cell) and the
command line (``python -m smoothgeo.pipeline.notebook sync|check``).
"""
from __future__ import annotations

import datetime
import difflib
import json
import math
import re
from pathlib import Path

from smoothgeo.analysis.render import display_path, repo_root

__all__ = ["parameters_cell", "declared_sections", "select_params", "cell_defaults", "notebook_parameters",
           "parameters_source", "read_notebook", "read_params", "sync", "check", "HEADER", "SECTIONS"]

HEADER = ("# Parameters: generated from params.yaml by `python -m smoothgeo.pipeline.notebook sync` (edit params.yaml,\n"
          "# then sync). papermill replaces them with the same sections of the params file it is given.\n")
SECTIONS = re.compile(r"^#\s*sections:\s*(.*)$", re.MULTILINE)


def read_notebook(path):
    """The notebook at ``path`` (nbformat 4)."""
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


def read_params(path) -> dict:
    """The params file at ``path``."""
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

    values = read_params(params)
    changed, errors = [], []
    for path in _notebooks(notebooks):
        nb = read_notebook(path)
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
    values = read_params(params)
    problems = {}
    for path in _notebooks(notebooks):
        try:
            current, wanted = _expected(read_notebook(path), values)
        except (ValueError, KeyError) as exc:
            problems[path] = f"{display_path(path)}: {exc}\n"
            continue
        if current != wanted:
            diff = difflib.unified_diff(current.splitlines(True), wanted.splitlines(True),
                                        f"{display_path(path)} (parameters cell)",
                                        f"{display_path(params)} (declared sections)")
            problems[path] = "".join(line if line.endswith("\n") else line + "\n" for line in diff)
    return problems

