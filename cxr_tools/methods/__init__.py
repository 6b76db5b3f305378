"""methods layer (see DESIGN.md §2)."""
