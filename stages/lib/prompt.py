"""The prompt and verbalizer, and the training batches built from them (scoring.py packs its own).

A training row is the prompt's tokens followed by the gold verbalizer's tokens. Only the logits that
predict answer tokens are computed (`logits_to_keep`): the LM head, a vocabulary-sized matrix, then
runs on a handful of positions instead of the whole row.
"""
import torch

from .errors import PipelineError

IGNORE = -100  # label value the loss skips
MAX_TRUNCATED_SHARE = 0.01  # more prompts than this losing their start is a wrong budget, not an outlier


def render(template, row):
    return template.format(premise=row["premise"], hypothesis=row["hypothesis"])


class Encoder:
    """Turns SNLI rows into token ids with one tokenizer and the `prompt.*` params."""

    def __init__(self, tokenizer, params):
        self.tokenizer = tokenizer
        self.template = params.template
        self.answers = [tokenizer(v, add_special_tokens=False)["input_ids"] for v in params.verbalizers]
        self.prompt_budget = params.max_length - max(map(len, self.answers))
        self.truncated = 0  # prompts that lost their start to fit max_length

    @property
    def answer_window(self):
        """Logits kept at the end of a row: one per answer token, plus the one before it."""
        return max(map(len, self.answers)) + 1

    def prompt_ids(self, rows):
        """Each row's prompt ids, tokenized in one batch call; a prompt over budget loses its start.

        If more than 1 % of the rows would lose it, the budget is wrong for this data or tokenizer
        (every prompt cut to its question tail scores alike): stop, naming the lengths seen.
        """
        encoded = self.tokenizer([render(self.template, row) for row in rows])["input_ids"]
        over = sum(len(ids) > self.prompt_budget for ids in encoded)
        if over > MAX_TRUNCATED_SHARE * len(encoded):
            lengths = sorted(map(len, encoded))
            raise PipelineError(f"params.yaml: prompt.max_length ({self.prompt_budget + max(map(len, self.answers))}) "
                                f"would cut the start off {over} of {len(encoded)} prompts (prompt tokens: median "
                                f"{lengths[len(lengths) // 2]}, longest {lengths[-1]}); raise it")
        self.truncated += over
        return [ids[-self.prompt_budget:] for ids in encoded]


class TrainingCollator:
    """Batches of prompt + gold answer, with the loss on the answer tokens only."""

    def __init__(self, encoder, answer_logits_only=True, pad_to_multiple_of=1):
        self.encoder = encoder
        self.answer_logits_only = answer_logits_only  # False: logits at every position, as common recipes do
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples):
        # Right padding with neither attention mask nor position ids: under causal attention a real
        # token never sees the padding after it, and default positions let SDPA run flash attention.
        # (Left padding needs a mask, and its fully masked rows turned bf16 gradients into NaN on an
        # H200.) Answers then end at different positions, so the logits kept reach back to the
        # shortest row's answer.
        rows = [e["input_ids"] for e in examples]
        width = -(-max(map(len, rows)) // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.tensor([row + [self.encoder.tokenizer.pad_token_id] * (width - len(row)) for row in rows])
        keep = min(width, width - min(map(len, rows)) + self.encoder.answer_window) if self.answer_logits_only else width
        offset = width - keep
        labels = torch.full((len(rows), keep), IGNORE)
        for i, (row, e) in enumerate(zip(rows, examples)):
            end = len(row) - offset
            labels[i, end - e["answer_length"]:end] = torch.tensor(row[-e["answer_length"]:])
        # The model keeps the last `keep` logits and shifts labels by one inside its loss, so
        # labels are cut to the same window.
        return {"input_ids": input_ids, "labels": labels, "logits_to_keep": keep}

    def examples(self, rows):
        answers = [self.encoder.answers[row["label"]] for row in rows]
        return [{"input_ids": prompt + answer, "answer_length": len(answer)}
                for prompt, answer in zip(self.encoder.prompt_ids(rows), answers)]
