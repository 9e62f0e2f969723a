"""The eBPF policy datapath: ``policy.c`` and its map layout (``layout.py``,
generated into ``layout.h``). The loader is ``nicwarden.agent.host.bpf``."""
