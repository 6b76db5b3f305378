"""eval layer: metrics, intervals, statistics and plots as pure functions (see docs/design.md, "1. Layers")."""
