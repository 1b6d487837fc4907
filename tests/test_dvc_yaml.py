"""dvc.yaml against the code: every stage lists as deps each project file its program imports;
and dvc.yaml's stages as maskprune.dvc_yaml writes them out.

DVC reruns a stage when a dep changes, so a module missing from `deps:` is a change DVC never
sees. The imports are followed statically (every `import` in a file, also inside functions),
from `stages/<name>.py` through the `maskprune` package, to a fixed point.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.seeds import shared_stages
from maskprune.config import FINETUNE_VARIANTS, PRETRAINED_DIR, PROFILES, PRUNING_METHODS
from maskprune.dvc_yaml import expand
from maskprune.layout import PREPARED_DIR
from maskprune.profile import profile_params
from tests.conftest import copy_repo, run

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"maskprune": ROOT / "src", "stages": ROOT}
# NOTE: modules that cannot change a stage's outputs, so a change to them must not rerun the
# pipeline: the MLflow records are written after the outputs, from the files on disk (dvc_yaml.py
# resolves the dependencies whose hashes tag them), and an error's wording is not an output.
OUTPUT_NEUTRAL = ("src/maskprune/tracking/", "src/maskprune/errors.py", "src/maskprune/dvc_yaml.py")


def module_file(dotted: str) -> Path | None:
    """The project file of a dotted module name (a package's non-empty __init__.py), or None."""
    top = dotted.split(".")[0]
    if top not in SOURCES:
        return None
    base = SOURCES[top].joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Dotted names a file imports; for `from a import b`, both `a` and `a.b` (b may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_closure(start: Path) -> set[str]:
    """Repository-relative paths of the project files `start` imports, directly or transitively."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            found = module_file(name)
            if found is not None and found.read_text().strip():
                todo.append(found)
    return {p.relative_to(ROOT).as_posix() for p in seen if p.is_relative_to(ROOT)}


def stage_programs() -> dict[str, tuple[Path, list[str]]]:
    """Stage name -> (its program file, its code deps) from dvc.yaml."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        module = re.search(r"python -m (stages\.\w+)", body["cmd"])
        assert module, f"{name}: cmd {body['cmd']!r} does not run a stages.<name> module"
        deps = [d for d in body.get("deps", []) if isinstance(d, str) and d.startswith(("src/", "stages/"))]
        found[name] = (module_file(module.group(1)), deps)
    return found


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", sorted(stage_programs()))
def test_deps_list_every_module_the_stage_imports(stage: str) -> None:
    program, deps = stage_programs()[stage]
    assert program is not None, f"{stage}: its stages module does not exist"
    needed = {p for p in project_closure(program) if not p.startswith(OUTPUT_NEUTRAL)}
    missing = sorted(p for p in needed if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports these files but does not list them as deps: {missing}"
    assert all((ROOT / dep).exists() for dep in deps), f"{stage}: a dep does not exist: {deps}"


def test_closure_follows_imports_inside_functions_and_from_package_imports(tmp_path: Path) -> None:
    """A hand-written program: `from maskprune.report import figures` inside a function reaches
    report/figures.py, and nothing else of the project (figures imports only matplotlib and numpy)."""
    program = tmp_path / "program.py"
    program.write_text("def main():\n    from maskprune.report import figures\n")
    closure = project_closure(program)
    assert closure == {"src/maskprune/report/figures.py"}  # the empty package __init__ files add nothing


def test_expand_names_matrix_items_and_fills_in_their_deps_and_params() -> None:
    """A hand-written two-stage dvc.yaml: a matrix stage over a params list and a plain stage whose
    params list mixes a params.yaml key with another file's keys (left out: not params.yaml's)."""
    dvc = {
        "stages": {
            "split": {"cmd": "python -m stages.split", "deps": ["raw"], "params": ["data.seed", {"other.yaml": ["x"]}]},
            "train": {
                "matrix": {"arch": "${archs}", "rate": [0.5]},
                "cmd": "python -m stages.train ${item.arch} ${item.rate}",
                "deps": ["split/${item.arch}"],
                "params": ["seed", "train.${item.arch}", {"params.yaml": ["lr"]}],
            },
        }
    }
    params = {"archs": ["vit", "evit"], "data": {"seed": 0}, "seed": 1, "train": {"vit": {}, "evit": {}}, "lr": 0.1}
    assert [(s.name, s.cmd, s.deps, s.params) for s in expand(dvc, params)] == [
        ("split", "python -m stages.split", ["raw"], ["data.seed"]),
        ("train@vit-0.5", "python -m stages.train vit 0.5", ["split/vit"], ["seed", "train.vit", "lr"]),
        ("train@evit-0.5", "python -m stages.train evit 0.5", ["split/evit"], ["seed", "train.evit", "lr"]),
    ]


# NOTE: the stages that build a model from models.* (and so load its pretrained_file); prune and
# evaluate load saved models, whose weights are all in their folders
BUILD_FROM_PARAMS = {"distill_teacher", "teacher", "pretrain", "finetune", "distill"}


def test_the_stages_that_build_models_from_params_depend_on_the_pretrained_folder() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    depends = {name for name, stage in stages.items() if PRETRAINED_DIR in stage.get("do", stage)["deps"]}
    assert depends == BUILD_FROM_PARAMS
    assert (ROOT / PRETRAINED_DIR / "README.md").is_file()  # DVC refuses a missing dep


def dvc_status(repo: Path, stages: list[str]) -> dict[str, list]:
    """`dvc status --json` of `stages`: {} where they are up to date."""
    return json.loads(run(["dvc", "status", "--json", *stages], repo).stdout)


@pytest.mark.integration
def test_replacing_a_pretrained_file_reruns_the_stages_that_start_from_it(tmp_path: Path) -> None:
    """Real DVC on a copy of the repository: the teachers' stages, committed with stand-in outputs
    (nothing is trained), are up to date until a file under pretrained/ is added or replaced."""
    repo = copy_repo(tmp_path / "repo")
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    for name in ("distill_teacher", "teacher"):
        for out in stages[name]["outs"]:
            (repo / next(iter(out))).parent.mkdir(parents=True, exist_ok=True)
            (repo / next(iter(out))).write_text(name)
    (repo / PREPARED_DIR / "stand-in").parent.mkdir(parents=True)
    (repo / PREPARED_DIR / "stand-in").write_text("prepared")

    run(["dvc", "commit", "-f", "distill_teacher", "teacher"], repo)
    assert dvc_status(repo, ["distill_teacher", "teacher"]) == {}
    weights = repo / PRETRAINED_DIR / "w.safetensors"
    weights.write_bytes(b"first")
    expected = {name: [{"changed deps": {PRETRAINED_DIR: "modified"}}] for name in ("distill_teacher", "teacher")}
    assert dvc_status(repo, ["distill_teacher", "teacher"]) == expected
    run(["dvc", "commit", "-f", "distill_teacher", "teacher"], repo)
    weights.write_bytes(b"second")
    assert dvc_status(repo, ["distill_teacher", "teacher"]) == expected


def lock_drift(status: dict[str, list]) -> list[str]:
    """What `dvc status --json` reports of some stages beyond the prepared data that a fresh clone has
    not made yet (prepare makes it again from the data set, the same bytes)."""
    drift = []
    for stage, changes in status.items():
        for change in changes:
            if isinstance(change, str):  # e.g. 'always changed'
                drift.append(f"{stage}: {change}")
                continue
            for kind, paths in change.items():
                drift += [
                    f"{stage}: {kind}: {path} {state}"
                    for path, state in paths.items()
                    if not (path == PREPARED_DIR.as_posix() and state in ("deleted", "not in cache"))
                ]
    return drift


@pytest.mark.integration
def test_the_committed_lock_keeps_the_committed_teachers_and_report(tmp_path: Path) -> None:
    """The teachers' weights are committed and every collected seed was taught by them; the report is
    committed with the verdicts. dvc.lock must record the code and params they came from: a stale
    record makes `dvc repro` and the seed sweep retrain the teachers on whatever host runs them (the
    report then excludes every collected seed), and leaves a report that today's code would not write."""
    shared = shared_stages(ROOT)
    assert {"prepare", "distill_teacher", "teacher"} <= set(shared)
    # the stages whose outputs are committed: the shared ones (the data split, the teachers) and the report
    assert lock_drift(dvc_status(ROOT, [*shared, "report"])) == [], (
        "dvc.lock is stale for a committed stage: for the report run `git clean -fdX models` (a fresh clone has "
        "no students' weights, and the report's lock entry hashes models/ whole) then `dvc repro --single-item "
        "report`; for "
        "the teachers, where the change leaves their training as it was, `dvc commit -f prepare "
        "distill_teacher teacher`, otherwise retrain them and every seed; then commit dvc.lock"
    )
    # the check fails on a clone whose training code changed after the teachers were trained
    clone = copy_repo(tmp_path / "clone", profile=None)
    with (clone / "src" / "maskprune" / "trainer.py").open("a") as trainer:
        trainer.write("# changed\n")
    assert lock_drift(dvc_status(clone, shared)) == [
        f"{stage}: changed deps: src/maskprune/trainer.py modified" for stage in ("distill_teacher", "teacher")
    ]


def test_the_committed_lock_records_only_stages_dvc_yaml_has() -> None:
    """DVC keeps a stage's lock entry after the stage leaves dvc.yaml (a keep ratio dropped from
    params.yaml), and the seed workspaces copy the lock: an entry nothing runs any more must go."""
    dvc, params = (yaml.safe_load((ROOT / name).read_text()) for name in ("dvc.yaml", "params.yaml"))
    stages = {stage.name for stage in expand(dvc, params)}
    locked = set(yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"])
    assert sorted(locked - stages) == [], "dvc.lock records stages dvc.yaml no longer has: delete their entries"


PLOT_TEMPLATES = ROOT / ".dvc" / "plots"
PALETTE = {"tableau20": 20}  # NOTE: vega's scheme sizes: past them colours repeat


def declared_plots() -> list[dict]:
    return [
        {"title": title, **spec}
        for plot in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
        for title, spec in plot.items()
    ]


def panels(models: list[str]) -> dict[str, set[str]]:
    """The models each panel of a faceted template draws: split by family (the name before '/'),
    as the templates' vega expression splits them."""
    found: dict[str, set[str]] = {}
    for model in models:
        found.setdefault(model.split("/")[0] if "/" in model else "", set()).add(model)
    return found


def test_every_plot_table_is_plotted_with_a_colour_per_model_and_whole_steps_on_integer_axes() -> None:
    """On the committed seed-0 tables: no colour repeats within a panel, epochs and layers tick in whole
    numbers, and every table evaluate writes is drawn."""
    plotted = set()
    for plot in declared_plots():
        ((table, _),) = plot["y"].items()
        plotted.add(table)
        frame = pd.read_csv(ROOT / table)
        template = json.loads((PLOT_TEMPLATES / f"{plot['template']}.json").read_text())
        encoding = template.get("spec", template)["encoding"]
        if "model" in frame:
            assert encoding["color"]["field"] == "model" and "facet" in template, plot["title"]
            colours = PALETTE[encoding["color"]["scale"]["scheme"]]
            assert max(map(len, panels(list(frame["model"])).values())) <= colours, plot["title"]
        integer = pd.api.types.is_integer_dtype(frame[plot["x"]])
        assert (encoding["x"].get("axis", {}).get("format") == "d") == integer, plot["title"]
    assert plotted == {str(p.relative_to(ROOT)) for p in (ROOT / "plots" / "evaluate").glob("*.csv")}


def test_no_profile_puts_more_models_in_a_panel_than_the_palette_has_colours() -> None:
    for profile in PROFILES:
        params = profile_params(profile, ROOT)
        pruned = len(PRUNING_METHODS) * len(params.prune.inits) * len(params.prune.keep_rates)
        distilled = 2 * len(params.distill.students) * len(params.distill.targets)  # a probe and a fine-tune each
        assert max(pruned, distilled, len(FINETUNE_VARIANTS)) <= PALETTE["tableau20"], profile
