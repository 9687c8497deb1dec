"""The 4-bit model: real parameter counts, verbalizer scoring and the training loss window."""
import dataclasses
import functools
import re

import pytest
import torch

from stages.lib.training import add_lora
from stages.lib.batches import PackedAnswers, TrainingCollator, length_bucket, multiple_of_8, rounded_up
from stages.lib import tree_attention
from stages.lib.prompt import Encoder, demonstrations
from stages.lib.scoring import PackedScorer, answer_logprobs, score_rows
from stages.lib.snli import read_rows
from tests.conftest import committed

SMOLLM2_PARAMS = 134_515_008  # un-quantized SmolLM2-135M (tied embeddings counted once)


def gold_rows(snli_dir, n):
    return [r for r in read_rows(snli_dir / "validation.jsonl.gz") if r["label"] != -1][:n]


def test_total_params_count_unpacked_4bit_weights(model_params):
    from transformers import AutoModelForCausalLM
    from stages.lib.model import load_quantized
    from stages.lib.model_source import source

    plain = AutoModelForCausalLM.from_pretrained(source(model_params)[0])
    assert sum(p.numel() for p in plain.parameters()) == SMOLLM2_PARAMS
    model = add_lora(load_quantized(model_params), committed("lora"), committed("train"), torch.float32)
    packed = sum(p.numel() for p in model.parameters())
    trainable, total = model.get_nb_trainable_parameters()
    assert packed < 0.65 * (SMOLLM2_PARAMS + trainable)  # the bug: two 4-bit weights per element
    assert total - trainable == SMOLLM2_PARAMS
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0


@pytest.mark.parametrize("adapter_dtype, expected", [("compute", torch.bfloat16), ("float32", torch.float32)])
def test_adapter_dtype_and_its_gradients(model_params, tokenizer, snli_dir, tmp_path, adapter_dtype, expected):
    from stages.lib.model import load_quantized

    bf16 = dataclasses.replace(model_params, compute_dtype="bfloat16")
    train_cfg = committed("train", adapter_dtype=adapter_dtype)
    model = add_lora(load_quantized(bf16), committed("lora"), train_cfg, torch.bfloat16)
    adapters = [p for p in model.parameters() if p.requires_grad]
    assert {p.dtype for p in adapters} == {expected}
    collator = TrainingCollator(Encoder(tokenizer, committed("prompt")))
    loss = model(**collator(collator.examples(gold_rows(snli_dir, 4)))).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and p.grad.dtype == expected for p in adapters)
    assert any(p.grad.abs().sum() > 0 for p in adapters)
    model.save_pretrained(tmp_path)  # evaluate_adapted scores in the dtype the adapter was trained in
    reloaded = load_quantized(bf16, tmp_path)
    assert {p.dtype for name, p in reloaded.named_parameters() if "lora_" in name} == {expected}


