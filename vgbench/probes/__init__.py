"""Gradient-flow probes: taps in the models, Lightning callbacks around them."""
