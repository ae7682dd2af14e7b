"""Data allocation across languages (`python -m mtf.allocate`): curves fitted to pilot runs
(curves), and the split of a budget of examples that they predict is best (solver)."""
