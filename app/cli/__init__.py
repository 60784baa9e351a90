"""The billing-mirror command: one module per command group (app.cli.main is the entry point)."""
