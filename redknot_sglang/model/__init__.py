"""Changes to the served model's weights (head order)."""
