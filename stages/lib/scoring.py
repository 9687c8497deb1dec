"""Zero-shot and adapted scoring: each label's score is the log-likelihood of its verbalizer.

One forward pass scores every label of a pair (the packed batch of batches.py), so the prompt runs
once instead of once per label. Pairs go in batches of similar length, as large as the GPU holds.
"""
import torch

from .batches import PackedAnswers
from .memory import largest_fitting


def best_label(label_scores):
    """The prediction: the label whose verbalizer scored highest (the first one on a tie)."""
    return max(range(len(label_scores)), key=label_scores.__getitem__)


def answer_logprobs(model, prompt, answer):
    """Log-probabilities of `answer`'s tokens after `prompt`, from one unpadded pass over every
    position: the plain computation the packed scorer must agree with (tests, bench/eval.py)."""
    ids = torch.tensor([prompt + answer], device=next(model.parameters()).device)
    logprobs = model(input_ids=ids, use_cache=False).logits[0, -len(answer) - 1:-1].float().log_softmax(-1)
    return logprobs.gather(-1, ids[0, -len(answer):, None]).squeeze(-1)


class PackedScorer:
    """Scores lists of prompts with one model: the packed batch, one forward pass, the label scores."""

    def __init__(self, model, encoder):
        model.eval()
        self.model, self.pad_id = model, encoder.tokenizer.pad_token_id
        self.dtype = model.get_input_embeddings().weight.dtype  # the attention's dtype, which the mask must match
        self.packed = PackedAnswers(encoder.answers, next(model.parameters()).device)

    @torch.inference_mode()
    def __call__(self, prompts):
        batch = self.packed.batch(prompts, self.pad_id, self.dtype)
        logits = self.model(**batch, logits_to_keep=len(self.packed.token_list) + 1, use_cache=False).logits
        return self.packed.scores(logits).tolist()


def fitting_batch_size(scorer, prompts, largest):
    """`largest`, halved until scoring the longest prompts fits the GPU (a CPU takes `largest`); 0 if
    not even one pair fits."""
    if not torch.cuda.is_available():
        return largest
    longest = sorted(prompts, key=len, reverse=True)
    halvings = [largest >> k for k in range(largest.bit_length())]
    return largest_fitting(halvings, lambda size: scorer(longest[:size]))


def score_rows(scorer, prompts, batch_size, shard=(0, 1), progress=None):
    """{row position: label log-likelihoods} (every verbalizer token counts).

    Rows are batched by prompt length to waste little on padding. `shard=(k, n)` scores only batches
    k, k + n, ...: the batches are the same whatever n, so are the scores. `progress(rows)` is called
    after each batch.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    scores = {}
    first, step = shard
    for start in range(first * batch_size, len(order), step * batch_size):
        chunk = order[start:start + batch_size]
        for i, row_scores in zip(chunk, scorer([prompts[i] for i in chunk])):
            scores[i] = row_scores
        if progress:
            progress(len(chunk))
    return scores
