"""raeflow.batch."""
