"""Model inputs built from encoded rows: training batches (prompt + gold answer, loss on the answer)
and the packed scoring batches (prompt + every verbalizer, one pass for all labels).

In both, only the logits that predict answer tokens are computed (`logits_to_keep`): the LM head, a
vocabulary-sized matrix, then runs on a handful of positions instead of the whole row.
"""
import torch

IGNORE = -100  # label value the loss skips


def rounded_up(length, multiple):
    return -(-length // multiple) * multiple


def multiple_of_8(length):
    """Compiled layers specialize on a length being a multiple of 8: other lengths cost a second
    compilation and run a slower, unaligned variant."""
    return rounded_up(length, 8)


def length_bucket(length):
    """A CUDA graph's length (a graph per shape): a multiple of 8 up to 127 tokens, then of an eighth
    of the length's power of two (16 up to 255, 32 up to 511, ...). At most eight lengths per doubling,
    whatever the data's range, and padding under an eighth of the length."""
    return rounded_up(length, max(8, (1 << length.bit_length()) >> 4))


class TrainingCollator:
    """Batches of prompt + gold answer, with the loss on the answer tokens only."""

    def __init__(self, encoder, answer_logits_only=True, round_up=None):
        self.encoder = encoder
        self.answer_logits_only = answer_logits_only  # False: logits at every position, as common recipes do
        # applied to the batch length and to the logits kept: fewer shapes (None: exact lengths)
        self.round_up = round_up or (lambda length: length)

    def __call__(self, examples):
        # Right padding with neither attention mask nor position ids: under causal attention a real
        # token never sees the padding after it, and default positions let SDPA run flash attention.
        # (Left padding needs a mask, and its fully masked rows turned bf16 gradients into NaN on an
        # H200.) Answers then end at different positions, so the logits kept reach back to the
        # shortest row's answer.
        rows = [e["input_ids"] for e in examples]
        _, width, keep = self.shape(examples)
        input_ids = torch.tensor([row + [self.encoder.tokenizer.pad_token_id] * (width - len(row)) for row in rows])
        offset = width - keep
        labels = torch.full((len(rows), keep), IGNORE)
        for i, (row, e) in enumerate(zip(rows, examples)):
            end = len(row) - offset
            labels[i, end - e["answer_length"]:end] = torch.tensor(row[-e["answer_length"]:])
        # The model keeps the last `keep` logits and shifts labels by one inside its loss, so
        # labels are cut to the same window.
        return {"input_ids": input_ids, "labels": labels, "logits_to_keep": keep}

    def shape(self, examples):
        """(rows, length, logits kept) of the batch these examples make."""
        lengths = [len(e["input_ids"]) for e in examples]
        width = keep = self.round_up(max(lengths))
        if self.answer_logits_only:
            keep = min(width, self.round_up(width - min(lengths) + self.encoder.answer_window))
        return len(lengths), width, keep

    def examples(self, rows):
        answers = [self.encoder.answers[row["label"]] for row in rows]
        return [{"input_ids": prompt + answer, "answer_length": len(answer)}
                for prompt, answer in zip(self.encoder.prompt_ids(rows), answers)]


class PackedAnswers:
    """Where the verbalizers sit after the prompt, and which kept logit predicts each of their tokens.

    The row is the prompt followed by all the verbalizers, and a 4D attention mask lets each
    verbalizer token see the prompt and the earlier tokens of its own verbalizer only, at positions
    that continue the prompt: each verbalizer gets the logits it would get alone after the prompt.

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
        return {"input_ids": input_ids.to(self.device), "position_ids": position_ids,
                "attention_mask": mask.unsqueeze(1)}

    def scores(self, logits, rows_at_once=64):
        """(rows, labels) summed log-likelihoods from the last len(tokens) + 1 logits of each row.

        The fp32 normalizer is taken a few rows at a time: over a whole batch it would be a
        rows x positions x vocabulary tensor, the largest in the pass for a big vocabulary.
        """
        kept = logits[:, self.source]  # (rows, answer tokens, vocabulary)
        token_logprobs = torch.cat([chunk[:, self.position, self.tokens].float()
                                    - torch.logsumexp(chunk.float(), dim=-1) for chunk in kept.split(rows_at_once)])
        return torch.zeros(len(logits), self.labels, device=logits.device).index_add_(1, self.label, token_logprobs)
