"""What probing copy memory by its recall costs.

Copy memory scores every step, so its probe follows back the recall's loss (the last 10 steps) instead of
the training loss, and on a probe step that takes a forward and backward pass of its own before the training
step (vgbench/probes/gradient_flow.py, ``_probe_loss_pass``). Here one cell group of a copy-memory row
(K = 9: seeds 0, 1, 2 x three Adam rates; the default profile's RNN settings: 32 units, batch 50, probes
every 50 steps) trains through ``run_group`` as ``vgbench train`` would, probed, and with no probed training
step (its init probe still runs), in alternating order. Printed per remedy (medians over ``--repeats``):

  fit ms/step   the probed run's fit time per optimizer step of the group;
  probes/fit    vgbench's own probe timer over the fit time (its ``probe_overhead_fraction``: the init pass,
                the recall passes and the taps), the figure the README's "probes <= 3%" is about;
  A/B           (probed fit - unprobed fit + the unprobed run's probe time) / probed fit: everything probing
                costs, measured as a difference of two timings (noisy: compare repeats).

    python bench/recall_probe.py                               # T = 50, 3 epochs, 3 repeats: about 3 minutes
    python bench/recall_probe.py --delay 100 --epochs 2 --remedies gru,lstm
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from stacking import vgbench_group  # noqa: E402  (the same run_group call and unprobed variant)

from vgbench import cpu_kernels  # noqa: E402
from vgbench.config import load_params  # noqa: E402
from vgbench.data.store import ensure  # noqa: E402
from vgbench.matrix import expand  # noqa: E402
from vgbench.training.run_group import data_for  # noqa: E402


def copy_memory_profile(params_path: str, delay: int, remedies: list[str], epochs: int, folder: Path):
    """The default profile with its matrix replaced by one copy-memory block in its RNN block's settings."""
    raw = yaml.safe_load(Path(params_path).read_text())
    default = raw["profiles"]["default"]
    rnn = next(block for block in default["matrix"] if block["family"] == "rnn")
    default["datasets"] = {"copy_memory": {"train_size": 3000, "test_size": 1000}}
    default["matrix"] = [{**rnn, "dataset": "copy_memory", "remedies": remedies, "depths": [delay],
                          "training": {**rnn["training"], "max_epochs": epochs}}]
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path, "default").active


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=int, default=50, help="copy-memory delay T (sequence length T + 20)")
    parser.add_argument("--remedies", default="small_init,gru", help="comma-separated rnn remedies")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="vgbench-recall-") as tmp:
        profile = copy_memory_profile(args.params, args.delay, args.remedies.split(","), args.epochs, Path(tmp))
        cpu_kernels.pin_this_process(profile.trainer.cpu_capability)  # before the first torch operation
        ensure(profile, Path(tmp) / "data")
        cells = expand(profile)
        k = sum(cell.remedy == cells[0].remedy for cell in cells)
        print(f"copy memory T = {args.delay}, K = {k} per group, {args.epochs} epochs, "
              f"probes every {cells[0].probes['interval_steps']} steps, 1 thread, repeats {args.repeats}")
        print(f"{'remedy':12}{'steps':>7}{'fit ms/step':>13}{'probes/fit':>12}{'A/B':>8}   per-repeat A/B")
        for remedy in args.remedies.split(","):
            group = [cell for cell in cells if cell.remedy == remedy]
            data = data_for(group[0], Path(tmp) / "data", {})
            probed, unprobed = [], []
            for repeat in range(args.repeats):
                order = [(probed, True), (unprobed, False)]
                for runs, probes in order if repeat % 2 == 0 else order[::-1]:
                    runs.append(vgbench_group(group, data, args.epochs, probes=probes))
            steps = probed[0]["steps"]
            shares = [(p["seconds"] - u["seconds"] + u["probe_seconds"]) / p["seconds"]
                      for p, u in zip(probed, unprobed)]
            fit_ms = statistics.median(1000 * p["seconds"] / p["steps"] for p in probed)
            probe_share = statistics.median(p["probe_seconds"] / p["seconds"] for p in probed)
            print(f"{remedy:12}{steps:7d}{fit_ms:13.2f}{100 * probe_share:11.1f}%{100 * statistics.median(shares):7.1f}%"
                  f"   {', '.join(f'{100 * share:.1f}%' for share in shares)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
