"""Published claims about vanishing gradients and their remedies, checked against the leaderboard.

One registry, like the other axes: each claim has its sources (BibTeX keys), the statement as the
papers make it, the thresholds its check uses and why, and the check itself. A check reads the
leaderboard rows of one (family, data set) block (a row per remedy and depth at the rate chosen on
validation, aggregated over seeds with a 95% t interval) and the init profiles (per layer, mean over
seeds), and returns a verdict with the numbers it used:

- ``holds``: every condition is met, in every block of the profile where the claim can be checked;
- ``fails``: some condition is not met in some block (the evidence says which);
- ``undetermined``: no block fails, but in some block a number the check needs is undefined (one seed has
  no interval; a gradient ratio that was not measured), so it can neither hold nor fail there;
- ``not in this profile``: no block has the rows the check needs (another profile has them).

With each verdict come the rows its check read whose seeds disagree (``report.seeds_disagree``): such a
verdict is the first to move with another CPU's rounding, so the claims table names them.

The thresholds are the papers' where they give one; otherwise they are stated with the reason. A
claim that fails is reported as failing, never tuned away: the default profile is a CPU budget (8 to
30 epochs per block), and a claim about what trains at depth can fail there for lack of epochs, which the
evidence's ``converged`` share shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import pandas as pd

from vgbench.references import check_keys
from vgbench.report import MAJORITY, seeds_disagree
from vgbench.registry import Registry

HOLDS, FAILS, UNDETERMINED, ABSENT = "holds", "fails", "undetermined", "not in this profile"
VERDICTS = (HOLDS, FAILS, UNDETERMINED, ABSENT)

# Shared thresholds (the reason is in each claim's text):
VANISHED_LOG10 = -1.0  # the first layer's gradient at least 10x below the last one's
FLAT_LOG10 = 1.0  # within a factor of 10 either way: no vanishing, no explosion


@dataclass(frozen=True)
class Verdict:
    status: str  # one of VERDICTS
    evidence: str
    # The rows it read whose seeds disagree ("mlp batchnorm d20"): a verdict resting on them moves with
    # another CPU's rounding more often than one resting on rows whose seeds agree (README, "Across machines").
    soft_rows: tuple[str, ...] = ()


@dataclass(frozen=True)
class Block:
    """One (family, data set) of the leaderboard, with its init profiles."""

    family: str
    dataset: str
    rows: pd.DataFrame  # leaderboard rows of this block
    profiles: pd.DataFrame  # per layer at init: remedy, depth, layer, log10_dL_dh_norm, activation_variance
    read: list = field(default_factory=list, compare=False, repr=False)  # the rows ``row`` handed out

    def row(self, remedy: str, depth: str = "deepest") -> pd.Series | None:
        """The row of ``remedy`` at the block's deepest (or shallowest) depth; None if absent."""
        depths = self.rows["depth"]
        wanted = depths.max() if depth == "deepest" else depths.min()
        found = self.rows[(self.rows["remedy"] == remedy) & (depths == wanted)]
        if found.empty:
            return None
        self.read.append(found.iloc[0])
        return found.iloc[0]


@dataclass(frozen=True)
class Claim:
    name: str
    cites: tuple[str, ...]
    statement: str
    thresholds: str  # which numbers decide, and why those
    families: tuple[str, ...]
    datasets: tuple[str, ...] | None  # None: any data set of those families
    needs: tuple[str, ...]  # remedies the check reads
    # (holds, evidence) for one block; holds is None where a number it needs is undefined (``_decided``)
    check: Callable[[Block], tuple[bool | None, str]] = field(repr=False)


CLAIMS: Registry[Claim] = Registry("published claim")


def _claim(name: str, cites: tuple[str, ...], statement: str, thresholds: str, families: tuple[str, ...],
           needs: tuple[str, ...], datasets: tuple[str, ...] | None = None):
    def register(check: Callable[[Block], tuple[bool | None, str]]) -> Callable[[Block], tuple[bool | None, str]]:
        CLAIMS.add(name, Claim(name, check_keys(cites, f"claim {name!r}"), statement, thresholds, families,
                               datasets, needs, check))
        return check

    return register


# -- describing a row in the evidence --------------------------------------------------------------------------

def _num(value: float, digits: int = 1) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _metric(row: pd.Series) -> str:
    low, high = row["test_metric_ci_low"], row["test_metric_ci_high"]
    interval = "" if math.isnan(low) or math.isnan(high) else f" [{low:.3f}, {high:.3f}]"
    return f"test {row['metric']} {row['test_metric_mean']:.3f}{interval}"


def _trained(row: pd.Series) -> str:
    n = int(row["n"])
    return f"trainable {round(row['trainable_rate'] * n)}/{n}, converged {round(row['converged_rate'] * n)}/{n}"


