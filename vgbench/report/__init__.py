"""Reports built from cell results alone: leaderboard tables, W&B tables, figures."""

# A row's verdict is the verdict of at least half of its seeds: the trainability frontier, the claims
# (vgbench/findings.py) and the W&B Report's summaries all read "trainable" (or "vanished") this way.
MAJORITY = 0.5
