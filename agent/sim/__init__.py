"""The simulated SR-IOV node (fake sysfs + veth-backed VFs)."""

from nicwarden.agent.sim.node import SimulatedNode
from nicwarden.agent.sim.spec import SimSpec, parse_spec

__all__ = ["SimSpec", "SimulatedNode", "parse_spec"]
