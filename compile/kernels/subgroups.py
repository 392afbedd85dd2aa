"""Subgroup sharing for kernel variants that need WebGPU's `subgroups` feature (the runtime binds
the plain kernel without it): a value every lane of a subgroup needs is loaded by SHARE lanes,
each a different part, and handed round with subgroupBroadcast. On SwiftShader a load costs per
lane even where all lanes read the same address; a broadcast between its 4 lanes is a register
move. TVM emits no subgroup operations, so these are extern calls that `emit` wires up."""

from __future__ import annotations

from typing import Any

from tvm.script import tirx as T

SHARE = 4  # WebGPU's smallest subgroup size


def slot() -> Any:
    """Which of the SHARE parts this lane loads: its subgroup_invocation_id modulo SHARE, as i32."""
    return T.call_pure_extern("int32", "lutlm_lane") % SHARE


def broadcast(value: Any, lane: Any) -> Any:
    """`value` as lane `lane` of the subgroup holds it; `lane` must fold to a constant."""
    return T.call_pure_extern("float32", "subgroupBroadcast", value, T.Cast("uint32", lane))
