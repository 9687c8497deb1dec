"""Zero-shot and adapted scoring: each label's score is the log-likelihood of its verbalizer."""
import torch


@torch.inference_mode()
def score_rows(model, encoder, rows, batch_size, shard=(0, 1)):
    """{row position: label log-likelihoods} (every verbalizer token counts).

    Rows are batched by prompt length to waste little on padding; each batch holds every row once per
    label, so a batch of `batch_size` rows runs 3 * batch_size sequences. `shard=(k, n)` scores only
    batches k, k + n, ...: the batches are the same whatever n, so are the scores.
    """
    model.eval()
    device = next(model.parameters()).device
    prompts = [encoder.prompt_ids(row) for row in rows]
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))
    window = encoder.answer_window
    # answer_mask[k] marks the last len(answer k) of the window's predicted tokens.
    answer_mask = torch.tensor([[0] * (window - 1 - len(a)) + [1] * len(a) for a in encoder.answers])
    scores = {}
    first, step = shard
    for start in range(first * batch_size, len(order), step * batch_size):
        chunk = order[start:start + batch_size]
        sequences = [prompts[i] + answer for i in chunk for answer in encoder.answers]
        batch = {k: v.to(device) for k, v in encoder.pad(sequences, side="left").items()}
        logits = model(**batch, logits_to_keep=window).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
        targets = batch["input_ids"][:, -window + 1:]
        token_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        sums = (token_logprobs * answer_mask.to(device).repeat(len(chunk), 1)).sum(-1)
        for i, row_scores in zip(chunk, sums.view(len(chunk), -1).tolist()):
            scores[i] = row_scores
    return scores
