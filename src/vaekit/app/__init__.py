"""The app: a thin layer over the library that knows about configs (``Config``, TOML and
the command line), named datasets and data files (:mod:`vaekit.app.data`), run directories
started from a config (:mod:`vaekit.app.runs`), the CPU thread policy and the CLI.

The library (everything in ``vaekit`` outside this package) never imports it.
"""