def plain_model(kind, model_params):
    """SmolLM2 (Llama layout), or a small random phi (partial rotary, parallel attention and MLP), falcon
    (attention outside transformers' AttentionInterface), mpt (ALiBi, outside it too) or lfm2 with a
    convolution layer (mixes neighbouring tokens outside attention): the last three score in rows."""
    import transformers
    from stages.lib.model_source import source

    if kind == "smollm2":
        return transformers.AutoModelForCausalLM.from_pretrained(source(model_params)[0])
    torch.manual_seed(0)
    shape = {"phi": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         partial_rotary_factor=0.4),
             "falcon": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            new_decoder_architecture=True, num_kv_heads=2),
             "mpt": dict(d_model=64, n_layers=2, n_heads=4),
             "lfm2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, layer_types=["conv", "full_attention"])}[kind]
    config = transformers.AutoConfig.for_model(kind, vocab_size=49152, **shape,
                                               initializer_range=0.5)  # sharp attention: a wrong position or mask shows
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("share_prefixes", [True, False])
@pytest.mark.parametrize("window", [None, 3])
def test_prefix_tree_shows_each_token_exactly_its_own_prompt_before_it(share_prefixes, window):
    # Token by token, what the attention lets it see must be its own prompt's earlier tokens at
    # their positions (answers: also their own earlier tokens), however the prompts share prefixes;
    # with a sliding window, only the last `window` of those.
    answers = [[7], [8, 9], [5, 6, 4]]
    packed = PackedAnswers(answers, "cpu")
    prompts = [[1, 2, 3, 4], [1, 2, 5, 6], [1, 2, 3, 4], [9], [1, 2, 3, 4, 5, 6], [1, 2], [3, 2, 1], [1, 2, 3]]
    ordered = [prompts[i] for i in packed.order(prompts)]
    assert sorted(prompts) == ordered
    batch = packed.batch(ordered, share_prefixes)
    ids, positions, tree = batch["input_ids"][0].tolist(), batch["position_ids"][0].tolist(), batch["prefix_tree"]
    query_index, key_index, sees, real = tree.padded(0, len(tree.query_lengths), window)
    seen = {query_index[s, i].item(): sorted((positions[k], ids[k]) for k, v in zip(key_index[s].tolist(), row) if v)
            for s in range(len(real)) for i, row in enumerate(sees[s].tolist()) if real[s, i]}
    assert sorted(seen) == list(range(len(ids)))  # every token is some segment's query, once

    def visible(sequence):
        return list(enumerate(sequence))[-window if window else 0:]
    kept = batch["logits_to_keep"].view(len(ordered), packed.kept).tolist()
    for prompt, (last, *answer_tokens) in zip(ordered, kept):
        assert (positions[last], seen[last]) == (len(prompt) - 1, visible(prompt))
        answer_inputs = [(answer, j) for answer in answers for j in range(len(answer) - 1)]
        assert len(answer_tokens) == len(answer_inputs)
        for token, (answer, j) in zip(answer_tokens, answer_inputs):
            assert (ids[token], seen[token]) == (answer[j], visible(prompt + answer[:j + 1]))
    # every other token too: some prompt's (or prompt and answer's) tokens up to its own
    sequences = [prompt + answer[:-1] for prompt in ordered for answer in answers]
    for token, view in seen.items():
        assert any(view == visible(sequence[:positions[token] + 1]) and sequence[positions[token]] == ids[token]
                   for sequence in sequences if len(sequence) > positions[token])
    laid_out_prompts = len(ids) - len(prompts) * (packed.kept - 1)
    assert (laid_out_prompts < sum(map(len, prompts))) == share_prefixes  # shared prefixes laid out once


@pytest.mark.parametrize("kind, layout", [("smollm2", "tree"), ("phi", "tree"), ("falcon", "rows"), ("mpt", "rows"),
                                          ("lfm2", "rows")])
@pytest.mark.parametrize("verbalizers, shots", [(committed("prompt").verbalizers, 0),
                                                ([" yes indeed", " maybe so", " no way at all"], 3)])
@torch.inference_mode()
def test_scores_sum_every_verbalizer_token(tokenizer, model_params, snli_dir, verbalizers, shots, kind, layout,
                                           monkeypatch):
    # The un-quantized model: bitsandbytes' CPU 4-bit kernels round differently with the batch
    # shape (~0.1 nat), which would hide a real indexing error. Each label scored alone, unpadded,
    # is the reference for the packed pass (prompts sharing their premise or k-shot prefix in one
    # prefix tree, every label after each; or rows, where the tree would mix prompts). Validation
    # pairs come three to a premise; one repeats.
    model = plain_model(kind, model_params)
    rows = gold_rows(snli_dir, 8)
    prompt_cfg = committed("prompt", verbalizers=verbalizers)
    encoder = Encoder(tokenizer, prompt_cfg, prefix=demonstrations(prompt_cfg, rows[-shots:]) if shots else "")
    assert max(map(len, encoder.answers)) > 1, "the test needs a multi-token verbalizer"
    rows = rows[:7] + rows[:1]
    monkeypatch.setattr(tree_attention, "SEGMENTS_AT_ONCE", 3)  # the padded path, a few segments at a time
    scorer = PackedScorer(model, encoder)
    assert scorer.layout == layout
    scores = score_rows(scorer, encoder.prompt_ids(rows), batch_size=4)
    for position, row in enumerate(rows):
        row_scores = scores[position]
        [prompt] = encoder.prompt_ids([row])
        for answer, score in zip(encoder.answers, row_scores):
            expected = answer_logprobs(model, prompt, answer).sum().item()
            assert abs(score - expected) < 1e-4 * max(1.0, abs(expected))


