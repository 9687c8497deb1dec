"""Attention over a prefix tree packed into one sequence: the scoring pass's attention.

The tree's tokens come in segments (batches.PackedAnswers lays them out). A segment's tokens see
its key list (the tokens of its ancestors, then its own), its own causally. That is variable-length
attention over keys gathered per segment, which a GPU runs with flash attention's varlen kernel: no
padding and no mask. Elsewhere (a CPU, fp32, features the kernel lacks) the model's own attention
runs on the segments padded to a batch, behind a 4D mask.

The function is registered with transformers' AttentionInterface and switched on for the scoring
pass only (`switched_on`). The model then takes the tree as a keyword argument (`prefix_tree=`),
which its layers hand to the attention function; transformers builds no mask for an attention
implementation it does not know. A model whose attention does not take the tree (it bypasses the
AttentionInterface, or its layers drop keyword arguments) scores in rows instead (scoring.py).
"""
import contextlib
import dataclasses
import functools
import inspect
import sys

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

NAME = "nli_prefix_tree"
SEGMENTS_AT_ONCE = 256  # padded path: segments per attention call, so one long segment pads few others


@dataclasses.dataclass
class PrefixTree:
    """A batch's segments: where each starts, on the device and (lengths) on the host, so planning an
    attention call reads nothing back from the device."""
    query_starts: torch.Tensor  # (segments + 1,) int32: segment s's tokens are [starts[s], starts[s + 1])
    key_starts: torch.Tensor  # (segments + 1,) int32, into `keys`
    keys: torch.Tensor  # the token indices each segment sees, segment after segment
    query_lengths: list
    key_lengths: list
    implementation: str = "sdpa"  # the model's own attention, which the padded path runs
    layers_seen: int = 0  # attention calls that got the tree: a model that drops it is caught
    chunks: dict = dataclasses.field(default_factory=dict)  # the padded path's, by (window, dtype)

    @functools.cached_property
    def longest(self):
        """(most queries, most keys) of a segment: what every layer's flash call is planned with."""
        return max(self.query_lengths), max(self.key_lengths)

    def padded(self, first, last, window):
        """Segments first..last-1 padded to a batch: (query indices, key indices, which keys each
        query sees, which queries are real), each with a row per segment. Causal to the bottom
        right: a segment's last token sees its whole key list; `window`: only that many back."""
        device, last = self.keys.device, min(last, len(self.query_lengths))
        q_len, k_len = (torch.tensor(lengths[first:last], device=device)[:, None]
                        for lengths in (self.query_lengths, self.key_lengths))
        q_offset = torch.arange(max(self.query_lengths[first:last]), device=device)
        k_offset = torch.arange(max(self.key_lengths[first:last]), device=device)
        real_query, real_key = q_offset < q_len, k_offset < k_len
        query_index = torch.where(real_query, self.query_starts[first:last, None] + q_offset, 0)
        key_index = self.keys[torch.where(real_key, self.key_starts[first:last, None] + k_offset, 0)]
        distance = (q_offset + k_len - q_len)[:, :, None] - k_offset  # query's place minus key's on the path
        sees = real_key[:, None, :] & (distance >= 0) & (distance < window if window else True)
        return query_index, key_index, sees | ~real_query[:, :, None], real_query  # padding sees all: no NaN

    def padded_chunks(self, window, dtype):
        """The padded path's batches, SEGMENTS_AT_ONCE segments each: (query indices, key indices,
        additive mask, which queries are real). Built for the first layer that asks, the same for
        every layer with that window."""
        if (window, dtype) not in self.chunks:
            self.chunks[window, dtype] = [
                (query_index, key_index, torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill(
                    ~sees, torch.finfo(dtype).min)[:, None], real_query)
                for query_index, key_index, sees, real_query in (
                    self.padded(first, first + SEGMENTS_AT_ONCE, window)
                    for first in range(0, len(self.query_lengths), SEGMENTS_AT_ONCE))]
        return self.chunks[window, dtype]


class Unsupported(RuntimeError):
    """The model cannot score over a prefix tree: its attention does not go through transformers'
    AttentionInterface, its layers do not hand keyword arguments on, or its logits do not come from
    its output embeddings."""


def prefix_tree_attention(module, query, key, value, attention_mask, prefix_tree=None, **kwargs):
    """Attention of (rows, heads, row length, head size) queries, keys and values over `prefix_tree`,
    whose tokens are theirs row after row (the scorer feeds a row per token); the output comes
    (rows, row length, heads, head size), as transformers' attention functions return it."""
    if prefix_tree is None:
        raise Unsupported(f"{type(module).__name__} got no prefix_tree")
    prefix_tree.layers_seen += 1
    rows, row_length = query.shape[0], query.shape[2]
    query, key, value = (t.transpose(1, 2).flatten(0, 1) for t in (query, key, value))  # (tokens, heads, head size)
    # whole rows of a contiguous copy gather several times faster than a strided view's elements
    # (a row per token makes them contiguous already: no copy)
    key, value = key.contiguous(), value.contiguous()
    window = kwargs.get("sliding_window")
    if flash_runs(query, kwargs):
        from torch.nn.attention.varlen import varlen_attn

        # fewer key than query heads (grouped-query attention) need the flag from torch 2.13 on
        gqa = {"enable_gqa": True} if key.shape[1] != query.shape[1] and takes_gqa_flag(varlen_attn) else {}
        output = varlen_attn(query, key[prefix_tree.keys], value[prefix_tree.keys], prefix_tree.query_starts,
                             prefix_tree.key_starts, *prefix_tree.longest,
                             scale=kwargs.get("scaling"), window_size=(window - 1 if window else -1, 0), **gqa)
        return output.unflatten(0, (rows, row_length)), None
    own_attention = ALL_ATTENTION_FUNCTIONS.get_interface(
        prefix_tree.implementation, getattr(sys.modules[type(module).__module__], "eager_attention_forward", None))
    outputs = []
    for query_index, key_index, mask, real_query in prefix_tree.padded_chunks(window, query.dtype):
        output, _ = own_attention(module, query[query_index].transpose(1, 2), key[key_index].transpose(1, 2),
                                  value[key_index].transpose(1, 2), mask, **kwargs)
        outputs.append(output[real_query])  # (segments, longest, heads, head size) -> real tokens
    return torch.cat(outputs).unflatten(0, (rows, row_length)), None


def flash_runs(query, kwargs):
    """Flash attention's varlen kernel takes the call: a GPU of compute capability 8 or later, half
    precision, and none of attention logit soft-capping, attention sinks, dropout."""
    return (query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)
            and torch.cuda.get_device_capability(query.device) >= (8, 0)
            and not kwargs.get("softcap") and kwargs.get("s_aux") is None and not kwargs.get("dropout"))


@functools.cache
def takes_gqa_flag(varlen_attn):
    return "enable_gqa" in inspect.signature(varlen_attn).parameters


AttentionInterface.register(NAME, prefix_tree_attention)


@contextlib.contextmanager
def switched_on(model):
    """Inside the block the model attends over prefix trees; yields its own attention
    implementation's name (the padded path's), which it gets back after."""
    before = model.config._attn_implementation
    if not model._can_set_attn_implementation():
        raise Unsupported(f"{type(model).__name__} does not use transformers' AttentionInterface")
    model.set_attn_implementation(NAME)
    try:
        yield before
    finally:
        model.set_attn_implementation(before)
