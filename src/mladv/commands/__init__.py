"""CLI sub-commands. Every module here defines ``register(app: typer.Typer) -> None``;
:mod:`mladv.cli` discovers and registers them all, so a new command is one new file."""
