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

DENSE_MASK_PROMPTS = 32  # prompts a pass for a model that takes a dense mask, not the tree


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
    """Scores lists of prompts with one model: a packed prefix tree, one forward pass, the label scores."""

    def __init__(self, model, encoder):
        model.eval()
        self.model = model
        self.dtype = model.get_input_embeddings().weight.dtype  # the attention's, which a dense mask must match
        self.packed = PackedAnswers(encoder.answers, next(model.parameters()).device)
        self.over_trees = True
        try:  # one tiny pass tells whether the model's attention takes the tree
            self.packed_scores([[0, 0]])
        except tree_attention.Unsupported:
            self.over_trees = False  # a dense mask then does the same
            try:
                self.packed_scores([[0, 0]])
            except Exception as err:
                raise PipelineError(f"{type(model).__name__}: scoring needs attention through transformers' "
                                    f"AttentionInterface or a 4D attention mask, and this model takes neither "
                                    f"({type(err).__name__}: {err})") from err

    def __call__(self, prompts, share_prefixes=True):
        """Each prompt's label scores, in order, from one forward pass."""
        order = self.packed.order(prompts)
        by_position = dict(zip(order, self.packed_scores([prompts[i] for i in order], share_prefixes).tolist()))
        return [by_position[i] for i in range(len(prompts))]

    @torch.inference_mode()
    def packed_scores(self, prompts, share_prefixes=True):
        """The prompts' label scores, a tensor on the model's device, from one forward pass that nothing
        waits for: the host builds the next batch while the GPU runs this one."""
        if not self.over_trees:  # a dense mask grows with the square of a pass's tokens: a few prompts a pass
            return torch.cat([self.dense_mask_scores(prompts[start:start + DENSE_MASK_PROMPTS], share_prefixes)
                              for start in range(0, len(prompts), DENSE_MASK_PROMPTS)])
        batch = self.packed.batch(prompts, share_prefixes)
        tree = batch.pop("prefix_tree")
        # A row per token: the model's per-head tensors then keep the token-major layout its projections
        # write, and neither the attention's inputs nor its output are copied to transpose them (one row
        # of all tokens makes them head-major); the tree attention joins the rows.
        with tree_attention.switched_on(self.model) as own_attention, \
                logits_only_at(self.model, batch["logits_to_keep"]):
            tree.implementation = own_attention
            rows = {name: batch[name].view(-1, 1) for name in ("input_ids", "position_ids")}
            logits = self.model(**rows, prefix_tree=tree, use_cache=False).logits
        if not tree.layers_seen:
            raise tree_attention.Unsupported(f"{type(self.model).__name__} did not call its attention function")
        return self.packed.scores(logits)

    def dense_mask_scores(self, prompts, share_prefixes):
        batch = self.packed.batch(prompts, share_prefixes)
        mask = batch.pop("prefix_tree").dense_mask(self.dtype)
        return self.packed.scores(self.model(**batch, attention_mask=mask, use_cache=False).logits)


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
