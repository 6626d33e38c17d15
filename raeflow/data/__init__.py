"""raeflow.data."""
