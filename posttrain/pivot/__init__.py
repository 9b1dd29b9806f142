"""PivotRL (Yi et al. 2026, arXiv 2603.21383): RL spent only on the pivotal turns of expert trajectories.

    candidates.py  cut expert trajectories into (state, expert action) candidates
    profile.py     K one-turn samples per candidate from the frozen policy, scored by a functional
                   verifier; per-candidate statistics; the pivot filter; saved, reusable profiles
The recipe that trains on the pivots is `posttrain.recipes.pivotrl`.
"""
