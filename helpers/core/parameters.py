"""Misspelt notebook parameters stop a step before papermill runs the notebook with its defaults.

The Makefile runs ``python -m helpers.core.parameters NOTEBOOK [STEP OPTIONS] [-- SHARED OPTIONS]``
before each step; it reads the notebooks without executing them and imports no torch, so the
check costs a fraction of a second.
"""

from __future__ import annotations

import base64
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path


def parameter_names(args: Sequence[str]) -> set[str]:
    """Names of the notebook parameters that papermill options set: ``-p``/``-r NAME VALUE``,
    ``-y YAML``, ``-f FILE`` and ``-b BASE64`` (long forms too), parsed by papermill's own
    command line so that nothing is read differently from the run itself."""

    import yaml
    from papermill.cli import papermill as command
    from papermill.iorw import read_yaml_file

    params = command.make_context("papermill", ["in.ipynb", "out.ipynb", *args],
                                  resilient_parsing=True).params
    names = {name for name, _ in (*params["parameters"], *params["parameters_raw"])}
    documents = [yaml.safe_load(text) for text in params["parameters_yaml"]]
    documents += [read_yaml_file(path) for path in params["parameters_file"]]
    documents += [yaml.safe_load(base64.b64decode(text)) for text in params["parameters_base64"]]
    for document in documents:
        names |= set(document or {})
    return names


def declared_parameters(notebook: str | Path) -> list[str]:
    """The names assigned in a notebook's cell tagged ``parameters``, in order (papermill's
    ``inspect_notebook``; nothing is executed)."""
    import papermill

    return list(papermill.inspect_notebook(str(notebook)))


def check_parameters(notebook: str | Path, step_args: Sequence[str] = (),
                     shared_args: Sequence[str] = ()) -> None:
    """Refuse a misspelt parameter before papermill runs a notebook with its defaults.

    ``step_args`` (e.g. ``TRAIN_PARAMS``) must name parameters of ``notebook``;
    ``shared_args`` (``PARAMS``, passed to every notebook) parameters of at least one
    notebook in its folder. Raises ValueError listing the valid names (papermill itself
    only logs a warning and runs on).
    """

    notebook = Path(notebook)
    own = declared_parameters(notebook)
    every = sorted({n for nb in sorted(notebook.parent.glob("*.ipynb"))
                    for n in declared_parameters(nb)} | set(own))
    problems = []
    for names, valid, scope in ((parameter_names(step_args), own, f"{notebook.name} declares"),
                                (parameter_names(shared_args), every, "the notebooks declare")):
        for name in sorted(set(names) - set(valid)):
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"unknown parameter {name}{hint}; {scope}: {', '.join(valid)}")
    if problems:
        raise ValueError(f"{notebook}: " + "\n  ".join(problems) + "\nNothing was run.")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m helpers.core.parameters NOTEBOOK [STEP OPTIONS] [-- SHARED OPTIONS]``: exit 1
    with the valid names when an option names a parameter the notebook does not declare
    (the Makefile runs it before papermill)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(main.__doc__, file=sys.stderr)
        return 2
    notebook, rest = args[0], args[1:]
    cut = rest.index("--") if "--" in rest else len(rest)
    try:
        check_parameters(notebook, rest[:cut], rest[cut + 1:])
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
