"""The ``cxr`` command line: Typer app, one module per command. The only layer that knows Typer or Rich."""
