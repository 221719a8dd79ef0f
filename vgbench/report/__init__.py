"""Reports built from cell results alone: leaderboard tables, W&B tables, figures."""
