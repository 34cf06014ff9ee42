"""The built package runs (issue 26): the wheel holds every Hydra config and the console commands work from a
fresh virtual environment, outside the source tree, without the checkout on the path."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_audits_outside_the_source_tree(memorized_ddpm, tmp_path):
    from audit.data import write_manifest

    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                            "-w", str(wheels)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("diffusion_membership_audit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    configs = sorted(n for n in names if n.startswith("audit/configs/") and n.endswith(".yaml"))
    in_tree = sorted("audit/configs/" + p.relative_to(ROOT / "configs").as_posix()
                     for p in (ROOT / "configs").rglob("*.yaml"))
    assert configs == in_tree and "audit/configs/audit.yaml" in configs
    assert "audit/report/templates/report.html.j2" in names

    venv = tmp_path / "venv"  # sees the installed dependencies, nothing is downloaded; not the checkout
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    py, bindir = venv / "bin" / "python", venv / "bin"
    # --ignore-installed: the outer environment may hold an editable install of the checkout, which pip would
    # otherwise take for this package already being installed
    inst = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                           str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error",
               PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", AUDIT_STORE_KEY_FILE=str(tmp_path / "store.key"))
    where = subprocess.run([str(py), "-c", "import audit, audit.cli; print(audit.__file__); print(audit.cli.CONFIG_DIR)"],
                           capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert str(venv) in where.stdout and str(ROOT) not in where.stdout, where.stdout + where.stderr
    for cmd in ("audit-run", "audit-plan", "audit-verify", "audit-report"):
        h = subprocess.run([str(bindir / cmd), "--help"], capture_output=True, text=True, cwd=work, env=env,
                           timeout=300)
        assert h.returncode == 0, (cmd, h.stderr[-1500:])
    assert "== Config ==" in subprocess.run([str(bindir / "audit-run"), "--help"], capture_output=True, text=True,
                                            cwd=work, env=env, timeout=300).stdout

    rows = [{"path": str(p), "role": "suspect"} for p in memorized_ddpm.member_paths[:6]]
    rows += [{"path": str(p), "role": "control"} for p in memorized_ddpm.held_out_paths[:10]]
    manifest = write_manifest(rows, work / "manifest.csv")
    run = subprocess.run([str(bindir / "audit-run"), "experiment=own_model", f"target.source={memorized_ddpm.model_dir}",
                          "target.local_files_only=true", f"data.manifest={manifest}", "attack=[loss]",
                          "attack.loss.timesteps=[100]", "runtime.progress=false", "report.formats=[html]",
                          "stats.gates=[placebo]", "stats.n_placebo=50", "stats.n_permutations=200",
                          "stats.n_bootstrap=50", "name=wheel"], capture_output=True, text=True, cwd=work, env=env,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    (folder,) = [p.parent for p in (work / "results").rglob("COMPLETE")]
    assert (folder / "report.html").is_file()
    ver = subprocess.run([str(bindir / "audit-verify"), str(folder)], capture_output=True, text=True, cwd=work,
                         env=env, timeout=600)
    assert ver.returncode == 0 and ver.stdout.startswith("verified: "), ver.stdout + ver.stderr
    regen = subprocess.run([str(bindir / "audit-report"), str(folder), "--formats", "html", "--out",
                            str(work / "regenerated")], capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert regen.returncode == 0 and (work / "regenerated" / "report.html").is_file(), regen.stderr[-2000:]


def _import_edges(modules: tuple[str, ...]) -> set[tuple[str, str]]:
    """(importer, imported) among ``audit.<m>`` for every import statement, module-level or inside a function."""
    import ast

    edges = set()
    for m in modules:
        tree = ast.parse((ROOT / "audit" / f"{m}.py").read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            edges |= {(m, t) for t in modules for n in names if t != m and n == f"audit.{t}"}
    return edges


def test_no_import_cycle_between_the_command_line_and_the_pipeline_phases():
    import networkx as nx

    mods = ("cli", "commitment", "pipeline", "defaults", "prepare", "regenerate", "verify", "rescore", "safety",
            "store", "io", "errors")
    edges = _import_edges(mods)
    assert list(nx.simple_cycles(nx.DiGraph(edges))) == []
    # no upward imports: the phases and the records never import the command line or the pipeline
    for low in ("prepare", "defaults", "commitment", "store", "io", "safety", "errors"):
        assert not {t for s, t in edges if s == low} & {"cli", "pipeline", "regenerate"}, low


def test_no_import_cycle_between_the_package_s_parts():
    """Over the whole package, at the level of its parts (``audit/<part>``: each subpackage and top-level module),
    every import statement, module-level or inside a function, points one way: no two parts import each other."""
    import ast

    import networkx as nx

    def part(module: str) -> str:
        return module.split(".")[1] if module.count(".") else "audit"

    edges = set()
    for f in (ROOT / "audit").rglob("*.py"):
        if f.name == "__main__.py":
            continue
        src = part(".".join(f.relative_to(ROOT).with_suffix("").parts))
        for node in ast.walk(ast.parse(f.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            edges |= {(src, part(n)) for n in names if n.startswith("audit.") and part(n) != src}
    cycles = list(nx.simple_cycles(nx.DiGraph(edges)))
    assert cycles == [], f"import cycles between parts of the package: {cycles}"
    assert ("schema", "cli") not in edges and ("prepare", "pipeline") not in edges  # a sample of the direction
