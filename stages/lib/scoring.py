"""Zero-shot and adapted scoring: each label's score is the log-likelihood of its verbalizer.

One forward pass scores every label of a pair. The row is the prompt followed by all the
verbalizers, and a 4D attention mask lets each verbalizer token see the prompt and the earlier
tokens of its own verbalizer only, at positions that continue the prompt. Each verbalizer therefore
gets the logits it would get alone after the prompt, but the prompt runs once instead of once per label.
"""
import torch

from .memory import largest_fitting


class PackedAnswers:
    """Where the verbalizers sit after the prompt, and which kept logit predicts each of their tokens.

    Index tensors live on the model's device, and each batch's mask is built there.
    """

    def __init__(self, answers, device):
        self.device, self.labels = device, len(answers)
        self.token_list = [t for answer in answers for t in answer]
        self.tokens = torch.tensor(self.token_list, device=device)
        self.label = torch.tensor([k for k, answer in enumerate(answers) for _ in answer], device=device)
        self.offset = torch.tensor([j for answer in answers for j in range(len(answer))], device=device)
        # Kept logits: the last prompt token's, then one per answer token. An answer's first token is
        # predicted by the last prompt token (kept logit 0), each later one by the answer token before
        # it (kept logit = its own index in self.tokens, since the kept logits start one earlier).
        self.position = torch.arange(len(self.token_list), device=device)
        self.source = torch.where(self.offset == 0, 0, self.position)

    def batch(self, prompts, pad_id, dtype):
        """input_ids, position_ids and the additive 4D attention mask for left-padded prompt + answers."""
        answer_width = len(self.token_list)
        width = max(map(len, prompts)) + answer_width
        input_ids = torch.tensor([[pad_id] * (width - len(p) - answer_width) + p + self.token_list for p in prompts])
        lengths = torch.tensor([len(p) for p in prompts], device=self.device).unsqueeze(1)
        column = torch.arange(width, device=self.device)
        prompt_start = width - answer_width - lengths
        # segment: -1 padding, 0 prompt, 1 + k the tokens of answer k
        segment = torch.where(column < prompt_start, -1, 0)
        segment[:, -answer_width:] = 1 + self.label
        position_ids = (column - prompt_start).clamp(min=0)
        position_ids[:, -answer_width:] = lengths + self.offset
        query, key = segment.unsqueeze(2), segment.unsqueeze(1)
        visible = (column.view(-1, 1) >= column.view(1, -1)) & (key >= 0) & ((key == 0) | (key == query))
        visible |= torch.eye(width, dtype=torch.bool, device=self.device)  # padding sees itself: no row is fully masked
        mask = torch.zeros(visible.shape, dtype=dtype, device=self.device).masked_fill(~visible, torch.finfo(dtype).min)
        return {"input_ids": input_ids.to(self.device), "position_ids": position_ids, "attention_mask": mask.unsqueeze(1)}

    def scores(self, logits, rows_at_once=64):
        """(rows, labels) summed log-likelihoods from the last len(tokens) + 1 logits of each row.

        The fp32 normalizer is taken a few rows at a time: over a whole batch it would be a
        rows x positions x vocabulary tensor, the largest in the pass for a big vocabulary.
        """
        kept = logits[:, self.source]  # (rows, answer tokens, vocabulary)
        token_logprobs = torch.cat([chunk[:, self.position, self.tokens].float()
                                    - torch.logsumexp(chunk.float(), dim=-1) for chunk in kept.split(rows_at_once)])
        return torch.zeros(len(logits), self.labels, device=logits.device).index_add_(1, self.label, token_logprobs)


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
