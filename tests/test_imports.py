"""Every module imports on its own: a user's first import may be any of them (the README's "Extending"
builds a family on ``vgbench.probes.taps.ProbedModel``), and an import cycle shows only when the
cycle's far end is imported first."""

import pkgutil
import subprocess
import sys

import vgbench

# One interpreter for all of them (torch loads once): before each import, forget every vgbench module.
FIRST_IMPORTS = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "vgbench" or m.startswith("vgbench.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as error:
        failed.append(f"{name}: {type(error).__name__}: {error}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_can_be_the_first_one_imported():
    names = sorted(info.name for info in pkgutil.walk_packages(vgbench.__path__, "vgbench.")
                   if not info.name.endswith("__main__"))  # those run the command line
    assert len(names) > 70 and "vgbench.probes.taps" in names
    run = subprocess.run([sys.executable, "-c", FIRST_IMPORTS, *names], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_command_line_loads_no_training_or_report_library_until_a_command_needs_it():
    """`vgbench status`, `plan --help`, every SLURM task's and local worker's start import vgbench.cli: Lightning
    (with torchmetrics and torchvision), mnist1d (SciPy, pyplot) and the report's pandas cost it 11-14 s
    here where torch alone costs 4, in every process; a data set or a command imports what it uses."""
    heavy = ("lightning", "torchvision", "mnist1d", "pandas", "matplotlib", "scipy", "wandb")
    run = subprocess.run([sys.executable, "-c", f"import sys, vgbench.cli; print([m for m in {heavy!r} "
                          "if m in sys.modules])"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr
