"""Published claims checked against leaderboard rows: each verdict follows from the numbers, both ways."""

from __future__ import annotations

import json
import math

import pandas as pd

from vgbench import results
from vgbench.findings import ABSENT, CLAIMS, FAILS, HOLDS, UNDETERMINED, VERDICTS, check_all
from vgbench.references import references
from vgbench.report.figures import init_profiles


def row(family, remedy, depth, test=0.5, ci=0.05, trainable=1.0, ratio=0.0, loss=1.0, dataset=None, higher=True):
    return {"family": family, "dataset": dataset or {"rnn": "adding"}.get(family, "mnist1d"), "remedy": remedy,
            "depth": depth, "metric": "accuracy" if higher else "mse", "higher_is_better": higher,
            "test_metric_mean": test, "test_metric_ci_low": test - ci, "test_metric_ci_high": test + ci, "n": 3,
            "trainable_rate": trainable, "converged_rate": 1.0, "init_log10_dL_dh_first_last": ratio,
            "final_train_loss_mean": loss}


def profile(family, remedy, depth, variances):
    return pd.DataFrame([{"family": family, "dataset": "mnist1d", "depth": depth, "remedy": remedy, "layer": i + 1,
                          "log10_dL_dh_norm": 0.0, "activation_variance": v} for i, v in enumerate(variances)])


def verdicts(rows: list[dict], profiles: pd.DataFrame | None = None) -> dict[str, str]:
    frame = pd.DataFrame(rows)
    table = check_all(frame, profiles if profiles is not None else pd.DataFrame(
        columns=["family", "dataset", "depth", "remedy", "layer", "log10_dL_dh_norm", "activation_variance"]))
    return dict(zip(table["claim"], table["verdict"]))


def both_depths(family, remedy, shallow: dict, deep: dict, depths=(2, 20)) -> list[dict]:
    return [row(family, remedy, depths[0], **shallow), row(family, remedy, depths[1], **deep)]


def test_the_registry_covers_the_papers_the_issue_names():
    cited = {key for name in CLAIMS for key in CLAIMS.get(name).cites}
    for key in ("glorot2010understanding", "he2015delving", "ioffe2015batch", "klambauer2017self",
                "srivastava2015training", "he2016deep", "hochreiter1997long", "le2015simple", "hinton2006fast",
                "bengio2007greedy"):
        assert key in cited and key in references(), key
    for name in CLAIMS:
        claim = CLAIMS.get(name)
        assert claim.statement.endswith(".") and claim.thresholds and claim.needs, name


def test_sigmoid_vanishing_holds_and_fails_on_the_numbers():
    vanishing = both_depths("mlp", "sigmoid_standard", {}, dict(ratio=-16.1, trainable=0.0, test=0.1))
    assert verdicts(vanishing)["glorot2010_sigmoid_vanishes"] == HOLDS
    flat = both_depths("mlp", "sigmoid_standard", {}, dict(ratio=-0.5, trainable=0.0, test=0.1))
    assert verdicts(flat)["glorot2010_sigmoid_vanishes"] == FAILS  # not a tenfold drop
    trains = both_depths("mlp", "sigmoid_standard", {}, dict(ratio=-16.1, trainable=2 / 3))
    assert verdicts(trains)["glorot2010_sigmoid_vanishes"] == FAILS


def test_a_claim_without_its_rows_is_not_in_this_profile():
    result = check_all(pd.DataFrame(both_depths("mlp", "he_relu", {}, {})), pd.DataFrame(
        columns=["family", "dataset", "depth", "remedy", "layer", "log10_dL_dh_norm", "activation_variance"]))
    by_name = result.set_index("claim")
    assert by_name.loc["he2015_relu_he_init", "verdict"] == HOLDS
    assert by_name.loc["srivastava2015_highway_trains_deep", "verdict"] == ABSENT
    assert "needs highway, plain in a highway block" in by_name.loc["srivastava2015_highway_trains_deep", "evidence"]
    assert set(result["verdict"]) <= set(VERDICTS) and len(result) == len(CLAIMS.names())



def test_a_verdict_resting_on_a_row_whose_seeds_disagree_names_that_row():
    """The batch-norm claim held on a row trainable for 3 of 3 seeds on one CPU and failed on another where
    1 of 3 were: a verdict read from seeds that disagree is the first to move. check_all names such rows
    (the rows the check read, in the block it read them from); none where the seeds agree."""
    empty_profiles = pd.DataFrame(columns=["family", "dataset", "depth", "remedy", "layer", "log10_dL_dh_norm",
                                           "activation_variance"])

    def deep(family, remedy, depths=(2, 20), **fields) -> list[dict]:
        shallow, deepest = both_depths(family, remedy, {}, {}, depths)
        return [shallow, deepest | fields]

    def batchnorm_claim(mlp_batchnorm: dict, dbn_small_init: dict) -> pd.Series:
        rows = (deep("mlp", "batchnorm", **mlp_batchnorm) + deep("mlp", "small_init", trainable_rate=0.0)
                + deep("dbn", "batchnorm", (3, 20)) + deep("dbn", "small_init", (3, 20), **dbn_small_init))
        return check_all(pd.DataFrame(rows), empty_profiles).set_index("claim").loc["ioffe2015_batchnorm_trains_sigmoid"]

    one_of_three = batchnorm_claim(dict(trainable_rate=1 / 3, rate_weak=2 / 3), dict(trainable_rate=0.0))
    assert one_of_three["verdict"] == FAILS and one_of_three["soft_rows"] == "mlp batchnorm d20"
    agreeing = batchnorm_claim(dict(trainable_rate=1.0, rate_weak=0.0), dict(trainable_rate=0.0))
    assert agreeing["verdict"] == HOLDS and agreeing["soft_rows"] == ""
    # A failure label that one seed of three has makes a row soft too, in whichever block the check read it.
    labelled = batchnorm_claim(dict(trainable_rate=1.0), dict(trainable_rate=0.0, rate_dead_units=1 / 3))
    assert labelled["verdict"] == HOLDS and labelled["soft_rows"] == "dbn small_init d20"
    # A row the check did not read (another remedy's) never marks it.
    table = check_all(pd.DataFrame(deep("mlp", "he_relu") + deep("mlp", "elu", trainable_rate=2 / 3)), empty_profiles)
    he = table.set_index("claim").loc["he2015_relu_he_init"]
    assert he["verdict"] == HOLDS and he["soft_rows"] == ""


def test_batch_norm_is_checked_in_every_block_that_has_it_and_fails_if_one_fails():
    rows = (both_depths("mlp", "batchnorm", {}, dict(trainable=0.0)) + both_depths("mlp", "small_init", {}, dict(trainable=0.0))
            + both_depths("dbn", "batchnorm", {}, dict(trainable=1.0), depths=(3, 20))
            + both_depths("dbn", "small_init", {}, dict(trainable=0.0), depths=(3, 20)))
    table = check_all(pd.DataFrame(rows), pd.DataFrame(columns=["family", "dataset", "depth", "remedy", "layer",
                                                                "log10_dL_dh_norm", "activation_variance"]))
    claim = table.set_index("claim").loc["ioffe2015_batchnorm_trains_sigmoid"]
    assert claim["verdict"] == FAILS
    assert "mlp on mnist1d (fails)" in claim["evidence"] and "dbn on mnist1d (holds)" in claim["evidence"]


def test_selu_reads_the_init_activation_variance_against_theorem_1s_interval():
    rows = both_depths("mlp", "selu_lecun", {}, {})
    assert verdicts(rows, profile("mlp", "selu_lecun", 20, [1.0, 0.95, 1.1, 0.9]))[
        "klambauer2017_selu_unit_variance"] == HOLDS
    assert verdicts(rows, profile("mlp", "selu_lecun", 20, [1.0, 0.95, 1.6]))[
        "klambauer2017_selu_unit_variance"] == FAILS
    # A variance that is not a number (a probe that overflowed) is neither inside nor outside: undetermined, and
    # so is a block without probe rows for the cell, rather than a silent pass or a failure.
    assert verdicts(rows, profile("mlp", "selu_lecun", 20, [1.0, math.nan, 1.1]))[
        "klambauer2017_selu_unit_variance"] == UNDETERMINED
    assert verdicts(rows, profile("mlp", "selu_lecun", 2, [1.0]))["klambauer2017_selu_unit_variance"] == UNDETERMINED
    # ... but a layer outside the interval fails the claim, whatever an unmeasured one would have read
    assert verdicts(rows, profile("mlp", "selu_lecun", 20, [1.0, math.nan, 1.6]))[
        "klambauer2017_selu_unit_variance"] == FAILS


def test_a_seed_whose_probe_read_nan_is_not_averaged_away(tmp_path):
    """The init profile averages each layer over the seeds; pandas skips NaN by default, so one overflowed
    seed vanished from the average and the SELU claim held on the others."""
    cells = []
    for seed, variances in enumerate(([1.0, 1.1], [1.0, math.nan])):
        cell_id = f"mlp-selu_lecun-mnist1d-d20-lr0.1-s{seed}-0"
        folder = results.cell_dir(tmp_path, cell_id)
        folder.mkdir(parents=True)
        (folder / "grad_profile.json").write_text(json.dumps(
            {"records": [{"dL_dh_norm": [1.0, 2.0], "activation_variance": variances}]}))
        cells.append({"cell_id": cell_id, "remedy": "selu_lecun", "family": "mlp", "dataset": "mnist1d", "depth": 20})
    layers = init_profiles(pd.DataFrame(cells), tmp_path)
    assert layers["activation_variance"].iloc[0] == 1.0 and math.isnan(layers["activation_variance"].iloc[1])
    assert layers["log10_dL_dh_norm"].round(6).tolist() == [0.0, 0.30103]
    rows = both_depths("mlp", "selu_lecun", {}, {})
    assert verdicts(rows, layers)["klambauer2017_selu_unit_variance"] == UNDETERMINED


def test_degradation_needs_a_rising_plain_loss_with_healthy_gradients_and_a_flat_residual_loss():
    def rows(plain_deep_loss, plain_ratio, residual_deep_loss):
        return (both_depths("resnet", "plain_bn", dict(loss=0.05), dict(loss=plain_deep_loss, ratio=plain_ratio), (8, 20))
                + both_depths("resnet", "residual_bn", dict(loss=0.05), dict(loss=residual_deep_loss), (8, 20)))
    assert verdicts(rows(0.16, 0.3, 0.04))["he2016_degradation_not_vanishing"] == HOLDS
    assert verdicts(rows(0.16, 1.3, 0.04))["he2016_degradation_not_vanishing"] == HOLDS  # growth is not vanishing
    assert verdicts(rows(0.16, -3.0, 0.04))["he2016_degradation_not_vanishing"] == FAILS  # that is vanishing
    assert verdicts(rows(0.04, 0.3, 0.04))["he2016_degradation_not_vanishing"] == FAILS  # no degradation
    assert verdicts(rows(0.16, 0.3, 0.2))["he2016_degradation_not_vanishing"] == FAILS  # the ResNet degrades too
    assert verdicts(rows(0.16, 0.3, math.inf))["he2016_degradation_not_vanishing"] == FAILS  # a seed diverged deep
    # Diverged seeds at both depths of the plain net: +inf and +inf have no order; nothing to decide.
    both = rows(math.inf, 0.3, 0.04)
    both[0]["final_train_loss_mean"] = math.inf
    assert verdicts(both)["he2016_degradation_not_vanishing"] == UNDETERMINED


