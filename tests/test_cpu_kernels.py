"""`trainer.cpu_capability`: a profile pins the vector kernels torch's CPU operations run, every launcher's
workers run them, and a process that runs others refuses to train instead of mislabelling its results.

The tests pin "default" (no vector kernels), the one level every x86-64 CPU has below its best, so the pin
is a real change of kernels on any CI machine.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.test_launch import metrics_of, vgbench, write_params
from vgbench import cpu_kernels
from vgbench.cli import main

pytestmark = pytest.mark.skipif(not cpu_kernels.applies(), reason="the pin applies to x86-64 CPUs only")


def _pinned_params(folder, launcher: dict, capability: str | None):
    params = write_params(folder, launcher)
    raw = yaml.safe_load(params.read_text())
    raw["profiles"]["tiny"]["trainer"] = {"threads": 1, "cpu_capability": capability}
    params.write_text(yaml.safe_dump(raw))
    return params


@pytest.mark.parametrize("launcher, only", [({"name": "serial"}, "resnet-"),  # oneDNN's convolutions and ATen
                                           ({"name": "local", "jobs": 2}, "mlp-")])
def test_every_worker_runs_the_kernels_its_profile_pins_whatever_the_shell_says(launcher, only, tiny_data_root,
                                                                                  tmp_path):
    """The shell asks for AVX2 kernels; the profile's "default" wins, in the command's own process (serial)
    and in local workers. The unpinned run of the same cells records the machine's best and other numbers:
    the pin changed the arithmetic, not only the label."""
    roots = {}
    for capability in ("default", None):
        folder = tmp_path / str(capability)
        folder.mkdir()
        params = _pinned_params(folder, launcher, capability)
        done = vgbench(params, tiny_data_root, folder / "results", "train", "--only", only,
                       env={cpu_kernels.ENV: "avx2", cpu_kernels.ONEDNN_ENV: "AVX2"} if capability else {})
        assert done.returncode == 0, done.stdout + done.stderr
        roots[capability] = metrics_of(folder / "results")
    pinned, native = roots["default"], roots[None]
    assert len(pinned) == len(native) >= 1
    assert {(m["environment"]["cpu_capability"], m["environment"]["onednn_isa"],
             m["environment"]["onednn_max_cpu_isa"]) for m in pinned.values()} == {("DEFAULT", "Intel SSE4.1", "SSE41")}
    assert {(m["environment"]["cpu_capability"], m["environment"]["onednn_max_cpu_isa"])
            for m in native.values()} == {(cpu_kernels.best_here().upper(), None)}
    assert {m["environment"]["onednn_isa"] for m in native.values()} == {_onednn_best_here()} != {"Intel SSE4.1"}
    assert {m["cell"]["trainer"]["cpu_capability"] for m in pinned.values()} == {"default"}
    losses = {(m["cell"]["remedy"], m["cell"]["depth"]): m["final_train_loss"] for m in native.values()}
    assert any(m["final_train_loss"] != losses[(m["cell"]["remedy"], m["cell"]["depth"])] for m in pinned.values())


def test_a_process_running_other_kernels_refuses_with_what_to_do(monkeypatch):
    """This test process has run torch operations already, with the machine's best kernels: too late to pin."""
    import torch

    torch.ones(3).sum()  # ATen has chosen its kernels
    monkeypatch.delenv(cpu_kernels.ENV, raising=False)
    monkeypatch.delenv(cpu_kernels.ONEDNN_ENV, raising=False)
    with pytest.raises(cpu_kernels.CpuKernelsError) as unset:
        cpu_kernels.check("default")
    assert str(unset.value) == (
        f"trainer.cpu_capability is 'default' but torch runs {cpu_kernels.running()} kernels in this process: "
        f"ATEN_CPU_CAPABILITY is None: it must be 'default' before torch runs its first operation (vgbench's "
        f"launchers set it for their workers; in your own Python, export it before starting)")
    monkeypatch.setenv(cpu_kernels.ENV, "default")
    with pytest.raises(cpu_kernels.CpuKernelsError, match="this CPU has no default kernels, or torch had already "
                                                          "run an operation when ATEN_CPU_CAPABILITY was set"):
        cpu_kernels.check("default")
    now = cpu_kernels.running()
    monkeypatch.setenv(cpu_kernels.ENV, now)
    # oneDNN chose its instruction set at this process's first primitive, with no variable set: its best, which
    # is the pinned level's only where that level is the CPU's best in every extension (an AVX2 CPU without
    # VNNI). Elsewhere it is refused, the variable unset or set too late (the next test shows it on any CPU).
    isa, wanted = cpu_kernels.onednn_isa(), cpu_kernels.ONEDNN_ISA_NAMES[cpu_kernels.ONEDNN_LEVELS[now]]
    for late in (None, cpu_kernels.ONEDNN_LEVELS[now]):
        if late:
            monkeypatch.setenv(cpu_kernels.ONEDNN_ENV, late)
        if isa == wanted:
            cpu_kernels.check(now)
            continue
        with pytest.raises(cpu_kernels.CpuKernelsError) as refused:
            cpu_kernels.check(now)
        assert str(refused.value) == (
            f"trainer.cpu_capability is {now!r} but oneDNN runs {isa!r}, not {wanted!r}, in this process: "
            f"ONEDNN_MAX_CPU_ISA is {late!r}; " + ("oneDNN had already run a primitive when it was set" if late else
                                                   f"it must be {cpu_kernels.ONEDNN_LEVELS[now]!r} before oneDNN runs "
                                                   f"its first primitive (vgbench's launchers set it for their "
                                                   f"workers; in your own Python, export it before starting)"))
    cpu_kernels.check(None)  # no pin passes


