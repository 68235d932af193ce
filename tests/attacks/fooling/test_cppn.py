"""CPPN genomes: evolution grows hidden nodes and keeps the graph acyclic; the batched renderer is nn2's network."""

from __future__ import annotations

import math

import torch
from robustlab.attacks.fooling.attack import class_probabilities
from robustlab.attacks.fooling.cppn import N_INPUTS, CppnEncoding
from robustlab.attacks.fooling.evolution import decode_8bit
from robustlab.attacks.fooling.map_elites import MapElites

REFERENCE_FUNCTIONS = {  # Sferes' af_cppn node functions, written out per node
    0: math.sin,
    1: lambda v: 2 / (1 + math.exp(-v)) - 1,
    2: lambda v: math.exp(-v * v),
    3: lambda v: max(-3.0, min(3.0, v)) / 3,
}


def _evolved_elites(generations: int = 40) -> tuple[CppnEncoding, dict[str, torch.Tensor]]:
    """The archive of a short MAP-Elites run against a fixed random linear classifier of 8x8 grey images."""
    torch.manual_seed(0)  # the stand-in victim's init only; evolution draws from its own generator
    victim = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5)).eval()
    encoding = CppnEncoding(1, 8, coord_mode="unit", max_hidden=8)
    elites = MapElites(encoding, lambda x: class_probabilities(victim, x, crop=None), 5, population=16, init_size=16)
    generator = torch.Generator().manual_seed(0)
    archive = elites.start(generator, torch.device("cpu"))
    for _ in range(generations):
        elites.step(archive, generator)
    return encoding, archive.genomes


def _topological_order(edges: list[tuple[int, int]], nodes: list[int]) -> list[int] | None:
    """Kahn's algorithm: an order of ``nodes`` with every edge pointing forward, or None if there is a cycle."""
    incoming = {v: sum(1 for _, t in edges if t == v) for v in nodes}
    ready, order = [v for v in nodes if incoming[v] == 0], []
    while ready:
        v = ready.pop()
        order.append(v)
        for s, t in edges:
            if s == v:
                incoming[t] -= 1
                if incoming[t] == 0:
                    ready.append(t)
    return order if len(order) == len(nodes) else None


def _genome_graph(genomes: dict[str, torch.Tensor], i: int) -> tuple[list[int], list[tuple[int, int]]]:
    nodes = torch.nonzero(genomes["alive"][i]).flatten().tolist()
    edges = [(int(s), int(t)) for s, t in torch.nonzero(genomes["conn"][i]).tolist()]
    return nodes, edges


def test_evolved_elites_grow_hidden_nodes_and_stay_acyclic() -> None:
    encoding, genomes = _evolved_elites()
    first_hidden = N_INPUTS + encoding.channels
    hidden = genomes["alive"][:, first_hidden:].sum(dim=1)
    assert int(hidden.max()) >= 2, hidden  # the random genomes start with none
    for i in range(genomes["conn"].shape[0]):
        nodes, edges = _genome_graph(genomes, i)
        assert all(s in nodes and t in nodes for s, t in edges), "an edge touches a dead node"
        assert all(t >= N_INPUTS for _, t in edges), "an edge enters an input"
        assert all(not N_INPUTS <= s < first_hidden for s, _ in edges), "an edge leaves an output"
        assert _topological_order(edges, nodes) is not None, f"elite {i} has a cycle"


def _reference_render(encoding: CppnEncoding, genomes: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    """nn2's network, one node and one pixel at a time: ``depth`` synchronous updates, outputs read at the end.

    ``depth`` is the longest input-to-output path (in edges) plus one, found here by walking the graph.
    """
    nodes, edges = _genome_graph(genomes, i)
    weight = genomes["weight"][i].double() * 2 * encoding.weight_range - encoding.weight_range
    act = genomes["act"][i].tolist()
    outputs = list(range(N_INPUTS, N_INPUTS + encoding.channels))
    longest = {v: (0 if v < N_INPUTS else -1) for v in nodes}
    for v in _topological_order(edges, nodes) or []:
        for s, t in edges:
            if s == v and longest[s] >= 0:
                longest[t] = max(longest[t], longest[s] + 1)
    depth = max(0, *(longest[o] for o in outputs)) + 1
    side = encoding.size
    image = torch.zeros(encoding.channels, side, side, dtype=torch.float64)
    for row in range(side):
        for col in range(side):
            x, y = (2 * col / (side - 1) - 1, 2 * row / (side - 1) - 1)
            inputs = [x, y, math.sqrt(x * x + y * y), 1.0]
            state = {v: (inputs[v] if v < N_INPUTS else 0.0) for v in nodes}
            for _ in range(depth):
                new = dict(state)
                for v in nodes:
                    if v >= N_INPUTS:
                        total = sum(float(weight[s, t]) * state[s] for s, t in edges if t == v)
                        new[v] = REFERENCE_FUNCTIONS[act[v]](total)
                state = new
            for c, o in enumerate(outputs):
                image[c, row, col] = state[o]
    return image


def test_renderer_equals_a_per_node_reference_evaluator() -> None:
    encoding, genomes = _evolved_elites()
    rendered = encoding.render(genomes)
    for i in range(genomes["conn"].shape[0]):
        reference = decode_8bit(_reference_render(encoding, genomes, i).float().unsqueeze(0), color="rgb")[0]
        # 8-bit levels: a float32/float64 difference may move a value across a level boundary, never further.
        assert float((rendered[i] - reference).abs().max()) <= 1 / 255 + 1e-7, i
        assert float((rendered[i] != reference).float().mean()) < 0.02, i
