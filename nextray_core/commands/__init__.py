"""One module per group of ``nextray`` subcommands; each exposes ``register(subparsers)``.

``cli.py`` imports the modules listed in ``COMMAND_MODULES`` in order, so adding a command
means adding a module here and one line there; heavy imports stay inside the handlers so that
``nextray --help`` is quick.
"""
