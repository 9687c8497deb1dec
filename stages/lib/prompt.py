"""The prompt and the verbalizers: SNLI rows rendered by `prompt.template` and tokenized, and each
label's answer tokens."""
from .errors import PipelineError

MAX_TRUNCATED_SHARE = 0.01  # more prompts than this losing their start is a wrong budget, not an outlier


def withhold_premise(rows):
    """The rows with an empty premise: what the hypothesis-only control is trained and scored on."""
    return [row | {"premise": ""} for row in rows]


def render(template, row):
    return template.format(premise=row["premise"], hypothesis=row["hypothesis"])


def demonstrations(params, rows):
    """In-context examples: each training pair's prompt and its gold answer, a blank line apart."""
    return "".join(render(params.template, row) + params.verbalizers[row["label"]] + "\n\n" for row in rows)


class Encoder:
    """Turns SNLI rows into token ids with one tokenizer and the `prompt.*` params."""

    def __init__(self, tokenizer, params, prefix=""):
        """`prefix`: text before every prompt (k-shot demonstrations); its tokens come on top of the
        prompt.max_length budget, so the pair's own prompt keeps the zero-shot budget."""
        self.tokenizer = tokenizer
        self.template, self.prefix = params.template, prefix
        self.answers = [tokenizer(v, add_special_tokens=False)["input_ids"] for v in params.verbalizers]
        self.max_length = params.max_length + (len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
                                               if prefix else 0)
        self.prompt_budget = self.max_length - max(map(len, self.answers))
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
        encoded = self.tokenizer([self.prefix + render(self.template, row) for row in rows])["input_ids"]
        over = sum(len(ids) > self.prompt_budget for ids in encoded)
        if over > MAX_TRUNCATED_SHARE * len(encoded):
            lengths = sorted(map(len, encoded))
            raise PipelineError(f"params.yaml: prompt.max_length ({self.max_length}) would cut the start off "
                                f"{over} of {len(encoded)} prompts (prompt tokens: median "
                                f"{lengths[len(lengths) // 2]}, longest {lengths[-1]}); raise it")
        self.truncated += over
        return [ids[-self.prompt_budget:] for ids in encoded]
