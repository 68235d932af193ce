"""CPPN (indirect) encoding of fooling images (Nguyen et al., CVPR 2015, §2.2), a whole population at once.

A compositional pattern-producing network maps each pixel's ``(x, y, d, 1)`` to three outputs read as 8-bit
H, L, S (or one grey value). Genomes are feed-forward graphs that grow by mutation, as in Sferes' ``nn2``
``DnnFF``/``HyperNn`` that the official code uses. Here a genome is a fixed-capacity adjacency matrix, so that a
population mutates and renders as batched tensor operations:

* ``conn`` ``(N, M, M)`` bool, ``conn[i, a, b]``: an edge ``a -> b``; ``weight`` the edge's gene in ``[0, 1]``,
  developed into ``[-10, 10]``;
* ``act`` ``(N, M)`` the node's activation (sine, sigmoid, gaussian, linear); ``alive`` ``(N, M)`` which nodes
  exist. Slots ``0..3`` are the inputs, then the outputs, then ``max_hidden`` hidden slots.

Deviations from ``nn2``, both forced by the matrix form: a genome holds at most ``max_hidden`` hidden nodes
(adding a node to a full genome does nothing), and adding a connection never duplicates an existing edge
(``nn2``'s feed-forward ``_add_conn`` may create a parallel edge, which a weighted sum treats as one edge
with the summed weight).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from robustlab.attacks.fooling.evolution import decode_8bit, pick_uniform, polynomial_mutation, rand
from torch import Tensor

__all__ = ["ACTIVATIONS", "CppnEncoding"]

ACTIVATIONS = ("sine", "sigmoid", "gaussian", "linear")
"""The node functions the official run samples (``Params::cppn::sampled::values``), in id order."""

N_INPUTS = 4  # x, y, distance from the centre, bias


_FUNCTIONS = (
    torch.sin,
    lambda pre: torch.sigmoid(pre) * 2 - 1,
    lambda pre: torch.exp(-pre.square()),
    lambda pre: pre.clamp(-3, 3) / 3,
)


def activate(pre: Tensor, act: Tensor) -> Tensor:
    """Apply each node's function (``act`` ``(N, M)``) to its summed input ``pre`` ``(N, M, P)``, as ``af_cppn``.

    Each function runs only on the nodes that use it, which costs a quarter of computing all four everywhere.
    """
    flat, kinds = pre.reshape(-1, pre.shape[-1]), act.reshape(-1)
    out = torch.empty_like(flat)
    for kind, function in enumerate(_FUNCTIONS):
        rows = torch.nonzero(kinds == kind).squeeze(1)
        out[rows] = function(flat[rows])
    return out.view_as(pre)


@dataclass(frozen=True)
class CppnEncoding:
    """Evolvable CPPNs with the official run's parameters (``dl_map_elites_images.cpp``).

    A new genome connects every input to every output with uniform random weights and has no hidden node
    (``_random_ff``). A child is a copy of one parent (CPPNs do not cross over) mutated as ``DnnFF::mutate``:
    each weight with probability ``weight_rate`` (polynomial, η_m = 15), each node's function resampled with
    probability ``activation_rate``, then four independent coins: add a feed-forward connection (0.5), delete
    a connection (0.3), split a connection with a new node (0.5), delete a hidden node (0.2).

    ``coord_mode="code_raw"`` feeds raw pixel indices as ``x, y`` as the official ``cppn_value`` does
    (``d`` is always computed from coordinates in ``[-1, 1]``); ``"unit"`` feeds coordinates in ``[-1, 1]``,
    the usual CPPN convention.

    Example:
        >>> enc = CppnEncoding(channels=3, size=16)
        >>> g = torch.Generator().manual_seed(0)
        >>> genomes = enc.random(2, g, torch.device("cpu"))
        >>> children = enc.vary(genomes, genomes, 0, g)
        >>> enc.render(children).shape
        torch.Size([4, 3, 16, 16])
    """

    channels: int
    size: int
    coord_mode: str = "code_raw"
    color: str = "hls"
    max_hidden: int = 32
    weight_rate: float = 0.1
    activation_rate: float = 0.1
    eta_m: float = 15.0
    weight_range: float = 10.0
    add_connection: float = 0.5
    delete_connection: float = 0.3
    add_node: float = 0.5
    delete_node: float = 0.2
    render_batch: int = 64

    @property
    def nodes(self) -> int:
        """Node slots per genome: inputs, outputs, hidden."""
        return N_INPUTS + self.channels + self.max_hidden

    def _roles(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        index = torch.arange(self.nodes, device=device)
        is_input = index < N_INPUTS
        is_output = (index >= N_INPUTS) & (index < N_INPUTS + self.channels)
        return is_input, is_output, ~(is_input | is_output)

    def random(self, n: int, generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        """``n`` genomes: inputs fully connected to outputs, random weights and node functions, no hidden node."""
        m = self.nodes
        is_input, is_output, _ = self._roles(device)
        conn = (is_input.view(m, 1) & is_output.view(1, m)).expand(n, m, m).clone()
        weight = rand((n, m, m), generator, device) * conn
        act = _randint(len(ACTIVATIONS), (n, m), generator, device)
        alive = (is_input | is_output).expand(n, m).clone()
        return {"conn": conn, "weight": weight, "act": act, "alive": alive}

    def vary(
        self, mothers: dict[str, Tensor], fathers: dict[str, Tensor], generation: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Two mutated children per pair: copies of mother and father (no crossover for CPPNs), mutated."""
        return self.mutate({k: torch.cat([mothers[k], fathers[k]]) for k in mothers}, generator)

    def mutate(self, genomes: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """Mutated copies of ``genomes``, in ``DnnFF::mutate``'s order of operations."""
        g = {k: v.clone() for k, v in genomes.items()}
        n, device = g["conn"].shape[0], g["conn"].device
        g["weight"] = polynomial_mutation(
            g["weight"], rate=self.weight_rate, eta=self.eta_m, generator=generator, where=g["conn"]
        )
        resample = rand((n, self.nodes), generator, device) < self.activation_rate
        g["act"] = torch.where(resample, _randint(len(ACTIVATIONS), (n, self.nodes), generator, device), g["act"])
        for chance, operator in (
            (self.add_connection, self._add_connection),
            (self.delete_connection, self._delete_connection),
            (self.add_node, self._add_node),
            (self.delete_node, self._delete_node),
        ):
            operator(g, rand((n,), generator, device) < chance, generator)
        return g

    def _add_connection(self, g: dict[str, Tensor], active: Tensor, generator: torch.Generator) -> None:
        """A random source (not an output) to a random target that is not an input nor upstream of the source."""
        conn, rows = g["conn"], torch.arange(g["conn"].shape[0], device=g["conn"].device)
        is_input, is_output, _ = self._roles(conn.device)
        source, _ = pick_uniform(g["alive"] & ~is_output, generator)
        used = _used_slots(g["alive"])
        upstream = torch.zeros_like(g["alive"])
        upstream[:, :used] = _reachability(conn[:, :used, :used])[rows, :, source]
        target, found = pick_uniform(g["alive"] & ~is_input & ~upstream & ~conn[rows, source], generator)
        weight = rand((conn.shape[0],), generator, conn.device)
        do = active & found
        conn[rows[do], source[do], target[do]] = True
        g["weight"][rows[do], source[do], target[do]] = weight[do]

    def _delete_connection(self, g: dict[str, Tensor], active: Tensor, generator: torch.Generator) -> None:
        n, m = g["conn"].shape[:2]
        edge, found = pick_uniform(g["conn"].view(n, m * m), generator)
        do = active & found
        g["conn"].view(n, m * m)[do, edge[do]] = False
        g["weight"].view(n, m * m)[do, edge[do]] = 0.0

    def _add_node(self, g: dict[str, Tensor], active: Tensor, generator: torch.Generator) -> None:
        """Split a random edge ``s -> t`` of weight ``w`` into ``s -> new -> t``, both of weight ``w``."""
        n, m = g["conn"].shape[:2]
        rows = torch.arange(n, device=g["conn"].device)
        _, _, is_hidden = self._roles(g["conn"].device)
        edge, found = pick_uniform(g["conn"].view(n, m * m), generator)
        free = ~g["alive"] & is_hidden
        slot, has_free = free.int().argmax(dim=1), free.any(dim=1)
        act = _randint(len(ACTIVATIONS), (n,), generator, g["conn"].device)
        do = active & found & has_free
        r, s, t, h = rows[do], edge[do] // m, edge[do] % m, slot[do]
        w = g["weight"][r, s, t]
        g["conn"][r, s, t] = False
        g["weight"][r, s, t] = 0.0
        g["conn"][r, s, h] = True
        g["conn"][r, h, t] = True
        g["weight"][r, s, h] = w
        g["weight"][r, h, t] = w
        g["alive"][r, h] = True
        g["act"][r, h] = act[do]

    def _delete_node(self, g: dict[str, Tensor], active: Tensor, generator: torch.Generator) -> None:
        _, _, is_hidden = self._roles(g["conn"].device)
        node, found = pick_uniform(g["alive"] & is_hidden, generator)
        r, v = torch.nonzero(active & found).squeeze(1), node[active & found]
        g["alive"][r, v] = False
        for key, empty in (("conn", False), ("weight", 0.0)):
            g[key][r, v, :] = empty
            g[key][r, :, v] = empty

    def render(self, genomes: dict[str, Tensor]) -> Tensor:
        """Images ``(N, channels, size, size)`` in ``[0, 1]`` on 256 levels, rendered in chunks of the population."""
        n = genomes["conn"].shape[0]
        parts = [
            self._render({k: v[i : i + self.render_batch] for k, v in genomes.items()})
            for i in range(0, n, self.render_batch)
        ]
        return torch.cat(parts)

    def _render(self, g: dict[str, Tensor]) -> Tensor:
        n, device, used = g["conn"].shape[0], g["conn"].device, _used_slots(g["alive"])
        conn, act = g["conn"][:, :used, :used], g["act"][:, :used]
        w = torch.where(conn, g["weight"][:, :used, :used] * (2 * self.weight_range) - self.weight_range, 0.0)
        inputs = self._coordinates(device)
        state = torch.zeros(n, used, inputs.shape[1], device=device)
        state[:, :N_INPUTS] = inputs
        depth = _depth(conn, self.channels)
        outputs = slice(N_INPUTS, N_INPUTS + self.channels)
        # nn2 updates every node synchronously from the previous step's outputs, ``depth`` times.
        for step in range(int(depth.max())):
            new = activate(torch.bmm(w.transpose(1, 2), state), act)
            new[:, :N_INPUTS] = inputs
            # A genome's outputs are read after its own ``depth`` steps; later steps leave them frozen.
            new[:, outputs] = torch.where((step < depth).view(n, 1, 1), new[:, outputs], state[:, outputs])
            state = new
        out = state[:, outputs].reshape(n, self.channels, self.size, self.size)
        return decode_8bit(out, color=self.color)

    def _coordinates(self, device: torch.device) -> Tensor:
        """``(4, size²)`` inputs per pixel in row-major order: x (column), y (row), d, bias."""
        row, col = torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij")
        row, col = row.flatten().float(), col.flatten().float()
        scale = 2.0 / (self.size - 1) if self.size > 1 else 0.0
        x_unit, y_unit = col * scale - (1 if self.size > 1 else 0), row * scale - (1 if self.size > 1 else 0)
        d = torch.sqrt(x_unit.square() + y_unit.square())
        x, y = (col, row) if self.coord_mode == "code_raw" else (x_unit, y_unit)
        return torch.stack([x, y, d, torch.ones_like(d)]).to(device)


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randint(high, shape, generator=generator, device=generator.device).to(device)


def _used_slots(alive: Tensor) -> int:
    """Slots up to the last one alive in any genome: the only ones a computation over the batch needs."""
    return int(torch.nonzero(alive.any(dim=0)).max()) + 1


def _reachability(conn: Tensor) -> Tensor:
    """``reach[i, a, b]``: a path ``a -> ... -> b`` exists in genome ``i`` (every node reaches itself)."""
    m = conn.shape[1]
    reach = (conn | torch.eye(m, dtype=torch.bool, device=conn.device)).float()
    for _ in range(max(1, math.ceil(math.log2(m)))):
        reach = (torch.bmm(reach, reach) > 0).float()
    return reach > 0


def _depth(conn: Tensor, outputs: int) -> Tensor:
    """``_compute_depth``: the longest input-to-output path, in edges, plus one (``(N,)`` int)."""
    n, m = conn.shape[:2]
    dist = torch.full((n, m), -1, dtype=torch.long, device=conn.device)
    dist[:, :N_INPUTS] = 0
    for _ in range(m):
        reached = conn & (dist >= 0).unsqueeze(2)
        longer = torch.where(reached, dist.unsqueeze(2) + 1, -1).amax(dim=1)
        new = torch.maximum(dist, longer)
        if torch.equal(new, dist):
            break
        dist = new
    return dist[:, N_INPUTS : N_INPUTS + outputs].amax(dim=1).clamp(min=0) + 1
