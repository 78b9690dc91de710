"""The bodies of the command-line commands, one module each; :mod:`vaekit.app.cli` wires
them into typer. Nothing heavy is imported at module level (``vaekit --help`` stays without
torch): each command imports what it needs when it runs."""
