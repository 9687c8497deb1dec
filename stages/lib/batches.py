"""Model inputs built from encoded rows: training batches (prompt + gold answer, loss on the answer)
and the packed scoring batches (prompts sharing their prefixes, then every verbalizer: one pass for
all labels of several prompts).

In both, only the logits that predict answer tokens are computed (`logits_to_keep`): the LM head, a
vocabulary-sized matrix, then runs on a handful of positions instead of the whole row.
"""
import struct

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


def sort_key(prompt):
    """A prompt's stem (all but its last token) as bytes: bytes order is the stems' token order, and
    bytes compare in C, so sorting and common prefixes stay fast for long shared prefixes (k-shot)."""
    return struct.pack(f">{len(prompt) - 1}I", *prompt[:-1])


def common_prefix(a, b):
    """How many leading tokens two `sort_key`s share (bisected on slice equality)."""
    low, high = 0, min(len(a), len(b)) // 4
    while low < high:
        middle = (low + high + 1) // 2
        if a[:4 * middle] == b[:4 * middle]:
            low = middle
        else:
            high = middle - 1
    return low


class PackedAnswers:
    """Scoring rows: several prompts with their shared prefixes laid out once, then each prompt's
    last token and all the verbalizers after it.

    A row is a prefix tree: the prompts, in token order, share their common leading tokens (the
    k-shot demonstrations, a premise before each of its hypotheses). The tails (a prompt's last token
    and the verbalizers) end the row, so the logits kept there score every label of every prompt.
    A 4D attention mask lets each token see only its ancestors in the tree and itself, at positions
    counted from its prompt's start: each verbalizer gets the logits it would get alone after its prompt.

    Index tensors live on the model's device, and each batch's mask is built there.
    """

    ROW_LENGTHS = 3

    def __init__(self, answers, device, row_lengths=ROW_LENGTHS):
        """`row_lengths`: a row holds up to this many times the longest prompt with its tail (0: one
        prompt a row, nothing shared)."""
        self.device, self.labels, self.row_lengths = device, len(answers), row_lengths
        self.token_list = [t for answer in answers for t in answer]
        self.tail = 1 + len(self.token_list)  # tokens (and logits kept) per prompt at the row's end
        starts = [sum(map(len, answers[:k])) for k in range(len(answers))]
        offsets = [j for answer in answers for j in range(len(answer))]  # each answer token's place in its answer
        # a tail's tokens relative to its start: subtree ends (an answer token's subtree is the rest of
        # its answer) and positions after the prompt's last token
        self.tail_ends = [self.tail] + [1 + start + len(answer)
                                        for start, answer in zip(starts, answers) for _ in answer]
        self.tail_positions = [0] + [1 + j for j in offsets]
        self.tokens = torch.tensor(self.token_list, device=device)
        self.label = torch.tensor([k for k, answer in enumerate(answers) for _ in answer], device=device)
        # Kept logits of a tail: the prompt's last token's, then one per answer token. An answer's
        # first token is predicted by the last prompt token (kept logit 0), each later one by the
        # answer token before it (kept logit = its own index in self.tokens, the tail starting one earlier).
        self.position = torch.arange(len(self.token_list), device=device)
        self.source = torch.tensor([0 if j == 0 else k for k, j in enumerate(offsets)], device=device)

    def rows(self, prompts, most):
        """Positions of `prompts` grouped into rows of at most `most` prompts, by prompt count, then by
        tokens (so a batch of neighbours wastes few empty tail slots and little padding).

        Prompts go in token order, so those sharing a prefix come together, as many to a row as fit
        `row_lengths` times the longest prompt with its tail, shared tokens counted once.
        """
        width = self.row_lengths * (max(map(len, prompts), default=0) + self.tail)
        keys = [sort_key(prompt) for prompt in prompts]
        rows, row, used, previous = [], [], 0, b""
        for i in sorted(range(len(prompts)), key=keys.__getitem__):
            added = len(prompts[i]) - 1 - common_prefix(previous, keys[i]) + self.tail
            if row and (used + added > width or len(row) == most):
                rows.append((used, row))
                row, used, added = [], 0, len(prompts[i]) - 1 + self.tail
            row.append(i)
            used, previous = used + added, keys[i]
        if row:
            rows.append((used, row))
        return [row for _, row in sorted(rows, key=lambda used_row: (len(used_row[1]), used_row[0]))]

    def layout(self, prompts):
        """One row's columns (token ids, preorder index, subtree end, position): the tree of the
        prompts' stems (all but the last token), then the tails. Token q sees token k iff k is q or
        its ancestor: preorder[k] <= preorder[q] < end[k], in the preorder of the tree where each
        tail hangs under its stem. `prompts` in token order."""
        (ids, preorder, ends, positions), tails = ([], [], [], []), ([], [], [], [])
        path, count, previous = [], 0, b""  # path: the stem columns from the root to the last stem
        for prompt in prompts:
            stem, key = prompt[:-1], sort_key(prompt)
            shared = common_prefix(previous, key)
            for column in path[shared:]:  # the walk leaves these subtrees: they end here
                ends[column] = count
            del path[shared:]
            new = len(stem) - shared
            path.extend(range(len(ids), len(ids) + new))
            ids.extend(stem[shared:])
            preorder.extend(range(count, count + new))
            ends.extend([None] * new)
            positions.extend(range(shared, len(stem)))
            count += new
            for column, values in zip(tails, ([prompt[-1]] + self.token_list, range(count, count + self.tail),
                                              [count + end for end in self.tail_ends],
                                              [len(stem) + p for p in self.tail_positions])):
                column.extend(values)
            count, previous = count + self.tail, key
        for column in path:
            ends[column] = count
        return (ids, preorder, ends, positions), tails

    def batch(self, rows, pad_id, dtype):
        """input_ids, position_ids and the additive 4D attention mask for rows of prompts (each row's
        prompts in token order): left padding, then the stems, then a tail slot per prompt (empty
        slots padded, so every row keeps the same number of logits)."""
        layouts = [self.layout(prompts) for prompts in rows]
        slots = max(map(len, rows))
        width = multiple_of_8(max(len(stems[0]) for stems, _ in layouts) + slots * self.tail)
        padding = (pad_id, -1, -1, 0)  # preorder and end -1: padding sees and is seen by nothing
        columns = [[], [], [], []]
        for (stems, tails), prompts in zip(layouts, rows):
            empty_slots = (slots - len(prompts)) * self.tail
            left = width - len(stems[0]) - len(tails[0]) - empty_slots
            for column, pad, stem, tail in zip(columns, padding, stems, tails):
                column.append([pad] * left + stem + tail + [pad] * empty_slots)
        # one copy, which the host does not wait on (a blocking copy would wait for the batch before)
        input_ids, preorder, end, position_ids = torch.tensor(columns).to(self.device, non_blocking=True)
        query, key = preorder.unsqueeze(2), preorder.unsqueeze(1)
        visible = (key <= query) & (query < end.unsqueeze(1))
        visible |= torch.eye(width, dtype=torch.bool, device=self.device)  # padding sees itself: no row is fully masked
        mask = torch.zeros(visible.shape, dtype=dtype, device=self.device).masked_fill(~visible, torch.finfo(dtype).min)
        return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask.unsqueeze(1)}, slots

    def scores(self, logits, slots_at_once=64):
        """(slots, labels) summed log-likelihoods from the tails' kept logits, (rows, slots x tail, vocabulary).

        The fp32 normalizer is taken a few slots at a time: over a whole batch it would be a
        slots x positions x vocabulary tensor, the largest in the pass for a big vocabulary.
        """
        kept = logits.reshape(-1, self.tail, logits.shape[-1])[:, self.source]  # (slots, answer tokens, vocabulary)
        token_logprobs = torch.cat([chunk[:, self.position, self.tokens].float()
                                    - torch.logsumexp(chunk.float(), dim=-1) for chunk in kept.split(slots_at_once)])
        return torch.zeros(len(kept), self.labels, device=logits.device).index_add_(1, self.label, token_logprobs)
