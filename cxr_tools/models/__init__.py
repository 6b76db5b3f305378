"""models layer (see DESIGN.md §2)."""
