"""`trainer.cpu_capability`: a profile pins the vector kernels torch's CPU operations run, every launcher's
workers run them, and a process that runs others refuses to train instead of mislabelling its results.

The tests pin "default" (no vector kernels), the one level every x86-64 CPU has below its best, so the pin
is a real change of kernels on any CI machine.
"""

from __future__ import annotations

import os

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
    assert {(m["environment"]["cpu_capability"], m["environment"]["onednn_max_cpu_isa"])
            for m in pinned.values()} == {("DEFAULT", "SSE41")}
    assert {(m["environment"]["cpu_capability"], m["environment"]["onednn_max_cpu_isa"])
            for m in native.values()} == {(cpu_kernels.best_here().upper(), None)}
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
    with pytest.raises(cpu_kernels.CpuKernelsError) as no_onednn:  # oneDNN's variable is checked too
        cpu_kernels.check(now)
    assert str(no_onednn.value).startswith(f"trainer.cpu_capability is {now!r} but ONEDNN_MAX_CPU_ISA is None, not "
                                           f"{cpu_kernels.ONEDNN_LEVELS[now]!r}: oneDNN's convolutions would run "
                                           f"other kernels")
    monkeypatch.setenv(cpu_kernels.ONEDNN_ENV, cpu_kernels.ONEDNN_LEVELS[now])
    cpu_kernels.check(now)  # what it runs passes
    cpu_kernels.check(None)  # as does no pin


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
