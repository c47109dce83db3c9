"""Pure decisions of the lead model. Nothing here does I/O or imports the other packages;
ruff's banned-api list (pyproject.toml) fails the lint, and so the tests, if it does."""
