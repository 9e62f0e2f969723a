"""Network namespace identity: is a netns path the host's own?

A pod's ``CNI_NETNS`` that names the agent's netns (``/proc/<agent pid>/ns/net``,
``/proc/self/ns/net``, a bind mount of either) would make an ADD rename the
VF and add the pod's addresses and routes on the host. Namespaces are
compared by the (device, inode) pair of their nsfs file, which identifies a
namespace for as long as it lives, whatever path reaches it.
"""

from __future__ import annotations

import os

# The agent runs with hostNetwork, so its own netns is the host's; pid 1's is
# the init netns when the agent shares the host's pid namespace.
HOST_NETNS_PATHS = ("/proc/self/ns/net", "/proc/1/ns/net")


def netns_id(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the namespace ``path`` refers to, or None when it
    cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def host_netns_ids() -> set[tuple[int, int]]:
    return {i for i in (netns_id(p) for p in HOST_NETNS_PATHS) if i is not None}


def is_host_netns(path: str) -> bool:
    """Whether ``path`` is the agent's (the host's) network namespace."""
    ident = netns_id(path)
    return ident is not None and ident in host_netns_ids()
