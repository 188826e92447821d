"""The ``berth`` command line: a ctr-like client for berthd, built on ``berth.client``.

Layout, so that each later feature adds one module and one line:

- ``main`` holds the root command, its global options and the table of
  command groups (``COMMANDS``), each loaded only when it is used;
- one module per group (``namespaces``, ``leases``, ``plugins``...) defines
  that group with click and talks to the daemon only through the SDK;
- ``_group`` (lazy loading and aliases), ``_context`` (global options and the
  client), ``_output`` (tables, JSON, argument parsers) and ``_errors``
  (messages, hints and exit codes) are shared by all of them.

Startup speed is a feature: ``berth --help`` and ``berth <group> --help`` must
not import gRPC or the generated stubs, so group modules import ``berth.client``
only inside command bodies. ``tests/unit/test_cli_startup.py`` enforces this.
Exit is fast too: ``main`` flushes the output and leaves with ``os._exit``,
skipping interpreter teardown (see ``main._leave`` for what that relies on).
"""
