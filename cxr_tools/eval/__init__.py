"""eval layer: metrics, intervals, statistics, the threshold grammar and plots as pure functions; it imports
nothing of ours but runtime, config and errors, so any layer may use it (docs/design.md, "1. Layers")."""