def test_pretraining_needs_non_overlapping_intervals():
    def rows(pretrained, ci):
        return (both_depths("dbn", "pretrain", {}, dict(test=pretrained, ci=ci), (3, 20))
                + both_depths("dbn", "small_init", {}, dict(test=0.1, ci=0.01), (3, 20)))
    assert verdicts(rows(0.2, 0.05))["hinton2006_pretraining_helps"] == HOLDS
    assert verdicts(rows(0.2, 0.095))["hinton2006_pretraining_helps"] == FAILS  # 0.105 < 0.110: they overlap
    # One seed has no interval: the claim can be neither held nor failed (a NaN comparison reads False).
    assert verdicts(rows(0.2, math.nan))["hinton2006_pretraining_helps"] == UNDETERMINED


def test_long_lag_claims_read_the_longest_sequence():
    rows = (both_depths("rnn", "tanh_standard", {}, dict(trainable=0.0), (10, 50))
            + both_depths("rnn", "lstm", {}, dict(trainable=1 / 3), (10, 50))
            + both_depths("rnn", "irnn", dict(trainable=0.0), dict(trainable=1.0), (10, 50)))
    result = verdicts(rows)
    assert result["hochreiter1997_lstm_long_lags"] == FAILS and result["le2015_irnn_adding"] == HOLDS


def test_clipping_changes_nothing_for_vanishing():
    rows = (both_depths("mlp", "grad_clip", {}, dict(ratio=-32.4, trainable=0.0))
            + both_depths("mlp", "small_init", {}, dict(ratio=-32.4, trainable=0.0)))
    assert verdicts(rows)["pascanu2013_clipping_not_vanishing"] == HOLDS
    rows[1]["trainable_rate"] = 1.0  # clipping rescued a net that does not train without it: the claim fails
    assert verdicts(rows)["pascanu2013_clipping_not_vanishing"] == FAILS


def test_clipping_compares_two_gradients_that_both_underflowed_to_zero_as_the_same():
    """At T = 400 or 784 (the paper profile's RNNs) a small-init net's first/last ratio is below float64's
    range even in the float64 probe: log10 -inf, with and without clipping. -inf - -inf is NaN; the two are
    still the same ratio, and the claim must not fail on it."""
    rows = (both_depths("rnn", "grad_clip", {}, dict(ratio=-math.inf, trainable=0.0), (50, 400))
            + both_depths("rnn", "small_init", {}, dict(ratio=-math.inf, trainable=0.0), (50, 400)))
    assert verdicts(rows)["pascanu2013_clipping_not_vanishing"] == HOLDS
    rows[1]["init_log10_dL_dh_first_last"] = -60.0  # one underflowed, the other did not: not the same weights
    assert verdicts(rows)["pascanu2013_clipping_not_vanishing"] == FAILS
    rows[1]["init_log10_dL_dh_first_last"] = math.nan  # not measured: nothing to compare
    assert verdicts(rows)["pascanu2013_clipping_not_vanishing"] == UNDETERMINED


def test_an_undefined_number_makes_a_claim_undetermined_unless_another_block_fails_it():
    vanishing = both_depths("mlp", "sigmoid_standard", {}, dict(ratio=math.nan, trainable=0.0, test=0.1))
    table = check_all(pd.DataFrame(vanishing), pd.DataFrame(
        columns=["family", "dataset", "depth", "remedy", "layer", "log10_dL_dh_norm", "activation_variance"]))
    claim = table.set_index("claim").loc["glorot2010_sigmoid_vanishes"]
    assert claim["verdict"] == UNDETERMINED and "mlp on mnist1d (undetermined)" in claim["evidence"]
    failing = both_depths("mlp", "sigmoid_standard", {}, dict(ratio=-0.5, trainable=0.0), (2, 20))
    for part in failing:
        part["dataset"] = "other"
    assert verdicts(vanishing + failing)["glorot2010_sigmoid_vanishes"] == FAILS  # fails somewhere: fails
