"""raeflow.report."""
