"""OCI runtime-spec generation: containerd 1.6's defaults, image config, options, seccomp.

This package owns what goes into a container's ``config.json``: the default
Linux spec, the default seccomp profile, the options that edit a spec
(image config, user, mounts, resources, capabilities, privileges, ...), and
reading ``/etc/passwd`` and ``/etc/group`` safely from an untrusted rootfs.
It is pure Python with no gRPC or protobuf; the daemon's services, the shim,
the CRI plugin and the CLI/SDK all build specs through :func:`generate`.

Layout:

* :mod:`berth.oci.spec` — the spec type, :class:`Context`, :func:`default_spec`
  and its constants;
* :mod:`berth.oci.seccomp` — the default profile for an arch and a cap set;
* :mod:`berth.oci.opts` — the ``with_*`` options;
* :mod:`berth.oci.users`, :mod:`berth.oci.rootfs` — user resolution and
  rootfs-confined file reads;
* :mod:`berth.oci.caps` — capability names.

Typical use (blocking: rootfs and ``/proc`` reads; run it in a thread from
async code)::

    labels: dict[str, str] = {}
    spec = oci.generate(
        "web", "default",
        oci.with_image_config(image_config_json),
        oci.with_mounts([oci.Mount("/data", "bind", "/srv/data", ("rbind", "ro"))]),
        oci.with_memory_limit(256 << 20),
        rootfs="/run/berth/.../rootfs",
        labels=labels,               # receives the image's stop signal
    )
    (bundle / "config.json").write_bytes(oci.dumps(spec))
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from berth.oci.opts import (
    HOOK_KINDS,
    NAMESPACE_TYPES,
    RLIMIT_TYPES,
    Hook,
    Mount,
    Rlimit,
    compose,
    host_devices,
    replace_or_append_env,
    validate_mount,
    with_added_capabilities,
    with_additional_groups,
    with_all_devices_allowed,
    with_annotations,
    with_capabilities,
    with_capability_set,
    with_cgroup,
    with_cgroup_parent,
    with_cpu,
    with_cpu_limit,
    with_dropped_capabilities,
    with_env,
    with_hooks,
    with_host_devices,
    with_host_namespace,
    with_host_network,
    with_hostname,
    with_image_config,
    with_linux_namespace,
    with_memory_limit,
    with_mounts,
    with_new_privileges,
    with_oom_score_adj,
    with_pids_limit,
    with_privileged,
    with_process_args,
    with_process_cwd,
    with_readonly_rootfs,
    with_rlimits,
    with_rootfs_path,
    with_seccomp_profile,
    with_seccomp_unconfined,
    with_tty,
    with_user,
)
from berth.oci.seccomp import default_profile
from berth.oci.spec import (
    DEFAULT_CAPABILITIES,
    DEFAULT_ENV,
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    OCI_VERSION,
    STOP_SIGNAL_LABEL,
    Context,
    Spec,
    SpecOpt,
    apply_opts,
    default_spec,
    dumps,
)

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DEFAULT_ENV",
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_READONLY_PATHS",
    "HOOK_KINDS",
    "NAMESPACE_TYPES",
    "OCI_VERSION",
    "RLIMIT_TYPES",
    "STOP_SIGNAL_LABEL",
    "Context",
    "Hook",
    "Mount",
    "Rlimit",
    "Spec",
    "SpecOpt",
    "apply_opts",
    "compose",
    "default_profile",
    "default_spec",
    "dumps",
    "finalize",
    "generate",
    "host_devices",
    "replace_or_append_env",
    "validate_mount",
    "with_added_capabilities",
    "with_additional_groups",
    "with_all_devices_allowed",
    "with_annotations",
    "with_capabilities",
    "with_capability_set",
    "with_cgroup",
    "with_cgroup_parent",
    "with_cpu",
    "with_cpu_limit",
    "with_dropped_capabilities",
    "with_env",
    "with_hooks",
    "with_host_devices",
    "with_host_namespace",
    "with_host_network",
    "with_hostname",
    "with_image_config",
    "with_linux_namespace",
    "with_memory_limit",
    "with_mounts",
    "with_new_privileges",
    "with_oom_score_adj",
    "with_pids_limit",
    "with_privileged",
    "with_process_args",
    "with_process_cwd",
    "with_readonly_rootfs",
    "with_rlimits",
    "with_rootfs_path",
    "with_seccomp_profile",
    "with_seccomp_unconfined",
    "with_tty",
    "with_user",
]


def finalize(spec: Spec, ctx: Context) -> None:
    """Settle what depends on the options as a whole: the seccomp profile.

    The default profile allows syscalls by capability, so it is rebuilt for
    the final bounding set unless an option dropped or replaced it.
    """
    linux = spec.setdefault("linux", {})
    if ctx.seccomp == "default":
        linux["seccomp"] = default_profile(spec)
    elif ctx.seccomp == "unconfined":
        linux.pop("seccomp", None)


def generate(
    container_id: str,
    namespace: str,
    *opts: SpecOpt,
    rootfs: str | os.PathLike[str] | None = None,
    labels: MutableMapping[str, str] | None = None,
) -> Spec:
    """The spec for container ``container_id`` in ``namespace``: defaults, then ``opts``.

    ``rootfs`` is the host path of the mounted root filesystem, needed by
    options that resolve users and groups. Labels that options derive (the
    image stop signal) are written into ``labels`` when given.

    Raises FailedPrecondition for an empty namespace, InvalidArgument for bad
    names or option arguments, NotFound for users or groups the image lacks.
    Blocking (file reads): run it in a thread from async code.
    """
    ctx = Context(
        container_id=container_id,
        namespace=namespace,
        rootfs=os.fspath(rootfs) if rootfs is not None else None,
        labels=labels if labels is not None else {},
    )
    spec = default_spec(container_id, namespace)
    apply_opts(spec, ctx, opts)
    finalize(spec, ctx)
    return spec
