"""methods layer: few-shot algorithms as small modules (see docs/design.md, "1. Layers")."""
