"""spec → a networkx DAG of blocks: the task-sharing topology, without torch."""

from mtlc.topology.build import Topology, build_topology

__all__ = ["Topology", "build_topology"]
