"""Model inputs built from encoded rows: training batches (prompt + gold answer, loss on the answer)
and the packed scoring batches (prompts sharing their prefixes, then every verbalizer: one pass for
all labels of several prompts; or, for a model the tree does not suit, each prompt in rows of its own).

In all, only the logits that predict answer tokens are computed (`logits_to_keep`, or the scorer's
pick at the LM head): the LM head, a vocabulary-sized matrix, then runs on a handful of positions
instead of the whole row.
"""
import array
import itertools
import struct

import torch

from .tree_attention import PrefixTree

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


def right_padded(sequences, width, pad_id):
    """(rows, width) token ids, each sequence followed by padding. Right padding needs neither an
    attention mask nor position ids: under causal attention, and in any layer that mixes tokens
    causally, a real token never sees the padding after it, and default positions let SDPA run flash
    attention. (Left padding needs a mask, and its fully masked rows turned bf16 gradients into NaN
    on an H200.)"""
    return torch.tensor([sequence + [pad_id] * (width - len(sequence)) for sequence in sequences])


class TrainingCollator:
    """Batches of prompt + gold answer, with the loss on the answer tokens only."""

    def __init__(self, encoder, answer_logits_only=True, round_up=None):
        self.encoder = encoder
        self.answer_logits_only = answer_logits_only  # False: logits at every position, as common recipes do
        # applied to the batch length and to the logits kept: fewer shapes (None: exact lengths)
        self.round_up = round_up or (lambda length: length)

    def __call__(self, examples):
        # Right-padded rows: answers end at different positions, so the logits kept reach back to the
        # shortest row's answer.
        rows = [e["input_ids"] for e in examples]
        _, width, keep = self.shape(examples)
        input_ids = right_padded(rows, width, self.encoder.tokenizer.pad_token_id)
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
    """A prompt as bytes: bytes order is the prompts' token order, and bytes compare in C, so sorting
    and common prefixes stay fast for long shared prefixes (k-shot)."""
    return struct.pack(f">{len(prompt)}I", *prompt)


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
    """Scoring batches: prompts laid out as one prefix tree in one sequence, each followed by the
    answer tokens its scores need, so one pass scores every label of every prompt.

    Prompts in token order share their common leading tokens (the k-shot demonstrations, a premise
    before each of its hypotheses), laid out once. Each prompt adds a segment: its tokens after the
    prefix it shares with the prompt before, and all but the last token of its first answer longer
    than one token (an answer's last token is only predicted). Each further such answer adds a
    segment of its own. A segment's tokens see the path from the tree's root to them, at positions
    counted from their prompt's start (tree_attention.py), so each answer gets the logits it would
    get alone after its prompt.
    """

    def __init__(self, answers, device):
        self.device, self.labels = device, len(answers)
        answer_inputs = [answer[:-1] for answer in answers]
        # The first answer fed runs on in its prompt's segment (causal attention keeps the math); the
        # others need segments of their own.
        self.inline, *self.apart = [inputs for inputs in answer_inputs if inputs] or [[]]
        starts = [sum(map(len, answer_inputs[:k])) for k in range(len(answers))]
        self.kept = 1 + sum(map(len, answer_inputs))  # logits a prompt keeps: its last token's, then its answers'
        # An answer's first token is predicted by the prompt's last token (kept logit 0), each later one
        # by the answer token before it.
        self.source = torch.tensor([0 if j == 0 else start + j for start, answer in zip(starts, answers)
                                    for j in range(len(answer))], device=device)
        self.tokens = torch.tensor([t for answer in answers for t in answer], device=device)
        self.label = torch.tensor([k for k, answer in enumerate(answers) for _ in answer], device=device)
        self.position = torch.arange(len(self.tokens), device=device)

    def order(self, prompts):
        """Positions of `prompts` in token order: neighbours share the longest prefixes."""
        keys = [sort_key(prompt) for prompt in prompts]
        return sorted(range(len(prompts)), key=keys.__getitem__)

    def batch(self, prompts, share_prefixes=True):
        """Model inputs (input_ids, position_ids, logits_to_keep and the attention's `prefix_tree`)
        for `prompts`, best in token order; `share_prefixes=False` lays each prompt out whole (the
        most tokens any batch of these prompts takes)."""
        ids, positions, keys, query_lengths, key_lengths, kept = [], [], [], [], [], []

        def segment(tokens, first_position, ancestors):
            start = len(ids)
            ids.extend(tokens)
            positions.extend(range(first_position, first_position + len(tokens)))
            keys.extend(ancestors)
            keys.extend(range(start, len(ids)))
            query_lengths.append(len(tokens))
            key_lengths.append(len(ancestors) + len(tokens))

        path, previous = [], b""  # path: the token indices of the last prompt, from the root
        for prompt in prompts:
            key = sort_key(prompt)
            # at least the last token is the prompt's own: its answers hang under it
            shared = min(common_prefix(previous, key), len(prompt) - 1) if share_prefixes else 0
            del path[shared:]
            segment(prompt[shared:] + self.inline, shared, path)
            last = len(ids) - len(self.inline) - 1
            path.extend(range(last - len(prompt) + shared + 1, last + 1))
            kept.extend(range(last, last + 1 + len(self.inline)))
            for answer in self.apart:
                segment(answer, len(prompt), path)
                kept.extend(range(len(ids) - len(answer), len(ids)))
            previous = key
        query_starts, key_starts = ([0, *itertools.accumulate(lengths)] for lengths in (query_lengths, key_lengths))
        # one copy, which the host does not wait on (a blocking copy would wait for the batch before)
        columns, flat = [ids, positions, keys, kept, query_starts, key_starts], array.array("q")
        for column in columns:
            flat.extend(column)  # an array, not a list: a few times faster into a tensor
        input_ids, position_ids, key_index, kept_index, query_starts_on_device, key_starts_on_device = (
            torch.frombuffer(flat, dtype=torch.int64).to(self.device, non_blocking=True).split(list(map(len, columns))))
        tree = PrefixTree(query_starts_on_device.int(), key_starts_on_device.int(), key_index, query_lengths,
                          key_lengths)
        return {"input_ids": input_ids[None], "position_ids": position_ids[None], "logits_to_keep": kept_index,
                "prefix_tree": tree}

    def rows(self, prompts, pad_id):
        """Input ids with each prompt in right-padded rows of its own (`right_padded`), one for each
        answer longer than one token (its tokens but the last after the prompt), and the flat
        (row x position) indices of the logits `scores` takes, in its order. Plain causal rows: for a
        model whose prompts do not stay apart in one sequence."""
        answer_inputs = [self.inline, *self.apart]
        sequences, kept = [], []
        for prompt in prompts:
            first = len(sequences)
            sequences.extend(prompt + inputs for inputs in answer_inputs)
            kept.append((first, len(prompt) - 1))
            kept.extend((first + k, len(prompt) + j)
                        for k, inputs in enumerate(answer_inputs) for j in range(len(inputs)))
        width = max(map(len, sequences))
        kept_index = torch.tensor([row * width + position for row, position in kept])
        return right_padded(sequences, width, pad_id).to(self.device), kept_index.to(self.device)

    def scores(self, logits, prompts_at_once=64):
        """(prompts, labels) summed log-likelihoods from the kept logits, (1, prompts x kept, vocabulary).

        The fp32 normalizer is taken a few prompts at a time: over a whole batch it would be a
        prompts x answer tokens x vocabulary tensor, the largest in the pass for a big vocabulary.
        """
        kept = logits.reshape(-1, self.kept, logits.shape[-1])[:, self.source]  # (prompts, answer tokens, vocabulary)
        token_logprobs = torch.cat([chunk[:, self.position, self.tokens].float()
                                    - torch.logsumexp(chunk.float(), dim=-1) for chunk in kept.split(prompts_at_once)])
        return torch.zeros(len(kept), self.labels, device=logits.device).index_add_(1, self.label, token_logprobs)
