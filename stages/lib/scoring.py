"""Zero-shot and adapted scoring: each label's score is the log-likelihood of its verbalizer.

One forward pass scores every label of several pairs (the packed prefix tree of batches.py): a
prompt runs once instead of once per label, and the prefix it shares with the prompts beside it (a
premise, the k-shot demonstrations) once per batch. Batches are as large as the GPU holds.
"""
import contextlib

import torch

from . import tree_attention
from .batches import PackedAnswers
from .errors import PipelineError
from .memory import largest_fitting

PROBE_TOLERANCE = 0.01  # nat: how far a probe's scores may move with the layout of its batch (rounding)


def best_label(label_scores):
    """The prediction: the label whose verbalizer scored highest (the first one on a tie)."""
    return max(range(len(label_scores)), key=label_scores.__getitem__)


def answer_logprobs(model, prompt, answer):
    """Log-probabilities of `answer`'s tokens after `prompt`, from one unpadded pass over every
    position: the plain computation the packed scorer must agree with (tests, bench/eval.py)."""
    ids = torch.tensor([prompt + answer], device=next(model.parameters()).device)
    logprobs = model(input_ids=ids, use_cache=False).logits[0, -len(answer) - 1:-1].float().log_softmax(-1)
    return logprobs.gather(-1, ids[0, -len(answer):, None]).squeeze(-1)


@contextlib.contextmanager
def logits_only_at(model, tokens):
    """Inside the block the model's LM head runs on the hidden states of `tokens` only (indices in
    row order), as one row: what `logits_to_keep` does within a row, across rows."""
    head, calls = model.get_output_embeddings(), []
    if head is None:
        raise tree_attention.Unsupported(f"{type(model).__name__} has no output embeddings")

    def kept_rows(module, args):
        calls.append(module)
        return args[0].flatten(0, 1)[tokens][None], *args[1:]

    hook = head.register_forward_pre_hook(kept_rows)
    try:
        yield
    finally:
        hook.remove()
    if not calls:
        raise tree_attention.Unsupported(f"{type(model).__name__}'s logits do not come from its output embeddings")


class PackedScorer:
    """Scores lists of prompts with one model: a packed prefix tree, one forward pass, the label scores.

    A model whose prompts do not stay apart in the tree (a tiny probe at the start tells) scores each
    prompt in plain rows of its own instead: its attention bypasses transformers' AttentionInterface,
    or its layers mix neighbouring tokens outside attention (convolutions, state spaces).
    """

    def __init__(self, model, encoder):
        model.eval()
        self.model = model
        self.pad_id = encoder.tokenizer.pad_token_id  # load_tokenizer sets one
        self.packed = PackedAnswers(encoder.answers, next(model.parameters()).device)
        self.layout, name = "tree", type(model).__name__
        try:
            if self.keeps_prompts_apart():
                return
            why = "a prompt's scores move with the tokens around it"
        except Exception as err:  # the tree cannot run on this model; rows take any causal LM
            why = f"{type(err).__name__}: {(str(err) or '-').splitlines()[0]}"
        self.layout = "rows"
        try:
            self.packed_scores([[1, 2]])
        except Exception as err:
            raise PipelineError(f"{name}: scoring fails in a prefix tree ({why}) and in rows of its own "
                                f"({type(err).__name__}: {err})") from err
        print(f"{name}: each prompt scores in rows of its own, slower than in a prefix tree ({why})", flush=True)

    def keeps_prompts_apart(self):
        """Whether a tiny probe batch (prompts sharing a prefix) scores alike fed a row per token and
        in one row. Attention over the tree sees the same keys either way. Layers that mix neighbouring
        tokens outside attention see none in the first and the tree's neighbours in the second, and a
        model that positions tokens by their place in the row, not their position ids, moves them."""
        prompts = [[1, 2, 3, 4], [1, 2, 3, 8], [11] * 3]
        fed_apart, fed_in_one_row = (self.tree_scores(prompts, True, row_per_token) for row_per_token in (True, False))
        return (fed_apart - fed_in_one_row).abs().max().item() <= PROBE_TOLERANCE

    def __call__(self, prompts, share_prefixes=True):
        """Each prompt's label scores, in order, from one forward pass."""
        order = self.packed.order(prompts)
        by_position = dict(zip(order, self.packed_scores([prompts[i] for i in order], share_prefixes).tolist()))
        return [by_position[i] for i in range(len(prompts))]

    @torch.inference_mode()
    def packed_scores(self, prompts, share_prefixes=True):
        """The prompts' label scores, a tensor on the model's device, from one forward pass that nothing
        waits for: the host builds the next batch while the GPU runs this one."""
        if self.layout == "tree":
            return self.tree_scores(prompts, share_prefixes)
        input_ids, kept = self.packed.rows(prompts, self.pad_id)
        with logits_only_at(self.model, kept):
            return self.packed.scores(self.model(input_ids=input_ids, use_cache=False).logits)

    @torch.inference_mode()
    def tree_scores(self, prompts, share_prefixes, row_per_token=True):
        batch = self.packed.batch(prompts, share_prefixes)
        tree = batch.pop("prefix_tree")
        # A row per token: the model's per-head tensors then keep the token-major layout its projections
        # write, and neither the attention's inputs nor its output are copied to transpose them (one row
        # of all tokens makes them head-major); the tree attention joins the rows.
        shape = (-1, 1) if row_per_token else (1, -1)
        with tree_attention.switched_on(self.model) as own_attention, \
                logits_only_at(self.model, batch["logits_to_keep"]):
            tree.implementation = own_attention
            rows = {name: batch[name].view(shape) for name in ("input_ids", "position_ids")}
            logits = self.model(**rows, prefix_tree=tree, use_cache=False).logits
        if not tree.layers_seen:
            raise tree_attention.Unsupported(f"{type(self.model).__name__} did not call its attention function")
        return self.packed.scores(logits)


def fitting_batch_size(scorer, prompts, largest):
    """`largest`, halved until scoring the longest prompts fits the GPU (a CPU takes `largest`); 0 if
    not even one pair fits. Laid out whole, the `size` longest prompts take as many tokens as any
    batch of `size` prompts can, and as many logits."""
    if not torch.cuda.is_available():
        return largest
    longest = sorted(prompts, key=len, reverse=True)
    halvings = [largest >> k for k in range(largest.bit_length())]
    return largest_fitting(halvings, lambda size: scorer(longest[:size], share_prefixes=False))


def score_rows(scorer, prompts, batch_size, shard=(0, 1), progress=None, share_prefixes=True):
    """{row position: label log-likelihoods} (every verbalizer token counts).

    Prompts go in token order (`PackedAnswers.order`), `batch_size` to a forward pass. `shard=(k, n)`
    scores only batches k, k + n, ...: the batches are the same whatever n, so are the scores.
    `progress(pairs)` is called as each batch is queued on the device. `share_prefixes=False` lays
    each prompt out whole (benchmarks' baseline).
    """
    order = scorer.packed.order(prompts)
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    positions, scores = [], []
    first, step = shard
    for batch in batches[first::step]:
        scores.append(scorer.packed_scores([prompts[i] for i in batch], share_prefixes))
        positions += batch
        if progress:
            progress(len(batch))
    # the one wait for the GPU
    return dict(zip(positions, torch.cat(scores).tolist())) if scores else {}
