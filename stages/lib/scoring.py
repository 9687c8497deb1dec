"""Zero-shot and adapted scoring: each label's score is the log-likelihood of its verbalizer.

One forward pass scores every label of a pair. The row is the prompt followed by all the
verbalizers, and a 4D attention mask lets each verbalizer token see the prompt and the earlier
tokens of its own verbalizer only, at positions that continue the prompt. Each verbalizer therefore
gets the logits it would get alone after the prompt, but the prompt runs once instead of once per label.
"""
import torch


class PackedAnswers:
    """Where the verbalizers sit after the prompt, and which kept logit predicts each of their tokens."""

    def __init__(self, answers):
        self.tokens = [t for answer in answers for t in answer]
        self.label = torch.tensor([k for k, answer in enumerate(answers) for _ in answer])
        self.offset = torch.tensor([j for answer in answers for j in range(len(answer))])
        # Kept logits: the last prompt token's, then one per answer token. An answer's first token is
        # predicted by the last prompt token (kept logit 0), each later one by the answer token before
        # it (kept logit = its own index in self.tokens, since the kept logits start one earlier).
        self.source = torch.where(self.offset == 0, 0, torch.arange(len(self.tokens)))
        self.labels = len(answers)

    def batch(self, prompts, pad_id, dtype):
        """input_ids, position_ids and the additive 4D attention mask for left-padded prompt + answers."""
        width = max(map(len, prompts)) + len(self.tokens)
        input_ids = torch.tensor([[pad_id] * (width - len(p) - len(self.tokens)) + p + self.tokens for p in prompts])
        lengths = torch.tensor([len(p) for p in prompts]).unsqueeze(1)
        column = torch.arange(width)
        prompt_start = width - len(self.tokens) - lengths
        # segment: -1 padding, 0 prompt, 1 + k the tokens of answer k
        segment = torch.where(column < prompt_start, -1, 0).expand(len(prompts), width).clone()
        segment[:, -len(self.tokens):] = 1 + self.label
        position_ids = (column - prompt_start).clamp(min=0)
        position_ids[:, -len(self.tokens):] = lengths + self.offset
        query, key = segment.unsqueeze(2), segment.unsqueeze(1)
        visible = (column.view(-1, 1) >= column.view(1, -1)) & (key >= 0) & ((key == 0) | (key == query))
        visible |= torch.eye(width, dtype=torch.bool)  # padding sees itself: no row is fully masked
        mask = torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)
        return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask.unsqueeze(1)}

    def scores(self, logits):
        """(rows, labels) summed log-likelihoods from the last len(tokens) + 1 logits of each row."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        source, tokens = self.source.to(logits.device), torch.tensor(self.tokens, device=logits.device)
        token_logprobs = logprobs[:, source, tokens]  # (rows, answer tokens)
        sums = torch.zeros(len(logits), self.labels, device=logits.device)
        return sums.index_add_(1, self.label.to(logits.device), token_logprobs)


@torch.inference_mode()
def score_rows(model, encoder, rows, batch_size, shard=(0, 1)):
    """{row position: label log-likelihoods} (every verbalizer token counts).

    Rows are batched by prompt length to waste little on padding. `shard=(k, n)` scores only batches
    k, k + n, ...: the batches are the same whatever n, so are the scores.
    """
    model.eval()
    device = next(model.parameters()).device
    dtype = model.get_input_embeddings().weight.dtype  # the attention's dtype, which the mask must match
    packed = PackedAnswers(encoder.answers)
    prompts = encoder.prompt_ids(rows)
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))
    scores = {}
    first, step = shard
    for start in range(first * batch_size, len(order), step * batch_size):
        chunk = order[start:start + batch_size]
        batch = packed.batch([prompts[i] for i in chunk], encoder.tokenizer.pad_token_id, dtype)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**batch, logits_to_keep=len(packed.tokens) + 1, use_cache=False).logits
        for i, row_scores in zip(chunk, packed.scores(logits).tolist()):
            scores[i] = row_scores
    return scores
