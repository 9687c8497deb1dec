"""The prompt and verbalizer, and the batches built from them: the same for training and scoring.

A row is the prompt's tokens followed by one verbalizer's tokens. Only the logits that predict answer
tokens are computed (`logits_to_keep`): the LM head, a vocabulary-sized matrix, then runs on a handful
of positions instead of the whole row. Scoring pads on the left so every answer ends at the last
position; training pads on the right (see TrainingCollator).
"""
import torch

IGNORE = -100  # label value the loss skips


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

    def prompt_ids(self, row):
        ids = self.tokenizer(render(self.template, row))["input_ids"]
        if len(ids) > self.prompt_budget:
            self.truncated += 1
            ids = ids[-self.prompt_budget:]
        return ids

    def pad(self, rows, side="left"):
        """input_ids, attention_mask and position_ids for id lists of any lengths."""
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id

        def padded(row, fill, real):
            filler = [fill] * (width - len(row))
            return filler + real if side == "left" else real + filler

        input_ids = torch.tensor([padded(r, pad, r) for r in rows])
        attention_mask = torch.tensor([padded(r, 0, [1] * len(r)) for r in rows])
        # Positions count real tokens only, so left padding does not shift them.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


class TrainingCollator:
    """Batches of prompt + gold answer, with the loss on the answer tokens only."""

    def __init__(self, encoder, answer_logits_only=True):
        self.encoder = encoder
        self.answer_logits_only = answer_logits_only  # False: logits at every position, as common recipes do

    def __call__(self, examples):
        # Right padding: a left-padded row starts with pads that can attend to nothing, and on an
        # H200 such fully masked rows turned bf16 training gradients into NaN. Answers then end at
        # different positions, so the logits kept reach back to the shortest row's answer.
        rows = [e["input_ids"] for e in examples]
        batch = self.encoder.pad(rows, side="right")
        width = batch["input_ids"].shape[1]
        keep = min(width, width - min(map(len, rows)) + self.encoder.answer_window) if self.answer_logits_only else width
        offset = width - keep
        labels = torch.full((len(rows), keep), IGNORE)
        for i, (row, e) in enumerate(zip(rows, examples)):
            end = len(row) - offset
            labels[i, end - e["answer_length"]:end] = torch.tensor(row[-e["answer_length"]:])
        # The model keeps the last `keep` logits and shifts labels by one inside its loss, so
        # labels are cut to the same window. No attention mask: under causal attention a real token never
        # sees the right padding after it, and without a mask SDPA can run its flash kernel.
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "labels": labels,
                "logits_to_keep": keep}

    def example(self, row):
        answer = self.encoder.answers[row["label"]]
        return {"input_ids": self.encoder.prompt_ids(row) + answer, "answer_length": len(answer)}
