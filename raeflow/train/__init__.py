"""raeflow.train."""
