"""The Python shim v2 (``containerd-shim-berth-v2``): one per container (or
container group), between the daemon and runc.

Layering, bottom up; each module imports only those above it in this list:

* :mod:`~berth.shim.reaper` - the single ``waitpid`` caller and process spawner;
* :mod:`~berth.shim.runc` - the runc CLI driver;
* :mod:`~berth.shim.mount`, :mod:`~berth.shim.cgroups` - rootfs mounts, cgroup lookup;
* :mod:`~berth.shim.stdio` - FIFOs, log files, logging binaries, ptys;
* :mod:`~berth.shim.container` - a container's processes and their state machines;
* :mod:`~berth.shim.stats`, :mod:`~berth.shim.oom`, :mod:`~berth.shim.events` -
  metrics, OOM notification, event forwarding (protobuf starts here);
* :mod:`~berth.shim.service` - the ``containerd.task.v2.Task`` ttrpc service;
* :mod:`~berth.shim.server`, :mod:`~berth.shim.zygote`, :mod:`~berth.shim.main` -
  the process (spawned, or forked by the per-daemon zygote) and its command line.

The shim shares only :mod:`berth.ttrpc`, :mod:`berth.core.mount` (one
implementation of mount(2) for both) and the generated protobuf modules with
the daemon; it never imports gRPC.
"""
