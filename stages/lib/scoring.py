"""Zero-shot and adapted scoring: each label's score is the log-likelihood of its verbalizer.

One forward pass scores every label of several pairs (the packed rows of batches.py): a prompt runs
once instead of once per label, and the prefix it shares with other prompts (a premise, the k-shot
demonstrations) once per row. Rows go in batches of rows alike in prompt count and length, as large
as the GPU holds.
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
    """Scores lists of prompts with one model: packed rows, one forward pass, the label scores."""

    def __init__(self, model, encoder, row_lengths=PackedAnswers.ROW_LENGTHS):
        model.eval()
        self.model, self.pad_id = model, encoder.tokenizer.pad_token_id
        self.dtype = model.get_input_embeddings().weight.dtype  # the attention's dtype, which the mask must match
        self.packed = PackedAnswers(encoder.answers, next(model.parameters()).device, row_lengths)

    def __call__(self, prompts):
        """Each prompt's label scores, in order, from one forward pass."""
        by_position = scores_by_position(*self.packed_scores(prompts, self.packed.rows(prompts, len(prompts))))
        return [by_position[i] for i in range(len(prompts))]

    @torch.inference_mode()
    def packed_scores(self, prompts, rows):
        """(each slot's position in `prompts`, None where empty; the slots' label scores, a tensor on
        the model's device) for `rows` (positions in `prompts`, from `packed.rows`), from one forward
        pass that nothing waits for: the host builds the next batch while the GPU runs this one."""
        batch, slots = self.packed.batch([[prompts[i] for i in row] for row in rows], self.pad_id, self.dtype)
        logits = self.model(**batch, logits_to_keep=slots * self.packed.tail, use_cache=False).logits
        return [row[s] if s < len(row) else None for row in rows for s in range(slots)], self.packed.scores(logits)


def scores_by_position(positions, scores):
    """{position: label scores} from `packed_scores`' lists (the one wait for the GPU)."""
    return {i: row_scores for i, row_scores in zip(positions, scores.tolist()) if i is not None}


def fitting_batch_size(scorer, prompts, largest):
    """`largest`, halved until scoring the longest prompts fits the GPU (a CPU takes `largest`); 0 if
    not even one pair fits. Packed as the scoring packs them, the `size` longest prompts take at
    least as many tail slots as any batch of `size` slots, and no batch holds longer prompts."""
    if not torch.cuda.is_available():
        return largest
    longest = sorted(prompts, key=len, reverse=True)
    halvings = [largest >> k for k in range(largest.bit_length())]
    return largest_fitting(halvings, lambda size: scorer(longest[:size]))


def batches(rows, batch_size):
    """Consecutive rows grouped into batches of at most `batch_size` tail slots (rows x the most
    prompts a row holds): the kept logits never outgrow those of `batch_size` pairs."""
    grouped, batch, slots = [], [], 0
    for row in rows:
        if batch and max(slots, len(row)) * (len(batch) + 1) > batch_size:
            grouped.append(batch)
            batch, slots = [], 0
        batch.append(row)
        slots = max(slots, len(row))
    return grouped + [batch] if batch else grouped


def score_rows(scorer, prompts, batch_size, shard=(0, 1), progress=None):
    """{row position: label log-likelihoods} (every verbalizer token counts).

    Prompts are packed into rows (`PackedAnswers.rows`), and neighbouring rows into batches of at
    most `batch_size` prompt slots (`batches`). `shard=(k, n)` scores only batches k, k + n, ...: the
    batches are the same whatever n, so are the scores. `progress(pairs)` is called as each batch is
    queued on the device.
    """
    positions, scores = [], []
    first, step = shard
    for rows in batches(scorer.packed.rows(prompts, batch_size), batch_size)[first::step]:
        batch_positions, batch_scores = scorer.packed_scores(prompts, rows)
        positions += batch_positions
        scores.append(batch_scores)
        if progress:
            progress(sum(map(len, rows)))
    return scores_by_position(positions, torch.cat(scores)) if scores else {}