def _onednn_best_here() -> str:
    """oneDNN's words for this CPU's best instruction set, asked of a fresh process with no cap."""
    env = {key: value for key, value in os.environ.items() if key not in (cpu_kernels.ENV, cpu_kernels.ONEDNN_ENV)}
    return subprocess.run([sys.executable, "-c", "from vgbench import cpu_kernels; print(cpu_kernels.onednn_isa())"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_a_variable_set_after_onednn_s_first_primitive_is_caught():
    """ATen pinned from the start, oneDNN's variable set only after a convolution ran: the variable says
    SSE4.1 and the results would say so, but oneDNN keeps the instruction set it chose first, and the check
    (which asks oneDNN) refuses. "default" is below every x86-64 CPU's best, so this fails on any of them.
    Set before the first primitive, the same variable is read back and passes."""
    set_late, set_first = (f"{CONVOLVE}; os.environ[cpu_kernels.ONEDNN_ENV] = 'SSE41'",
                           f"os.environ[cpu_kernels.ONEDNN_ENV] = 'SSE41'; {CONVOLVE}")
    answers = {order: _checked_in_a_fresh_process(order) for order in (set_late, set_first)}
    assert answers[set_late] == (
        f"trainer.cpu_capability is 'default' but oneDNN runs {_onednn_best_here()!r}, not 'Intel SSE4.1', in this "
        f"process: ONEDNN_MAX_CPU_ISA is 'SSE41'; oneDNN had already run a primitive when it was set")
    assert answers[set_first] == "passed: Intel SSE4.1"


def test_a_pin_onednn_cannot_confirm_is_refused():
    """With ONEDNN_VERBOSE set, oneDNN writes its header at the first primitive, to the log, and never again:
    a convolution before the check spends it. The pin was set in time, but nothing can confirm it, so the
    group refuses rather than record kernels it did not see (an unpinned run records None instead)."""
    spent = _checked_in_a_fresh_process(f"os.environ[cpu_kernels.ONEDNN_ENV] = 'SSE41'; {CONVOLVE}",
                                        ONEDNN_VERBOSE="1")
    assert spent == (
        "trainer.cpu_capability is 'default' but oneDNN did not say which instruction set it runs in this process, "
        "so its pin (ONEDNN_MAX_CPU_ISA) cannot be confirmed: its verbose header was spent before vgbench asked "
        "(unset ONEDNN_VERBOSE), or this torch was built without oneDNN's verbose log")


CONVOLVE = ("torch.ops.aten.mkldnn_convolution(torch.ones(1, 8, 8, 8), torch.ones(8, 8, 3, 3), None, [1, 1], [1, 1], "
            "[1, 1], 1)")  # straight into oneDNN, whatever torch's choice of backend


def _checked_in_a_fresh_process(before: str, **env: str) -> str:
    """What ``check('default')`` says (its last line of output) in a new process pinned for ATen only, with
    ``env`` added, after running ``before``."""
    script = ("import os, torch\n"
              "from vgbench import cpu_kernels\n"
              f"{before}\n"
              "try:\n"
              "    cpu_kernels.check('default')\n"
              "    print('passed:', cpu_kernels.onednn_isa())\n"
              "except cpu_kernels.CpuKernelsError as error:\n"
              "    print(error)\n")
    inherited = {key: value for key, value in os.environ.items() if key != cpu_kernels.ONEDNN_ENV}
    return subprocess.run([sys.executable, "-c", script], env={**inherited, cpu_kernels.ENV: "default", **env},
                          capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]


def test_a_level_above_the_cpus_best_is_refused_before_anything_trains(tiny_data_root, tmp_path, monkeypatch,
                                                                          capsys):
    """An AVX2-only machine asked for AVX-512 kernels (its answer to "what is your best?" stands in for the
    hardware this machine may not be)."""
    assert cpu_kernels.unavailable("avx512", best="avx2") == (
        "trainer.cpu_capability = 'avx512': this CPU runs at most avx2 kernels; allowed here: default, avx2, or "
        "null for the best it has")
    assert cpu_kernels.unavailable("avx2", best="avx2") is None and cpu_kernels.unavailable(None, best="avx2") is None
    monkeypatch.setattr(cpu_kernels, "best_here", lambda: "avx2")
    params = _pinned_params(tmp_path, {"name": "serial"}, "avx512")
    code = main(["train", "--params", str(params), "--data-root", str(tiny_data_root),
                 "--results-root", str(tmp_path / "results")])
    assert code == 2
    assert "error: trainer.cpu_capability = 'avx512': this CPU runs at most avx2 kernels" in capsys.readouterr().err
    assert not (tmp_path / "results" / "cells").exists() or not any((tmp_path / "results" / "cells").iterdir())


def test_the_serial_launcher_leaves_the_environment_as_it_found_it(monkeypatch):
    monkeypatch.setenv(cpu_kernels.ENV, "avx2")
    monkeypatch.delenv(cpu_kernels.ONEDNN_ENV, raising=False)
    with cpu_kernels.pinned("default"):
        assert (os.environ[cpu_kernels.ENV], os.environ[cpu_kernels.ONEDNN_ENV]) == ("default", "SSE41")
    assert os.environ[cpu_kernels.ENV] == "avx2" and cpu_kernels.ONEDNN_ENV not in os.environ


def test_a_pin_outside_the_allowed_levels_is_a_configuration_error(tmp_path, capsys):
    params = write_params(tmp_path)
    raw = yaml.safe_load(params.read_text())
    raw["profiles"]["tiny"]["trainer"] = {"cpu_capability": "avx1024"}
    params.write_text(yaml.safe_dump(raw))
    assert main(["cells", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "cpu_capability" in err and "avx1024" in err and "'default', 'avx2' or 'avx512'" in err, err
