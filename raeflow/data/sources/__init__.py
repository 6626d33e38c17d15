"""raeflow.data.sources."""
