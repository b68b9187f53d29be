"""Fixed-step samplers as one captured CUDA graph (``pydiffuse.sample(..., cuda_graph=True)``).

The first call runs the loop once on a side stream (lazy initialization, Triton compilation,
allocator warm-up), captures it with ``torch.cuda.graph`` (the loop's coefficient tables are
copied from pinned host buffers that the graph keeps) and replays it; later calls with the
same arguments copy x_T and the seeds into the graph's static inputs and replay. The loops read
their coefficients from device tables and draw noise from the stream keyed by the seeds tensor,
so nothing in a step depends on the host.
"""

import collections

import torch

MAX_GRAPHS = 4
_graphs: "collections.OrderedDict" = collections.OrderedDict()
_capture_buffers = None      # pinned host tensors a capture copies from, while capturing


def keep_for_capture(host: torch.Tensor) -> None:
    """Keep a pinned host tensor alive as long as the graph now being captured (if any)."""
    if _capture_buffers is not None:
        _capture_buffers.append(host)


def captured_run(key, loop, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """loop(x) through a cached CUDA graph; ``seeds`` is the tensor the loop's noise reads."""
    global _capture_buffers
    if x.device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"cuda_graph=True needs CUDA tensors, x is on {x.device}")
    entry = _graphs.get(key)
    if entry is None:
        static_x = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loop(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        _capture_buffers = []
        try:
            with torch.cuda.graph(graph):
                static_out = loop(static_x)
            buffers = _capture_buffers
        finally:
            _capture_buffers = None
        entry = _graphs[key] = (graph, static_x, seeds, static_out, buffers)
        while len(_graphs) > MAX_GRAPHS:
            _graphs.popitem(last=False)
    else:
        graph, static_x, static_seeds, static_out, _ = entry
        _graphs.move_to_end(key)
        static_x.copy_(x)
        static_seeds.copy_(seeds)
    graph.replay()
    return static_out.clone()


def clear_graphs() -> None:
    """Drop the cached graphs (and the memory they hold)."""
    _graphs.clear()
