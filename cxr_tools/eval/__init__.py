"""eval layer (see DESIGN.md §2)."""
