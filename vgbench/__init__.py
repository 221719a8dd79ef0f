"""vgbench: a reproducible benchmark suite for the vanishing-gradient problem.

The matrix has one registry per axis: ``vgbench.data.DATASETS``,
``vgbench.models.FAMILIES`` and ``vgbench.remedies.REMEDIES``.
"""

__version__ = "0.1.0"
