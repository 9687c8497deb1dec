"""The NF4 linear layer in plain torch ops, for compiled layers; and kept dequantized, for speed.

Inside a compiled layer bitsandbytes' 4-bit matmul is an opaque custom op, costly in host time, and
the partitioner will not recompute it, so `train.activation_memory_budget` saved little at low
budgets. In torch ops inductor fuses the dequantization into one generated kernel, and the
partitioner may recompute the matmul, so low budgets save activation memory for a little speed
(measured: docs/benchmarks.md). The weights come out bit for bit as bitsandbytes dequantizes them
(tests/test_model.py).
"""
import torch
from bitsandbytes.functional import dequantize_4bit
from bitsandbytes.nn import Linear4bit
from torch.utils.checkpoint import checkpoint


def _blockwise(codes, code, absmax, blocksize):
    """code[codes[i]] * absmax[i // blocksize] in fp32: bitsandbytes' blockwise dequantization."""
    n = codes.numel()
    padded = torch.nn.functional.pad(codes.reshape(-1), (0, absmax.numel() * blocksize - n))
    return (code[padded.long()].view(-1, blocksize) * absmax[:, None]).view(-1)[:n]


def _dequantize(packed, code, blocksize, absmax, absmax_code, absmax_absmax, absmax_blocksize, absmax_offset,
                shape, dtype):
    if absmax_code is not None:  # double quantization: the absmaxes are themselves 8-bit, blockwise
        absmax = _blockwise(absmax, absmax_code, absmax_absmax, absmax_blocksize) + absmax_offset
    packed = packed.reshape(-1)
    codes = torch.stack([packed >> 4, packed & 15], -1).view(-1)[:shape.numel()]  # high nibble first
    return _blockwise(codes, code, absmax, blocksize).to(dtype).view(shape)


def _arguments(weight):
    state = weight.quant_state
    nested = (state.state2.code, state.state2.absmax, state.state2.blocksize, state.offset) if state.nested \
        else (None,) * 4
    return weight.data, state.code, state.blocksize, state.absmax, *nested, state.shape, state.dtype


def dequantize(weight):
    """The float weight of a bitsandbytes NF4 Params4bit, in the dtype it was quantized from."""
    return _dequantize(*_arguments(weight))


def _linear(x, weight, bias):
    """`x @ weight.T + bias` in the weight's dtype, returned in `x`'s: what Linear4bit computes."""
    bias = None if bias is None else bias.to(weight.dtype)
    return torch.nn.functional.linear(x.to(weight.dtype), weight, bias).to(x.dtype)


class TorchOpsLinear4bit(Linear4bit):
    """Linear4bit whose forward is torch ops. The dequantization runs under checkpoint so that
    compiled backward recomputes it from the packed weight rather than keep a 16-bit copy."""

    def forward(self, x):
        weight = checkpoint(_dequantize, *_arguments(self.weight), use_reentrant=False)
        return _linear(x, weight.to(self.compute_dtype or x.dtype), self.bias)


def use_torch_ops(module):
    """Swap every NF4 Linear4bit under `module` to TorchOpsLinear4bit (same weights, same state)."""
    for layer in quantized_layers(module):
        if layer.weight.quant_state.quant_type == "nf4":
            layer.__class__ = TorchOpsLinear4bit


class DequantizedLinear4bit(Linear4bit):
    """Linear4bit whose frozen weight is dequantized once, at swap time, and kept: a plain `F.linear`
    per call instead of bitsandbytes' dequantize-then-matmul, forward and backward (host time on every
    call, which sets the pace of a small model's steps: docs/benchmarks.md). Bit for bit the same math: on
    the GPU, for training-sized inputs, bitsandbytes too dequantizes to the compute dtype and calls
    `F.linear` (tests/test_model.py compares losses and gradients). The cost is 2 bytes a weight."""

    def forward(self, x):
        return _linear(x, self.dequantized, self.bias)


def quantized_layers(module):
    return [layer for layer in module.modules() if type(layer) is Linear4bit]


def dequantized_bytes(module, dtype):
    """What keeping every 4-bit weight under `module` dequantized in `dtype` costs."""
    return sum(layer.weight.quant_state.shape.numel() for layer in quantized_layers(module)) * dtype.itemsize


def keep_dequantized(module, dtype):
    """Swap every Linear4bit under `module` to DequantizedLinear4bit (its 4-bit weight stays, for the
    parameter count and the adapter's base)."""
    for layer in quantized_layers(module):
        weight = dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(dtype)
        layer.register_buffer("dequantized", weight, persistent=False)  # a buffer: compile lifts it as an input
        layer.__class__ = DequantizedLinear4bit
