"""raeflow.models."""