def test_a_model_that_scores_in_no_layout_fails_in_one_line(tokenizer, monkeypatch):
    from stages.lib.errors import PipelineError

    model = plain_model("phi", None)

    def broken(*args, **kwargs):
        raise ValueError("no forward today")
    monkeypatch.setattr(model, "forward", broken)
    expected = "PhiForCausalLM: scoring fails in a prefix tree (ValueError: no forward today) and in rows of its own " \
               "(ValueError: no forward today)"
    with pytest.raises(PipelineError, match=f"^{re.escape(expected)}$"):
        PackedScorer(model, Encoder(tokenizer, committed("prompt")))


@torch.inference_mode()
def test_a_model_whose_logits_skip_its_output_embeddings_fails_in_one_line(tokenizer, snli_dir, monkeypatch):
    # Both layouts pick the answer positions at the LM head (a row per token or plain rows, where
    # `logits_to_keep` cannot): a model whose logits come from elsewhere would score every token.
    from stages.lib.errors import PipelineError

    model = plain_model("phi", None)
    monkeypatch.setattr(model, "get_output_embeddings", lambda: torch.nn.Identity())  # a head it never calls
    with pytest.raises(PipelineError, match="logits do not come from its output embeddings"):
        PackedScorer(model, Encoder(tokenizer, committed("prompt")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash attention's varlen kernel needs a GPU")
@torch.inference_mode()
def test_flash_and_padded_tree_attention_score_alike_on_a_gpu(tokenizer, snli_dir, monkeypatch):
    # CI has no GPU; a GPU's scoring takes the flash path, which bench/eval.py also checks at phi-2 shape.
    model = plain_model("phi", None).to("cuda", torch.bfloat16)
    encoder = Encoder(tokenizer, committed("prompt"))
    prompts = encoder.prompt_ids(gold_rows(snli_dir, 24))
    flash_runs = tree_attention.flash_runs
    took_flash = []  # what flash_runs answered, call by call
    monkeypatch.setattr(tree_attention, "flash_runs",
                        lambda *args: took_flash.append(flash_runs(*args)) or took_flash[-1])
    flash = score_rows(PackedScorer(model, encoder), prompts, batch_size=8)
    assert took_flash and all(took_flash)
    monkeypatch.setattr(tree_attention, "flash_runs", lambda *args: False)
    padded = score_rows(PackedScorer(model, encoder), prompts, batch_size=8)
    gaps = [abs(a - b) for i in padded for a, b in zip(flash[i], padded[i])]
    assert max(gaps) < 0.1, gaps


def test_length_buckets_pad_under_an_eighth_with_at_most_eight_lengths_per_doubling():
    lengths = range(1, 5000)
    buckets = [length_bucket(n) for n in lengths]
    assert [length_bucket(n) for n in (1, 49, 56, 57, 127, 128, 129, 300, 1025)] == [8, 56, 56, 64, 128, 128, 144,
                                                                                      320, 1152]
    assert all(b >= n and b % 8 == 0 and (b - n) * 8 < max(n, 64) for n, b in zip(lengths, buckets))
    for octave in range(7, 12):  # lengths over 2^k up to 2^(k+1)
        assert len({length_bucket(n) for n in range(2 ** octave + 1, 2 ** (octave + 1) + 1)}) == 8


@pytest.mark.parametrize("round_up", [None, multiple_of_8, functools.partial(rounded_up, multiple=16)])
@torch.inference_mode()
def test_training_loss_covers_exactly_the_answer_tokens(tokenizer, quantized_model, snli_dir, round_up):
    collator = TrainingCollator(Encoder(tokenizer, committed("prompt")), round_up=round_up)
    examples = collator.examples(gold_rows(snli_dir, 6))
    batch = collator(examples)
    width, keep = batch["input_ids"].shape[1], batch["logits_to_keep"]
    if round_up:
        assert round_up(width) == width and (keep == width or round_up(keep) == keep)
    assert collator.shape(examples) == (len(examples), width, keep)  # what graphs.py records ahead
    assert batch["labels"].ne(-100).sum().item() == sum(e["answer_length"] for e in examples)
    loss = quantized_model(**batch).loss.item()
    per_token = [lp for e in examples for lp in answer_logprobs(
        quantized_model, e["input_ids"][:-e["answer_length"]], e["input_ids"][-e["answer_length"]:]).tolist()]
    assert abs(loss + sum(per_token) / len(per_token)) < 1e-2 * abs(loss)


def test_lm_head_gets_contiguous_hidden_states(quantized_model):
    # A strided slice would make the LM head a batched matmul reading the vocabulary matrix per row.
    seen = []
    hook = quantized_model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        quantized_model(input_ids=torch.randint(0, 1000, (3, 12)), logits_to_keep=4)
    hook.remove()
    assert seen == [True]


def test_compiled_layers_and_partial_checkpointing_train_like_eager(model_params, snli_dir, tmp_path):
    # One plain SGD step at lr 1 makes the adapter's change its gradient; no dropout, whose random
    # stream differs once compiled.
    from transformers.modeling_layers import GradientCheckpointingLayer
    from stages.lib.training import build_trainer

    runs = []
    for changes in ({}, {"compile": True, "gradient_checkpointing": True, "checkpoint_every_n_layers": 2}):
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        cfg = committed("train", batch_size=8, max_steps=1, optim="sgd", lr=1.0, warmup_ratio=0.0, logging_steps=1,
                          save_steps=10**6, **changes)
        trainer, _ = build_trainer(model_params, committed("prompt"), committed("lora", dropout=0.0), cfg,
                                   gold_rows(snli_dir, 8), tmp_path / str(len(runs)))
        trainer.train()
        layers = [m for m in trainer.model.modules() if isinstance(m, GradientCheckpointingLayer)]
        adapter = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        runs.append((trainer.state.log_history[0]["loss"], adapter, [m.gradient_checkpointing for m in layers],
                     torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs))
    (eager_loss, eager, eager_checkpointed, eager_graphs), (loss, compiled, checkpointed, graphs) = runs
    assert eager_graphs == 0 < graphs and not any(eager_checkpointed)
    assert checkpointed == [i % 2 == 0 for i in range(len(layers))]
    assert loss == pytest.approx(eager_loss, rel=1e-4)
    for name, weight in eager.items():
        assert torch.allclose(compiled[name], weight, rtol=1e-3, atol=1e-6), name


def test_throughput_counts_its_window_only():
    from types import SimpleNamespace
    from stages.lib.training import Throughput

    window, whole = Throughput(skip_steps=2, steps=3), Throughput()
    # 8 steps of 2 pairs = 1 micro-batch x 2 accumulated; pairs of step k: k + 1 and 1 tokens
    args = SimpleNamespace(per_device_train_batch_size=1, gradient_accumulation_steps=2, world_size=1)
    loader = SimpleNamespace(dataset=[{"input_ids": [0] * n} for k in range(8) for n in (k + 1, 1)])
    state = SimpleNamespace(global_step=0)
    for meter in (window, whole):
        meter.on_train_begin(args, state, None, train_dataloader=loader)
    for step in range(8):  # a bench's profiled steps come after its window
        for meter in (window, whole):
            meter.on_step_begin(args, state, None)
        state.global_step += 1
        for meter in (window, whole):
            meter.on_step_end(args, state, None)
    for meter in (window, whole):
        meter.on_train_end(args, state, None)
    assert (window.tokens, whole.tokens) == ((3 + 4 + 5) + 3, sum(range(1, 9)) + 8)
    assert 0 < window.seconds < whole.seconds


def quantized_linear(in_features, out_features, dtype, nested=True):
    from bitsandbytes.nn import Linear4bit

    torch.manual_seed(0)
    layer = Linear4bit(in_features, out_features, compute_dtype=dtype, compress_statistics=nested, quant_type="nf4")
    return layer.to(dtype).to("cpu")  # .to(device) quantizes


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_torch_ops_nf4_dequantizes_bit_for_bit_as_bitsandbytes(dtype, nested):
    from bitsandbytes.functional import dequantize_4bit
    from stages.lib.nf4 import dequantize

    # 100 x 200 weights: a partial last block of 64, and 313 absmaxes, a partial block of 256
    weight = quantized_linear(200, 100, dtype, nested).weight
    assert weight.quant_state.nested == nested and weight.numel() == 100 * 200 // 2
    assert torch.equal(dequantize(weight), dequantize_4bit(weight.data, weight.quant_state))


def test_compiled_torch_ops_linear4bit_matches_and_keeps_only_packed_weights():
    from stages.lib.nf4 import TorchOpsLinear4bit, use_torch_ops

    reference = quantized_linear(256, 512, torch.float32)
    layer = quantized_linear(256, 512, torch.float32)
    use_torch_ops(layer)
    assert type(layer) is TorchOpsLinear4bit and torch.equal(layer.weight.data, reference.weight.data)
    compiled = torch.compile(layer, dynamic=True)
    x = torch.randn(4, 24, 256)
    runs, saved = [], []
    for module, hook in ((reference, lambda t: t), (compiled, lambda t: saved.append(t) or t)):
        inputs = x.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(hook, lambda t: t):
            output = module(inputs)
        output.pow(2).sum().backward()
        runs.append((output.detach(), inputs.grad))
    (output, grad), (expected, expected_grad) = runs[1], runs[0]
    assert torch.allclose(output, expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(grad, expected_grad, rtol=1e-4, atol=1e-4)
    # backward recomputes the float weight from the packed one rather than keep a float copy
    assert saved and not any(t.is_floating_point() and t.numel() >= 256 * 512 for t in saved)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_base_dequantized_once_computes_bit_for_bit_as_bitsandbytes(dtype):
    from stages.lib.nf4 import DequantizedLinear4bit, dequantized_bytes, keep_dequantized

    reference, layer = quantized_linear(200, 100, dtype), quantized_linear(200, 100, dtype)
    keep_dequantized(layer, dtype)
    assert type(layer) is DequantizedLinear4bit and dequantized_bytes(reference, dtype) == 100 * 200 * dtype.itemsize
    assert torch.equal(layer.weight.data, reference.weight.data) and "dequantized" not in layer.state_dict()
    runs = []
    for module in (reference, layer):
        inputs = torch.randn(4, 24, 200, dtype=dtype, generator=torch.Generator().manual_seed(1)).requires_grad_()
        output = module(inputs)
        output.float().pow(2).sum().backward()
        runs.append((output.detach(), inputs.grad))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_a_step_with_the_base_dequantized_once_equals_the_per_matmul_step(small_model, snli_dir, tmp_path):
    from stages.lib.nf4 import DequantizedLinear4bit
    from stages.lib.training import build_trainer

    runs = []
    for mode in ("per_matmul", "once"):
        cfg = committed("train", batch_size=8, max_steps=2, logging_steps=1, save_steps=10**6, dequantize_base=mode)
        trainer, _ = build_trainer(committed("model", name=str(small_model)), committed("prompt"), committed("lora"),
                                   cfg, gold_rows(snli_dir, 16), tmp_path / mode)
        trainer.train()
        kept = sum(isinstance(m, DequantizedLinear4bit) for m in trainer.model.modules())
        runs.append(([e["loss"] for e in trainer.state.log_history if "loss" in e], kept,
                     {n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad}))
    (losses, kept_before, before), (losses_once, kept, after) = runs
    assert kept_before == 0 and kept == 2 * 7 and losses == losses_once
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_training_attention_leaves_the_causal_mask_to_sdpa_even_while_a_graph_records(small_model, monkeypatch):
    """While a CUDA graph records, transformers builds an explicit causal mask for an unmasked batch
    (it may not read the position ids on the host): SDPA then leaves its flash kernel, and compiled
    layers recompile mid-recording. The training attention leaves the mask to SDPA's `is_causal`, and
    computes what plain SDPA computes, with and without a padding mask."""
    import transformers.masking_utils as masking
    from transformers import AutoModelForCausalLM
    from stages.lib.training import TRAINING_ATTENTION, causal_attention_without_mask

    model = AutoModelForCausalLM.from_pretrained(small_model, attn_implementation="sdpa")
    ids = torch.randint(10, 1000, (3, 12))
    padding = torch.ones_like(ids)
    padding[0, 8:] = 0
    embeds, positions = torch.zeros(3, 12, 8), torch.arange(12)[None]

    def logits_and_recorded_mask():
        with torch.no_grad():
            logits = [model(input_ids=ids, attention_mask=mask).logits for mask in (None, padding)]
        with monkeypatch.context() as recording:
            recording.setattr(masking, "is_tracing", lambda *args: True)  # as while a CUDA graph records
            return logits, masking.create_causal_mask(model.config, embeds, None, cache=None, position_ids=positions)

    plain_logits, plain_mask = logits_and_recorded_mask()
    causal_attention_without_mask(model)
    assert model.config._attn_implementation == TRAINING_ATTENTION
    logits, mask = logits_and_recorded_mask()
    assert all(torch.equal(a, b) for a, b in zip(logits, plain_logits))
    assert plain_mask is not None and mask is None


@pytest.mark.parametrize("changes, usable", [
    ({}, True), ({"cuda_graphs": False}, False), ({"compile": True}, True), ({"gradient_checkpointing": True}, False)])
def test_cuda_graphs_only_where_the_step_never_needs_the_host(monkeypatch, changes, usable):
    from stages.lib import graphs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert graphs.usable(committed("train", **changes), torch.bfloat16) == usable
    assert not graphs.usable(committed("train", **changes), torch.float16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not graphs.usable(committed("train", **changes), torch.bfloat16)


def test_graphs_record_every_batch_shape_the_run_feeds_largest_first(small_model, snli_dir, tmp_path, capsys):
    """On a CPU nothing is recorded; what is checked is the plan: the shapes `_record_all` records
    are exactly those of the micro-batches Trainer's loader yields (a missing one would stop the run
    at its first replay), largest first, and the recorded `.grad` tensors are zeroed and reattached
    after `zero_grad`."""
    from unittest import mock
    from stages.lib import graphs
    from stages.lib.training import build_trainer

    cfg = committed("train", batch_size=8, micro_batch_size=4, max_steps=6, save_steps=10**6)
    trainer, _ = build_trainer(committed("model", name=str(small_model)), committed("prompt"), committed("lora"), cfg,
                               gold_rows(snli_dir, 48), tmp_path)
    trainer.data_collator.round_up = length_bucket  # as when graphs are on
    fed = {graphs.shape_of({**batch, "num_items_in_batch": torch.tensor(1.0)})
           for batch in trainer.get_train_dataloader()}
    planner = object.__new__(graphs.GraphedTrainer)  # no CUDA: the planning part only
    for name in ("args", "model", "train_dataset", "data_collator"):
        setattr(planner, name, getattr(trainer, name))
    planner._prepare_inputs, planner.stage = (lambda inputs: inputs), "finetune_control"
    recorded = []
    with mock.patch.object(graphs.GraphedTrainer, "_record", lambda self, model, inputs, warm_up: recorded.append(
            (graphs.shape_of(inputs), warm_up))):
        plan = planner._record_all(torch.tensor(1.0))
    assert set(plan) == fed and len(recorded) == len(fed) > 1
    assert [warm for _, warm in recorded] == [True] + [False] * (len(recorded) - 1)
    sizes = [dict(shape)["input_ids"] for shape, _ in recorded]
    assert [r * w for r, w in sizes] == sorted((r * w for r, w in sizes), reverse=True)

    def unrecordable(self, model, inputs, warm_up):  # as torch.cuda.graph's exit reports an error inside it
        try:
            raise RuntimeError("operation not permitted when stream is capturing")
        except RuntimeError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    with mock.patch.object(graphs.GraphedTrainer, "_record", unrecordable), \
            mock.patch.object(torch.cuda, "empty_cache", lambda: None):
        assert planner._record_all(torch.tensor(1.0)) == {}  # the run then steps eagerly
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "finetune_control: steps run eagerly, CUDA graphs could not be recorded: operation not permitted "
        "when stream is capturing")

    planner.grads = None
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    planner._attach_grads()
    kept = [p.grad for p in params]
    assert all(g is not None and not g.any() for g in kept)
    for p in params:
        p.grad.add_(1.0)
    trainer.model.zero_grad()  # Trainer's, after each optimizer step: .grad becomes None
    planner._attach_grads()
    assert all(p.grad is g and not g.any() for p, g in zip(params, kept))


def test_compile_on_first_call_wraps_now_and_compiles_at_each_first_call(monkeypatch):
    from stages.lib.runtime import compile_on_first_call

    compiled = []

    def compile_now(model, **options):
        compiled.append(options)
        return lambda *args: 10 * model(*args)

    monkeypatch.setattr(torch, "compile", compile_now)
    with compile_on_first_call():
        add = torch.compile(lambda a, b: a + b)
        double = torch.compile(dynamic=False)(lambda a: 2 * a)
    assert torch.compile is compile_now and compiled == []
    assert (add(1, 2), double(3), add(1, 1)) == (30, 60, 20)
    assert compiled == [{}, {"dynamic": False}]


def test_model_stages_import_without_torchs_compiler():
    """bitsandbytes' import-time torch.compile wrappers must not import inductor: seconds per stage."""
    import subprocess
    import sys

    check = "import sys, stages.finetune, stages.evaluate; print('torch._inductor.compile_fx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