def _describe(row: pd.Series, *parts: str) -> str:
    return f"{row['remedy']} d{int(row['depth'])}: " + ", ".join(parts)


def _ratio(row: pd.Series) -> str:
    return f"log10 dL/dh first/last {_num(row['init_log10_dL_dh_first_last'])}"


def _decided(holds: bool, *needed: float) -> bool | None:
    """``holds``, or None where a number it was computed from is NaN (a comparison with NaN is False, which
    would read as a failure): the claim is undetermined there, not failed."""
    return None if any(value is None or math.isnan(value) for value in needed) else bool(holds)


def _same_log10(a: float, b: float, tolerance: float) -> bool:
    """Within ``tolerance`` in log10, equal infinities included (two gradients that both underflowed to 0)."""
    return a == b or abs(a - b) <= tolerance


def _trains(row: pd.Series) -> bool:
    return row["trainable_rate"] >= MAJORITY  # the frontier's rule


# -- the claims ---------------------------------------------------------------------------------------------------

@_claim("glorot2010_sigmoid_vanishes", ("glorot2010understanding", "bengio1994learning"),
        "In a deep sigmoid network with the standard initialization, the back-propagated gradient shrinks "
        "toward the input, and the deep network trains poorly.",
        "At the deepest depth: log10 of the first/last gradient ratio at init <= -1 (a tenfold drop, the least "
        "called vanishing here), and trainable for fewer than half of the seeds.",
        families=("mlp",), needs=("sigmoid_standard",))
def _sigmoid_vanishes(block: Block) -> tuple[bool | None, str]:
    row = block.row("sigmoid_standard")
    ratio = row["init_log10_dL_dh_first_last"]
    return (_decided(ratio <= VANISHED_LOG10 and not _trains(row), ratio),
            _describe(row, _ratio(row), _metric(row), _trained(row)))


@_claim("he2015_relu_he_init", ("he2015delving", "glorot2011deep"),
        "Rectifier networks with He initialization keep the back-propagated gradient's scale through depth "
        "and train deep.",
        "At the deepest depth: |log10 first/last ratio| <= 1 (within a factor of 10) and trainable for at least "
        "half of the seeds.",
        families=("mlp",), needs=("he_relu",))
def _relu_he(block: Block) -> tuple[bool | None, str]:
    row = block.row("he_relu")
    ratio = row["init_log10_dL_dh_first_last"]
    return (_decided(abs(ratio) <= FLAT_LOG10 and _trains(row), ratio),
            _describe(row, _ratio(row), _metric(row), _trained(row)))


@_claim("ioffe2015_batchnorm_trains_sigmoid", ("ioffe2015batch",),
        "Batch normalization lets networks of saturating (sigmoid) units train at depths where the same "
        "network without it does not.",
        "At the deepest depth: sigmoid + batch norm trainable for at least half of the seeds, the same small-init "
        "sigmoid stack without it for fewer than half.",
        families=("mlp", "dbn"), needs=("batchnorm", "small_init"))
def _batchnorm(block: Block) -> tuple[bool | None, str]:
    with_bn, without = block.row("batchnorm"), block.row("small_init")
    return (_trains(with_bn) and not _trains(without),
            "; ".join(_describe(r, _metric(r), _trained(r)) for r in (with_bn, without)))


# Klambauer et al. 2017, Theorem 1: the SELU map sends mean in [-0.1, 0.1] and variance in [0.8, 1.5] into
# itself, with a stable fixed point at (0, 1).
SELU_VARIANCE = (0.8, 1.5)


@_claim("klambauer2017_selu_unit_variance", ("klambauer2017self",),
        "With SELU units and LeCun-normal initialization, activations keep unit variance through depth.",
        "At the deepest depth, at initialization: every hidden layer's activation variance in [0.8, 1.5], the "
        "variance interval of the paper's Theorem 1 (mapped into itself, around the fixed point 1).",
        families=("mlp",), needs=("selu_lecun",))
def _selu(block: Block) -> tuple[bool | None, str]:
    depth = int(block.rows["depth"].max())
    layers = block.profiles[(block.profiles["remedy"] == "selu_lecun") & (block.profiles["depth"] == depth)]
    variances = layers["activation_variance"]
    low, high = SELU_VARIANCE
    if variances.empty:  # no probe rows for this cell: nothing to read, not a failure
        return None, f"selu_lecun d{depth}: no activation variances recorded"
    outside = int(((variances < low) | (variances > high)).sum())  # a NaN is neither inside nor outside
    unmeasured = int(variances.isna().sum())
    # one layer outside fails "every layer inside" whatever the others read; an unmeasured layer (NaN) among
    # layers all inside leaves it undetermined, not held
    holds = False if outside else (None if unmeasured else True)
    return (holds,
            f"selu_lecun d{depth}: activation variance at init from {_num(variances.min(), 2)} to "
            f"{_num(variances.max(), 2)} over {len(variances)} layers ({outside} outside [{low}, {high}]"
            + (f", {unmeasured} not measured (NaN)" if unmeasured else "") + ")")


@_claim("srivastava2015_highway_trains_deep", ("srivastava2015training",),
        "Highway networks train at depths where plain networks of the same width stop learning.",
        "At the deepest depth: the highway net trainable for at least half of the seeds, the plain net for fewer "
        "than half.",
        families=("highway",), needs=("highway", "plain"))
def _highway(block: Block) -> tuple[bool | None, str]:
    highway, plain = block.row("highway"), block.row("plain")
    return (_trains(highway) and not _trains(plain),
            "; ".join(_describe(r, _metric(r), _trained(r)) for r in (highway, plain)))


@_claim("he2016_degradation_not_vanishing", ("he2016deep",),
        "A deeper plain network (with batch normalization) reaches a higher training loss than a shallower one, "
        "although its gradients do not vanish; the residual network of the same depth does not degrade.",
        "Deepest vs shallowest depth: the plain BN net's final training loss is higher while its gradient did not "
        "vanish at the deepest depth (log10 first/last ratio > -1: no tenfold drop; the paper rules out vanishing, "
        "not growth), and the residual BN net's final training loss is not higher (the paper's training curves, "
        "by direction).",
        families=("resnet",), needs=("plain_bn", "residual_bn"))
def _degradation(block: Block) -> tuple[bool | None, str]:
    plain_deep, plain_shallow = block.row("plain_bn"), block.row("plain_bn", "shallowest")
    res_deep, res_shallow = block.row("residual_bn"), block.row("residual_bn", "shallowest")
    degrades = plain_deep["final_train_loss_mean"] > plain_shallow["final_train_loss_mean"]
    healthy = plain_deep["init_log10_dL_dh_first_last"] > VANISHED_LOG10
    holds_up = res_deep["final_train_loss_mean"] <= res_shallow["final_train_loss_mean"]
    # A diverged seed makes a row's loss +inf: two such rows have no order (inf > inf and inf <= inf).
    unordered = any(math.isinf(deep["final_train_loss_mean"]) and math.isinf(shallow["final_train_loss_mean"])
                    for deep, shallow in ((plain_deep, plain_shallow), (res_deep, res_shallow)))

    def loss(deep: pd.Series, shallow: pd.Series) -> str:
        return (f"{deep['remedy']} train loss d{int(shallow['depth'])} {shallow['final_train_loss_mean']:.3f} -> "
                f"d{int(deep['depth'])} {deep['final_train_loss_mean']:.3f}")

    decided = _decided(degrades and healthy and holds_up, plain_deep["init_log10_dL_dh_first_last"])
    return (None if unordered else decided,
            f"{loss(plain_deep, plain_shallow)}, {_ratio(plain_deep)}; {loss(res_deep, res_shallow)}")


@_claim("hochreiter1997_lstm_long_lags", ("hochreiter1997long", "bengio1994learning"),
        "On the adding problem with long time lags, a tanh RNN fails while an LSTM solves it.",
        "At the longest sequence: the standard-init tanh RNN trainable for fewer than half of the seeds "
        "(trainable: MSE at most half the constant predictor's), the LSTM for at least half.",
        families=("rnn",), datasets=("adding",), needs=("tanh_standard", "lstm"))
def _lstm(block: Block) -> tuple[bool | None, str]:
    tanh, lstm = block.row("tanh_standard"), block.row("lstm")
    return (not _trains(tanh) and _trains(lstm), "; ".join(_describe(r, _metric(r), _trained(r)) for r in (tanh, lstm)))


@_claim("le2015_irnn_adding", ("le2015simple",),
        "A ReLU RNN with identity-initialized recurrent weights (IRNN) solves the adding problem where a tanh RNN "
        "fails.",
        "At the longest sequence: the IRNN trainable for at least half of the seeds, the standard-init tanh RNN "
        "for fewer than half.",
        families=("rnn",), datasets=("adding",), needs=("irnn", "tanh_standard"))
def _irnn(block: Block) -> tuple[bool | None, str]:
    irnn, tanh = block.row("irnn"), block.row("tanh_standard")
    return (_trains(irnn) and not _trains(tanh), "; ".join(_describe(r, _metric(r), _trained(r)) for r in (irnn, tanh)))


@_claim("hinton2006_pretraining_helps", ("hinton2006fast", "bengio2007greedy"),
        "Greedy layer-wise RBM pretraining improves a deep sigmoid stack over the same stack trained from a random "
        "initialization.",
        "At the deepest depth: the pretrained stack's 95% interval of the test metric lies entirely on the better "
        "side of the randomly initialized stack's (non-overlapping intervals, as the rank groups use).",
        families=("dbn",), needs=("pretrain", "small_init"))
def _pretraining(block: Block) -> tuple[bool | None, str]:
    pretrained, random = block.row("pretrain"), block.row("small_init")
    better = (pretrained["test_metric_ci_low"] > random["test_metric_ci_high"] if pretrained["higher_is_better"]
              else pretrained["test_metric_ci_high"] < random["test_metric_ci_low"])
    # One seed has no interval: undetermined, not failed.
    bounds = [r[key] for r in (pretrained, random) for key in ("test_metric_ci_low", "test_metric_ci_high")]
    return (_decided(better, *bounds), "; ".join(_describe(r, _metric(r), _trained(r)) for r in (pretrained, random)))


@_claim("pascanu2013_clipping_not_vanishing", ("pascanu2013difficulty",),
        "Gradient-norm clipping deals with exploding gradients; it does nothing for vanishing ones.",
        "At the deepest depth: with clipping, the same init ratio as without (within 0.1 in log10: the same "
        "weights) and, where the unclipped net does not train, neither does the clipped one.",
        families=("mlp", "rnn"), needs=("grad_clip", "small_init"))
def _clipping(block: Block) -> tuple[bool | None, str]:
    clipped, plain = block.row("grad_clip"), block.row("small_init")
    ratios = clipped["init_log10_dL_dh_first_last"], plain["init_log10_dL_dh_first_last"]
    no_rescue = _trains(plain) or not _trains(clipped)
    return (_decided(_same_log10(*ratios, 0.1) and no_rescue, *ratios),
            "; ".join(_describe(r, _ratio(r), _metric(r), _trained(r)) for r in (clipped, plain)))


# -- checking ----------------------------------------------------------------------------------------------------

def blocks(rows: pd.DataFrame, profiles: pd.DataFrame) -> list[Block]:
    out = []
    for (family, dataset), part in rows.groupby(["family", "dataset"], sort=False):
        mine = (profiles[(profiles["family"] == family) & (profiles["dataset"] == dataset)] if len(profiles)
                else profiles)
        out.append(Block(family, dataset, part, mine))
    return out


def _applies(claim: Claim, block: Block) -> bool:
    if block.family not in claim.families or (claim.datasets and block.dataset not in claim.datasets):
        return False
    deepest = block.rows[block.rows["depth"] == block.rows["depth"].max()]
    shallowest = block.rows[block.rows["depth"] == block.rows["depth"].min()]
    return all(set(claim.needs) <= set(part["remedy"]) for part in (deepest, shallowest))


def verdict(claim: Claim, all_blocks: list[Block]) -> Verdict:
    # Each check reads its own copy of a block, so that the rows it read are its own.
    checked = [(block, *claim.check(block))
               for block in (replace(block, read=[]) for block in all_blocks if _applies(claim, block))]
    if not checked:
        where = "/".join(claim.families) + (f" on {'/'.join(claim.datasets)}" if claim.datasets else "")
        return Verdict(ABSENT, f"needs {', '.join(claim.needs)} in a {where} block")
    def status(holds: bool | None) -> str:
        return UNDETERMINED if holds is None else HOLDS if holds else FAILS

    outcomes = {status(holds) for _, holds, _ in checked}
    overall = FAILS if FAILS in outcomes else UNDETERMINED if UNDETERMINED in outcomes else HOLDS
    evidence = " | ".join(f"{block.family} on {block.dataset} ({status(holds)}): {text}"
                          for block, holds, text in checked)
    soft = dict.fromkeys(f"{block.family} {row['remedy']} d{int(row['depth'])}"
                         for block, _, _ in checked for row in block.read if seeds_disagree(row))
    return Verdict(overall, evidence, tuple(soft))


def check_all(rows: pd.DataFrame, profiles: pd.DataFrame) -> pd.DataFrame:
    """One row per registered claim: name, sources, statement, thresholds, verdict, evidence and the rows it
    read whose seeds disagree."""
    all_blocks = blocks(rows, profiles)
    records = []
    for name in CLAIMS:
        claim = CLAIMS.get(name)
        result = verdict(claim, all_blocks)
        records.append({"claim": name, "cites": ",".join(claim.cites), "statement": claim.statement,
                        "thresholds": claim.thresholds, "verdict": result.status, "evidence": result.evidence,
                        "soft_rows": ", ".join(result.soft_rows)})
    return pd.DataFrame(records)
