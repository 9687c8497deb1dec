"""Zero-shot and adapted scoring: each label's score is the log-likelihood of its verbalizer."""
import torch


@torch.inference_mode()
def score_rows(model, encoder, rows, batch_size, shard=(0, 1)):
    """{row position: label log-likelihoods} (every verbalizer token counts).

    Each prompt runs once: its last logit scores every label's first token. A multi-token verbalizer
    then takes one short pass over its remaining tokens on top of the prompt's KV cache, which is
    cropped back afterwards, so no prompt is run once per label. Rows are batched by prompt length to
    waste little on padding. `shard=(k, n)` scores only batches k, k + n, ...: the batches are the
    same whatever n, so are the scores.
    """
    model.eval()
    device = next(model.parameters()).device
    prompts = [encoder.prompt_ids(row) for row in rows]
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))
    first_tokens = torch.tensor([a[0] for a in encoder.answers], device=device)
    scores = {}
    first, step = shard
    for start in range(first * batch_size, len(order), step * batch_size):
        chunk = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in encoder.pad([prompts[i] for i in chunk], side="left").items()}
        out = model(**batch, use_cache=True, logits_to_keep=1)
        totals = torch.log_softmax(out.logits[:, -1].float(), -1)[:, first_tokens]  # (rows, labels)
        cache = out.past_key_values
        for k, answer in enumerate(encoder.answers):
            if len(answer) == 1:
                continue
            # Feed the answer but its last token; the logit at t predicts answer token t + 1.
            fed = torch.tensor(answer[:-1], device=device).repeat(len(chunk), 1)
            positions = batch["attention_mask"].sum(-1, keepdim=True) + torch.arange(fed.shape[1], device=device)
            logits = model(input_ids=fed, attention_mask=torch.cat([batch["attention_mask"], torch.ones_like(fed)], 1),
                           position_ids=positions, past_key_values=cache, use_cache=True).logits.float()
            targets = torch.tensor(answer[1:], device=device).expand(len(chunk), -1)
            totals[:, k] += torch.log_softmax(logits, -1).gather(-1, targets[..., None]).sum((-2, -1))
            cache.crop(-fed.shape[1])  # back to the prompt alone
        for i, row_scores in zip(chunk, totals.tolist()):
            scores[i] = row_scores
    return scores
