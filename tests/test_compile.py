"""torch.compile on the pure model: one graph for the whole forward (no graph breaks in the hot path), and the
compiled forward equal to the eager one. Dynamo's ``explain`` is the oracle for breaks; the eager model for values
(the "eager" backend traces exactly what inductor would compile, without a C++ toolchain or minutes of compiling)."""
import pytest
import torch
from parity_helpers import TINY, inputs, randomize_

import unet3d


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_(unet3d.UNet3DConditionModel(**TINY), seed=3).eval()


@pytest.mark.parametrize("options", [None, {"attention_slice": 2, "ff_chunk": (2, 1)}],
                         ids=["plain", "sliced-chunked"])
def test_whole_forward_is_one_graph(model, options):
    x, context = inputs(1, 4)
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x, torch.tensor([10.0]), context, call_options=options)
    reasons = [r.reason for r in explained.break_reasons]
    assert explained.graph_break_count == 0 and explained.graph_count == 1, reasons


def test_compiled_forward_equals_eager(model):
    x, context = inputs(2, 4)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        eager = model(x, torch.tensor([10.0, 500.0]), context).sample
        again = compiled(x, torch.tensor([10.0, 500.0]), context).sample
    assert torch.equal(again, eager)


def test_the_module_core_torch_compile_model_compiles_is_one_graph():
    """Core ``TorchCompileModel`` compiles the MODEL's ``diffusion_model`` (ComfyUNet3D) and calls it with the
    sampler's ``transformer_options``: that forward, glue included, is one graph too, and equal to eager."""
    from comfy_runner.offline import plugin_module
    torch.manual_seed(0)
    unet = randomize_(plugin_module("nodes.unet_adapter").ComfyUNet3D(**TINY), seed=3).eval()
    x, context, t = torch.randn(8, 4, 16, 16), torch.randn(2, 8, TINY["cross_attention_dim"]), torch.full((8,), 10.0)
    options = {"cond_or_uncond": [1, 0], "unet3d": {"attention_slice": 2}, "sigmas": torch.tensor([1.0])}
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(unet)(x, t, context, transformer_options=options)
        assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
        torch._dynamo.reset()
        compiled = torch.compile(unet, backend="eager")
        assert torch.equal(compiled(x, t, context, transformer_options=options),
                           unet(x, t, context, transformer_options=options))
