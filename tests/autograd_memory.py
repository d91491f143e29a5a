"""What autograd keeps between forward and backward, seen whole.

``saved_tensors_hooks`` see only tensors saved with ``ctx.save_for_backward`` (and by built-in ops); a custom
``autograd.Function`` may also keep tensors as plain attributes of ``ctx`` (which is its node in the graph), and
those the hooks never see. This walks the graph from a result and counts both.
"""

from __future__ import annotations

import torch


def tensors_in(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in tensors_in(item)]
    if isinstance(value, dict):
        return [tensor for item in value.values() for tensor in tensors_in(item)]
    return []


def kept_for_backward(result: torch.Tensor, saved_by_hooks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every tensor the graph of ``result`` holds for backward: ``saved_by_hooks`` (collected by a
    ``saved_tensors_hooks`` pack function around the forward) plus the tensors custom Functions keep on ``ctx``."""
    kept = {id(tensor): tensor for tensor in saved_by_hooks}
    seen: set[int] = set()
    pending = [result.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for tensor in tensors_in(getattr(node, "__dict__", {})):  # a custom Function's ctx attributes
            kept[id(tensor)] = tensor
        pending.extend(next_node for next_node, _ in node.next_functions)
    return list(kept.values())


def largest_kept(forward) -> tuple[torch.Tensor, int]:
    """Run ``forward()`` under a pack hook; (its result, the numel of the largest tensor kept for backward)."""
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = forward()
    return result, max(tensor.numel() for tensor in kept_for_backward(result, saved))
