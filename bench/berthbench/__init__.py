"""berthbench: Berth and containerd measured side by side, in one run.

Layering, from the bottom:

* ``stats`` -- summaries of samples (n, min, median, max) and ratios; pure.
* ``procs`` -- what /proc says: RSS/PSS, process trees, mounts under a
  directory, and ending our own processes by PID.
* ``daemons`` -- an isolated containerd and an isolated berthd, each with its
  own root, state and socket in one temporary directory, driven with ``ctr``.
* ``images`` -- the fixture images (busybox, layered, wide, debian, debian
  zstd), built offline or from a cached debootstrap root, and pushed to a
  throwaway registry on 127.0.0.1.
* ``rows`` -- the catalogue of measurements and ``--rows`` selection.
* ``measure`` -- the measurements: A/B alternation, warm-ups, capability checks.
* ``report`` -- the table, the JSON document and the markdown summary.
* ``harness`` -- the command line: set up, measure, report, tear down.

Run it with ``./bench/run.sh`` (which installs what is missing first) or
``.venv/bin/python -m bench.berthbench`` from the repository root.
"""
