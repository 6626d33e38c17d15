"""CLI commands, one module per area; `raeflow.cli` assembles them."""
